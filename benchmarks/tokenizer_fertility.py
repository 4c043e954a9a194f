"""Tokenizer fertility (tokens per word) of a model's tokenizer on real Bengali, Assamese, Hindi
and English text from ../shared/data; prints a table and writes benchmarks/results/.

    python benchmarks/tokenizer_fertility.py [--model embedded] [--rows 500]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lowres_ft.data.report import fertility
from lowres_ft.models import load_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def samples(rows: int) -> dict[str, list[str]]:
    def jsonl(path: str) -> list[dict]:
        with (DATA / path).open(encoding="utf-8") as handle:
            return [json.loads(line) for _, line in zip(range(rows), handle, strict=False)]

    with (DATA / "as_en_parallel/as_en_parallel.csv").open(encoding="utf-8") as handle:
        pairs = list(csv.DictReader(handle))[:rows]
    with (DATA / "as_news/as_news.txt").open(encoding="utf-8") as handle:
        news = [line.strip() for _, line in zip(range(rows), handle, strict=False)]
    return {
        "bn": [r["output"] for r in jsonl("bn_instruct/bn_instruct.jsonl")],
        "as": news + [p["as"] for p in pairs],
        "hi": [
            m["content"]
            for r in jsonl("hi_dailydialog/hi_dailydialog.jsonl")
            for m in r["messages"]
        ],
        "en": [p["en"] for p in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    results = {
        lang: round(fertility(texts, tokenizer), 3) for lang, texts in samples(args.rows).items()
    }
    print(f"{'language':<10}{'tokens/word':>12}{'x English':>11}")
    for lang, value in results.items():
        print(f"{lang:<10}{value:>12.2f}{value / results['en']:>11.1f}")
    out = Path(__file__).parent / "results" / "tokenizer_fertility.json"
    out.write_text(
        json.dumps({"model": args.model, "rows": args.rows, "fertility": results}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
