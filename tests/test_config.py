from __future__ import annotations

import pytest

from lowres_ft.config import ConfigError, RunConfig, make_config


def test_config_round_trips_through_the_run_folder(tmp_path):
    config = RunConfig(run_dir=str(tmp_path), language="as", unsafe_patterns=["foo"])
    config.save()
    assert RunConfig.load(tmp_path) == config


def test_a_later_stage_inherits_the_saved_config_and_overrides_win(tmp_path):
    RunConfig(run_dir=str(tmp_path), language="hi", max_seq_length=256).save()
    later = RunConfig.load(tmp_path, max_seq_length=1024)
    assert (later.language, later.max_seq_length) == ("hi", 1024)


def test_loading_a_missing_run_folder_says_which_notebook_to_run(tmp_path):
    with pytest.raises(ConfigError, match="01_data_prep"):
        RunConfig.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("language", "klingon", "Unicode script name"),
        ("dedup", "fuzzy", "none, exact, near"),
        ("val_fraction", 1.0, r"\[0, 1\)"),
        ("min_script_ratio", 2.0, r"\[0, 1\]"),
        ("data_format", "xlsx", "text, csv"),
        ("max_chars", 1, "min_chars < max_chars"),
        ("gradient_checkpointing", "sometimes", "auto, on, off"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(field, value, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{field: value})


def test_any_unicode_script_name_is_a_language():
    assert RunConfig(language="Tamil").language == "Tamil"


def test_make_config_takes_notebook_globals_and_ignores_the_rest():
    config = make_config(language="as", In=[], get_ipython=print, run_dir="runs/x")
    assert config.language == "as"


def test_unknown_fields_are_rejected_with_the_known_ones_listed():
    with pytest.raises(ConfigError, match="Known fields"):
        RunConfig.from_dict({"lenguage": "as"})


def test_run_folders_saved_with_a_yes_or_no_checkpointing_still_load(tmp_path):
    """gradient_checkpointing was a bool before 'auto': old config.json files and recipes hold
    true or false, which mean 'on' and 'off'."""
    RunConfig(run_dir=str(tmp_path)).save()
    path = tmp_path / "config.json"
    path.write_text(
        path.read_text().replace(
            '"gradient_checkpointing": "auto"', '"gradient_checkpointing": false'
        )
    )
    assert RunConfig.load(tmp_path).gradient_checkpointing == "off"
    assert RunConfig(gradient_checkpointing=True).gradient_checkpointing == "on"
