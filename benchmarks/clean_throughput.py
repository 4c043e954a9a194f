"""Throughput and memory of the streaming cleaner (lowres_ft/data/clean.py) on a large corpus.

Builds an Assamese corpus of --lines lines (1,000,000 by default) from the real news file
shared/data/as_news/as_news.txt: the source once, then a seeded mix of exact repeats,
near-duplicates (one or two words dropped, swapped or replaced) and new lines (the first half of
one paragraph spliced onto the second half of another, so the dedup index keeps growing). The
corpus is written line by line to a temp file, never held in memory.

Then runs the real pipeline on it, as the data-prep notebook does:

    load_rows(path, data_format="text")
    -> Cleaner(RunConfig(language="as", dedup="near", data_path=path), rejects=file).clean(rows)

and measures wall time, lines/s, peak RSS (ru_maxrss) at 10%, 50% and 100% of the input, kept
rows and rejections per step. The same is run at --scale-lines (100,000) first, to show that the
cleaner is linear (lines/s about the same at both sizes). Each size runs in its own process so
its peak RSS is its own. Prints a table and writes benchmarks/results/clean_throughput.json.

    python benchmarks/clean_throughput.py                 # 100k and 1M lines, a few minutes
    python benchmarks/clean_throughput.py --lines 200000 --scale-lines 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from lowres_ft.config import RunConfig  # noqa: E402
from lowres_ft.data.clean import STEPS, Cleaner  # noqa: E402
from lowres_ft.data.load import Row, load_rows  # noqa: E402

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared/data/as_news/as_news.txt"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "clean_throughput.json"
CHECKPOINTS = (0.1, 0.5, 1.0)  # shares of the input at which memory is sampled
RECENT_NEW = 5000  # new lines remembered for later repeats and near-duplicates (bounded)
MiB = 1024 * 1024


# --- the corpus ----------------------------------------------------------------------------------


def generate_corpus(
    source_lines: list[str],
    lines: int,
    path: Path,
    seed: int,
    mix: dict[str, float],
    progress: bool = True,
) -> Counter[str]:
    """Write `lines` lines to `path`: the source once, then the seeded mix. Returns the counts.

    The decisions depend only on the seed, so a shorter corpus is a prefix of a longer one."""
    rng = random.Random(seed)
    words = [line.split() for line in source_lines]
    recent: list[str] = []  # ring buffer of generated new lines
    kinds = list(mix)
    weights = [mix[k] for k in kinds]
    counts: Counter[str] = Counter()

    def base() -> list[str]:
        """A line to repeat or perturb: a source paragraph or a recent new line."""
        if recent and rng.random() < 0.5:
            return recent[rng.randrange(len(recent))].split()
        return words[rng.randrange(len(words))]

    with path.open("w", encoding="utf-8") as handle:
        for index in tqdm(
            range(lines), desc="generate", unit=" lines", mininterval=1, disable=not progress
        ):
            if index < len(source_lines):
                kind, line = "original", source_lines[index]
            else:
                kind = rng.choices(kinds, weights)[0]
                if kind == "exact":
                    line = " ".join(base())
                elif kind == "near":
                    line = " ".join(_perturb(base(), rng, words))
                else:  # new: first half of one paragraph + second half of another
                    first = words[rng.randrange(len(words))]
                    second = words[rng.randrange(len(words))]
                    cut_first = max(1, len(first) // 2 + rng.randint(-2, 2))
                    cut_second = max(0, len(second) // 2 + rng.randint(-2, 2))
                    line = " ".join(first[:cut_first] + second[cut_second:])
                    if len(recent) < RECENT_NEW:
                        recent.append(line)
                    else:
                        recent[rng.randrange(RECENT_NEW)] = line
            counts[kind] += 1
            handle.write(line + "\n")
    return counts


def _perturb(line: list[str], rng: random.Random, words: list[list[str]]) -> list[str]:
    """One or two edits: drop a word, swap two neighbours, or replace a word."""
    out = list(line)
    for _ in range(rng.choice((1, 2))):
        op = rng.choice(("drop", "swap", "replace")) if len(out) >= 4 else "replace"
        at = rng.randrange(len(out))
        if op == "drop":
            del out[at]
        elif op == "swap":
            at = min(at, len(out) - 2)
            out[at], out[at + 1] = out[at + 1], out[at]
        else:
            donor = words[rng.randrange(len(words))]
            out[at] = donor[rng.randrange(len(donor))]
    return out


# --- measuring ---------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> float | None:
    """Resident set size now, from /proc (Linux); None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MiB


