"""FSDP2 (``torch.distributed.fsdp.fully_shard``) on a small MLP, the way the FSDP2 tutorial
shards a model: each block first, then the root; gloo on CPU.

Run with ``torchrun --nproc-per-node 2 fsdp2_mlp.py``. Besides the usual truth it
prints ``shard_bytes``: the bytes of this rank's parameter shards (what the rank holds
between steps), while weight_bytes/grad_bytes are those of the whole (unsharded) model;
and the collective bytes of one training step, each collective counted by its full
(unsharded) buffer as nccl-tests count "size": ``all_gather_bytes`` (forward gathers every
group; backward gathers again the groups resharded after forward: by default every group
but the root's, see fully_shard's reshard_after_forward) and ``reduce_scatter_bytes``
(every gradient, once). No parameter needs padding (dim 0 divisible by the world size),
so these are exact.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

from tbdcheck import param_bytes, tbdcheck

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=16)
args = parser.parse_args()


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class MLP(nn.Module):
    def __init__(self, dim=64, depth=3, classes=10):
        super().__init__()
        self.inp = nn.Linear(32, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = MLP()
full_weight_bytes = param_bytes(model.parameters())
full_grad_bytes = param_bytes(model.parameters(), trainable_only=True)
assert all(p.shape[0] % world == 0 for p in model.parameters()), "a parameter would be padded"
block_bytes = sum(param_bytes(block.parameters()) for block in model.blocks)
for block in model.blocks:
    fully_shard(block)
fully_shard(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

torch.manual_seed(rank)
steps = samples = 0
for _ in range(args.steps):
    x, y = torch.randn(args.batch_size, 32), torch.randint(0, 10, (args.batch_size,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    steps += 1
    samples += len(y)

shard_bytes = sum(p.to_local().numel() * p.to_local().element_size() for p in model.parameters())
truth = tbdcheck(rank, world, steps, samples, model, shard_bytes=shard_bytes,
                 all_gather_bytes=full_weight_bytes + block_bytes, reduce_scatter_bytes=full_grad_bytes)
assert (truth["weight_bytes"], truth["grad_bytes"]) == (full_weight_bytes, full_grad_bytes), truth
dist.destroy_process_group()
