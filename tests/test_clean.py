"""Cleaning rules, one test each, on real lines that show the issue (picked from the data by
the property, so the README's facts are checked along the way)."""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from lowres_ft.config import ConfigError, RunConfig
from lowres_ft.data.clean import (
    SENSITIVE_PATTERNS,
    ZWNJ,
    Cleaner,
    normalize_text,
    remove_stray_joiners,
    repair_turns,
)
from lowres_ft.data.load import Record, Rejected, load_rows
from lowres_ft.data.scripts import (
    ASSAMESE_RA,
    ASSAMESE_WA,
    BENGALI_BA,
    BENGALI_RA,
    assamese_or_bengali,
    script_ratio,
)

PRECOMPOSED_NUKTA = "\u09dc\u09dd\u09df"  # ড় ঢ় য়, decomposed by NFC
NUKTA = "\u09bc"
VIRAMA = "\u09cd"
CANDRABINDU = "\u0981"
DANDA, DANDA_LOOKALIKE = "\u0964", "\u09f7"


def _news(shared_data: Path) -> list[str]:
    return (shared_data / "as_news" / "as_news.txt").read_text("utf-8").splitlines()


def _news_records(shared_data: Path, numbers: list[int] | None = None) -> list[Record]:
    lines = _news(shared_data)
    numbers = numbers or list(range(1, len(lines) + 1))
    return [Record(f"as_news.txt:{n}", text=lines[n - 1]) for n in numbers]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _oasst(shared_data: Path) -> list[list[dict[str, str]]]:
    return [o["messages"] for o in _jsonl(shared_data / "as_oasst" / "as_oasst.jsonl")]


def _bn_outputs(shared_data: Path) -> list[str]:
    return [o["output"] for o in _jsonl(shared_data / "bn_instruct" / "bn_instruct.jsonl")]


def _clean(rows, **config) -> tuple[list[Record], Cleaner, list[dict]]:
    rejects = io.StringIO()
    cleaner = Cleaner(RunConfig(**config), rejects=rejects)
    kept = list(cleaner.clean(rows))
    cleaner.stats.check()
    return kept, cleaner, [json.loads(line) for line in rejects.getvalue().splitlines()]


# --- normalisation ---------------------------------------------------------------------------


def test_nfc_decomposes_the_precomposed_nukta_letters_of_as_news(shared_data):
    lines = _news(shared_data)
    changes: Counter[str] = Counter()
    normalized = [normalize_text(line, "as", changes) for line in lines]
    assert changes["nfc"] == 1099  # the README: 1,099 of 2,867 lines are not in NFC
    line = next(line for line in lines if any(c in line for c in PRECOMPOSED_NUKTA))
    out = normalize_text(line, "as")
    assert not any(c in out for c in PRECOMPOSED_NUKTA)
    assert out.count(NUKTA) == line.count(NUKTA) + sum(line.count(c) for c in PRECOMPOSED_NUKTA)
    assert all(unicodedata.is_normalized("NFC", text) for text in normalized)


def test_nfc_composes_a_two_part_vowel_stored_as_e_plus_aa(shared_data):
    o_sign = "\u09cb"  # ো, which NFC makes of ে + া
    lines = [line for line in _news(shared_data) if "\u09c7\u09be" in line]
    assert len(lines) == 5  # 2 lines with only this issue, 3 with nukta letters too
    for line in lines:
        out = normalize_text(line, "as")
        assert "\u09c7\u09be" not in out
        assert out.count(o_sign) == line.count(o_sign) + line.count("\u09c7\u09be")


def test_stray_zwnj_after_a_candrabindu_is_removed(shared_data):
    line = next(
        line
        for line in _news(shared_data)
        if CANDRABINDU + ZWNJ in line and VIRAMA + ZWNJ not in line
    )
    assert remove_stray_joiners(line) == line.replace(ZWNJ, "")
    assert ZWNJ not in normalize_text(line, "as")