def run_one(args: argparse.Namespace, lines: int) -> dict[str, Any]:
    """Generate a corpus of `lines` lines and clean it; measurements of this process."""
    source_lines = [
        line.rstrip("\r\n")
        for line in Path(args.source).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    mix = {"exact": args.exact, "near": args.near, "new": args.new}
    with tempfile.TemporaryDirectory(prefix="clean_throughput_") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        started = time.perf_counter()
        counts = generate_corpus(source_lines, lines, corpus, args.seed, mix, args.progress)
        generate_s = time.perf_counter() - started
        corpus_bytes = corpus.stat().st_size
        del source_lines

        baseline_rss = current_rss_mib()
        baseline_peak = peak_rss_mib()
        config = RunConfig(language="as", dedup="near", data_path=str(corpus))
        with (Path(tmp) / "rejects.jsonl").open("w", encoding="utf-8") as rejects:
            cleaner = Cleaner(config, rejects=rejects)
            marks = sorted({max(1, round(lines * share)) for share in CHECKPOINTS})
            samples: list[dict[str, Any]] = []
            load_before = _load_average()
            started = time.perf_counter()
            cpu_started = time.process_time()

            def sample(read: int) -> None:
                samples.append(
                    {
                        "read": read,
                        "share": read / lines,
                        "elapsed_s": time.perf_counter() - started,
                        "cpu_s": time.process_time() - cpu_started,
                        "kept": cleaner.stats.kept,
                        "peak_rss_mib": peak_rss_mib(),
                        "rss_mib": current_rss_mib(),
                    }
                )

            def counted(rows: Iterable[Row]) -> Iterator[Row]:
                """Pass rows on; sample memory once the cleaner has finished row `mark`."""
                pending = iter(marks)
                mark = next(pending)
                for read, row in enumerate(rows):
                    if read == mark:
                        sample(read)
                        mark = next(pending, -1)
                    if read % 1000 == 0 and read:
                        bar.update(1000)
                    yield row

            rows = load_rows(corpus, data_format="text")
            bar = tqdm(
                total=lines, desc="clean", unit=" lines", mininterval=1, disable=not args.progress
            )
            kept = 0
            for _ in cleaner.clean(counted(rows)):
                kept += 1  # consume the kept records without keeping them
            wall_s = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
            bar.update(cleaner.stats.read - bar.n)
            bar.close()
            if not samples or samples[-1]["read"] != lines:
                sample(cleaner.stats.read)
            rejects.flush()
            rejects_bytes = rejects.tell()
        cleaner.stats.check()

    stats = cleaner.stats.to_json()
    assert stats["read"] == lines and stats["kept"] == kept, (stats["read"], lines, kept)
    for point in samples:
        grown = point["rss_mib"] - baseline_rss if baseline_rss is not None else None
        point["rss_growth_mib"] = grown
        point["bytes_per_kept_row"] = (
            grown * MiB / point["kept"] if grown and point["kept"] else None
        )
    return {
        "lines": lines,
        "mix": dict(counts),
        "corpus_mib": corpus_bytes / MiB,
        "rejects_mib": rejects_bytes / MiB,
        "generate_s": generate_s,
        "wall_s": wall_s,
        "lines_per_s": lines / wall_s,
        "cpu_s": cpu_s,
        "lines_per_cpu_s": lines / cpu_s,
        "load_average_before_after": [load_before, _load_average()],
        "mib_per_s": corpus_bytes / MiB / wall_s,
        "kept": kept,
        "baseline_rss_mib": baseline_rss,
        "baseline_peak_rss_mib": baseline_peak,
        "peak_rss_mib": peak_rss_mib(),
        "memory": samples,
        "stats": stats,
    }


# --- driver and report -----------------------------------------------------------------------


def _load_average() -> float | None:
    """1-minute load average: above ~1 on this machine, something else competed for the CPU."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "lowres_ft/data"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, ""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "datasketch": version("datasketch"),
        "numpy": version("numpy"),
        "regex": version("regex"),
        "git_commit": commit,
        "lowres_ft_data_modified": dirty.splitlines() if dirty else [],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_in_subprocess(args: argparse.Namespace, lines: int) -> dict[str, Any]:
    """Run one size in a fresh interpreter, so ru_maxrss is that run's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker-result",
            str(result),
            "--lines",
            str(lines),
            "--source",
            str(args.source),
            "--seed",
            str(args.seed),
            "--exact",
            str(args.exact),
            "--near",
            str(args.near),
            "--new",
            str(args.new),
        ]
        if not args.progress:
            command.append("--no-progress")
        subprocess.run(command, check=True)
        return json.loads(result.read_text())


