"""A small DDP training script on tbdprof's public API, with faults to plant for the diagnosis tests.

Run as N ranks by a launcher (torch.distributed environment variables set).
``--leak-mb N`` keeps N MiB per step alive on every rank (on one rank only, the
allocation itself would make it a straggler on a loaded machine);
``--uneven`` gives every rank a random batch size each step (256 to 4096; else 2048).
Stragglers, on ``--slow-rank R`` only: ``--sleep-ms MS`` sleeps after the
optimizer step (outside any phase), ``--extra-matmuls N`` adds N matrix
products inside forward, ``--loader-ms MS`` makes the loader that slow.
``--no-watch`` skips ``prof.watch``: no comm spans, no memory breakdown.
"""

import argparse
import time

import torch
import torch.distributed as dist

import tbdprof

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
p.add_argument("--leak-mb", type=float, default=0.0)
p.add_argument("--uneven", action="store_true")
p.add_argument("--slow-rank", type=int, default=-1)
p.add_argument("--sleep-ms", type=float, default=0.0)
p.add_argument("--extra-matmuls", type=int, default=0)
p.add_argument("--loader-ms", type=float, default=0.0)
p.add_argument("--no-watch", action="store_true")
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
        if rank == args.slow_rank and args.loader_ms:
            time.sleep(args.loader_ms / 1e3)
        yield torch.randn(n, 256), torch.randint(0, 10, (n,))


extra = torch.randn(512, 512)
kept = []
with tbdprof.Profiler(warmup_steps=2, sample_hz=20) as prof:
    if not args.no_watch:
        prof.watch(model, optimizer)
    for x, y in prof.loader(batches()):
        with prof.phase("forward"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if rank == args.slow_rank:
                for _ in range(args.extra_matmuls):
                    extra = torch.tanh(extra @ extra)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
        if rank == args.slow_rank and args.sleep_ms:
            time.sleep(args.sleep_ms / 1e3)
        if args.leak_mb:
            kept.append(torch.ones(int(args.leak_mb * 2**20) // 4))
dist.destroy_process_group()
