"""The special tokens and their ids, fixed for every tokenizer of the project.

Training creates them in this order (so they get ids 0..3), export records them in the model card, and
serving pads, fills empty inputs and starts and stops decoding with them. The word-level sentiment
tokenizer has only the first two.
"""

from __future__ import annotations

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # index = id
