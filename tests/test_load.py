"""Loaders on the real data sets and on broken files of each kind (written to tmp_path)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import datasets  # imported here so its ~1.5 s import is not charged to one test
import pytest

from lowres_ft.config import RunConfig
from lowres_ft.data.clean import Cleaner
from lowres_ft.data.load import DataError, Record, Rejected, load_rows

FIVE_MB = 5_000_000


def _split(rows: list) -> tuple[list[Record], list[Rejected]]:
    records = [r for r in rows if isinstance(r, Record)]
    rejected = [r for r in rows if isinstance(r, Rejected)]
    assert len(records) + len(rejected) == len(rows)
    return records, rejected


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _parallel_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "as_en_parallel" / "as_en_parallel.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _five_mb(pieces: list[str]) -> str:
    """Real text repeated into one line of at least 5 MB of UTF-8."""
    unit = " ".join(p.replace("\n", " ") for p in pieces) + " "
    return unit * (FIVE_MB // len(unit.encode("utf-8")) + 1)


# --- the real data sets, one loader each ----------------------------------------------------------


def test_text_loader_yields_one_text_record_per_as_news_line(shared_data):
    path = shared_data / "as_news" / "as_news.txt"
    lines = path.read_text("utf-8").splitlines()
    records, rejected = _split(list(load_rows(path)))
    assert not rejected
    assert len(records) == len(lines) == 2867
    assert all(not r.is_chat for r in records)
    assert [r.text for r in records] == lines
    assert records[0].source == "as_news.txt:1"
    assert records[-1].source == "as_news.txt:2867"


def test_csv_loader_maps_question_and_answer_columns_of_as_en_parallel(shared_data):
    path = shared_data / "as_en_parallel" / "as_en_parallel.csv"
    expected = _parallel_rows(shared_data)
    records, rejected = _split(list(load_rows(path, question_column="en", answer_column="as")))
    assert not rejected
    assert len(records) == len(expected) == 2000
    for record, row in zip(records, expected, strict=True):
        assert record.messages == [
            {"role": "user", "content": row["en"]},
            {"role": "assistant", "content": row["as"]},
        ]
    assert records[0].source == "as_en_parallel.csv:2"  # line 1 is the header


def test_csv_loader_without_known_columns_names_the_columns_it_found(shared_data):
    path = shared_data / "as_en_parallel" / "as_en_parallel.csv"
    with pytest.raises(DataError) as caught:
        list(load_rows(path))
    message = str(caught.value)
    assert "as_en_parallel.csv" in message
    assert "['as', 'en']" in message
    assert "question_column" in message and "answer_column" in message


def test_tsv_loader_reads_tab_separated_real_pairs(shared_data, tmp_path):
    rows = _parallel_rows(shared_data)[:5]
    path = tmp_path / "pairs.tsv"
    path.write_text(
        "question\tanswer\n" + "".join(f"{r['en']}\t{r['as']}\n" for r in rows), "utf-8"
    )
    records, rejected = _split(list(load_rows(path)))  # format from the extension
    assert not rejected
    assert [(r.messages[0]["content"], r.messages[1]["content"]) for r in records] == [
        (r["en"], r["as"]) for r in rows
    ]


def test_csv_loader_keeps_line_breaks_inside_a_quoted_cell(shared_data, tmp_path):
    # bn_instruct outputs are multi-line; a CSV export quotes them and keeps the newlines.
    objects = _jsonl(shared_data / "bn_instruct" / "bn_instruct.jsonl")[:4]
    assert "\n" in objects[0]["output"]
    path = tmp_path / "bn.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "output"])
        writer.writerows([o["instruction"], o["output"]] for o in objects)
    records, rejected = _split(list(load_rows(path)))
    assert not rejected
    assert [r.messages[1]["content"] for r in records] == [o["output"] for o in objects]
    assert [r.messages[0]["content"] for r in records] == [o["instruction"] for o in objects]


@pytest.mark.parametrize(
    ("folder", "count"), [("as_oasst", 102), ("hi_dailydialog", 1000)], ids=["as", "hi"]
)
def test_jsonl_messages_loader_keeps_roles_and_content_exactly(shared_data, folder, count):
    path = shared_data / folder / f"{folder}.jsonl"
    objects = _jsonl(path)
    records, rejected = _split(list(load_rows(path)))
    assert not rejected
    assert len(records) == len(objects) == count
    for number, (record, obj) in enumerate(zip(records, objects, strict=True), start=1):
        assert record.messages == obj["messages"]
        assert record.source == f"{folder}.jsonl:{number}"


def test_sharegpt_loader_maps_human_and_gpt_to_user_and_assistant(shared_data):
    path = shared_data / "sharegpt_fastchat" / "sharegpt_fastchat.jsonl"
    objects = _jsonl(path)
    records, rejected = _split(list(load_rows(path)))
    assert not rejected
    assert len(records) == 400
    roles = {"human": "user", "gpt": "assistant"}
    for record, obj in zip(records, objects, strict=True):
        assert record.messages == [
            {"role": roles[turn["from"]], "content": turn["value"]} for turn in obj["conversations"]
        ]
    assert records[0].messages[0] == {"role": "user", "content": "Who are you?"}


def test_sharegpt_loader_rejects_glaive_tool_turns_with_a_reason(shared_data):
    path = shared_data / "sharegpt_glaive" / "sharegpt_glaive.jsonl"
    objects = _jsonl(path)
    rows = list(load_rows(path))
    assert len(rows) == len(objects) == 240
    tool_roles = {"function_call", "observation"}
    for number, (row, obj) in enumerate(zip(rows, objects, strict=True), start=1):
        turns = [t["from"] for t in obj["conversations"]]
        first_tool = next((i for i, role in enumerate(turns) if role in tool_roles), None)
        if first_tool is None:
            assert isinstance(row, Record), row
            assert {m["role"] for m in row.messages} <= {"user", "assistant"}
        else:
            assert isinstance(row, Rejected), row
            assert row.step == "load"
            assert row.source == f"sharegpt_glaive.jsonl:{number}"
            assert row.reason.startswith(
                f"turn {first_tool} is a tool turn ({turns[first_tool]})"
            ), row.reason
            assert "tool calls" in row.reason
            assert row.content == obj  # the raw row goes to the rejects file
    records, rejected = _split(rows)
    assert (len(records), len(rejected)) == (114, 126)


def test_alpaca_loader_turns_instruction_and_output_into_a_chat(shared_data):
    path = shared_data / "bn_instruct" / "bn_instruct.jsonl"
    objects = _jsonl(path)
    records, rejected = _split(list(load_rows(path)))
    assert not rejected
    assert len(records) == len(objects) == 2373
    for record, obj in zip(records, objects, strict=True):
        assert record.messages == [
            {"role": "user", "content": obj["instruction"]},
            {"role": "assistant", "content": obj["output"]},
        ]


def test_alpaca_loader_appends_a_non_empty_input_to_the_instruction(shared_data, tmp_path):
    obj = _jsonl(shared_data / "bn_instruct" / "bn_instruct.jsonl")[0]
    obj["input"] = "১/৭ঃ ১/৭ঃ ১/১৪"
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", "utf-8")
    [record] = load_rows(path)
    assert record.messages[0]["content"] == obj["instruction"] + "\n\n" + obj["input"]


def test_json_array_loader_reads_the_same_chats_as_jsonl(shared_data, tmp_path):
    source = shared_data / "as_oasst" / "as_oasst.jsonl"
    objects = _jsonl(source)[:5]
    array = tmp_path / "oasst.json"
    array.write_text(json.dumps(objects, ensure_ascii=False, indent=1), "utf-8")
    wrapped = tmp_path / "wrapped.json"  # {"data": [...]}, as some exports write it
    wrapped.write_text(json.dumps({"version": 1, "data": objects}, ensure_ascii=False), "utf-8")
    for path in (array, wrapped):
        records, rejected = _split(list(load_rows(path)))
        assert not rejected
        assert [r.messages for r in records] == [o["messages"] for o in objects]
        assert records[2].source == f"{path.name}[2]"


def test_json_array_loader_reports_where_the_json_breaks(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"text": "অসম"},\n {"text": "অসম" "x"}\n]\n', "utf-8")
    with pytest.raises(DataError, match=r"broken\.json:3:\d+: invalid JSON .*data_format='jsonl'"):
        list(load_rows(path))


def test_hf_dataset_folder_loader_reads_a_save_to_disk_folder(shared_data, tmp_path):
    objects = _jsonl(shared_data / "bn_instruct" / "bn_instruct.jsonl")[:6]
    folder = tmp_path / "bn_ds"
    datasets.Dataset.from_list(objects).save_to_disk(str(folder))
    records, rejected = _split(list(load_rows(folder)))  # a folder means hf_dataset
    assert not rejected
    assert [r.messages for r in records] == [
        [
            {"role": "user", "content": o["instruction"]},
            {"role": "assistant", "content": o["output"]},
        ]
        for o in objects
    ]
    assert records[5].source == "bn_ds[5]"


def test_hf_dataset_loader_rejects_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset\n", "utf-8")
    with pytest.raises(DataError, match="save_to_disk"):
        list(load_rows(tmp_path, data_format="hf_dataset"))


def test_max_rows_stops_reading_early(shared_data):
    rows = list(load_rows(shared_data / "as_news" / "as_news.txt", max_rows=7))
    assert [r.source for r in rows] == [f"as_news.txt:{n}" for n in range(1, 8)]


def test_unknown_extension_and_missing_file_raise_data_error(tmp_path):
    odd = tmp_path / "rows.parquet"
    odd.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"rows\.parquet.*'\.parquet'.*data_format"):
        list(load_rows(odd))
    with pytest.raises(DataError, match="no such file"):
        list(load_rows(tmp_path / "absent.jsonl"))


# --- broken files ------------------------------------------------------------------------------


def _cp1252_files(shared_data: Path, tmp_path: Path) -> dict[str, tuple[Path, int, int, str]]:
    """The same real English line (with a ’) as text, CSV and JSONL, saved in cp1252.

    Returns format -> (path, line number, 1-based byte of the ’ in that line, the line's text).
    """
    english = [r["en"] for r in _parallel_rows(shared_data)]
    line = next(e for e in english if "Martha’s" in e)
    before = english[0]  # an ASCII line first, so the error is on line 2
    assert before.isascii()
    files = {}
    text = tmp_path / "cp.txt"
    text.write_bytes(f"{before}\n{line}\n".encode("cp1252"))
    files["text"] = (text, 2, line.index("’") + 1, line)
    table = tmp_path / "cp.csv"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["question", "answer"], ["q", before]])
    row = f'q,"{line}"'  # the line has commas, so the cell is quoted
    table.write_bytes((buffer.getvalue() + row + "\n").encode("cp1252"))
    files["csv"] = (table, 3, row.index("’") + 1, line)
    lines = tmp_path / "cp.jsonl"
    as_json = [json.dumps({"text": t}, ensure_ascii=False) for t in (before, line)]
    lines.write_bytes(("\n".join(as_json) + "\n").encode("cp1252"))
    files["jsonl"] = (lines, 2, as_json[1].index("’") + 1, line)
    return files


@pytest.mark.parametrize("fmt", ["text", "csv", "jsonl"])
def test_cp1252_bytes_raise_data_error_naming_file_line_byte_and_encoding(
    shared_data, tmp_path, fmt
):
    path, line, byte, _ = _cp1252_files(shared_data, tmp_path)[fmt]
    with pytest.raises(DataError) as caught:
        list(load_rows(path))
    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert f"byte {byte} of the line" in message
    assert "\\x92" in message  # the offending byte is shown
    assert "encoding=" in message and "'cp1252'" in message
    assert "not valid utf-8" in message


@pytest.mark.parametrize("fmt", ["text", "csv", "jsonl"])
def test_cp1252_file_reads_with_encoding_cp1252(shared_data, tmp_path, fmt):
    path, _, _, line = _cp1252_files(shared_data, tmp_path)[fmt]
    records, rejected = _split(list(load_rows(path, encoding="cp1252")))
    assert not rejected
    last = records[-1]
    assert (last.text if fmt != "csv" else last.messages[1]["content"]) == line


@pytest.mark.parametrize("fmt", ["text", "csv", "jsonl"])
def test_utf16_file_raises_data_error_and_reads_with_encoding_utf16(shared_data, tmp_path, fmt):
    rows = _parallel_rows(shared_data)[:3]
    if fmt == "text":
        content = "".join(r["as"] + "\n" for r in rows)
    elif fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(
            [["question", "answer"]] + [[r["en"], r["as"]] for r in rows]
        )
        content = buffer.getvalue()
    else:
        content = "".join(json.dumps({"text": r["as"]}, ensure_ascii=False) + "\n" for r in rows)
    path = tmp_path / f"u16.{'txt' if fmt == 'text' else fmt}"
    path.write_text(content, encoding="utf-16")  # with a byte-order mark, as Windows writes it
    with pytest.raises(DataError) as caught:
        list(load_rows(path))
    message = str(caught.value)
    assert f"{path}:1:" in message
    assert "byte 1" in message
    assert "encoding='utf-16'" in message
    records, rejected = _split(list(load_rows(path, encoding="utf-16")))
    assert not rejected
    assert len(records) == 3
    assert records[0].source.endswith(":1" if fmt != "csv" else ":2")


@pytest.mark.parametrize(
    "content",
    ["question,answer\nWho are you?,I am Vicuna.\n", '{"text": "Who are you?"}\n'],
    ids=["csv", "jsonl"],
)
def test_utf16_without_byte_order_mark_is_not_read_as_text_with_nul_bytes(tmp_path, content):
    # ASCII in UTF-16-LE is valid UTF-8 byte for byte, with a NUL after every character.
    path = tmp_path / ("nobom.csv" if content.startswith("question") else "nobom.jsonl")
    path.write_bytes(content.encode("utf-16-le"))
    with pytest.raises(DataError) as caught:
        list(load_rows(path))
    message = str(caught.value)
    assert f"{path}:1:" in message
    assert "byte 2 of the line" in message
    assert "encoding='utf-16" in message
    records, rejected = _split(list(load_rows(path, encoding="utf-16-le")))
    assert len(records) == 1 and not rejected


@pytest.mark.parametrize("name", ["empty.txt", "empty.csv", "empty.tsv", "empty.jsonl", "e.json"])
def test_empty_file_raises_data_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{re.escape(name)}: the file is empty"):
        list(load_rows(path))


def test_csv_with_a_missing_column_lists_the_columns_it_has(shared_data):
    path = shared_data / "as_en_parallel" / "as_en_parallel.csv"
    with pytest.raises(DataError) as caught:
        list(load_rows(path, question_column="en", answer_column="assamese"))
    message = str(caught.value)
    assert "as_en_parallel.csv" in message
    assert "['assamese'] not found" in message
    assert "the file has columns ['as', 'en']" in message


def test_csv_row_with_extra_fields_is_rejected_not_misread(shared_data, tmp_path):
    rows = _parallel_rows(shared_data)[:2]
    path = tmp_path / "extra.csv"
    path.write_text(
        f'as,en\n"{rows[0]["as"]}","{rows[0]["en"]}"\n"{rows[1]["as"]}","{rows[1]["en"]}",x,y\n',
        "utf-8",
    )
    records, rejected = _split(list(load_rows(path, question_column="en", answer_column="as")))
    assert len(records) == 1
    assert [(r.source, r.reason, r.step) for r in rejected] == [
        ("extra.csv:3", "2 more fields than the header", "load")
    ]


def test_invalid_json_line_among_valid_ones_is_rejected_with_line_and_column(shared_data, tmp_path):
    lines = (shared_data / "as_oasst" / "as_oasst.jsonl").read_text("utf-8").splitlines()[:3]
    broken = lines[1][:500]  # a real line cut off mid-string, as a truncated download leaves it
    path = tmp_path / "oasst.jsonl"
    path.write_text("\n".join([lines[0], broken, lines[2]]) + "\n", "utf-8")
    rows = list(load_rows(path))
    assert [type(r).__name__ for r in rows] == ["Record", "Rejected", "Record"]
    bad = rows[1]
    try:
        json.loads(broken)
    except json.JSONDecodeError as error:
        expected = f"invalid JSON at column {error.colno}: {error.msg}"
    assert (bad.source, bad.step, bad.reason) == ("oasst.jsonl:2", "load", expected)
    assert bad.content == broken
    assert rows[2].source == "oasst.jsonl:3"


def test_file_of_non_json_lines_raises_instead_of_rejecting_every_line(shared_data, tmp_path):
    path = tmp_path / "news.jsonl"  # plain text saved with the wrong extension
    lines = (shared_data / "as_news" / "as_news.txt").read_text("utf-8").splitlines()[:25]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DataError, match="is this JSON Lines"):
        list(load_rows(path))


def _clean_one_row(rows: list, language: str) -> tuple[Cleaner, list[dict]]:
    rejects = io.StringIO()
    cleaner = Cleaner(RunConfig(language=language), rejects=rejects)
    kept = list(cleaner.clean(rows))
    assert kept == []
    return cleaner, [json.loads(line) for line in rejects.getvalue().splitlines()]


def _assert_rejected_for_length(cleaner: Cleaner, rejects: list[dict], length: int) -> None:
    assert cleaner.stats.read == 1
    assert dict(cleaner.stats.rejected) == {"length": 1}
    [reject] = rejects
    assert reject["step"] == "length"
    match = re.fullmatch(r"(\d+) characters in all \(max_chars=8000\)", reject["reason"])
    assert match, reject["reason"]
    # counted after normalisation (NFC, trimmed ends), so close to the raw length, not equal
    assert abs(int(match.group(1)) - length) < length // 100
    # the rejects file holds a cut-down copy, not 5 MB per row
    assert len(json.dumps(reject, ensure_ascii=False)) < 20_000
    assert re.search(r"\.\.\. \[\d{7} characters\]", json.dumps(reject["row"], ensure_ascii=False))


def test_5mb_single_line_text_loads_and_is_rejected_for_length(shared_data, tmp_path):
    news = (shared_data / "as_news" / "as_news.txt").read_text("utf-8").splitlines()[:40]
    line = _five_mb(news)
    path = tmp_path / "big.txt"
    path.write_text(line + "\n", "utf-8")
    assert path.stat().st_size > FIVE_MB
    [record] = load_rows(path)
    assert record.text == line
    cleaner, rejects = _clean_one_row([record], "as")
    _assert_rejected_for_length(cleaner, rejects, len(line))


def test_5mb_single_line_jsonl_loads_and_is_rejected_for_length(shared_data, tmp_path):
    dialog = _jsonl(shared_data / "hi_dailydialog" / "hi_dailydialog.jsonl")[0]["messages"]
    answer = _five_mb([m["content"] for m in dialog])
    obj = {"messages": [dialog[0], {"role": "assistant", "content": answer}]}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", "utf-8")
    assert path.stat().st_size > FIVE_MB
    [record] = load_rows(path)
    assert record.messages == obj["messages"]
    cleaner, rejects = _clean_one_row([record], "hi")
    _assert_rejected_for_length(cleaner, rejects, len(dialog[0]["content"]) + len(answer))


def test_5mb_single_line_csv_loads_and_is_rejected_for_length(shared_data, tmp_path):
    rows = _parallel_rows(shared_data)[:40]
    answer = _five_mb([r["as"] for r in rows])
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["as", "en"], [answer, rows[0]["en"]]])
    assert path.stat().st_size > FIVE_MB
    [record] = load_rows(path, question_column="en", answer_column="as")
    assert record.messages[1]["content"] == answer
    cleaner, rejects = _clean_one_row([record], "as")
    _assert_rejected_for_length(cleaner, rejects, len(rows[0]["en"]) + len(answer))
