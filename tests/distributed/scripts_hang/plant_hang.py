"""A DDP (gloo) training script that knows nothing of tbdprof, with one planted fault on one rank.

--mode getitem: the rank's dataset sleeps forever in __getitem__ (in its DataLoader worker) at --at;
--mode kill: the rank SIGKILLs itself at step --at; --mode skip: the rank skips the step's backward
(its allreduce) and waits in a barrier instead, so the others deadlock in allreduce; --mode slow: one
step of --slow-s on the rank (and again --again steps later), then healthy. --manual: plain dist.all_reduce of the gradients
called by the script instead of DDP.
"""

import argparse
import os
import signal
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["getitem", "kill", "skip", "slow", "none"], default="none")
p.add_argument("--rank", type=int, default=1)
p.add_argument("--at", type=int, default=6)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--slow-s", type=float, default=1.5)
p.add_argument("--again", type=int, default=0)
p.add_argument("--workers", type=int, default=1)
p.add_argument("--manual", action="store_true")
args = p.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
BATCH = 8


class Data(Dataset):
    def __len__(self):
        return BATCH * args.steps

    def __getitem__(self, i):
        if args.mode == "getitem" and rank == args.rank and i == BATCH * args.at:
            while True:
                time.sleep(1)  # the planted hang: a read that never returns
        g = torch.Generator().manual_seed(i)
        return torch.randn(16, generator=g), i % 4


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
if not args.manual:
    model = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
loader = DataLoader(Data(), batch_size=BATCH, num_workers=args.workers)
for step, (x, y) in enumerate(loader):
    if rank == args.rank and step == args.at and args.mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == args.rank and args.mode == "slow" and (step == args.at or (args.again and step == args.at + args.again)):
        time.sleep(args.slow_s)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    if args.mode == "skip" and rank == args.rank and step == args.at:
        dist.barrier()  # the planted deadlock: this rank skipped the step's allreduce
    loss.backward()
    if args.manual:
        for prm in model.parameters():
            dist.all_reduce(prm.grad)
    opt.step()
    time.sleep(0.02)
print(f"rank {rank} steps {step + 1}", flush=True)
dist.destroy_process_group()
