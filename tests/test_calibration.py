"""The calibration contract: every pipeline calibrates or says why not; a failure is a WARNING.

Defaults come from the model card's ``serving.cost_model`` (measured at export), not from constants.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lstm_core.cost import UNMEASURED, CostModel
from lstm_core.model_card import ModelCard
from service.pipelines.base import CostProbe, NotCalibrated, unk_items
from service.pipelines.translation import TranslationPipeline
from service.registry import calibrate
from service.repository import check_version
from service.runtime import Runtime, RuntimeOptions
from service.settings import BatchingSettings

REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
BATCHING = BatchingSettings(
    max_batch_size=8, max_batch_tokens=4096, max_delay_ms=0, max_padding_ratio=0.3, max_queue_items=8
)
CARD_COST = CostModel(run=1e-5, step=1e-6, row=1e-6)


class Fake:
    """A pipeline stand-in: ``probe`` is what ``cost_probe`` does, ``run`` what ``run_batch`` does."""

    def __init__(self, probe: Any, run: Any = lambda items: [None] * len(items)) -> None:
        self.card = SimpleNamespace(name="fake", max_length=32)
        self._probe, self._run = probe, run

    def cost_probe(self) -> CostProbe:
        return self._probe()

    def run_batch(self, items: Any) -> list[Any]:
        return self._run(items)


def refuse() -> CostProbe:
    raise NotCalibrated("nothing to time")


def test_a_pipeline_that_says_why_keeps_the_card_model_and_logs_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "service.registry"):
        assert calibrate(Fake(refuse), BATCHING, CARD_COST) is CARD_COST
    [record] = caplog.records
    assert record.levelno == logging.INFO and "nothing to time" in record.getMessage()
    assert "the model card's cost model" in record.getMessage()


def test_a_failing_probe_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    def broken(items: Any) -> list[Any]:
        raise TypeError("the probe's items do not fit this pipeline")

    with caplog.at_level(logging.INFO, "service.registry"):
        assert calibrate(Fake(lambda: CostProbe(unk_items), broken), BATCHING, UNMEASURED) is UNMEASURED
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "TypeError" in record.getMessage()
    assert "an unmeasured cost model" in record.getMessage()


def test_timings_that_do_not_fit_are_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # A batch that costs nothing measurable whatever its size: no per-token or per-row cost to fit.
    with caplog.at_level(logging.INFO, "service.registry"):
        assert calibrate(Fake(lambda: CostProbe(lambda size, length: [])), BATCHING, CARD_COST) is CARD_COST
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_shipped_cards_carry_the_cost_model_export_measured() -> None:
    for name in ("sentiment", "translation"):
        card = ModelCard.load(REPOSITORY / name / "1")
        model = CostModel.from_card(card.serving)
        assert model is not None and model.row > 0, name
    assert CostModel.from_card({}) is None
    assert CostModel.from_card({"cost_model": {"run": "x"}}) is None


def test_translation_calibrates_on_its_own_probe(caplog: pytest.LogCaptureFixture) -> None:
    """Translation's probe (full searches over a real caption) gives a cost model: no fallback, no warning."""
    mv = check_version("translation", "1", REPOSITORY / "translation" / "1")
    assert mv.card is not None
    pipeline = TranslationPipeline(mv.card, mv.folder, Runtime(RuntimeOptions(provider="cpu")))
    with caplog.at_level(logging.INFO, "service.registry"):
        model = calibrate(pipeline, BATCHING, UNMEASURED)
    assert model is not UNMEASURED and model.row > 0
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "translation: batch cost = " in caplog.records[0].getMessage()


@pytest.mark.parametrize(("cuda", "rows"), [(False, 8), (True, 64)])
def test_the_wide_probe_has_the_largest_batch_on_cuda(cuda: bool, rows: int) -> None:
    """A GPU's cost per row falls with the batch: on CUDA the wide probe is ``max_batch_size`` rows, not 32."""
    sizes: list[int] = []

    def run(items: Any) -> list[Any]:
        sizes.append(len(items))
        return [None] * len(items)

    batching = BATCHING.model_copy(update={"max_batch_size": 8 if not cuda else 64})
    calibrate(Fake(lambda: CostProbe(unk_items), run), batching, CARD_COST, cuda=cuda)
    assert max(sizes) == rows
