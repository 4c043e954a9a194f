"""The sync-free SFTTrainer: the same loss as TRL's, and the Trainer's token count, read from the
device only at logs and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import run_copy

from lowres_ft.config import RunConfig
from lowres_ft.sft import SyncFreeSFTTrainer
from lowres_ft.train import run_training, setup_training


def test_training_and_evaluation_loss_is_trls_loss_without_its_metrics(prepared_run, tmp_path):
    from trl import SFTTrainer

    setup = setup_training(
        run_copy(prepared_run, tmp_path / "run", max_seq_length=256, batch_size=2)
    )
    trainer = setup.trainer
    assert isinstance(trainer, SyncFreeSFTTrainer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    ours = trainer.compute_loss(trainer.model, dict(batch))
    assert not trainer._metrics["train"]  # no entropy or accuracy read back per micro-batch
    theirs = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    assert "entropy" in trainer._metrics["train"]  # the test can tell the two apart
    assert torch.allclose(ours, theirs)
    trainer.model.eval()
    with torch.no_grad():
        loss, _, _ = trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=True)
        assert not trainer._metrics["eval"]
        assert torch.allclose(loss, SFTTrainer.compute_loss(trainer, trainer.model, dict(batch)))


def _train_counting(prepared_run: RunConfig, run_dir: Path) -> tuple[int, list[int]]:
    """Tokens seen at the end and in each saved checkpoint, 4 steps, a log every 3."""
    config = run_copy(
        prepared_run,
        run_dir,
        max_seq_length=256,
        batch_size=2,
        max_steps=4,
        logging_steps=3,
        save_steps=2,
        eval_steps=0,
    )
    setup = setup_training(config)
    run_training(setup)
    saved = [
        json.loads(
            (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text()
        )
        for step in (2, 4)
    ]
    return setup.trainer.state.num_input_tokens_seen, [s["num_input_tokens_seen"] for s in saved]


def test_token_count_is_the_trainers_own_and_is_saved_with_each_checkpoint(
    prepared_run, tmp_path, monkeypatch
):
    ours = _train_counting(prepared_run, tmp_path / "ours")
    monkeypatch.delattr(SyncFreeSFTTrainer, "_track_num_input_tokens")  # the Trainer's, synced
    theirs = _train_counting(prepared_run, tmp_path / "theirs")
    assert ours == theirs
    total, (at_2, at_4) = ours
    assert 0 < at_2 < at_4 == total
