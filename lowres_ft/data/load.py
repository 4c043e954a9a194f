"""Loaders: plain text, CSV/TSV, JSONL/JSON (messages, ShareGPT, instruction/output pairs) and a
local `datasets` folder, all normalised to one record type.

Loaders never drop a row silently: a row they cannot turn into a record is yielded as a
`Rejected` with its reason, so the cleaning step can write it to the rejects file and the counts
add up. A file that cannot be read at all raises `DataError` with what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowres_ft.config import LowresError

ROLES = ("system", "user", "assistant")
# ShareGPT's `from` names (and a few common variants) mapped to chat roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
TOOL_ROLES = ("function_call", "observation", "tool", "function", "ipython")
# Column pairs tried, in order, when question_column/answer_column are not given.
QA_COLUMN_PAIRS = (
    ("question", "answer"),
    ("prompt", "response"),
    ("instruction", "output"),
    ("input", "output"),
    ("query", "response"),
    ("prompt", "completion"),
    ("user", "assistant"),
)
TEXT_COLUMNS = ("text", "content", "sentence", "paragraph")


class DataError(LowresError, ValueError):
    """The input cannot be read; the message names the file (and line) and the fix."""


@dataclass
class Record:
    """One training example: a chat (`messages`) or a raw text for continued pretraining."""

    source: str  # "file:line" so a reader can find the row in the input
    messages: list[dict[str, str]] = field(default_factory=list)
    text: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.text is None

    def contents(self) -> list[str]:
        return [self.text] if self.text is not None else [m["content"] for m in self.messages]

    def joined(self) -> str:
        return "\n".join(self.contents())

    def to_json(self) -> dict[str, Any]:
        if self.text is not None:
            return {"source": self.source, "text": self.text}
        return {"source": self.source, "messages": self.messages}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Record:
        """The inverse of `to_json`: a row of train.jsonl / validation.jsonl."""
        return cls(obj.get("source", ""), obj.get("messages", []), obj.get("text"))


@dataclass
class Rejected:
    """A row that was read but not kept, with the reason; written to rejects.jsonl."""

    source: str
    reason: str
    step: str
    content: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "step": self.step,
            "reason": self.reason,
            "row": _shortened(self.content),
        }


def _shortened(value: Any) -> Any:
    """Long strings cut to 2,000 characters, also inside the dicts and lists of a row."""
    if isinstance(value, str) and len(value) > 2000:
        return value[:2000] + f"... [{len(value)} characters]"
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    return value


Row = Record | Rejected


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "hf_dataset"
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    formats = {
        ".txt": "text",
        ".text": "text",
        ".csv": "csv",
        ".tsv": "tsv",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "json",
    }
    if suffix.lower() not in formats:
        raise DataError(
            f"{path}: cannot tell the format from the extension {suffix!r}; set data_format to "
            "one of text, csv, tsv, jsonl, json, hf_dataset."
        )
    return formats[suffix.lower()]


def load_rows(
    path: str | Path,
    data_format: str = "auto",
    encoding: str = "utf-8",
    question_column: str = "",
    answer_column: str = "",
    max_rows: int = 0,
) -> Iterator[Row]:
    """Stream records (and rejected rows) from a file or folder, one per input row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (working directory: {Path.cwd()}).")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; point data_path at a file with data.")
    fmt = detect_format(path) if data_format == "auto" else data_format
    if fmt == "text":
        rows = _load_text(path, encoding)
    elif fmt in ("csv", "tsv"):
        rows = _load_csv(
            path, encoding, "\t" if fmt == "tsv" else ",", question_column, answer_column
        )
    elif fmt == "jsonl":
        rows = _load_jsonl(path, encoding, question_column, answer_column)
    elif fmt == "json":
        rows = _load_json(path, encoding, question_column, answer_column)
    elif fmt == "hf_dataset":
        rows = _load_hf_dataset(path, question_column, answer_column)
    else:
        raise DataError(f"data_format={fmt!r} is not supported.")
    for count, row in enumerate(rows, start=1):
        yield row
        if max_rows and count >= max_rows:
            return


# --- reading lines with encoding errors that say where -------------------------------------------


