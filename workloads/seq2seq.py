"""Seq2Seq NMT: an LSTM encoder-decoder with Luong attention (Luong et al., 2015).

The ``full`` preset is sized as the TensorFlow NMT tutorial's IWSLT'15
English-Vietnamese attention model that TBD profiled: 2-layer LSTMs of 512
units, vocabularies of 17,191 (source) and 7,709 (target) words, "general"
attention and an attentional hidden layer, output projection without bias.
Batches have variable lengths: sequences are packed in the encoder, padding
is masked in the attention and ignored by the loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._seq import length_mask
from ._text import PAD, TranslationMixin
from .base import Preset, Workload
from .registry import register


class Seq2Seq(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, hidden: int = 512, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.src_emb = nn.Embedding(src_vocab, hidden, padding_idx=PAD)
        self.tgt_emb = nn.Embedding(tgt_vocab, hidden, padding_idx=PAD)
        self.encoder = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout)
        self.decoder = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout)
        self.attn = nn.Linear(hidden, hidden, bias=False)  # Luong "general" score h_t^T W h_s
        self.combine = nn.Linear(2 * hidden, hidden, bias=False)  # attentional hidden state
        self.out = nn.Linear(hidden, tgt_vocab, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, src, src_len, tgt_in):
        packed = pack_padded_sequence(self.drop(self.src_emb(src)), src_len.cpu(), batch_first=True, enforce_sorted=False)
        enc, state = self.encoder(packed)
        enc, _ = pad_packed_sequence(enc, batch_first=True, total_length=src.shape[1])
        dec, _ = self.decoder(self.drop(self.tgt_emb(tgt_in)), state)
        scores = torch.bmm(self.attn(dec), enc.transpose(1, 2))  # [B, T, S]
        scores = scores.masked_fill(length_mask(src_len, src.shape[1])[:, None, :], float("-inf"))
        context = torch.bmm(scores.softmax(-1), enc)
        return self.out(self.drop(torch.tanh(self.combine(torch.cat([context, dec], -1)))))


@register
class Seq2SeqNMT(TranslationMixin, Workload):
    name = "seq2seq"
    presets = {
        "tiny": Preset(model=dict(src_vocab=500, tgt_vocab=400, hidden=64, layers=2), batch_size=16, samples=512, lr=1.0, data=dict(max_len=24)),
        "small": Preset(model=dict(src_vocab=8000, tgt_vocab=6000, hidden=256, layers=2), batch_size=64, samples=4096, lr=1.0, num_workers=2, data=dict(max_len=50)),
        "full": Preset(model=dict(src_vocab=17191, tgt_vocab=7709, hidden=512, layers=2), batch_size=128, samples=8192, lr=1.0, num_workers=4, data=dict(max_len=50)),
    }
    reference_params = {"full": 25_887_232}
    reference_source = "TensorFlow NMT IWSLT'15 En-Vi attention model (Luong et al., 2015), counted from its layout"

    def vocabularies(self, preset: Preset) -> tuple[int, int]:
        return preset.model["src_vocab"], preset.model["tgt_vocab"]

    def build_model(self, preset: Preset) -> nn.Module:
        return Seq2Seq(**preset.model)

    def optimizer(self, model, preset):
        return torch.optim.SGD(model.parameters(), lr=preset.lr)
