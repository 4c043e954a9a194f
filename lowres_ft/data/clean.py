"""Cleaning: repair turns, normalise, filter, deduplicate. Streaming and linear in the input.

Each rule either changes a row (counted under `changed`) or rejects it (counted under
`rejected`, written to the rejects file with its reason). `read == kept + sum(rejected)` always
holds; `CleanStats.check()` asserts it.

Written by hand where no maintained library covers it: Indic normalisation (stray joiners,
danda look-alikes, the ৰ/র confusion) and the Assamese/Bengali tell live in `scripts.py`.
MinHash and LSH come from datasketch.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import regex
from datasketch import MinHash, MinHashLSH

from lowres_ft.config import ConfigError, RunConfig
from lowres_ft.data.load import Record, Rejected, Row
from lowres_ft.data.scripts import (
    ASSAMESE_RA,
    ASSAMESE_WA,
    BENGALI_BA,
    BENGALI_RA,
    LANGUAGE_NAMES,
    assamese_or_bengali,
    script_for_language,
    script_ratio,
)

# Order of the steps, as counted in the report.
STEPS = (
    "load",
    "turns",
    "normalize",
    "length",
    "unsafe",
    "script",
    "language",
    "exact_dup",
    "near_dup",
)

ZWNJ, ZWJ = "\u200c", "\u200d"
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"), None)  # ZWSP, WJ, BOM, SHY
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_VIRAMA = {chr(c) for c in range(0x0900, 0x0DFF) if unicodedata.combining(chr(c)) == 9}
# U+09F7 BENGALI CURRENCY NUMERATOR FOUR looks like the danda and is typed in its place.
_DANDA_LOOKALIKE = re.compile("\u09f7(?=\\s|$|[\"'”’)])")
# An ASCII pipe right after an Indic letter or mark, used as a danda.
_PIPE_DANDA = regex.compile(r"(?<=[\p{Script=Bengali}\p{Script=Devanagari}])\s?\|(?=\s|$)")
_DOUBLE_DANDA = re.compile("\u0964\\s?\u0964")
_KEY_STRIP = regex.compile(r"[\p{P}\p{S}\s]+")

# The "sensitive" preset: personal data and self-harm phrases, in English, Bengali, Assamese and
# Hindi (after the Bengali empathetic-chatbot project, which removed such rows before training).
SENSITIVE_PATTERNS = (
    r"[\w.+-]+@[\w-]+\.[\w.]+",  # e-mail address
    r"(?<!\d)(?:\+?\d[\d\s-]{9,14}\d)(?!\d)",  # phone number, Latin digits
    r"(?<![০-৯])[০-৯][০-৯\s-]{9,14}[০-৯](?![০-৯])",  # phone number, Bengali digits
    r"(?i)\b(?:kill myself|suicide|self[- ]harm|end my life)\b",
    r"আত্মহত্যা",  # suicide (bn, as)
    r"নিজেকে শেষ করে",  # end myself (bn)
    r"আত্মহনন",  # suicide (bn, as)
    r"आत्महत्या",  # suicide (hi)
    r"खुद को खत्म",  # end myself (hi)
)


@dataclass
class CleanStats:
    """Counts per step; the report shows them and the tests check that they add up."""

    read: int = 0
    kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # short reason -> count

    def check(self) -> None:
        total = self.kept + sum(self.rejected.values())
        if total != self.read:
            raise AssertionError(f"cleaning lost rows: read {self.read}, accounted {total}")

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": {step: self.rejected.get(step, 0) for step in STEPS},
            "rejected_total": sum(self.rejected.values()),
            "changed": dict(self.changed),
            "top_reasons": dict(self.reasons.most_common(20)),
        }


# --- normalisation --------------------------------------------------------------------------------


def remove_stray_joiners(text: str) -> str:
    """Drop ZWJ/ZWNJ that do not touch a virama; there they shape conjuncts and must stay."""
    if ZWJ not in text and ZWNJ not in text:
        return text
    out = []
    for i, ch in enumerate(text):
        if ch in (ZWJ, ZWNJ):
            before = text[i - 1] if i else ""
            after = text[i + 1] if i + 1 < len(text) else ""
            if before not in _VIRAMA and after not in _VIRAMA:
                continue
            if out and out[-1] in (ZWJ, ZWNJ):  # a doubled joiner is never needed
                continue
        out.append(ch)
    return "".join(out)


def fix_confusables(text: str, language: str, verdict: str | None = None) -> str:
    """Write Assamese with ৰ and Bengali with র/ব: the keyboards are often mixed up.

    `verdict` is `assamese_or_bengali`'s call on the whole row when `text` is one turn of it:
    a short turn alone often has no tell but a র, which the tie-break calls Bengali."""
    if language == "as" and BENGALI_RA in text:
        if verdict is None:
            verdict = assamese_or_bengali(text).language
        if verdict in ("as", ""):
            return text.replace(BENGALI_RA, ASSAMESE_RA)
    elif language == "bn" and (ASSAMESE_RA in text or ASSAMESE_WA in text):
        if verdict is None:
            verdict = assamese_or_bengali(text).language
        if verdict in ("bn", ""):
            return text.replace(ASSAMESE_RA, BENGALI_RA).replace(ASSAMESE_WA, BENGALI_BA)
    return text


def normalize_text(
    text: str, language: str, changes: Counter[str] | None = None, verdict: str | None = None
) -> str:
    """NFC plus the Indic fixes; `changes` counts which rule touched the text; `verdict` is the
    Assamese/Bengali call on the whole row (see `fix_confusables`)."""
    rules = (
        ("invisible_chars", _remove_invisible),
        ("nfc", lambda t: unicodedata.normalize("NFC", t)),
        ("stray_joiners", remove_stray_joiners),
        ("danda_lookalikes", _fix_dandas),
        ("confusables", lambda t: fix_confusables(t, language, verdict)),
        ("whitespace", _tidy_whitespace),
    )
    for name, rule in rules:
        new = rule(text)
        if new != text and changes is not None:
            changes[name] += 1
        text = new
    return text


def _remove_invisible(text: str) -> str:
    # str.translate visits every character and is slow on non-ASCII text; most rows have
    # none of the four characters, and `in` finds that out far faster.
    if "\u200b" in text or "\u2060" in text or "\ufeff" in text or "\u00ad" in text:
        return text.translate(INVISIBLE)
    return text


def _fix_dandas(text: str) -> str:
    text = _DANDA_LOOKALIKE.sub("\u0964", text)
    if "|" in text:
        text = _PIPE_DANDA.sub("\u0964", text)
    return _DOUBLE_DANDA.sub("\u0965", text)


def _tidy_whitespace(text: str) -> str:
    if "\n" not in text and "\r" not in text:  # one line: the same result, less work
        return _SPACES.sub(" ", text).strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


# --- turns ------------------------------------------------------------------------------------


def repair_turns(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """Keep an optional leading system turn and the longest user/assistant alternation that
    ends on an assistant turn. Returns the turns and what was cut ("" if nothing)."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    kept = messages[:start]
    expected = "user"
    for message in messages[start:]:
        if message["role"] != expected:
            break
        kept.append(message)
        expected = "assistant" if expected == "user" else "user"
    if kept and kept[-1]["role"] == "user":
        kept.pop()
    cut = len(messages) - len(kept)
    if not cut:
        return kept, ""
    return kept, f"cut {cut} of {len(messages)} turns after the first break in user/assistant order"


