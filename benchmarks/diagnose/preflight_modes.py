"""Does the pre-flight's step before train() cost the default path its compiled layers?
Usage: pf.py SHAPE MODE, MODE one of pre (as notebook 02), nopre (train() alone), reset
(pre-flight, then Unsloth's per-layer compile state cleared)."""

import json
import sys
import time
from pathlib import Path

import unsloth  # noqa: F401  (first)

sys.path[:0] = ["benchmarks", "."]
import gpu_perf as g  # noqa: E402

from lowres_ft.train import preflight, read_metrics, run_training, setup_training  # noqa: E402

shape, mode = sys.argv[1], sys.argv[2]
sequence, batch = g.SHAPE_BATCHES[shape]
steps = 16
config = g.diagnosis_run(shape, f"pf_{mode}", steps)
run_dir = Path(config.run_dir)
setup = setup_training(config)
layers = setup.trainer.model.get_base_model().model.layers


def layer_state():
    keys = ("_unsloth_block_mode", "_unsloth_block_checked")
    return sorted({tuple(str(layer.__dict__.get(k)) for k in keys) for layer in layers})


def counters():
    from torch._dynamo.utils import counters as c

    return {
        k: dict(v) for k, v in c.items() if k in ("stats", "frames", "graph_break", "unimplemented")
    }


check = None
if mode in ("pre", "reset"):
    check = preflight(setup)
    print(
        "after pre-flight: layers", layer_state(), "predicted", check.predicted_peak_gib, flush=True
    )
if mode == "reset":
    forward = type(layers[0]).forward
    state = getattr(forward, "_unsloth_block_state", None)
    if state is not None:
        state["start"].clear()
    for layer in layers:
        for key in ("_unsloth_block_mode", "_unsloth_block_checked"):
            layer.__dict__.pop(key, None)
    print("reset: layers", layer_state(), "state found", state is not None, flush=True)
started = time.perf_counter()
run_training(setup, check)
print("train seconds", round(time.perf_counter() - started, 1))
metrics = [m for m in read_metrics(run_dir) if "loss" in m and m.get("step_seconds")]
intervals = [m["step_seconds"] for m in metrics]
measured = intervals[2:]
print(
    "PF "
    + json.dumps(
        {
            "mode": mode,
            "intervals": intervals,
            "tokens_per_second_after_first": round(
                sequence * batch / (sum(measured) / len(measured)), 1
            ),
            "layers_after_training": layer_state(),
            "peak_gib": max(m.get("memory_peak_gib", 0) for m in metrics),
            "predicted": check.predicted_peak_gib if check else None,
            "counters": counters(),
        }
    ),
    flush=True,
)
