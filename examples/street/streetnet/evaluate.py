"""Pre/postprocessing and mAP@0.5 for StreetNet, with nothing but numpy and torch.

The preprocessing is the deployment contract (bilinear resize with half-pixel centres and no
antialias, then ``(x / 255 - mean) / std``); postprocessing is a score threshold and class-aware
NMS. Used by training and by ``python -m streetnet.evaluate`` to measure a weights file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streetnet.model import INPUT_HEIGHT, INPUT_WIDTH, LABELS, MEAN, STD

# mAP is measured over the whole precision/recall curve, hence the low threshold.
EVAL_THRESHOLD, NMS_IOU, MAX_DETECTIONS = 0.05, 0.5, 100


def _resize(images: Sequence[np.ndarray]) -> torch.Tensor:
    out = []
    for image in images:
        x = torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1)[None].to(torch.float32)
        if tuple(x.shape[2:]) != (INPUT_HEIGHT, INPUT_WIDTH):
            x = F.interpolate(x, size=(INPUT_HEIGHT, INPUT_WIDTH), mode="bilinear", align_corners=False,
                              antialias=False)
        out.append(x)
    return torch.cat(out)


def resize_uint8(image: np.ndarray) -> np.ndarray:
    return _resize([image])[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def preprocess(images: Sequence[np.ndarray]) -> torch.Tensor:
    x = _resize(images) / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def detect(model: torch.nn.Module, images: Sequence[np.ndarray], threshold: float = EVAL_THRESHOLD) -> list[list[dict]]:
    """Images (uint8 RGB, any size) -> per image [{"box", "score", "class_id"}] in image pixels."""
    with torch.inference_mode():
        boxes, scores, classes = (t.numpy() for t in model(preprocess(images)))
    out = []
    for image, b, s, c in zip(images, boxes, scores, classes, strict=True):
        keep = s >= threshold
        b, s, c = b[keep], s[keep], c[keep]
        order = np.argsort(-s, kind="stable")
        iou = box_iou(b[order], b[order])
        suppressed = np.zeros(len(order), bool)
        dets = []
        for i, j in enumerate(order):
            if suppressed[i] or len(dets) >= MAX_DETECTIONS:
                continue
            suppressed |= (c[order] == c[j]) & (iou[i] > NMS_IOU)
            h, w = image.shape[:2]
            scale = np.array([w / INPUT_WIDTH, h / INPUT_HEIGHT] * 2)
            box = np.clip(b[j] * scale, 0, [w, h, w, h])
            dets.append({"box": [float(v) for v in box], "score": float(s[j]), "class_id": int(c[j])})
        out.append(dets)
    return out


def average_precision(gt: list[list[dict]], dets: list[list[dict]], class_id: int, iou: float = 0.5) -> float | None:
    """VOC-style all-point AP of one class; None when the class has no ground truth."""
    gt_boxes = [np.array([g["box"] for g in gs if g["class_id"] == class_id]).reshape(-1, 4) for gs in gt]
    n_gt = sum(len(b) for b in gt_boxes)
    if n_gt == 0:
        return None
    scored = sorted(((d["score"], i, d["box"]) for i, ds in enumerate(dets) for d in ds if d["class_id"] == class_id),
                    key=lambda t: -t[0])
    taken = [np.zeros(len(b), bool) for b in gt_boxes]
    tp = np.zeros(len(scored))
    for k, (_, i, box) in enumerate(scored):
        if len(gt_boxes[i]):
            ious = box_iou(np.array([box]), gt_boxes[i])[0]
            j = int(np.argmax(ious))
            if ious[j] >= iou and not taken[i][j]:
                taken[i][j] = True
                tp[k] = 1
    recall = np.concatenate([[0.0], np.cumsum(tp) / n_gt, [1.0]])
    precision = np.concatenate([[0.0], np.cumsum(tp) / np.arange(1, len(scored) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mean_ap(gt: list[list[dict]], dets: list[list[dict]]) -> tuple[float, dict[str, float]]:
    per_class = {LABELS[c]: ap for c in range(len(LABELS)) if (ap := average_precision(gt, dets, c)) is not None}
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class


def evaluate(model: torch.nn.Module, scenes: Sequence, batch: int = 16) -> tuple[float, dict[str, float]]:
    """mAP@0.5 of ``model`` on generated scenes (``streetnet.scenes.Scene``)."""
    gt, dets = [], []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        dets.extend(detect(model, [s.image for s in chunk]))
        gt.extend([{"box": list(b), "class_id": int(c)} for b, c in zip(s.boxes, s.classes, strict=True)]
                  for s in chunk)
    return mean_ap(gt, dets)


def load_coco(annotations: Path) -> tuple[list[np.ndarray], list[list[dict]]]:
    """Images and ground truth of a COCO folder (``images`` beside the annotations file)."""
    from PIL import Image

    coco = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images, gt = [], []
    for entry in coco["images"]:
        images.append(np.asarray(Image.open(annotations.parent / "images" / entry["file_name"]).convert("RGB")))
        gt.append([{"box": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                    "class_id": LABELS.index(names[a["category_id"]])}
                   for a in coco["annotations"] if a["image_id"] == entry["id"]])
    return images, gt


def main(argv: list[str] | None = None) -> int:
    from streetnet import scenes as scene_gen
    from streetnet.model import build_model

    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description="mAP@0.5 of StreetNet weights on held-out scenes and the golden set")
    parser.add_argument("--weights", type=Path, default=here / "weights" / "streetnet.pt")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    m, per_class = evaluate(model, [scene_gen.make_scene(s) for s in scene_gen.held_out_seeds(args.held_out)])
    print(f"held-out ({args.held_out} scenes): mAP@0.5 {m:.3f} {({k: round(v, 3) for k, v in per_class.items()})}")
    images, gt = load_coco(here / "golden" / "annotations.json")
    m, per_class = mean_ap(gt, detect(model, images))
    print(f"golden ({len(images)} images): mAP@0.5 {m:.3f} {({k: round(v, 3) for k, v in per_class.items()})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
