"""A single-process training loop whose author first looks at one batch
(``next(iter(loader))``, printing its shapes) and then trains: the probed batch
is fetched but never trained on."""

import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from tbdcheck import tbdcheck

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--train-size", type=int, default=384)
parser.add_argument("--workers", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(0)
dataset = TensorDataset(torch.randn(args.train_size, 20), torch.randn(args.train_size, 1))
loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

features, labels = next(iter(loader))
print(f"Feature batch shape: {features.size()}")
print(f"Labels batch shape: {labels.size()}")

model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 1))
loss_fn = nn.MSELoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

steps = samples = 0
for epoch in range(args.epochs):
    model.train()
    for X, y in loader:
        pred = model(X)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
        samples += len(X)

assert samples == args.epochs * args.train_size, samples
tbdcheck(0, 1, steps, samples, model)
