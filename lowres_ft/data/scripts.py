"""Unicode scripts and language tells: which script a language is written in, how much of a
text is in it, and whether Bengali-script text is Assamese or Bengali.

Written by hand because no maintained library tells Assamese from Bengali: both use the
Bengali block, and the reliable tells are two letters (Assamese ৰ U+09F0 and ৱ U+09F1, where
Bengali writes র U+09B0 and ব) and a handful of very common function words.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import regex

from lowres_ft.config import ConfigError

# ISO 639-1 code -> Unicode script name (the `regex` module's \p{Script=...} names).
LANGUAGE_SCRIPTS: dict[str, str] = {
    "as": "Bengali",
    "bn": "Bengali",
    "hi": "Devanagari",
    "mr": "Devanagari",
    "ne": "Devanagari",
    "sa": "Devanagari",
    "en": "Latin",
    "gu": "Gujarati",
    "pa": "Gurmukhi",
    "or": "Oriya",
    "ta": "Tamil",
    "te": "Telugu",
    "kn": "Kannada",
    "ml": "Malayalam",
    "si": "Sinhala",
    "ur": "Arabic",
    "ar": "Arabic",
    "my": "Myanmar",
    "th": "Thai",
}

LANGUAGE_NAMES: dict[str, str] = {
    "as": "Assamese",
    "bn": "Bengali",
    "hi": "Hindi",
    "en": "English",
    "mr": "Marathi",
    "ne": "Nepali",
}

ASSAMESE_RA = "\u09f0"  # ৰ
ASSAMESE_WA = "\u09f1"  # ৱ
BENGALI_RA = "\u09b0"  # র
BENGALI_BA = "\u09ac"  # ব

# Frequent words that only one of the two languages uses. Assamese words are listed in their
# proper spelling with ৰ; words are compared after folding ৰ->র, so an Assamese text typed with
# a Bengali keyboard (the ৰ/র confusion) is still recognised.
ASSAMESE_WORDS = frozenset(
    [
        "আৰু",
        "কৰি",
        "কৰিছে",
        "কৰিব",
        "কৰিলে",
        "কৰিবলৈ",
        "কৰিছিল",
        "হৈছে",
        "হৈছিল",
        "হৈ",
        "হোৱা",
        "আছিল",
        "তেওঁ",
        "তেওঁৰ",
        "তেওঁলোকে",
        "এজন",
        "বাবে",
        "পৰা",
        "লগত",
        "লগতে",
        "মোৰ",
        "নিজৰ",
        "আপোনাৰ",
        "আপুনি",
        "মই",
        "নহয়",
        "নাই",
        "কেনেকৈ",
        "কিয়",
        "যিহেতু",
        "সকলো",
        "বহুত",
        "দিয়া",
        "লৈ",
        "গৈ",
        "থকা",
        "হ'ব",
        "হ’ব",
        "যোৱা",
        "উপৰি",
        "তথা",
        "সৈতে",
        "ক্ষেত্ৰত",
        "বুলি",
        "এনে",
        "তেনে",
        "পাছত",
        "পিছত",
        "অনুসৰি",
    ]
)
BENGALI_WORDS = frozenset(
    [
        "এবং",
        "এর",
        "হল",
        "করতে",
        "করবে",
        "করেন",
        "হয়েছে",
        "হয়ে",
        "ছিল",
        "তাঁর",
        "একটি",
        "একজন",
        "জন্য",
        "থেকে",
        "সাথে",
        "সঙ্গে",
        "আপনার",
        "আপনি",
        "নয়",
        "না",
        "কিভাবে",
        "কীভাবে",
        "কেন",
        "যেহেতু",
        "সব",
        "থাকা",
        "হবে",
        "যাওয়া",
        "এছাড়া",
        "বলে",
        "এমন",
        "তেমন",
        "যা",
    ]
)


# Words both languages share once ৰ is folded to র: they say nothing about which one it is.
@lru_cache(maxsize=65536)
def _fold(word: str) -> str:
    return unicodedata.normalize("NFC", word).replace(ASSAMESE_RA, BENGALI_RA)


_SHARED = {_fold(w) for w in ASSAMESE_WORDS} & {_fold(w) for w in BENGALI_WORDS}
_AS_FOLDED = {_fold(w) for w in ASSAMESE_WORDS} - _SHARED
_BN_FOLDED = {_fold(w) for w in BENGALI_WORDS} - _SHARED

_WORD = regex.compile(r"[\p{L}\p{M}'’]+")
_LETTER = regex.compile(r"[\p{L}\p{M}]+")


def script_for_language(language: str) -> str:
    """The Unicode script of a language code, or the script itself if a script name is given."""
    if language in LANGUAGE_SCRIPTS:
        return LANGUAGE_SCRIPTS[language]
    if _script_pattern_or_none(language) is not None:
        return language
    raise ConfigError(
        f"language={language!r} is neither a known language code "
        f"({', '.join(sorted(LANGUAGE_SCRIPTS))}) nor a Unicode script name such as "
        "'Tamil', 'Gurmukhi' or 'Ethiopic'."
    )


@lru_cache(maxsize=64)
def _script_pattern_or_none(script: str) -> regex.Pattern | None:
    if not script or not script[0].isalpha():
        return None
    try:
        # Script_Extensions, so shared marks (e.g. the danda's script is Common) count for it.
        return regex.compile(rf"(?V1)[\p{{Script_Extensions={script}}}&&[\p{{L}}\p{{M}}]]+")
    except regex.error:
        return None


def _count(pattern: regex.Pattern, text: str) -> int:
    """Characters matched, counted by runs (patterns end in +): no list of every letter."""
    return sum(len(run) for run in pattern.findall(text))


def script_ratio(text: str, script: str) -> float:
    """Share of the text's letters and marks written in `script` (digits and symbols ignored).

    A text with no letters at all counts as fully in the script: it has nothing in another one.
    """
    pattern = _script_pattern_or_none(script)
    if pattern is None:
        raise ConfigError(f"{script!r} is not a Unicode script name.")
    letters = _count(_LETTER, text)
    if letters == 0:
        return 1.0
    return _count(pattern, text) / letters


_SCRIPT_NAMES_FOR_MIX = ("Bengali", "Devanagari", "Latin", "Arabic", "Tamil", "Telugu", "Gurmukhi")


def script_mix(text: str) -> Counter[str]:
    """Letters per script, for the data report; scripts outside the common list count as Other."""
    counts: Counter[str] = Counter()
    letters = _count(_LETTER, text)
    for name in _SCRIPT_NAMES_FOR_MIX:
        n = _count(_script_pattern_or_none(name), text)
        if n:
            counts[name] = n
    other = letters - sum(counts.values())
    if other > 0:
        counts["Other"] = other
    return counts


@dataclass(frozen=True)
class LanguageGuess:
    """Assamese-or-Bengali verdict for a Bengali-script text, with the evidence behind it."""

    language: str  # "as", "bn" or "" when the text gives no tell
    assamese_score: float
    bengali_score: float
    evidence: str


def assamese_or_bengali(text: str) -> LanguageGuess:
    """Tell Assamese from Bengali by the letters ৰ/ৱ and common function words.

    The letters weigh most: a Bengali text never uses ৰ or ৱ. Words still decide when an
    Assamese text was typed with Bengali র (a common keyboard confusion).
    """
    text = unicodedata.normalize("NFC", text)
    as_letters = text.count(ASSAMESE_RA) + text.count(ASSAMESE_WA)
    bn_ra = text.count(BENGALI_RA)
    as_words = bn_words = 0
    as_seen: list[str] = []
    bn_seen: list[str] = []
    for word in _WORD.findall(text):
        folded = _fold(word)
        if folded in _AS_FOLDED:
            as_words += 1
            if len(as_seen) < 3:
                as_seen.append(word)
        elif folded in _BN_FOLDED:
            bn_words += 1
            if len(bn_seen) < 3:
                bn_seen.append(word)
    # র without any ৰ only breaks a tie: Assamese typed on a Bengali keyboard has it too.
    as_score = 2.0 * as_letters + as_words
    bn_score = bn_words + (0.5 if bn_ra and not as_letters else 0.0)
    language = "" if as_score == bn_score else ("as" if as_score > bn_score else "bn")
    evidence = (
        f"ৰ/ৱ {as_letters}, র {bn_ra}; Assamese words {as_words} {as_seen}, "
        f"Bengali words {bn_words} {bn_seen}"
    )
    return LanguageGuess(language, as_score, bn_score, evidence)
