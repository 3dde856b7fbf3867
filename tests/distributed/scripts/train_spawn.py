"""A plain PyTorch script that starts its ranks with torch.multiprocessing.spawn (no launcher):
each process joins the group with an explicit rank, trains DDP over gloo with a
DataLoader worker, and prints its step count. Knows nothing of tbdprof."""

import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def train(rank: int, world: int, steps: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(rank)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = TensorDataset(torch.randn(16 * steps, 32), torch.randint(0, 4, (16 * steps,)))
    done = 0
    for x, y in DataLoader(data, batch_size=16, num_workers=1):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        done += 1
    print(f"rank {rank} steps {done}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--init", required=True, help="init_method, e.g. file:///tmp/x")
    args = parser.parse_args()
    mp.spawn(train, args=(args.nprocs, args.steps, args.init), nprocs=args.nprocs)
