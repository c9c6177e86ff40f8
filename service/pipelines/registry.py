"""Which pipeline serves which ``model.json`` ``task``: the one table the core reads tasks from.

A task module decorates its ``Pipeline`` subclass with ``@register_pipeline("<task>")``. Every module
of ``service/pipelines/`` is imported at start-up, plus the modules named by the ``task_modules``
setting, so a new task is one new module: no edit to the core, which builds routes, V2 checks and
metric labels from what is registered here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable

import service.pipelines as _package
from service.pipelines.base import Pipeline, Wire

_REGISTRY: dict[str, type[Pipeline]] = {}


def register_pipeline(task: str) -> Callable[[type[Pipeline]], type[Pipeline]]:
    """Class decorator: serve models whose ``model.json`` ``task`` is ``task`` with this class."""

    def decorate(cls: type[Pipeline]) -> type[Pipeline]:
        if not isinstance(getattr(cls, "wire", None), Wire):
            raise TypeError(f"{cls.__name__} declares no `wire` (its routes and V2 columns)")
        other = next(
            (c for t, c in _REGISTRY.items() if t != task and c.wire.native_path == cls.wire.native_path), None
        )
        if other is not None:
            raise ValueError(f"{cls.__name__} and {other.__name__} both claim {cls.wire.native_path}")
        cls.task = task
        _REGISTRY[task] = cls
        return cls

    return decorate


def discover(extra_modules: Iterable[str] = ()) -> dict[str, type[Pipeline]]:
    """Import every task module (``service/pipelines/*`` and ``extra_modules``); task name -> pipeline class."""
    for info in pkgutil.iter_modules(_package.__path__):
        importlib.import_module(f"{_package.__name__}.{info.name}")
    for name in extra_modules:
        importlib.import_module(name)
    return dict(sorted(_REGISTRY.items()))


def pipeline_class(task: str) -> type[Pipeline]:
    """The pipeline class registered for a task (after ``discover``)."""
    try:
        return _REGISTRY[task]
    except KeyError:
        raise LookupError(
            f"no pipeline for task {task!r} (registered: {', '.join(sorted(_REGISTRY)) or 'none'})"
        ) from None