def test_zwnj_after_a_virama_is_kept(shared_data):
    line = next(line for line in _news(shared_data) if VIRAMA + ZWNJ in line)
    assert remove_stray_joiners(line) == line
    assert (VIRAMA + ZWNJ) in normalize_text(line, "as")


def test_a_doubled_zwnj_next_to_a_virama_is_cut_to_one_on_either_side(shared_data):
    lines = _news(shared_data)
    after = next(line for line in lines if VIRAMA + ZWNJ in line)
    doubled = after.replace(VIRAMA + ZWNJ, VIRAMA + ZWNJ + ZWNJ, 1)
    assert remove_stray_joiners(doubled) == remove_stray_joiners(after)
    before = next(line for line in lines if ZWNJ + VIRAMA in line)  # ত‌্য in a real line
    assert remove_stray_joiners(before).count(ZWNJ + VIRAMA) == before.count(ZWNJ + VIRAMA)
    doubled = before.replace(ZWNJ + VIRAMA, ZWNJ + ZWNJ + VIRAMA, 1)
    assert remove_stray_joiners(doubled) == remove_stray_joiners(before)


def test_every_zwnj_in_as_news_is_kept_next_to_a_virama_and_dropped_elsewhere(shared_data):
    lines = [line for line in _news(shared_data) if ZWNJ in line]
    total = sum(line.count(ZWNJ) for line in lines)
    assert total == 18  # the README's count
    at_virama = sum(line.count(VIRAMA + ZWNJ) + line.count(ZWNJ + VIRAMA) for line in lines)
    assert 0 < at_virama < total
    assert sum(remove_stray_joiners(line).count(ZWNJ) for line in lines) == at_virama


def test_danda_lookalike_before_a_space_or_the_end_becomes_a_danda(shared_data):
    lines = [line for line in _news(shared_data) if DANDA_LOOKALIKE in line]
    assert sum(line.count(DANDA_LOOKALIKE) for line in lines) == 114  # the README's count
    ending = next(line for line in lines if line.rstrip().endswith(DANDA_LOOKALIKE))
    out = normalize_text(ending, "as")
    assert out.endswith(DANDA) and DANDA_LOOKALIKE not in out[-3:]
    spaced = next(line for line in lines if DANDA_LOOKALIKE + " " in line)
    before = spaced.count(DANDA_LOOKALIKE + " ")
    out = normalize_text(spaced, "as")
    assert out.count(DANDA_LOOKALIKE + " ") == 0
    assert out.count(DANDA + " ") >= before
    # inside a word it may be a mistyped া (সভ৷পতি), so it is left alone
    inside = next(line for line in lines if re.search("\u09ad\u09f7\u09aa", line))
    assert re.search("\u09ad\u09f7\u09aa", normalize_text(inside, "as"))


def test_parallel_sentences_ending_in_the_lookalike_end_in_a_danda(shared_data):
    with (shared_data / "as_en_parallel" / "as_en_parallel.csv").open(encoding="utf-8") as f:
        assamese = [row["as"] for row in csv.DictReader(f)]
    ending = [t for t in assamese if t.rstrip().endswith(DANDA_LOOKALIKE)]
    assert len(ending) == 21  # the README's count
    assert all(normalize_text(t, "as").endswith(DANDA) for t in ending)


def test_bengali_ra_in_assamese_text_is_written_as_assamese_ra(shared_data):
    lines = [line for line in _news(shared_data) if BENGALI_RA in line]
    changes: Counter[str] = Counter()
    fixed = [normalize_text(line, "as", changes) for line in lines]
    assert changes["confusables"] == len(lines) == 70
    assert all(BENGALI_RA not in text for text in fixed)
    # and the keyboard confusion (ৰ typed র) is undone for a line that has Assamese words
    line = next(line for line in lines if " আৰু " in line)
    typed = line.replace(ASSAMESE_RA, BENGALI_RA)
    assert normalize_text(typed, "as") == normalize_text(line, "as")


