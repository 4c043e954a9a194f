"""transformers + peft: QLoRA on a 4-bit NF4 base (bitsandbytes, double quantisation) on any
CUDA GPU, and plain LoRA in fp32 on the CPU."""

from __future__ import annotations

import logging
import os
from typing import Any

from lowres_ft.backends import BackendChoice, target_modules, torch_dtype
from lowres_ft.config import RunConfig
from lowres_ft.models import resolve_model

logger = logging.getLogger(__name__)


class HFBackend:
    def load(self, config: RunConfig, choice: BackendChoice, tokenizer: Any) -> Any:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM

        dtype = torch_dtype(choice.precision)
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "trust_remote_code": config.trust_remote_code,
            "attn_implementation": "sdpa",
        }
        if choice.name != "cpu":
            # one process per GPU under accelerate/torchrun: each loads its copy on its own GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
        if choice.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_quant_storage=dtype,
            )
        model = AutoModelForCausalLM.from_pretrained(resolve_model(config.model_name), **kwargs)
        if choice.load_in_4bit:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=config.gradient_checkpointing != "off",
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
            if choice.precision == "bf16":
                keep_frozen_weights_in(model, dtype)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=target_modules(config),
            use_rslora=config.use_rslora,
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)

    def for_training(self, model: Any) -> Any:
        model.train()
        return model

    def for_inference(self, model: Any) -> Any:
        model.eval()
        return model


def keep_frozen_weights_in(model: Any, dtype: Any) -> None:
    """prepare_model_for_kbit_training upcasts every weight that is not 4-bit (embeddings, output
    layer, norms) to fp32, which fp16 needs for stability. bf16 has fp32's range, so there the copy
    only doubles their memory and the traffic of every elementwise op: put them back."""
    import torch

    for parameter in model.parameters():
        if parameter.dtype == torch.float32 and not parameter.requires_grad:
            parameter.data = parameter.data.to(dtype)


def compile_decoder_layers(model: Any) -> int:
    """torch.compile each decoder layer in place (regional compilation: the layers share one
    compiled graph, so it compiles in seconds, not once per layer). On the HF backend a GPU step
    waits on Python: peft's LoRA, bitsandbytes' dequantisation and every small op launch from
    Python, layer after layer; compiled, the work between them is fused and launched at once.
    Gradient checkpointing wraps the compiled layer as it wrapped the plain one. A layer that
    fails to compile runs as before (with a warning) rather than stopping the run."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    set_recompute_budget(1.0)  # until the pre-flight chooses less (gradient_checkpointing='auto')
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def set_recompute_budget(budget: float) -> None:
    """The share of their activations (by size) that compiled layers keep for the backward;
    torch.compile's partitioner recomputes the rest from what it keeps, cheapest first by FLOPs
    (`torch._functorch.config.activation_memory_budget`; 1.0, torch's default, keeps all). A
    finer trade than checkpointing whole layers: at Llama-3.1-8B, 2 x 2,048 tokens, on an H200,
    0.15 took the peak from 23.2 to 10.3 GiB for 20% of the speed, where checkpointing every
    layer took it to 7.7 GiB for 28% (docs/performance.md). Layers take a new budget when they
    next compile, so a change clears torch.compile's caches. Process-wide, like the compile."""
    import torch._dynamo
    import torch._functorch.config as functorch_config

    if functorch_config.activation_memory_budget != budget:
        functorch_config.activation_memory_budget = budget
        torch._dynamo.reset()


def decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks that gradient checkpointing and compiling work on, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def uncompile_decoder_layers(model: Any) -> None:
    """Back to eager layers after training: generation feeds a growing cache one token at a
    time, which would recompile the layers for every new shape."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
