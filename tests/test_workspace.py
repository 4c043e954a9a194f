"""The first cell's advice: platform detection and sizes recommended per GPU."""

from __future__ import annotations

import pytest

from lowres_ft.backends import Hardware
from lowres_ft.workspace import detect_platform, prepare_workspace, recommend

T4 = Hardware("cuda", "Tesla T4", (7, 5), 15.0, 1)
KAGGLE_T4X2 = Hardware("cuda", "Tesla T4", (7, 5), 15.0, 2)
L4 = Hardware("cuda", "NVIDIA L4", (8, 9), 22.5, 1)
A100 = Hardware("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 39.6, 1)
CPU = Hardware("cpu", "x86_64")


def test_a_t4_gets_8b_at_1024_tokens_with_batch_one():
    advice = recommend(T4)
    assert "8B" in advice.model and advice.max_seq_length == 1024
    assert (advice.batch_size, advice.gradient_accumulation_steps) == (1, 8)


def test_two_t4s_get_the_advice_of_one_since_each_holds_a_full_copy():
    assert recommend(KAGGLE_T4X2) == recommend(T4)


def test_bigger_cards_get_longer_sequences_and_the_cpu_the_embedded_model():
    assert recommend(L4).max_seq_length == recommend(A100).max_seq_length == 2048
    assert recommend(A100).batch_size > recommend(L4).batch_size
    assert "embedded" in recommend(CPU).model


def test_kaggle_is_detected_from_its_environment(monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert detect_platform() == "kaggle"


def test_here_the_workspace_is_local_cpu_without_drive(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    workspace = prepare_workspace()
    assert (workspace.platform, workspace.precision, workspace.drive_dir) == ("local", "fp32", None)
    summary = workspace.summary()
    assert "LoRA on the CPU" in summary and "recommended: embedded" in summary


@pytest.mark.parametrize("hardware", [T4, L4], ids=["T4", "L4"])
def test_summary_names_the_precision_the_policy_picks(hardware):
    from lowres_ft.workspace import Workspace

    precision = "fp16" if hardware is T4 else "bf16"
    text = Workspace("colab", hardware, precision, recommend(hardware), None).summary()
    assert f"precision: {precision}" in text and "bitsandbytes QLoRA" in text


def test_kaggle_t4x2_is_told_the_command_that_trains_on_both_gpus():
    from lowres_ft.workspace import Workspace

    text = Workspace("kaggle", KAGGLE_T4X2, "fp16", recommend(KAGGLE_T4X2), None).summary()
    assert "device: 2 x Tesla T4 (15 GiB" in text
    assert "lowres-ft train --run-dir <run> --gpus 2" in text
    single = Workspace("kaggle", T4, "fp16", recommend(T4), None).summary()
    assert "--gpus" not in single
