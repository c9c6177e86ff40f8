"""The cell comparison script end to end on a tiny subset: every variant and cell trained, docs drawn."""

from __future__ import annotations

from pathlib import Path

from models.sentiment.compare import main

TINY = ["--limit-train", "200", "--limit-dev", "400", "--emb-dim", "8", "--hidden", "8", "--vocab-size", "800"]


def test_compare_writes_table_and_plot(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    assert main(["--out", str(tmp_path / "runs"), "--docs", str(docs), "--epochs", "1", "--seeds", "1,2", *TINY]) == 0
    text = (docs / "cells.md").read_text()
    for heading in ("## bidirectional", "## unidirectional"):
        assert heading in text
    rows = [line for line in text.splitlines() if line.startswith(("| lstm |", "| gru |", "| rnn |"))]
    assert len(rows) == 6
    assert all(" ± " in row for row in rows)  # mean ± std over the two seeds
    assert "lstm minus rnn" in text
    assert (docs / "cells.png").read_bytes().startswith(b"\x89PNG")
    for variant in ("bi", "uni"):
        for cell in ("lstm", "gru", "rnn"):
            for seed in ("s1", "s2"):
                assert (tmp_path / "runs" / variant / cell / seed / "report.json").is_file()
    # re-drawing from the runs gives the same document
    redraw = ["--out", str(tmp_path / "runs"), "--docs", str(docs), "--epochs", "1", "--seeds", "1,2", "--render-only"]
    assert main([*redraw, *TINY]) == 0
    assert (docs / "cells.md").read_text() == text
