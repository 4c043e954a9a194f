"""Every recipe is a valid parameters file and trains for a couple of steps on the CPU with the
embedded model (`--model embedded`), through the same library calls as notebooks 01 and 02."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lowres_ft.config import ConfigError, RunConfig, load_recipe
from lowres_ft.data.prepare import prepare_data
from lowres_ft.notebooks import REPO_ROOT
from lowres_ft.train import train

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


def test_the_five_recipes_are_there():
    assert {p.stem for p in RECIPES} == {
        "assamese_raw_mistral7b",
        "hindi_summary_gemma2_9b",
        "bengali_chatbot_mistral7b_instruct",
        "finetome_multiturn_llama32_1b",
        "bengali_empathetic_llama31_8b",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_a_valid_config_for_its_gpu_model(path):
    values = yaml.safe_load(path.read_text("utf-8"))
    config = RunConfig(**values)  # as papermill -f / the CLI would pass it
    assert config.model_name != "embedded" and "/" in config.model_name
    assert "CPU trial: lowres-ft run --recipe" in path.read_text("utf-8")


def test_empathetic_recipe_keeps_the_settings_of_the_bengali_project():
    config = RunConfig(**load_recipe(REPO_ROOT / "recipes/bengali_empathetic_llama31_8b.yaml"))
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
    assert config.lora_target_modules == "q_proj,k_proj,v_proj,o_proj"
    assert (config.precision, config.batch_size, config.gradient_accumulation_steps) == (
        "fp16",
        1,
        2,
    )
    assert config.max_seq_length == 1024 and config.unsafe_preset == "sensitive"
    assert config.reflective_prefixes


def test_a_recipe_with_an_unknown_field_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rank: 8\n", "utf-8")
    with pytest.raises(ConfigError, match="unknown RunConfig field.*lora_rank"):
        load_recipe(bad)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_two_steps_on_the_cpu_with_the_embedded_model(path, tmp_path):
    """Overrides: the model (embedded), two steps, 60 rows, 256 tokens and at most 2 x 1
    sequences a step, so five recipes take a couple of minutes on a 2-core CPU."""
    recipe = yaml.safe_load(path.read_text("utf-8"))
    values = load_recipe(
        path,
        model_name="embedded",
        run_dir=str(tmp_path / path.stem),
        max_steps=2,
        max_rows=60,
        max_seq_length=256,
        batch_size=min(recipe.get("batch_size", 4), 2),
        gradient_accumulation_steps=1,
        eval_steps=0,
        eval_max_rows=2,
    )
    assert values.get("backend", "auto") == values.get("precision", "auto") == "auto"  # CPU trial
    config = RunConfig(**values)
    prepared = prepare_data(config, progress=False)
    assert prepared.train_rows > 0
    result = train(config)
    assert result.global_step == 2 and not result.stopped_reason
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").exists()
    saved = RunConfig.load(config.run_dir)
    assert saved.language == recipe["language"] and saved.lora_r == recipe["lora_r"]
