"""DeepSpeech2 (Amodei et al., 2016): 2D convolutions, a bidirectional GRU stack, CTC loss.

The ``full`` preset follows the layout of the widely used deepspeech.pytorch
implementation with GRU cells: 161 frequency bins (20 ms windows at 16 kHz),
two convolutions (41x11 stride 2x2, 21x11 stride 2x1, 32 channels, hardtanh),
5 bidirectional GRU layers of 1024 units (directions summed, sequence-wise
batch norm between layers), 29 output characters (CTC blank, space, a-z, ').
Utterances have variable lengths: batches are bucketed by frames, padded
frames are zeroed after every convolution and packed away in the GRUs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._seq import BucketBatchSampler, length_mask, lengths_index, pad_stack
from .base import Preset, Workload
from .data import DataFormatError, ShardDataset, write_shards
from .registry import register

ALPHABET = "_ 'abcdefghijklmnopqrstuvwxyz"  # index 0 is the CTC blank
CTC = nn.CTCLoss(blank=0, zero_infinity=True)
CONVS = ((41, 11, 2, 2), (21, 11, 2, 1))  # (freq kernel, time kernel, freq stride, time stride)


def conv_out(n: int, kernel: int, stride: int) -> int:
    """Length after a convolution padded by kernel // 2 on each side."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


class BatchRNN(nn.Module):
    """Sequence-wise batch norm (optional), bidirectional GRU, directions summed."""

    def __init__(self, cin: int, hidden: int, norm: bool):
        super().__init__()
        self.norm = nn.BatchNorm1d(cin) if norm else None
        self.rnn = nn.GRU(cin, hidden, bidirectional=True, batch_first=True)

    def forward(self, x, lengths):
        if self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        fwd, bwd = out.chunk(2, dim=-1)
        return fwd + bwd


