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
