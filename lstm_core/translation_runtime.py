"""The exported translation model under onnxruntime: encoder once, then one decoder step per token.

numpy + onnxruntime only (never torch): export runs it for parity and BLEU, the service to serve, so
what export measured is what is served. ``Seq2SeqRuntime.stepper`` encodes a batch and returns the
``step`` function the shared search (``translation_search``) drives. On CPU the
step is a plain ``session.run``; when the decoder session runs on CUDA, the encoder states and the
decoder state stay on the GPU between steps through IOBinding — per step only the previous tokens and
the beam reorder index go up and the log-probabilities come down (the search picks tokens on the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lstm_core.cost import ProbeShape
from lstm_core.decode_scheduler import StepPlan
from lstm_core.graphs import (
    DECODER_FILE,
    DECODER_OUTPUTS,
    ENCODER_FILE,
    ENCODER_OUTPUTS,
    ROWS_FILE,
    ROWS_OUTPUTS,
    TOPK_FILE,
    TOPK_OUTPUTS,
)
from lstm_core.padding import pad_batch
from lstm_core.tokens import BOS_ID, EOS_ID, PAD_ID
from lstm_core.translation_search import StepFn, beam_search, greedy_search, output_limit

# Cost probe batches for translation: a few short sentences, few repeats. Decoding costs far more per
# token than sentiment's one pass, and every server start (and every test server) pays for the probe.
COST_PROBE = ProbeShape(length=12, size=4, repeats=3)


class _HostStepper:
    """CPU path: every step is one ``session.run`` on numpy arrays."""

    def __init__(self, decoder: ort.InferenceSession, enc: dict[str, np.ndarray]) -> None:
        self.decoder = decoder
        self.fixed = {"enc_out": enc["enc_out"], "enc_keys": enc["enc_keys"], "src_mask": enc["src_mask"]}
        self.h, self.c = enc["h"], enc["c"]

    def __call__(self, prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        feeds = {"prev_token": prev_tokens, "state_index": state_index, "h": self.h, "c": self.c, **self.fixed}
        log_probs, self.h, self.c = self.decoder.run(list(DECODER_OUTPUTS), feeds)
        return log_probs


class _DeviceStepper:
    """Device path: encoder states bound once, decoder state kept as OrtValues on ``device`` between steps.

    ``device`` is ``(type, id)``: ``("cuda", n)`` in service on a GPU; ``("cpu", 0)`` runs the very same
    IOBinding code on any machine, which is how CI tests it against the host path.
    """

    def __init__(self, decoder: ort.InferenceSession, enc: dict[str, np.ndarray], device: tuple[str, int]) -> None:
        self.decoder, (self.device_type, self.device_id) = decoder, device
        self.binding = decoder.io_binding()
        for name in ("enc_out", "enc_keys", "src_mask"):
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(enc[name], *device))
        self.h = ort.OrtValue.ortvalue_from_numpy(enc["h"], *device)
        self.c = ort.OrtValue.ortvalue_from_numpy(enc["c"], *device)

    def __call__(self, prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        b = self.binding
        b.bind_cpu_input("prev_token", prev_tokens)
        b.bind_cpu_input("state_index", state_index)
        b.bind_ortvalue_input("h", self.h)
        b.bind_ortvalue_input("c", self.c)
        b.bind_output("log_probs", "cpu")
        b.bind_output("h_out", self.device_type, self.device_id)
        b.bind_output("c_out", self.device_type, self.device_id)
        self.decoder.run_with_iobinding(b)
        log_probs, self.h, self.c = b.get_outputs()
        return log_probs.numpy()


class Seq2SeqRuntime:
    """Encoder and one-step decoder sessions of one version folder."""

    def __init__(
        self, encoder: ort.InferenceSession, decoder: ort.InferenceSession, device: tuple[str, int] | None = None
    ) -> None:
        """``device``: keep the decoder state there between steps (IOBinding); None: plain ``run`` on numpy."""
        self.encoder, self.decoder, self.device = encoder, decoder, device

    @classmethod
    def from_folder(cls, folder: Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Seq2SeqRuntime:
        """Sessions with default options (export checks and tests; the service builds its own)."""
        sessions = [
            ort.InferenceSession(str(folder / f), providers=list(providers)) for f in (ENCODER_FILE, DECODER_FILE)
        ]
        return cls(*sessions)

    @property
    def provider(self) -> str:
        return self.decoder.get_providers()[0]

    def encode(self, src_ids: np.ndarray, lengths: np.ndarray, copies: int) -> dict[str, np.ndarray]:
        """Encoder outputs plus the source mask, each row repeated ``copies`` times (one per beam)."""
        outs = self.encoder.run(list(ENCODER_OUTPUTS), {"src_ids": src_ids, "src_lengths": lengths})
        enc = dict(zip(ENCODER_OUTPUTS, outs, strict=True))
        enc["src_mask"] = src_ids != PAD_ID
        return {k: np.repeat(v, copies, axis=0) if copies > 1 else v for k, v in enc.items()}

    def stepper(self, src_ids: np.ndarray, lengths: np.ndarray, copies: int = 1) -> StepFn:
        enc = self.encode(src_ids, lengths, copies)
        if self.device is not None:
            return _DeviceStepper(self.decoder, enc, self.device)
        return _HostStepper(self.decoder, enc)

    def search(
        self, rows: Sequence[Sequence[int]], beam_size: int = 1, max_length: int = 128, alpha: float = 0.6
    ) -> list[list[int]]:
        """Target ids for a batch of source id lists (each ending in EOS): greedy when ``beam_size`` is 1.

        ``max_length`` is further limited by the longest source (``output_limit``), as in training's evaluation.
        """
        src_ids, lengths = pad_batch([np.asarray(r, dtype=np.int64) for r in rows], PAD_ID)
        max_length = output_limit(max_length, int(lengths.max()))
        step = self.stepper(src_ids, lengths, beam_size)
        if beam_size == 1:
            return greedy_search(step, len(rows), max_length, BOS_ID, EOS_ID)
        return beam_search(step, len(rows), beam_size, max_length, BOS_ID, EOS_ID, alpha)


@dataclass(frozen=True, slots=True)
class Device:
    """Where a runtime's OrtValues live, as onnxruntime names it: ``("cpu", 0)``, ``("cuda", 1)``, ..."""

    type: str = "cpu"
    id: int = 0


