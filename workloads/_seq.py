"""Variable-length batching shared by the sequence workloads: length buckets and padding."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import DataFormatError


def lengths_index(dataset, key: str = "lengths") -> np.ndarray:
    """The per-sample length index a sequence data set keeps in its ``meta.json``."""
    lengths = dataset.meta.get(key)
    if not isinstance(lengths, list) or len(lengths) != len(dataset):
        raise DataFormatError(f"{dataset.root}: meta.json needs {key!r}, one length per sample")
    return np.asarray(lengths, dtype=np.int64)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length from a (distributed, shuffled) index sampler.

    Each pool of ``pool_batches`` batches worth of the rank's shuffled indices
    is sorted by length and cut into batches, and the batches are shuffled:
    little padding, still random order (the bucket iterator of NMT toolkits).
    """

    def __init__(self, sampler, batch_size: int, lengths: np.ndarray, pool_batches: int = 32):
        self.sampler, self.batch_size, self.lengths, self.pool = sampler, batch_size, lengths, pool_batches * batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        indices = list(self.sampler)[: len(self) * self.batch_size]
        batches = []
        for first in range(0, len(indices), self.pool):
            pool = sorted(indices[first : first + self.pool], key=lambda i: self.lengths[i])
            batches += [pool[b : b + self.batch_size] for b in range(0, len(pool), self.batch_size)]
        # Seeded by the sampler's epoch, so every epoch (and every rerun) has its own fixed order.
        order = np.random.default_rng((getattr(self.sampler, "seed", 0), getattr(self.sampler, "epoch", 0))).permutation(len(batches))
        return iter([batches[i] for i in order])


def pad_stack(seqs: Sequence[torch.Tensor], value: float = 0) -> torch.Tensor:
    """Stack 1-D (or [T, ...]) tensors of different lengths, padding the first dimension."""
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=value)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` boolean mask, True at padding positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]
