"""Print the GPU image's requirements: pyproject ``dependencies`` minus CPU ``onnxruntime``, plus the ``gpu`` extra.

WHY: ``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime`` module, and uninstalling one
after the other deletes files the survivor still needs. The GPU image therefore installs the project with
``--no-deps`` plus this list (which carries ``onnxruntime-gpu`` and NVML from the ``gpu`` extra), so the CPU
wheel is never installed there. Reading the list from ``pyproject.toml`` (stdlib only, runs in a bare build
stage) keeps one source of truth: a dependency added for the service reaches both images.

Usage: ``python deploy/serving_requirements.py [pyproject.toml] [--drop NAME ...] [--extra NAME ...]``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# Distributions that must never reach a serving image (the service never imports torch).
FORBIDDEN = {"torch"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 name normalisation, so `onnxruntime_gpu` and `ONNXRuntime-GPU` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from {requirement!r}")
    return normalize(match.group(1))


def serving_requirements(pyproject: Path, drop: set[str], extras: list[str]) -> list[str]:
    """The project's runtime dependencies without the names in ``drop``, then those of each extra in ``extras``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    dropped = {normalize(name) for name in drop}
    kept = [req for req in project["dependencies"] if requirement_name(req) not in dropped]
    for extra in extras:
        kept.extend(project["optional-dependencies"][extra])
    forbidden = sorted({requirement_name(req) for req in kept} & FORBIDDEN)
    if forbidden:
        raise SystemExit(f"serving dependencies must not include {forbidden}")
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--drop", action="append", default=[], help="distribution to leave out (repeatable)")
    parser.add_argument("--extra", action="append", default=[], help="optional-dependencies to add (repeatable)")
    args = parser.parse_args(argv)
    for requirement in serving_requirements(args.pyproject, set(args.drop), args.extra):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
