"""StreetNet: an anchor-free detector with a residual backbone, an FPN neck and GroupNorm heads.

Input: float32 [N, 3, 256, 384] (RGB resized to 384x256, ``(x / 255 - 0.5) / 0.25``).
Backbone: a stride-4 patch stem and three residual stages down to stride 32. Neck: a top-down
feature pyramid that brings the stride-16 and stride-32 context to the stride-8 map. Heads: one
GroupNorm tower each for the per-class centre heatmap (CenterNet-style, sigmoid) and for the
distances from a cell's centre to the four box edges (FCOS-style).

``forward`` returns the top-K (cell, class) candidates as ``boxes [N, K, 4]`` (x1, y1, x2, y2 in
input pixels), ``scores [N, K]`` and ``classes [N, K]`` (int64), all from tensor operations, so
``torch.jit.script`` and ONNX export see the whole decoder. Thresholding and NMS come afterwards,
in whatever runs the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LABELS: tuple[str, ...] = ("car", "bus", "person", "traffic_light", "sign", "tree")
INPUT_HEIGHT, INPUT_WIDTH = 256, 384
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
STRIDE = 8


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (ResNet's basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


def tower(cin: int, cout: int, groups: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class StreetNet(nn.Module):
    def __init__(self, num_classes: int = len(LABELS), top_k: int = 100, widths: tuple[int, ...] = (32, 64, 128, 208),
                 neck: int = 64, head: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.stride = STRIDE
        c1, c2, c3, c4 = widths
        # A 4x4 patch stem: stride 4 for the price of one small convolution.
        self.stem = nn.Sequential(nn.Conv2d(3, c1, 4, 4, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
        self.stage2 = conv_bn(c1, c2, 2)  # stride 8
        self.stage3 = nn.Sequential(conv_bn(c2, c3, 2), Residual(c3))  # stride 16
        self.stage4 = nn.Sequential(conv_bn(c3, c4, 2), Residual(c4), Residual(c4))  # stride 32
        self.lateral3 = nn.Conv2d(c2, neck, 1)
        self.lateral4 = nn.Conv2d(c3, neck, 1)
        self.lateral5 = nn.Conv2d(c4, neck, 1)
        self.smooth4 = nn.Conv2d(neck, neck, 3, 1, 1)
        self.cls_tower = tower(neck, head)
        self.box_tower = tower(neck, head)
        self.cls_out = nn.Conv2d(head, num_classes, 3, 1, 1)
        self.box_out = nn.Conv2d(head, 4, 3, 1, 1)
        # A low prior for "object here" keeps the focal loss stable from the first step.
        nn.init.constant_(self.cls_out.bias, -4.6)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.stage2(self.stem(x))
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        p5 = self.lateral5(c5)
        # Sizes come from the tensors, so inputs other than 256x384 (divisible by 32) work too.
        p4 = self.smooth4(self.lateral4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest"))
        return self.lateral3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training outputs: class logits [N, C, h, w] and log edge distances in cells [N, 4, h, w]."""
        p3 = self.features(x)
        return self.cls_out(self.cls_tower(p3)), self.box_out(self.box_tower(p3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, dist = self.raw(x)
        n, c, gh, gw = logits.shape
        cells = gh * gw
        scores = torch.sigmoid(logits).reshape(n, c * cells)
        # A constant K (the input is never small enough to have fewer candidates): a Python
        # min() over sizes would be frozen into traces and ONNX graphs.
        top_scores, idx = torch.topk(scores, self.top_k, dim=1)
        classes = torch.div(idx, cells, rounding_mode="floor")
        loc = idx - classes * cells
        ys = torch.div(loc, gw, rounding_mode="floor")
        xs = loc - ys * gw
        cx = (xs.to(torch.float32) + 0.5) * self.stride
        cy = (ys.to(torch.float32) + 0.5) * self.stride
        # Both clamp bounds given: exp must not overflow, and freezing's clamp fusion wants both.
        edges = torch.exp(torch.clamp(dist, min=-6.0, max=6.0)).reshape(n, 4, cells) * self.stride
        d = torch.gather(edges, 2, loc.unsqueeze(1).expand(n, 4, self.top_k))
        boxes = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=2)
        return boxes, top_scores, classes


def build_model() -> nn.Module:
    """The entry point named in release.toml (``streetnet.model:build_model``); weights load separately."""
    return StreetNet()