def test_assamese_ra_in_bengali_text_is_written_as_bengali_ra(shared_data):
    output = next(t for t in _bn_outputs(shared_data) if " এবং " in t and BENGALI_RA in t)
    typo = output.replace(BENGALI_RA, ASSAMESE_RA, 1)
    assert normalize_text(typo, "bn") == normalize_text(output, "bn")
    wa_typo = output.replace(BENGALI_BA, ASSAMESE_WA, 1)
    assert BENGALI_BA in output
    assert normalize_text(wa_typo, "bn") == normalize_text(output, "bn")
    # an Assamese line in a Bengali run keeps its letters (the language check rejects it)
    assamese = next(line for line in _news(shared_data) if " আৰু " in line)
    assert ASSAMESE_RA in normalize_text(assamese, "bn")


def test_keyboard_confusion_is_fixed_in_every_turn_of_an_assamese_conversation(shared_data):
    # Judged per turn, a short turn with a র and no Assamese word looks Bengali and kept its
    # র inside a conversation that is Assamese as a whole.
    def confused(text: str) -> str:
        return text.replace(ASSAMESE_RA, BENGALI_RA).replace(ASSAMESE_WA, BENGALI_BA)

    rows = [
        Record(f"as_oasst.jsonl:{n}", [{**m, "content": confused(m["content"])} for m in chat])
        for n, chat in enumerate(_oasst(shared_data), start=1)
    ]
    kept, cleaner, _ = _clean(rows, language="as", dedup="none")
    assert cleaner.stats.rejected["language"] == 0
    assert len(kept) == 99
    left = [m["content"] for r in kept for m in r.messages if BENGALI_RA in m["content"]]
    assert left == []


# --- filters ----------------------------------------------------------------------------------


def test_mostly_latin_news_lines_are_rejected_for_script(shared_data):
    lines = _news(shared_data)
    latin = [
        n
        for n, line in enumerate(lines, start=1)
        if len(re.findall("[A-Za-z]", line)) > len(re.findall("[\u0980-\u09ff]", line))
    ]
    assamese = [n for n in range(1, 200) if n not in latin][:30]
    kept, cleaner, rejects = _clean(_news_records(shared_data, latin + assamese), language="as")
    assert cleaner.stats.rejected == Counter({"script": len(latin)})
    assert [r.source for r in kept] == [f"as_news.txt:{n}" for n in assamese]
    assert {r["source"] for r in rejects} == {f"as_news.txt:{n}" for n in latin}
    for reject in rejects:
        assert re.fullmatch(
            r"\d+% of letters in Bengali script \(min_script_ratio=0\.5\)", reject["reason"]
        )
    kept, _, _ = _clean(_news_records(shared_data, latin), language="as", min_script_ratio=0.0)
    assert len(kept) == len(latin)


def test_bengali_rows_are_rejected_in_an_assamese_run(shared_data):
    bengali = [
        Record(f"bn_instruct.jsonl:{n}", text=t)
        for n, t in enumerate(_bn_outputs(shared_data)[:20], 1)
    ]
    assamese = _news_records(shared_data, list(range(1, 21)))
    kept, cleaner, rejects = _clean(bengali + assamese, language="as", dedup="none")
    assert cleaner.stats.rejected == Counter({"language": 19})
    # the one Bengali row kept gives no tell at all (no র, no function word): undecided
    [undecided] = [r for r in kept if r.source.startswith("bn_instruct")]
    assert assamese_or_bengali(undecided.text).language == ""
    assert [r.source for r in kept if r.source.startswith("as_news")] == [
        a.source for a in assamese
    ]
    assert {r["source"] for r in rejects} < {b.source for b in bengali}
    assert all(r["reason"].startswith("looks Bengali, not Assamese (ৰ/ৱ 0") for r in rejects)
    kept, cleaner, _ = _clean(bengali, language="as", dedup="none", check_language=False)
    assert cleaner.stats.rejected["language"] == 0


