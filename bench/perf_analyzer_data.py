"""Write the ``--input-data`` JSON files perf_analyzer reads, from the repo's real data.

perf_analyzer's default input is random bytes; for text models that measures the tokenizer on noise
and, for translation, decodes to ``max_length`` every time. Real sentences give realistic lengths.
Format (perf_analyzer docs, "Real Input Data"): ``{"data": [{"text": ["<one sentence>"]}, ...]}`` —
one entry per batch-1 request, the input ``text`` of dims ``[1]`` (batch dimension excluded).

Run: ``python -m bench.perf_analyzer_data`` (rewrites ``bench/perf_analyzer/*.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from models.datasets import read_lines

OUT_DIR = Path(__file__).resolve().parent / "perf_analyzer"
SENTENCES = 200
MIN_WORDS = 6  # SST-2 dev also holds short phrases; keep whole sentences


def sentiment_texts() -> list[str]:
    rows = (line.split("\t")[0].strip() for line in read_lines("sst2/dev.tsv.gz"))
    next(rows)  # header
    return _first(text for text in rows if len(text.split()) >= MIN_WORDS)


def translation_texts() -> list[str]:
    return _first(line.strip() for line in read_lines("multi30k/test_2016_flickr.en.gz") if line.strip())


def _first(texts: Iterable[str]) -> list[str]:
    chosen: list[str] = []
    for text in texts:
        chosen.append(text)
        if len(chosen) == SENTENCES:
            break
    return chosen


def write(name: str, texts: list[str]) -> Path:
    path = OUT_DIR / f"{name}.json"
    entries = ",\n".join(json.dumps({"text": [text]}, ensure_ascii=False) for text in texts)
    path.write_text(f'{{"data": [\n{entries}\n]}}\n')  # one request a line: reviewable diffs
    return path


def main(argv: list[str] | None = None) -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name, texts in (("sentiment", sentiment_texts()), ("translation", translation_texts())):
        print(f"{write(name, texts)}: {len(texts)} requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
