"""The training loop of Accelerate's README, on CPU: ``Accelerator(cpu=True)``,
``accelerator.prepare(model, optimizer, dataloader)``, ``accelerator.backward(loss)``;
with ``--accum K``, the documented gradient-accumulation form
(``Accelerator(gradient_accumulation_steps=K)`` and ``with accelerator.accumulate(model):``).

Run with ``accelerate launch --cpu --num_processes 2 accelerate_loop.py`` or ``python``.
"""

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from tbdcheck import tbdcheck

parser = argparse.ArgumentParser()
parser.add_argument("--accum", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--steps", type=int, default=12, help="optimizer steps per process (sizes the data set)")
args = parser.parse_args()

accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accum)
world = accelerator.num_processes

torch.manual_seed(0)
n = args.steps * args.accum * args.batch_size * world
dataset = TensorDataset(torch.randn(n, 64), torch.randint(0, 8, (n,)))
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 8))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

model, optimizer, data = accelerator.prepare(model, optimizer, data)

steps = samples = 0
model.train()
if args.accum == 1:
    for source, targets in data:
        optimizer.zero_grad()
        output = model(source)
        loss = F.cross_entropy(output, targets)
        accelerator.backward(loss)
        optimizer.step()
        steps += 1
        samples += len(targets)
else:
    pending = 0
    for source, targets in data:
        with accelerator.accumulate(model):
            output = model(source)
            loss = F.cross_entropy(output, targets)
            accelerator.backward(loss)
            optimizer.step()  # Accelerate skips it until the K-th micro-batch
            optimizer.zero_grad()
        pending += len(targets)
        if accelerator.sync_gradients:  # this micro-batch's step updated the model
            steps += 1
            samples += pending
            pending = 0

assert steps == args.steps, (steps, args.steps)
tbdcheck(accelerator.process_index, world, steps, samples, accelerator.unwrap_model(model))
