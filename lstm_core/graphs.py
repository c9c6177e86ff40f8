"""The exported ONNX graphs' file names and input/output names: what export writes, what serving feeds.

Written once here so export (which names the graphs' tensors) and the service (which feeds them) cannot
disagree; the model card's ``graphs`` block records the same names per version folder.
"""

from __future__ import annotations

# Sentiment: one graph, softmax inside. input_ids INT64 [batch, time], lengths INT64 [batch] -> FP32 [batch, labels].
SENTIMENT_FILE = "model.onnx"
SENTIMENT_INPUTS = ("input_ids", "lengths")
SENTIMENT_OUTPUTS = ("probabilities",)

# Translation: the encoder once per batch, then the one-step decoder once per output token.
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
ENCODER_INPUTS = ("src_ids", "src_lengths")
ENCODER_OUTPUTS = ("enc_out", "enc_keys", "h", "c")
DECODER_INPUTS = ("prev_token", "state_index", "h", "c", "enc_out", "enc_keys", "src_mask")
DECODER_OUTPUTS = ("log_probs", "h_out", "c_out")

# Step-level decoding (``lstm_core.decode_scheduler``): two small graphs beside the decoder, built without
# torch by ``export/decode_graphs.py``, so the row state and the top-k stay wherever the decoder runs.
# rows.onnx: the running set's row tensors rebuilt when sentences join or leave. Keeps rows ``keep`` of
# the current ones and appends rows ``take`` of the newly encoded sentences, both padded or cut to
# ``width`` source positions; the mask comes from each row's source length; the decoder state of the
# newly encoded sentences is appended after the current one (the decoder's ``state_index`` picks rows).
ROWS_FILE = "rows.onnx"
ROWS_INPUTS = (
    "enc_out",
    "enc_keys",
    "keep",
    "new_enc_out",
    "new_enc_keys",
    "take",
    "width",
    "lengths",
    "h",
    "c",
    "new_h",
    "new_c",
)
ROWS_OUTPUTS = ("rows_enc_out", "rows_enc_keys", "rows_src_mask", "rows_h", "rows_c")
# topk.onnx: the best ``k`` next tokens of each row and their scores (row score + log-prob, in float64
# as the host search adds them), so only [rows, k] values leave the device instead of [rows, vocab].
TOPK_FILE = "topk.onnx"
TOPK_INPUTS = ("log_probs", "scores", "k")
TOPK_OUTPUTS = ("cand_scores", "cand_tokens")
