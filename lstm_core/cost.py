"""What one batch costs, as a function of its size and padded length: the batcher cuts batches by it.

A recurrent net pays a fixed part per ``session.run`` (``run``), a part per time step (``step``) and a
part per row per step (``row``); padding costs ``row`` per padded token. The numbers depend on the
model and the machine, so they are measured, not assumed: export measures them on the exported graphs
and writes them into the model card's ``serving.cost_model``, and the service measures them again at
warm-up on the machine that serves (``fit_cost_model`` is the one procedure for both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

CARD_KEY = "cost_model"  # under the model card's ``serving`` block


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds for one batch of ``size`` items padded to ``length`` tokens: ``run + length × (step + row × size)``.

    Only the ratios matter to the batcher (it compares sums of costs). ``UNMEASURED`` is what a model
    without measurements gets: a fixed cost per batch worth a hundred padded tokens and no per-step
    part, i.e. "batch, but do not pad much"; it is nobody's measurement.
    """

    run: float
    step: float
    row: float

    def batch_cost(self, size: int, length: int) -> float:
        return self.run + length * (self.step + self.row * size)

    def to_card(self) -> dict[str, float]:
        return {k: float(f"{v:.4g}") for k, v in asdict(self).items()}

    @classmethod
    def from_card(cls, serving: Mapping[str, Any]) -> CostModel | None:
        """The constants export measured (``serving.cost_model``), or None when the card has none."""
        raw = serving.get(CARD_KEY)
        if not isinstance(raw, Mapping):
            return None
        try:
            model = cls(run=float(raw["run"]), step=float(raw["step"]), row=float(raw["row"]))
        except (KeyError, TypeError, ValueError):
            return None
        return model if min(model.run, model.step, model.row) >= 0 else None


UNMEASURED = CostModel(run=100e-6, step=0.0, row=1e-6)


@dataclass(frozen=True, slots=True)
class ProbeShape:
    """The batches ``fit_cost_model`` times: 1×1, 1×``length`` and ``size``×``length`` tokens, best of ``repeats``."""

    length: int = 64
    size: int = 32
    repeats: int = 7


class InconsistentTimings(ValueError):
    """The timings do not fit the model (cost not driven by length, or noise larger than the signal)."""


def fit_cost_model(prepare: Callable[[int, int], Callable[[], Any]], shape: ProbeShape) -> CostModel:
    """Fit ``CostModel`` from timed batches of 1×1, 1×``length`` and ``size``×``length`` tokens.

    ``prepare(size, length)`` builds a batch and returns the call to time (building is not timed).
    Blocking: run it in a thread. Raises ``InconsistentTimings`` when the fit makes no sense.
    """
    length, size, repeats = shape.length, shape.size, shape.repeats
    if length < 2 or size < 2:
        raise ValueError(f"need length >= 2 and size >= 2, got {length} and {size}")

    def timed(batch: int, tokens: int) -> float:
        call = prepare(batch, tokens)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            runs.append(time.perf_counter() - started)
        return min(runs)  # the least disturbed run: on a shared CPU noise only ever adds time

    t_one, t_long, t_wide = timed(1, 1), timed(1, length), timed(size, length)
    per_step = (t_long - t_one) / (length - 1)  # step + row
    row = (t_wide - t_long) / (length * (size - 1))
    if per_step <= 0 or row <= 0:
        raise InconsistentTimings(
            f"1x1 {t_one * 1e6:.1f} µs, 1x{length} {t_long * 1e6:.1f} µs, {size}x{length} {t_wide * 1e6:.1f} µs"
        )
    # A batched row-step may cost as much as a lone one (long sequences): then only `run` is shared.
    return CostModel(run=max(t_one - per_step, 0.0), step=max(per_step - row, 0.0), row=row)
