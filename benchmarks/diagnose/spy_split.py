"""Where a process's host time went, from a `py-spy record --idle -f raw` profile (gzip or plain):
per process, the samples inside one region of the code (a frame name), split by what they were
doing: forward, backward, optimizer, clipping, batches, logging. Compile stacks (dynamo, inductor,
triton's compiler) are counted apart, so warm-up compiles do not hide the steps.
At `-r 100` a sample is 10 ms of wall time; py-spy's "behind in sampling" lines mean fewer.

Usage: spy_split.py PROFILE REGION [REGION ...]
  e.g. spy_split.py spy_perf.txt.gz "timed_step (" "Trainer._run_epoch ("
       spy_split.py spy_order.txt.gz "bare (" "bare_after_train (" "Trainer._run_epoch ("
"""

from __future__ import annotations

import collections
import gzip
import sys
from pathlib import Path

COMPILING = (
    "convert_frame.py",
    "_inductor/",
    "compile_fx",
    "symbolic_convert",
    "_do_compile",
    "triton/compiler",
    "Popen",
    "autotuner",
)
KINDS = (  # the first that matches names the sample
    ("backward", ("_engine_run_backward",)),
    ("forward", ("Module._call_impl",)),
    ("synchronize", ("synchronize (",)),
    ("optimizer", ("Optimizer", "adam (", "_multi_tensor_adam", "_fused_adam")),
    ("clip", ("clip_grad",)),
    ("batches", ("get_batch_samples", "DataLoader", "torch_call")),
    ("log, save", ("_maybe_log_save_evaluate",)),
)


def read(path: Path) -> list[tuple[str, list[str], int]]:
    """(process, frames, samples) per line; the process is '' without --subprocesses."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            process = ""
            while frames and frames[0].startswith("process "):
                process = frames.pop(0).split(":")[0]
            rows.append((process, frames, int(count)))
    return rows


def kind(stack: str) -> str:
    for name, marks in KINDS:
        if any(mark in stack for mark in marks):
            return name
    return "other: " + stack.rsplit(";", 1)[-1][:70]


def split(rows: list[tuple[str, list[str], int]], region: str) -> dict[str, collections.Counter]:
    """Per process: samples by kind, for stacks whose innermost frame named `region` is there."""
    by_process: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for process, frames, count in rows:
        inside = [i for i, frame in enumerate(frames) if frame.startswith(region)]
        if not inside:
            continue
        stack = ";".join(frames[inside[-1] :])
        compiling = any(mark in stack for mark in COMPILING)
        by_process[process]["(compiling)" if compiling else kind(stack)] += count
    return by_process


def main() -> None:
    path, *regions = sys.argv[1:]
    rows = read(Path(path))
    for region in regions:
        for process, counts in split(rows, region).items():
            steps = sum(n for k, n in counts.items() if k != "(compiling)")
            print(f"{process or 'process'} in {region!r}: {steps} samples, not compiling")
            for name, n in counts.most_common(10):
                print(f"  {n:6d}  {name}")


if __name__ == "__main__":
    main()
