"""Static checks of every notebook, and papermill runs of each on real data and the embedded
model. The static checks name the fix when they fail."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import papermill
import pytest

from lowres_ft.config import ConfigError, RunConfig
from lowres_ft.notebooks import NOTEBOOKS_DIR, STAGES, check_parameters, run_notebook

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def parameters_cell(path: Path) -> nbformat.NotebookNode:
    cells = [
        c
        for c in nbformat.read(path, as_version=4).cells
        if "parameters" in c.metadata.get("tags", [])
    ]
    assert len(cells) == 1, f"{path.name}: tag exactly one cell 'parameters' (found {len(cells)})"
    return cells[0]


def test_every_stage_has_its_notebook():
    assert {p.name for p in NOTEBOOKS} >= set(STAGES.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} cell {index} has outputs: clear them "
                "(Jupyter: Edit > Clear All Outputs, or `jupyter nbconvert --clear-output`)."
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_runconfig_fields_with_help(path):
    cell = parameters_cell(path)
    tree = ast.parse(cell.source)
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), (
            f"{path.name}: the parameters cell holds only literal assignments, found "
            f"{ast.unparse(node)!r}"
        )
        names.append(node.targets[0].id)
    unknown = set(names) - RunConfig.field_names()
    assert not unknown, f"{path.name}: {unknown} are not RunConfig fields; add them or rename"
    for line in cell.source.splitlines():
        assert "  # " in line, f"{path.name}: give each parameter a '# help' comment: {line!r}"
    # papermill must parse every line, or it silently ignores an override of that name.
    assert set(papermill.inspect_notebook(str(path))) == set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameter_defaults_build_a_valid_config(path):
    values: dict = {}
    exec(parameters_cell(path).source, {}, values)
    RunConfig(**values)


def test_runner_rejects_a_misspelt_parameter_before_papermill_starts():
    with pytest.raises(ConfigError, match="unknown RunConfig field.*langauge.*papermill"):
        check_parameters({"langauge": "as"})


@pytest.fixture(scope="module")
def bengali_run(tmp_path_factory, shared_data) -> Path:
    """Notebook 01 on the whole real Bengali instruction set; 02 then trains on it."""
    run_dir = tmp_path_factory.mktemp("bn") / "run"
    run_notebook(
        "prepare",
        {
            "run_dir": str(run_dir),
            "language": "bn",
            "data_path": str(shared_data / "bn_instruct" / "bn_instruct.jsonl"),
        },
    )
    return run_dir


@pytest.mark.notebook
def test_data_prep_notebook_on_real_bengali_data(bengali_run):
    run_dir = bengali_run
    report = json.loads((run_dir / "data" / "report.json").read_text("utf-8"))
    cleaning = report["cleaning"]
    assert cleaning["read"] == 2373
    assert cleaning["kept"] + cleaning["rejected_total"] == cleaning["read"]
    rejects = (run_dir / "data" / "rejects.jsonl").read_text("utf-8").splitlines()
    assert len(rejects) == cleaning["rejected_total"]
    assert report["split"]["train"] + report["split"]["validation"] == cleaning["kept"]
    assert report["fertility"]["bn"] > report["fertility"]["en"] > 0
    assert report["script_mix"]["Bengali"] > 0.9
    for png in ("lengths.png", "cleaning_steps.png"):
        assert (run_dir / "data" / png).stat().st_size > 10_000
    saved = RunConfig.load(run_dir)
    assert saved.language == "bn"
    executed = nbformat.read(run_dir / "notebooks" / "01_data_prep.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


@pytest.mark.notebook
def test_data_prep_notebook_on_real_assamese_chats(tmp_path, shared_data):
    run_dir = tmp_path / "as"
    run_notebook(
        "prepare",
        {
            "run_dir": str(run_dir),
            "language": "as",
            "val_fraction": 0.25,
            "data_path": str(shared_data / "as_oasst" / "as_oasst.jsonl"),
        },
    )
    report = json.loads((run_dir / "data" / "report.json").read_text("utf-8"))
    assert report["cleaning"]["read"] == 102
    # 99 of 102 threads break the user/assistant order: they are cut, not thrown away.
    assert report["cleaning"]["changed"]["turns_cut"] >= 90
    assert report["kind"] == "chat"
    assert report["fertility"]["as"] > report["fertility"]["en"]
    train = [json.loads(line) for line in (run_dir / "data" / "train.jsonl").open()]
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))


@pytest.fixture(scope="module")
def trained_run(bengali_run) -> Path:
    """Notebook 02 on the prepared Bengali run: two steps of LoRA on the embedded model."""
    run_notebook(
        "train",
        {
            "run_dir": str(bengali_run),
            "max_steps": 2,
            "batch_size": 2,
            "eval_steps": 0,
            "eval_max_rows": 4,
            "max_seq_length": 384,
            "learning_rate": 5e-4,
        },
    )
    return bengali_run


@pytest.mark.notebook
def test_train_notebook_fine_tunes_the_embedded_model_on_bengali(trained_run):
    experiment = json.loads((trained_run / "experiment.json").read_text("utf-8"))
    assert experiment["result"]["global_step"] == 2
    assert [step for step, _ in experiment["eval_losses"]] == [0, 2]
    assert experiment["backend"].startswith("backend cpu")
    assert experiment["footprint"]["trainable_params"] > 1_000_000
    assert (trained_run / "adapter" / "adapter_model.safetensors").exists()
    saved = RunConfig.load(trained_run)
    assert (saved.max_steps, saved.max_seq_length, saved.language) == (2, 384, "bn")


def logged_replies(run_dir: Path) -> list[dict]:
    path = run_dir / "generated_responses.jsonl"
    return [json.loads(line) for line in path.open(encoding="utf-8")] if path.exists() else []


@pytest.mark.notebook
def test_evaluate_notebook_compares_base_and_fine_tuned_on_bengali(trained_run):
    before = len(logged_replies(trained_run))
    run_notebook(
        "evaluate",
        {"run_dir": str(trained_run), "eval_max_rows": 6, "eval_prompts": 3, "max_new_tokens": 16},
    )
    metrics = json.loads((trained_run / "evaluation" / "metrics.json").read_text("utf-8"))
    base, tuned = metrics["scores"]
    assert (base["name"], tuned["name"]) == ("base", "fine-tuned")
    assert base["reply_tokens"] == tuned["reply_tokens"] > 100
    assert base["perplexity"] != tuned["perplexity"]  # the adapter was applied
    for row in (base, tuned):
        assert row["replies"] == 3 and row["bits_per_character"] > 0
        assert 0 <= row["chrf_pp"] <= 100 and 0 <= row["script_share"] <= 1
    assert (trained_run / "evaluation" / "comparison.png").stat().st_size > 10_000
    assert len(logged_replies(trained_run)) == before + 6
    executed = nbformat.read(trained_run / "notebooks" / "03_evaluate.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs") for c in executed.cells if c.cell_type == "code"])
    assert "image/png" in shown and "chrf_pp" in shown


@pytest.mark.notebook
def test_chat_notebook_builds_the_widget_and_runs_a_scripted_exchange(trained_run):
    before = len(logged_replies(trained_run))
    run_notebook("chat", {"run_dir": str(trained_run), "max_new_tokens": 12})
    executed = nbformat.read(trained_run / "notebooks" / "04_chat.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs") for c in executed.cells if c.cell_type == "code"])
    assert "application/vnd.jupyter.widget-view+json" in shown  # the chat widget was built
    new = logged_replies(trained_run)[before:]
    assert [r["prompt"] for r in new] == ["নমস্কার! আপনি কে?", "আমাকে একটি ছোট উপদেশ দিন।"]
    assert [r["history_turns"] for r in new] == [0, 1]  # the second turn saw the first
    assert all(r["adapter"].endswith("adapter") and r["new_tokens"] > 0 for r in new)
    assert new[0]["settings"]["temperature"] == 0.7


@pytest.mark.notebook
def test_export_notebook_writes_merged_model_gguf_modelfile_and_card(trained_run):
    run_notebook("export", {"run_dir": str(trained_run), "gguf_types": "f16,q8_0"})
    export = trained_run / "export"
    assert (export / "adapter" / "adapter_model.safetensors").exists()
    assert list((export / "merged").glob("*.safetensors"))
    ggufs = sorted(p.name for p in export.glob("*.gguf"))
    assert len(ggufs) == 2 and any("f16" in n for n in ggufs) and any("q8_0" in n for n in ggufs)
    modelfile = (export / "Modelfile").read_text("utf-8")
    assert "FROM ./" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    card = (export / "README.md").read_text("utf-8")
    assert "bn" in card and "fine-tuned" in card  # languages, and 03's table when it ran
    executed = nbformat.read(trained_run / "notebooks" / "05_export.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs") for c in executed.cells if c.cell_type == "code"])
    assert "merged model" in shown
