"""Text → token ids exactly as the models were trained and evaluated: one definition for both sides.

Training, export's checks and the service all call these functions, so a text is encoded, truncated
and filled the same way wherever it is scored (``tests/test_encoding.py`` checks the edge cases).
Normalisation, pre-tokenisation and the source side's trailing ``[EOS]`` live inside each
``tokenizer.json``; what is here is what a tokenizer file cannot say: the length limit and what an
input without any token becomes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Encoding, Tokenizer

from lstm_core.tokens import EOS_ID, UNK_ID


def _encode(tokenizer: Tokenizer, texts: Sequence[str], release_gil: bool = False) -> list[Encoding]:
    # One text: ``encode`` skips the batch machinery (thread pool hand-off), measurable on the hot path,
    # but holds the GIL throughout; ``encode_batch`` releases it (for callers beside a busy event loop).
    if len(texts) == 1 and not release_gil:
        return [tokenizer.encode(texts[0])]
    return tokenizer.encode_batch(list(texts))


def encode_words(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, release_gil: bool = False
) -> list[list[int]]:
    """Word ids per text (sentiment), truncated to ``max_length``; a text with no token is one ``[UNK]``.

    Why ``[UNK]`` and not an empty row: the graph needs a length of at least one, and an unknown word is
    what such a text (only punctuation the tokenizer drops, say) is to the model. ``release_gil``: encode
    even a single text with the call that lets other Python threads run meanwhile (same ids).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    return [enc.ids[:max_length] or [UNK_ID] for enc in _encode(tokenizer, texts, release_gil)]


def encode_source(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Source ids per text (translation), ending in ``[EOS]``, at most ``max_tokens`` long.

    The tokenizer's post-processor appends ``[EOS]``; truncation keeps it. A text with no token (empty
    or only characters the tokenizer drops) becomes ``[UNK, EOS]``, not a bare ``[EOS]``: every source
    the model saw in training had at least one token, so a bare ``[EOS]`` would be out of distribution,
    and this matches the sentiment side, where such a text is one unknown word.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 (one token and [EOS]), got {max_tokens}")
    out = []
    for encoding in _encode(tokenizer, texts):
        ids = encoding.ids
        if len(ids) > max_tokens:
            ids = [*ids[: max_tokens - 1], EOS_ID]
        if len(ids) <= 1:
            ids = [UNK_ID, EOS_ID]
        out.append(ids)
    return out


def decode_targets(tokenizer: Tokenizer, rows: Sequence[Sequence[int]]) -> list[str]:
    """Text of each row of target ids, special tokens dropped: one ``decode`` per row, never ``decode_batch``.

    Why not the batch call: it hands the rows to the tokenizer's thread pool, and on a server whose cores
    are busy with onnxruntime that hand-off costs far more than decoding a caption (1.4 µs alone; the
    step-level decode thread spent 12% of its time in ``decode_batch`` of the one or two sentences that
    finish at a step, beam 4 at c=32 on 2 cores).
    """
    return [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in rows]


# A caption like the training data, to time decoding on input that decodes like real input (the cost probe).
PROBE_SOURCE = "A man in a blue shirt is playing the guitar while two dogs run through the snow near a small house ."


def probe_source(tokenizer: Tokenizer, length: int) -> list[int]:
    """Source ids of exactly ``length`` tokens (``[EOS]`` last) cut from a typical caption, repeated as needed."""
    words = tokenizer.encode(PROBE_SOURCE).ids[:-1]  # without its [EOS]
    body = (words * (length // max(len(words), 1) + 1))[: max(length - 1, 0)]
    return [*body, EOS_ID]
