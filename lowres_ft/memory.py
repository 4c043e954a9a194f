"""GPU memory reporting: allocated, reserved and peak against the card, and what the model and
its LoRA weights take. Used before load, after load, after pre-flight, during training and at
the end, so an out-of-memory error is predicted instead of met halfway through a run."""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30


@dataclass
class MemoryStats:
    label: str
    device: str  # "cuda:0" or "cpu"
    allocated_gib: float
    reserved_gib: float
    peak_gib: float
    total_gib: float  # the card's memory (for the CPU: the process's peak RSS is all we report)

    @property
    def percent_of_card(self) -> float:
        return 100.0 * self.peak_gib / self.total_gib if self.total_gib else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "percent_of_card": round(self.percent_of_card, 1)}

    def __str__(self) -> str:
        if self.device == "cpu":
            return f"{self.label}: CPU process peak RSS {self.peak_gib:.2f} GiB"
        return (
            f"{self.label}: allocated {self.allocated_gib:.2f} GiB, reserved "
            f"{self.reserved_gib:.2f} GiB, peak {self.peak_gib:.2f} GiB of {self.total_gib:.1f} "
            f"GiB ({self.percent_of_card:.0f}%)"
        )


def memory_stats(label: str, device: int = 0) -> MemoryStats:
    import torch

    if not torch.cuda.is_available():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
        return MemoryStats(label, "cpu", 0.0, 0.0, round(peak, 3), 0.0)
    total = torch.cuda.get_device_properties(device).total_memory
    return MemoryStats(
        label,
        f"cuda:{device}",
        round(torch.cuda.memory_allocated(device) / GIB, 3),
        round(torch.cuda.memory_reserved(device) / GIB, 3),
        round(torch.cuda.max_memory_allocated(device) / GIB, 3),
        round(total / GIB, 2),
    )


def reset_peak(device: int = 0) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def model_footprint(model: Any) -> dict[str, float]:
    """Parameters and bytes: all weights (4-bit ones counted as stored) and the trainable LoRA."""
    total_bytes = trainable_bytes = 0
    total_params = trainable_params = 0
    for parameter in model.parameters():
        count = parameter.numel()
        size = count * parameter.element_size()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2  # two 4-bit values a stored byte
        total_params += count
        total_bytes += size
        if parameter.requires_grad:
            trainable_params += count
            trainable_bytes += size
    return {
        "params": total_params,
        "trainable_params": trainable_params,
        "trainable_percent": round(100.0 * trainable_params / max(total_params, 1), 3),
        "weights_gib": round(total_bytes / GIB, 3),
        "trainable_gib": round(trainable_bytes / GIB, 4),
    }
