"""GPU check of the training stage: each backend trains random-weight models of real shapes for a
few steps through the same calls as notebook 02 (setup_training -> preflight -> run_training),
and the pre-flight's predicted peak memory is compared with the peak measured during training.

Runs each case in its own process (importing Unsloth patches transformers for the process):

    python benchmarks/gpu_train_check.py --tokenizer DIR --data DIR [--steps 6]

DIR of --data holds train.jsonl and validation.jsonl from notebook 01. Writes
benchmarks/results/gpu_train_check.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    # shape, backend, precision ("auto" or a forced policy)
    ("smollm2-135m", "unsloth", "auto"),
    ("smollm2-135m", "hf", "auto"),
    ("llama-3.2-1b", "unsloth", "auto"),
    ("llama-3.2-1b", "hf", "auto"),
    ("smollm2-135m", "hf", "fp16"),  # the T4 policy, forced on this GPU
]


def run_case(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer

    from lowres_ft.config import RunConfig
    from lowres_ft.shapes import build_random_model
    from lowres_ft.train import (
        adapter_dtypes,
        preflight,
        read_metrics,
        run_training,
        setup_training,
    )

    work = Path(args.work)
    model_dir = work / "models" / args.shape
    if not (model_dir / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        build_random_model(model_dir, args.shape, tokenizer, dtype="bfloat16")
    run_dir = work / "runs" / f"{args.shape}-{args.backend}-{args.precision}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(args.data, run_dir / "data")
    config = RunConfig(
        run_dir=str(run_dir),
        model_name=str(model_dir),
        backend=args.backend,
        precision=args.precision,
        max_steps=args.steps,
        batch_size=4,
        max_seq_length=512,
        eval_steps=0,
        eval_max_rows=8,
        save_steps=1000,
        logging_steps=1,
        language="bn",
    )
    setup = setup_training(config)
    dtypes_after_setup = sorted(adapter_dtypes(setup.model))
    check = preflight(setup)
    started = time.perf_counter()
    result = run_training(setup, check)
    seconds = time.perf_counter() - started
    metrics = read_metrics(run_dir)
    measured = max(m.get("memory_peak_gib", 0.0) for m in metrics)
    losses = [m["loss"] for m in metrics if "loss" in m]
    speeds = [m["tokens_per_second"] for m in metrics if m.get("tokens_per_second")]
    trainer = setup.trainer
    return {
        "shape": args.shape,
        "backend": setup.choice.name,
        "choice": str(setup.choice),
        "precision": setup.choice.precision,
        "trainer_bf16": bool(trainer.args.bf16),
        "trainer_fp16": bool(trainer.args.fp16),
        "accelerate_mixed_precision": str(trainer.accelerator.mixed_precision),
        "adapter_dtypes_after_setup": dtypes_after_setup,
        "adapter_dtypes_after_training": sorted(adapter_dtypes(setup.model)),
        "footprint": setup.footprint,
        "preflight": check.__dict__,
        "predicted_peak_gib": check.predicted_peak_gib,
        "measured_peak_gib": measured,
        "measured_over_predicted": round(measured / check.predicted_peak_gib, 3),
        "steps": result.global_step,
        "losses": losses,
        "median_tokens_per_second": sorted(speeds)[len(speeds) // 2] if speeds else 0.0,
        "seconds": round(seconds, 1),
        "gpu": torch.cuda.get_device_name(0),
        "memory": [m.to_json() for m in setup.memory],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", default="/tmp/lowres_gpu_check")
    parser.add_argument(
        "--output", default=str(Path(__file__).parent / "results" / "gpu_train_check.json")
    )
    parser.add_argument("--one", nargs=3, metavar=("SHAPE", "BACKEND", "PRECISION"))
    args = parser.parse_args()
    if args.one:
        args.shape, args.backend, args.precision = args.one
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    results = []
    for shape, backend, precision in CASES:
        command = [
            sys.executable,
            __file__,
            "--tokenizer",
            args.tokenizer,
            "--data",
            args.data,
            "--steps",
            str(args.steps),
            "--work",
            args.work,
            "--one",
            shape,
            backend,
            precision,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            results.append(json.loads(lines[-1][7:]))
        else:
            results.append(
                {
                    "shape": shape,
                    "backend": backend,
                    "precision": precision,
                    "error": (done.stderr or done.stdout)[-4000:],
                }
            )
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    head = f"{'shape':<14}{'backend':<9}{'prec':<6}{'pred GiB':>9}{'meas GiB':>9}"
    print(f"{head}{'ratio':>7}{'tok/s':>9}  adapters")
    for r in results:
        if "error" in r:
            last = r["error"].splitlines()[-1][:80]
            print(f"{r['shape']:<14}{r['backend']:<9}{r['precision']:<6} ERROR {last}")
            continue
        print(
            f"{r['shape']:<14}{r['backend']:<9}{r['precision']:<6}{r['predicted_peak_gib']:>9.2f}"
            f"{r['measured_peak_gib']:>9.2f}{r['measured_over_predicted']:>7.2f}"
            f"{r['median_tokens_per_second']:>9.0f}  {r['adapter_dtypes_after_training']}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
