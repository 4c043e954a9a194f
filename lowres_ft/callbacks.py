"""Trainer callbacks: the metrics log, the NaN guard and time-based checkpoints.

A module of their own because they subclass transformers' TrainerCallback: `lowres_ft.train` only
imports them once the backend is chosen, so Unsloth (which must come first) is imported before
transformers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from lowres_ft.memory import GIB, reset_peak
from lowres_ft.train import METRICS_FILE

if TYPE_CHECKING:
    from lowres_ft.train import TrainingSetup


class MetricsCallback(TrainerCallback):
    """Appends each log (loss, learning rate, grad norm, step time, tokens/s, memory) to
    metrics.jsonl; on resume, drops lines past the checkpoint so the log stays continuous."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.path = Path(setup.config.run_dir) / METRICS_FILE
        self.on_gpu = setup.hardware.device == "cuda"
        self._last_time = 0.0
        self._last_step = 0
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.writes = state.is_world_process_zero  # one process per GPU: the first one logs
        kept = []
        if self.path.exists():
            for line in self.path.read_text("utf-8").splitlines():
                if line.strip() and json.loads(line)["step"] <= state.global_step:
                    kept.append(line)
        if self.writes:
            self.path.write_text("".join(f"{line}\n" for line in kept), "utf-8")
        self._last_time, self._last_step = time.perf_counter(), state.global_step
        self._last_tokens = state.num_input_tokens_seen
        reset_peak()

    def on_log(self, args, state, control, logs=None, **kwargs):
        import torch

        now = time.perf_counter()
        steps = state.global_step - self._last_step
        tokens = state.num_input_tokens_seen - self._last_tokens
        row = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **(logs or {})}
        if steps > 0:
            row["step_seconds"] = round((now - self._last_time) / steps, 4)
            row["tokens_per_second"] = round(tokens / max(now - self._last_time, 1e-9), 1)
            self._last_time, self._last_step, self._last_tokens = (
                now,
                state.global_step,
                state.num_input_tokens_seen,
            )
        if self.on_gpu:
            row["memory_peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            row["memory_reserved_gib"] = round(torch.cuda.memory_reserved() / GIB, 3)
        if self.writes:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


class NanGuard(TrainerCallback):
    """Stops on a NaN/inf loss or one that explodes (fp16 overflow), without saving the bad
    state: the last good checkpoint stays the latest."""

    def __init__(self, factor: float = 5.0) -> None:
        self.factor = factor
        self.history: list[float] = []
        self.reason = ""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        recent = sorted(self.history[-10:])
        median = recent[len(recent) // 2] if recent else None
        if not math.isfinite(loss):
            self.reason = f"loss is {loss} at step {state.global_step}"
        elif median is not None and len(recent) >= 3 and loss > max(self.factor * median, 20.0):
            self.reason = (
                f"loss exploded to {loss:.2f} at step {state.global_step} (median {median:.2f})"
            )
        else:
            self.history.append(loss)
            return
        control.should_training_stop = True
        control.should_save = False


class TimedCheckpoints(TrainerCallback):
    """Saves at least every `minutes`, whatever save_steps says (a Colab session may drop)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds and time.monotonic() - self._last >= self.seconds:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._last = time.monotonic()
