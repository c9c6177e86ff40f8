"""Reading ``model_repository/<model>/<version>/``: which version of each model to serve, and whether to.

The highest numeric version is served unless a version is pinned. A folder is refused (the model is
not ready, and a log line says exactly why) when its ``model.json`` is missing or invalid, does not
name the folder it is in, or when any file it lists is missing or has another sha256: serving weights
that are not the ones the card's metrics describe would be worse than serving nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lstm_core.model_card import MODEL_CARD_FILENAME, ModelCard

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One version folder chosen for serving; ``problem`` is set (and ``card`` may be None) if refused."""

    name: str
    version: str
    folder: Path
    card: ModelCard | None
    problem: str | None = None


def _versions(model_dir: Path) -> list[str]:
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def check_version(name: str, version: str, folder: Path) -> ModelVersion:
    """Load and verify one version folder (card valid, names agree, every listed file matches its sha256)."""
    try:
        card = ModelCard.load(folder)
    except FileNotFoundError:
        return ModelVersion(name, version, folder, None, f"no {MODEL_CARD_FILENAME}")
    except (ValidationError, ValueError) as exc:
        return ModelVersion(name, version, folder, None, f"invalid {MODEL_CARD_FILENAME}: {exc}".splitlines()[0])
    if (card.name, card.version) != (name, version):
        problem = f"{MODEL_CARD_FILENAME} says {card.name}/{card.version} but the folder is {name}/{version}"
        return ModelVersion(name, version, folder, card, problem)
    if not card.files:
        return ModelVersion(name, version, folder, card, f"{MODEL_CARD_FILENAME} lists no files")
    bad = card.mismatched_files(folder)
    if bad:
        problem = f"files missing or not matching the sha256 in {MODEL_CARD_FILENAME}: {', '.join(bad)}"
        return ModelVersion(name, version, folder, card, problem)
    return ModelVersion(name, version, folder, card)


def scan(repository: Path, pins: Mapping[str, str] | None = None) -> list[ModelVersion]:
    """The version to serve of every model in the repository (refused ones included, with their problem)."""
    pins = pins or {}
    if not repository.is_dir():
        log.error("model repository %s does not exist", repository)
        return []
    chosen: list[ModelVersion] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = _versions(model_dir)
        name = model_dir.name
        if name in pins:
            version = pins[name]
            if version not in versions:
                problem = f"pinned version {version} not found (have: {', '.join(versions) or 'none'})"
                chosen.append(ModelVersion(name, version, model_dir / version, None, problem))
                continue
        elif versions:
            version = versions[-1]
        else:
            log.info("skipping %s: no numeric version folder", model_dir)
            continue
        chosen.append(check_version(name, version, model_dir / version))
    for mv in chosen:
        if mv.problem:
            log.error("refusing model %s version %s (%s): %s", mv.name, mv.version, mv.folder, mv.problem)
        else:
            log.info("found model %s version %s (task %s) in %s", mv.name, mv.version, mv.card.task, mv.folder)
    return chosen
