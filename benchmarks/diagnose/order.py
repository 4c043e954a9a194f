"""One process, one model: is the toolkit's process slower than the loop's because of the model
it loads or because of what the trainer does to the process? Steps, each timed on the same model:
  T0  bare loop steps on the model as the loop loads it (gpu_perf.load_unsloth), or as the
      toolkit's backend loads it (LOADER=toolkit)
  T1  the same bare steps after the toolkit's SyncFreeSFTTrainer is built around the model
  T2  trainer.train(), as run_training calls it (no pre-flight), log intervals
  T3  the bare steps again after train()
Usage: order.py SHAPE  (env LOADER=loop|toolkit). Under `py-spy record --idle` the host's time
splits by stage: T0 under bare, T2 under train, T3 under bare_after_train."""

import os
import sys
import time
from pathlib import Path

import unsloth  # noqa: F401  (first)

sys.path[:0] = ["benchmarks", "."]
import gpu_perf as g  # noqa: E402
import torch  # noqa: E402

shape = sys.argv[1]
loader = os.environ.get("LOADER", "loop")
sequence, batch = g.SHAPE_BATCHES[shape]
config = g.diagnosis_run(shape, f"order_{loader}", 16)
model_dir = Path(config.model_name)

from lowres_ft.backends import choose_backend, detect_hardware, get_backend  # noqa: E402
from lowres_ft.models import load_tokenizer  # noqa: E402
from lowres_ft.runs import start_run  # noqa: E402
from lowres_ft.train import (  # noqa: E402
    build_datasets,
    fit_rows_to_length,
    sft_config,
)

start_run(config)
hardware = detect_hardware()
choice = choose_backend(config, hardware)
tokenizer = load_tokenizer(config.model_name, config.trust_remote_code)
if loader == "toolkit":
    model = get_backend(choice).load(config, choice, tokenizer)
else:
    model = g.load_unsloth(model_dir, sequence)
model.train()
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=2e-4)
vocab = min(model.config.vocab_size, 49152)
results = {}


def state(tag):
    """What the trainer may have changed on the model between two timings."""
    hooks = [
        (
            n,
            [
                getattr(h, "__qualname__", str(h))
                for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
            ],
        )
        for n, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    ]
    modes = sorted(
        {
            str(layer.__dict__.get("_unsloth_block_mode"))
            for layer in model.get_base_model().model.layers
        }
    )
    print(
        tag,
        {
            "adapter_dtypes": sorted({str(p.dtype) for p in trainable}),
            "hooks": hooks,
            "own_forward": "forward" in vars(model),
            "block_modes": modes,
            "training": model.training,
            "grad_enabled": torch.is_grad_enabled(),
            "threads": torch.get_num_threads(),
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "gc_frozen": __import__("gc").get_freeze_count(),
            "profile_trace": (sys.getprofile() is not None, sys.gettrace() is not None),
            "anomaly": torch.is_anomaly_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "function_modes": torch._C._len_torch_function_stack(),
            "global_hooks": [
                len(getattr(torch.nn.modules.module, name))
                for name in (
                    "_global_forward_pre_hooks",
                    "_global_forward_hooks",
                    "_global_backward_hooks",
                    "_global_backward_pre_hooks",
                )
            ],
            "threads_alive": sorted(t.name for t in __import__("threading").enumerate()),
            "saved_tensor_hooks": torch._C._autograd._top_saved_tensors_default_hooks(False)
            is not None,
        },
        flush=True,
    )


def bare(name, n=12, warm=4):
    state(name)
    times = []
    for _step in range(warm + n):
        ids = torch.randint(0, vocab, (batch, sequence), device="cuda")
        seconds, _ = g.timed_step(model, optimizer, input_ids=ids, labels=ids)
        times.append(seconds)
    median = sorted(times[warm:])[n // 2]
    results[name] = round(median, 4)
    print(
        f"{name}: median {median:.4f} s/step ({sequence * batch / median:,.0f} tok/s)", flush=True
    )


def phases(name, n=8, warm=2):
    """Forward, backward and optimizer step each timed between syncs: which one slows down."""
    rows = []
    for _step in range(warm + n):
        ids = torch.randint(0, vocab, (batch, sequence), device="cuda")
        torch.cuda.synchronize()
        marks = [time.perf_counter()]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        loss.backward()
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        rows.append([b - a for a, b in zip(marks, marks[1:], strict=False)])
    medians = [round(sorted(column)[n // 2], 4) for column in zip(*rows[warm:], strict=False)]
    results[name] = dict(zip(("forward", "backward", "optimizer"), medians, strict=False))
    print(name, results[name], flush=True)


bare("T0 bare, fresh model")
phases("T0 phases")
train_dataset, eval_dataset = build_datasets(config, tokenizer)
train_dataset = fit_rows_to_length(config, train_dataset, "training")
eval_dataset = fit_rows_to_length(config, eval_dataset, "validation")  # evaluated at the start
from lowres_ft.sft import SyncFreeSFTTrainer  # noqa: E402

trainer = SyncFreeSFTTrainer(
    model=model,
    args=sft_config(config, choice, False),
    train_dataset=train_dataset,
    eval_dataset=eval_dataset,
    processing_class=tokenizer,
)
from transformers import TrainerCallback  # noqa: E402

ends = []


class StepClock(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        ends.append(time.perf_counter())


trainer.add_callback(StepClock())
get_backend(choice).for_training(model)  # the trainer's init leaves the model in eval mode
model.train()
bare("T1 bare, trainer built")
started = time.perf_counter()
trainer.train()
print(f"T2 train() {time.perf_counter() - started:.1f} s")
get_backend(choice).for_training(model)
model.train()


def bare_after_train(name):
    """A second name, so a sampling profiler tells these steps from T0's."""
    bare(name)


bare_after_train("T3 bare, after train()")
phases("T3 phases")
steps_seconds = [round(b - a, 4) for a, b in zip(ends, ends[1:], strict=False)]
measured = sorted(steps_seconds[3:])  # steps 5 on
results["T2 train() median step"] = measured[len(measured) // 2]
print("ORDER", {"loader": loader, **results, "train_steps": steps_seconds})
