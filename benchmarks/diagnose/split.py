"""Split the default path's step against Unsloth's bare loop, in one process on the toolkit's
model: train() as notebook 02 runs it, then bare steps on random tokens, on the trainer's real
batches (with and without the attention mask), and the trainer's own training_step.
Usage: split.py SHAPE"""

import itertools
import json
import sys
import time
from pathlib import Path

import unsloth  # noqa: F401  (first)

sys.path[:0] = ["benchmarks", "."]
import gpu_perf as g  # noqa: E402
import torch  # noqa: E402

from lowres_ft.backends import get_backend  # noqa: E402
from lowres_ft.train import preflight, read_metrics, run_training, setup_training  # noqa: E402

shape = sys.argv[1]
sequence, batch = g.SHAPE_BATCHES[shape]
config = g.diagnosis_run(shape, "split", 12, row_steps=40)
run_dir = Path(config.run_dir)
setup = setup_training(config)
check = preflight(setup)
run_training(setup, check)
metrics = [m for m in read_metrics(run_dir) if "loss" in m and m.get("step_seconds")]
print("E train() step_seconds per log interval:", [m["step_seconds"] for m in metrics])
trainer, model = setup.trainer, setup.trainer.model
get_backend(setup.choice).for_training(model)
model.train()
print("adapter dtypes:", {str(p.dtype) for p in model.parameters() if p.requires_grad})
loader = trainer.get_train_dataloader()
batches = [trainer._prepare_inputs(b) for b in itertools.islice(loader, 13)]
first = batches[0]
print(
    "batch:", {k: (tuple(v.shape), str(v.dtype)) for k, v in first.items() if hasattr(v, "shape")}
)
if "attention_mask" in first:
    print(
        "padding share:",
        [round(1 - b["attention_mask"].float().mean().item(), 4) for b in batches[:6]],
    )
print(
    "trained share:", [round((b["labels"] != -100).float().mean().item(), 3) for b in batches[:6]]
)
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
vocab = min(model.config.vocab_size, 49152)
results = {}


def bare(inputs, sync_each=False):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if sync_each:
        torch.cuda.synchronize()


def trainer_step(inputs):
    labels = inputs["labels"]
    items = (labels[..., 1:] != -100).sum()
    trainer.training_step(model, inputs, items)
    trainer.accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    model.zero_grad()


def timed(name, step, make_inputs, n=10, warm=3):
    for i in range(warm):
        step(make_inputs(i))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(n):
        step(make_inputs(warm + i))
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / n
    results[name] = round(seconds, 4)
    print(f"{name}: {seconds:.4f} s/step, {sequence * batch / seconds:,.0f} tok/s", flush=True)


def random_ids(i):
    ids = torch.randint(0, vocab, (batch, sequence), device="cuda")
    return {"input_ids": ids, "labels": ids}


def real(i):
    return dict(batches[i % len(batches)])


def real_no_mask(i):
    b = real(i)
    b.pop("attention_mask", None)
    return b


def real_ids_all_labels(i):
    ids = batches[i % len(batches)]["input_ids"]
    return {"input_ids": ids, "labels": ids}


for repeat in range(2):
    timed(f"A random ids, sync each step #{repeat}", lambda x: bare(x, True), random_ids)
    timed(f"A2 random ids, no sync #{repeat}", bare, random_ids)
    timed(f"B real batch #{repeat}", bare, real)
    timed(f"C real batch without mask #{repeat}", bare, real_no_mask)
    timed(f"C2 real ids, every token a label #{repeat}", bare, real_ids_all_labels)
    timed(f"D trainer.training_step + clip + zero_grad #{repeat}", trainer_step, real)
print("SPLIT " + json.dumps({"train_intervals": [m["step_seconds"] for m in metrics], **results}))