def _decoded_lines(path: Path, encoding: str, keepends: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (line number, text), the newline stripped unless `keepends` (CSV needs it for
    quoted cells that span lines); bad bytes raise DataError with a place."""
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
            if head.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise DataError(
                    f"{path}:1: byte 1 of the line starts a UTF-16 byte-order mark "
                    f"({head[:2]!r}), so the file is not UTF-8; set encoding='utf-16'."
                )
            encoding = "utf-8"
        if encoding.lower().startswith("utf-16") or encoding.lower().startswith("utf-32"):
            # Multi-byte encodings cannot be split on b"\n"; decode the stream as a whole.
            text_handle = path.open(encoding=encoding, newline="")
            for number, line in enumerate(text_handle, start=1):
                yield number, line if keepends else line.rstrip("\r\n")
            return
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.start + 4]
                raise DataError(
                    f"{path}:{number}: byte {error.start + 1} of the line ({bad!r}) is not valid "
                    f"{encoding}. Re-save the file as UTF-8, or set encoding to the file's real "
                    "encoding (e.g. encoding='utf-16', 'cp1252' or 'iso-8859-1')."
                ) from None
            if "\x00" in line:
                # UTF-16 without a byte-order mark: ASCII in it is valid UTF-8, NULs between.
                raise DataError(
                    f"{path}:{number}: byte {raw.index(0) + 1} of the line is a NUL byte, so the "
                    f"file is not {encoding} text; if it is UTF-16, set encoding='utf-16-le' "
                    "(or 'utf-16-be')."
                )
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield number, line if keepends else line.rstrip("\r\n")


def _load_text(path: Path, encoding: str) -> Iterator[Row]:
    for number, line in _decoded_lines(path, encoding):
        source = f"{path.name}:{number}"
        if not line.strip():
            yield Rejected(source, "empty line", "load")
            continue
        yield Record(source, text=line)


def _load_csv(
    path: Path, encoding: str, delimiter: str, question_column: str, answer_column: str
) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)  # a 5 MB cell is a long row, not a parse error
    lines = (line for _, line in _decoded_lines(path, encoding, keepends=True))
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = reader.fieldnames or []
    if not columns:
        raise DataError(f"{path}: no header row; the first line must name the columns.")
    mapper = _column_mapper(path, columns, question_column, answer_column)
    for row in reader:
        source = f"{path.name}:{reader.line_num}"
        if None in row:
            yield Rejected(source, f"{len(row[None])} more fields than the header", "load", row)
            continue
        yield mapper(source, row)


def _load_jsonl(
    path: Path, encoding: str, question_column: str, answer_column: str
) -> Iterator[Row]:
    parsed = 0
    failures = 0
    for number, line in _decoded_lines(path, encoding):
        source = f"{path.name}:{number}"
        if not line.strip():
            yield Rejected(source, "empty line", "load")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            failures += 1
            yield Rejected(
                source,
                f"invalid JSON at column {error.colno}: {error.msg}",
                "load",
                line,
            )
            if failures >= 20 and parsed == 0:
                raise DataError(
                    f"{path}: the first {failures} lines are not JSON objects; is this JSON Lines? "
                    "For one JSON array use data_format='json'."
                ) from None
            continue
        parsed += 1
        yield _object_to_row(source, obj, question_column, answer_column)


def _load_json(
    path: Path, encoding: str, question_column: str, answer_column: str
) -> Iterator[Row]:
    text = "\n".join(line for _, line in _decoded_lines(path, encoding))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON ({error.msg}). "
            "If the file has one object per line, set data_format='jsonl'."
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        single = "messages" in data or "conversations" in data or not lists
        data = [data] if single else lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, found {type(data).__name__}.")
    for index, obj in enumerate(data):
        yield _object_to_row(f"{path.name}[{index}]", obj, question_column, answer_column)


def _load_hf_dataset(path: Path, question_column: str, answer_column: str) -> Iterator[Row]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DataError(
            f"{path}: not a folder written by datasets' save_to_disk ({error}). Point data_path "
            "at that folder, or at a .jsonl/.csv file."
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        dataset = dataset[split]
    for index, obj in enumerate(dataset):
        yield _object_to_row(f"{path.name}[{index}]", obj, question_column, answer_column)


# --- turning objects and rows into records -------------------------------------------------------


def _column_mapper(path: Path, columns: list[str], question_column: str, answer_column: str):
    """Pick the question/answer (or text) columns once per file, with an error that lists them."""
    lower = {c.lower().strip(): c for c in columns}
    if question_column or answer_column:
        missing = [c for c in (question_column, answer_column) if c and c not in columns]
        if missing or not (question_column and answer_column):
            raise DataError(
                f"{path}: column(s) {missing or [question_column or answer_column]} not found or "
                f"not both given; the file has columns {columns}. Set question_column and "
                "answer_column to two of them."
            )
        pair = (question_column, answer_column)
    else:
        pair = next(
            ((lower[q], lower[a]) for q, a in QA_COLUMN_PAIRS if q in lower and a in lower), None
        )
    if pair is None:
        text_column = next((lower[c] for c in TEXT_COLUMNS if c in lower), None)
        if text_column is None:
            raise DataError(
                f"{path}: no question/answer columns found among {columns}. Set question_column "
                "and answer_column (e.g. question_column='prompt', answer_column='response'), or "
                "name a column 'text' for raw text."
            )

        def to_text(source: str, row: dict[str, Any]) -> Row:
            return _text_row(source, row.get(text_column), row)

        return to_text
    question, answer = pair

    def to_chat(source: str, row: dict[str, Any]) -> Row:
        return _pair_row(source, row.get(question), row.get(answer), row)

    return to_chat


def _object_to_row(source: str, obj: Any, question_column: str, answer_column: str) -> Row:
    if not isinstance(obj, dict):
        return Rejected(source, f"expected a JSON object, found {type(obj).__name__}", "load", obj)
    if question_column and answer_column:
        return _pair_row(source, obj.get(question_column), obj.get(answer_column), obj)
    if "messages" in obj:
        return _messages_row(source, obj["messages"], "role", "content", obj)
    if "conversations" in obj:
        return _messages_row(source, obj["conversations"], "from", "value", obj)
    if "instruction" in obj and "output" in obj:
        # Alpaca: the optional input is context for the instruction.
        extra = obj.get("input") or ""
        prompt = obj["instruction"] if not extra else f"{obj['instruction']}\n\n{extra}"
        return _pair_row(source, prompt, obj["output"], obj)
    for q, a in QA_COLUMN_PAIRS:
        if q in obj and a in obj:
            return _pair_row(source, obj[q], obj[a], obj)
    for key in TEXT_COLUMNS:
        if key in obj:
            return _text_row(source, obj[key], obj)
    return Rejected(
        source,
        f"no known fields in {sorted(obj)[:8]}: expected messages, conversations, "
        "instruction/output, question/answer, prompt/response or text "
        "(or set question_column and answer_column)",
        "load",
        obj,
    )


def _text_row(source: str, text: Any, raw: Any) -> Row:
    if not isinstance(text, str) or not text.strip():
        return Rejected(source, "empty or missing text", "load", raw)
    return Record(source, text=text)


def _pair_row(source: str, question: Any, answer: Any, raw: Any) -> Row:
    if not isinstance(question, str) or not question.strip():
        return Rejected(source, "empty or missing question", "load", raw)
    if not isinstance(answer, str) or not answer.strip():
        return Rejected(source, "empty or missing answer", "load", raw)
    return Record(
        source, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    )


def _messages_row(source: str, turns: Any, role_key: str, content_key: str, raw: Any) -> Row:
    if not isinstance(turns, list) or not turns:
        return Rejected(source, f"'{role_key}' turns must be a non-empty list", "load", raw)
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            return Rejected(
                source, f"turn {index} lacks '{role_key}' or '{content_key}'", "load", raw
            )
        role = str(turn[role_key]).lower()
        if role in TOOL_ROLES:
            return Rejected(
                source,
                f"turn {index} is a tool turn ({role}); plain chat runs do not train tool calls",
                "load",
                raw,
            )
        role = SHAREGPT_ROLES.get(role, role) if role_key == "from" else role
        if role not in ROLES:
            return Rejected(
                source, f"turn {index} has unknown role {turn[role_key]!r}", "load", raw
            )
        content = turn[content_key]
        if not isinstance(content, str):
            return Rejected(source, f"turn {index} content is not text", "load", raw)
        messages.append({"role": role, "content": content})
    return Record(source, messages)
