"""Synthetic parallel text for the translation workloads: writer, loader transform, collate.

Sentences are token ids (0-3 reserved: PAD, BOS, EOS, UNK) with Zipf-like
frequencies and log-normal lengths, as a subword-segmented corpus has. The
target is a learnable function of the source: each token mapped through a
fixed random dictionary, neighbouring pairs swapped (local reordering).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ._seq import BucketBatchSampler, lengths_index, pad_stack
from .data import DataFormatError, ShardDataset, write_shards

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = 4


def text_fields(max_len: int) -> dict:
    return {
        "src": {"dtype": "int32", "shape": [max_len]},
        "src_len": {"dtype": "int64", "shape": [1]},
        "tgt": {"dtype": "int32", "shape": [max_len]},
        "tgt_len": {"dtype": "int64", "shape": [1]},
    }


def write_translation_dataset(root: Path, src_vocab: int, tgt_vocab: int, max_len: int, samples: int, seed: int) -> None:
    """Write ``samples`` sentence pairs of at most ``max_len`` tokens (plus a length index)."""
    rng = np.random.default_rng(seed)
    dictionary = rng.integers(SPECIALS, tgt_vocab, size=src_vocab)
    ranks = np.arange(1, src_vocab - SPECIALS + 1, dtype=np.float64)
    zipf = (1.0 / ranks) / (1.0 / ranks).sum()
    lengths = []

    def make(i: int):
        r = np.random.default_rng((seed, i))
        n = int(np.clip(r.lognormal(np.log(max_len / 3), 0.5), 3, max_len))
        src = SPECIALS + r.choice(src_vocab - SPECIALS, size=n, p=zipf)
        tgt = dictionary[src]
        tgt[: n - n % 2] = tgt[: n - n % 2].reshape(-1, 2)[:, ::-1].reshape(-1)
        lengths.append(n)
        pad = np.zeros(max_len - n, dtype=np.int64)
        return {"src": np.concatenate([src, pad]), "src_len": [n], "tgt": np.concatenate([tgt, pad]), "tgt_len": [n]}

    extra = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab, "seed": seed, "lengths": lengths}
    write_shards(root, text_fields(max_len), samples, make, extra=extra)


def _trim(rec, _i):
    """Record -> (source + EOS, target) as int64 tensors of their true lengths."""
    src = torch.from_numpy(rec["src"][: int(rec["src_len"][0])].astype(np.int64))
    tgt = torch.from_numpy(rec["tgt"][: int(rec["tgt_len"][0])].astype(np.int64))
    return torch.cat([src, torch.tensor([EOS])]), tgt


def translation_dataset(root: Path, max_len: int, src_vocab: int, tgt_vocab: int) -> ShardDataset:
    """The data set at ``root``, checked against the model's vocabularies."""
    ds = ShardDataset(root, text_fields(max_len), _trim)
    have = (ds.meta.get("src_vocab"), ds.meta.get("tgt_vocab"))
    if not all(isinstance(v, int) for v in have) or have[0] > src_vocab or have[1] > tgt_vocab:
        raise DataFormatError(f"{root}: vocabularies {have} do not fit the model's ({src_vocab}, {tgt_vocab})")
    lengths_index(ds)
    return ds


def collate_translation(items):
    """Pad a batch: (src [B,S], src_len [B], tgt_in [B,T] = BOS+y, tgt_out [B,T] = y+EOS)."""
    srcs, tgts = zip(*items)
    src_len = torch.tensor([len(s) for s in srcs])
    tgt_in = pad_stack([torch.cat([torch.tensor([BOS]), t]) for t in tgts], PAD)
    tgt_out = pad_stack([torch.cat([t, torch.tensor([EOS])]) for t in tgts], PAD)
    return pad_stack(srcs, PAD), src_len, tgt_in, tgt_out


class TranslationMixin:
    """Data side of a translation workload: the preset's ``data`` holds ``max_len``."""

    unit = "tokens"
    domain = "machine translation"
    collate_fn = staticmethod(collate_translation)
    label_smoothing = 0.0

    def vocabularies(self, preset) -> tuple[int, int]:
        raise NotImplementedError

    def write_dataset(self, root: Path, preset, seed: int) -> None:
        write_translation_dataset(root, *self.vocabularies(preset), preset.data["max_len"], preset.samples, seed)

    def dataset(self, root: Path, preset, train: bool = True):
        return translation_dataset(root, preset.data["max_len"], *self.vocabularies(preset))

    def batch_sampler(self, sampler, batch_size: int):
        return BucketBatchSampler(sampler, batch_size, lengths_index(sampler.dataset))

    def loss(self, model, batch):
        """Token-level cross-entropy of ``model(src, src_len, tgt_in)`` against ``tgt_out``, padding ignored."""
        src, src_len, tgt_in, tgt_out = batch
        logits = model(src, src_len, tgt_in)
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, label_smoothing=self.label_smoothing)

    def batch_units(self, batch) -> int:
        """Target tokens (EOS included, padding not): what NMT throughput counts."""
        return int((batch[3] != PAD).sum())
