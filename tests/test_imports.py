"""The dependency rule of docs/design.md, read from the source with ``ast`` (nothing is imported).

- ``lstm_core`` (what training and serving share) imports none of the other parts, and never torch;
- ``service`` imports ``lstm_core`` but neither ``models`` nor ``export`` (nor the CLI or the bench), and never torch;
- ``models`` and ``export`` never import ``service``;
- every first-party import names a module that exists in this tree (an editable install elsewhere
  must not quietly supply a module that was moved away here).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("lstm_core", "lstm_serve", "service", "models", "export", "bench")
FORBIDDEN = {
    "lstm_core": {"lstm_serve", "service", "models", "export", "bench", "torch"},
    "service": {"lstm_serve", "models", "export", "bench", "torch"},
    "models": {"lstm_serve", "service", "export", "bench"},
    "export": {"lstm_serve", "service", "bench"},
}


def imports(path: Path, text: str | None = None) -> list[tuple[str, int]]:
    """Absolute module names a file imports (relative imports resolved against its package), with line numbers."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            # `from pkg import name` may import a submodule: check it as one when it is a file
            found += [
                (f"{module}.{alias.name}", node.lineno) for alias in node.names if _is_module(f"{module}.{alias.name}")
            ]
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources(part: str) -> list[Path]:
    return sorted(p for p in (ROOT / part).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_part_does_not_import_what_it_must_not(part: str) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources(part)
        for module, line in imports(path)
        if module.split(".")[0] in FORBIDDEN[part]
    ]
    assert not broken, "\n".join(broken)


def test_every_first_party_import_exists_in_this_tree() -> None:
    missing = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for part in (*PARTS, "tests")
        for path in sources(part)
        for module, line in imports(path)
        if module.split(".")[0] in (*PARTS, "tests") and not _is_module(module)
    ]
    assert not missing, "\n".join(missing)


def test_the_checker_sees_absolute_relative_and_submodule_imports() -> None:
    text = "from models.datasets import read_lines\nimport torch\nfrom . import registry\nfrom .base import Item\n"
    names = [module for module, _ in imports(ROOT / "service" / "pipelines" / "x.py", text)]
    assert names == [
        "models.datasets",
        "torch",
        "service.pipelines",
        "service.pipelines.registry",
        "service.pipelines.base",
    ]
