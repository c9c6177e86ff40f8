"""Where to cut a round of length-sorted items into batches: the least modelled cost (``CostModel``).

The search runs over *pieces*, not items: a piece is a run of equal lengths (split where it alone
would pass ``max_tokens``). Why that loses nothing while the token limit does not bind: moving the
items of a batch's shortest length into the previous batch (whose longest they equal) costs that
batch ``row × length`` each and saves the next one at least as much, and lowers both padding shares;
so some least-cost cut falls between pieces. A round of 1,024 real sentences has about 50 distinct
lengths, so the search is over 50 pieces, not 1,024 items: the item-level O(n²) search in numpy took
most of the GPU worker's event loop at rounds of 1,024 (py-spy on the H200, docs/benchmarks.md).

Within that, the search is exact: ``best[j] = min over i of best[i] + cost(items of pieces i..j-1)``,
within ``max_tokens`` padded tokens and ``max_padding_ratio``. The plain loop is used for a few pieces,
the numpy form (every segment's cost at once, one vector minimum per piece) from ``NUMPY_FROM`` on;
both give the same cuts, ties included (the later start wins), because they add the same float64 terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lstm_core.cost import CostModel

NUMPY_FROM = 24  # pieces; below this the Python loop is as fast (numpy pays per call)


def cheapest_cuts(
    lengths: Sequence[int], cost: CostModel, max_tokens: int, max_padding_ratio: float
) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` batches over ``lengths`` (sorted ascending), in order."""
    if len(lengths) <= 1:
        return [(0, len(lengths))] if lengths else []
    ends, values = pieces(lengths, max_tokens)
    search = _cuts_numpy if len(values) >= NUMPY_FROM else _cuts_python
    cut = search(ends, values, cost, max_tokens, max_padding_ratio)
    bounds: list[tuple[int, int]] = []
    j = len(values)
    while j > 0:
        i = cut[j]
        bounds.append((ends[i - 1] if i else 0, ends[j - 1]))
        j = i
    bounds.reverse()
    return bounds


def pieces(lengths: Sequence[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Runs of equal length (split to at most ``max_tokens // length`` items): each one's end index and length."""
    ends: list[int] = []
    values: list[int] = []
    n = len(lengths)
    start = 0
    while start < n:
        value = lengths[start]
        end = start + 1
        while end < n and lengths[end] == value:
            end += 1
        cap = max(1, max_tokens // max(value, 1))
        for piece_end in range(start + cap, end + cap, cap):
            ends.append(min(piece_end, end))
            values.append(value)
        start = end
    return ends, values


def _cuts_python(
    ends: Sequence[int], values: Sequence[int], cost: CostModel, max_tokens: int, max_padding_ratio: float
) -> list[int]:
    n = len(values)
    starts = [0, *ends]  # items before piece p
    tokens = [0]  # real tokens before piece p
    for p in range(n):
        tokens.append(tokens[-1] + values[p] * (starts[p + 1] - starts[p]))
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j pieces
    cut = [0] * (n + 1)
    batch_cost = cost.batch_cost
    for j in range(1, n + 1):
        longest = values[j - 1]
        for i in range(j - 1, -1, -1):  # batch = pieces i..j-1, longest is the last
            size = starts[j] - starts[i]
            padded = longest * size
            if size > 1 and (padded > max_tokens or 1.0 - (tokens[j] - tokens[i]) / padded > max_padding_ratio):
                break  # a longer run back only adds padding
            total = best[i] + batch_cost(size, longest)
            if total < best[j]:
                best[j], cut[j] = total, i
    return cut


def _cuts_numpy(
    ends: Sequence[int], values: Sequence[int], cost: CostModel, max_tokens: int, max_padding_ratio: float
) -> list[int]:
    n = len(values)
    value = np.asarray(values, dtype=np.int64)
    starts = np.concatenate([[0], np.asarray(ends, dtype=np.int64)])
    tokens = np.concatenate([[0], np.cumsum(value * np.diff(starts))])
    start = np.arange(n + 1)[:, None]  # i
    end = np.arange(1, n + 1)[None, :]  # j
    size = starts[end] - starts[start]  # [n + 1, n]: items of pieces i..j-1 (≤ 0 where i ≥ j)
    longest = value[end - 1]
    padded = longest * size
    with np.errstate(divide="ignore", invalid="ignore"):
        padding = 1.0 - (tokens[end] - tokens[start]) / padded
    too_much = (size > 1) & ((padded > max_tokens) | (padding > max_padding_ratio))
    # The loop stops at the first failing start going back: only starts after the last failing one count.
    lowest = np.where(too_much, start, -1).max(axis=0) + 1
    seg = cost.run + longest * (cost.step + cost.row * size.astype(np.float64))  # same terms as batch_cost
    best = np.zeros(n + 1)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        lo = int(lowest[j - 1])
        totals = best[lo:j] + seg[lo:j, j - 1]
        k = int(np.argmin(totals[::-1]))  # the latest start among equals, as the loop keeps the first found
        cut[j] = j - 1 - k
        best[j] = totals[j - 1 - lo - k]
    return cut
