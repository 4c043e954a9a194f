"""Generation on the embedded SmolLM2 model (real tokenizer and chat template): presets and
context limits, greedy and seeded sampling, stopping at EOS and at a danda, streaming, batched
replies, history trimming and the response log."""

from __future__ import annotations

import csv
import json

import pytest

from lowres_ft.config import ConfigError, RunConfig
from lowres_ft.generate import (
    PRESETS,
    SENTENCE_ENDS,
    GenerationError,
    GenerationSettings,
    ResponseLog,
    SentenceEndCriteria,
    fit_history,
    generate_replies,
    generate_reply,
    load_chat_model,
    stream_reply,
)

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm():
    return load_chat_model(RunConfig())


def test_presets_set_the_reply_length_and_never_pass_the_context():
    assert [GenerationSettings(preset=p).token_budget(10, 8192) for p in PRESETS] == [
        100,
        250,
        500,
        8182,
    ]
    assert GenerationSettings(preset="long").token_budget(7900, 8192) == 292
    assert GenerationSettings(preset="short", max_new_tokens=7).token_budget(10, 8192) == 7
    with pytest.raises(GenerationError, match="shorten the message or clear the chat history"):
        GenerationSettings().token_budget(8192, 8192)


def test_bad_settings_say_what_to_use():
    with pytest.raises(ConfigError, match="preset='huge'.*short, medium, long, very_long"):
        GenerationSettings(preset="huge")
    with pytest.raises(ConfigError, match="0 < top_p <= 1"):
        GenerationSettings(temperature=0.7, top_p=0.0)
    with pytest.raises(ConfigError, match="preset"):
        RunConfig(preset="tiny")


def test_greedy_reply_stops_at_the_end_of_turn_token(smollm):
    reply = generate_reply(smollm.model, smollm.tokenizer, CAPITAL, GenerationSettings())
    assert reply.stop_reason == "eos" and reply.stopped_at_eos
    assert "Paris" in reply.text and reply.new_tokens < 100
    assert "<|im_end|>" not in reply.text


def test_seeded_sampling_repeats_with_the_seed_and_varies_without(smollm):
    chat = [{"role": "user", "content": "Write one sentence about rain."}]

    def sample(seed: int) -> str:
        settings = GenerationSettings(temperature=1.0, max_new_tokens=16, seed=seed)
        return generate_reply(smollm.model, smollm.tokenizer, chat, settings).text

    assert sample(1) == sample(1)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_sentence_end_stopping_fires_on_a_danda_in_the_real_tokenizer(smollm):
    """SmolLM2's byte-level tokenizer splits the danda over two tokens: transformers'
    stop_strings never see it, our criterion (on decoded text) stops right after it."""
    import torch
    from transformers.generation.stopping_criteria import StopStringCriteria

    tokenizer = smollm.tokenizer
    prompt = tokenizer("প্রশ্ন:", add_special_tokens=False)["input_ids"]
    reply = tokenizer("আমি ভাত খাই। তুমি", add_special_tokens=False)["input_ids"]
    through_danda = len(tokenizer("আমি ভাত খাই।", add_special_tokens=False)["input_ids"])
    ours = SentenceEndCriteria(tokenizer, len(prompt))
    theirs = StopStringCriteria(tokenizer, list(SENTENCE_ENDS))

    def stops(criterion) -> list[bool]:
        steps = range(1, len(reply) + 1)
        return [bool(criterion(torch.tensor([prompt + reply[:n]]), None)[0]) for n in steps]

    assert stops(ours)[: through_danda + 1] == [False] * (through_danda - 1) + [True, True]
    assert not any(stops(theirs))
    assert set(SENTENCE_ENDS) >= {"।", "॥"}


def test_sentence_end_stopping_cuts_a_multi_sentence_reply(smollm):
    chat = [{"role": "user", "content": "Say hi."}]
    full = generate_reply(smollm.model, smollm.tokenizer, chat, GenerationSettings())
    settings = GenerationSettings(stop_at_sentence_end=True)
    short = generate_reply(smollm.model, smollm.tokenizer, chat, settings)
    assert short.stop_reason == "sentence" and short.text.endswith(SENTENCE_ENDS)
    assert full.text.startswith(short.text) and len(short.text) < len(full.text)


