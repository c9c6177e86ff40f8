"""The repo's own copies of the training data, checked by sha256 before use.

The files under ``data/`` are byte-identical to their published form (see ``data/README.md``); a
changed or truncated file would silently change every number we report, so loaders refuse it.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

from lstm_core.checksums import sha256_of

REPO_ROOT = Path(__file__).resolve().parents[1]

# data file (relative to the data folder) -> sha256 of the gzip file as published
CHECKSUMS: dict[str, str] = {
    "sst2/train.tsv.gz": "6ca4e5263d501878f4d62f077157b7bb7d9963542c55bc6800442efc42ffa92e",
    "sst2/dev.tsv.gz": "154c711e8e71f1bb16d35f7cf2d0fe802da59a499d45cb421626abbc621e394c",
    "multi30k/train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "multi30k/train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "multi30k/val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "multi30k/val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "multi30k/test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "multi30k/test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
}


class DataChecksumError(RuntimeError):
    """A data file is missing or is not the published file we trained on."""


def data_dir() -> Path:
    """``$LSTM_SERVE_DATA_DIR`` if set, else the repo's ``data/``."""
    return Path(os.environ.get("LSTM_SERVE_DATA_DIR", REPO_ROOT / "data"))


def verified_path(relative: str, root: Path | None = None) -> Path:
    """The path of a known data file after checking it exists and matches its published sha256."""
    if relative not in CHECKSUMS:
        raise KeyError(f"unknown data file {relative!r}; known: {sorted(CHECKSUMS)}")
    path = (root or data_dir()) / relative
    if not path.is_file():
        raise DataChecksumError(f"data file {path} is missing; see data/README.md for where it comes from")
    actual = sha256_of(path)
    if actual != CHECKSUMS[relative]:
        raise DataChecksumError(
            f"data file {path} has sha256 {actual}, expected {CHECKSUMS[relative]}: "
            "it is not the published file this project trains on (corrupt or replaced)"
        )
    return path


def read_lines(relative: str, root: Path | None = None) -> Iterator[str]:
    """Lines of a verified gzip text file, without their line endings."""
    with gzip.open(verified_path(relative, root), "rt", encoding="utf-8") as handle:
        for line in handle:
            yield line.rstrip("\n")
