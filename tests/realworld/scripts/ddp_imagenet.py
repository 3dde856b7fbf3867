"""Data-parallel training written like pytorch/examples imagenet/main.py, on random images.

A hand-written small CNN (no torchvision), ``nn.CrossEntropyLoss``, a
DistributedSampler with ``set_epoch``, ``model.train()``, and an evaluation
pass (``model.eval()`` under ``torch.no_grad()``) every ``--eval-every``
steps. Run with ``torchrun --nproc-per-node 2 ddp_imagenet.py`` (gloo) or
plainly with ``python`` (one process, no DDP).

Options a user's code would have for the same ends:
  --accum K     gradient accumulation: K micro-batches per optimizer step,
                all but the last under ``model.no_sync()``.
Planted faults (TBD_PLANT, rank 1 only; for testing a profiler's diagnosis):
  sleep     rank 1 sleeps 120 ms after each optimizer step, before the next fetch;
  compute   rank 1's forward does extra matrix products;
  loader    rank 1's Dataset.__getitem__ sleeps (a slow input pipeline).
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from tbdcheck import tbdcheck

parser = argparse.ArgumentParser(description="small-CNN ImageNet-style training")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("-b", "--batch-size", type=int, default=16, help="per process")
parser.add_argument("--train-size", type=int, default=320)
parser.add_argument("--val-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--eval-every", type=int, default=5)
parser.add_argument("--accum", type=int, default=1)
parser.add_argument("-j", "--workers", type=int, default=0)
args = parser.parse_args()

PLANT = os.environ.get("TBD_PLANT", "")


class RandomImages(Dataset):
    def __init__(self, n, num_classes=10, size=32, seed=0, delay_s=0.0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        self.delay_s = delay_s

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.images[i], self.labels[i]


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10, extra_matmuls=0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, num_classes)
        self.extra_matmuls = extra_matmuls

    def forward(self, x):
        x = self.features(x)
        if self.extra_matmuls:  # a slower device / a heavier branch on this rank
            a = torch.randn(384, 384)
            for _ in range(self.extra_matmuls):
                a = torch.tanh(a @ a)
            x = x + 0 * a.mean()
        return self.classifier(torch.flatten(x, 1))


def validate(val_loader, model, criterion):
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for images, target in val_loader:
            output = model(images)
            loss_sum += criterion(output, target).item() * len(target)
            correct += (output.argmax(1) == target).sum().item()
            total += len(target)
    model.train()
    return loss_sum / total, correct / total


def main():
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group(backend="gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    torch.manual_seed(rank)

    model = SmallCNN(extra_matmuls=75 if PLANT == "compute" and rank == 1 else 0)
    if distributed:
        model = DDP(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4)

    train_dataset = RandomImages(args.train_size, delay_s=0.008 if PLANT == "loader" and rank == 1 else 0.0)
    val_dataset = RandomImages(args.val_size, seed=1)
    train_sampler = DistributedSampler(train_dataset) if distributed else None
    val_sampler = DistributedSampler(val_dataset, shuffle=False) if distributed else None
    train_loader = DataLoader(train_dataset, batch_size=args.batch_size, shuffle=(train_sampler is None),
                              num_workers=args.workers, sampler=train_sampler, drop_last=True)
    val_loader = DataLoader(val_dataset, batch_size=args.batch_size, num_workers=args.workers, sampler=val_sampler)

    steps = samples = evals = 0
    model.train()
    for epoch in range(args.epochs):
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        pending = 0  # samples of the micro-batches accumulated since the last optimizer step
        for i, (images, target) in enumerate(train_loader):
            last_micro = (i + 1) % args.accum == 0
            if distributed and not last_micro:
                with model.no_sync():
                    loss = criterion(model(images), target) / args.accum
                    loss.backward()
            else:
                loss = criterion(model(images), target) / args.accum
                loss.backward()
            pending += len(target)
            if not last_micro:
                continue
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            samples += pending
            pending = 0
            if PLANT == "sleep" and rank == 1:
                time.sleep(0.12)
            if steps % args.eval_every == 0:
                validate(val_loader, model, criterion)
                evals += 1
        assert pending == 0, "a partial accumulation at the end of an epoch"

    expected = args.epochs * (args.train_size // world // args.batch_size // args.accum)
    assert steps == expected, (steps, expected)
    tbdcheck(rank, world, steps, samples, model.module if distributed else model, evals=evals)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
