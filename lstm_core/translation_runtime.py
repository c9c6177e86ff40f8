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
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lstm_core.cost import ProbeShape
from lstm_core.graphs import DECODER_FILE, DECODER_OUTPUTS, ENCODER_FILE, ENCODER_OUTPUTS
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
