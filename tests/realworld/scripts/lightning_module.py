"""A LightningModule trained with ``lightning.pytorch.Trainer`` on CPU, as in Lightning's docs:
training_step / validation_step / configure_optimizers, a validation loop every
``--val-every`` training batches.

  python lightning_module.py --devices 1                 # one process
  python lightning_module.py --devices 2                 # Lightning starts the second process itself (DDP, gloo)
  torchrun --nproc-per-node 2 lightning_module.py --devices 2   # Lightning uses torchrun's environment

Lightning runs forward and backward inside ``optimizer.step(closure)``.
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl

from tbdcheck import tbdcheck

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--max-steps", type=int, default=12)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--val-every", type=int, default=6)
args = parser.parse_args()


class LitClassifier(pl.LightningModule):
    def __init__(self, hidden=128):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(48, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, 6))
        self.trained_samples = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.trained_samples += len(y)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader(n, seed, shuffle):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 48, generator=g), torch.randint(0, 6, (n,), generator=g)),
                      batch_size=args.batch_size, shuffle=shuffle)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    model = LitClassifier()
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                         max_steps=args.max_steps, val_check_interval=args.val_every, limit_val_batches=2,
                         num_sanity_val_steps=0, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    n = args.max_steps * args.batch_size * args.devices  # one epoch of full batches per process
    trainer.fit(model, train_dataloaders=loader(n, 0, True), val_dataloaders=loader(4 * args.batch_size, 1, False))
    assert trainer.global_step == args.max_steps, trainer.global_step
    tbdcheck(trainer.global_rank, trainer.world_size, trainer.global_step, model.trained_samples, model)
