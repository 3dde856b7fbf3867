"""Faster R-CNN (Ren et al., 2015): a two-stage detector in plain PyTorch.

Backbone and box head are ResNet split at stage 4 ("C4", He et al., 2016):
stages 1-4 compute a stride-16 feature map; a region proposal network
slides a 3x3 conv over it and predicts, per anchor (sizes x aspect ratios),
an objectness score and box deltas; proposals are decoded, clipped and
thinned by non-maximum suppression; RoIAlign crops each sampled proposal
from the feature map; ResNet stage 5 plus average pooling is the box head,
followed by a classifier and class-specific box regression. Everything,
NMS and RoIAlign included, is written here with torch tensor ops.

Simplified against the reference: square images of one size (no
aspect-ratio resizing), batch norm trained rather than frozen, greedy NMS
on the whole proposal set (no batched CUDA kernel), RoIAlign with a fixed
2x2 sampling grid per bin through ``grid_sample``, training losses only
(no inference post-processing or mAP evaluation).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import Preset, Workload
from .data import DataFormatError, ShardDataset, write_shards
from .registry import register
from .resnet import MEAN, STD, ResNet

STRIDE = 16  # of the C4 feature map
RPN_BATCH, RPN_POS = 256, 0.5  # anchors sampled per image, positive fraction
RPN_HI, RPN_LO = 0.7, 0.3  # IoU for positive / negative anchors
ROI_POS, ROI_HI = 0.25, 0.5  # positive fraction and IoU of sampled RoIs
NMS_IOU = 0.7
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # box-delta scaling of the head


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (x1, y1, x2, y2)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-6)


def encode(ref: torch.Tensor, gt: torch.Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Deltas (dx, dy, dw, dh) that move ``ref`` boxes onto ``gt`` boxes."""
    wr, hr = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    wg, hg = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = ((gt[:, 0] + gt[:, 2]) - (ref[:, 0] + ref[:, 2])) / 2 / wr
    dy = ((gt[:, 1] + gt[:, 3]) - (ref[:, 1] + ref[:, 3])) / 2 / hr
    d = torch.stack([dx, dy, torch.log(wg / wr), torch.log(hg / hr)], 1)
    return d * d.new_tensor(weights)