# --- deduplication --------------------------------------------------------------------------------


def dedup_key(text: str) -> str:
    """Text compared for duplicates: case-folded, punctuation and spacing ignored."""
    return _KEY_STRIP.sub(" ", text.casefold()).strip()


def _digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def _shingles(key: str, size: int = 3) -> list[bytes]:
    words = key.split()
    if len(words) < size:
        return [key.encode("utf-8")]
    return [" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)]


class NearDuplicateIndex:
    """MinHash LSH over word 3-grams, with candidates checked against their stored signatures so
    a reported near-duplicate really is above the threshold. Memory: 4 bytes x num_perm a kept
    row, plus the LSH tables."""

    def __init__(self, threshold: float, num_perm: int = 64, seed: int = 1) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self._template = MinHash(num_perm=num_perm, seed=seed)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures = np.zeros((1024, num_perm), dtype=self._template.hashvalues.dtype)
        self._sources: list[str] = []

    def signature(self, key: str) -> MinHash:
        minhash = MinHash(
            num_perm=self.num_perm,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
            hashfunc=zlib.crc32,
        )
        minhash.update_batch(_shingles(key))
        return minhash

    def find_or_add(self, key: str, source: str) -> tuple[str, float] | None:
        """Return (source, similarity) of an earlier near-duplicate, or add this row."""
        minhash = self.signature(key)
        best: tuple[str, float] | None = None
        for candidate in self._lsh.query(minhash):
            similarity = float(np.mean(self._signatures[candidate] == minhash.hashvalues))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (self._sources[candidate], similarity)
        if best is not None:
            return best
        index = len(self._sources)
        if index == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.zeros_like(self._signatures)])
        self._signatures[index] = minhash.hashvalues
        self._sources.append(source)
        self._lsh.insert(index, minhash, check_duplication=False)
        return None


# --- the cleaner ------------------------------------------------------------------------------


