"""GPU training speed and memory per path, on random-weight Llama shapes (speed and memory do not
depend on the weights' values). QLoRA r=16 on all linear layers, gradient checkpointing on,
except on the toolkit's HF path, whose gradient_checkpointing='auto' recomputes only what the
card needs: some layers, or part of each compiled layer (`:gradient_checkpointing=on`
checkpoints all); one step = forward + backward + optimizer update on the LoRA weights.

Paths:
  toolkit             the toolkit's default GPU path, through the notebooks' own calls
                      (setup_training -> preflight -> run_training, backend auto)
  toolkit-paged8bit   the default path with paged 8-bit AdamW (the optimizer on 16 GB fp16 cards)
  toolkit-hf          the toolkit with backend='hf' (transformers + bitsandbytes + peft, Liger)
  toolkit-hf-noliger  the same without Liger kernels (liger='off'): the effect of Liger
  plain-hf            transformers + bitsandbytes NF4 + peft as their docs show it:
                      prepare_model_for_kbit_training, SDPA, bf16 autocast, torch AdamW
  unsloth-loop        Unsloth's FastLanguageModel + get_peft_model with its own checkpointing,
                      in the same bare loop as plain-hf

A path may carry settings after a colon, e.g. `toolkit-hf:gradient_checkpointing=False` or
`toolkit:dataloader_num_workers=2`, several in one path with the paths split by semicolons
(`--paths "plain-hf;toolkit-hf:gradient_checkpointing=off,memory_budget=0.3"`): RunConfig fields
go to the config, other names to the trainer's arguments, so one run can measure a change against
the path without it. Inside compiled layers the toolkit uses none of Liger's kernels
(`train.liger_kernel_config`): `liger_layers=True` brings back its RMSNorm and SwiGLU (the code
before session 10), `liger_rope=True` its RoPE as well (before 49d1c45). `memory_budget=0.3`
sets the share of their activations compiled layers keep for the backward
(`backends.hf.set_recompute_budget`), as gradient_checkpointing='auto' may choose; use it with
`gradient_checkpointing=off`, which leaves it as set. `card_gib=15` has the pre-flight size the
run for a card of that many GiB (a T4's 15 on the H200), which is what
gradient_checkpointing='auto' decides by.

With `--profile N`, N more steps after the measured ones run under torch.profiler: the JSON gets
the GPU's busy share of that window, the largest gaps between kernels, the top kernels and the
host-device syncs, and `--profile-dir` receives the Chrome trace (gzip) for a closer look.

`--repeats N` runs the paths in turn N times on the one machine (every other repeat in reverse
order) and adds a summary: each path's median tokens/s and range, and its ratio to the Unsloth
loop's median and to the loop run beside it in each repeat (host-bound paths moved by up to 19%
between two runs of one machine).

Each case runs in its own process (importing Unsloth patches transformers for the process);
output lines that change what a case measured (Unsloth's layers falling back to uncompiled ones)
go into its JSON as `caveats` and are flagged in the table.
Warm-up steps are left out; the step time is the median of the measured steps. MFU counts the
model's FLOPs (4 x matmul weights per token, since frozen weights get no weight gradients, plus
causal attention; recomputation not counted) against a measured bf16 matmul ceiling.

    python benchmarks/gpu_perf.py --tokenizer .gpu/tokenizer --data .gpu/data

writes benchmarks/results/gpu_perf.json and prints a table.
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

SHAPE_BATCHES = {  # shape: (sequence length, batch size)
    "smollm2-135m": (2048, 4),
    "llama-3.2-1b": (2048, 4),
    "llama-3.1-8b": (2048, 2),
}
PATHS = (
    "toolkit",
    "toolkit-paged8bit",
    "toolkit-hf",
    "toolkit-hf-noliger",
    "plain-hf",
    "unsloth-loop",
)
TOOLKIT_PATHS = PATHS[:4]
LORA_R, LORA_ALPHA = 16, 16
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RESULTS = Path(__file__).parent / "results"


# --- numbers ---------------------------------------------------------------------------------


def matmul_ceiling_tflops(size: int = 8192, repeats: int = 10) -> float:
    """Median bf16 matmul rate on random data: the roof MFU is measured against."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / statistics.median(times) / 1e12