def decode(ref: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Boxes from ``ref`` boxes moved by ``deltas`` (the inverse of :func:`encode`)."""
    w, h = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    cx, cy = ref[:, 0] + w / 2 + deltas[:, 0] * w, ref[:, 1] + h / 2 + deltas[:, 1] * h
    clamp = math.log(1000.0 / 16)
    w, h = w * deltas[:, 2].clamp(max=clamp).exp(), h * deltas[:, 3].clamp(max=clamp).exp()
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best first."""
    order = scores.argsort(descending=True)
    overlap = (box_iou(boxes[order], boxes[order]) > iou).cpu().numpy()
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ~overlap[i, i + 1 :]
    return order[torch.from_numpy(keep).to(order.device)]


def match(gt: torch.Tensor, boxes: torch.Tensor, hi: float, lo: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box: label (1 positive, 0 negative, -1 ignored) and index of its best ground-truth box."""
    if len(gt) == 0:
        return boxes.new_zeros(len(boxes), dtype=torch.long), boxes.new_zeros(len(boxes), dtype=torch.long)
    iou = box_iou(gt, boxes)
    best, idx = iou.max(0)
    labels = torch.full_like(idx, -1)
    labels[best < lo] = 0
    labels[best >= hi] = 1
    return labels, idx


def sample(labels: torch.Tensor, total: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random positive and negative indices: at most ``pos_fraction`` of ``total`` positives."""
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    pos = pos[torch.randperm(len(pos), device=pos.device)[: int(total * pos_fraction)]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[: total - len(pos)]]
    return pos, neg


def roi_align(features: torch.Tensor, rois: list[torch.Tensor], size: int, scale: float) -> torch.Tensor:
    """Crop ``size`` x ``size`` bins per box (image coordinates) with 2x2 bilinear samples per bin."""
    out = []
    steps = (torch.arange(2 * size, device=features.device, dtype=features.dtype) + 0.5) / (2 * size)
    _, _, h, w = features.shape
    for b, boxes in enumerate(rois):
        x = boxes[:, 0, None] + steps[None, :] * (boxes[:, 2] - boxes[:, 0])[:, None]  # [K, 2S] image x
        y = boxes[:, 1, None] + steps[None, :] * (boxes[:, 3] - boxes[:, 1])[:, None]
        gx = (x * scale / w * 2 - 1)[:, None, :].expand(-1, 2 * size, -1)
        gy = (y * scale / h * 2 - 1)[:, :, None].expand(-1, -1, 2 * size)
        grid = torch.stack([gx, gy], -1).reshape(1, -1, 2 * size, 2)  # K crops stacked along height
        crops = F.grid_sample(features[b : b + 1], grid, align_corners=False)
        crops = crops.view(features.shape[1], len(boxes), 2 * size, 2 * size).transpose(0, 1)
        out.append(F.avg_pool2d(crops, 2))
    return torch.cat(out)


def anchor_grid(sizes, ratios, height: int, width: int, device) -> torch.Tensor:
    """All anchors of a ``height`` x ``width`` feature map, [H*W*A, 4], position-major."""
    base = []
    for s in sizes:
        for r in ratios:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            base.append([-w / 2, -h / 2, w / 2, h / 2])
    base = torch.tensor(base, device=device)
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    centers = (torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float() + 0.5) * STRIDE
    return (centers + base[None]).reshape(-1, 4)


class FasterRCNN(nn.Module):
    def __init__(
        self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 21, anchor_sizes=(32, 64, 128, 256, 512),
        ratios=(0.5, 1.0, 2.0), roi_size: int = 14, pre_nms: int = 6000, post_nms: int = 1000, rois_per_image: int = 512,
    ):
        super().__init__()
        resnet = ResNet(layers, width, num_classes=1)
        self.trunk = nn.Sequential(resnet.stem, *resnet.stages[:3])
        self.head = resnet.stages[3]
        c4, c5 = width * 16, width * 32
        self.anchor_sizes, self.ratios = anchor_sizes, ratios
        anchors = len(anchor_sizes) * len(ratios)
        self.rpn_conv = nn.Conv2d(c4, c4, 3, padding=1)
        self.rpn_logits = nn.Conv2d(c4, anchors, 1)
        self.rpn_deltas = nn.Conv2d(c4, 4 * anchors, 1)
        self.cls = nn.Linear(c5, num_classes)
        self.box = nn.Linear(c5, 4 * num_classes)
        self.roi_size, self.pre_nms, self.post_nms, self.rois_per_image = roi_size, pre_nms, post_nms, rois_per_image

    def forward(self, images: torch.Tensor, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]) -> torch.Tensor:
        """The four training losses (RPN objectness, RPN boxes, head class, head boxes), stacked."""
        feats = self.trunk(images)
        n, _, h, w = feats.shape
        t = F.relu(self.rpn_conv(feats))
        logits = self.rpn_logits(t).permute(0, 2, 3, 1).reshape(n, -1)
        deltas = self.rpn_deltas(t).view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = anchor_grid(self.anchor_sizes, self.ratios, h, w, images.device)
        rpn_losses = [self._rpn_loss(anchors, logits[i], deltas[i], gt_boxes[i]) for i in range(n)]
        rois, targets = zip(*(self._sample_rois(anchors, logits[i], deltas[i], gt_boxes[i], gt_labels[i], images.shape[-1]) for i in range(n)))
        x = self.head(roi_align(feats, list(rois), self.roi_size, 1.0 / STRIDE))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return torch.stack([*torch.stack(rpn_losses).mean(0), *self._head_loss(self.cls(x), self.box(x), rois, targets)])

    def _rpn_loss(self, anchors, logits, deltas, gt):
        labels, idx = match(gt, anchors, RPN_HI, RPN_LO)
        if len(gt):  # every ground-truth box gets at least its best anchor(s)
            iou = box_iou(gt, anchors)
            best = (iou == iou.max(1, keepdim=True).values) & (iou > 0)
            labels[best.any(0)] = 1
            idx = torch.where(best.any(0), best.float().argmax(0), idx)
        pos, neg = sample(labels, RPN_BATCH, RPN_POS)
        chosen = torch.cat([pos, neg])
        cls = F.binary_cross_entropy_with_logits(logits[chosen], (labels[chosen] == 1).float())
        box = F.smooth_l1_loss(deltas[pos], encode(anchors[pos], gt[idx[pos]]), beta=1 / 9, reduction="sum") / max(1, len(chosen))
        return torch.stack([cls, box])

    @torch.no_grad()
    def _sample_rois(self, anchors, logits, deltas, gt, gt_labels, size):
        scores, top = logits.topk(min(self.pre_nms, len(logits)))
        boxes = decode(anchors[top], deltas[top]).clamp(0, size)
        ok = ((boxes[:, 2] - boxes[:, 0]) > 1) & ((boxes[:, 3] - boxes[:, 1]) > 1)
        boxes, scores = boxes[ok], scores[ok]
        proposals = torch.cat([boxes[nms(boxes, scores, NMS_IOU)[: self.post_nms]], gt])
        fg, idx = match(gt, proposals, ROI_HI, ROI_HI)
        pos, neg = sample(fg, self.rois_per_image, ROI_POS)
        rois = proposals[torch.cat([pos, neg])]
        classes = torch.cat([gt_labels[idx[pos]], gt_labels.new_zeros(len(neg))])
        deltas = encode(proposals[pos], gt[idx[pos]], HEAD_WEIGHTS) if len(gt) else rois.new_zeros(0, 4)
        return rois, (classes, deltas)

    def _head_loss(self, class_logits, box_deltas, rois, targets):
        classes = torch.cat([c for c, _ in targets])
        cls = F.cross_entropy(class_logits, classes)
        fg = torch.nonzero(classes > 0).flatten()
        picked = box_deltas.view(len(classes), -1, 4)[fg, classes[fg]]
        box = F.smooth_l1_loss(picked, torch.cat([d for _, d in targets]), beta=1.0, reduction="sum") / len(classes)
        return cls, box


def detection_fields(size: int, max_boxes: int) -> dict:
    return {
        "image": {"dtype": "uint8", "shape": [3, size, size]},
        "boxes": {"dtype": "float32", "shape": [max_boxes, 4]},
        "labels": {"dtype": "int64", "shape": [max_boxes]},
        "count": {"dtype": "int64", "shape": [1]},
    }


def write_detection_dataset(root: Path, size: int, classes: int, max_boxes: int, samples: int, seed: int) -> None:
    """Noisy images with 1..max_boxes filled rectangles whose colour is their class."""
    palette = np.random.default_rng(seed).integers(40, 255, size=(classes, 3, 1, 1))

    def make(i: int):
        r = np.random.default_rng((seed, i))
        img = r.normal(110, 30, size=(3, size, size))
        n = int(r.integers(1, max_boxes + 1))
        boxes = np.zeros((max_boxes, 4), dtype=np.float32)
        labels = np.zeros(max_boxes, dtype=np.int64)
        for k in range(n):
            w, h = r.integers(size // 8, size // 2, size=2)
            x, y = r.integers(0, size - w), r.integers(0, size - h)
            labels[k] = r.integers(1, classes)
            img[:, y : y + h, x : x + w] = palette[labels[k]] + r.normal(0, 10, size=(3, h, w))
            boxes[k] = (x, y, x + w, y + h)
        return {"image": np.clip(img, 0, 255).astype(np.uint8), "boxes": boxes, "labels": labels, "count": [n]}

    write_shards(root, detection_fields(size, max_boxes), samples, make, extra={"classes": classes, "seed": seed})


class DetectionTransform:
    """Normalise, and flip image and boxes horizontally at random."""

    def __init__(self, size: int, flip: bool):
        self.size, self.flip = size, flip

    def __call__(self, rec, i: int):
        n = int(rec["count"][0])
        img = (rec["image"].astype(np.float32) / 255.0 - MEAN) / STD
        boxes = rec["boxes"][:n].copy()
        if self.flip and np.random.default_rng((i, torch.initial_seed() % 2**32)).random() < 0.5:
            img = img[:, :, ::-1]
            boxes[:, [0, 2]] = self.size - boxes[:, [2, 0]]
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(boxes), torch.from_numpy(rec["labels"][:n].copy())


def collate_detection(items):
    """(images [B, 3, S, S], boxes: list of [n_i, 4], labels: list of [n_i])."""
    images, boxes, labels = zip(*items)
    return torch.stack(images), list(boxes), list(labels)


@register
class FasterRCNNWorkload(Workload):
    name = "faster_rcnn"
    domain = "object detection"
    unit = "images"
    presets = {
        "tiny": Preset(
            model=dict(layers=(1, 1, 1, 1), width=8, num_classes=4, anchor_sizes=(16, 32), roi_size=6, pre_nms=200, post_nms=50, rois_per_image=32),
            batch_size=2, samples=128, lr=0.01, data=dict(size=64, max_boxes=4),
        ),
        "small": Preset(
            model=dict(layers=(2, 2, 2, 2), width=16, num_classes=11, anchor_sizes=(32, 64, 128), roi_size=10, pre_nms=2000, post_nms=300, rois_per_image=128),
            batch_size=2, samples=512, lr=0.01, num_workers=2, data=dict(size=256, max_boxes=8),
        ),
        "full": Preset(model=dict(layers=(3, 4, 6, 3), width=64, num_classes=21), batch_size=2, samples=256, lr=0.01, num_workers=4, data=dict(size=600, max_boxes=20)),
    }
    reference_params = {"full": 33_238_260}
    reference_source = (
        "Faster R-CNN ResNet-50-C4 (Ren et al. 2015; He et al. 2016), Detectron's e2e_faster_rcnn_R-50-C4 layout: "
        "15 anchors, 21 VOC classes; torchvision resnet50 trunk without fc, counted from that layout"
    )
    collate_fn = staticmethod(collate_detection)

    def build_model(self, preset: Preset) -> nn.Module:
        return FasterRCNN(**preset.model)

    def write_dataset(self, root: Path, preset: Preset, seed: int) -> None:
        write_detection_dataset(root, preset.data["size"], preset.model["num_classes"], preset.data["max_boxes"], preset.samples, seed)

    def dataset(self, root: Path, preset: Preset, train: bool = True):
        size = preset.data["size"]
        ds = ShardDataset(root, detection_fields(size, preset.data["max_boxes"]), DetectionTransform(size, flip=train))
        if not isinstance(ds.meta.get("classes"), int) or ds.meta["classes"] > preset.model["num_classes"]:
            raise DataFormatError(f"{root}: meta.json 'classes' must be at most the model's {preset.model['num_classes']}")
        return ds

    def loss(self, model, batch):
        return model(*batch).sum()

    def optimizer(self, model, preset):
        return torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=0.9, weight_decay=1e-4)
