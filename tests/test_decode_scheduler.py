"""The step-level decode scheduler on a toy recurrent model: every sentence gets its answer alone.

The toy has a state that evolves with each token (so a wrong state reorder changes the answer) and
attends over its source (a length-normalised mean of the real positions, so wrong padding or a wrong
row of encoder outputs changes it too). The reference is ``translation_search``'s greedy and beam
search run on one sentence at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from lstm_core.decode_scheduler import DecodeScheduler, HostRows, Sentence
from lstm_core.translation_search import beam_search, greedy_search

V, BOS, EOS, H = 24, 2, 3, 6
RNG = np.random.default_rng(7)
TABLE = RNG.normal(scale=2.0, size=(V, V))
TABLE[:, EOS] -= 1.5  # sentences run several steps before they end
EMB = RNG.normal(size=(V, H))
OUT = RNG.normal(size=(H, V))
CTX = RNG.normal(size=V) * 3


def toy_encode(sources: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    width = max(len(s) for s in sources)
    enc = np.zeros((len(sources), width, 2))
    for i, s in enumerate(sources):
        enc[i, : len(s), 0] = np.sin(s)
        enc[i, : len(s), 1] = 1.0
    h = np.stack([np.cos(np.arange(H) * (1 + s.sum() % 5)) for s in sources])
    return [enc], [h]


def toy_decode(prev, state, enc, mask):
    (h,), (e,) = state, enc
    ctx = (e[..., 0] * mask).sum(1) / mask.sum(1)
    logits = TABLE[prev] + np.tanh(h) @ OUT + np.outer(ctx, CTX)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    return logp, [np.tanh(0.8 * h + EMB[prev])]


def alone(source: np.ndarray, beam: int, max_length: int, alpha: float) -> list[int]:
    enc, (h,) = toy_encode([source])
    rows = np.repeat(enc[0], beam, axis=0)
    mask = np.ones(rows.shape[:2], dtype=bool)
    state = np.repeat(h, beam, axis=0)

    def step(prev, index):
        nonlocal state
        logp, (state,) = toy_decode(prev, [state[index]], [rows], mask)
        return logp

    if beam == 1:
        return greedy_search(step, 1, max_length, BOS, EOS)[0]
    return beam_search(step, 1, beam, max_length, BOS, EOS, alpha)[0]


def sentences(n: int, seed: int, beams=(1, 2, 3, 4)) -> list[Sentence]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(1, 12))
        source = np.append(rng.integers(4, V, size=length - 1), EOS).astype(np.int64)
        out.append(
            Sentence(source, beams[i % len(beams)], int(rng.integers(3, 30)), float(rng.choice([0.0, 0.6, 1.0])))
        )
    return out


def scheduler(max_rows: int = 1000, max_positions: int = 100_000) -> DecodeScheduler:
    return DecodeScheduler(
        HostRows(toy_encode, toy_decode), max_rows=max_rows, max_positions=max_positions, bos=BOS, eos=EOS
    )


def run_all(sched: DecodeScheduler, arrivals: dict[int, list[Sentence]]) -> list:
    """Step until idle, adding ``arrivals[t]`` before step t; returns the reports."""
    reports, t = [], 0
    while not sched.idle or any(k >= t for k in arrivals):
        for s in arrivals.get(t, []):
            sched.add(s)
        reports.append(sched.step())
        t += 1
    return reports


def check(batch: list[Sentence]) -> None:
    for s in batch:
        assert s.result == alone(s.source, s.beam_size, s.max_length, s.alpha), s


def test_mixed_beam_sizes_share_steps_and_each_gets_its_answer_alone() -> None:
    batch = sentences(16, seed=1)
    sched = scheduler()
    reports = run_all(sched, {0: batch})
    assert reports[0].stepped_rows == sum(s.beam_size for s in batch)  # greedy and beams 2-4 in one step
    check(batch)


def test_sentences_arriving_mid_decode_join_between_steps() -> None:
    batch = sentences(24, seed=2)
    arrivals = {t: batch[i : i + 3] for i, t in zip(range(0, 24, 3), (0, 1, 2, 4, 5, 9, 10, 17), strict=True)}
    sched = scheduler()
    reports = run_all(sched, arrivals)
    assert sum(len(r.admitted) for r in reports) == 24
    assert sum(len(r.finished) for r in reports) == 24
    check(batch)


@pytest.mark.parametrize(("max_rows", "max_positions"), [(5, 100_000), (1000, 30), (4, 20)])
def test_admission_is_bounded_by_rows_and_padded_positions(max_rows: int, max_positions: int) -> None:
    batch = sentences(20, seed=3)
    sched = scheduler(max_rows, max_positions)
    for s in batch:
        sched.add(s)
    while not sched.idle:
        report = sched.step()
        rows = sum(s.rows for s in sched.live) + sum(s.rows for s in report.finished)
        width = max([s.length for s in sched.live] + [s.length for s in report.finished])
        alone_in_set = len(sched.live) + len(report.finished) == 1
        assert alone_in_set or (rows <= max_rows and rows * width <= max_positions)
    check(batch)


def test_a_sentence_is_retired_the_step_it_finishes() -> None:
    short = Sentence(np.array([5, EOS]), 1, 2, 0.6)  # at most 2 steps
    long = Sentence(np.array([7, 8, 9, EOS]), 4, 30, 0.6)
    sched = scheduler()
    sched.add(long)
    sched.add(short)
    reports = [sched.step(), sched.step()]
    assert short in reports[0].finished + reports[1].finished
    assert long.result is None and sched.live == [long] and sched.rows == 4
    while not sched.idle:
        sched.step()
    check([short, long])


def test_dropped_sentences_free_their_rows_at_the_next_step_and_the_rest_reorder() -> None:
    batch = sentences(12, seed=4)
    for s in batch:
        s.max_length = 40
    sched = scheduler()
    for s in batch:
        sched.add(s)
    sched.step()
    sched.step()
    gone = {id(s) for s in batch[1::3]}
    rows_before = sched.rows
    live_gone = [s for s in sched.live if id(s) in gone]
    report = sched.step(is_dead=lambda s: id(s) in gone)
    assert {id(s) for s in report.dropped} == {id(s) for s in live_gone}
    assert report.stepped_rows == rows_before - sum(s.rows for s in live_gone)
    while not sched.idle:
        sched.step(is_dead=lambda s: id(s) in gone)
    check([s for s in batch if id(s) not in gone])
    assert all(s.result is None for s in live_gone)


def test_queued_dead_sentences_are_dropped_unrun_and_an_oversized_one_runs_alone() -> None:
    big = Sentence(np.arange(4, 20, dtype=np.int64), 4, 10, 0.6)  # 4 rows × 16 positions > the bounds
    dead = Sentence(np.array([5, EOS]), 1, 5, 0.6)
    sched = scheduler(max_rows=3, max_positions=40)
    sched.add(dead)
    sched.add(big)
    report = sched.step(is_dead=lambda s: s is dead)
    assert report.dropped == [dead] and report.admitted == [big] and dead.steps == 0
    while not sched.idle:
        sched.step()
    check([big])


def test_after_going_idle_the_next_sentences_start_fresh_rows() -> None:
    first, second = sentences(4, seed=5), sentences(4, seed=6)
    sched = scheduler()
    run_all(sched, {0: first})
    run_all(sched, {0: second})
    check(first + second)


def test_failed_step_can_be_reset() -> None:
    sched = scheduler()
    batch = sentences(3, seed=8)
    for s in batch:
        sched.add(s)
    sched.step()
    assert set(map(id, sched.reset())) == set(map(id, batch)) - {id(s) for s in batch if s.result is not None}
    assert sched.idle and sched.rows == 0
    again = sentences(3, seed=8)
    run_all(sched, {0: again})
    check(again)


def test_a_new_scheduler_on_a_used_backend_starts_fresh() -> None:
    backend = HostRows(toy_encode, toy_decode)
    first = DecodeScheduler(backend, max_rows=100, max_positions=10_000, bos=BOS, eos=EOS)
    run_all(first, {0: sentences(3, seed=9)})  # leaves the backend holding the last step's rows
    second = DecodeScheduler(backend, max_rows=100, max_positions=10_000, bos=BOS, eos=EOS)
    batch = sentences(3, seed=10)
    run_all(second, {0: batch})
    check(batch)


@pytest.mark.parametrize(("lazy_retire", "admit_wait_steps"), [(True, 0), (False, 3), (True, 3)])
def test_lazy_retirement_and_grouped_admission_keep_every_answer(lazy_retire: bool, admit_wait_steps: int) -> None:
    """Finished rows linger (decoded, ignored) and newcomers wait a few steps, yet every sentence gets
    its answer alone, is answered the step it finishes, and waits at most ``admit_wait_steps`` to join."""
    batch = sentences(40, seed=5)
    arrivals = {t: batch[i : i + 2] for i, t in zip(range(0, 40, 2), range(0, 60, 3), strict=True)}
    sched = DecodeScheduler(
        HostRows(toy_encode, toy_decode),
        max_rows=1000,
        max_positions=100_000,
        bos=BOS,
        eos=EOS,
        lazy_retire=lazy_retire,
        admit_wait_steps=admit_wait_steps,
    )
    joined, done, reports, t = {}, {}, [], 0
    while not sched.idle or any(k >= t for k in arrivals):
        for s in arrivals.get(t, []):
            sched.add(s)
        report = sched.step()
        reports.append(report)
        joined.update({id(s): t for s in report.admitted})
        done.update({id(s): t for s in report.finished})
        t += 1
    check(batch)
    for t_arrive, group in ((t, arrivals[t]) for t in arrivals):
        for s in group:
            assert joined[id(s)] - t_arrive <= admit_wait_steps
            assert done[id(s)] == joined[id(s)] + s.steps - 1  # answered the step it finished
    work = sum(s.steps * s.beam_size for s in batch)  # rows the sentences themselves needed
    if lazy_retire:  # some steps also ran finished rows instead of re-laying the set out at once
        assert sum(r.stepped_rows for r in reports) > work
    else:
        assert sum(r.stepped_rows for r in reports) == work


def test_a_deep_queue_joins_in_groups_not_one_sentence_a_step() -> None:
    """With more sentences queued than fit, room frees a few rows at a time. Newcomers wait until they
    bring a quarter of the decoding rows or room has been there ``admit_wait_steps`` steps, counted from
    when room appeared (the oldest of a deep queue has always waited long): fewer re-layouts, same answers."""
    admissions = {}
    for wait in (0, 4):
        batch = sentences(80, seed=11, beams=(1,))
        sched = DecodeScheduler(
            HostRows(toy_encode, toy_decode), max_rows=16, max_positions=100_000, bos=BOS, eos=EOS,
            lazy_retire=True, admit_wait_steps=wait,
        )  # fmt: skip
        reports = run_all(sched, {0: batch})
        check(batch)
        admissions[wait] = sum(1 for r in reports if r.admitted)
    assert admissions[4] <= 0.6 * admissions[0], admissions


class _PlanLog(HostRows):
    """HostRows that keeps every plan it ran."""

    def __init__(self) -> None:
        super().__init__(toy_encode, toy_decode)
        self.plans: list = []

    def step(self, plan):
        self.plans.append(plan)
        return super().step(plan)


def test_a_leaver_s_place_goes_to_the_last_sentence_if_it_has_the_size_so_only_its_rows_move() -> None:
    backend = _PlanLog()
    sched = DecodeScheduler(backend, max_rows=1000, max_positions=100_000, bos=BOS, eos=EOS)
    source = np.array([5, 6, 7, EOS])
    # rows: a 0-1, b 2-3 (out of steps after one), c 4 (greedy), d 5-6
    a, b, c, d = (Sentence(source, beam, length, 0.6) for beam, length in ((2, 20), (2, 1), (1, 20), (2, 20)))
    for s in (a, b, c, d):
        sched.add(s)
    sched.step()
    assert b.result is not None
    sched.step()
    assert sched.live == [a, d, c]  # d, the last, took b's place: only d's two rows moved
    plan = backend.plans[-1]
    assert plan.relayout and plan.keep.tolist() == [0, 1, 5, 6, 4]
    assert plan.width == backend.plans[0].width  # the width held, so a backend copies rows 5-6 to 2-3 in place
    c.result = [4]  # c, now the last, leaves: no row moves
    sched._retire()
    sched.step()
    assert sched.live == [a, d] and backend.plans[-1].keep.tolist() == [0, 1, 2, 3]
    while not sched.idle:
        sched.step()
    check([a, b, d])
