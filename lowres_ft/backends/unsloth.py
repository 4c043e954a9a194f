"""Unsloth: FastLanguageModel with its own gradient checkpointing and fused kernels.

Only imported where a supported NVIDIA GPU is present (see `choose_backend`). The tokenizer is
ours, not Unsloth's, so the stop-token contract is the same on every backend.
"""

from __future__ import annotations

from typing import Any

from lowres_ft.backends import LLAMA_LINEAR, BackendChoice, target_modules, torch_dtype
from lowres_ft.config import RunConfig
from lowres_ft.models import resolve_model


class UnslothBackend:
    def load(self, config: RunConfig, choice: BackendChoice, tokenizer: Any) -> Any:
        from unsloth import FastLanguageModel

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
            use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
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
