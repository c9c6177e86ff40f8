"""Word-level tokenizers that live in one ``tokenizer.json``, shared by training and serving.

The service loads the very file training wrote (``tokenizers`` has no torch dependency), so there is
one definition of tokenization. For SST-2 that definition includes a normaliser and pre-tokeniser
that turn raw user text ("It's a charming, often affecting journey!") into the lower-cased,
PTB-tokenised form the treebank was written in ("it 's a charming , often affecting journey !").
The same steps also run over the training text itself; they are idempotent on PTB text, so training
and serving see identical tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from lstm_core.tokens import PAD, PAD_ID, UNK, UNK_ID

# PTB splits these clitics off the word before them: "it's" -> "it 's", "don't" -> "do n't".
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")

# Pieces the pre-tokeniser isolates inside a whitespace-separated word. Alternatives are tried left to
# right at each position, so "..." wins over ".". A period only splits off at the end of a word and not
# after a known abbreviation, an initial or an initialism ("mr.", "j.", "u.s."), which PTB keeps whole; a
# comma inside a number ("1,000") stays; an apostrophe splits off only at the end of a word ("critics'");
# "/", "&" and "*" stay inside words ("and/or", "r&b", "***") as the treebank has them.
_PUNCTUATION = (
    r"\.\.\.|--|[!?;:\"()\[\]{}$]|,(?![0-9])|'$|"
    r"(?<!^mr|^mrs|^ms|^dr|^vs|^st|^jr|^sr|^co|^inc|^ltd|^etc|^no|^[a-z]|[a-z]\.[a-z])\.$"
)


def ptb_normalizer() -> normalizers.Normalizer:
    """Unicode folding, lower case, one spelling per quote, clitics split off as PTB does.

    Quotes: the treebank writes ``...'' and `...'; users type "..." and '...'; all become '"' and "'".
    """
    steps: list[normalizers.Normalizer] = [
        normalizers.NFKC(),
        normalizers.Replace(Regex("[\u2018\u2019\u201b`]"), "'"),
        normalizers.Replace(Regex("[\u201c\u201d\u201f]"), '"'),
        normalizers.Lowercase(),
        normalizers.Replace("''", ' " '),
        normalizers.Replace(Regex("(?<![a-z])n't\\b"), " n't"),  # already split ("do n't"): unchanged
        normalizers.Replace(Regex("(?<=[a-z])n't\\b"), " n't"),  # "don't" -> "do n't", "can't" -> "ca n't"
    ]
    steps += [normalizers.Replace(Regex(f"(?<=[a-z0-9]){clitic}\\b"), f" {clitic}") for clitic in _CLITICS]
    return normalizers.Sequence(steps)


def ptb_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on whitespace, then isolate punctuation glued to words."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(_PUNCTUATION), behavior="isolated")]
    )


def train_word_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """A WordLevel tokenizer over the PTB normalisation, ``[PAD]`` = 0 and ``[UNK]`` = 1.

    No padding or truncation is configured inside it: ``lstm_core.encoding.encode_words`` truncates and
    ``lstm_core.padding.pad_batch`` pads, for training and serving alike, so the saved file carries only
    the text -> ids definition.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = ptb_normalizer()
    tokenizer.pre_tokenizer = ptb_pre_tokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.token_to_id(PAD) != PAD_ID or tokenizer.token_to_id(UNK) != UNK_ID:
        raise RuntimeError("special tokens did not get ids 0 ([PAD]) and 1 ([UNK])")
    return tokenizer