def test_assamese_rows_are_rejected_in_a_bengali_run(shared_data):
    rows = _news_records(shared_data, list(range(1, 21)))
    kept, cleaner, rejects = _clean(rows, language="bn", dedup="none")
    assert kept == []
    assert cleaner.stats.rejected == Counter({"language": 20})
    assert all(r["reason"].startswith("looks Assamese, not Bengali") for r in rejects)


def test_exact_duplicates_are_rejected_naming_the_first_copy(shared_data):
    path = shared_data / "sharegpt_glaive" / "sharegpt_glaive.jsonl"
    objects = _jsonl(path)
    first_seen: dict[str, int] = {}
    expected = {}
    for number, obj in enumerate(objects, start=1):
        turns = obj["conversations"]
        if any(t["from"] in ("function_call", "observation") for t in turns):
            continue
        key = json.dumps(turns)
        if key in first_seen:
            expected[f"sharegpt_glaive.jsonl:{number}"] = f"sharegpt_glaive.jsonl:{first_seen[key]}"
        first_seen.setdefault(key, number)
    assert len(expected) == 12
    _, cleaner, rejects = _clean(load_rows(path), language="en", dedup="exact")
    found = {r["source"]: r["reason"] for r in rejects if r["step"] == "exact_dup"}
    assert found == {dup: f"duplicate of {first}" for dup, first in expected.items()}
    _, cleaner, _ = _clean(load_rows(path), language="en", dedup="none")
    assert cleaner.stats.rejected["exact_dup"] == 0


def test_exact_dedup_compares_after_nfc_so_nukta_spellings_match(shared_data):
    line = next(line for line in _news(shared_data) if any(c in line for c in PRECOMPOSED_NUKTA))
    decomposed = unicodedata.normalize("NFD", line)
    assert decomposed != line
    rows = [Record("as_news.txt:a", text=line), Record("copy.txt:1", text=decomposed)]
    kept, _, rejects = _clean(rows, language="as", dedup="exact")
    assert [r.source for r in kept] == ["as_news.txt:a"]
    assert [(r["step"], r["reason"]) for r in rejects] == [
        ("exact_dup", "duplicate of as_news.txt:a")
    ]


def test_a_real_line_with_one_word_changed_is_a_near_duplicate(shared_data):
    lines = _news(shared_data)
    number, line = max(enumerate(lines[:300], start=1), key=lambda item: len(item[1].split()))
    words = line.split()
    middle = len(words) // 2
    changed = " ".join(words[:middle] + ["নতুন"] + words[middle + 1 :])
    other = lines[number]  # the next line: another paragraph
    rows = [
        Record(f"as_news.txt:{number}", text=line),
        Record("edited.txt:1", text=changed),
        Record(f"as_news.txt:{number + 1}", text=other),
    ]
    kept, cleaner, rejects = _clean(rows, language="as", dedup="near")
    assert [r.source for r in kept] == [f"as_news.txt:{number}", f"as_news.txt:{number + 1}"]
    [reject] = rejects
    assert reject["step"] == "near_dup"
    match = re.fullmatch(
        rf"near-duplicate of as_news\.txt:{number} \(~(0\.\d\d) Jaccard\)", reject["reason"]
    )
    assert match and 0.8 <= float(match.group(1)) < 1.0
    kept, _, _ = _clean(rows, language="as", dedup="exact")
    assert len(kept) == 3


