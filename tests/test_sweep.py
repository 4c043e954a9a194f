"""A 2 x 2 sweep (learning rate x LoRA rank) of notebooks 02 and 03 under papermill on the
tiny model and real Bengali data: four run folders, a four-row table, a plot, and a second
start that skips what is done."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lowres_ft.config import ConfigError
from lowres_ft.sweep import cell_name, expand_grid, parse_grid, run_sweep


def test_grid_values_take_the_type_of_their_field():
    grid = parse_grid(["learning_rate=1e-4,2e-4", "lora-r=8,16", "use_rslora=true,false"])
    assert grid == {"learning_rate": [1e-4, 2e-4], "lora_r": [8, 16], "use_rslora": [True, False]}
    cells = expand_grid(grid)
    assert len(cells) == 8 and cells[0] == {"learning_rate": 1e-4, "lora_r": 8, "use_rslora": True}
    assert cell_name({"learning_rate": 2e-4, "lora_r": 16}) == "lr0.0002_r16"


def test_a_misspelt_grid_name_is_an_error_before_anything_runs():
    with pytest.raises(ConfigError, match="lora_rank=8.*RunConfig field"):
        parse_grid(["lora_rank=8,16"])


@pytest.mark.notebook
def test_two_by_two_sweep_runs_four_configurations_and_resumes(tmp_path, tiny_model, shared_data):
    parameters = {
        "model_name": str(tiny_model),
        "data_path": str(shared_data / "bn_instruct/bn_instruct.jsonl"),
        "max_rows": 80,
        "max_seq_length": 256,
        "max_steps": 3,
        "batch_size": 2,
        "eval_steps": 0,
        "eval_max_rows": 4,
        "eval_prompts": 2,
        "max_new_tokens": 4,
        "save_steps": 3,
    }
    grid = {"learning_rate": [1e-4, 1e-3], "lora_r": [4, 8]}
    result = run_sweep(parameters, grid, tmp_path / "sweep")
    assert len(result.ran) == 4 and not result.skipped
    with result.table_path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {(float(r["learning_rate"]), int(r["lora_r"])) for r in rows} == {
        (1e-4, 4),
        (1e-4, 8),
        (1e-3, 4),
        (1e-3, 8),
    }
    for row in rows:
        assert int(row["steps"]) == 3 and float(row["eval_loss"]) > 0
        assert 0 <= float(row["chrf_pp"]) <= 100 and float(row["perplexity"]) > 1
    assert len({r["eval_loss"] for r in rows}) > 1  # the configurations really differ
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000
    # one finished cell loses its evaluation: a second start runs only that one again
    (tmp_path / "sweep" / "lr0.001_r8" / "evaluation" / "metrics.json").unlink()
    again = run_sweep(parameters, grid, tmp_path / "sweep")
    assert again.ran == ["lr0.001_r8"] and len(again.skipped) == 3
    assert Path(tmp_path / "sweep" / "data" / "data" / "train.jsonl").exists()
