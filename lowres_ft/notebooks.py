"""Run the numbered notebooks headless with papermill: one runner for tests, the CLI and sweeps.

papermill only warns about a parameter the notebook does not declare, so a typo would silently
run the default; this runner rejects unknown names before papermill starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowres_ft.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)


class _KnownParameters(logging.Filter):
    """The runner checked every name against RunConfig; papermill's warning that a notebook
    does not declare one is noise here (the config cell picks it up from the globals)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passed unknown parameter" not in record.getMessage()


logging.getLogger("papermill").addFilter(_KnownParameters())

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STAGES = {
    "prepare": "01_data_prep.ipynb",
    "train": "02_train.ipynb",
    "evaluate": "03_evaluate.ipynb",
    "chat": "04_chat.ipynb",
    "export": "05_export.ipynb",
}
PIPELINE = ("prepare", "train", "evaluate", "export")  # `lowres-ft run` and the demo


def notebook_path(stage_or_name: str) -> Path:
    name = STAGES.get(stage_or_name, stage_or_name)
    path = NOTEBOOKS_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; stages: {', '.join(STAGES)} (notebooks live in {NOTEBOOKS_DIR})."
        )
    return path


def check_parameters(parameters: dict[str, Any]) -> RunConfig:
    """Reject names that are not RunConfig fields and values that do not validate."""
    try:
        return RunConfig.from_dict(parameters)
    except ConfigError as error:
        raise ConfigError(
            f"{error} (papermill would ignore the name and run the default)"
        ) from None


def run_notebook(
    stage_or_name: str, parameters: dict[str, Any], cwd: str | Path | None = None
) -> Path:
    """Execute one notebook into `<run_dir>/notebooks/`; returns the executed copy's path."""
    import papermill

    config = check_parameters(parameters)
    source = notebook_path(stage_or_name)
    work_dir = Path(cwd) if cwd else REPO_ROOT
    output = work_dir / config.run_dir / "notebooks" / source.name
    output.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running %s -> %s", source.name, output)
    papermill.execute_notebook(
        str(source),
        str(output),
        parameters=parameters,
        cwd=str(work_dir),
        kernel_name="python3",
        progress_bar=False,
    )
    return output


def run_pipeline(
    parameters: dict[str, Any], stages: Sequence[str] = PIPELINE, cwd: str | Path | None = None
) -> list[Path]:
    """Run the stages in order on one run folder; later stages inherit the saved config."""
    check_parameters(parameters)
    return [run_notebook(stage, parameters, cwd) for stage in stages]