def test_batched_replies_equal_one_at_a_time(smollm):
    chats = [
        CAPITAL,
        [{"role": "user", "content": "বাংলাদেশের রাজধানী কী?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    settings = GenerationSettings(max_new_tokens=12)
    batched = generate_replies(smollm.model, smollm.tokenizer, chats, settings, batch_size=3)
    single = [generate_reply(smollm.model, smollm.tokenizer, c, settings) for c in chats]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.stop_reason for r in batched] == [r.stop_reason for r in single]


def test_streaming_yields_pieces_that_add_up_to_the_reply(smollm):
    stream = stream_reply(smollm.model, smollm.tokenizer, CAPITAL, GenerationSettings())
    pieces = list(stream)
    assert len(pieces) > 3
    assert "".join(pieces).strip() == stream.reply.text.strip()
    assert stream.reply.stop_reason == "eos" and stream.reply.seconds > 0


def test_history_drops_the_oldest_turns_but_keeps_system_and_newest(smollm):
    tokenizer = smollm.tokenizer
    system = {"role": "system", "content": "You answer in Bengali."}
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"প্রশ্ন {i}: " + "বাংলা ভাষা " * 20},
            {"role": "assistant", "content": f"উত্তর {i}: " + "হ্যাঁ " * 20},
        ]
    messages = [system, *turns, {"role": "user", "content": "শেষ প্রশ্ন"}]
    settings = GenerationSettings(max_new_tokens=50)

    def prompt_tokens(chat) -> int:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"])

    two_turns_fit = prompt_tokens([system, *turns[-4:], messages[-1]]) + 50 + 5
    kept = fit_history(tokenizer, messages, settings, context_tokens=two_turns_fit)
    assert kept == [system, *turns[-4:], messages[-1]]  # the two newest exchanges survive
    assert prompt_tokens(kept) + 50 <= two_turns_fit
    with pytest.raises(GenerationError, match="shorten the message"):
        fit_history(tokenizer, [{"role": "user", "content": "শব্দ " * 400}], settings, 100)


def test_chat_session_keeps_history_and_logs_every_reply(smollm, tmp_path):
    log = ResponseLog(tmp_path)
    session = smollm.session(GenerationSettings(max_new_tokens=12), log=log)
    first = session.send("নমস্কার!")
    streamed = "".join(session.stream("What is 2+2?"))
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2
    assert session.history[1]["content"] == first.text
    assert session.history[3]["content"].strip() == streamed.strip()
    rows = log.read()
    assert [r["prompt"] for r in rows] == ["নমস্কার!", "What is 2+2?"]
    assert [r["history_turns"] for r in rows] == [0, 1]
    assert rows[0]["settings"]["max_new_tokens"] == 12 and rows[0]["model"] == "embedded"
    assert all(r["timestamp"] and r["stop_reason"] in ("eos", "length") for r in rows)
    with log.csv.open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [r["prompt"] for r in table] == ["নমস্কার!", "What is 2+2?"]
    assert json.loads(table[1]["settings"])["max_new_tokens"] == 12
    session.clear()
    assert session.history == [] and session.last_reply is None
    with pytest.raises(GenerationError, match="empty"):
        session.send("   ")


def test_streaming_releases_bengali_before_a_space_and_never_half_a_character(smollm):
    """The base model's Bengali runs on without spaces: pieces must still flow, and none may
    end in a split character."""
    chat = [{"role": "user", "content": "বাংলাদেশের রাজধানী কী?"}]
    stream = stream_reply(
        smollm.model, smollm.tokenizer, chat, GenerationSettings(max_new_tokens=30)
    )
    pieces = list(stream)
    assert len(pieces) >= 5 and not any(p.endswith("\ufffd") for p in pieces)
    assert "".join(pieces) == stream.reply.text


def test_a_stream_stops_early_when_the_reader_asks(smollm):
    chat = [{"role": "user", "content": "Write a long story about a river."}]
    stream = stream_reply(
        smollm.model, smollm.tokenizer, chat, GenerationSettings(max_new_tokens=200)
    )
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            stream.stop()
    assert stream.reply.stop_reason == "stopped" and stream.reply.new_tokens < 20
