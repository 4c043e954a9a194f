"""Reply scores for the evaluation stage: chrF++, BLEU, ROUGE-L and script fidelity, over strings.

chrF++ and BLEU come from sacrebleu. Written by hand because no maintained library does it for
Indic scripts: the ROUGE tokenizer (rouge_score's default keeps only [a-z0-9], so a Bengali
sentence becomes no tokens at all) and the script and language shares of the replies.

chrF++, BLEU and ROUGE-L are on 0..100; `script_share` and `language_share` are shares in 0..1.
Every text is put in NFC first, so the same words stored two ways (precomposed or decomposed
nukta letters) score the same.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import regex
from sacrebleu.metrics import BLEU, CHRF

from lowres_ft.config import LowresError
from lowres_ft.data.scripts import assamese_or_bengali, script_for_language, script_ratio

# The keys of `score_replies`, in the order reports show them.
SCORE_KEYS = ("chrf_pp", "bleu", "rouge_l", "script_share", "language_share", "replies")

# A reply counts as written in the target language from this share of its letters in its script.
LANGUAGE_SCRIPT_RATIO = 0.5

# Letters, marks (vowel signs, virama, nukta) and digits, joined by ZWJ/ZWNJ or an apostrophe
# inside a word. U+09F7 (a digit sign by category) is typed for the danda, so it is no word.
_WORD_CHAR = r"[[\p{L}\p{M}\p{N}]--[\u09f7]]"
_ROUGE_WORD = regex.compile(rf"(?V1){_WORD_CHAR}+(?:[\u200c\u200d'’]+{_WORD_CHAR}+)*")
_LETTER = regex.compile(r"[\p{L}\p{M}]")  # what scripts.script_ratio counts as a letter


class MetricsError(LowresError, ValueError):
    """The replies or references given to a score are unusable; the message says how to fix it."""


def chrf_pp(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF++ (character n-grams plus word bigrams), 0..100."""
    hypotheses, references = _checked_pairs(hypotheses, references)
    return CHRF(word_order=2).corpus_score(hypotheses, [references]).score


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU, 0..100, tokenized with `intl`: it splits Unicode punctuation such as the
    danda off words, and needs no download (the flores/spm tokenizers fetch a model; `13a` leaves
    the danda on the word)."""
    hypotheses, references = _checked_pairs(hypotheses, references)
    return BLEU(tokenize="intl").corpus_score(hypotheses, [references]).score


def rouge_tokens(text: str) -> list[str]:
    """Words for ROUGE: letters with their combining marks kept whole, punctuation (danda too)
    dropped, lowercased. Python's `\\w` misses vowel signs and the virama and splits Indic words."""
    return [word.lower() for word in _ROUGE_WORD.findall(unicodedata.normalize("NFC", text))]


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the pairs, 0..100 like chrF++ and BLEU, on `rouge_tokens`.

    A pair where either side has no words scores 0, as in rouge_score."""
    hypotheses, references = _checked_pairs(hypotheses, references)
    total = 0.0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp_words, ref_words = rouge_tokens(hypothesis), rouge_tokens(reference)
        common = lcs_length(hyp_words, ref_words)
        if common:
            precision, recall = common / len(hyp_words), common / len(ref_words)
            total += 2 * precision * recall / (precision + recall)
    return 100.0 * total / len(hypotheses)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): one integer
    operation per word of `b` instead of a row of the O(len(a) * len(b)) table."""
    positions: dict[str, int] = {}  # word -> bit mask of where it occurs in `a`
    for i, word in enumerate(a):
        positions[word] = positions.get(word, 0) | (1 << i)
    all_ones = (1 << len(a)) - 1
    row = all_ones  # a zero bit marks a position of `a` that ends a longer common subsequence
    for word in b:
        matches = row & positions.get(word, 0)
        row = (row + matches) | (row - matches)
    return len(a) - (row & all_ones).bit_count()


def script_fidelity(replies: Sequence[str], language: str) -> dict[str, float]:
    """How much of the replies is in the language's script and how many are in the language.

    `script_share` weighs replies by their letters; `language_share` counts replies whose
    letters are mostly in the script and, for Assamese and Bengali (one script), that the
    Assamese/Bengali tell does not call the other language. A reply with no tell either way
    counts as in the language; one with no letters (empty) does not.
    """
    replies = _checked_texts(replies, "replies")
    script = script_for_language(language)
    letters = in_script = in_language = undecided = 0
    for reply in replies:
        reply = unicodedata.normalize("NFC", reply)
        reply_letters = len(_LETTER.findall(reply))
        if reply_letters == 0:
            continue
        ratio = script_ratio(reply, script)
        letters += reply_letters
        in_script += round(ratio * reply_letters)
        if ratio < LANGUAGE_SCRIPT_RATIO:
            continue
        if language in ("as", "bn"):
            verdict = assamese_or_bengali(reply).language
            if verdict not in (language, ""):
                continue
            if verdict == "":
                undecided += 1
        in_language += 1
    return {
        "script_share": in_script / letters if letters else 0.0,
        "language_share": in_language / len(replies),
        "letters": letters,
        "letters_in_script": in_script,
        "replies": len(replies),
        "replies_in_language": in_language,
        "replies_undecided": undecided,  # as/bn only: counted in, though the tell saw nothing
    }


def score_replies(
    hypotheses: Sequence[str], references: Sequence[str], language: str
) -> dict[str, float]:
    """All scores of one evaluation in one dict, keyed by `SCORE_KEYS`."""
    hypotheses, references = _checked_pairs(hypotheses, references)
    fidelity = script_fidelity(hypotheses, language)
    return {
        "chrf_pp": chrf_pp(hypotheses, references),
        "bleu": bleu(hypotheses, references),
        "rouge_l": rouge_l(hypotheses, references),
        "script_share": fidelity["script_share"],
        "language_share": fidelity["language_share"],
        "replies": len(hypotheses),
    }


def _checked_pairs(
    hypotheses: Sequence[str], references: Sequence[str]
) -> tuple[list[str], list[str]]:
    hypotheses = _checked_texts(hypotheses, "hypotheses")
    references = _checked_texts(references, "references")
    if len(hypotheses) != len(references):
        raise MetricsError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: give one reference "
            "per reply, in the same order (use '' for a prompt the model did not answer)."
        )
    return [_nfc(t) for t in hypotheses], [_nfc(t) for t in references]


def _checked_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise MetricsError(f"{name} is one string: pass a list of texts, e.g. [{name}].")
    texts = list(texts)
    if not texts:
        raise MetricsError(f"{name} is empty: score at least one reply.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise MetricsError(
                f"{name}[{i}] is {type(text).__name__}, not a string: use '' for a missing reply."
            )
    return texts


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)
