"""Training speed on a real length distribution: the Bengali conversations from notebook 01,
tokenised with the embedded model's tokenizer, on a random-weight Llama-3.2-1B shape. Padding
now matters, so the number that counts is effective tokens/s: tokens that are neither padding
nor dropped, per second.

Paths:
  plain-hf-padded     the plain transformers + bitsandbytes + peft loop of gpu_perf.py, batches of
                      4 conversations in shuffled order padded to the longest (as a notebook does
                      with a padding collator)
  toolkit             the toolkit's default recipe through the notebooks' calls (on a GPU with
                      Unsloth: padding-free packing)
  toolkit-hf-padded   backend='hf', packing='off': length-grouped padded batches, Liger
  toolkit-hf-packed   backend='hf', packing auto: these rows average under half of
                      max_seq_length, so padding-free rows, SDPA with a block mask

A path may carry RunConfig settings after a colon, as in gpu_perf.py:
`toolkit-hf-packed:compile_layers=on`.

    python benchmarks/gpu_lengths.py --tokenizer .gpu/tokenizer --data .gpu/data

writes benchmarks/results/gpu_lengths.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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
    file_name,
    load_plain_hf,
    parse_path,
    split_settings,
    timed_config,
    timed_step,
    versions,
    write_run_data,
)

SHAPE, SEQUENCE, BATCH = "llama-3.2-1b", 2048, 4
PATHS = ("plain-hf-padded", "toolkit", "toolkit-hf-padded", "toolkit-hf-packed")


def read_rows(data_dir: str) -> list[dict]:
    text = Path(data_dir, "train.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_plain_padded(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = read_rows(args.data)
    random.Random(0).shuffle(rows)
    model = load_plain_hf(Path(args.work) / "models" / SHAPE, SEQUENCE)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    torch.cuda.reset_peak_memory_stats()
    times, effective, padded = [], [], []
    for step in range(args.warmup + args.steps):
        chats = [r["messages"] for r in rows[step * BATCH : (step + 1) * BATCH]]
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=SEQUENCE, return_tensors="pt"
        ).to("cuda")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        times.append(timed_step(model, optimizer, **batch, labels=labels)[0])
        effective.append(int(batch["attention_mask"].sum()))
        padded.append(batch["input_ids"].numel())
    seconds, tokens = sum(times[args.warmup :]), sum(effective[args.warmup :])
    return {
        "effective_tokens_per_second": round(tokens / seconds, 1),
        "padding_share": round(1 - tokens / sum(padded[args.warmup :]), 3),
        "effective_tokens_per_step": round(tokens / args.steps, 1),
        "step_seconds_all": [round(t, 4) for t in times],
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
    }


def run_toolkit(args: argparse.Namespace, backend: str, packing: str) -> dict[str, Any]:
    from lowres_ft.train import preflight, read_metrics, run_training, setup_training

    changes, _ = split_settings(args.settings)
    run_dir = Path(args.work) / "runs" / file_name(f"lengths-{args.spec}")
    shutil.rmtree(run_dir, ignore_errors=True)
    rows = read_rows(args.data)
    write_run_data(run_dir, rows, rows[:4])
    model_dir = Path(args.work) / "models" / SHAPE
    steps = args.warmup + args.steps
    config = timed_config(
        run_dir,
        model_dir,
        SEQUENCE,
        BATCH,
        steps,
        **{"backend": backend, "packing": packing, **changes},
    )
    setup = setup_training(config)
    run_training(setup, preflight(setup))
    logs = [m for m in read_metrics(run_dir) if "loss" in m and m.get("step_seconds")]
    measured = logs[args.warmup :]
    seconds = sum(m["step_seconds"] for m in measured)
    tokens = sum(m["step_seconds"] * m["tokens_per_second"] for m in measured)
    return {
        "effective_tokens_per_second": round(tokens / seconds, 1),
        "effective_tokens_per_step": round(tokens / len(measured), 1),
        "step_seconds_all": [m["step_seconds"] for m in logs],
        "peak_allocated_gib": max(m.get("memory_peak_gib", 0.0) for m in logs),
        "choice": str(setup.choice),
        "packing": setup.packing,
        "liger": bool(setup.trainer.args.use_liger_kernel),
    }


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    spec = args.spec = args.path
    args.path, args.settings = parse_path(spec)
    if args.path == "plain-hf-padded":
        result = run_plain_padded(args)
    elif args.path == "toolkit":
        result = run_toolkit(args, "auto", "auto")
    elif args.path == "toolkit-hf-padded":
        result = run_toolkit(args, "hf", "off")
    elif args.path == "toolkit-hf-packed":
        result = run_toolkit(args, "hf", "auto")
    else:
        raise SystemExit(f"unknown path {args.path!r}: use one of {', '.join(PATHS)}")
    return {"shape": SHAPE, "path": spec, **result}


def length_stats(tokenizer_dir: str, data_dir: str) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    lengths = sorted(
        sum(len(tokenizer.encode(m["content"]).ids) + 5 for m in r["messages"])
        for r in read_rows(data_dir)
    )
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    return {
        "rows": len(lengths),
        "mean": round(sum(lengths) / len(lengths), 1),
        "p50": pick(0.5),
        "p90": pick(0.9),
        "max": lengths[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--work", default="/tmp/lowres_gpu_perf")
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--output", default=str(RESULTS / "gpu_lengths.json"))
    parser.add_argument("--one", metavar="PATH")
    args = parser.parse_args()
    if args.one:
        args.path = args.one
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    import torch

    common = ["--tokenizer", args.tokenizer, "--data", args.data, "--work", args.work]
    build_in_subprocess(args, SHAPE, check=True)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "versions": versions(),
        "shape": SHAPE,
        "max_seq_length": SEQUENCE,
        "batch_size": BATCH,
        "lengths_in_tokens": length_stats(args.tokenizer, args.data),
        "results": [],
    }
    output = Path(args.output)
    for path in args.paths.split(","):
        command = [sys.executable, __file__, *common, "--warmup", str(args.warmup)]
        command += ["--steps", str(args.steps), "--one", path]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            entry = json.loads(lines[-1][7:]) if lines else {"path": path, "error": done.stderr}
            noted = caveats(done) if lines else []
            if noted:
                entry["caveats"] = noted
        except subprocess.TimeoutExpired:
            entry = {"path": path, "error": f"timed out after {args.timeout} s"}
        entry["case_seconds"] = round(time.perf_counter() - started, 1)
        report["results"].append(entry)
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{path}: {entry.get('effective_tokens_per_second', 'ERROR')}", flush=True)
        if "error" in entry:
            print(entry["error"][-1500:], flush=True)
    baseline = next(
        (r for r in report["results"] if r["path"] == "plain-hf-padded" and "error" not in r), None
    )
    print(f"lengths (tokens): {report['lengths_in_tokens']}")
    print(f"{'path':<40}{'effective tok/s':>16}{'x plain':>9}{'peak GiB':>10}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['path']:<40} ERROR")
            continue
        ratio = (
            r["effective_tokens_per_second"] / baseline["effective_tokens_per_second"]
            if baseline
            else float("nan")
        )
        print(
            f"{r['path']:<40}{r['effective_tokens_per_second']:>16.0f}{ratio:>9.2f}"
            f"{r['peak_allocated_gib']:>10.2f}"
        )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