class DeviceRows:
    """The step-level scheduler's backend on onnxruntime, every tensor kept on one ``Device``.

    Encoder outputs, the running set's row tensors, the decoder state and the log-probs are OrtValues
    on ``device`` bound through IOBinding; ``rows.onnx`` rebuilds the rows when sentences join or leave
    and ``topk.onnx`` reduces each row's log-probs to its best ``k`` candidates. Per step only the
    token ids, the state index, the running scores and the row bookkeeping go to the device, and
    ``[rows, k]`` candidates come back. Bound to ``Device("cpu")`` the same code runs in CI.

    On CPU the rows are re-laid out in numpy instead (``host_rows``, the default there): the encoder
    outputs live in buffers with spare rows, so joining sentences are written after the rows and the
    rows of a sentence moved into a leaver's place are copied there, in place; any other change (a new
    width, a shift) costs one gather. ``rows.onnx`` copies every row four times (Gather, Pad, Slice,
    Concat) at each change: 17% of the decode thread at beam 4, c=32 on 2 cores. The decoder sees the
    same tensors either way (``tests/test_device_seam.py``).
    """

    def __init__(
        self,
        encoder: ort.InferenceSession,
        decoder: ort.InferenceSession,
        rows: ort.InferenceSession,
        topk: ort.InferenceSession,
        device: Device = Device(),
        host_argmax: bool | None = None,
        host_rows: bool | None = None,
    ) -> None:
        self.encoder, self.decoder, self.rows_graph, self.topk = encoder, decoder, rows, topk
        self.device = device
        # On CPU the log-probs are host memory already, and numpy's vectorised argmax is 30-50× faster
        # than onnxruntime's CPU TopK/ArgMax at k = 1 (0.008 vs 0.27 ms for 32 rows × 6,000): greedy-only
        # steps take their best token there. Wider top-k (beams) always runs in topk.onnx.
        self.host_argmax = device.type == "cpu" if host_argmax is None else host_argmax
        self.host_rows = device.type == "cpu" if host_rows is None else host_rows
        if self.host_rows and device.type != "cpu":
            raise ValueError(f"host_rows needs rows in host memory, not on {device.type}")
        self._bindings = {
            name: s.io_binding() for name, s in (("enc", encoder), ("dec", decoder), ("rows", rows), ("topk", topk))
        }
        self._empty: dict[tuple, ort.OrtValue] = {}
        self._outputs: tuple[int, list[ort.OrtValue]] | None = None  # rows -> log_probs, h and c twice
        self.reset()

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        device: Device = Device(),
        host_argmax: bool | None = None,
        host_rows: bool | None = None,
    ) -> DeviceRows:
        files = (ENCODER_FILE, DECODER_FILE, ROWS_FILE, TOPK_FILE)
        sessions = [ort.InferenceSession(str(folder / f), providers=list(providers)) for f in files]
        return cls(*sessions, device=device, host_argmax=host_argmax, host_rows=host_rows)

    def reset(self) -> None:
        self.enc_out = self.enc_keys = self.src_mask = self.h = self.c = None
        self._outputs = None
        self._host: tuple[np.ndarray, np.ndarray, int] | None = None  # host_rows: enc_out, enc_keys buffers, rows used

    def _bind_out(self, binding: ort.IOBinding, names: Sequence[str]) -> None:
        for name in names:
            binding.bind_output(name, self.device.type, self.device.id)

    def _empty_like(self, value: ort.OrtValue, width: int | None = None) -> ort.OrtValue:
        """A zero-row OrtValue on the device with ``value``'s trailing shape (one position if ``width``)."""
        shape = (0, *(([width] if width else []) + value.shape()[2 if width else 1 :]))
        if shape not in self._empty:
            self._empty[shape] = ort.OrtValue.ortvalue_from_shape_and_type(
                shape, np.float32, self.device.type, self.device.id
            )
        return self._empty[shape]

    def _decoder_outputs(self, rows: int) -> tuple[ort.OrtValue, ort.OrtValue, ort.OrtValue]:
        """Preallocated decoder outputs for ``rows`` rows, the state double-buffered.

        Binding buffers that already exist skips an allocation and three wrappers per step (a tenth of
        a one-row step on CPU). The state is written to the buffer it is not read from.
        """
        if self._outputs is None or self._outputs[0] != rows:
            vocab, hidden = self.decoder.get_outputs()[0].shape[-1], self.h.shape()[-1]
            if not isinstance(vocab, int):
                raise ValueError(f"{DECODER_FILE}: log_probs needs a fixed vocabulary axis, got {vocab!r}")

            def alloc(*shape: int) -> ort.OrtValue:
                return ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device.type, self.device.id)

            self._outputs = (rows, [alloc(rows, vocab), *(alloc(rows, hidden) for _ in range(4))])
        log_probs, h0, h1, c0, c1 = self._outputs[1]
        return log_probs, (h1 if self.h is h0 else h0), (c1 if self.c is c0 else c0)

    def _encode(self, sources: list[np.ndarray]) -> list[ort.OrtValue]:
        src_ids, lengths = pad_batch(sources, PAD_ID)
        b = self._bindings["enc"]
        b.bind_cpu_input("src_ids", src_ids)
        b.bind_cpu_input("src_lengths", lengths)
        self._bind_out(b, ENCODER_OUTPUTS)
        self.encoder.run_with_iobinding(b)
        return b.get_outputs()  # enc_out, enc_keys, h, c

    def _relayout(self, plan: StepPlan, new: list[ort.OrtValue] | None) -> None:
        b = self._bindings["rows"]
        if new is None:
            new_out, new_keys = self._empty_like(self.enc_out, 1), self._empty_like(self.enc_keys, 1)
            new_h, new_c = self._empty_like(self.h), self._empty_like(self.c)
        else:
            new_out, new_keys, new_h, new_c = new
        if self.enc_out is None:
            enc_out, enc_keys = self._empty_like(new_out, 1), self._empty_like(new_keys, 1)
            h, c = self._empty_like(new_h), self._empty_like(new_c)
        else:
            enc_out, enc_keys, h, c = self.enc_out, self.enc_keys, self.h, self.c
        for name, value in (
            ("enc_out", enc_out),
            ("enc_keys", enc_keys),
            ("new_enc_out", new_out),
            ("new_enc_keys", new_keys),
            ("h", h),
            ("c", c),
            ("new_h", new_h),
            ("new_c", new_c),
        ):
            b.bind_ortvalue_input(name, value)
        b.bind_cpu_input("keep", plan.keep)
        b.bind_cpu_input("take", plan.take)
        b.bind_cpu_input("width", np.array([plan.width], dtype=np.int64))
        b.bind_cpu_input("lengths", plan.lengths)
        self._bind_out(b, ROWS_OUTPUTS)
        self.rows_graph.run_with_iobinding(b)
        self.enc_out, self.enc_keys, self.src_mask, self.h, self.c = b.get_outputs()

    def _relayout_host(self, plan: StepPlan, new: list[ort.OrtValue] | None) -> None:
        """``rows.onnx``'s contract in numpy, on buffers that keep spare rows (``host_rows``)."""
        kept, total, width = len(plan.keep), len(plan.keep) + len(plan.take), plan.width
        new_arrays = [v.numpy() for v in new] if new is not None else None  # views: used before ``new`` goes
        old = self._host
        moved = np.flatnonzero(plan.keep != np.arange(kept))  # rows that change place (swap-removed sentences)
        in_place = (
            old is not None
            and old[0].shape[1] == width
            and old[0].shape[0] >= total
            and kept <= old[2]
            and (moved.size == 0 or int(plan.keep[moved].min()) >= kept)  # read from beyond the rows kept
        )
        buffers = []
        for i in range(2):  # enc_out, enc_keys
            if in_place:
                buffer = old[i]
                if moved.size:  # before the appends below, which may overwrite those source rows
                    buffer[moved] = buffer[plan.keep[moved]]
            else:
                dim = (new_arrays or old)[i].shape[2]
                buffer = np.empty((total + total // 2 + 8, width, dim), dtype=np.float32)
                if kept:
                    _gather_fit(old[i][: old[2]], plan.keep, buffer[:kept])
            if new_arrays is not None and total > kept:
                _gather_fit(new_arrays[i], plan.take, buffer[kept:total])
            buffers.append(buffer)
        self._host = (buffers[0], buffers[1], total)
        self.enc_out, self.enc_keys = (ort.OrtValue.ortvalue_from_numpy(b[:total]) for b in buffers)
        self.src_mask = ort.OrtValue.ortvalue_from_numpy(np.arange(width)[None, :] < plan.lengths[:, None])
        if new_arrays is not None:  # the new sentences' initial states follow the last step's states
            h, c = (
                np.concatenate([last.numpy(), fresh]) if last is not None else fresh.copy()
                for last, fresh in ((self.h, new_arrays[2]), (self.c, new_arrays[3]))
            )
            self.h, self.c = ort.OrtValue.ortvalue_from_numpy(h), ort.OrtValue.ortvalue_from_numpy(c)

    def step(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
        new = self._encode(plan.new_sources) if plan.new_sources else None
        b = self._bindings["dec"]
        if plan.relayout:
            (self._relayout_host if self.host_rows else self._relayout)(plan, new)
            for name, value in (("enc_out", self.enc_out), ("enc_keys", self.enc_keys), ("src_mask", self.src_mask)):
                b.bind_ortvalue_input(name, value)  # stays bound until the rows change again
        b.bind_cpu_input("prev_token", plan.prev_tokens)
        b.bind_cpu_input("state_index", plan.state_index)
        b.bind_ortvalue_input("h", self.h)
        b.bind_ortvalue_input("c", self.c)
        log_probs, h, c = self._decoder_outputs(len(plan.prev_tokens))
        b.bind_ortvalue_output("log_probs", log_probs)
        b.bind_ortvalue_output("h_out", h)
        b.bind_ortvalue_output("c_out", c)
        self.decoder.run_with_iobinding(b)
        self.h, self.c = h, c
        if plan.k == 1 and self.host_argmax:
            logp = log_probs.numpy()
            tokens = logp.argmax(axis=1)
            scores = plan.scores + logp[np.arange(len(tokens)), tokens]
            return scores[:, None], tokens[:, None]
        t = self._bindings["topk"]
        t.bind_ortvalue_input("log_probs", log_probs)
        t.bind_cpu_input("scores", plan.scores)
        t.bind_cpu_input("k", np.array([plan.k], dtype=np.int64))
        for name in TOPK_OUTPUTS:
            t.bind_output(name, "cpu")
        self.topk.run_with_iobinding(t)
        cand_scores, cand_tokens = t.get_outputs()
        return cand_scores.numpy(), cand_tokens.numpy()


def _gather_fit(source: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
    """``out[:]`` = rows ``index`` of ``source`` [N, S, D], padded with zeros or cut to ``out``'s positions.

    ``mode="clip"`` lets ``np.take`` write into ``out`` directly (the default mode buffers it: one more copy).
    """
    width, length = out.shape[1], source.shape[1]
    if length == width:
        np.take(source, index, axis=0, out=out, mode="clip")
        return
    n = min(width, length)
    np.take(source[:, :n], index, axis=0, out=out[:, :n], mode="clip")
    out[:, n:] = 0