def flops_per_token(shape: str, sequence: int) -> float:
    """Training FLOPs per token with a frozen base: forward (2 per weight) and the input
    gradients (2 per weight), plus causal attention (scores and values, forward and backward)."""
    from lowres_ft.shapes import SHAPES

    c = SHAPES[shape]
    d, layers, inner = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    head = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inner  # q, o; k, v; gate, up, down
    matmul_weights = layers * per_layer + d * c["vocab_size"]  # + the output layer
    attention = 6 * layers * sequence * d  # 2*s*d forward (causal half), twice that backward
    return 4 * matmul_weights + attention


def summarise(
    step_seconds: list[float],
    tokens_per_step: int,
    warmup: int,
    measured: list[float] | None = None,
) -> dict[str, Any]:
    """Median of the measured step times (by default all but the first `warmup`)."""
    measured = step_seconds[warmup:] if measured is None else measured
    median = statistics.median(measured)
    return {
        "step_seconds": round(median, 4),
        "step_seconds_all": [round(s, 4) for s in step_seconds],
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": round(tokens_per_step / median, 1),
        "measured_steps": len(measured),
    }


def parse_path(spec: str) -> tuple[str, dict[str, Any]]:
    """'toolkit-hf:gradient_checkpointing=False,optim=adamw_torch' -> the path and its settings."""
    import ast

    path, _, rest = spec.partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        name, _, text = item.partition("=")
        try:
            settings[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[name] = text
    return path, settings


def split_paths(text: str) -> list[str]:
    """'a,b:x=1' -> ['a', 'b:x=1']; with a semicolon anywhere, paths are split on semicolons,
    so that one path can carry several settings: 'a;b:x=1,y=2'."""
    return [p for p in text.split(";" if ";" in text else ",") if p]


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """RunConfig fields and the rest (TrainingArguments names)."""
    from dataclasses import fields

    from lowres_ft.config import RunConfig

    names = {f.name for f in fields(RunConfig)}
    return (
        {k: v for k, v in settings.items() if k in names},
        {k: v for k, v in settings.items() if k not in names},
    )


# --- profiling --------------------------------------------------------------------------------


class GcPauses:
    """Python's garbage collections while the measured steps run: a host-bound step waits for
    each one, and a full (generation 2) collection walks every object the process holds. At 1B
    on an H200 both paths spent 0.2 ms a step in them (docs/performance.md); kept in the JSON so
    that a change which makes them matter shows."""

    def __init__(self) -> None:
        self.active = False
        self.started = 0.0
        self.pauses: list[tuple[int, float]] = []

    def __enter__(self) -> GcPauses:
        import gc

        gc.callbacks.append(self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        import gc

        gc.callbacks.remove(self._record)

    def _record(self, phase: str, info: dict[str, Any]) -> None:
        if not self.active:
            return
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started:
            self.pauses.append((info["generation"], time.perf_counter() - self.started))
            self.started = 0.0

    def summary(self, steps: int) -> dict[str, Any]:
        import gc

        by_generation: dict[str, list[float]] = {}
        for generation, seconds in self.pauses:
            by_generation.setdefault(f"gen{generation}", []).append(seconds)
        return {
            "gc_seconds_per_step": round(sum(s for _, s in self.pauses) / max(steps, 1), 5),
            "gc_collections": {
                name: {"count": len(t), "seconds": round(sum(t), 4), "max": round(max(t), 4)}
                for name, t in sorted(by_generation.items())
            },
            "gc_tracked_objects": len(gc.get_objects()),
        }


class StepProfiler:
    """torch.profiler over a window of steps, reduced to what says where a step's time goes:
    how busy the GPU was, its largest idle gaps, the top kernels and the host-device syncs."""

    def __init__(self, folder: str | None, name: str) -> None:
        self.folder, self.name = folder, name
        self.profile: Any = None
        self.started = 0.0
        self.summary: dict[str, Any] = {}

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        self.profile = profile(activities=activities, with_stack=bool(self.folder))
        self.profile.__enter__()
        self.started = time.perf_counter()

    def stop(self, steps: int) -> dict[str, Any]:
        import torch

        torch.cuda.synchronize()
        wall = time.perf_counter() - self.started
        self.profile.__exit__(None, None, None)
        self.summary = summarise_profile(self.profile, wall, steps)
        if self.folder:
            import gzip

            Path(self.folder).mkdir(parents=True, exist_ok=True)
            raw = Path(self.folder) / f"trace_{self.name}.json"
            self.profile.export_chrome_trace(str(raw))
            with raw.open("rb") as source, gzip.open(f"{raw}.gz", "wb") as target:
                shutil.copyfileobj(source, target)
            raw.unlink()
        return self.summary


def summarise_profile(profile: Any, wall: float, steps: int) -> dict[str, Any]:
    events = profile.events()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in events
        if str(getattr(e, "device_type", "")).endswith("CUDA") and e.time_range.end > 0
    )
    busy, gaps, end = 0.0, [], None
    for start, stop, name in kernels:
        if end is not None and start > end:
            gaps.append((start - end, name))
        if end is None or start > end:
            busy += stop - start
        elif stop > end:
            busy += stop - end
        end = stop if end is None else max(end, stop)
    syncs: dict[str, int] = {}
    for e in events:
        if e.name in (
            "cudaStreamSynchronize",
            "cudaDeviceSynchronize",
            "cudaEventSynchronize",
            "aten::_local_scalar_dense",
        ):
            syncs[e.name] = syncs.get(e.name, 0) + 1
    by_kernel: dict[str, list[float]] = {}
    for start, stop, name in kernels:
        by_kernel.setdefault(name, []).append(stop - start)
    top = sorted(by_kernel.items(), key=lambda item: -sum(item[1]))[:15]
    gaps.sort(reverse=True)
    return {
        "steps": steps,
        "wall_seconds_per_step": round(wall / steps, 4),
        "gpu_busy_seconds_per_step": round(busy / 1e6 / steps, 4),
        "gpu_busy_share": round(busy / 1e6 / wall, 3),
        "kernels_per_step": len(kernels) // steps,
        "gaps_over_1ms_per_step": round(sum(1 for g, _ in gaps if g > 1000) / steps, 1),
        "gap_seconds_per_step": round(sum(g for g, _ in gaps) / 1e6 / steps, 4),
        "largest_gaps_ms_before": [(round(g / 1000, 2), n[:60]) for g, n in gaps[:8]],
        "syncs_per_step": {k: round(v / steps, 1) for k, v in syncs.items()},
        "top_kernels_ms_per_step": [
            (name[:70], round(sum(times) / 1000 / steps, 2), len(times) // steps)
            for name, times in top
        ],
    }


# --- models and data -----------------------------------------------------------------------------


def build_model(work: Path, shape: str, tokenizer_dir: str) -> Path:
    """A random-weight bf16 checkpoint of `shape`, built on the GPU (an 8B init on 16 CPU cores
    takes minutes)."""
    from transformers import AutoTokenizer

    from lowres_ft.shapes import build_random_model

    folder = work / "models" / shape
    if not (folder / "config.json").exists():
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        build_random_model(folder, shape, tokenizer, dtype="bfloat16", device="cuda")
        print(f"built {shape} in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def long_rows(data_dir: str, tokenizer_dir: str, sequence: int, count: int) -> list[dict]:
    """Real Bengali conversations joined into multi-turn chats of at least `sequence` tokens,
    so every training row is cut at exactly `sequence` tokens: the shape under test. Counts with
    the `tokenizers` library: importing transformers here would come before Unsloth's import."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    rows = [json.loads(line) for line in Path(data_dir, "train.jsonl").read_text().splitlines()]
    chats, messages, tokens, index = [], [], 0, 0
    while len(chats) < count:
        row = rows[index % len(rows)]
        index += 1
        messages += row["messages"]
        tokens += sum(len(tokenizer.encode(m["content"]).ids) + 5 for m in row["messages"])
        if tokens > sequence + 64:
            chats.append({"source": f"joined:{len(chats)}", "messages": messages})
            messages, tokens = [], 0
    return chats


def write_run_data(run_dir: Path, rows: list[dict], validation: list[dict]) -> None:
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in (("train.jsonl", rows), ("validation.jsonl", validation)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items)
        (folder / name).write_text(text, encoding="utf-8")


# --- the paths --------------------------------------------------------------------------------


def timed_config(
    run_dir: Path,
    model_dir: Path,
    sequence: int,
    batch: int,
    steps: int,
    logging_steps: int = 1,
    **changes: Any,
) -> Any:
    """The notebooks' RunConfig for a timed run: a log line every `logging_steps`, no
    evaluation or checkpoint in between, no learning-rate warm-up."""
    from lowres_ft.config import RunConfig

    return RunConfig(
        run_dir=str(run_dir),
        model_name=str(model_dir),
        max_steps=steps,
        batch_size=batch,
        max_seq_length=sequence,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        eval_steps=0,
        eval_max_rows=2,
        save_steps=100_000,
        save_minutes=0,
        logging_steps=logging_steps,
        warmup_ratio=0.0,
        language="bn",
        **changes,
    )


def timed_run(
    run_dir: Path,
    model_dir: Path,
    data_dir: str,
    tokenizer_dir: str,
    shape: str,
    steps: int,
    logging_steps: int = 1,
    row_steps: int | None = None,
    **changes: Any,
) -> Any:
    """A fresh run folder holding full-length real rows for `row_steps` (default: `steps`)
    steps and 4 for validation, and its timed_config."""
    sequence, batch = SHAPE_BATCHES[shape]
    shutil.rmtree(run_dir, ignore_errors=True)
    rows = long_rows(data_dir, tokenizer_dir, sequence, (row_steps or steps) * batch + 8)
    write_run_data(run_dir, rows[:-4], rows[-4:])
    return timed_config(run_dir, model_dir, sequence, batch, steps, logging_steps, **changes)


WORK = Path("/tmp/lowres_gpu_perf")  # --work's default: built models and run folders


def diagnosis_run(shape: str, name: str, steps: int, row_steps: int | None = None) -> Any:
    """timed_run for a script in benchmarks/diagnose/: the default path (backend, Liger and
    optimizer on auto) on the model `--build` made, the carried .gpu/ data and tokenizer, a run
    folder per `name`, a log line every 4 steps."""
    return timed_run(
        WORK / "runs" / name,
        WORK / "models" / shape,
        ".gpu/data",
        ".gpu/tokenizer",
        shape,
        steps,
        4,
        row_steps,
        backend="auto",
        liger="auto",
        optim="auto",
    )


def profiler_callback(args: argparse.Namespace, first_step: int) -> Any:
    """A trainer callback that profiles args.profile steps from `first_step` on."""
    from transformers import TrainerCallback

    profiler = StepProfiler(args.profile_dir, case_name(args))

    class ProfileWindow(TrainerCallback):
        def on_step_begin(self, train_args, state, control, **kwargs):
            if state.global_step == first_step:
                profiler.start()

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == first_step + args.profile:
                profiler.stop(args.profile)

    return ProfileWindow(), profiler


def gc_window(pauses: GcPauses, first_step: int, last_step: int) -> Any:
    """A trainer callback that records garbage collections in steps first_step+1..last_step,
    the measured ones, each from its start to the next step's start (its log included)."""
    from transformers import TrainerCallback

    class GcWindow(TrainerCallback):
        def on_step_begin(self, train_args, state, control, **kwargs):
            pauses.active = first_step <= state.global_step < last_step

        def on_train_end(self, train_args, state, control, **kwargs):
            pauses.active = False

    return GcWindow()


def file_name(text: str) -> str:
    """`text` as a file name: letters, digits, '.', '_' and '-'."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def case_name(args: argparse.Namespace) -> str:
    """The case with its settings, so that two settings of one path keep apart files."""
    return file_name(f"{args.shape}_{args.spec}")


def run_toolkit(
    args: argparse.Namespace, backend: str, liger: str, optim: str = "auto"
) -> dict[str, Any]:
    """The notebooks' calls, as notebook 02 makes them."""
    from lowres_ft.train import preflight, read_metrics, run_training, setup_training

    sequence, batch = SHAPE_BATCHES[args.shape]
    timed = args.warmup + args.steps
    steps = timed + args.profile
    model_dir = Path(args.work) / "models" / args.shape
    run_dir = Path(args.work) / "runs" / case_name(args)
    config_changes, trainer_changes = split_settings(args.settings)
    liger_rope = trainer_changes.pop("liger_rope", False)
    liger_layers = trainer_changes.pop("liger_layers", False)
    if liger_rope or liger_layers:
        import lowres_ft.train

        kernels = None if liger_rope else {"rope": False}
        lowres_ft.train.liger_kernel_config = lambda compiled_layers: kernels
    budget = trainer_changes.pop("memory_budget", None)
    hardware = None
    if "card_gib" in trainer_changes:
        from dataclasses import replace

        from lowres_ft.backends import detect_hardware

        hardware = replace(detect_hardware(), memory_gib=float(trainer_changes.pop("card_gib")))
    logging_steps = config_changes.pop("logging_steps", args.logging_steps)
    config = timed_run(
        run_dir,
        model_dir,
        args.data,
        args.tokenizer,
        args.shape,
        steps,
        logging_steps,
        **{"backend": backend, "liger": liger, "optim": optim, **config_changes},
    )
    setup = setup_training(config, hardware)
    if budget is not None:  # after setup: compiling the layers sets torch's default
        from lowres_ft.backends.hf import set_recompute_budget

        set_recompute_budget(float(budget))
    for name, value in trainer_changes.items():
        setattr(setup.trainer.args, name, value)
    profiler = None
    if args.profile:
        window, profiler = profiler_callback(args, timed)
        setup.trainer.add_callback(window)
    pauses = GcPauses()
    setup.trainer.add_callback(gc_window(pauses, args.warmup, timed))
    started = time.perf_counter()
    check = preflight(setup)
    preflight_seconds = time.perf_counter() - started
    with pauses:
        run_training(setup, check)
    metrics = [
        m
        for m in read_metrics(run_dir)
        if "loss" in m and m.get("step_seconds") and m["step"] <= timed
    ]
    step_seconds = [m["step_seconds"] for m in metrics]  # per step, averaged over each log interval
    after_warmup = [  # intervals that start after the warm-up
        m["step_seconds"]
        for before, m in zip([{"step": 0}, *metrics], metrics, strict=False)
        if before["step"] >= args.warmup
    ]
    trainer = setup.trainer
    return {
        **summarise(step_seconds, sequence * batch, args.warmup, after_warmup),
        "logging_steps": logging_steps,
        "logged_tokens_per_second": [m["tokens_per_second"] for m in metrics],
        "peak_allocated_gib": max(m.get("memory_peak_gib", 0.0) for m in metrics),
        "peak_reserved_gib": max(m.get("memory_reserved_gib", 0.0) for m in metrics),
        "predicted_peak_gib": check.predicted_peak_gib,
        "preflight_train_peak_gib": check.train_peak_gib,
        "preflight_eval_peak_gib": check.eval_peak_gib,
        "preflight_seconds": round(preflight_seconds, 1),
        "losses": [m["loss"] for m in metrics],
        "choice": str(setup.choice),
        "packing": setup.packing,
        "liger": bool(trainer.args.use_liger_kernel),
        "optim": str(trainer.args.optim),
        "lora_dropout": config.lora_dropout,
        "gradient_checkpointing": setup.checkpointing,
        "card_gib": setup.hardware.memory_gib,
        "settings": args.settings,
        **pauses.summary(args.steps),
        **({"profile": profiler.summary} if profiler else {}),
    }


def load_plain_hf(model_dir: Path, sequence: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=quantization,
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
        device_map={"": 0},
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LLAMA_LINEAR,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, lora)


def load_unsloth(model_dir: Path, sequence: int) -> Any:
    import torch
    import unsloth  # noqa: F401  (first: it patches transformers)
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=sequence, dtype=torch.bfloat16, load_in_4bit=True
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=LLAMA_LINEAR,
        bias="none",
        use_gradient_checkpointing="unsloth",
        max_seq_length=sequence,
    )


def timed_step(model: Any, optimizer: Any, **batch: Any) -> tuple[float, Any]:
    """One bare training step (bf16 autocast forward, backward, optimizer update), timed
    between device synchronisations: (seconds, loss)."""
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return time.perf_counter() - started, loss


def build_in_subprocess(args: argparse.Namespace, shape: str, **options: Any) -> Any:
    """Build (or find) the random-weight `shape` in a process of its own, so this one holds no
    GPU memory afterwards."""
    command = [sys.executable, __file__, "--tokenizer", args.tokenizer, "--data", args.data]
    command += ["--work", args.work, "--build", shape]
    return subprocess.run(command, **options)


def run_loop(args: argparse.Namespace, loader: Any) -> dict[str, Any]:
    """A bare training loop: fresh random tokens each step, bf16 autocast, AdamW."""
    import torch

    sequence, batch = SHAPE_BATCHES[args.shape]
    model = loader(Path(args.work) / "models" / args.shape, sequence)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    vocab = model.config.vocab_size
    torch.cuda.reset_peak_memory_stats()
    step_seconds, losses = [], []
    with GcPauses() as pauses:
        for step in range(args.warmup + args.steps):
            pauses.active = step >= args.warmup
            ids = torch.randint(0, min(vocab, 49152), (batch, sequence), device="cuda")
            seconds, loss = timed_step(model, optimizer, input_ids=ids, labels=ids)
            step_seconds.append(seconds)
            losses.append(round(loss.item(), 4))
        pauses.active = False
    profile = {}
    if args.profile:
        profiler = StepProfiler(args.profile_dir, case_name(args))
        profiler.start()
        for _ in range(args.profile):
            ids = torch.randint(0, min(vocab, 49152), (batch, sequence), device="cuda")
            timed_step(model, optimizer, input_ids=ids, labels=ids)
        profile = {"profile": profiler.stop(args.profile)}
    return {
        **summarise(step_seconds, sequence * batch, args.warmup),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
        "losses": losses,
        **pauses.summary(args.steps),
        **profile,
    }


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    spec = args.spec = args.path
    args.path, args.settings = parse_path(spec)
    if args.settings and args.path not in TOOLKIT_PATHS:
        raise SystemExit(f"{spec!r}: settings go with the toolkit paths only")
    if args.path == "toolkit":
        result = run_toolkit(args, "auto", "auto")
    elif args.path == "toolkit-paged8bit":
        result = run_toolkit(args, "auto", "auto", "paged_adamw_8bit")
    elif args.path == "toolkit-hf":
        result = run_toolkit(args, "hf", "auto")
    elif args.path == "toolkit-hf-noliger":
        result = run_toolkit(args, "hf", "off")
    elif args.path == "plain-hf":
        result = run_loop(args, load_plain_hf)
    elif args.path == "unsloth-loop":
        result = run_loop(args, load_unsloth)
    else:
        raise SystemExit(f"unknown path {args.path!r}: use one of {', '.join(PATHS)}")
    sequence, _ = SHAPE_BATCHES[args.shape]
    flops = flops_per_token(args.shape, sequence) * result["tokens_per_second"]
    return {
        "shape": args.shape,
        "path": spec,
        "sequence": sequence,
        "batch": SHAPE_BATCHES[args.shape][1],
        **result,
        "model_tflops": round(flops / 1e12, 1),
        "mfu": round(flops / 1e12 / args.ceiling, 4) if args.ceiling else None,
        "gpu": torch.cuda.get_device_name(0),
    }


# --- orchestration ------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    from importlib import metadata

    names = ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "liger-kernel")
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# Lines in a case's output that change what it measured: Unsloth falls back to uncompiled decoder
# layers after `block compile failed (RuntimeError: dictionary changed size during iteration)`,
# which happened in 4 of 12 Unsloth processes at 49d1c45 (docs/performance.md); its cause, a
# traced read of sys.modules, is settled at load since 738999a, and the check stays to show it.
CAVEATS = ("compile failed",)


def caveats(done: subprocess.CompletedProcess) -> list[str]:
    """The caveat lines of a finished case's output (stdout and stderr), each once."""
    lines = f"{done.stdout}\n{done.stderr}".splitlines()
    return sorted({line.strip()[:200] for line in lines if any(c in line for c in CAVEATS)})


def child(args: argparse.Namespace, *extra: str, timeout: int) -> tuple[dict | None, str]:
    command = [sys.executable, __file__, "--tokenizer", args.tokenizer, "--data", args.data]
    command += ["--work", args.work, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--ceiling", str(args.ceiling), "--logging-steps", str(args.logging_steps)]
    command += ["--profile", str(args.profile), *extra]
    if args.profile_dir:
        command += ["--profile-dir", args.profile_dir]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        return None, f"timed out after {timeout} s: {str(error.stderr or '')[-2000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if lines:
        result = json.loads(lines[-1][7:])
        noted = caveats(done)
        if noted:
            result["caveats"] = noted
        return result, ""
    return None, (done.stderr or done.stdout)[-4000:]


def print_table(results: list[dict], ceiling: float) -> None:
    print(f"bf16 matmul ceiling {ceiling:.0f} TFLOP/s")
    width = max([20, *(len(r["path"]) + 2 for r in results)])
    print(
        f"{'shape':<14}{'path':<{width}}{'tok/s':>9}{'step s':>8}{'alloc GiB':>10}{'resv GiB':>9}"
        f"{'MFU':>7}{'pred GiB':>9}{'GPU busy':>9}"
    )
    for r in results:
        if "error" in r:
            last = (r["error"].strip().splitlines() or ["?"])[-1][:70]
            print(f"{r['shape']:<14}{r['path']:<{width}} ERROR {last}")
            continue
        predicted = r.get("predicted_peak_gib")
        busy = r.get("profile", {}).get("gpu_busy_share")
        print(
            f"{r['shape']:<14}{r['path']:<{width}}{r['tokens_per_second']:>9.0f}"
            f"{r['step_seconds']:>8.3f}{r['peak_allocated_gib']:>10.2f}"
            f"{r['peak_reserved_gib']:>9.2f}{(r['mfu'] or 0) * 100:>6.1f}%"
            + (f"{predicted:>9.2f}" if predicted else f"{'':>9}")
            + (f"{busy:>9.0%}" if busy is not None else f"{'':>9}")
            + ("  ! " + r["caveats"][0][:60] if r.get("caveats") else "")
        )


def current_commit() -> str | None:
    """The checked-out commit, "+changes" when the tree differs from it: a result names its code."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (commit + ("+changes" if changed else "")) or None


def repeat_order(paths: list[str], repeat: int) -> list[str]:
    """The paths of one repeat: every other repeat reversed. A machine's host speed drifts
    within a call (the loop ran 54,224 then 40,785 tokens/s, a repeat apart), and a path that
    always ran first would keep the faster minutes."""
    return paths if repeat % 2 == 0 else paths[::-1]


def repeat_summary(results: list[dict]) -> list[dict[str, Any]]:
    """Per shape and path over the repeats: median tokens/s, its range, and each path's median
    against the Unsloth loop's median and, repeat by repeat, against the loop run beside it.
    Host-bound paths move by up to 19% between runs on one machine, so one pair says little."""
    rows: list[dict[str, Any]] = []
    shapes = dict.fromkeys(r["shape"] for r in results)
    for shape in shapes:
        done = [r for r in results if r["shape"] == shape and "error" not in r]
        by_path: dict[str, dict[int, float]] = {}
        for r in done:
            by_path.setdefault(r["path"], {})[r.get("repeat", 0)] = r["tokens_per_second"]
        loop = by_path.get("unsloth-loop", {})
        for path, runs in by_path.items():
            values = list(runs.values())
            row: dict[str, Any] = {
                "shape": shape,
                "path": path,
                "runs": len(values),
                "median_tokens_per_second": round(statistics.median(values), 1),
                "min_tokens_per_second": min(values),
                "max_tokens_per_second": max(values),
            }
            if loop and path != "unsloth-loop":
                row["median_vs_loop_median"] = round(
                    row["median_tokens_per_second"] / statistics.median(loop.values()), 3
                )
                row["vs_loop_per_repeat"] = [
                    round(runs[i] / loop[i], 3) for i in sorted(runs) if i in loop
                ]
            rows.append(row)
    return rows


def print_repeat_summary(rows: list[dict[str, Any]]) -> None:
    print(f"{'shape':<14}{'path':<24}{'runs':>5}{'median tok/s':>13}{'range':>18}  vs loop")
    for row in rows:
        spread = f"{row['min_tokens_per_second']:.0f}-{row['max_tokens_per_second']:.0f}"
        against = ""
        if "median_vs_loop_median" in row:
            pairs = ", ".join(f"{x:.3f}" for x in row["vs_loop_per_repeat"])
            against = f"{row['median_vs_loop_median']:.3f} x (per repeat: {pairs})"
        print(
            f"{row['shape']:<14}{row['path']:<24}{row['runs']:>5}"
            f"{row['median_tokens_per_second']:>13.0f}{spread:>18}  {against}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    parser.add_argument("--data", required=True, help="a folder with train.jsonl from notebook 01")
    parser.add_argument("--shapes", default="llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--logging-steps",
        type=int,
        default=1,
        help="toolkit paths: log (and sync) every N steps; 5 is the default a user runs with",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="profile N steps after the measured ones"
    )
    parser.add_argument("--profile-dir", help="where the Chrome traces (gzip) go")
    parser.add_argument("--work", default=str(WORK))
    parser.add_argument("--timeout", type=int, default=420, help="seconds per case")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the paths in turn this many times on the machine, every other repeat in the "
        "reverse order (loop, toolkit, toolkit, loop, ...)",
    )
    parser.add_argument("--output", default=str(RESULTS / "gpu_perf.json"))
    parser.add_argument("--ceiling", type=float, default=0.0)
    parser.add_argument("--build", metavar="SHAPE")
    parser.add_argument("--keep-models", action="store_true", help="for gpu_ddp.py next")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "PATH"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.build:
        build_model(Path(args.work), args.build, args.tokenizer)
        return
    if args.one:
        args.shape, args.path = args.one
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    import torch

    args.ceiling = matmul_ceiling_tflops()
    torch.cuda.empty_cache()
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "bf16_matmul_ceiling_tflops": round(args.ceiling, 1),
        "versions": versions(),
        "commit": current_commit(),
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "targets": "all linear"},
        "results": [],
    }
    output = Path(args.output)
    for shape in args.shapes.split(","):
        started = time.perf_counter()
        built = build_in_subprocess(args, shape, capture_output=True, text=True)
        if built.returncode:
            print(built.stderr[-3000:])
            continue
        print(f"{shape}: model ready in {time.perf_counter() - started:.0f} s", flush=True)
        for repeat in range(args.repeats):
            for path in repeat_order(split_paths(args.paths), repeat):
                started = time.perf_counter()
                result, error = child(args, "--one", shape, path, timeout=args.timeout)
                seconds = round(time.perf_counter() - started, 1)
                entry = result or {"shape": shape, "path": path, "error": error}
                entry["case_seconds"] = seconds
                entry["repeat"] = repeat
                report["results"].append(entry)
                if args.repeats > 1:
                    report["repeat_summary"] = repeat_summary(report["results"])
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text(json.dumps(report, indent=2) + "\n")
                status = f"{entry['tokens_per_second']:.0f} tok/s" if result else "ERROR"
                print(f"{shape} {path} #{repeat}: {status} ({seconds} s)", flush=True)
                if not result:
                    print(error[-1500:], flush=True)
        if shape == "llama-3.1-8b" and not args.keep_models:  # 16 GB of disk
            shutil.rmtree(Path(args.work) / "models" / shape, ignore_errors=True)
    print_table(report["results"], args.ceiling)
    if args.repeats > 1:
        print_repeat_summary(report["repeat_summary"])
    print(f"wrote {output}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
