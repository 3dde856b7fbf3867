"""A small DDP script with deep windows and a planted slow layer, for tests/distributed/test_deep_windows.py.

Run as N ranks by a launcher. On ``--slow-rank R`` the layer ``body.slow``
does ``--extra`` more matrix products per forward (and their backward): the
operator-level difference ``tbdprof ops`` and diagnose must name.
"""

import argparse
from collections import OrderedDict

import torch
import torch.distributed as dist

import tbdprof

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=24)
p.add_argument("--deep-every", type=int, default=8)
p.add_argument("--deep-steps", type=int, default=3)
p.add_argument("--slow-rank", type=int, default=-1)
p.add_argument("--extra", type=int, default=12)
args = p.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)


class Slow(torch.nn.Module):
    def __init__(self, n: int, extra: int):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)
        self.w = torch.randn(n, n) / n**0.5  # not a parameter, not a buffer: nothing for DDP to sync
        self.extra = extra

    def forward(self, x):
        y = self.lin(x)
        for _ in range(self.extra):
            y = torch.tanh(y @ self.w)
        return y


class Net(torch.nn.Module):
    def __init__(self, extra: int):
        super().__init__()
        self.body = torch.nn.Sequential(OrderedDict(
            stem=torch.nn.Linear(128, 256), act=torch.nn.ReLU(), slow=Slow(256, extra)))
        self.head = torch.nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.body(x))


model = torch.nn.parallel.DistributedDataParallel(Net(args.extra if rank == args.slow_rank else 0))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
data = [(torch.randn(64, 128), torch.randint(0, 10, (64,))) for _ in range(args.steps)]

with tbdprof.Profiler(warmup_steps=2, sample_hz=20, flush_s=1, deep_every=args.deep_every, deep_steps=args.deep_steps) as prof:
    prof.watch(model, optimizer)
    for x, y in prof.loader(data):
        with prof.phase("forward"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
dist.destroy_process_group()
