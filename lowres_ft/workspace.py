"""Where a notebook runs (Colab, Kaggle, a local machine), what the GPU suggests, and a
Drive folder for checkpoints on Colab: the first cell of every notebook calls `prepare_workspace`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lowres_ft.backends import Hardware, choose_precision, detect_hardware

logger = logging.getLogger(__name__)

DRIVE_ROOT = Path("/content/drive")
DRIVE_RUNS = DRIVE_ROOT / "MyDrive" / "lowres-ft"


@dataclass
class Recommendation:
    """Sizes that fit a card with room for the pre-flight's worst case; a starting point."""

    model: str
    max_seq_length: int
    batch_size: int
    gradient_accumulation_steps: int
    note: str

    def __str__(self) -> str:
        return (
            f"{self.model}, max_seq_length={self.max_seq_length}, batch_size={self.batch_size}, "
            f"gradient_accumulation_steps={self.gradient_accumulation_steps} ({self.note})"
        )


def recommend(hardware: Hardware) -> Recommendation:
    """By usable GPU memory: QLoRA of an 8B model at 2,048 tokens peaks near 15 GiB (a T4's
    whole card), so a T4 or P100 gets 1,024 tokens for 7-8B models, or 1-3B models at 2,048."""
    if hardware.device == "cpu":
        return Recommendation("embedded (SmolLM2-135M)", 512, 2, 1, "CPU: a trial run, not a model")
    memory = hardware.memory_gib  # per GPU: data-parallel copies do not pool memory
    if memory < 12:
        return Recommendation("1-3B in 4-bit (e.g. Llama-3.2-1B)", 1024, 2, 4, "small card")
    if memory < 20:
        return Recommendation(
            "7-8B in 4-bit (or 1-3B at 2048, batch 4)", 1024, 1, 8, "T4/P100-class card"
        )
    if memory < 30:
        return Recommendation("7-9B in 4-bit", 2048, 2, 4, "L4/A10-class card")
    return Recommendation("7-9B in 4-bit (or 13-14B)", 2048, 4, 2, "A100/H100-class card")


@dataclass
class Workspace:
    platform: str  # colab | kaggle | local
    hardware: Hardware
    precision: str
    recommendation: Recommendation
    drive_dir: Path | None  # where checkpoints survive a Colab disconnect

    def summary(self) -> str:
        lines = [
            f"platform: {self.platform}; device: {self.hardware}",  # "2 x Tesla T4 (...)"
            f"precision: {self.precision} (bf16 needs compute capability 8.0; T4/P100 use fp16)",
            "backend: "
            + (
                "Unsloth if it imports, else transformers + bitsandbytes QLoRA (4-bit)"
                if self.hardware.device == "cuda"
                else "LoRA on the CPU (fp32)"
            ),
            f"recommended: {self.recommendation}",
        ]
        if self.hardware.count > 1:
            lines.append(
                f"{self.hardware.count} GPUs: a notebook trains on one; for all of them (one "
                f"process and one 4-bit copy per GPU): !lowres-ft train --run-dir <run> "
                f"--gpus {self.hardware.count}"
            )
        if self.drive_dir:
            lines.append(f"Google Drive mounted: set checkpoint_dir='{self.drive_dir}/<run>'")
        return "\n".join(lines)


def detect_platform() -> str:
    try:
        if importlib.util.find_spec("google.colab") is not None:
            return "colab"
    except ModuleNotFoundError:  # no `google` namespace at all
        pass
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or Path("/kaggle/working").exists():
        return "kaggle"
    return "local"


def prepare_workspace(mount_drive: bool = True) -> Workspace:
    """Detect the platform and GPU, and on Colab mount Google Drive for checkpoints."""
    platform = detect_platform()
    hardware = detect_hardware()
    drive_dir = None
    if platform == "colab" and mount_drive:
        from google.colab import drive

        drive.mount(str(DRIVE_ROOT))
        DRIVE_RUNS.mkdir(parents=True, exist_ok=True)
        drive_dir = DRIVE_RUNS
    workspace = Workspace(
        platform, hardware, choose_precision(hardware), recommend(hardware), drive_dir
    )
    logger.info("workspace: %s", workspace.summary().replace("\n", "; "))
    return workspace
