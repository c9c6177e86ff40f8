"""The numpy search on a known toy decoder: beam size 1 is greedy, limits and EOS handling hold."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from lstm_core.translation_search import beam_search, greedy_search, output_limit

BOS, EOS, VOCAB = 2, 3, 9


def markov_step(table: np.ndarray):
    """A decoder whose next-token log-probs depend only on the previous token (its state is the token)."""

    def step(prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        assert prev_tokens.shape == state_index.shape
        return table[prev_tokens]

    return step


def random_table(seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(VOCAB, VOCAB)) * 3
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def sequence_score(table: np.ndarray, tokens: list[int], finished: bool) -> float:
    path = [BOS, *tokens, *([EOS] if finished else [])]
    return float(sum(table[a, b] for a, b in pairwise(path)))


@pytest.mark.parametrize("seed", range(20))
def test_beam_size_one_is_greedy(seed: int) -> None:
    step = markov_step(random_table(seed))
    batch = 3
    assert beam_search(step, batch, 1, 12, BOS, EOS, alpha=0.6) == greedy_search(step, batch, 12, BOS, EOS)


@pytest.mark.parametrize("seed", range(20))
def test_beam_never_scores_below_greedy(seed: int) -> None:
    table = random_table(seed)
    step = markov_step(table)
    (greedy,) = greedy_search(step, 1, 10, BOS, EOS)
    (beam,) = beam_search(step, 1, 6, 10, BOS, EOS, alpha=0.0)
    assert EOS not in beam and len(beam) <= 10
    greedy_finished, beam_finished = len(greedy) < 10, len(beam) < 10
    if greedy_finished and beam_finished:
        assert sequence_score(table, beam, True) >= sequence_score(table, greedy, True) - 1e-9


def test_max_length_stops_a_decoder_that_never_ends() -> None:
    table = np.full((VOCAB, VOCAB), -10.0)
    table[:, 5] = -0.001  # always token 5, never EOS
    step = markov_step(table)
    assert greedy_search(step, 2, 7, BOS, EOS) == [[5] * 7, [5] * 7]
    assert beam_search(step, 2, 3, 7, BOS, EOS) == [[5] * 7, [5] * 7]


def test_immediate_eos_gives_empty_output() -> None:
    table = np.full((VOCAB, VOCAB), -10.0)
    table[:, EOS] = -0.001
    step = markov_step(table)
    assert greedy_search(step, 2, 5, BOS, EOS) == [[], []]
    assert beam_search(step, 2, 4, 5, BOS, EOS) == [[], []]


def test_output_limit_follows_the_source() -> None:
    assert output_limit(128, 5) == 20
    assert output_limit(12, 50) == 12
    assert output_limit(0, 3) == 1
