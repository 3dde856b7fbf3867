"""Mixed precision the way torch.amp's recipe writes it, with a GradScaler that skips steps.

bf16 autocast on CPU and ``torch.amp.GradScaler("cpu")``; the loss of the
iterations given by ``--inf-at`` is made infinite, so the scaler skips their
optimizer step (as it does for an fp16 model's first steps). Prints its
iterations and the optimizer steps that really ran.
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--inf-at", type=int, nargs="*", default=[2, 3])
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu")
data = TensorDataset(torch.randn(16 * args.steps, 32), torch.randint(0, 4, (16 * args.steps,)))
loader = DataLoader(data, batch_size=16)

iterations = applied = 0
for x, y in loader:
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    if iterations in args.inf_at:
        loss = loss * float("inf")
    scaler.scale(loss).backward()
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    applied += scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped
    iterations += 1
print(f"rank 0 steps {iterations} applied {applied}", flush=True)