def test_length_bounds_reject_too_long_rows_and_too_short_turns(shared_data):
    lines = _news(shared_data)
    line = next(line for line in lines if normalize_text(line, "as") == line)
    row = [Record("as_news.txt:x", text=line)]
    kept, _, _ = _clean(row, language="as", max_chars=len(line))
    assert len(kept) == 1
    kept, _, rejects = _clean(row, language="as", max_chars=len(line) - 1)
    assert kept == []
    assert [(r["step"], r["reason"]) for r in rejects] == [
        ("length", f"{len(line)} characters in all (max_chars={len(line) - 1})")
    ]
    dialogues = _jsonl(shared_data / "hi_dailydialog" / "hi_dailydialog.jsonl")
    chat = next(d["messages"] for d in dialogues if len(d["messages"]) == 2)
    shortest = min(len(m["content"]) for m in chat)
    assert all(normalize_text(m["content"], "hi") == m["content"] for m in chat)
    row = [Record("hi_dailydialog.jsonl:x", chat)]
    kept, _, _ = _clean(row, language="hi", min_chars=shortest)
    assert len(kept) == 1
    kept, _, rejects = _clean(row, language="hi", min_chars=shortest + 1)
    assert [(r["step"], r["reason"]) for r in rejects] == [
        ("length", f"a turn has {shortest} characters (min_chars={shortest + 1})")
    ]


@pytest.mark.parametrize(
    ("needle", "pattern"),
    [
        ("@gmail.com", SENSITIVE_PATTERNS[0]),  # an e-mail address in a news line
        ("+৯৬৫", SENSITIVE_PATTERNS[1]),  # a phone number in Bengali digits
        ("আত্মহত্যা", "আত্মহত্যা"),  # suicide
    ],
    ids=["email", "phone", "suicide"],
)
def test_sensitive_preset_rejects_real_lines_with_personal_data_or_self_harm(
    shared_data, needle, pattern
):
    number, line = next((n, t) for n, t in enumerate(_news(shared_data), 1) if needle in t)
    rows = [Record(f"as_news.txt:{number}", text=line)]
    # min_script_ratio=0: the e-mail line is a Latin byline, and only the unsafe rule counts
    kept, _, rejects = _clean(rows, language="as", unsafe_preset="sensitive", min_script_ratio=0)
    assert kept == []
    assert [(r["step"], r["reason"]) for r in rejects] == [
        ("unsafe", f"matches unsafe pattern {pattern!r}")
    ]
    kept, _, _ = _clean(rows, language="as", unsafe_preset="none", min_script_ratio=0)
    assert len(kept) == 1


def test_custom_unsafe_pattern_rejects_only_the_lines_it_matches(shared_data):
    rows = _news_records(shared_data, list(range(1, 61)))
    pattern = r"বিজেপি|কংগ্ৰেছ"
    expected = {r.source for r in rows if re.search(pattern, normalize_text(r.text, "as"))}
    assert 0 < len(expected) < len(rows)
    _, cleaner, rejects = _clean(rows, language="as", dedup="none", unsafe_patterns=[pattern])
    unsafe = [r for r in rejects if r["step"] == "unsafe"]
    assert {r["source"] for r in unsafe} == expected
    assert {r["reason"] for r in unsafe} == {f"matches unsafe pattern {pattern!r}"}


def test_invalid_unsafe_regex_raises_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"unsafe_patterns: '\(unclosed' is not a valid regex"):
        Cleaner(RunConfig(language="as", unsafe_patterns=["ok", "(unclosed"]))


# --- turns ------------------------------------------------------------------------------------


def _alternating_prefix(messages: list[dict[str, str]]) -> int:
    length = 0
    for message in messages:
        if message["role"] != ("user" if length % 2 == 0 else "assistant"):
            break
        length += 1
    return length - length % 2  # end on an assistant turn


