"""Shared fixtures: the real data sets in ``shared/data`` next to the repository checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

DATA_FILES = (
    "as_news/as_news.txt",
    "as_en_parallel/as_en_parallel.csv",
    "as_oasst/as_oasst.jsonl",
    "bn_instruct/bn_instruct.jsonl",
    "hi_dailydialog/hi_dailydialog.jsonl",
    "sharegpt_fastchat/sharegpt_fastchat.jsonl",
    "sharegpt_glaive/sharegpt_glaive.jsonl",
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real data sets; fails (never skips) when it is not there."""
    missing = [name for name in DATA_FILES if not (SHARED_DATA / name).is_file()]
    if missing:
        pytest.fail(
            f"real test data missing under {SHARED_DATA}: {', '.join(missing)}. The tests read "
            "shared/data/ from the folder that holds this checkout (clone the repository next "
            "to shared/, as CI does); do not copy the data into the repository.",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, shared_data) -> Path:
    """A 2-layer random-weight Llama with a 1,000-token BPE trained on real Bengali: fast
    enough for unit tests of training, generation and evaluation."""
    from lowres_ft.shapes import build_random_model, tiny_tokenizer

    rows = [json.loads(line) for line in (shared_data / "bn_instruct/bn_instruct.jsonl").open()]
    texts = [r["instruction"] + "\n" + r["output"] for r in rows[:800]]
    folder = tmp_path_factory.mktemp("tiny") / "model"
    return build_random_model(folder, "tiny", tiny_tokenizer(texts, vocab_size=1000))
