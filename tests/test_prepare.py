"""The data stage end to end on real files: split without leaks, formatting, and the counts."""

from __future__ import annotations

import json

from lowres_ft.config import RunConfig
from lowres_ft.data.clean import dedup_key
from lowres_ft.data.format import REFLECTIVE_PREFIXES
from lowres_ft.data.prepare import assign_validation, prepare_data, read_records, split_key


def _prompts(path):
    return [
        dedup_key(r.text if r.text is not None else r.messages[-2]["content"])
        for r in read_records(path)
    ]


def test_split_is_seeded_near_80_20_and_leaks_no_duplicate(tmp_path, shared_data):
    # dedup off, so the repeated conversations in this file reach the split
    config = RunConfig(
        run_dir=str(tmp_path),
        language="en",
        dedup="none",
        data_path=str(shared_data / "sharegpt_glaive" / "sharegpt_glaive.jsonl"),
    )
    first = prepare_data(config, progress=False)
    assert abs(first.validation_rows / (first.train_rows + first.validation_rows) - 0.2) < 0.03
    train = [json.dumps(r.messages) for r in read_records(first.train_path)]
    validation = [json.dumps(r.messages) for r in read_records(first.validation_path)]
    assert len(train) + len(validation) > len(set(train) | set(validation)), "file has repeats"
    assert not set(train) & set(validation)
    again = prepare_data(config, progress=False)
    assert again.validation_path.read_text() == first.validation_path.read_text()


def test_same_prompt_with_different_answers_stays_on_one_side():
    keys = [1, 1, 1, 2, 3, 4, 5, 6, 7, 8]
    flags = assign_validation(keys, 0.3, seed=0)
    assert len({flags[0], flags[1], flags[2]}) == 1
    assert 2 <= sum(flags) <= 4


def test_split_keeps_a_training_group_even_at_a_large_fraction():
    assert not all(assign_validation([1, 1, 2], 0.9, seed=0))


def test_raw_text_becomes_continued_pretraining_rows(tmp_path, shared_data):
    config = RunConfig(
        run_dir=str(tmp_path),
        language="as",
        max_rows=200,
        data_path=str(shared_data / "as_news" / "as_news.txt"),
    )
    prepared = prepare_data(config, progress=False)
    rows = list(read_records(prepared.train_path))
    assert rows and all(r.text is not None and not r.messages for r in rows)
    assert prepared.stats.kept + sum(prepared.stats.rejected.values()) == 200
    assert prepared.stats.rejected["script"] > 0  # the English tweets in the news dump


def test_system_prompt_and_reflective_prefix_reach_the_training_file(tmp_path, shared_data):
    config = RunConfig(
        run_dir=str(tmp_path),
        language="bn",
        max_rows=50,
        val_fraction=0.0,
        system_prompt="তুমি একজন সহায়ক।",
        reflective_prefixes=True,
        data_path=str(shared_data / "bn_instruct" / "bn_instruct.jsonl"),
    )
    prepared = prepare_data(config, progress=False)
    rows = list(read_records(prepared.train_path))
    assert all(r.messages[0] == {"role": "system", "content": "তুমি একজন সহায়ক।"} for r in rows)
    replies = [r.messages[2]["content"] for r in rows]
    assert all(reply.startswith(REFLECTIVE_PREFIXES["bn"]) for reply in replies)


def test_split_key_groups_by_the_first_user_turn():
    from lowres_ft.data.load import Record

    a = Record(
        "a", [{"role": "user", "content": "কেমন আছ?"}, {"role": "assistant", "content": "ভালো"}]
    )
    b = Record(
        "b", [{"role": "user", "content": "কেমন  আছ"}, {"role": "assistant", "content": "খারাপ"}]
    )
    assert split_key(a) == split_key(b)
