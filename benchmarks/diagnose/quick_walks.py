"""gpu_perf --one with quick walks: zero_grad and clip_grad_norm_ over a list of the trainable
weights made once (the Trainer walks every module for each, every step)."""

import sys

import unsloth  # noqa: F401

sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
import gpu_perf

from lowres_ft import sft

original_train = sft.SyncFreeSFTTrainer.train


def train(self, *args, **kwargs):
    model = self.model
    params = [p for p in model.parameters() if p.requires_grad]

    def zero_grad(set_to_none=True):
        for p in params:
            p.grad = None

    model.zero_grad = zero_grad
    clip = self.accelerator.clip_grad_norm_
    self.accelerator.clip_grad_norm_ = lambda parameters, max_norm, norm_type=2: clip(
        params, max_norm, norm_type
    )
    try:
        return original_train(self, *args, **kwargs)
    finally:
        del model.zero_grad
        self.accelerator.clip_grad_norm_ = clip


sft.SyncFreeSFTTrainer.train = train
sys.argv = ["gpu_perf.py", *sys.argv[1:]]
gpu_perf.main()
