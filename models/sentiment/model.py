"""The sentiment classifier: embedding -> (bi)LSTM | GRU | RNN -> pooling over real positions -> linear.

Sequences are packed by their real lengths, so no cell ever reads padding: the backward direction starts
at each sentence's last real token, and the exported ONNX recurrent node gets ``sequence_lens``. That is
what makes a sentence's answer independent of what it is batched with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstm_core.tokens import PAD_ID

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# What a run folder holds for export and for teaching (``models/sentiment/train.py`` writes them).
CHECKPOINT = "checkpoint.pt"
TOKENIZER = "tokenizer.json"


@dataclass
class ModelConfig:
    vocab_size: int
    emb_dim: int = 128
    hidden: int = 160
    layers: int = 1
    bidirectional: bool = True
    cell: str = "lstm"
    dropout: float = 0.5
    num_labels: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class SentimentClassifier(nn.Module):
    """Returns logits ``[batch, num_labels]`` from token ids ``[batch, time]`` and lengths ``[batch]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; choose from {sorted(CELLS)}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = CELLS[config.cell](
            config.emb_dim,
            config.hidden,
            num_layers=config.layers,
            bidirectional=config.bidirectional,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        if config.cell == "lstm":
            self._open_forget_gates()
        directions = 2 if config.bidirectional else 1
        # max-pool and mean-pool side by side: the strongest cue and the overall tone both count
        self.classifier = nn.Linear(2 * directions * config.hidden, config.num_labels)

    def _open_forget_gates(self) -> None:
        """Start LSTM forget gates near 1 (bias 1, Jozefowicz et al. 2015) instead of 0.5.

        With forget gates at 0.5 the cell state halves every step and a gradient 30 steps back is ~1e-9 of
        the last one at initialisation; the usual LSTM recipe starts it remembering instead.
        """
        hidden = self.config.hidden
        with torch.no_grad():
            for name, bias in self.rnn.named_parameters():
                if name.startswith("bias_hh"):
                    bias[hidden : 2 * hidden] = 1.0  # PyTorch gate order: input, forget, cell, output

    def encode(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Recurrent outputs ``[batch, time, directions * hidden]``; zeros at padded positions."""
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self.rnn(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.shape[1])
        return outputs

    def pool(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Max and mean over the real positions only (lengths >= 1)."""
        positions = torch.arange(outputs.shape[1], device=outputs.device)
        mask = (positions[None, :] < lengths[:, None]).unsqueeze(-1)
        # recurrent outputs are bounded by tanh, so -2 is below every real value
        maxed = outputs.masked_fill(~mask, -2.0).max(dim=1).values
        mean = (outputs * mask).sum(dim=1) / lengths[:, None].to(outputs.dtype)
        return torch.cat([maxed, mean], dim=-1)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.dropout(self.embedding(input_ids))
        pooled = self.pool(self.encode(embedded, lengths), lengths)
        return self.classifier(self.dropout(pooled))


class ProbabilityHead(nn.Module):
    """What gets exported: the classifier with softmax inside the graph (output ``probabilities``)."""

    def __init__(self, model: SentimentClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(input_ids, lengths), dim=-1)


def load_classifier(run_dir: Path) -> tuple[SentimentClassifier, dict]:
    """A run's selected model (eval mode) and its checkpoint dict (config, weights, max_length, report)."""
    checkpoint = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    model = SentimentClassifier(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, checkpoint
