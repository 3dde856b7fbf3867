"""A small DDP training script on tbdprof's public API, with faults to plant for the diagnosis tests.

Run as N ranks by a launcher (torch.distributed environment variables set).
``--leak-mb N`` keeps N MiB per step alive on every rank (on one rank only, the
allocation itself would make it a straggler on a loaded machine);
``--uneven`` gives every rank a random batch size each step (256 to 4096; else 2048).
"""

import argparse

import torch
import torch.distributed as dist

import tbdprof

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
p.add_argument("--leak-mb", type=float, default=0.0)
p.add_argument("--uneven", action="store_true")
args = p.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
sizes = torch.Generator().manual_seed(rank)


def batches():
    for _ in range(args.steps):
        n = int(torch.randint(256, 4096, (1,), generator=sizes)) if args.uneven else 2048
        yield torch.randn(n, 256), torch.randint(0, 10, (n,))


kept = []
with tbdprof.Profiler(warmup_steps=2, sample_hz=20) as prof:
    prof.watch(model, optimizer)
    for x, y in prof.loader(batches()):
        with prof.phase("forward"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
        if args.leak_mb:
            kept.append(torch.ones(int(args.leak_mb * 2**20) // 4))
dist.destroy_process_group()
