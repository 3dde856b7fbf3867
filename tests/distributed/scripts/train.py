"""A plain PyTorch training script, written as a user would: it knows nothing of tbdprof.

Runs alone, under torchrun (DDP over gloo), under mpirun (ranks from Open
MPI's variables) or under srun (SLURM's); MASTER_ADDR (default 127.0.0.1) and
MASTER_PORT come from the environment. Prints its step count.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--workers", type=int, default=0)
args = parser.parse_args()

rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("SLURM_PROCID", 0))))
world = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))))
torch.manual_seed(rank)
model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
if world > 1:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
data = TensorDataset(torch.randn(16 * args.steps, 32), torch.randint(0, 4, (16 * args.steps,)))
loader = DataLoader(data, batch_size=16, num_workers=args.workers)

steps = 0
for x, y in loader:
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    steps += 1
with torch.no_grad():  # evaluation: not a training step
    model(data.tensors[0][:16])
print(f"rank {rank} steps {steps}", flush=True)
if world > 1:
    dist.destroy_process_group()
