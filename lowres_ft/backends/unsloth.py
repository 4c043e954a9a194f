"""Unsloth: FastLanguageModel with its own gradient checkpointing and fused kernels.

Only imported where a supported NVIDIA GPU is present (see `choose_backend`). The tokenizer is
ours, not Unsloth's, so the stop-token contract is the same on every backend.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from lowres_ft.backends import LLAMA_LINEAR, BackendChoice, target_modules, torch_dtype
from lowres_ft.config import RunConfig
from lowres_ft.models import resolve_model


class UnslothBackend:
    def load(self, config: RunConfig, choice: BackendChoice, tokenizer: Any) -> Any:
        from unsloth import FastLanguageModel
        from unsloth.kernels import fast_lora

        settle_fake_quant_lookup(fast_lora)

        model, _ = FastLanguageModel.from_pretrained(
            model_name=resolve_model(config.model_name),
            max_seq_length=config.max_seq_length,
            dtype=torch_dtype(choice.precision),
            load_in_4bit=choice.load_in_4bit,
            trust_remote_code=config.trust_remote_code,
        )
        modules = target_modules(config)
        return FastLanguageModel.get_peft_model(
            model,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=LLAMA_LINEAR if modules == "all-linear" else modules,
            bias="none",
            use_gradient_checkpointing=config.gradient_checkpointing != "off" and "unsloth",
            random_state=config.seed,
            use_rslora=config.use_rslora,
            max_seq_length=config.max_seq_length,
        )

    def for_training(self, model: Any) -> Any:
        """What Unsloth's SFTTrainer.train() does first: model.train() alone leaves its gradient
        checkpointing unarmed (a step before train() peaked at 9.4 GiB against 2.3 in training,
        Llama-3.2-1B, docs/performance.md)."""
        from unsloth import FastLanguageModel

        checkpointing = getattr(model, "_unsloth_gradient_checkpointing", True)
        return FastLanguageModel.for_training(model, use_gradient_checkpointing=checkpointing)

    def for_inference(self, model: Any) -> Any:
        from unsloth import FastLanguageModel

        return FastLanguageModel.for_inference(model)


QAT_MODULE = "torchao.prototype.qat"


def settle_fake_quant_lookup(fast_lora: ModuleType) -> bool:
    """Unsloth's fused LoRA asks, on every call inside its compiled decoder block, whether
    torchao's QAT linears are loaded, by reading `sys.modules`; it caches the answer only when
    they are. Tracing that read makes dynamo walk all of `sys.modules`, and when the dict changes
    during the walk the block's compile fails ("dictionary changed size during iteration"): in
    the toolkit's process the layers then ran uncompiled (5 of 9 runs at 1B,
    docs/performance.md). This toolkit does no QAT, so without torchao's QAT loaded the answer
    is settled once: none. True if it was settled here."""
    if (
        QAT_MODULE in sys.modules
        or getattr(fast_lora, "_FORWARD_FAKE_QUANT_LINEARS", ()) is not None
    ):
        return False
    fast_lora._FORWARD_FAKE_QUANT_LINEARS = ()
    return True
