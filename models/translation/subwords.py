"""Subword (BPE) tokenizers for source and target, trained on the training split only.

Named ``subwords`` rather than ``tokenizers`` so it never shadows the ``tokenizers`` library. Each
tokenizer is a self-contained ``tokenizer.json``: the service loads it with nothing but the
``tokenizers`` library, so normalisation, special tokens and detokenisation live inside the file and
cannot drift between training and serving.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lstm_core.tokens import EOS, EOS_ID, SPECIAL_TOKENS, UNK


def train_tokenizer(texts: Iterable[str], vocab_size: int, append_eos: bool) -> Tokenizer:
    """A case-preserving BPE tokenizer with Metaspace pre-tokenisation and decoding.

    Metaspace keeps word boundaries inside the tokens (``▁``), so ``decode(ids)`` gives back normal
    text — the exact string sacrebleu scores. ``append_eos`` (the source side) makes ``encode`` add
    ``[EOS]`` itself; ``lstm_core.encoding.encode_source`` truncates, for training and serving alike.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=2)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if append_eos:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, EOS_ID)])
    for token, expected in zip(SPECIAL_TOKENS, range(4), strict=True):
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected}")
    return tokenizer


def decode_target(tokenizer: Tokenizer, sequences: Iterable[list[int]]) -> list[str]:
    """Detokenised strings; special tokens (BOS/EOS/PAD) are dropped by the decoder."""
    return tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=True)
