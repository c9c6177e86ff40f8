"""SST-2 sentiment: data, tokenizer, (bi)LSTM/GRU/RNN classifier, training, evaluation, cell comparison."""

LABELS = ["negative", "positive"]
