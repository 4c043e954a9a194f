"""Backends behind one small interface: Unsloth where its GPU is there, transformers +
bitsandbytes + peft QLoRA on any other CUDA GPU, plain LoRA on the CPU.

The choice is made from the hardware, never from what happens to import: without a GPU, recent
Unsloth trains on the CPU instead of failing, so a CPU machine never gets it. Precision comes
from the compute capability, because `torch.cuda.is_bf16_supported()` answers True on a T4
(Turing, 7.5) through emulation (unslothai/unsloth #501, #2783, #3956).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from lowres_ft.config import PRECISIONS, ConfigError, RunConfig

logger = logging.getLogger(__name__)

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    compute_capability: tuple[int, int] | None = None
    memory_gib: float = 0.0
    count: int = 0

    def __str__(self) -> str:
        if self.device == "cpu":
            return f"CPU ({self.name})"
        major, minor = self.compute_capability or (0, 0)
        return f"{self.count} x {self.name} ({self.memory_gib:.0f} GiB, compute {major}.{minor})"


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "unsloth", "hf" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32"
    load_in_4bit: bool
    reason: str

    def __str__(self) -> str:
        bits = "4-bit base" if self.load_in_4bit else "16/32-bit base"
        return f"backend {self.name} ({bits}, {self.precision}): {self.reason}"


def detect_hardware() -> Hardware:
    import torch

    if not torch.cuda.is_available():
        import platform

        return Hardware("cpu", platform.processor() or platform.machine())
    props = torch.cuda.get_device_properties(0)
    return Hardware(
        "cuda",
        props.name,
        (props.major, props.minor),
        round(props.total_memory / 2**30, 1),
        torch.cuda.device_count(),
    )


def choose_precision(hardware: Hardware, requested: str = "auto") -> str:
    """bf16 from compute capability 8.0 (Ampere: A100, A10, L4, RTX 30xx/40xx, H100); fp16 on
    Turing/Volta/Pascal (T4, V100, P100); fp32 on the CPU."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision={requested!r}: use one of {', '.join(PRECISIONS)}.")
    if hardware.device == "cpu":
        if requested in ("bf16", "fp16"):
            raise ConfigError(f"precision={requested!r} needs a GPU; on the CPU use fp32 or auto.")
        return "fp32"
    bf16_native = (hardware.compute_capability or (0, 0)) >= (8, 0)
    if requested == "bf16" and not bf16_native:
        raise ConfigError(
            f"precision='bf16' on {hardware.name}: this GPU only emulates bf16 (slow, and "
            "torch.cuda.is_bf16_supported() wrongly says yes). Use precision='fp16' or 'auto'."
        )
    if requested != "auto":
        return requested
    return "bf16" if bf16_native else "fp16"


def _unsloth_problem() -> str | None:
    """Why Unsloth cannot be used here, or None. Importing it patches transformers, so only
    try where a GPU is present."""
    try:
        import unsloth  # noqa: F401
    except Exception as error:  # ImportError, or its version pins failing at import
        return f"unsloth does not import ({type(error).__name__}: {str(error).splitlines()[0]})"
    return None


def _bitsandbytes_problem() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:
        return f"bitsandbytes does not import ({type(error).__name__}: {error})"
    return None


def choose_backend(config: RunConfig, hardware: Hardware | None = None) -> BackendChoice:
    """Pick the backend, precision and quantisation for this machine, and say why."""
    hardware = hardware or detect_hardware()
    precision = choose_precision(hardware, config.precision)
    if hardware.device == "cpu":
        if config.backend in ("unsloth", "hf"):
            raise ConfigError(
                f"backend={config.backend!r} needs a CUDA GPU and none was found; use "
                "backend='cpu' or 'auto' (LoRA on the CPU)."
            )
        return BackendChoice("cpu", precision, False, "no CUDA GPU: LoRA on the CPU in fp32")
    reasons = []
    if config.backend in ("auto", "unsloth"):
        if hardware.compute_capability and hardware.compute_capability < (7, 0):
            problem = f"{hardware.name} (compute < 7.0) is not supported by Unsloth's kernels"
        else:
            problem = _unsloth_problem()
        if problem is None:
            return BackendChoice(
                "unsloth",
                precision,
                config.load_in_4bit,
                f"Unsloth imports and {hardware} is there",
            )
        if config.backend == "unsloth":
            raise ConfigError(f"backend='unsloth': {problem}. Use backend='hf' or 'auto'.")
        reasons.append(problem)
    load_in_4bit = config.load_in_4bit
    if load_in_4bit:
        problem = _bitsandbytes_problem()
        if problem is not None:
            reasons.append(f"{problem}: training the base in {precision} without 4-bit")
            load_in_4bit = False
    reasons.append(
        "transformers + bitsandbytes NF4 + peft QLoRA"
        if load_in_4bit
        else "transformers + peft LoRA"
    )
    return BackendChoice("hf", precision, load_in_4bit, "; ".join(reasons))


class Backend(Protocol):
    """What the trainer needs from a backend: a model with LoRA attached, training mode as the
    training loop sets it, and inference mode."""

    def load(self, config: RunConfig, choice: BackendChoice, tokenizer: Any) -> Any: ...

    def for_training(self, model: Any) -> Any: ...

    def for_inference(self, model: Any) -> Any: ...


def get_backend(choice: BackendChoice) -> Backend:
    if choice.name == "unsloth":
        from lowres_ft.backends.unsloth import UnslothBackend

        return UnslothBackend()
    from lowres_ft.backends.hf import HFBackend

    return HFBackend()


def target_modules(config: RunConfig) -> str | list[str]:
    """ "all-linear" (every linear layer but the output head) or a comma-separated list."""
    if config.lora_target_modules in ("all-linear", ""):
        return "all-linear"
    return [m.strip() for m in config.lora_target_modules.split(",") if m.strip()]


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
