"""Step-level ("continuous") batching of an encoder + one-step decoder: the scheduler, pure logic.

A round-based decoder runs a batch to its end: a short sentence waits for the longest one, and a
sentence that arrives one step late waits for the whole round. Here the unit of scheduling is one
decoder step (iteration-level scheduling, as in Orca/vLLM, for a recurrent encoder–decoder). The
scheduler keeps a running set of *rows* (sentence × beam); at every ``step()`` it

1. drops sentences whose caller gave up (``is_dead``: client gone, deadline passed),
2. admits queued sentences, oldest first, while the running set stays within ``max_rows`` rows and
   ``max_positions`` padded encoder positions (rows × the longest source in the set); the backend
   encodes them before the step,
3. runs one decoder step for every live row (the backend returns each row's best ``k`` next tokens
   with their scores, ``k`` = 2 × the widest beam in the set, 1 when all are greedy), and
4. advances each sentence's own search (greedy, or beam search with its own width, ``max_length`` and
   length penalty) and retires every sentence that finished, at once.

The search arithmetic is ``translation_search``'s, sentence by sentence: the same candidates (a
row's top ``2k`` tokens contain its sentence's top ``2k`` candidates), scores added in float64, the
same EOS rule, stopping rule and final choice. So each sentence gets the answer it gets decoded alone
by ``greedy_search``/``beam_search``, up to ties between equal scores (broken here by beam, then token id).

The backend owns the tensors (``StepPlan`` says how the rows changed; ``translation_runtime.DeviceRows``
keeps them on the decoder's device). Rows are sentence-major and contiguous per sentence: the kept
sentences, then the new ones. A leaving sentence's place is taken by the last sentence of its size
(``_without``), so a departure moves one sentence's rows and an arrival appends, and the padded width
changes only when it must: most changes of the set touch only the rows that change. The scheduler
is not thread-safe: one thread calls ``add``/``step``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lstm_core.translation_search import length_penalty


@dataclass(eq=False)
class Sentence:
    """One sentence to decode, with its own search settings; ``result`` is set when it finishes."""

    source: np.ndarray  # source ids, ending in EOS
    beam_size: int = 1
    max_length: int = 128  # most output tokens (callers cap it, e.g. ``output_limit``)
    alpha: float = 0.6  # GNMT length penalty (beam search only)
    tag: Any = None  # the caller's handle
    result: list[int] | None = None
    steps: int = 0  # decoder steps it took part in
    # search state, owned by the scheduler
    _offset: int = field(default=-1, repr=False)  # first row in the last step's rows (-1: not stepped yet)
    _history: Any = field(default=None, repr=False)  # greedy: token list; beam: [beam, tokens so far]
    _finished: list[tuple[float, list[int]]] = field(default_factory=list, repr=False)

    @property
    def rows(self) -> int:
        return self.beam_size

    @property
    def length(self) -> int:
        return len(self.source)


@dataclass
class StepPlan:
    """What the backend does before and in one step (indices are int64 numpy arrays).

    ``relayout`` False: the rows are the last step's rows (``keep``/``take``/``lengths`` unused).
    Otherwise the new rows are rows ``keep`` of the last step's row tensors, then rows ``take`` of the
    sentences in ``new_sources`` (encoded before this step), padded or cut to ``width`` positions, with
    ``lengths`` the source length of each row. ``state_index`` picks each row's decoder state among the
    last step's output states followed by the new sentences' initial states.
    """

    new_sources: list[np.ndarray]
    relayout: bool
    keep: np.ndarray
    take: np.ndarray
    width: int
    lengths: np.ndarray
    state_index: np.ndarray
    prev_tokens: np.ndarray
    scores: np.ndarray  # float64 running score of each row (0 for greedy rows)
    k: int  # candidates wanted per row


class StepBackend(Protocol):
    """Runs one planned step: returns each row's top ``k`` (scores float64 [N, k], token ids [N, k]),
    sorted by score, lower token id first among equal log-probs."""

    def step(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]: ...

    def reset(self) -> None:
        """Forget all rows (after a failed step)."""


@dataclass
class StepReport:
    finished: list[Sentence]
    dropped: list[Sentence]
    admitted: list[Sentence]
    rows: int  # live rows after this step
    stepped_rows: int  # rows the decoder ran this step
    tokens: int  # tokens generated this step (one per sentence stepped)


_EMPTY = np.zeros(0, dtype=np.int64)
# Padded source positions come in steps of this many: a sentence a little longer than the running set's
# width then rarely forces a re-layout of every row, at the cost of at most 7 masked positions of attention.
WIDTH_STEP = 8


class DecodeScheduler:
    def __init__(
        self,
        backend: StepBackend,
        *,
        max_rows: int,
        max_positions: int,
        bos: int,
        eos: int,
        lazy_retire: bool = False,
        admit_wait_steps: int = 0,
    ) -> None:
        """``lazy_retire``: a finished sentence is answered at once but its rows stay in the running set
        (decoded and ignored) until the next admission or until such rows are a quarter of the set: the
        row re-layout a departure costs (a gather of every row's encoder outputs) is paid once for many.
        ``admit_wait_steps``: while sentences are decoding, newcomers join once room for them has been
        there this many steps or they bring a quarter of the live rows, so the encoder runs on several
        at once. Both trade a few steps of latency for throughput; 0/False is join-and-leave at every step.
        """
        if max_rows < 1 or max_positions < 1 or admit_wait_steps < 0:
            raise ValueError("max_rows and max_positions must be at least 1, admit_wait_steps at least 0")
        self.lazy_retire, self.admit_wait_steps = lazy_retire, admit_wait_steps
        self._steps = 0
        self.backend = backend
        backend.reset()  # rows are the scheduler's: whatever an earlier scheduler left there is not
        self.max_rows, self.max_positions = max_rows, max_positions
        self.bos, self.eos = bos, eos
        self.pending: deque[Sentence] = deque()
        self.live: list[Sentence] = []  # in row order
        self._last_rows = 0  # rows of the last step (what the backend holds)
        self._changed = False  # a sentence left since the last step
        # the next step's inputs, per row of the last step (see ``step``), and its width and top-k size
        self._next_prev = self._next_state = _EMPTY
        self._next_scores = np.zeros(0)
        self._width = self._k = 0
        self._room_since: int | None = None  # the step since which newcomers could join (admit_wait_steps)

    # ---- queue ------------------------------------------------------------------------------------

    def add(self, sentence: Sentence) -> None:
        if sentence.beam_size < 1 or sentence.max_length < 1 or sentence.length < 1:
            raise ValueError(f"bad sentence settings: {sentence!r}")
        self.pending.append(sentence)

    @property
    def idle(self) -> bool:
        return not self.pending and not self.live

    @property
    def rows(self) -> int:
        """Rows the running set holds, finished sentences' rows not yet retired included."""
        return sum(s.rows for s in self.live)

    def _retire(self) -> None:
        """Drop finished sentences' rows from the running set (the next step re-lays the rows out)."""
        if any(s.result is not None for s in self.live):
            self.live = self._without(lambda s: s.result is not None)
            self._changed = True

    def _without(self, leaving: Callable[[Sentence], bool]) -> list[Sentence]:
        """The live sentences without those ``leaving``, the last staying ones moved into their places.

        A leaving sentence's place goes to the last staying sentence of the same number of rows (swap
        remove), so only the moved sentence's rows change position and a backend can copy those few
        rows in place; every other row stays where it is. A place no sentence fits (mixed beam sizes)
        is closed by shifting the rows after it, which costs a backend a gather of the set.
        """
        order = list(self.live)
        i = 0
        while i < len(order):
            if leaving(order[i]):
                while len(order) > i + 1 and leaving(order[-1]):
                    order.pop()  # leaving sentences at the end need no place filled
                if order[-1] is not order[i] and order[-1].rows == order[i].rows:
                    order[i] = order.pop()
            i += 1
        return [s for s in order if not leaving(s)]

    # ---- one step ---------------------------------------------------------------------------------

    def step(self, is_dead: Callable[[Sentence], bool] | None = None) -> StepReport:
        self._steps += 1
        dropped = self._drop(is_dead) if is_dead is not None else []
        admitted = self._admit()
        if self.lazy_retire and 4 * sum(s.rows for s in self.live if s.result is not None) >= max(1, self.rows):
            self._retire()  # finished rows are a quarter of the set (or all of it): re-lay out now
        if not self.live:
            if self._last_rows:
                self.backend.reset()  # nothing carries over: the next sentences start a fresh set of rows
            self._last_rows, self._changed = 0, False
            return StepReport([], dropped, admitted, 0, 0, 0)
        plan = self._plan(admitted)
        cand_scores, cand_tokens = self.backend.step(plan)
        n = len(plan.prev_tokens)
        if cand_scores.shape[0] != n or cand_tokens.shape != cand_scores.shape:
            raise RuntimeError(f"backend returned {cand_scores.shape} candidates for {n} rows")
        # What the next step feeds, row by row (this step's rows): greedy rows continue their own state
        # with their best token; beam rows are overwritten by their sentence's search.
        self._next_prev = cand_tokens[:, 0].copy()
        self._next_state = np.arange(n, dtype=np.int64)
        self._next_scores = np.zeros(n)
        finished = []
        offset = 0
        for sentence in self.live:
            sentence._offset = offset
            if sentence.result is not None:  # finished earlier, rows not retired yet (lazy_retire)
                offset += sentence.rows
                continue
            if sentence.beam_size == 1:
                self._greedy(sentence, int(self._next_prev[offset]))
            else:
                self._beam(sentence, offset, cand_scores, cand_tokens)
            sentence.steps += 1
            offset += sentence.rows
            if sentence.result is not None:
                finished.append(sentence)
        self._last_rows = n
        stepped = len(self.live)
        if finished and not self.lazy_retire:
            self._retire()
        return StepReport(finished, dropped, admitted, self.rows, n, stepped)

    def reset(self) -> list[Sentence]:
        """Forget every sentence (after a failed step); returns those that were live or queued."""
        lost = [*self.live, *self.pending]
        self.live, self.pending = [], deque()
        self._last_rows, self._changed = 0, False
        self.backend.reset()
        return lost

    # ---- admission and layout ---------------------------------------------------------------------

    def _drop(self, is_dead: Callable[[Sentence], bool]) -> list[Sentence]:
        dropped = [s for s in self.live if s.result is None and is_dead(s)]  # the finished are answered
        if dropped:
            gone = {id(s) for s in dropped}
            self.live = self._without(lambda s: id(s) in gone)
            self._changed = True
        if any(is_dead(s) for s in self.pending):
            waiting: deque[Sentence] = deque()
            for s in self.pending:
                (dropped if is_dead(s) else waiting).append(s)
            self.pending = waiting
        return dropped

    def _admit(self) -> list[Sentence]:
        """Newcomers join, oldest first, as many as fit once the finished sentences' rows are gone.

        With ``admit_wait_steps``, while sentences decode, the joiners wait until they would bring a
        quarter of the decoding rows or until ``admit_wait_steps`` steps have passed since room for
        them appeared (each joining costs a re-layout of the whole set and an encoder run). Counting
        from when room appeared, not from a sentence's arrival, is what keeps a deep queue from
        re-laying the set out at every step for one sentence: its oldest has always waited long.
        """
        if not self.pending:
            self._room_since = None
            return []
        decoding = [s for s in self.live if s.result is None]
        decoding_rows = rows = sum(s.rows for s in decoding)
        width = max((s.length for s in decoding), default=0)
        joining = joining_rows = 0
        for head in self.pending:  # the oldest first: a sentence that does not fit waits for rows to free up
            new_rows, new_width = rows + head.rows, max(width, head.length)
            fits = new_rows <= self.max_rows and new_rows * new_width <= self.max_positions
            if not fits and (decoding or joining):
                break  # (one that fits nowhere still runs, alone)
            joining, joining_rows, rows, width = joining + 1, joining_rows + head.rows, new_rows, new_width
        if not joining:
            return []
        if decoding and self.admit_wait_steps:
            if self._room_since is None:  # counted like a newcomer's wait: from before this step
                self._room_since = self._steps - 1
            waited = self._steps - self._room_since
            if waited < self.admit_wait_steps and 4 * joining_rows < decoding_rows:
                return []
        self._room_since = None
        self._retire()  # rows change anyway: finished sentences' rows go with this re-layout
        admitted = [self.pending.popleft() for _ in range(joining)]
        self.live.extend(admitted)
        return admitted

    def _plan(self, admitted: list[Sentence]) -> StepPlan:
        kept = self.live[: len(self.live) - len(admitted)]
        appended_only = not self._changed  # rows only join: the last step's rows are kept, in order
        relayout = bool(admitted) or self._changed
        self._changed = False
        if not relayout:  # the common step: same rows as the last one
            return StepPlan(
                [],
                False,
                _EMPTY,
                _EMPTY,
                self._width,
                _EMPTY,
                self._next_state,
                self._next_prev,
                self._next_scores,
                self._k,
            )
        if kept:
            keep = np.concatenate([np.arange(s._offset, s._offset + s.rows, dtype=np.int64) for s in kept])
            state, tokens, scores = [self._next_state[keep]], [self._next_prev[keep]], [self._next_scores[keep]]
        else:
            keep, state, tokens, scores = _EMPTY, [], [], []
        for j, s in enumerate(admitted):  # all beams start from the sentence's encoder state
            k = s.rows
            state.append(np.full(k, self._last_rows + j, dtype=np.int64))
            tokens.append(np.full(k, self.bos, dtype=np.int64))
            start = np.full(k, -np.inf)
            start[0] = 0.0  # beams start identical: keep one so the first step does not repeat it k times
            s._history = [] if k == 1 else np.zeros((k, 0), dtype=np.int64)
            scores.append(start)
        widest = max(s.beam_size for s in self.live)
        needed = -(-max(s.length for s in self.live) // WIDTH_STEP) * WIDTH_STEP
        if not kept or needed > self._width or (needed < self._width and not appended_only):
            # The width (rounded up to WIDTH_STEP) changes only when it must grow, or shrink with sentences
            # leaving: while the width holds, a backend moves or appends only the rows that change, in
            # place, instead of copying every row to a new width.
            self._width = needed
        self._k = 1 if widest == 1 else 2 * widest
        return StepPlan(
            new_sources=[s.source for s in admitted],
            relayout=True,
            keep=keep,
            take=np.repeat(np.arange(len(admitted), dtype=np.int64), [s.rows for s in admitted])
            if admitted
            else _EMPTY,
            width=self._width,
            lengths=np.repeat(np.array([s.length for s in self.live], dtype=np.int64), [s.rows for s in self.live]),
            state_index=np.concatenate(state),
            prev_tokens=np.concatenate(tokens),
            scores=np.concatenate(scores),
            k=self._k,
        )

    # ---- search, per sentence ---------------------------------------------------------------------

    def _greedy(self, s: Sentence, token: int) -> None:
        s._history.append(token)
        if token == self.eos:
            s.result = s._history[:-1]
        elif len(s._history) >= s.max_length:
            s.result = list(s._history)

    def _beam(self, s: Sentence, offset: int, all_scores: np.ndarray, all_tokens: np.ndarray) -> None:
        """One step of ``translation_search.beam_search`` for one sentence, from its rows' candidates."""
        k, eos, t = s.beam_size, self.eos, s.steps
        width = 2 * k
        flat_scores = all_scores[offset : offset + k, :width].reshape(-1)
        flat_tokens = all_tokens[offset : offset + k, :width].reshape(-1)
        order = np.argsort(-flat_scores, kind="stable")[:width]
        parents = np.zeros(k, dtype=np.int64)
        prev = np.full(k, eos, dtype=np.int64)
        scores = np.full(k, -np.inf)
        alive = 0
        for rank, flat in enumerate(order.tolist()):
            beam, token, score = flat // width, int(flat_tokens[flat]), float(flat_scores[flat])
            if token == eos:
                if rank < k:  # an EOS outside the top k would never have been kept by a k-beam search
                    s._finished.append((score / length_penalty(t + 1, s.alpha), s._history[beam].tolist()))
                continue
            parents[alive], prev[alive], scores[alive] = beam, token, score
            alive += 1
            if alive == k:
                break
        s._history = np.concatenate([s._history[parents], prev[:, None]], axis=1)
        rows = slice(offset, offset + k)
        self._next_state[rows], self._next_prev[rows], self._next_scores[rows] = offset + parents, prev, scores
        scores0 = scores[0]
        best_bound = length_penalty(s.max_length, max(s.alpha, 0.0))
        if s._finished and (len(s._finished) >= k or max(f for f, _ in s._finished) >= scores0 / best_bound):
            s.result = _best(s._finished)
        elif t + 1 >= s.max_length:  # out of steps: live beams compete as they are
            length = s._history.shape[1]
            for beam in range(k):
                if np.isfinite(scores[beam]):
                    s._finished.append((scores[beam] / length_penalty(length, s.alpha), s._history[beam].tolist()))
            s.result = _best(s._finished)


def _best(hyps: Iterable[tuple[float, list[int]]]) -> list[int]:
    hyps = list(hyps)
    return max(hyps, key=lambda h: h[0])[1] if hyps else []


class HostRows:
    """``StepBackend`` in numpy over any model given as two functions: the reference and the toy of tests.

    ``encode(sources)`` returns the new sentences' encoder tensors (each ``[M, S, ...]``, padded to
    their longest source) and their initial decoder state (each ``[M, ...]``);
    ``decode(prev_tokens, state, enc, mask)`` runs one step on row tensors and returns log-probs
    ``[N, V]`` and the next state. Row bookkeeping (keep, take, pad or cut to ``width``, state reorder)
    is the same contract ``rows.onnx`` and the decoder's ``state_index`` implement on a device.
    """

    def __init__(
        self,
        encode: Callable[[list[np.ndarray]], tuple[list[np.ndarray], list[np.ndarray]]],
        decode: Callable[..., tuple[np.ndarray, list[np.ndarray]]],
    ) -> None:
        self.encode, self.decode = encode, decode
        self.reset()

    def reset(self) -> None:
        self.enc: list[np.ndarray] = []
        self.state: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=bool)
        self.relayouts = 0

    def step(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
        new_enc: list[np.ndarray] = []
        if plan.new_sources:
            new_enc, new_state = self.encode(plan.new_sources)
            if self.state:
                self.state = [np.concatenate([a, b]) for a, b in zip(self.state, new_state, strict=True)]
            else:
                self.state = list(new_state)
        if plan.relayout:
            self.relayouts += 1
            kept = [_fit(e[plan.keep], plan.width) for e in self.enc]
            taken = [_fit(e[plan.take], plan.width) for e in new_enc]
            if kept and taken:
                self.enc = [np.concatenate([a, b]) for a, b in zip(kept, taken, strict=True)]
            else:
                self.enc = kept or taken
            self.mask = np.arange(plan.width)[None, :] < plan.lengths[:, None]
        state = [s[plan.state_index] for s in self.state]
        logp, self.state = self.decode(plan.prev_tokens, state, self.enc, self.mask)
        order = np.argsort(-logp, axis=1, kind="stable")[:, : plan.k]
        top = np.take_along_axis(logp, order, axis=1).astype(np.float64)
        return plan.scores[:, None] + top, order.astype(np.int64)


def _fit(x: np.ndarray, width: int) -> np.ndarray:
    """``x`` [N, S, ...] padded with zeros or cut to ``width`` positions on axis 1."""
    out = np.zeros((x.shape[0], width, *x.shape[2:]), dtype=x.dtype)
    n = min(width, x.shape[1])
    out[:, :n] = x[:, :n]
    return out
