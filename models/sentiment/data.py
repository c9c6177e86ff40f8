"""SST-2 (GLUE) from the repo's ``data/sst2/`` copy, checked by sha256 before a single line is read.

``train.tsv.gz`` (60,614) is what the model and tokenizer learn from; ``dev.tsv.gz`` (6,735) is the
held-out split for early stopping, model selection and the reported "validation accuracy". Both are
parts of GLUE's SST-2 *training* set (sentences and their sub-phrases), not GLUE's 872-sentence dev set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.datasets import CHECKSUMS, read_lines

DATASET_NAME = "SST-2"
DATASET_VERSION = "GLUE SST-2 train set, split into train (60,614) and dev (6,735)"
SPLIT_FILES = {"train": "sst2/train.tsv.gz", "dev": "sst2/dev.tsv.gz"}
HEADER = "sentence\tlabel"


@dataclass(frozen=True)
class Split:
    """Sentences and their labels (0 = negative, 1 = positive), in file order."""

    name: str
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all when ``n`` is None): the tiny runs tests and smoke checks use."""
        return self if n is None else Split(self.name, self.texts[:n], self.labels[:n])


def load_split(name: str, root: Path | None = None) -> Split:
    """One split, after the sha256 check; a malformed row is an error, never silently skipped."""
    relative = SPLIT_FILES[name]
    lines = read_lines(relative, root)
    header = next(lines, None)
    if header != HEADER:
        raise ValueError(f"{relative}: expected header {HEADER!r}, got {header!r}")
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(lines, start=2):
        text, sep, label = line.rpartition("\t")
        if not sep or label not in {"0", "1"}:
            raise ValueError(f"{relative}:{number}: expected 'sentence<TAB>0|1', got {line!r}")
        texts.append(text.strip())
        labels.append(int(label))
    return Split(name, texts, labels)


def dataset_info(splits: dict[str, int]) -> dict:
    """Name, version, split sizes and the sha256 of each file, as the model card records them."""
    return {
        "name": DATASET_NAME,
        "version": DATASET_VERSION,
        "splits": splits,
        "sha256": {relative: CHECKSUMS[relative] for relative in SPLIT_FILES.values()},
    }


def occurs_in(texts: list[str], corpus: list[str]) -> list[bool]:
    """Whether each text appears, as whole words, inside some corpus text.

    SST-2 is sentences *and their sub-phrases*, and GLUE's training set was split into train/dev by
    item, not by sentence: most dev phrases also sit inside a training sentence. Accuracy on the dev
    items that do not is the fairer estimate of how the model does on text it has never seen.
    """
    haystack = "\n".join(f" {t} " for t in corpus)
    return [f" {t} " in haystack for t in texts]
