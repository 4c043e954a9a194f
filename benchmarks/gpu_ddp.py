"""Data-parallel training past one GPU: `lowres-ft train --gpus 2` (one process per GPU through
torchrun, each with its own 4-bit copy) against `lowres-ft train` on one GPU at the same global
batch (one GPU: batch 2 x accumulation 2; two GPUs: batch 2 each). Random-weight Llama-3.1-8B
shape, rows of real Bengali conversations joined to 2,048 tokens.

Reports tokens/s of each and their ratio, and how closely the two loss curves agree.

    python benchmarks/gpu_ddp.py --tokenizer .gpu/tokenizer --data .gpu/data [--backend auto]

writes benchmarks/results/gpu_ddp.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_perf import (  # noqa: E402
    RESULTS,
    build_in_subprocess,
    caveats,
    long_rows,
    versions,
    write_run_data,
)

SHAPE, SEQUENCE, BATCH = "llama-3.1-8b", 2048, 2


def train_run(args: argparse.Namespace, gpus: int, backend: str) -> dict[str, Any]:
    """One `lowres-ft train` command; returns its per-step log."""
    run_dir = Path(args.work) / "runs" / f"ddp-{backend}-{gpus}gpu-a{args.accumulation}"
    shutil.rmtree(run_dir, ignore_errors=True)
    steps = args.warmup + args.steps
    rows = long_rows(args.data, args.tokenizer, SEQUENCE, steps * BATCH * 2 * args.accumulation + 8)
    write_run_data(run_dir, rows[:-4], rows[-4:])
    from lowres_ft.config import RunConfig  # no transformers import: the run starts fresh

    RunConfig(run_dir=str(run_dir), language="bn").save()  # what `lowres-ft prepare` leaves
    command = [sys.executable, "-m", "lowres_ft.cli", "train", "--gpus", str(gpus)]
    command += ["--run-dir", str(run_dir), "--model-name", str(Path(args.work) / "models" / SHAPE)]
    command += ["--backend", backend, "--max-seq-length", str(SEQUENCE)]
    accumulation = args.accumulation * 2 // gpus  # the same global batch on 1 and 2 GPUs
    command += ["--batch-size", str(BATCH), "--gradient-accumulation-steps", str(accumulation)]
    command += ["--max-steps", str(steps), "--logging-steps", "1", "--eval-steps", "0"]
    command += ["--eval-max-rows", "2", "--save-steps", "100000", "--save-minutes", "0"]
    command += ["--lora-alpha", "16", "--warmup-ratio", "0", "--language", "bn"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    seconds = round(time.perf_counter() - started, 1)
    log_path = run_dir / "metrics.jsonl"
    logs = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    logs = [m for m in logs if "loss" in m and m.get("step_seconds")]
    if done.returncode or not logs:
        return {"gpus": gpus, "backend": backend, "error": (done.stderr or done.stdout)[-4000:]}
    measured = logs[args.warmup :]
    step = statistics.median(m["step_seconds"] for m in measured)
    noted = caveats(done)
    return {
        **({"caveats": noted} if noted else {}),
        "gpus": gpus,
        "backend": backend,
        "accumulation_per_gpu": accumulation,
        "global_batch": BATCH * 2 * args.accumulation,
        "tokens_per_step": SEQUENCE * BATCH * 2 * args.accumulation,
        "step_seconds": round(step, 4),
        "tokens_per_second": round(SEQUENCE * BATCH * 2 * args.accumulation / step, 1),
        "logged_tokens_per_second": [m["tokens_per_second"] for m in logs],
        "losses": [m["loss"] for m in logs],
        "peak_allocated_gib": max(m.get("memory_peak_gib", 0) for m in logs),
        "command_seconds": seconds,
        "backend_line": next(
            (x for x in done.stderr.splitlines() if "backend " in x and ":" in x), ""
        )[-300:],
    }


def compare(one: dict, two: dict) -> dict[str, Any]:
    pairs = list(zip(one["losses"], two["losses"], strict=False))
    differences = [abs(a - b) for a, b in pairs]
    return {
        "speedup": round(two["tokens_per_second"] / one["tokens_per_second"], 3),
        "loss_steps_compared": len(pairs),
        "loss_max_abs_difference": round(max(differences), 4),
        "loss_mean_abs_difference": round(sum(differences) / len(differences), 4),
        "loss_first_last_one_gpu": [one["losses"][0], one["losses"][-1]],
        "loss_first_last_two_gpus": [two["losses"][0], two["losses"][-1]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--backend", default="auto", help="auto, or hf (tried when auto fails)")
    parser.add_argument(
        "--accumulation", type=int, default=1, help="per GPU on two GPUs (doubled on one)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--work", default="/tmp/lowres_gpu_perf")
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--output", default=str(RESULTS / "gpu_ddp.json"))
    args = parser.parse_args()
    import torch

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    build_in_subprocess(args, SHAPE, check=True)
    report: dict[str, Any] = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "versions": versions(),
        "shape": SHAPE,
        "sequence": SEQUENCE,
        "runs": [],
    }
    output = Path(args.output)
    backends = [args.backend] + (["hf"] if args.backend == "auto" else [])
    for backend in backends:
        runs = []
        for gpus in (1, 2):
            run = train_run(args, gpus, backend)
            runs.append(run)
            report["runs"].append(run)
            output.write_text(json.dumps(report, indent=2) + "\n")
            status = run.get("tokens_per_second", "ERROR")
            print(f"{backend} {gpus} GPU(s): {status} tok/s", flush=True)
            if "error" in run:
                print(run["error"][-2000:], flush=True)
                break
        if all("error" not in r for r in runs) and len(runs) == 2:
            report["comparison"] = {"backend": backend, **compare(*runs)}
            break
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'backend':<9}{'gpus':>5}{'tok/s':>10}{'step s':>8}{'peak GiB':>10}")
    for r in report["runs"]:
        if "error" in r:
            print(f"{r['backend']:<9}{r['gpus']:>5}  ERROR")
            continue
        print(
            f"{r['backend']:<9}{r['gpus']:>5}{r['tokens_per_second']:>10.0f}"
            f"{r['step_seconds']:>8.3f}{r['peak_allocated_gib']:>10.2f}"
        )
    print(json.dumps(report.get("comparison", {}), indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
