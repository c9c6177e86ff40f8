"""SST-2 (GLUE) from the repo's ``data/sst2/`` copy, checked by sha256 before a single line is read.

The two files, ``train.tsv.gz`` (60,614) and ``dev.tsv.gz`` (6,735), are together GLUE's SST-2
*training* set: about 6,900 sentences *and every sub-phrase of them*, split item by item. That file
split leaks (most ``dev`` items sit inside ``train`` sentences), so training does not use it.
``sentence_split`` pools both files and holds out whole sentences instead:

- a *root* is an item that occurs (as whole words) inside no other item: a full sentence;
- ``heldout`` (default 1,000) roots are drawn with a fixed seed: the validation split;
- every item that occurs inside a held-out sentence (its phrases, its words, the sentence itself) is
  removed from training; everything else, phrases included, is the training split.

So no training item is a piece of a validation sentence, and validation measures what users send:
whole sentences the model has never seen in any form.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import CHECKSUMS, read_lines

DATASET_NAME = "SST-2"
DATASET_VERSION = "GLUE SST-2 train set, split into train (60,614) and dev (6,735)"
SPLIT_FILES = {"train": "sst2/train.tsv.gz", "dev": "sst2/dev.tsv.gz"}
HEADER = "sentence\tlabel"
HELDOUT_SENTENCES = 1_000
SPLIT_SEED = 2024
SENTENCE_SPLIT_VERSION = (
    "GLUE SST-2 train set (sst2/train.tsv.gz + sst2/dev.tsv.gz, 67,349 sentences and phrases); validation: "
    "{heldout} whole sentences (items inside no other item) drawn with seed {seed}; training: every item "
    "that is not inside a validation sentence"
)


@dataclass(frozen=True)
class Split:
    """Sentences and their labels (0 = negative, 1 = positive), in file order."""

    name: str
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def copy(self) -> Split:
        """The same examples in new lists (a cached split hands these out, so no caller changes another's)."""
        return Split(self.name, list(self.texts), list(self.labels))

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


def spans(text: str) -> list[str]:
    """Every contiguous run of whole words of ``text`` (the text itself included)."""
    words = text.split(" ")
    starts, ends, position = [], [], 0
    for word in words:
        starts.append(position)
        position += len(word)
        ends.append(position)
        position += 1
    return [text[starts[i] : ends[j]] for i in range(len(words)) for j in range(i, len(words))]


def root_items(texts: list[str]) -> list[str]:
    """The distinct items that occur (as whole words) inside no other item, sorted: SST-2's sentences.

    Every proper sub-span of every item is looked up among the items (5.4 M look-ups, about 2 s).
    """
    items = set(texts)
    contained: set[str] = set()
    for text in items:
        contained.update(span for span in spans(text) if span != text and span in items)
    return sorted(items - contained)


def sentence_split(
    heldout: int = HELDOUT_SENTENCES, seed: int = SPLIT_SEED, root: Path | None = None
) -> tuple[Split, Split]:
    """``build_sentence_split``'s answer, built once per process and arguments; each caller gets copies.

    Building it looks up 5.4 M spans (about 5 s on a slow core), and one export asked for it twice: it
    was 95% of a tiny run's export, and the test suite built it dozens of times.
    """
    train, val = _cached_split(heldout, seed, root)
    return train.copy(), val.copy()


@functools.lru_cache(maxsize=4)
def _cached_split(heldout: int, seed: int, root: Path | None) -> tuple[Split, Split]:
    return build_sentence_split(heldout, seed, root)


def build_sentence_split(
    heldout: int = HELDOUT_SENTENCES, seed: int = SPLIT_SEED, root: Path | None = None
) -> tuple[Split, Split]:
    """(train, val): ``heldout`` whole sentences for validation, and every item not inside one of them.

    Deterministic: the pool is both files in file order, the candidates are the sorted roots, and the
    draw uses ``numpy.random.default_rng(seed)``. Validation is in the draw's order; training keeps file
    order. A sentence listed twice keeps its first label.
    """
    files = [load_split(name, root) for name in ("train", "dev")]
    texts = [t for split in files for t in split.texts]
    labels = [y for split in files for y in split.labels]
    first_label: dict[str, int] = {}
    for text, label in zip(texts, labels, strict=True):
        first_label.setdefault(text, label)
    roots = root_items(texts)
    if not 0 < heldout < len(roots):
        raise ValueError(f"heldout must be between 1 and {len(roots) - 1} (there are {len(roots)} sentences)")
    picked = [roots[i] for i in np.random.default_rng(seed).choice(len(roots), size=heldout, replace=False)]
    inside_heldout = {span for sentence in picked for span in spans(sentence)}
    kept = [i for i, text in enumerate(texts) if text not in inside_heldout]
    train = Split("train", [texts[i] for i in kept], [labels[i] for i in kept])
    val = Split("val", picked, [first_label[text] for text in picked])
    return train, val


def dataset_info(splits: dict[str, int], version: str = DATASET_VERSION) -> dict:
    """Name, version, split sizes and the sha256 of each file, as the model card records them."""
    return {
        "name": DATASET_NAME,
        "version": version,
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
