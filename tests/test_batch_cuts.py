"""The batch cuts: the numpy form used for big rounds gives exactly the plain loop's cuts.

Real SST-2 token lengths and random ones, GPU-like and CPU-like cost models, tight and loose limits;
ties (equal lengths, a zero per-row cost) must resolve the same way.
"""

from __future__ import annotations

import random

import pytest

from lstm_core.cost import CostModel
from service.batch_cuts import _cuts_numpy, _cuts_python, cheapest_cuts

MODELS = [
    CostModel(run=3e-4, step=2e-5, row=1e-7),  # GPU-like: a large fixed part per run
    CostModel(run=5e-5, step=1e-6, row=4e-6),  # CPU-like: rows dominate
    CostModel(run=1.0, step=0.0, row=0.0),  # only runs count: ties everywhere
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("max_tokens", "ratio"), [(65536, 0.5), (2048, 0.2), (8192, 1.0), (64, 0.0)])
def test_numpy_cuts_equal_the_loop(model: CostModel, max_tokens: int, ratio: float) -> None:
    rng = random.Random(max_tokens)
    for n in (1, 2, 7, 48, 129, 256):
        for lengths in (
            sorted(rng.randint(1, 60) for _ in range(n)),
            sorted(rng.choice([3, 3, 8, 20, 21]) for _ in range(n)),
        ):
            assert _cuts_numpy(lengths, model, max_tokens, ratio) == _cuts_python(lengths, model, max_tokens, ratio)


def test_cuts_cover_every_item_once_within_the_limits() -> None:
    lengths = sorted(random.Random(3).randint(1, 80) for _ in range(256))
    cuts = cheapest_cuts(lengths, MODELS[0], max_tokens=2048, max_padding_ratio=0.3)
    assert [i for i, _ in cuts[1:]] == [j for _, j in cuts[:-1]] and cuts[0][0] == 0 and cuts[-1][1] == 256
    for i, j in cuts:
        padded = lengths[j - 1] * (j - i)
        assert j - i == 1 or (padded <= 2048 and 1 - sum(lengths[i:j]) / padded <= 0.3)
