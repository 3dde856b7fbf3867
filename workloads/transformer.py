"""Transformer base (Vaswani et al., 2017) for translation, in plain PyTorch.

The ``full`` preset is the paper's base model: 6 encoder and 6 decoder
layers (post-layer-norm), d_model 512, 8 heads, feed-forward 2048, dropout
0.1, one source/target vocabulary of 37,000 tokens whose embedding is shared
by encoder, decoder and the output projection. Loss: cross-entropy with
label smoothing 0.1; throughput is counted in target tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._seq import length_mask
from ._text import PAD, TranslationMixin
from .base import Preset, Workload
from .registry import register


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """The fixed sinusoidal position encodings, ``[length, dim]``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim)
    enc[:, 0::2], enc[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return enc


class Transformer(nn.Module):
    def __init__(self, vocab: int, d_model: int = 512, heads: int = 8, ffn: int = 2048, layers: int = 6, dropout: float = 0.1, max_len: int = 256):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab, d_model, padding_idx=PAD)
        self.register_buffer("positions", sinusoids(max_len, d_model), persistent=False)
        enc = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout, batch_first=True)
        dec = nn.TransformerDecoderLayer(d_model, heads, ffn, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, layers)
        self.drop = nn.Dropout(dropout)

    def _embed(self, tokens):
        return self.drop(self.embed(tokens) * math.sqrt(self.d_model) + self.positions[: tokens.shape[1]])

    def forward(self, src, src_len, tgt_in):
        src_pad = length_mask(src_len, src.shape[1])
        steps = tgt_in.shape[1]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=tgt_in.device).triu(1)  # True = may not attend
        memory = self.encoder(self._embed(src), src_key_padding_mask=src_pad)
        out = self.decoder(self._embed(tgt_in), memory, tgt_mask=causal, tgt_key_padding_mask=tgt_in == PAD, memory_key_padding_mask=src_pad)
        return out @ self.embed.weight.t()  # tied output projection


@register
class TransformerNMT(TranslationMixin, Workload):
    name = "transformer"
    presets = {
        "tiny": Preset(model=dict(vocab=600, d_model=64, heads=4, ffn=128, layers=2), batch_size=16, samples=512, lr=5e-4, data=dict(max_len=24)),
        "small": Preset(model=dict(vocab=8000, d_model=256, heads=4, ffn=1024, layers=3), batch_size=64, samples=4096, lr=5e-4, num_workers=2, data=dict(max_len=50)),
        "full": Preset(model=dict(vocab=37000, d_model=512, heads=8, ffn=2048, layers=6), batch_size=128, samples=8192, lr=7e-4, num_workers=4, data=dict(max_len=64)),
    }
    label_smoothing = 0.1
    reference_params = {"full": 63_082_496}
    reference_source = "Transformer base, Vaswani et al. 2017 (Table 3 rounds it to 65M), counted from its layout with a 37,000-token shared vocabulary"

    def vocabularies(self, preset: Preset) -> tuple[int, int]:
        return preset.model["vocab"], preset.model["vocab"]

    def build_model(self, preset: Preset) -> nn.Module:
        return Transformer(**preset.model)

    def optimizer(self, model, preset):
        return torch.optim.Adam(model.parameters(), lr=preset.lr, betas=(0.9, 0.98), eps=1e-9)
