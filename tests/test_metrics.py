"""Reply scores on real Bengali, Assamese, Hindi and English sentences from shared/data."""

from __future__ import annotations

import csv
import json
import math
import re
import unicodedata
from pathlib import Path

import pytest

from lowres_ft.config import LowresError
from lowres_ft.metrics import (
    SCORE_KEYS,
    MetricsError,
    bleu,
    chrf_pp,
    lcs_length,
    rouge_l,
    rouge_tokens,
    score_replies,
    script_fidelity,
)

N = 40  # sentences per language: enough for corpus scores, fast


def _bengali(shared_data: Path) -> list[str]:
    """Bengali prose: sentences of bn_instruct instructions that carry no Latin math."""
    path = shared_data / "bn_instruct" / "bn_instruct.jsonl"
    instructions = [
        json.loads(line)["instruction"] for line in path.read_text("utf-8").splitlines()
    ]
    sentences = (s.strip() for text in instructions for s in re.split(r"[।?\n]", text))
    return [s for s in sentences if len(s.split()) >= 4 and not re.search("[A-Za-z]", s)][:N]


def _parallel(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "as_en_parallel" / "as_en_parallel.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _assamese(shared_data: Path) -> list[str]:
    return [row["as"] for row in _parallel(shared_data)][:N]


def _english(shared_data: Path) -> list[str]:
    return [row["en"] for row in _parallel(shared_data)][:N]


def _hindi(shared_data: Path) -> list[str]:
    path = shared_data / "hi_dailydialog" / "hi_dailydialog.jsonl"
    dialogues = [json.loads(line)["messages"] for line in path.read_text("utf-8").splitlines()]
    return [m["content"] for d in dialogues for m in d if len(m["content"].split()) >= 4][:N]


LOADERS = {"bn": _bengali, "as": _assamese, "hi": _hindi}


def _rotated(texts: list[str]) -> list[str]:
    """Each reply answers another prompt: same language and style, unrelated content."""
    return texts[1:] + texts[:1]


# --- chrF++, BLEU, ROUGE-L -----------------------------------------------------------------------


@pytest.mark.parametrize("language", sorted(LOADERS))
def test_identical_replies_score_100_on_every_metric(shared_data, language):
    references = LOADERS[language](shared_data)
    assert len(references) == N
    assert chrf_pp(references, references) == pytest.approx(100.0)
    assert bleu(references, references) == pytest.approx(100.0)
    assert rouge_l(references, references) == pytest.approx(100.0)


@pytest.mark.parametrize("language", sorted(LOADERS))
def test_unrelated_replies_score_far_below_half_right_ones(shared_data, language):
    references = LOADERS[language](shared_data)
    first_halves = [" ".join(r.split()[: len(r.split()) // 2]) for r in references]
    unrelated = _rotated(references)
    for metric in (chrf_pp, bleu, rouge_l):
        half = metric(first_halves, references)
        wrong = metric(unrelated, references)
        assert 25.0 < half < 80.0, (metric.__name__, half)
        assert wrong < 15.0, (metric.__name__, wrong)


def test_bleu_splits_the_danda_off_the_last_word(shared_data):
    # The reply lacks only the danda. Split off (intl), every reply token matches and only the
    # brevity penalty remains; left on the word (13a), the last word of each reply would miss.
    sentences = [
        s for s in _bengali(shared_data) if all(unicodedata.category(c)[0] in "LMNZ" for c in s)
    ]
    assert len(sentences) >= 20
    references = [s + "।" for s in sentences]
    reply_tokens = sum(len(s.split()) for s in sentences)
    brevity = math.exp(1 - (reply_tokens + len(sentences)) / reply_tokens)
    assert bleu(sentences, references) == pytest.approx(100 * brevity)


def test_scores_ignore_how_nukta_letters_are_stored(shared_data):
    # 419 Assamese sentences of as_en_parallel store য় ড় ঢ় precomposed; NFC decomposes them.
    stored = [t for t in (r["as"] for r in _parallel(shared_data)) if "\u09df" in t][:10]
    assert len(stored) == 10
    decomposed = [unicodedata.normalize("NFC", t) for t in stored]
    assert decomposed != stored
    assert chrf_pp(stored, decomposed) == pytest.approx(100.0)
    assert rouge_l(stored, decomposed) == pytest.approx(100.0)


def test_rouge_l_is_the_lcs_f1_of_the_words():
    # LCS আমি ভাত খাই = 3 words; precision 3/4, recall 3/3, F1 = 2 * 0.75 / 1.75.
    assert rouge_l(["আমি ভাত খাই না।"], ["আমি ভাত খাই।"]) == pytest.approx(100 * 1.5 / 1.75)
    assert rouge_l(["ভাত আমি খাই।", ""], ["আমি ভাত খাই।", "আমি"]) == pytest.approx(100 * 2 / 3 / 2)


def _lcs_table(a: list[str], b: list[str]) -> int:
    """The textbook O(len(a) * len(b)) table, to check the bit-parallel version against."""
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal, row[0] = 0, 0
        for j, y in enumerate(b, start=1):
            previous_diagonal, row[j] = (
                row[j],
                previous_diagonal + 1 if x == y else max(row[j], row[j - 1]),
            )
    return row[-1]


@pytest.mark.parametrize("language", sorted(LOADERS))
def test_lcs_length_matches_the_dynamic_programming_table(shared_data, language):
    texts = LOADERS[language](shared_data)
    pairs = list(zip(texts, _rotated(texts), strict=True)) + [(t, t[: len(t) // 2]) for t in texts]
    for a, b in pairs:
        a_words, b_words = rouge_tokens(a), rouge_tokens(b)
        assert lcs_length(a_words, b_words) == _lcs_table(a_words, b_words)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == lcs_length(["a"], []) == 0


# --- the ROUGE tokenizer ---------------------------------------------------------------------


def test_rouge_tokens_keep_bengali_words_whole_where_backslash_w_splits_them():
    assert rouge_tokens("আমি ভাত খাই।") == ["আমি", "ভাত", "খাই"]
    assert re.findall(r"\w+", "আমি ভাত খাই।") != ["আমি", "ভাত", "খাই"]  # why not \w+


def test_rouge_tokens_keep_devanagari_matras_virama_and_drop_dandas():
    tokens = rouge_tokens("नमस्ते, आप कैसे हैं? मैं ठीक हूँ। धन्यवाद॥")
    assert tokens == ["नमस्ते", "आप", "कैसे", "हैं", "मैं", "ठीक", "हूँ", "धन्यवाद"]


def test_rouge_tokens_drop_the_assamese_danda_lookalike_and_keep_joiners_in_words():
    # ৷ U+09F7 ends 21 as_en_parallel sentences in place of the danda; র‍্যাব holds a ZWJ.
    assert rouge_tokens("মই ভাত খাওঁ ৷ র\u200d্যাব ১২৩") == ["মই", "ভাত", "খাওঁ", "র\u200d্যাব", "১২৩"]


def test_rouge_tokens_lowercase_latin_and_keep_apostrophes_inside_words():
    assert rouge_tokens("Hello, World! Don't 'quote' হ'ব") == [
        "hello",
        "world",
        "don't",
        "quote",
        "হ'ব",
    ]


# Joiners a word may hold besides letters: apostrophes (real Assamese has ৰে’ল), ZWNJ, ZWJ.
_WORD_JOINERS = dict.fromkeys(map(ord, "'’\u200c\u200d"))


@pytest.mark.parametrize("language", sorted(LOADERS))
def test_rouge_tokens_keep_every_letter_mark_and_digit_of_real_lines(shared_data, language):
    for text in LOADERS[language](shared_data):
        text = unicodedata.normalize("NFC", text)
        kept = "".join(c for c in text if unicodedata.category(c)[0] in "LMN" and c != "\u09f7")
        tokens = rouge_tokens(text)
        assert "".join(tokens).translate(_WORD_JOINERS) == kept.lower()
        assert not any(set(token) & set("।॥৷,?!.") for token in tokens)


def _length_question(shared_data: Path) -> str:
    return next(s for s in _bengali(shared_data) if s.startswith("প্রতিটি অংশের"))


def test_rouge_tokens_keep_every_word_of_a_real_bengali_question(shared_data):
    # Conjuncts with virama (প্র, র্ঘ্য), anusvara (ং), vowel signs (ি ে ৈ): four whole words.
    assert rouge_tokens(_length_question(shared_data)) == ["প্রতিটি", "অংশের", "দৈর্ঘ্য", "কত"]


def test_rouge_score_default_tokenizer_drops_the_bengali_question_to_nothing(shared_data):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    tokenizers = pytest.importorskip("rouge_score.tokenizers")
    question = _length_question(shared_data)
    assert tokenizers.DefaultTokenizer().tokenize(question) == []
    assert rouge_scorer.RougeScorer(["rougeL"]).score(question, question)["rougeL"].fmeasure == 0
    assert rouge_l([question], [question]) == pytest.approx(100.0)


def test_rouge_l_agrees_with_rouge_score_given_our_tokenizer(shared_data):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

    class OurTokens:
        def tokenize(self, text: str) -> list[str]:
            return rouge_tokens(text)

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=OurTokens())
    for language, load in LOADERS.items():
        references = load(shared_data)
        hypotheses = _rotated(references)[:5] + [r[: len(r) // 2] for r in references[5:]]
        theirs = [
            scorer.score(r, h)["rougeL"].fmeasure
            for h, r in zip(hypotheses, references, strict=True)
        ]
        expected = 100 * sum(theirs) / len(theirs)
        assert rouge_l(hypotheses, references) == pytest.approx(expected), language


# --- script fidelity -------------------------------------------------------------------------


def test_bengali_replies_in_a_bengali_run_are_all_in_the_language(shared_data):
    fidelity = script_fidelity(_bengali(shared_data), "bn")
    assert fidelity["script_share"] == pytest.approx(1.0)
    assert fidelity["language_share"] == pytest.approx(1.0)
    assert fidelity["replies"] == fidelity["replies_in_language"] == N


def test_english_replies_have_no_script_or_language_share(shared_data):
    for language in ("bn", "as", "hi"):
        fidelity = script_fidelity(_english(shared_data), language)
        assert fidelity["script_share"] == 0.0
        assert fidelity["language_share"] == 0.0
        assert fidelity["letters"] > 1000


def test_bengali_replies_in_an_assamese_run_have_the_script_but_not_the_language(shared_data):
    bengali, assamese = _bengali(shared_data), _assamese(shared_data)
    judged_as_assamese = script_fidelity(bengali, "as")
    assert judged_as_assamese["script_share"] == pytest.approx(1.0)  # same Bengali block
    assert judged_as_assamese["language_share"] <= 0.1  # only replies with no tell count
    assert judged_as_assamese["replies_in_language"] == judged_as_assamese["replies_undecided"]
    assert script_fidelity(assamese, "as")["language_share"] == pytest.approx(1.0)
    assert script_fidelity(assamese, "bn")["language_share"] == 0.0


def test_script_share_weighs_replies_by_letters_and_empty_replies_are_not_in_the_language():
    # আমি: 3 letters and marks (আ ম ি), all Bengali; "abcdef": 6 Latin letters; "": none.
    fidelity = script_fidelity(["আমি", "abcdef", "", "১২৩ !"], "bn")
    assert fidelity["letters"] == 9
    assert fidelity["letters_in_script"] == 3
    assert fidelity["script_share"] == pytest.approx(3 / 9)
    assert fidelity["replies_in_language"] == 1
    assert fidelity["language_share"] == pytest.approx(1 / 4)


def test_half_hindi_half_english_replies_are_half_in_the_language(shared_data):
    replies = _hindi(shared_data)[:10] + _english(shared_data)[:10]
    fidelity = script_fidelity(replies, "hi")
    assert fidelity["language_share"] == pytest.approx(0.5)
    assert 0.3 < fidelity["script_share"] < 0.7


# --- score_replies and errors ----------------------------------------------------------------


def test_score_replies_gives_every_score_under_stable_keys(shared_data):
    references = _assamese(shared_data)
    hypotheses = references[:20] + _english(shared_data)[20:]
    scores = score_replies(hypotheses, references, "as")
    assert tuple(scores) == SCORE_KEYS
    assert scores["replies"] == N
    assert scores["language_share"] == pytest.approx(0.5)
    assert scores["chrf_pp"] == pytest.approx(chrf_pp(hypotheses, references))
    assert 40.0 < scores["chrf_pp"] < 70.0
    assert 40.0 < scores["rouge_l"] < 60.0
    assert 0.0 < scores["bleu"] < 100.0


def test_mismatched_lengths_name_both_counts_and_the_fix():
    with pytest.raises(MetricsError, match=r"3 hypotheses but 2 references: give one reference"):
        chrf_pp(["a", "b", "c"], ["a", "b"])
    with pytest.raises(MetricsError, match="1 hypotheses but 2 references"):
        score_replies(["আমি"], ["আমি", "তুমি"], "bn")


@pytest.mark.parametrize("metric", [chrf_pp, bleu, rouge_l])
def test_empty_or_malformed_inputs_are_rejected_with_the_fix(metric):
    with pytest.raises(MetricsError, match="hypotheses is empty: score at least one reply"):
        metric([], [])
    with pytest.raises(MetricsError, match=r"references is one string: pass a list"):
        metric(["আমি ভাত খাই।"], "আমি ভাত খাই।")
    with pytest.raises(MetricsError, match=r"hypotheses\[1\] is NoneType.*use '' for a missing"):
        metric(["আমি", None], ["আমি", "ভাত"])


def test_metrics_error_is_a_lowres_error_and_a_value_error():
    with pytest.raises(MetricsError) as caught:
        script_fidelity([], "bn")
    assert isinstance(caught.value, LowresError)
    assert isinstance(caught.value, ValueError)
    assert "replies is empty" in str(caught.value)
