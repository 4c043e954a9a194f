"""The run folder: one per run, holding its config, environment, data, logs and artefacts, so a
later stage (or a person, or a crash recovery) can pick up from it."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from lowres_ft.config import RunConfig

ENVIRONMENT_FILE = "environment.json"
LOG_FILE = "run.log"
PACKAGES = (
    "lowres-ft",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "unsloth",
    "gguf",
    "datasketch",
)


def environment() -> dict[str, Any]:
    """Versions and hardware: what a bug report or a comparison between runs needs."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "gpus": [],
    }
    try:
        import torch

        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}",
                }
            )
    except ImportError:
        pass
    return info


def is_main_process() -> bool:
    """True in a single-process run and in rank 0 of a torchrun/accelerate launch: the process
    that writes the run folder when one process per GPU trains."""
    return int(os.environ.get("RANK", "0")) == 0


def start_run(config: RunConfig) -> Path:
    """Create the run folder, save config and environment, and log to run.log there."""
    folder = Path(config.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        config.save(folder)
        (folder / ENVIRONMENT_FILE).write_text(json.dumps(environment(), indent=2) + "\n")
    _log_to(folder / LOG_FILE)
    logging.getLogger("lowres_ft").info("run folder %s", folder.resolve())
    return folder


def _log_to(path: Path) -> None:
    logger = logging.getLogger("lowres_ft")
    logger.setLevel(logging.INFO)
    target = str(path.resolve())
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
            return
    handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
