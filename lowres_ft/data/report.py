"""The data report: counts per cleaning step, lengths in characters and tokens, script mix,
tokenizer fertility against English, and a verdict on whether the data is ready to train on.

Saved as `data/report.json` plus PNGs; the notebook shows them. Plots use matplotlib's Figure
directly (no pyplot state), so the library works the same headless and in a notebook.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from itertools import islice
from typing import Any

import regex
from matplotlib.figure import Figure

from lowres_ft.config import RunConfig
from lowres_ft.data.format import format_record
from lowres_ft.data.prepare import PreparedData, read_records
from lowres_ft.data.scripts import script_mix

REPORT_FILE = "report.json"
LENGTHS_PNG = "lengths.png"
STEPS_PNG = "cleaning_steps.png"

# Articles 1-7 of the Universal Declaration of Human Rights: a fixed English reference for
# tokenizer fertility when the data has no English side of its own.
ENGLISH_REFERENCE = (
    "All human beings are born free and equal in dignity and rights. They are endowed with "
    "reason and conscience and should act towards one another in a spirit of brotherhood.",
    "Everyone is entitled to all the rights and freedoms set forth in this Declaration, without "
    "distinction of any kind, such as race, colour, sex, language, religion, political or other "
    "opinion, national or social origin, property, birth or other status.",
    "Everyone has the right to life, liberty and security of person.",
    "No one shall be held in slavery or servitude; slavery and the slave trade shall be "
    "prohibited in all their forms.",
    "No one shall be subjected to torture or to cruel, inhuman or degrading treatment or "
    "punishment.",
    "Everyone has the right to recognition everywhere as a person before the law.",
    "All are equal before the law and are entitled without any discrimination to equal "
    "protection of the law.",
)

_WORD = regex.compile(r"\S*\p{L}\S*")


def fertility(texts: list[str], tokenizer: Any) -> float:
    """Tokens per word (words: whitespace-separated pieces with a letter). English is ~1.3 for a
    good tokenizer; a low-resource language often costs 5-10, which shortens its context."""
    words = tokens = 0
    for text in texts:
        words += len(_WORD.findall(text))
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return tokens / words if words else 0.0


def build_report(
    prepared: PreparedData, config: RunConfig, tokenizer: Any, sample: int = 2000
) -> dict[str, Any]:
    """Compute, save and return the report; `sample` bounds the rows tokenised."""
    rows = list(islice(read_records(prepared.train_path), sample))
    rows += list(islice(read_records(prepared.validation_path), max(1, sample // 4)))
    cleaning = prepared.stats.to_json()
    chars = [len(r.joined()) for r in rows]
    tokens = [
        len(tokenizer(format_record(r, tokenizer), add_special_tokens=False)["input_ids"])
        for r in rows
    ]
    mix: Counter[str] = Counter()
    for r in rows:
        mix.update(script_mix(r.joined()))
    letters = sum(mix.values()) or 1
    contents = [c for r in rows[:500] for c in r.contents()]
    report: dict[str, Any] = {
        "language": config.language,
        "model_name": config.model_name,
        "data_path": config.data_path,
        "cleaning": cleaning,
        "split": {"train": prepared.train_rows, "validation": prepared.validation_rows},
        "kind": "chat" if rows and rows[0].is_chat else "text",
        "lengths": {
            "rows_measured": len(rows),
            "chars": _summary(chars),
            "tokens": _summary(tokens),
            "max_seq_length": config.max_seq_length,
            "share_over_max_seq_length": (
                sum(t > config.max_seq_length for t in tokens) / len(tokens) if tokens else 0.0
            ),
        },
        "script_mix": {name: round(n / letters, 4) for name, n in mix.most_common()},
        "fertility": {
            config.language: round(fertility(contents, tokenizer), 3),
            "en": round(fertility(list(ENGLISH_REFERENCE), tokenizer), 3),
        },
    }
    report["verdict"] = verdict(report)
    folder = prepared.folder
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    plot_lengths(chars, tokens, config.max_seq_length).savefig(folder / LENGTHS_PNG, dpi=100)
    plot_steps(cleaning).savefig(folder / STEPS_PNG, dpi=100)
    return report


def verdict(report: dict[str, Any]) -> list[dict[str, str]]:
    """Plain findings, each 'ok' or 'warn' with what to do about it."""
    findings = []

    def add(ok: bool, good: str, bad: str) -> None:
        findings.append({"level": "ok" if ok else "warn", "message": good if ok else bad})

    train = report["split"]["train"]
    add(
        train >= 200,
        f"{train} training rows",
        f"only {train} training rows: expect little "
        "change in the model; gather more data or lower val_fraction",
    )
    cleaning = report["cleaning"]
    share = cleaning["rejected_total"] / cleaning["read"] if cleaning["read"] else 0.0
    add(
        share < 0.5,
        f"{share:.0%} of rows rejected",
        f"{share:.0%} of rows rejected: read "
        "rejects.jsonl; a wrong language, format or column setting is the usual cause",
    )
    over = report["lengths"]["share_over_max_seq_length"]
    add(
        over < 0.1,
        f"{over:.0%} of rows longer than max_seq_length",
        f"{over:.0%} of rows are "
        "longer than max_seq_length and will be cut: raise max_seq_length or max_chars lower",
    )
    ratio = report["fertility"][report["language"]] / max(report["fertility"]["en"], 1e-9)
    add(
        ratio < 4,
        f"the tokenizer spends {ratio:.1f}x English's tokens a word",
        f"the tokenizer spends {ratio:.1f}x English's tokens a word: a model with a tokenizer "
        "trained on this language will fit far more text in the same context",
    )
    return findings


def plot_lengths(chars: list[int], tokens: list[int], max_seq_length: int) -> Figure:
    figure = Figure(figsize=(10, 3.5))
    left, right = figure.subplots(1, 2)
    left.hist(chars, bins=40, color="#4c72b0")
    left.set(title="Row length (characters)", xlabel="characters", ylabel="rows")
    right.hist(tokens, bins=40, color="#dd8452")
    right.axvline(max_seq_length, color="black", linestyle="--", label="max_seq_length")
    right.set(title="Row length (tokens, chat template applied)", xlabel="tokens")
    right.legend()
    figure.tight_layout()
    return figure


def plot_steps(cleaning: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(8, 3))
    axes = figure.subplots()
    steps = {step: n for step, n in cleaning["rejected"].items() if n}
    labels = ["kept", *steps]
    values = [cleaning["kept"], *steps.values()]
    axes.barh(labels[::-1], values[::-1], color=["#c44e52"] * len(steps) + ["#55a868"])
    axes.set(title=f"{cleaning['read']} rows read: kept and rejected per step", xlabel="rows")
    figure.tight_layout()
    return figure


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "p95": 0, "max": 0, "mean": 0}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 1),
    }


def steps_table(report: dict[str, Any]):
    """Rows read, changed and rejected per cleaning step, as a DataFrame for the notebook."""
    import pandas as pd

    cleaning = report["cleaning"]
    rows = [{"step": "read", "rows": cleaning["read"], "what": "rows in the input"}]
    rows += [
        {"step": f"changed: {rule}", "rows": n, "what": "rows modified, kept"}
        for rule, n in cleaning["changed"].items()
    ]
    rows += [
        {"step": f"rejected: {step}", "rows": n, "what": "rows written to rejects.jsonl"}
        for step, n in cleaning["rejected"].items()
    ]
    rows.append({"step": "kept", "rows": cleaning["kept"], "what": "rows split into train/val"})
    return pd.DataFrame(rows)