class DeepSpeech2(nn.Module):
    def __init__(self, freq: int = 161, channels: int = 32, hidden: int = 1024, layers: int = 5, classes: int = len(ALPHABET)):
        super().__init__()
        self.convs = nn.ModuleList()
        cin = 1
        for kf, kt, sf, st in CONVS:
            self.convs.append(nn.Sequential(nn.Conv2d(cin, channels, (kf, kt), stride=(sf, st), padding=(kf // 2, kt // 2)), nn.BatchNorm2d(channels), nn.Hardtanh(0, 20, inplace=True)))
            cin, freq = channels, conv_out(freq, kf, sf)
        self.rnns = nn.ModuleList(BatchRNN(channels * freq if i == 0 else hidden, hidden, norm=i > 0) for i in range(layers))
        self.norm = nn.BatchNorm1d(hidden)
        self.fc = nn.Linear(hidden, classes, bias=False)

    def forward(self, spec, frames):
        """``spec`` [B, 1, F, T] -> (log-probabilities [T', B, classes], output lengths [B])."""
        x, lengths = spec, frames
        for conv, (_, kt, _, st) in zip(self.convs, CONVS):
            x = conv(x)
            lengths = conv_out(lengths, kt, st)
            x = x.masked_fill(length_mask(lengths, x.shape[-1])[:, None, None, :], 0.0)
        x = x.flatten(1, 2).transpose(1, 2)  # [B, T', C*F']
        for rnn in self.rnns:
            x = rnn(x, lengths)
        x = self.fc(self.norm(x.transpose(1, 2)).transpose(1, 2))
        return x.log_softmax(-1).transpose(0, 1), lengths


def speech_fields(freq: int, max_frames: int, max_chars: int) -> dict:
    return {
        "spec": {"dtype": "float16", "shape": [freq, max_frames]},
        "frames": {"dtype": "int64", "shape": [1]},
        "text": {"dtype": "int32", "shape": [max_chars]},
        "chars": {"dtype": "int64", "shape": [1]},
    }


def write_speech_dataset(root: Path, freq: int, max_frames: int, max_chars: int, samples: int, seed: int) -> None:
    """Power spectrograms in which every character is a fixed spectral shape held 3-5 frames."""
    rng = np.random.default_rng(seed)
    shapes = rng.gamma(2.0, 1.0, size=(len(ALPHABET), freq)).astype(np.float32)
    lengths = []

    def make(i: int):
        r = np.random.default_rng((seed, i))
        n = int(r.integers(max_chars // 3, max_chars + 1))
        text = r.integers(1, len(ALPHABET), size=n)
        hold = r.integers(3, 6, size=n)
        frames = min(max_frames, int(hold.sum()) + 4)
        spec = np.zeros((freq, max_frames), dtype=np.float32)
        spec[:, :frames] = r.exponential(0.2, size=(freq, frames))  # background noise
        t = 2
        for c, h in zip(text, hold):
            end = min(t + h, frames)
            spec[:, t:end] += shapes[c][:, None] * r.uniform(0.5, 2.0)
            t = end
        lengths.append(frames)
        return {"spec": spec, "frames": [frames], "text": np.pad(text, (0, max_chars - n)), "chars": [n]}

    write_shards(root, speech_fields(freq, max_frames, max_chars), samples, make, extra={"seed": seed, "lengths": lengths, "alphabet": ALPHABET})


def normalize(rec, _i):
    """Log power, then per-utterance mean/variance normalisation over the real frames."""
    frames, chars = int(rec["frames"][0]), int(rec["chars"][0])
    spec = np.log1p(rec["spec"][:, :frames].astype(np.float32))
    spec = (spec - spec.mean()) / (spec.std() + 1e-5)
    return torch.from_numpy(spec.T.copy()), torch.from_numpy(rec["text"][:chars].astype(np.int64))


def collate_speech(items):
    """(spec [B, 1, F, T], frames [B], text [B, L] padded, chars [B])."""
    specs, texts = zip(*items)
    frames = torch.tensor([len(s) for s in specs])
    chars = torch.tensor([len(t) for t in texts])
    return pad_stack(specs).transpose(1, 2).unsqueeze(1), frames, pad_stack(texts), chars


@register
class DeepSpeech(Workload):
    name = "deepspeech2"
    domain = "speech recognition"
    unit = "frames"
    presets = {
        "tiny": Preset(model=dict(freq=41, channels=8, hidden=64, layers=2), batch_size=8, samples=256, lr=0.01, data=dict(max_frames=100, max_chars=20)),
        "small": Preset(model=dict(freq=81, channels=32, hidden=256, layers=3), batch_size=16, samples=1024, lr=3e-3, num_workers=2, data=dict(max_frames=400, max_chars=80)),
        "full": Preset(model=dict(freq=161, channels=32, hidden=1024, layers=5), batch_size=32, samples=512, lr=3e-4, num_workers=4, data=dict(max_frames=1000, max_chars=200)),
    }
    reference_params = {"full": 65_036_576}
    reference_source = "DeepSpeech2 (Amodei et al. 2016) as laid out by deepspeech.pytorch (5x1024 bidirectional GRU, 161 bins), counted from that layout"
    collate_fn = staticmethod(collate_speech)

    def build_model(self, preset: Preset) -> nn.Module:
        return DeepSpeech2(**preset.model)

    def write_dataset(self, root: Path, preset: Preset, seed: int) -> None:
        write_speech_dataset(root, preset.model["freq"], preset.data["max_frames"], preset.data["max_chars"], preset.samples, seed)

    def dataset(self, root: Path, preset: Preset, train: bool = True):
        ds = ShardDataset(root, speech_fields(preset.model["freq"], preset.data["max_frames"], preset.data["max_chars"]), normalize)
        if ds.meta.get("alphabet") != ALPHABET:
            raise DataFormatError(f"{root}: meta.json 'alphabet' must be {ALPHABET!r} (index 0 = CTC blank)")
        lengths_index(ds)
        return ds

    def batch_sampler(self, sampler, batch_size: int):
        return BucketBatchSampler(sampler, batch_size, lengths_index(sampler.dataset))

    def batch_units(self, batch) -> int:
        """Input frames (10 ms each) in the batch, padding excluded."""
        return int(batch[1].sum())

    def loss(self, model, batch):
        spec, frames, text, chars = batch
        log_probs, out_lengths = model(spec, frames)
        targets = torch.cat([t[:n] for t, n in zip(text, chars.tolist())])
        return CTC(log_probs, targets, out_lengths, chars)

    def optimizer(self, model, preset):
        return torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=0.9, nesterov=True)
