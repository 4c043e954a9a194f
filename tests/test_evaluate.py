"""Evaluation on the tiny random Llama and real Bengali chats: the reply-only likelihood equals
the model's own loss without holding full-vocabulary logits, bits per character count reply
characters, and a base vs fine-tuned run writes its table, chart and examples."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from lowres_ft import evaluate
from lowres_ft.config import ConfigError, RunConfig
from lowres_ft.data.format import tokenize_for_training
from lowres_ft.data.load import Record
from lowres_ft.data.prepare import prepare_data, read_records
from lowres_ft.evaluate import (
    evaluate_run,
    prompts_and_references,
    reply_loss,
)


@pytest.fixture(scope="module")
def bengali_run(tmp_path_factory, tiny_model, shared_data) -> RunConfig:
    config = RunConfig(
        run_dir=str(tmp_path_factory.mktemp("eval") / "run"),
        model_name=str(tiny_model),
        max_rows=120,
        max_seq_length=256,
        data_path=str(shared_data / "bn_instruct/bn_instruct.jsonl"),
        eval_max_rows=12,
        eval_prompts=5,
        max_new_tokens=8,
    )
    prepare_data(config, progress=False)
    return config


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(
        tiny_model
    )


def validation(config: RunConfig) -> list[Record]:
    return list(read_records(Path(config.run_dir) / "data" / "validation.jsonl"))


def test_reply_loss_equals_the_models_own_loss_on_reply_tokens(bengali_run, tiny):
    model, tokenizer = tiny
    records = validation(bengali_run)[:6]
    ours = reply_loss(model, tokenizer, records, max_seq_length=256, batch_size=4)
    nll, tokens = 0.0, 0
    for record in records:
        row = tokenize_for_training(record, tokenizer)
        ids, mask = row["input_ids"][:256], row["assistant_masks"][:256]
        labels = [i if m else -100 for i, m in zip(ids, mask, strict=True)]
        scored = sum(1 for label in labels[1:] if label != -100)
        if scored:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            nll, tokens = nll + out.loss.item() * scored, tokens + scored
    assert ours.tokens == tokens > 50
    assert ours.nll == pytest.approx(nll, rel=1e-4)
    assert ours.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_reply_loss_never_computes_logits_for_a_whole_batch(bengali_run, tiny, monkeypatch):
    """The head sees only reply positions, a chunk at a time: never [batch, length, vocab]."""
    model, tokenizer = tiny
    monkeypatch.setattr(evaluate, "LOGIT_CHUNK", 16)
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: shapes.append(tuple(output.shape))
    )
    try:
        loss = reply_loss(model, tokenizer, validation(bengali_run)[:6], 256, batch_size=4)
    finally:
        hook.remove()
    assert shapes and all(len(s) == 2 and s[0] <= 16 for s in shapes)
    assert sum(s[0] for s in shapes) == loss.tokens


def test_bits_per_character_divides_by_reply_characters_not_tokens(tiny):
    model, tokenizer = tiny
    reply = "ভালো আছি, ধন্যবাদ।"
    record = Record(
        "x:1", [{"role": "user", "content": "কেমন আছেন?"}, {"role": "assistant", "content": reply}]
    )
    loss = reply_loss(model, tokenizer, [record], max_seq_length=256)
    assert loss.characters == len(reply)  # the end-of-turn token adds none
    assert loss.bits_per_character == pytest.approx(loss.nll / math.log(2) / len(reply))


def test_prompts_end_before_the_last_reply_which_is_the_reference():
    chat = Record(
        "x:1",
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"},
        ],
    )
    raw = Record("x:2", text="কাঁচা লেখা")
    prompts, references = prompts_and_references([raw, chat, chat], limit=1)
    assert references == ["a2"] and [m["content"] for m in prompts[0]] == ["s", "u1", "a1", "u2"]


def test_base_vs_fine_tuned_run_writes_table_chart_examples_and_log(bengali_run, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = Path(bengali_run.run_dir) / "adapter"
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(model, lora).save_pretrained(adapter)  # random B: not the base any more

    evaluation = evaluate_run(bengali_run, progress=False)
    base, tuned = evaluation.table()
    assert (base["name"], tuned["name"]) == ("base", "fine-tuned")
    assert base["reply_tokens"] == tuned["reply_tokens"] > 0
    assert base["perplexity"] != tuned["perplexity"]
    for row in (base, tuned):
        assert row["replies"] == 5 and 0 <= row["chrf_pp"] <= 100
        assert 0 <= row["script_share"] <= 1 and row["mean_new_tokens"] <= 8
    folder = Path(bengali_run.run_dir) / "evaluation"
    saved = json.loads((folder / "metrics.json").read_text("utf-8"))
    assert saved["scores"] == evaluation.table() and saved["settings"]["rows"] == 12
    with (folder / "metrics.csv").open(encoding="utf-8") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == ["base", "fine-tuned"]
    assert (folder / "comparison.png").stat().st_size > 10_000
    examples = [json.loads(x) for x in (folder / "examples.jsonl").open(encoding="utf-8")]
    assert len(examples) == 5 and set(examples[0]) == {"prompt", "reference", "base", "fine-tuned"}
    logged = [
        json.loads(x)
        for x in (Path(bengali_run.run_dir) / "generated_responses.jsonl").open(encoding="utf-8")
    ]
    assert len(logged) == 10 and {r["adapter"] for r in logged} == {"", str(adapter)}


def test_evaluation_without_an_adapter_says_to_train_first(bengali_run, tmp_path):
    config = RunConfig(**{**bengali_run.to_dict(), "adapter_dir": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="run notebooks/02_train.ipynb"):
        evaluate_run(config, progress=False)
