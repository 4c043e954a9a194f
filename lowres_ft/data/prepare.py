"""The data stage as one call: load -> clean -> split -> format -> files in the run folder.

Streaming end to end: kept rows go to a file as they come, the split holds one integer key a
row, and train/validation are written in a second pass, so a 1M-line corpus needs no more
memory than the deduplication index.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lowres_ft.config import RunConfig, find_path
from lowres_ft.data.clean import Cleaner, CleanStats, dedup_key
from lowres_ft.data.format import with_reflective_prefix, with_system_prompt
from lowres_ft.data.load import Record, load_rows

DATA_DIR = "data"
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
REJECTS_FILE = "rejects.jsonl"
STATS_FILE = "clean_stats.json"
_KEPT_FILE = "kept.partial.jsonl"


@dataclass
class PreparedData:
    """Where the stage wrote its files, and its counts."""

    folder: Path
    stats: CleanStats
    train_rows: int
    validation_rows: int

    @property
    def train_path(self) -> Path:
        return self.folder / TRAIN_FILE

    @property
    def validation_path(self) -> Path:
        return self.folder / VALIDATION_FILE

    @property
    def rejects_path(self) -> Path:
        return self.folder / REJECTS_FILE


def prepare_data(config: RunConfig, progress: bool = True) -> PreparedData:
    folder = Path(config.run_dir) / DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    kept_path = folder / _KEPT_FILE
    rows = load_rows(
        find_path(config.data_path),
        config.data_format,
        config.encoding,
        config.question_column,
        config.answer_column,
        config.max_rows,
    )
    with (folder / REJECTS_FILE).open("w", encoding="utf-8") as rejects:
        cleaner = Cleaner(config, rejects)
        keys: list[int] = []
        with kept_path.open("w", encoding="utf-8") as kept:
            for record in tqdm(
                cleaner.clean(rows), desc="cleaning", unit=" rows", disable=not progress
            ):
                keys.append(split_key(record))
                kept.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    cleaner.stats.check()
    in_validation = assign_validation(keys, config.val_fraction, config.seed)
    rng = random.Random(config.seed)
    counts = [0, 0]
    with (
        (folder / TRAIN_FILE).open("w", encoding="utf-8") as train,
        (folder / VALIDATION_FILE).open("w", encoding="utf-8") as validation,
    ):
        for index, record in enumerate(read_records(kept_path)):
            record = with_system_prompt(record, config.system_prompt)
            if config.reflective_prefixes:
                record = with_reflective_prefix(record, config.language, rng)
            target = validation if in_validation[index] else train
            counts[in_validation[index]] += 1
            target.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    kept_path.unlink()
    stats = cleaner.stats
    (folder / STATS_FILE).write_text(json.dumps(stats.to_json(), indent=2, ensure_ascii=False))
    return PreparedData(folder, stats, counts[0], counts[1])


def split_key(record: Record) -> int:
    """Group key for the split: rows with the same prompt (first user turn, or the text) land on
    the same side, so no duplicate or paraphrased answer to one question leaks across."""
    if record.text is not None:
        anchor = record.text
    else:
        anchor = next((m["content"] for m in record.messages if m["role"] == "user"), "")
    digest = hashlib.blake2b(dedup_key(anchor).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def assign_validation(keys: list[int], val_fraction: float, seed: int) -> list[bool]:
    """Seeded group split: shuffle the distinct keys, take groups until val_fraction is met."""
    if not keys or val_fraction <= 0:
        return [False] * len(keys)
    sizes: dict[int, int] = {}
    for key in keys:
        sizes[key] = sizes.get(key, 0) + 1
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    wanted = round(len(keys) * val_fraction)
    chosen: set[int] = set()
    taken = 0
    for key in groups:
        if taken >= wanted:
            break
        chosen.add(key)
        taken += sizes[key]
    if len(chosen) == len(groups):  # keep at least one group for training
        chosen.discard(groups[-1])
    return [key in chosen for key in keys]


def read_records(path: str | Path) -> Iterator[Record]:
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            yield Record.from_json(json.loads(line))
