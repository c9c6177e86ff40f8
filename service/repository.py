"""Reading ``model_repository/<model>/<version>/``: which version of each model to serve, and whether to.

The policy (docs/security.md, "Model repository"; Triton's strict readiness as the reference for what
"ready" means):

- A version folder is named by a number. Every other (non-hidden) folder beside them is reported as
  ignored. A model folder with no version folder but a ``model.json`` in it or in a misnamed folder
  (``v1/``) is refused (not silently skipped), so the server is not ready: a misnamed upload cannot go
  unnoticed. A folder with nothing of a model in it (``lost+found`` on a volume) is ignored (a WARNING line).
- A version is refused when its ``model.json`` is missing or invalid, does not name the folder it is
  in, or any file it lists is missing or has another sha256: serving weights that are not the ones the
  card's metrics describe would be worse than serving nothing.
- Unpinned, the highest version that verifies is served; each higher version that does not is
  reported as refused (log ERROR, ``/readyz`` and ``/v1/models`` ``problems``) but does not take the
  working version down: an incomplete upload of version 2 must not stop version 1. The model is ready.
- Pinned (``model_versions``), exactly that version is served or the model is refused: no fallback.
- A model with no version that verifies is refused, and the server is not ready (strict readiness).

Reasons shown to clients name folders relative to the repository, never absolute paths.
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
    """One version folder chosen for serving; ``problem`` is set (and ``card`` may be None) if refused.

    ``notes`` are problems beside the chosen version, keyed ``<model>/<folder>``: higher versions that
    were refused, folders that are not versions.
    """

    name: str
    version: str
    folder: Path
    card: ModelCard | None
    problem: str | None = None
    notes: tuple[tuple[str, str], ...] = ()


def _subfolders(model_dir: Path) -> tuple[list[str], list[str]]:
    """(numeric version folders ascending, other non-hidden folders)."""
    names = [p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    versions = sorted((n for n in names if n.isdigit()), key=int)
    return versions, sorted(n for n in names if not n.isdigit())


def _card_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"invalid {MODEL_CARD_FILENAME}: " + (f"{where}: {first['msg']}" if where else first["msg"])


def check_version(name: str, version: str, folder: Path) -> ModelVersion:
    """Load and verify one version folder (card valid, names agree, every listed file matches its sha256)."""
    try:
        card = ModelCard.load(folder)
    except FileNotFoundError:
        return ModelVersion(name, version, folder, None, f"no {MODEL_CARD_FILENAME}")
    except ValidationError as exc:
        return ModelVersion(name, version, folder, None, _card_problem(exc))
    except (OSError, ValueError) as exc:  # a folder named model.json, unreadable, not UTF-8...
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return ModelVersion(name, version, folder, None, f"cannot read {MODEL_CARD_FILENAME}: {why}")
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


def choose(model_dir: Path, pin: str | None = None) -> ModelVersion:
    """The version of one model folder to serve, by the policy above, with notes on what was passed over."""
    name = model_dir.name
    versions, others = _subfolders(model_dir)
    ignored = "ignored: not a version folder (version folders are named by a number)"
    notes = [(f"{name}/{other}", ignored) for other in others]
    if pin is not None:
        if pin not in versions:
            problem = f"pinned version {pin} not found (have: {', '.join(versions) or 'none'})"
            return ModelVersion(name, pin, model_dir / pin, None, problem, tuple(notes))
        chosen = check_version(name, pin, model_dir / pin)
        return ModelVersion(chosen.name, chosen.version, chosen.folder, chosen.card, chosen.problem, tuple(notes))
    if not versions:
        has_card = (model_dir / MODEL_CARD_FILENAME).exists()
        misnamed = [other for other in others if (model_dir / other / MODEL_CARD_FILENAME).exists()]
        if not has_card and not misnamed:  # lost+found on a volume, an empty folder: nothing to serve
            return ModelVersion(name, "", model_dir, None, None, tuple(notes))
        if has_card and name.isdigit():
            problem = f"no models: {name}/ is a version folder; the repository holds <model>/<version>/ folders"
        elif has_card:
            problem = f"no version folder: {MODEL_CARD_FILENAME} belongs in {name}/<version>/"
        else:
            problem = f"no version folder: version folders are named by a number (found: {', '.join(misnamed)})"
        return ModelVersion(name, "", model_dir, None, problem, tuple(notes))
    refused: list[ModelVersion] = []
    for version in reversed(versions):
        candidate = check_version(name, version, model_dir / version)
        if candidate.problem is None:
            notes += [(f"{name}/{r.version}", f"refused: {r.problem}; serving version {version}") for r in refused]
            return ModelVersion(name, version, candidate.folder, candidate.card, None, tuple(notes))
        refused.append(candidate)
    newest = refused[0]
    problem = newest.problem
    if len(refused) > 1:
        problem = f"no version verifies (version {newest.version}: {newest.problem})"
    notes += [(f"{name}/{r.version}", f"refused: {r.problem}") for r in refused[1:]]
    return ModelVersion(name, newest.version, newest.folder, newest.card, problem, tuple(notes))


def scan(repository: Path, pins: Mapping[str, str] | None = None) -> list[ModelVersion]:
    """The version to serve of every model in the repository (refused ones included, with their problem)."""
    pins = pins or {}
    if not repository.is_dir():
        log.error("model repository %s does not exist", repository)
        return []
    every = [
        choose(model_dir, pins.get(model_dir.name))
        for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    ]
    for mv in every:
        for where, note in mv.notes:
            log.error("model repository %s: %s: %s", repository, where, note)
        if mv.card is None and mv.problem is None:
            log.warning(
                "model repository %s: ignoring %s/: no version folder and no %s",
                repository,
                mv.name,
                MODEL_CARD_FILENAME,
            )
    chosen = [mv for mv in every if mv.card is not None or mv.problem is not None]
    for mv in chosen:
        if mv.problem:
            log.error("refusing model %s version %s (%s): %s", mv.name, mv.version, mv.folder, mv.problem)
        else:
            log.info("found model %s version %s (task %s) in %s", mv.name, mv.version, mv.card.task, mv.folder)
    return chosen