class Cleaner:
    """Applies the config's rules to a stream of rows; rejected rows go to `rejects`."""

    def __init__(self, config: RunConfig, rejects: IO[str] | None = None) -> None:
        self.config = config
        self.script = script_for_language(config.language)
        self.stats = CleanStats()
        self._rejects = rejects
        patterns = list(SENSITIVE_PATTERNS) if config.unsafe_preset == "sensitive" else []
        patterns += config.unsafe_patterns
        try:
            self._unsafe = [(p, regex.compile(p)) for p in patterns]
        except regex.error as error:
            raise ConfigError(
                f"unsafe_patterns: {error.pattern!r} is not a valid regex: {error}"
            ) from None
        self._seen: dict[int, str] = {}
        self._near = (
            NearDuplicateIndex(config.near_dup_threshold) if config.dedup == "near" else None
        )

    def clean(self, rows: Iterable[Row]) -> Iterator[Record]:
        for row in rows:
            self.stats.read += 1
            if isinstance(row, Rejected):
                self._reject(row)
                continue
            result = self.clean_one(row)
            if isinstance(result, Rejected):
                self._reject(result)
            else:
                self.stats.kept += 1
                yield result

    def clean_one(self, record: Record) -> Record | Rejected:
        config = self.config
        if record.is_chat:
            messages, cut = repair_turns(record.messages)
            if not any(m["role"] == "assistant" for m in messages):
                return self._rejected(record, "turns", "no user turn followed by an assistant turn")
            if cut:
                self.stats.changed["turns_cut"] += 1
            record = Record(record.source, messages)
        if config.normalize:
            record = self._normalized(record)
        contents = record.contents()
        shortest = min(len(c) for c in contents)
        if shortest < config.min_chars:
            return self._rejected(
                record, "length", f"a turn has {shortest} characters (min_chars={config.min_chars})"
            )
        total = sum(len(c) for c in contents)
        if total > config.max_chars:
            return self._rejected(
                record, "length", f"{total} characters in all (max_chars={config.max_chars})"
            )
        joined = record.joined()
        for pattern, compiled in self._unsafe:
            if compiled.search(joined):
                return self._rejected(record, "unsafe", f"matches unsafe pattern {pattern!r}")
        ratio = script_ratio(joined, self.script)
        if ratio < config.min_script_ratio:
            return self._rejected(
                record,
                "script",
                f"{ratio:.0%} of letters in {self.script} script "
                f"(min_script_ratio={config.min_script_ratio})",
            )
        if config.check_language and config.language in ("as", "bn"):
            guess = assamese_or_bengali(joined)
            if guess.language and guess.language != config.language:
                return self._rejected(
                    record,
                    "language",
                    f"looks {LANGUAGE_NAMES[guess.language]}, not "
                    f"{LANGUAGE_NAMES[config.language]} ({guess.evidence})",
                )
        if config.dedup != "none":
            key = dedup_key(joined)
            digest = _digest(key)
            if digest in self._seen:
                return self._rejected(record, "exact_dup", f"duplicate of {self._seen[digest]}")
            self._seen[digest] = record.source
            if self._near is not None:
                match = self._near.find_or_add(key, record.source)
                if match is not None:
                    return self._rejected(
                        record,
                        "near_dup",
                        f"near-duplicate of {match[0]} (~{match[1]:.2f} Jaccard)",
                    )
        return record

    def _normalized(self, record: Record) -> Record:
        changes: Counter[str] = Counter()
        language = self.config.language
        if record.text is not None:
            new = Record(record.source, text=normalize_text(record.text, language, changes))
        else:
            # The ৰ/র fix judges the conversation, not each turn: one Assamese chat, one spelling.
            verdict = (
                assamese_or_bengali(record.joined()).language if language in ("as", "bn") else None
            )
            new = Record(
                record.source,
                [
                    {
                        "role": m["role"],
                        "content": normalize_text(m["content"], language, changes, verdict),
                    }
                    for m in record.messages
                ],
            )
        for rule in changes:  # rows touched per rule, not characters
            self.stats.changed[rule] += 1
        return new

    def _rejected(self, record: Record, step: str, reason: str) -> Rejected:
        return Rejected(record.source, reason, step, record.to_json())

    def _reject(self, rejected: Rejected) -> None:
        self.stats.rejected[rejected.step] += 1
        self.stats.reasons[_short_reason(rejected.reason)] += 1
        if self._rejects is not None:
            self._rejects.write(json.dumps(rejected.to_json(), ensure_ascii=False) + "\n")


def _short_reason(reason: str) -> str:
    """Reason with numbers and sources blanked, so counts group alike reasons."""
    reason = reason.split(" (")[0]
    return re.sub(r"\d+", "N", re.sub(r"of \S+:\S+", "of another row", reason))