def print_report(runs: list[dict[str, Any]], seed: int) -> None:
    big = runs[-1]
    total = sum(big["mix"].values())
    mix = " | ".join(
        f"{kind} {big['mix'].get(kind, 0):,} ({big['mix'].get(kind, 0) / total:.1%})"
        for kind in ("original", "exact", "near", "new")
    )
    print(f"\ncorpus ({total:,} lines, {big['corpus_mib']:.0f} MiB, seed {seed}): {mix}")

    print(
        f"\n{'lines':>10} {'wall s':>7} {'lines/s':>8} {'CPU s':>7} {'lines/CPU-s':>11} "
        f"{'MiB/s':>5} {'kept':>8} {'peak RSS MiB':>12} {'rejects MiB':>11} {'load avg':>9}"
    )
    for run in runs:
        load = "/".join(
            f"{x:.1f}" if x is not None else "?" for x in run["load_average_before_after"]
        )
        print(
            f"{run['lines']:>10,} {run['wall_s']:>7.1f} {run['lines_per_s']:>8,.0f} "
            f"{run['cpu_s']:>7.1f} {run['lines_per_cpu_s']:>11,.0f} {run['mib_per_s']:>5.2f} "
            f"{run['kept']:>8,} {run['peak_rss_mib']:>12,.0f} {run['rejects_mib']:>11,.0f} "
            f"{load:>9}"
        )

    for run in runs:
        print(
            f"\nmemory at {run['lines']:,} lines (RSS after generating the corpus: "
            f"{run['baseline_rss_mib']:,.0f} MiB)"
        )
        print(
            f"{'input':>6} {'read':>10} {'kept':>8} {'peak RSS MiB':>12} {'growth MiB':>10} "
            f"{'B/kept row':>10} {'segment lines/s':>15} {'lines/CPU-s':>11}"
        )
        previous = {"read": 0, "elapsed_s": 0.0, "cpu_s": 0.0}
        for point in run["memory"]:
            lines = point["read"] - previous["read"]
            rate = lines / max(point["elapsed_s"] - previous["elapsed_s"], 1e-9)
            cpu_rate = lines / max(point["cpu_s"] - previous["cpu_s"], 1e-9)
            print(
                f"{point['share']:>6.0%} {point['read']:>10,} {point['kept']:>8,} "
                f"{point['peak_rss_mib']:>12,.0f} {point['rss_growth_mib'] or 0:>10,.0f} "
                f"{point['bytes_per_kept_row'] or 0:>10,.0f} {rate:>15,.0f} {cpu_rate:>11,.0f}"
            )
            previous = point

    print(f"\nrejected per step at {big['lines']:,} lines:")
    rejected = big["stats"]["rejected"]
    print("  " + ", ".join(f"{step} {rejected.get(step, 0):,}" for step in STEPS))
    print(f"  total {big['stats']['rejected_total']:,}, kept {big['kept']:,}")
    if len(runs) > 1:
        small = runs[0]
        print(
            f"\nscaling, {big['lines']:,} vs {small['lines']:,} lines (1.00 = linear): "
            f"lines/s {big['lines_per_s']:,.0f} vs {small['lines_per_s']:,.0f}, ratio "
            f"{big['lines_per_s'] / small['lines_per_s']:.2f}; lines/CPU-s "
            f"{big['lines_per_cpu_s']:,.0f} vs {small['lines_per_cpu_s']:,.0f}, ratio "
            f"{big['lines_per_cpu_s'] / small['lines_per_cpu_s']:.2f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="corpus size (lines)")
    parser.add_argument(
        "--scale-lines",
        type=int,
        default=100_000,
        help="smaller size run first for the scaling check (0 = skip)",
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="real text to repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact", type=float, default=0.35, help="weight of exact repeats")
    parser.add_argument("--near", type=float, default=0.30, help="weight of near-duplicates")
    parser.add_argument("--new", type=float, default=0.35, help="weight of new (spliced) lines")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--worker-result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.source.is_file():
        sys.exit(f"{args.source}: no such file; pass --source with an Assamese text file.")
    if args.worker_result is not None:
        args.worker_result.write_text(json.dumps(run_one(args, args.lines)))
        return
    sizes = [args.lines]
    if 0 < args.scale_lines < args.lines:
        sizes.insert(0, args.scale_lines)
    runs = []
    for lines in sizes:
        print(f"--- {lines:,} lines", file=sys.stderr)
        runs.append(run_in_subprocess(args, lines))
    print_report(runs, args.seed)
    results = {
        "benchmark": "clean_throughput",
        "pipeline": "load_rows(text) -> Cleaner(language='as', dedup='near').clean",
        "machine": machine_info(),
        "settings": {
            "source": str(args.source),
            "seed": args.seed,
            "mix_weights": {"exact": args.exact, "near": args.near, "new": args.new},
            "checkpoints": list(CHECKPOINTS),
        },
        "runs": runs,
    }
    if len(runs) > 1:
        results["scaling_ratio"] = {
            "lines_per_s": runs[-1]["lines_per_s"] / runs[0]["lines_per_s"],
            "lines_per_cpu_s": runs[-1]["lines_per_cpu_s"] / runs[0]["lines_per_cpu_s"],
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
