"""Build-time guard for a serving image: the right onnxruntime wheel, its provider, and no torch.

WHY: a dependency that drags in torch, or a resolver that installs CPU ``onnxruntime`` beside
``onnxruntime-gpu`` (same module, the last one wins file by file), gives an image that builds fine and
then serves on the wrong device or is gigabytes larger. Failing the ``docker build`` is cheaper than
finding out in production. ``get_available_providers`` lists the providers compiled into the wheel, so
this needs no GPU at build time.

Usage: ``python verify_serving_env.py --onnxruntime onnxruntime-gpu --provider CUDAExecutionProvider``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import sys

ONNXRUNTIME_WHEELS = {"onnxruntime", "onnxruntime-gpu"}
FORBIDDEN_MODULES = ("torch",)


def problems(expected_wheel: str, provider: str) -> list[str]:
    """Everything wrong with the current environment, empty when it is a good serving environment."""
    found: list[str] = []
    installed = {(dist.metadata["Name"] or "").lower() for dist in metadata.distributions()}
    wheels = installed & ONNXRUNTIME_WHEELS
    if wheels != {expected_wheel}:
        found.append(f"expected exactly {{{expected_wheel!r}}} of {sorted(ONNXRUNTIME_WHEELS)}, found {sorted(wheels)}")
    found.extend(
        f"{module!r} is importable: serving images must not contain it"
        for module in FORBIDDEN_MODULES
        if importlib.util.find_spec(module) is not None
    )
    if not found:
        import onnxruntime

        if provider not in onnxruntime.get_available_providers():
            found.append(f"{provider} not in {onnxruntime.get_available_providers()}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnxruntime", required=True, choices=sorted(ONNXRUNTIME_WHEELS))
    parser.add_argument("--provider", required=True)
    args = parser.parse_args(argv)
    found = problems(args.onnxruntime, args.provider)
    for problem in found:
        print(f"serving environment: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
