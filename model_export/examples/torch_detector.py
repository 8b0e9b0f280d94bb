"""A small anchor-free detector in pure PyTorch (no torchvision), for the shapes example.

A stride-8 feature map; at every cell a per-class centre heatmap (sigmoid) and the distances
from the cell centre to the four box edges. ``forward`` decodes the top-K (cell, class)
candidates with tensor ops only, so ``torch.jit.script`` and ONNX export both see the whole
decoder; NMS happens afterwards in ``model_export.postprocess``.
"""

from __future__ import annotations

import torch
from torch import nn

from model_export.examples.shapes import LABELS

STRIDE = 8
INPUT_SIZE = 128


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ShapesDetector(nn.Module):
    def __init__(self, num_classes: int = len(LABELS), top_k: int = 100, width: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.top_k = top_k
        self.stride = STRIDE
        w = width
        self.backbone = nn.Sequential(
            _block(3, w // 2, stride=2),  # 64x64
            _block(w // 2, w, stride=2),  # 32x32
            _block(w, w),
            _block(w, 2 * w, stride=2),  # 16x16 = stride 8
            _block(2 * w, 2 * w),
            # Dilated blocks widen the receptive field to cover the largest shapes (~50 px).
            _block(2 * w, 2 * w, dilation=2),
            _block(2 * w, 2 * w, dilation=4),
        )
        self.neck = _block(2 * w, 2 * w)
        self.cls_head = nn.Conv2d(2 * w, num_classes, 1)
        self.box_head = nn.Conv2d(2 * w, 4, 1)
        # Start with a low prior for "object here" so the focal loss is stable from step one.
        nn.init.constant_(self.cls_head.bias, -4.0)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training outputs: class logits [N, C, h, w] and log edge distances in cells [N, 4, h, w]."""
        f = self.neck(self.backbone(x))
        return self.cls_head(f), self.box_head(f)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, dist = self.raw(x)
        n, c, gh, gw = logits.shape
        cells = gh * gw
        scores = torch.sigmoid(logits).reshape(n, c * cells)
        # A constant K, not min(K, c * cells): a Python min over sizes would be frozen into traces
        # and ONNX graphs as data-dependent control flow. The exporter's input-spec check runs the
        # model once, so an input too small for K candidates fails there with a clear message.
        k = self.top_k
        top_scores, idx = torch.topk(scores, k, dim=1)
        classes = torch.div(idx, cells, rounding_mode="floor")
        loc = idx - classes * cells
        ys = torch.div(loc, gw, rounding_mode="floor")
        xs = loc - ys * gw
        cx = (xs.to(torch.float32) + 0.5) * self.stride
        cy = (ys.to(torch.float32) + 0.5) * self.stride
        # Clamp before exp so that no input overflows to inf. Both bounds are given because
        # optimize_for_inference's clamp fusion asserts on a missing one.
        edges = torch.exp(torch.clamp(dist, min=-8.0, max=6.0)).reshape(n, 4, cells) * self.stride
        d = torch.gather(edges, 2, loc.unsqueeze(1).expand(n, 4, k))
        boxes = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=2)
        return boxes, top_scores, classes


def build_model() -> nn.Module:
    """Entry point named in release.toml; the exporter loads the weights file itself."""
    return ShapesDetector()
