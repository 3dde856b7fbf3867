"""A small DDP job that runs until killed (or --steps), for the live deep-window tests
(tests/distributed/test_deep_triggers.py). Steps are paced by a sleep (--step-ms); from step
--slow-from, rank --slow-rank sleeps --slow-ms more in its forward (a straggler the others wait for)."""

import argparse
import time

import torch
import torch.distributed as dist

import tbdprof

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=100000)
p.add_argument("--step-ms", type=float, default=20.0)
p.add_argument("--deep-every", type=int, default=None)
p.add_argument("--deep-steps", type=int, default=None)
p.add_argument("--slow-rank", type=int, default=-1)
p.add_argument("--slow-from", type=int, default=-1)
p.add_argument("--slow-ms", type=float, default=0.0)
p.add_argument("--flush-s", type=float, default=1.0)
args = p.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

with tbdprof.Profiler(warmup_steps=2, flush_s=args.flush_s, deep_every=args.deep_every, deep_steps=args.deep_steps) as prof:
    prof.watch(model, optimizer)
    for step in prof.loader(range(args.steps)):
        with prof.phase("forward"):
            time.sleep(args.step_ms / 1000)
            if rank == args.slow_rank and 0 <= args.slow_from <= step:
                time.sleep(args.slow_ms / 1000)
            loss = torch.nn.functional.cross_entropy(model(x), y)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
dist.destroy_process_group()
