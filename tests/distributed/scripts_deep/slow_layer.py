"""A small DDP training script with a planted slow layer, written as a user writes it (no tbdprof in it), for
tests/distributed/test_deep_windows.py and test_deep_triggers.py, which run it under ``tbdprof profile``.

Run as N ranks by a launcher. From step ``--slow-from`` (default 0: from the start), on rank ``--slow-rank``
the layer ``body.slow`` does ``--extra`` more matrix products per forward (and their backward): the
operator-level difference ``tbdprof ops`` and diagnose must name.
"""

import argparse
from collections import OrderedDict

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=24)
p.add_argument("--slow-rank", type=int, default=-1)
p.add_argument("--slow-from", type=int, default=0)
p.add_argument("--extra", type=int, default=12)
args = p.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)


class Slow(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)
        self.w = torch.randn(n, n) / n**0.5  # not a parameter, not a buffer: nothing for DDP to sync
        self.extra = 0

    def forward(self, x):
        y = self.lin(x)
        for _ in range(self.extra):
            y = torch.tanh(y @ self.w)
        return y


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(OrderedDict(
            stem=torch.nn.Linear(128, 256), act=torch.nn.ReLU(), slow=Slow(256)))
        self.head = torch.nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.body(x))


net = Net()
model = torch.nn.parallel.DistributedDataParallel(net)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
data = [(torch.randn(64, 128), torch.randint(0, 10, (64,))) for _ in range(args.steps)]

for step, (x, y) in enumerate(data):
    if rank == args.slow_rank and step == args.slow_from:
        net.body.slow.extra = args.extra
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
dist.destroy_process_group()
