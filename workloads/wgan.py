"""WGAN-GP (Gulrajani et al., 2017) with DCGAN networks (Radford et al., 2016).

The ``full`` preset is the DCGAN of PyTorch's examples for 64x64 images
(z of 100, 64 base filters): a 3,576,704-parameter generator and a
2,765,568-parameter critic, whose batch norms become layer norms
(``GroupNorm(1, C)``, same parameter count) because the gradient penalty is
per sample. Each step trains the critic ``n_critic`` times (its own Adam)
and the generator once (its own Adam); the loader's batch holds the
``n_critic`` real mini-batches, so the batch size must divide by ``n_critic``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._dist import unwrap
from .base import Preset, Workload
from .data import ShardDataset
from .registry import register
from .resnet import image_fields, write_image_dataset

GP_WEIGHT = 10.0


def generator(nz: int, ngf: int, size: int) -> nn.Sequential:
    """z [B, nz, 1, 1] -> image [B, 3, size, size] in [-1, 1]; doubling up from 4x4."""
    ups = int(math.log2(size // 4))
    ch = ngf * 2 ** (ups - 1)
    layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
    for _ in range(ups - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
        ch //= 2
    return nn.Sequential(*layers, nn.ConvTranspose2d(ch, 3, 4, 2, 1, bias=False), nn.Tanh())


def critic(ndf: int, size: int) -> nn.Sequential:
    """image -> score [B]; halving down to 4x4, layer norm instead of batch norm."""
    ups = int(math.log2(size // 4))
    layers, ch = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)], ndf
    for _ in range(ups - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.GroupNorm(1, ch * 2), nn.LeakyReLU(0.2, True)]
        ch *= 2
    return nn.Sequential(*layers, nn.Conv2d(ch, 1, 4, 1, 0, bias=False), nn.Flatten(0))


class WGAN(nn.Module):
    """Generator and critic; ``forward`` computes one side's loss so profiler hooks see it."""

    def __init__(self, nz: int = 100, ngf: int = 64, ndf: int = 64, size: int = 64, n_critic: int = 5):
        super().__init__()
        self.nz, self.n_critic = nz, n_critic
        self.generator = generator(nz, ngf, size)
        self.critic = critic(ndf, size)

    def noise(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(n, self.nz, 1, 1, device=like.device, dtype=like.dtype)

    def forward(self, real: torch.Tensor | None = None, n: int = 0) -> torch.Tensor:
        """Critic loss with gradient penalty for a ``real`` batch, else the generator loss for ``n`` samples."""
        if real is None:
            return -self.critic(self.generator(self.noise(n, next(self.parameters())))).mean()
        with torch.no_grad():  # the critic step does not train the generator
            fake = self.generator(self.noise(len(real), real))
        eps = torch.rand(len(real), 1, 1, 1, device=real.device)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.critic(mixed).sum(), mixed, create_graph=True)[0]
        penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return self.critic(fake).mean() - self.critic(real).mean() + GP_WEIGHT * penalty


class GanTransform:
    """Random horizontal flip, scale to [-1, 1] (the generator's tanh range)."""

    def __call__(self, rec, i: int):
        img = rec["image"].astype(np.float32) / 127.5 - 1.0
        if np.random.default_rng((i, torch.initial_seed() % 2**32)).random() < 0.5:
            img = img[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img))


@register
class WGANWorkload(Workload):
    name = "wgan"
    domain = "adversarial learning"
    phases = tuple(f"{net}_{p}" for net in ("critic", "generator") for p in ("forward", "backward", "optimizer"))
    presets = {
        "tiny": Preset(model=dict(nz=32, ngf=16, ndf=16, size=16, n_critic=5), batch_size=20, samples=512, lr=1e-4),
        "small": Preset(model=dict(nz=100, ngf=32, ndf=32, size=32, n_critic=5), batch_size=160, samples=4096, lr=1e-4, num_workers=2),
        "full": Preset(model=dict(nz=100, ngf=64, ndf=64, size=64, n_critic=5), batch_size=320, samples=8192, lr=1e-4, num_workers=4),
    }
    reference_params = {"full": 6_342_272}
    reference_source = "PyTorch examples DCGAN (Radford et al. 2016), nz 100, ngf = ndf = 64: generator 3,576,704 + critic 2,765,568"

    def __init__(self):
        self._generator_opt: torch.optim.Optimizer | None = None

    def build_model(self, preset: Preset) -> nn.Module:
        return WGAN(**preset.model)

    def write_dataset(self, root: Path, preset: Preset, seed: int) -> None:
        write_image_dataset(root, preset.model["size"], 10, preset.samples, seed)

    def dataset(self, root: Path, preset: Preset, train: bool = True):
        return ShardDataset(root, image_fields(preset.model["size"]), GanTransform())

    def check_batch_size(self, preset: Preset, batch_size: int) -> str | None:
        n = preset.model["n_critic"]
        if batch_size % n:
            return f"--batch-size {batch_size} must be a multiple of n_critic = {n} (one real mini-batch per critic step)"
        return None

    def optimizer(self, model, preset):
        """The critic's Adam (the runner's optimizer); the generator's, alike, is made beside it."""
        gan = unwrap(model)
        self._generator_opt = torch.optim.Adam(gan.generator.parameters(), lr=preset.lr, betas=(0.0, 0.9))
        return torch.optim.Adam(gan.critic.parameters(), lr=preset.lr, betas=(0.0, 0.9))

    def other_optimizers(self):
        return (self._generator_opt,) if self._generator_opt is not None else ()

    def loss(self, model, batch):
        """The critic loss on the first real mini-batch."""
        gan = unwrap(model)
        return gan(batch[: len(batch) // gan.n_critic])

    def train_step(self, model, optimizer, batch, phase, average_gradients) -> bool:
        gan = unwrap(model)  # gradients are averaged below: DDP cannot train two halves in turn
        gan.critic.requires_grad_(True)
        for real in batch.chunk(gan.n_critic):
            with phase("critic_forward"):
                loss = gan(real)
            with phase("critic_backward"):
                loss.backward()
                average_gradients(gan.critic.parameters())
            with phase("critic_optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        gan.critic.requires_grad_(False)
        with phase("generator_forward"):
            loss = gan(n=len(real))
        with phase("generator_backward"):
            loss.backward()
            average_gradients(gan.generator.parameters())
        with phase("generator_optimizer"):
            self._generator_opt.step()
            self._generator_opt.zero_grad(set_to_none=True)
        return True
