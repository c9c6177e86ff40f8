"""Run folders: what a training run leaves behind (checkpoint, curves PNG, JSON + Markdown report)."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.datasets import REPO_ROOT


def set_seed(seed: int) -> None:
    """Seed every generator a run touches, so a recipe reproduces its model on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    """The repo's HEAD commit (``unknown`` outside a git checkout), recorded in reports and model cards."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plot_curves(history: Sequence[Mapping[str, float]], path: Path, title: str) -> Path:
    """One panel per metric key (besides ``epoch``), plotted against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k != "epoch"] if history else []
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.5 * max(len(keys), 1), 3.5), squeeze=False)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, key in zip(axes[0], keys, strict=False):
        ax.plot(epochs, [row[key] for row in history], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, report: Mapping[str, Any], markdown: str) -> None:
    """``report.json`` for machines and ``report.md`` for people, side by side in the run folder."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (run_dir / "report.md").write_text(markdown)
