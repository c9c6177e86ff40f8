"""Resumable training: one ``last.pt`` training state per run folder, written atomically and often.

A run on this machine may be stopped at any time (sessions end after about 3 hours), so a trainer saves
everything that decides what happens next: weights, optimizer and scheduler state, every random
generator, where it is inside the current epoch (the epoch's batch order and the next batch), the
history and the best-so-far. Re-running the same command finds ``last.pt`` and continues; on the same
machine and thread count the result is the same as a run that was never stopped (tests check it).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "last.pt"
# recipe options that may differ between sittings without changing what is trained
NOT_RECIPE = {"out", "no_progress", "threads", "device", "stop_after_steps", "time_limit_min", "checkpoint_every_min"}


def rng_states() -> dict[str, Any]:
    """The global generators a training step can touch: Python, numpy, torch (and CUDA when present)."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``run_dir/last.pt`` so that a crash mid-write never leaves a broken file behind."""
    path = run_dir / STATE
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def recipe_of(args: Any) -> dict[str, Any]:
    """The options that define a run (paths as strings), without the per-sitting ones."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in vars(args).items() if k not in NOT_RECIPE}


def check_same_recipe(saved: dict[str, Any], args: Any, run_dir: Path) -> None:
    """Refuse to continue a run with another recipe: the result would be neither run."""
    current = recipe_of(args)
    changed = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise SystemExit(
            f"{run_dir / STATE} was written by another recipe ({details}); "
            "use the same options to resume, or another --out for a new run"
        )


class Stopper:
    """When to checkpoint (every ``every_min`` minutes) and when to stop this sitting early.

    ``stop_after_steps`` (optimizer steps in this sitting) exists for tests that interrupt a run;
    ``time_limit_min`` lets a run end cleanly, checkpointed, before a session is cut off.
    """

    def __init__(
        self, every_min: float = 5.0, stop_after_steps: int | None = None, time_limit_min: float | None = None
    ) -> None:
        self.every_s = every_min * 60
        self.stop_after_steps = stop_after_steps
        self.time_limit_s = None if time_limit_min is None else time_limit_min * 60
        self.started = self.last_save = time.monotonic()
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def should_stop(self) -> bool:
        if self.stop_after_steps is not None and self.steps >= self.stop_after_steps:
            return True
        return self.time_limit_s is not None and time.monotonic() - self.started >= self.time_limit_s

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_save >= self.every_s

    def saved(self) -> None:
        self.last_save = time.monotonic()


class Interrupted(Exception):
    """This sitting stopped early (step or time limit) after saving ``last.pt``; re-run to continue."""


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several state dicts of one model (checkpoint averaging)."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).mean(dim=0)
        else:
            out[key] = first.clone()
    return out
