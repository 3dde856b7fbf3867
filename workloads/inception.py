"""Inception-v3 (Szegedy et al., 2016) in plain PyTorch, with its auxiliary classifier.

The ``full`` preset is the reference architecture at 299x299: 27,161,264
parameters with the auxiliary head and 23,834,568 without, the figures of
torchvision's ``inception_v3``. Training adds the auxiliary loss with weight
0.4. Smaller presets scale every width by ``width`` and shrink the images;
the data set and its preprocessing are the image pipeline of ResNet-50.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Preset
from .registry import register
from .resnet import ResNet50

AUX_WEIGHT = 0.4


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Branches(nn.Module):
    """Parallel branches whose outputs are concatenated along channels."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


def seq(*mods):
    return nn.Sequential(*mods)


def pool_branch(cin, cout):
    return seq(nn.AvgPool2d(3, stride=1, padding=1), Conv(cin, cout, 1))


def block_a(cin, w, pool):  # 35x35, "Mixed_5b-d"
    return Branches(
        Conv(cin, w(64), 1),
        seq(Conv(cin, w(48), 1), Conv(w(48), w(64), 5, padding=2)),
        seq(Conv(cin, w(64), 1), Conv(w(64), w(96), 3, padding=1), Conv(w(96), w(96), 3, padding=1)),
        pool_branch(cin, w(pool)),
    )


def block_b(cin, w):  # 35 -> 17 reduction, "Mixed_6a"
    return Branches(
        Conv(cin, w(384), 3, stride=2),
        seq(Conv(cin, w(64), 1), Conv(w(64), w(96), 3, padding=1), Conv(w(96), w(96), 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def block_c(cin, w, c7):  # 17x17 with factorised 7x7, "Mixed_6b-e"
    return Branches(
        Conv(cin, w(192), 1),
        seq(Conv(cin, c7, 1), Conv(c7, c7, (1, 7), padding=(0, 3)), Conv(c7, w(192), (7, 1), padding=(3, 0))),
        seq(
            Conv(cin, c7, 1), Conv(c7, c7, (7, 1), padding=(3, 0)), Conv(c7, c7, (1, 7), padding=(0, 3)),
            Conv(c7, c7, (7, 1), padding=(3, 0)), Conv(c7, w(192), (1, 7), padding=(0, 3)),
        ),
        pool_branch(cin, w(192)),
    )


def block_d(cin, w):  # 17 -> 8 reduction, "Mixed_7a"
    return Branches(
        seq(Conv(cin, w(192), 1), Conv(w(192), w(320), 3, stride=2)),
        seq(Conv(cin, w(192), 1), Conv(w(192), w(192), (1, 7), padding=(0, 3)), Conv(w(192), w(192), (7, 1), padding=(3, 0)), Conv(w(192), w(192), 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def split_3x3(cin, w):
    """1x3 and 3x1 convolutions side by side (the expanded filter bank of Mixed_7b/c)."""
    return Branches(Conv(cin, w(384), (1, 3), padding=(0, 1)), Conv(cin, w(384), (3, 1), padding=(1, 0)))


def block_e(cin, w):  # 8x8, "Mixed_7b-c"
    return Branches(
        Conv(cin, w(320), 1),
        seq(Conv(cin, w(384), 1), split_3x3(w(384), w)),
        seq(Conv(cin, w(448), 1), Conv(w(448), w(384), 3, padding=1), split_3x3(w(384), w)),
        pool_branch(cin, w(192)),
    )


class AuxHead(nn.Module):
    def __init__(self, cin: int, num_classes: int, w):
        super().__init__()
        self.conv0 = Conv(cin, w(128), 1)
        self.conv1 = Conv(w(128), w(768), 5)
        self.fc = nn.Linear(w(768), num_classes)

    def forward(self, x):
        # The reference pools 17x17 to 5x5 with a 5x5/3 window; smaller images pool to 5x5 directly.
        x = F.avg_pool2d(x, 5, stride=3) if x.shape[-1] >= 17 else F.adaptive_avg_pool2d(x, 5)
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionV3(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, aux: bool = True, dropout: float = 0.5):
        super().__init__()

        def w(c: int) -> int:
            return max(4, int(c * width))

        self.stem = seq(
            Conv(3, w(32), 3, stride=2), Conv(w(32), w(32), 3), Conv(w(32), w(64), 3, padding=1), nn.MaxPool2d(3, stride=2),
            Conv(w(64), w(80), 1), Conv(w(80), w(192), 3), nn.MaxPool2d(3, stride=2),
        )
        def a_out(pool: int) -> int:
            return w(64) + w(64) + w(96) + w(pool)

        c_out = 4 * w(192)
        self.mixed_5_6 = seq(
            block_a(w(192), w, 32), block_a(a_out(32), w, 64), block_a(a_out(64), w, 64),
            block_b(a_out(64), w),
            block_c(w(384) + w(96) + a_out(64), w, w(128)), block_c(c_out, w, w(160)), block_c(c_out, w, w(160)), block_c(c_out, w, w(192)),
        )
        self.aux = AuxHead(c_out, num_classes, w) if aux else None
        e_out = w(320) + 4 * w(384) + w(192)
        self.mixed_7 = seq(block_d(c_out, w), block_e(w(320) + w(192) + c_out, w), block_e(e_out, w))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(e_out, num_classes)

    def forward(self, x):
        """Logits, and in training (with the aux head) the auxiliary logits too."""
        x = self.mixed_5_6(self.stem(x))
        aux = self.aux(x) if self.aux is not None and self.training else None
        x = self.mixed_7(x)
        logits = self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
        return (logits, aux) if aux is not None else logits


@register
class Inception(ResNet50):
    """Inception-v3 on ResNet-50's image data set and preprocessing (inherited)."""

    name = "inception_v3"
    domain = "image classification"
    presets = {
        "tiny": Preset(model=dict(num_classes=10, width=0.125), batch_size=8, samples=256, data=dict(size=75, pad=4)),
        "small": Preset(model=dict(num_classes=100, width=0.5), batch_size=32, samples=2048, num_workers=2, data=dict(size=139, pad=8)),
        "full": Preset(model=dict(num_classes=1000, width=1.0), batch_size=32, samples=1024, num_workers=4, data=dict(size=299, pad=16)),
    }
    reference_params = {"full": 27_161_264}
    reference_source = "torchvision.models.inception_v3 with aux_logits (23,834,568 without), Szegedy et al. 2016"

    def build_model(self, preset: Preset) -> nn.Module:
        return InceptionV3(**preset.model)

    def loss(self, model, batch):
        images, labels = batch
        out = model(images)
        if isinstance(out, tuple):
            logits, aux = out
            return F.cross_entropy(logits, labels) + AUX_WEIGHT * F.cross_entropy(aux, labels)
        return F.cross_entropy(out, labels)