def test_repair_turns_keeps_the_longest_alternating_prefix_of_oasst_trees(shared_data):
    chats = _oasst(shared_data)
    consecutive = [
        c for c in chats if any(a["role"] == b["role"] for a, b in zip(c, c[1:], strict=False))
    ]
    ends_on_user = [c for c in chats if c[-1]["role"] == "user"]
    assert (len(consecutive), len(ends_on_user)) == (99, 27)  # the README's counts
    for chat in chats:
        kept, cut = repair_turns(chat)
        assert kept == chat[: _alternating_prefix(chat)]
        assert [m["role"] for m in kept] == ["user", "assistant"] * (len(kept) // 2)
        assert cut == (
            f"cut {len(chat) - len(kept)} of {len(chat)} turns after the first break "
            "in user/assistant order"
            if len(kept) < len(chat)
            else ""
        )


def test_repair_turns_drops_a_final_user_turn_and_keeps_a_system_turn(shared_data):
    chat = next(
        c
        for c in _oasst(shared_data)
        if c[-1]["role"] == "user" and _alternating_prefix(c) == len(c) - 1
    )
    kept, cut = repair_turns(chat)
    assert kept == chat[:-1]
    assert cut.startswith(f"cut 1 of {len(chat)} turns")
    system = {"role": "system", "content": "তুমি এজন সহায়ক।"}
    kept, _ = repair_turns([system] + chat)
    assert kept == [system] + chat[:-1]


def test_cleaner_rejects_a_chat_with_no_user_then_assistant_turn(shared_data):
    chat = _oasst(shared_data)[0]
    assistant_first = Record("x:1", [chat[1], chat[0]])
    user_only = Record("x:2", [chat[0]])
    rows = [assistant_first, user_only]
    kept, _, rejects = _clean(rows, language="as")
    assert kept == []
    assert [(r["step"], r["reason"]) for r in rejects] == [
        ("turns", "no user turn followed by an assistant turn")
    ] * 2


# --- accounting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "language", "columns"),
    [
        ("as_oasst/as_oasst.jsonl", "as", {}),
        ("sharegpt_glaive/sharegpt_glaive.jsonl", "en", {}),
        (
            "as_en_parallel/as_en_parallel.csv",
            "as",
            {"question_column": "en", "answer_column": "as"},
        ),
    ],
    ids=["as_oasst", "sharegpt_glaive", "as_en_parallel"],
)
def test_rejects_count_adds_up_and_every_reject_is_written_with_its_reason(
    shared_data, tmp_path, relative, language, columns
):
    path = shared_data / relative
    rejects_path = tmp_path / "rejects.jsonl"
    config = RunConfig(language=language, dedup="near", **columns)
    with rejects_path.open("w", encoding="utf-8") as handle:
        cleaner = Cleaner(config, rejects=handle)
        kept = list(cleaner.clean(load_rows(path, **columns)))
    stats = cleaner.stats
    rows_in_file = sum(1 for _ in load_rows(path, **columns))
    assert stats.read == rows_in_file
    assert stats.kept == len(kept)
    assert stats.read == stats.kept + sum(stats.rejected.values())
    assert sum(stats.rejected.values()) > 0
    rejects = [json.loads(line) for line in rejects_path.read_text("utf-8").splitlines()]
    assert len(rejects) == sum(stats.rejected.values())
    assert Counter(r["step"] for r in rejects) == stats.rejected
    for reject in rejects:
        assert reject["source"].startswith(path.name + ":")
        assert reject["step"] in stats.rejected
        assert reject["reason"]
        assert "row" in reject
    kept_sources = {r.source for r in kept}
    assert kept_sources.isdisjoint(r["source"] for r in rejects)
    stats.check()
    assert stats.to_json()["rejected_total"] == len(rejects)


def test_loader_rejects_are_counted_under_load_with_the_tool_turn_reason(shared_data):
    rows = list(load_rows(shared_data / "sharegpt_glaive" / "sharegpt_glaive.jsonl"))
    tool_rows = [r for r in rows if isinstance(r, Rejected)]
    _, cleaner, rejects = _clean(rows, language="en", dedup="none")
    assert cleaner.stats.rejected["load"] == len(tool_rows) == 126
    load = [r for r in rejects if r["step"] == "load"]
    assert all(" is a tool turn (" in r["reason"] for r in load)
    assert cleaner.stats.reasons["turn N is a tool turn"] == 126


def test_kept_assamese_news_is_nfc_and_in_bengali_script(shared_data):
    kept, _, _ = _clean(_news_records(shared_data, list(range(1, 101))), language="as")
    assert all(script_ratio(r.text, "Bengali") >= 0.5 for r in kept)
    assert all(unicodedata.is_normalized("NFC", r.text) for r in kept)
