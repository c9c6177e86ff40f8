"""Attentional seq2seq: bidirectional recurrent encoder, recurrent decoder with Luong (general) attention.

The decoder reads only the previous token and its own state (no input feeding), so teacher-forced
training runs the decoder RNN over the whole target in one call and computes attention for all steps
as two batched matmuls — several times faster on a CPU than a per-step loop — while one decoding
step (``decode_step``) uses exactly the same modules, so the exported one-step graph is the trained model.
``cell`` chooses LSTM, GRU or a plain tanh RNN; the decoder state is always the pair ``(h, c)`` so the
exported graphs keep one signature (``c`` is passed through untouched by GRU/RNN cells).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lstm_core.tokens import PAD_ID

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
NEG_INF = -1e9  # masked attention score; finite so an all-masked row cannot produce NaN


@dataclass
class ModelConfig:
    src_vocab: int
    tgt_vocab: int
    emb: int = 256
    enc_hidden: int = 256  # per direction
    enc_layers: int = 1
    dec_hidden: int = 512
    cell: str = "lstm"
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``length`` positions of ``x`` [B, S, D], leaving padding in place.

    This replaces ``pack_padded_sequence`` for the backward direction: it is plain gather/where, so
    it exports to ONNX with dynamic axes and gives the same result as packing. It is its own inverse.
    """
    pos = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    idx = lengths.unsqueeze(1) - 1 - pos
    idx = torch.where(idx >= 0, idx, pos)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class Encoder(nn.Module):
    """Stacked bidirectional RNN over source ids; returns all states and a summary for the decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        rnn = CELLS[cfg.cell]
        self.embed = nn.Embedding(cfg.src_vocab, cfg.emb, padding_idx=PAD_ID)
        sizes = [cfg.emb] + [2 * cfg.enc_hidden] * (cfg.enc_layers - 1)
        self.fwd = nn.ModuleList(rnn(n, cfg.enc_hidden, batch_first=True) for n in sizes)
        self.bwd = nn.ModuleList(rnn(n, cfg.enc_hidden, batch_first=True) for n in sizes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.drop(self.embed(src))
        out_f = out_b = x
        for fwd, bwd in zip(self.fwd, self.bwd, strict=True):
            out_f, _ = fwd(x)
            out_b, _ = bwd(reverse_padded(x, lengths))
            out_b = reverse_padded(out_b, lengths)
            x = self.drop(torch.cat([out_f, out_b], dim=-1))
        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out_f.size(-1))
        summary = torch.cat([out_f.gather(1, last).squeeze(1), out_b[:, 0]], dim=-1)
        return x, summary


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc_dim = 2 * cfg.enc_hidden
        self.encoder = Encoder(cfg)
        self.init_h = nn.Linear(enc_dim, cfg.dec_hidden)
        self.init_c = nn.Linear(enc_dim, cfg.dec_hidden)
        self.key = nn.Linear(enc_dim, cfg.dec_hidden, bias=False)  # Luong "general" score: h · W enc
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, cfg.emb, padding_idx=PAD_ID)
        self.decoder = CELLS[cfg.cell](cfg.emb, cfg.dec_hidden, batch_first=True)
        self.combine = nn.Linear(cfg.dec_hidden + enc_dim, cfg.dec_hidden)
        # Output projection tied to the target embedding: halves the largest matrix (size and compute).
        self.to_emb = nn.Linear(cfg.dec_hidden, cfg.emb, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab))
        self.drop = nn.Dropout(cfg.dropout)

    # -- encoder side -------------------------------------------------------------------------
    def encode(
        self, src: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder states, their attention keys (computed once, not per step) and the initial (h, c)."""
        enc_out, summary = self.encoder(src, lengths)
        h0 = torch.tanh(self.init_h(summary))
        c0 = self.init_c(summary) if self.cfg.cell == "lstm" else torch.zeros_like(h0)
        return enc_out, self.key(enc_out), h0, c0

    # -- decoder side -------------------------------------------------------------------------
    def _attend_and_project(
        self, dec_out: torch.Tensor, enc_out: torch.Tensor, enc_keys: torch.Tensor, src_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, T, V] from decoder outputs [B, T, H] (attention over the unmasked source)."""
        scores = torch.bmm(dec_out, enc_keys.transpose(1, 2))  # [B, T, S]
        scores = scores.masked_fill(~src_mask.unsqueeze(1), NEG_INF)
        context = torch.bmm(torch.softmax(scores, dim=-1), enc_out)  # [B, T, 2E]
        attentional = torch.tanh(self.combine(torch.cat([dec_out, context], dim=-1)))
        return self.to_emb(self.drop(attentional)) @ self.tgt_embed.weight.t() + self.out_bias

    def _run_decoder(
        self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.drop(self.tgt_embed(tokens))
        if self.cfg.cell == "lstm":
            out, (h_n, c_n) = self.decoder(x, (h.unsqueeze(0), c.unsqueeze(0)))
            return out, h_n.squeeze(0), c_n.squeeze(0)
        out, h_n = self.decoder(x, h.unsqueeze(0))
        return out, h_n.squeeze(0), c

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] for training."""
        enc_out, enc_keys, h0, c0 = self.encode(src, lengths)
        dec_out, _, _ = self._run_decoder(tgt_in, h0, c0)
        return self._attend_and_project(dec_out, enc_out, enc_keys, src != PAD_ID)

    def decode_step(
        self,
        prev_token: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        enc_out: torch.Tensor,
        enc_keys: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: previous token [N] and state [N, H] → log-probs [N, V] and the new state."""
        dec_out, h, c = self._run_decoder(prev_token.unsqueeze(1), h, c)
        logits = self._attend_and_project(dec_out, enc_out, enc_keys, src_mask).squeeze(1)
        return torch.log_softmax(logits, dim=-1), h, c
