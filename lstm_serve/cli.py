"""The one console script, ``lstm-serve``: ``train``, ``export``, ``serve``, ``bench``.

Each subcommand lives in its own module and is imported only when chosen, so that ``lstm-serve serve``
on a serving install (no torch) never touches the training code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> task (or None when the subcommand takes no task) -> "module:function"
_COMMANDS: dict[str, dict[str | None, str]] = {
    "train": {
        "sentiment": "models.sentiment.train:main",
        "translation": "models.translation.train:main",
    },
    "export": {
        "sentiment": "export.sentiment:main",
        "translation": "export.translation:main",
        "variants": "export.precision:main",
    },
    "serve": {None: "service.server:main"},
    "bench": {None: "bench.load:main"},
}

_USAGE = """usage: lstm-serve COMMAND [TASK] [options]

commands:
  train {sentiment,translation} [--help]    train a model from the repo's data/ into a run folder
  export {sentiment,translation} RUN_DIR    export a run to ONNX as a model_repository version folder
  export variants VERSION_FOLDER            add gated int8/fp16 variants to a published version folder
  serve [--help]                            start the HTTP service on model_repository/
  bench [--help]                            load-test a running service (closed loop and rate sweep)
"""


def _resolve(target: str) -> Callable[[Sequence[str]], int | None]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    tasks = _COMMANDS.get(command)
    if tasks is None:
        print(f"lstm-serve: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
        return 2
    if None in tasks:
        target = tasks[None]
    else:
        if not rest or rest[0] not in tasks:
            print(f"lstm-serve {command}: choose a task from {sorted(t for t in tasks if t)}", file=sys.stderr)
            return 2
        target, rest = tasks[rest[0]], rest[1:]
    result = _resolve(target)(rest)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
