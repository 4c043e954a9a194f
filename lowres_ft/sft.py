"""TRL's SFTTrainer without host-device syncs in the training step.

Every `.item()` on a GPU tensor makes Python wait until the GPU has run all it was given; the GPU
then idles while Python prepares the next kernels. After every micro-batch TRL reads entropy,
token accuracy and a token count back, and the Trainer reads its own token count: on an H200
the GPU was busy for 0.149 s of a 0.247 s Llama-3.2-1B step on the HF backend
(docs/performance.md). Here a training step reads nothing back: the token count stays on the GPU
until the next log or checkpoint, and TRL's training-only metrics (entropy, accuracy) are not
computed, in training or in evaluation.

A module of its own, imported once the backend is chosen, because Unsloth must be imported
before TRL.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer
from trl import SFTTrainer


class SyncFreeSFTTrainer(SFTTrainer):
    _unread_tokens: Any = None
    _parameter_count: int | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """What TRL's compute_loss does for the loss itself, without its metrics, in training
        and evaluation alike: evaluation only needs the loss (prediction_loss_only), and TRL's
        entropy would make a backend that returns logits in evaluation hold them."""
        inputs.pop("_prediction_loss_only", None)  # TRL's prediction_step marks its inputs
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True  # MoE: the router loss joins the loss
        if self.args.use_liger_kernel:
            inputs["skip_logits"] = True
            inputs["use_token_scaling"] = self.args.loss_type == "dft"
        # Looked up on the class at call time: Unsloth's patched version where it is installed.
        return Trainer.compute_loss(
            self,
            model,
            inputs,
            return_outputs=return_outputs,
            num_items_in_batch=num_items_in_batch,
        )

    def _track_num_input_tokens(self, inputs):
        """The Trainer's non-padding count, summed on the device and read at the next log."""
        if self.args.include_num_input_tokens_seen == "no":
            return super()._track_num_input_tokens(inputs)
        if "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        else:  # padding-free rows carry no mask
            count = (inputs["input_ids"] != self.processing_class.pad_token_id).sum()
        self._unread_tokens = count if self._unread_tokens is None else self._unread_tokens + count

    def _read_tokens(self) -> None:
        if self._unread_tokens is not None:
            gathered = self.accelerator.gather(self._unread_tokens)  # every process's count
            self.state.num_input_tokens_seen += int(gathered.sum().item())
            self._unread_tokens = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._read_tokens()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        self._read_tokens()  # the saved state has the count up to this step, for resuming
        super()._save_checkpoint(model, trial)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The Trainer walks every parameter and module to count them after every micro-batch;
        the count does not change during training."""
        if self._parameter_count is None:
            if not hasattr(self.model, "num_parameters"):
                return 0
            self._parameter_count = self.model.num_parameters(exclude_embeddings=True)
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs:
            return 0
        return 6 * inputs[main_input].numel() * self._parameter_count
