"""The batch cuts: searching over pieces of equal length loses nothing against a search over items, and
the numpy form used for many pieces gives exactly the plain loop's cuts.

Random lengths and few distinct ones, GPU-like and CPU-like cost models, tight and loose limits; ties
(equal lengths, a zero per-row cost) must resolve the same way in both forms.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from lstm_core.cost import CostModel
from service.batch_cuts import _cuts_numpy, _cuts_python, cheapest_cuts, pieces

MODELS = [
    CostModel(run=3e-4, step=2e-5, row=1e-7),  # GPU-like: a large fixed part per run
    CostModel(run=5e-5, step=1e-6, row=4e-6),  # CPU-like: rows dominate
    CostModel(run=1.0, step=0.0, row=0.0),  # only runs count: ties everywhere
]
LIMITS = [(65536, 0.5), (2048, 0.2), (8192, 1.0), (64, 0.0)]


def item_level_cost(lengths: Sequence[int], cost: CostModel, max_tokens: int, ratio: float) -> float:
    """The least cost over every contiguous cut of the items (the search before pieces), as a reference."""
    n = len(lengths)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    best = [0.0] + [float("inf")] * n
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            size, padded = j - i, lengths[j - 1] * (j - i)
            if size > 1 and (padded > max_tokens or 1.0 - (prefix[j] - prefix[i]) / padded > ratio):
                break
            best[j] = min(best[j], best[i] + cost.batch_cost(size, lengths[j - 1]))
    return best[n]


def total_cost(lengths: Sequence[int], cuts: list[tuple[int, int]], cost: CostModel) -> float:
    return sum(cost.batch_cost(j - i, lengths[j - 1]) for i, j in cuts)


def rounds(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for n in (1, 2, 7, 48, 129, 256):
        out.append(sorted(rng.randint(1, 60) for _ in range(n)))
        out.append(sorted(rng.choice([3, 3, 8, 20, 21]) for _ in range(n)))
    return out


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("max_tokens", "ratio"), LIMITS)
def test_numpy_cuts_equal_the_loop(model: CostModel, max_tokens: int, ratio: float) -> None:
    for lengths in rounds(max_tokens):
        ends, values = pieces(lengths, max_tokens)
        expected = _cuts_python(ends, values, model, max_tokens, ratio)
        assert _cuts_numpy(ends, values, model, max_tokens, ratio) == expected


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 1.0])
def test_pieces_cost_what_the_item_search_costs(model: CostModel, ratio: float) -> None:
    """Where the token limit does not bind, cutting only between equal lengths is as cheap as any cut."""
    for lengths in rounds(int(ratio * 10)):
        cuts = cheapest_cuts(lengths, model, 10**9, ratio)
        assert total_cost(lengths, cuts, model) == pytest.approx(item_level_cost(lengths, model, 10**9, ratio))


@pytest.mark.parametrize(("max_tokens", "ratio"), LIMITS)
def test_cuts_cover_every_item_once_within_the_limits(max_tokens: int, ratio: float) -> None:
    for lengths in rounds(7):
        n = len(lengths)
        cuts = cheapest_cuts(lengths, MODELS[0], max_tokens, ratio)
        assert cuts[0][0] == 0 and cuts[-1][1] == n
        assert [i for i, _ in cuts[1:]] == [j for _, j in cuts[:-1]]
        for i, j in cuts:
            padded = lengths[j - 1] * (j - i)
            assert j - i == 1 or (padded <= max_tokens and 1 - sum(lengths[i:j]) / padded <= ratio)
        # Pieces cannot beat the item-level search, and with a binding token limit stay close to it.
        best = item_level_cost(lengths, MODELS[0], max_tokens, ratio)
        assert best - 1e-12 <= total_cost(lengths, cuts, MODELS[0]) <= 1.25 * best


def test_a_gpu_cost_model_runs_a_round_of_real_lengths_in_few_batches() -> None:
    """The H200's calibrated constants at a probe of 1,024 rows: 1,024 sentences of 3..55 tokens, one or two runs."""
    gpu = CostModel(run=360e-6, step=37e-6, row=0.04e-6)
    lengths = sorted(random.Random(1).randint(3, 55) for _ in range(1024))
    assert len(cheapest_cuts(lengths, gpu, 131072, 1.0)) <= 2
    assert cheapest_cuts([5], gpu, 10, 0.0) == [(0, 1)] and cheapest_cuts([], gpu, 10, 0.0) == []
