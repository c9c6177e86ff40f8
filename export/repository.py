"""Writing version folders of ``model_repository/``, the only interface between training and serving."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from lstm_core.checksums import sha256_of
from lstm_core.model_card import ModelCard

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"


def next_version(repository: Path, model_name: str) -> str:
    """One above the highest numeric version folder of the model (``1`` for a new model)."""
    folder = repository / model_name
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return str(max(versions, default=0) + 1)


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def publish_version(staging: Path, card: ModelCard, repository: Path, overwrite: bool = False) -> Path:
    """Move a fully written staging folder into ``repository/<name>/<version>/``.

    The card's ``files`` are filled with the sha256 of each file, and the folder is moved in as a
    whole, so a server scanning the repository never sees a half-written version.
    """
    card.files = {name: sha256_of(staging / name) for name in sorted(card.files or _model_files(staging))}
    card.save(staging)
    target = repository / card.name / card.version
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass a new --version or --overwrite")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))
    return target


def _model_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_file() and p.name != "model.json"]
