"""English→German translation: subword tokenizers, an attentional LSTM seq2seq, training and BLEU evaluation."""
