"""Training-time and serving-time encoding agree on the edge cases (the shipped tokenizers and pipelines).

Training (``models``) and the service both call ``lstm_core.encoding``; these tests hold the served
pipelines' items to what training and evaluation computed for the same texts, on the inputs where the
two copies used to differ (a text that is only whitespace became ``[UNK, EOS]`` when served and a bare
``[EOS]`` in training) and on truncation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

import models.sentiment.train as sentiment_training
import models.translation.decode as translation_evaluation
import models.translation.train as translation_training
from lstm_core import encoding
from lstm_core.tokens import EOS_ID, UNK_ID
from service.pipelines.sentiment import SentimentPipeline
from service.pipelines.translation import TranslateParams, TranslationPipeline
from service.repository import check_version
from service.runtime import Runtime, RuntimeOptions

REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
EDGE_TEXTS = [
    " ",  # only whitespace: nothing but [EOS] from the source tokenizer, no token at all from the word one
    "\t\n  ",
    "🙂",  # outside both vocabularies
    "!!!",
    "A dog.",
    " ".join(["word"] * 300),  # longer than max_length: truncated (the source keeps its [EOS])
    "A man in a blue shirt is playing the guitar.",
]


def pipeline(name: str):
    mv = check_version(name, "1", REPOSITORY / name / "1")
    assert mv.problem is None and mv.card is not None, mv.problem
    cls = {"sentiment": SentimentPipeline, "translation": TranslationPipeline}[name]
    return cls(mv.card, mv.folder, Runtime(RuntimeOptions(provider="cpu")))


def test_training_and_serving_call_the_one_encoding() -> None:
    assert translation_training.encode_source is encoding.encode_source
    assert translation_evaluation.encode_source is encoding.encode_source
    assert sentiment_training.encode_words is encoding.encode_words


def test_translation_source_ids_served_equal_training_ids() -> None:
    served = pipeline("translation")
    limit = served.card.max_length
    items = served.preprocess(EDGE_TEXTS, TranslateParams())
    trained = encoding.encode_source(
        Tokenizer.from_file(str(served.folder / "source_tokenizer.json")), EDGE_TEXTS, limit
    )
    assert [item.data.tolist() for item in items] == trained
    for ids in trained:
        assert ids[-1] == EOS_ID and 2 <= len(ids) <= limit
    assert trained[0] == trained[1] == [UNK_ID, EOS_ID]  # no token at all: one unknown word, never a bare [EOS]
    assert len(trained[5]) == limit


def test_sentiment_word_ids_served_equal_training_ids() -> None:
    served = pipeline("sentiment")
    limit = served.card.max_length
    items = served.preprocess(EDGE_TEXTS, served.wire.params())
    trained = encoding.encode_words(Tokenizer.from_file(str(served.folder / "tokenizer.json")), EDGE_TEXTS, limit)
    assert [item.data.tolist() for item in items] == trained
    assert [item.length for item in items] == [len(ids) for ids in trained]
    assert trained[0] == trained[1] == [UNK_ID]
    assert len(trained[5]) == limit


def test_sentiment_items_tokenised_in_the_batch_thread_equal_preprocessed_ones() -> None:
    """A single-process server leaves a single text's tokenising to the batcher's thread (``preprocess_deferred``
    then ``tokenize``): the items must be exactly what ``preprocess`` makes, edge cases included."""
    served = pipeline("sentiment")
    params = served.wire.params()
    expected = served.preprocess(EDGE_TEXTS, params)
    deferred = [item for text in EDGE_TEXTS for item in served.preprocess_deferred([text], params)]
    assert all(item.data is None and item.text is not None for item in deferred)
    served.tokenize(deferred)
    assert [(item.data.tolist(), item.length, item.key, item.text) for item in deferred] == [
        (item.data.tolist(), item.length, item.key, None) for item in expected
    ]
    several = served.preprocess_deferred(EDGE_TEXTS, params)  # several texts: tokenised at once, as preprocess does
    assert [item.data.tolist() for item in several] == [item.data.tolist() for item in expected]


def test_one_text_and_a_batch_encode_alike() -> None:
    tokenizer = Tokenizer.from_file(str(REPOSITORY / "translation" / "1" / "source_tokenizer.json"))
    one_by_one = [encoding.encode_source(tokenizer, [text], 128)[0] for text in EDGE_TEXTS]
    assert one_by_one == encoding.encode_source(tokenizer, EDGE_TEXTS, 128)


def test_target_rows_decode_as_the_batch_call_decodes_them() -> None:
    tokenizer = Tokenizer.from_file(str(REPOSITORY / "translation" / "1" / "target_tokenizer.json"))
    german = ["Ein Mann spielt Gitarre.", "Zwei Hunde rennen durch den Schnee.", ""]
    rows = [tokenizer.encode(text).ids for text in german] + [[], [EOS_ID], [UNK_ID, EOS_ID]]
    decoded = encoding.decode_targets(tokenizer, rows)
    assert decoded == tokenizer.decode_batch(rows, skip_special_tokens=True)
    assert decoded[:2] == german[:2] and decoded[3] == ""


@pytest.mark.parametrize("limit", [0, 1])
def test_limits_too_small_for_a_token_and_eos_are_refused(limit: int) -> None:
    tokenizer = Tokenizer.from_file(str(REPOSITORY / "translation" / "1" / "source_tokenizer.json"))
    with pytest.raises(ValueError):
        encoding.encode_source(tokenizer, ["A dog."], limit)
