"""Batch runs: notebooks 02 and 03 under papermill over a parameter grid, one run folder per
configuration, then one results table (CSV) and a plot of validation loss and chrF++.

The data is prepared once (notebook 01, or an existing run folder) and shared by every cell of
the grid. A cell whose evaluation is saved is skipped, so a sweep that died halfway (a Colab
disconnect) continues where it stopped when started again.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowres_ft.config import CONFIG_FILE, ConfigError, RunConfig
from lowres_ft.data.prepare import DATA_DIR
from lowres_ft.notebooks import check_parameters, run_notebook

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DATA_RUN = "data"  # the sweep folder's shared, prepared run
RESULTS_FILE = "results.csv"
SHORT_NAMES = {
    "learning_rate": "lr",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "num_train_epochs": "ep",
    "batch_size": "bs",
    "max_steps": "steps",
}


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["learning_rate=1e-4,2e-4", "lora_r=8,16"]` -> {name: [values]}, each value typed like
    the RunConfig field it sets."""
    defaults = RunConfig()
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in RunConfig.field_names() or not values:
            raise ConfigError(
                f"--grid {item!r}: write NAME=V1,V2 with NAME a RunConfig field, e.g. "
                "--grid learning_rate=1e-4,2e-4 --grid lora_r=8,16."
            )
        kind = type(getattr(defaults, name))
        if kind is bool:
            grid[name] = [v.strip().lower() in ("1", "true", "yes") for v in values.split(",")]
        else:
            grid[name] = [kind(v.strip()) for v in values.split(",")]
    return grid


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def cell_name(cell: dict[str, Any]) -> str:
    """A readable, file-safe folder name: lr0.0002_r16."""
    parts = [
        f"{SHORT_NAMES.get(k, k)}{v:g}" if isinstance(v, float) else f"{SHORT_NAMES.get(k, k)}{v}"
        for k, v in cell.items()
    ]
    return "_".join(parts).replace("/", "-") or "base"


@dataclass
class SweepResult:
    folder: Path
    rows: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]

    @property
    def table_path(self) -> Path:
        return self.folder / RESULTS_FILE


def run_sweep(
    parameters: dict[str, Any],
    grid: dict[str, list[Any]],
    sweep_dir: str | Path,
    data_from: str | Path | None = None,
    stages: tuple[str, ...] = ("train", "evaluate"),
) -> SweepResult:
    """Prepare the data once, then run `stages` for every cell of the grid in its own folder;
    cells with a saved evaluation are skipped. Returns (and writes) the results table."""
    sweep_dir = Path(sweep_dir)
    cells = expand_grid(grid)
    for cell in cells:  # every cell must be a valid config before anything runs
        check_parameters({**parameters, **cell, "run_dir": str(sweep_dir / cell_name(cell))})
    data_run = Path(data_from) if data_from else sweep_dir / DATA_RUN
    if not (data_run / DATA_DIR / "train.jsonl").exists():
        if data_from:
            raise ConfigError(f"{data_run} has no prepared data: run notebook 01 on it first.")
        run_notebook("prepare", {**parameters, "run_dir": str(data_run)})
    ran, skipped = [], []
    for cell in cells:
        name = cell_name(cell)
        run_dir = sweep_dir / name
        if _finished(run_dir, stages):
            logger.info("sweep: %s done before, skipped", name)
            skipped.append(name)
            continue
        _share_data(data_run, run_dir)
        for stage in stages:
            run_notebook(stage, {**parameters, **cell, "run_dir": str(run_dir)})
        ran.append(name)
    rows = [collect(sweep_dir / cell_name(cell), cell) for cell in cells]
    result = SweepResult(sweep_dir, rows, ran, skipped)
    _write_table(result)
    plot_sweep(rows).savefig(sweep_dir / "sweep.png", dpi=110, bbox_inches="tight")
    return result


def _finished(run_dir: Path, stages: tuple[str, ...]) -> bool:
    marker = "evaluation/metrics.json" if "evaluate" in stages else "experiment.json"
    return (run_dir / marker).exists()


def _share_data(data_run: Path, run_dir: Path) -> None:
    """The cell starts from the prepared run's config and reads its data (a link, no copy)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_run / CONFIG_FILE, run_dir / CONFIG_FILE)
    link = run_dir / DATA_DIR
    if not link.exists():
        link.symlink_to((data_run / DATA_DIR).resolve(), target_is_directory=True)


def collect(run_dir: Path, cell: dict[str, Any]) -> dict[str, Any]:
    """One row: the cell's parameters, its losses and the fine-tuned model's scores."""
    row: dict[str, Any] = {"run": run_dir.name, **cell}
    experiment = _read_json(run_dir / "experiment.json")
    if experiment:
        evals = experiment.get("eval_losses") or []
        row["train_loss"] = experiment.get("result", {}).get("train_loss")
        row["eval_loss"] = evals[-1][1] if evals else None
        row["steps"] = experiment.get("result", {}).get("global_step")
        row["train_seconds"] = experiment.get("result", {}).get("seconds")
    metrics = _read_json(run_dir / "evaluation" / "metrics.json")
    tuned = [s for s in (metrics or {}).get("scores", []) if s["name"] == "fine-tuned"]
    for key in ("perplexity", "bits_per_character", "chrf_pp", "bleu", "script_share"):
        row[key] = tuned[0][key] if tuned else None
    return row


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def _write_table(result: SweepResult) -> None:
    columns = list(dict.fromkeys(k for row in result.rows for k in row))
    result.folder.mkdir(parents=True, exist_ok=True)
    with result.table_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result.rows)


def plot_sweep(rows: list[dict[str, Any]]) -> Figure:
    """Validation loss (lower is better) and chrF++ (higher is better) per configuration."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [row["run"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(max(6, 1.3 * len(rows) * 2), 3.2))
    for axis, key, title in zip(
        axes, ("eval_loss", "chrf_pp"), ("validation loss ↓", "chrF++ ↑"), strict=True
    ):
        values = [row.get(key) if row.get(key) is not None else 0.0 for row in rows]
        axis.bar(names, values, color="#1f77b4")
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8, rotation=30)
    figure.tight_layout()
    return figure
