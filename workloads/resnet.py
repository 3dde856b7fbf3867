"""ResNet-50 (He et al., 2016) in plain PyTorch, with a synthetic image data set.

The ``full`` preset is ResNet-50 exactly (bottleneck blocks [3, 4, 6, 3],
width 64, 1000 classes): 25,557,032 parameters, the figure torchvision's
``resnet50`` reports. Smaller presets shrink depth, width and image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Preset, Workload
from .data import ShardDataset, write_shards
from .registry import register


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, inplanes = [], width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride=2 if (b == 0 and i > 0) else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


class ImageTransform:
    """Random crop (with padding), horizontal flip, normalisation: CPU work in the loader."""

    def __init__(self, size: int, pad: int, seed: int):
        self.size, self.pad, self.seed = size, pad, seed

    def __call__(self, rec, i: int):
        img = rec["image"].astype(np.float32) / 255.0
        rng = np.random.default_rng((self.seed, i, torch.initial_seed() % 2**32))
        if self.pad:
            img = np.pad(img, ((0, 0), (self.pad, self.pad), (self.pad, self.pad)), mode="reflect")
            y, x = rng.integers(0, 2 * self.pad + 1, size=2)
            img = img[:, y : y + self.size, x : x + self.size]
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
        img = (img - MEAN) / STD
        return torch.from_numpy(np.ascontiguousarray(img)), torch.tensor(int(rec["label"][0]), dtype=torch.long)


def image_fields(size: int) -> dict:
    return {"image": {"dtype": "uint8", "shape": [3, size, size]}, "label": {"dtype": "int64", "shape": [1]}}


def write_image_dataset(root: Path, size: int, classes: int, samples: int, seed: int) -> None:
    """Class-dependent colour blobs plus noise: learnable, deterministic per index."""
    palette = np.random.default_rng(seed).integers(30, 225, size=(classes, 3, 1, 1))

    def make(i: int):
        rng = np.random.default_rng((seed, i))
        label = int(rng.integers(classes))
        img = palette[label] + rng.normal(0, 40, size=(3, size, size))
        return {"image": np.clip(img, 0, 255).astype(np.uint8), "label": np.array([label])}

    write_shards(root, image_fields(size), samples, make, extra={"classes": classes, "seed": seed})


@register
class ResNet50(Workload):
    name = "resnet50"
    domain = "image classification"
    presets = {
        "tiny": Preset(model=dict(layers=(1, 1, 1, 1), width=8, num_classes=10), batch_size=16, samples=512, data=dict(size=32, pad=4)),
        "small": Preset(model=dict(layers=(3, 4, 6, 3), width=16, num_classes=100), batch_size=32, samples=2048, num_workers=2, data=dict(size=64, pad=8)),
        "full": Preset(model=dict(layers=(3, 4, 6, 3), width=64, num_classes=1000), batch_size=32, samples=1024, num_workers=4, data=dict(size=224, pad=16)),
    }
    reference_params = {"full": 25_557_032}
    reference_source = "torchvision.models.resnet50 (He et al., 2016)"

    def build_model(self, preset: Preset) -> nn.Module:
        return ResNet(**preset.model)

    def write_dataset(self, root: Path, preset: Preset, seed: int) -> None:
        write_image_dataset(root, preset.data["size"], preset.model["num_classes"], preset.samples, seed)

    def dataset(self, root: Path, preset: Preset, train: bool = True):
        size = preset.data["size"]
        return ShardDataset(root, image_fields(size), ImageTransform(size, preset.data["pad"] if train else 0, seed=0))

    def loss(self, model, batch):
        images, labels = batch
        return nn.functional.cross_entropy(model(images), labels)
