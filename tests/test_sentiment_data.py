"""SST-2 loader: the repo's real data files, their counts and labels, and a loud checksum failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.datasets import CHECKSUMS, DataChecksumError, data_dir
from models.sentiment.data import (
    SPLIT_FILES,
    build_sentence_split,
    dataset_info,
    load_split,
    occurs_in,
    root_items,
    sentence_split,
    spans,
)


@pytest.mark.parametrize(("name", "count"), [("train", 60_614), ("dev", 6_735)])
def test_split_counts_and_labels(name: str, count: int) -> None:
    split = load_split(name)
    assert len(split) == count == len(split.labels)
    assert set(split.labels) == {0, 1}
    # SST-2 is roughly balanced (55% positive); a label parsing bug would skew this badly
    assert 0.5 < sum(split.labels) / count < 0.6
    assert all(text and "\t" not in text for text in split.texts)


def test_first_training_rows_are_the_published_ones() -> None:
    split = load_split("train").head(2)
    assert split.texts == ["when are bears bears and", "kids , spirit"]
    assert split.labels == [1, 1]


def test_changed_file_fails_with_a_clear_error(tmp_path: Path) -> None:
    relative = SPLIT_FILES["dev"]
    copy = tmp_path / relative
    copy.parent.mkdir(parents=True)
    shutil.copyfile(data_dir() / relative, copy)
    with copy.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataChecksumError, match=r"sha256 .* expected .*not the published file"):
        load_split("dev", root=tmp_path)


def test_missing_file_fails_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataChecksumError, match="missing"):
        load_split("train", root=tmp_path)


def test_dataset_info_records_the_checksums() -> None:
    info = dataset_info({"train": 1, "dev": 2})
    assert info["sha256"] == {path: CHECKSUMS[path] for path in ("sst2/train.tsv.gz", "sst2/dev.tsv.gz")}


def test_occurs_in_matches_whole_words_only() -> None:
    corpus = ["it 's a charming and often affecting journey .", "kids , spirit"]
    texts = ["charming and often", "charm", "kids , spirit", "spirit kids", "journey ."]
    assert occurs_in(texts, corpus) == [True, False, True, False, True]


def test_sentence_split_has_no_leakage() -> None:
    """No training item is a piece (whole words) of a validation sentence, nor the sentence itself."""
    train, val = sentence_split()
    assert len(val) == 1_000 and len(set(val.texts)) == 1_000
    assert not any(occurs_in(train.texts, val.texts))
    # whole sentences: no validation sentence sits inside another item of the data
    everything = load_split("train").texts + load_split("dev").texts
    inside_other = occurs_in(val.texts, [t for t in everything if t not in set(val.texts)])
    assert not any(inside_other)
    # training keeps everything else, phrases included
    assert 50_000 < len(train) < 67_349 - 1_000
    assert min(len(t.split()) for t in train.texts) == 1
    assert 0.4 < sum(val.labels) / len(val) < 0.65


def test_sentence_split_is_deterministic() -> None:
    """Built twice from the files (not the process's cached copy), the split is the same."""
    first_train, first_val = build_sentence_split()
    again_train, again_val = build_sentence_split()
    assert first_val == again_val and first_train == again_train
    assert build_sentence_split(seed=7)[1].texts != first_val.texts
    assert sentence_split() == (first_train, first_val)  # the cached split is that split


def test_cached_split_hands_each_caller_its_own_lists() -> None:
    train, val = sentence_split()
    val.texts.clear()
    train.labels.append(9)
    again_train, again_val = sentence_split()
    assert len(again_val) == 1_000 and again_train.labels[-1] != 9


def test_roots_are_items_inside_no_other_item() -> None:
    items = ["a b c d", "b c", "c", "x y", "b c d", "z"]
    assert root_items(items) == ["a b c d", "x y", "z"]
    assert spans("a b c") == ["a", "a b", "a b c", "b", "b c", "c"]
