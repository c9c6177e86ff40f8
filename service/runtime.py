"""onnxruntime sessions: provider choice, session options, and the one place that calls ``run``.

Why a wrapper: the provider is chosen once per process (``auto`` = CUDA when onnxruntime-gpu sees a
GPU, else CPU) and every session of every pipeline must get the same deliberate options. On CPU the
service shares its cores with the event loop, so intra-op threads are few and do not spin; on CUDA
outputs are bound through IOBinding so pipelines that keep state on the device (translation's decoder)
can build on the same structure.

It also chooses which precision variant of a model card's graphs to serve (``precision`` setting): ``auto``
takes int8 on CPU and fp16 on CUDA when the card offers them (fp16 only once its export gate ran on
CUDA: a gate run on CPU checks fp16 rounding, not CUDA's kernels), else fp32; a named precision is
served if the card has it and refused otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lstm_core.model_card import ModelCard, Variant
from service.runtime_options import GraphOptimization, PrecisionChoice, ProviderChoice, RuntimeOptions

# RuntimeOptions and its Literals live in runtime_options (settings reads them without loading onnxruntime).
__all__ = [
    "CPU",
    "CUDA",
    "GraphOptimization",
    "PrecisionChoice",
    "ProviderChoice",
    "ProviderUnavailable",
    "Runtime",
    "RuntimeOptions",
    "VariantUnavailable",
    "cuda_available",
    "cuda_provider_options",
]

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderUnavailable(RuntimeError):
    """``provider=cuda`` was asked for but onnxruntime cannot run on a GPU here."""


class VariantUnavailable(RuntimeError):
    """``precision=<p>`` was asked for but the model card has no such variant."""


# What ``precision=auto`` prefers on each provider (fp32 when the card lacks it).
AUTO_PRECISION = {CPU: "int8", CUDA: "fp16"}


def cuda_available(available: Sequence[str] | None = None) -> bool:
    """True when the installed onnxruntime has the CUDA provider (onnxruntime-gpu) and a GPU answers.

    ``available`` replaces ``ort.get_available_providers()`` (tests inject provider lists with it).
    """
    if CUDA not in (ort.get_available_providers() if available is None else available):
        return False
    if available is not None:
        return True
    try:  # the provider can be compiled in without a usable device; ask the driver through ORT's helper
        return ort.get_device().upper() == "GPU"
    except Exception:  # any failure here just means "no GPU"
        return False


def cuda_provider_options(options: RuntimeOptions) -> dict[str, str]:
    """The CUDA execution provider's options: the device, and an arena that grows only by what a run asks.

    onnxruntime's default arena extends in powers of two, so one large batch can reserve twice what it
    needs, and the arena never gives memory back. Several serving processes can share one GPU (one per
    model server, or the test suite's servers on a GPU machine): ``kSameAsRequested`` keeps each one's
    footprint near what it ran, and ``cuda_mem_limit_mb`` caps it, so a run over the cap fails alone
    instead of starving the other processes on the device.
    """
    provider_options = {"device_id": str(options.cuda_device_id), "arena_extend_strategy": "kSameAsRequested"}
    if options.cuda_mem_limit_mb:
        provider_options["gpu_mem_limit"] = str(options.cuda_mem_limit_mb * 1024 * 1024)
    return provider_options


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the ``nvidia-*`` pip wheels when they are where the libraries come from.

    onnxruntime-gpu links CUDA dynamically; in the Docker image the libraries are system-wide, but on a
    machine whose CUDA comes as pip wheels (next to torch, say) the CUDA provider fails to load unless
    they are preloaded. ``preload_dlls`` (onnxruntime >= 1.21) is a no-op where nothing is found.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # best effort: session creation reports a real failure with its own reason
        log.info("onnxruntime.preload_dlls() failed (%s); relying on the system's CUDA libraries", exc)


class Runtime:
    """Creates sessions on the chosen provider and runs them; shared by all pipelines of a process."""

    def __init__(self, options: RuntimeOptions, available_providers: Sequence[str] | None = None) -> None:
        """``available_providers`` stands in for what onnxruntime reports (tests of the provider choice)."""
        self.options = options
        self._local = threading.local()  # run options of the calling thread (``releasing_memory``)
        if options.provider == "cpu":
            self.provider = CPU
        elif cuda_available(available_providers):
            self.provider = CUDA
            _preload_cuda_libraries()
        elif options.provider == "cuda":
            offered = ort.get_available_providers() if available_providers is None else list(available_providers)
            raise ProviderUnavailable(
                f"provider=cuda but onnxruntime offers {offered} "
                "(install the `gpu` extra, onnxruntime-gpu, on a machine with a CUDA GPU)"
            )
        else:
            self.provider = CPU
        log.info("onnxruntime %s: provider %s (asked: %s)", ort.__version__, self.provider, options.provider)

    def choose_variant(self, card: ModelCard) -> Variant:
        """The precision variant of ``card`` to serve on this runtime's provider (see the module docstring).

        Raises ``VariantUnavailable`` when a forced precision is not in the card.
        """
        variants = card.precision_variants()
        asked = self.options.precision
        where = f"{card.name}/{card.version}"
        if asked != "auto":
            if asked not in variants:
                raise VariantUnavailable(
                    f"{where}: precision={asked} but model.json offers {sorted(variants)} "
                    f"(add it with `lstm-serve export variants <version folder>`)"
                )
            chosen = variants[asked]
            if chosen.provider not in (None, self.provider):
                meant = chosen.provider
                log.warning("%s: precision=%s is meant for %s, serving it on %s", where, asked, meant, self.provider)
            return chosen
        preferred = AUTO_PRECISION.get(self.provider, "fp32")
        chosen = variants.get(preferred)
        if chosen is None:
            log.info("%s: no %s variant in model.json; serving fp32", where, preferred)
        elif chosen.gate.get("provider") != self.provider:
            log.warning(
                "%s: the %s variant was gated on %s, not %s; serving fp32 (run `lstm-serve export variants` on a "
                "%s machine, or set LSTM_SERVE_PRECISION=%s to serve it anyway)",
                where, preferred, chosen.gate.get("provider"), self.provider, self.device, preferred,
            )  # fmt: skip
            chosen = None
        if chosen is None:
            if "fp32" not in variants:
                raise VariantUnavailable(f"{where}: precision=auto found neither {preferred} nor fp32 in model.json")
            chosen = variants["fp32"]
        return chosen

    @property
    def device(self) -> str:
        """``cuda`` or ``cpu``: where OrtValues of this runtime live."""
        return "cuda" if self.provider == CUDA else "cpu"

    @property
    def binding_device(self) -> tuple[str, int] | None:
        """Where IOBinding keeps outputs and state: ``("cuda", id)`` on a GPU, else None (plain ``run``).

        ``RuntimeOptions.io_binding=True`` binds on the CPU too, so both IOBinding paths (``run`` and
        translation's device stepper) run and are checked against the plain path on any machine.
        """
        if self.provider == CUDA:
            return ("cuda", self.options.cuda_device_id)
        return ("cpu", 0) if self.options.io_binding else None

    def session_options(self, intra_op_threads: int | None = None) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = _OPT_LEVELS[self.options.graph_optimization]
        so.intra_op_num_threads = self.options.intra_op_threads if intra_op_threads is None else intra_op_threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads burn the cores the event loop and tokenizer need between batches.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        return so

    def session(self, path: Path, intra_op_threads: int | None = None) -> ort.InferenceSession:
        """A session for one ONNX file on this runtime's provider (CPU as the fallback after CUDA).

        ``intra_op_threads`` overrides the runtime's for this session (step-level decoding's own)."""
        if self.provider == CUDA:
            providers: list = [(CUDA, cuda_provider_options(self.options)), CPU]
        else:
            providers = [CPU]
        options = self.session_options(intra_op_threads)
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        used = sess.get_providers()[0]
        if used != self.provider:
            # onnxruntime-gpu can be installed where no usable GPU or CUDA library is: it then falls back.
            if self.options.provider == "cuda":
                raise ProviderUnavailable(f"{path.name}: provider=cuda but onnxruntime runs it on {used}")
            log.warning(
                "%s: CUDA unavailable at session creation, onnxruntime uses %s; serving on CPU", path.name, used
            )
            self.provider = CPU  # from now on: plain session.run (valid for any session), CPU in model_info
        return sess

    def run(
        self, session: ort.InferenceSession, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]
    ) -> list[np.ndarray]:
        """Run a session and return numpy outputs.

        CPU: plain ``session.run``. CUDA (or ``io_binding`` on CPU): IOBinding, so inputs are copied once
        and outputs are allocated on the device by onnxruntime (no host round trip inside the graph) and
        copied back once.
        """
        device = self.binding_device
        run_options = getattr(self._local, "run_options", None)
        if device is None:
            return session.run(list(output_names), dict(feeds), run_options)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in output_names:
            binding.bind_output(name, *device)
        session.run_with_iobinding(binding, run_options)
        return binding.copy_outputs_to_cpu()

    @contextmanager
    def releasing_memory(self) -> Iterator[None]:
        """Runs of the calling thread inside this block give back the arena memory they leave unused.

        onnxruntime's arenas keep every region a run allocated and never return it. Warm-up and cost
        calibration run full batches (1,024 rows on CUDA, at up to 128 tokens), and serving often never
        needs that much again: on the H100 one test server held gigabytes of GPU memory and eight of them
        filled its 80 GB. One small run with ``memory.enable_memory_arena_shrinkage`` frees the regions
        nothing uses; on CPU, after a 1,024-row warm-up of the sentiment graph, 828 MiB went back.
        """
        arenas = f"cpu:0;gpu:{self.options.cuda_device_id}" if self.provider == CUDA else "cpu:0"
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
        self._local.run_options = options
        try:
            yield
        finally:
            self._local.run_options = None
