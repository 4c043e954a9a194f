"""Shared fixtures: the real data sets in ``shared/data`` next to the repository checkout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowres_ft.config import RunConfig

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


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory, tiny_model, shared_data) -> RunConfig:
    """Real Bengali chats, cleaned and split once; tests copy the config with their knobs."""
    run_dir = tmp_path_factory.mktemp("run")
    config = RunConfig(
        run_dir=str(run_dir),
        model_name=str(tiny_model),
        max_rows=240,
        max_seq_length=128,
        data_path=str(shared_data / "bn_instruct/bn_instruct.jsonl"),
    )
    from lowres_ft.data.prepare import prepare_data

    prepare_data(config, progress=False)
    return config


def run_copy(base: RunConfig, run_dir: Path, **changes) -> RunConfig:
    """`base` with changes, in a new run folder that shares base's prepared data."""
    values = {**base.to_dict(), "run_dir": str(run_dir), **changes}
    run_dir.mkdir(parents=True, exist_ok=True)
    data = run_dir / "data"
    if not data.exists():
        data.symlink_to(Path(base.run_dir) / "data")
    return RunConfig(**values)
