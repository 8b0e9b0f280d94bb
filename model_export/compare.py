"""Matching detections: an export against its eager reference, and a model against ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model_export.postprocess import box_iou

# Two detections are paired when their IoU reaches this; whether the pair is *close enough* is
# then judged against the (much stricter) tolerance given to compare_detections.
PAIR_IOU = 0.5


@dataclass
class CompareResult:
    ok: bool
    min_iou: float
    max_score_diff: float
    matched: int
    unmatched: list[dict] = field(default_factory=list)  # {"side": "ref"|"got", **detection}
    worst: list[dict] = field(default_factory=list)  # pairs outside tolerance: {"ref", "got", "iou", "score_diff"}

    def to_json(self) -> dict:
        return {
            "ok": self.ok, "min_iou": self.min_iou, "max_score_diff": self.max_score_diff,
            "matched": self.matched, "unmatched": self.unmatched, "worst": self.worst,
        }

    def table(self) -> str:
        """Human-readable list of what differed (empty string when ok)."""
        lines = []
        for u in self.unmatched:
            lines.append(
                f"  unmatched in {u['side']:3}: class {u['class_id']} score {u['score']:.5f} "
                f"box {_fmt_box(u['box'])}"
            )
        for w in self.worst:
            lines.append(
                f"  differs: class {w['ref']['class_id']} IoU {w['iou']:.5f} score diff {w['score_diff']:.2e} "
                f"ref {_fmt_box(w['ref']['box'])} got {_fmt_box(w['got']['box'])}"
            )
        return "\n".join(lines)


def _fmt_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def compare_detections(
    ref: Sequence[dict], got: Sequence[dict], iou: float = 0.99, score: float = 1e-4
) -> CompareResult:
    """Greedy one-to-one match per class (highest-scoring reference first, best IoU partner).

    ``ok`` when everything is matched, every pair has IoU >= ``iou`` and every score differs by at
    most ``score``. With nothing to compare, ``min_iou`` is 1.0 and ``max_score_diff`` 0.0.
    """
    min_iou, max_diff, matched = 1.0, 0.0, 0
    unmatched: list[dict] = []
    worst: list[dict] = []
    classes = sorted({int(d["class_id"]) for d in ref} | {int(d["class_id"]) for d in got})
    for c in classes:
        r = sorted((d for d in ref if int(d["class_id"]) == c), key=lambda d: -d["score"])
        g = [d for d in got if int(d["class_id"]) == c]
        ious = box_iou(np.array([d["box"] for d in r]), np.array([d["box"] for d in g]))
        used = np.zeros(len(g), dtype=bool)
        for i, rd in enumerate(r):
            candidates = np.where(used, -1.0, ious[i]) if len(g) else np.array([])
            j = int(np.argmax(candidates)) if len(candidates) else -1
            if j < 0 or candidates[j] < PAIR_IOU:
                unmatched.append({"side": "ref", **rd})
                continue
            used[j] = True
            matched += 1
            pair_iou = float(ious[i, j])
            diff = abs(float(rd["score"]) - float(g[j]["score"]))
            min_iou, max_diff = min(min_iou, pair_iou), max(max_diff, diff)
            if pair_iou < iou or diff > score:
                worst.append({"ref": rd, "got": g[j], "iou": pair_iou, "score_diff": diff})
        unmatched.extend({"side": "got", **g[j]} for j in range(len(g)) if not used[j])
    ok = not unmatched and not worst
    return CompareResult(ok=ok, min_iou=min_iou, max_score_diff=max_diff, matched=matched,
                         unmatched=unmatched, worst=worst)


def average_precision(
    ground_truth: Sequence[Sequence[dict]], detections: Sequence[Sequence[dict]], class_id: int,
    iou: float = 0.5,
) -> float | None:
    """Area under the all-point interpolated precision/recall curve for one class (VOC style).

    ``ground_truth[i]`` and ``detections[i]`` belong to image i. None when the class has no
    ground truth at all (it then does not count towards the mean).
    """
    n_gt = sum(1 for gts in ground_truth for g in gts if int(g["class_id"]) == class_id)
    if n_gt == 0:
        return None
    scored: list[tuple[float, int, dict]] = [
        (float(d["score"]), i, d) for i, dets in enumerate(detections) for d in dets
        if int(d["class_id"]) == class_id
    ]
    scored.sort(key=lambda t: -t[0])
    taken = [np.zeros(sum(1 for g in gts if int(g["class_id"]) == class_id), dtype=bool) for gts in ground_truth]
    gt_boxes = [
        np.array([g["box"] for g in gts if int(g["class_id"]) == class_id], dtype=np.float64).reshape(-1, 4)
        for gts in ground_truth
    ]
    tp = np.zeros(len(scored))
    for k, (_, i, d) in enumerate(scored):
        if len(gt_boxes[i]) == 0:
            continue
        ious = box_iou(np.array([d["box"]]), gt_boxes[i])[0]
        j = int(np.argmax(ious))
        if ious[j] >= iou and not taken[i][j]:
            taken[i][j] = True
            tp[k] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(scored) + 1)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    ground_truth: Sequence[Sequence[dict]], detections: Sequence[Sequence[dict]], num_classes: int,
    iou: float = 0.5,
) -> tuple[float, dict[int, float]]:
    """mAP@iou over the classes present in the ground truth, and the AP of each of them."""
    per_class = {}
    for c in range(num_classes):
        ap = average_precision(ground_truth, detections, c, iou)
        if ap is not None:
            per_class[c] = ap
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class


def precision_recall(
    ground_truth: Sequence[Sequence[dict]], detections: Sequence[Sequence[dict]], score_threshold: float,
    iou: float = 0.5,
) -> tuple[float | None, float | None, int, int, int]:
    """Precision and recall of the detections scoring at least ``score_threshold``.

    Per image and class, detections are taken highest score first and each is a true positive
    when it reaches ``iou`` with a ground-truth box not yet taken (as in ``average_precision``).
    Returns (precision, recall, true positives, detections kept, ground-truth boxes); precision is
    None with no detection kept, recall None with no ground truth.
    """
    tp = kept = n_gt = 0
    for gts, dets in zip(ground_truth, detections, strict=True):
        n_gt += len(gts)
        chosen = sorted((d for d in dets if float(d["score"]) >= score_threshold), key=lambda d: -float(d["score"]))
        kept += len(chosen)
        taken = [False] * len(gts)
        for d in chosen:
            best, best_iou = -1, iou
            for j, g in enumerate(gts):
                if taken[j] or int(g["class_id"]) != int(d["class_id"]):
                    continue
                overlap = float(box_iou(np.array([d["box"]]), np.array([g["box"]]))[0, 0])
                if overlap >= best_iou:
                    best, best_iou = j, overlap
            if best >= 0:
                taken[best] = True
                tp += 1
    precision = tp / kept if kept else None
    recall = tp / n_gt if n_gt else None
    return precision, recall, tp, kept, n_gt


def accuracy(
    ground_truth: Sequence[Sequence[dict]], detections: Sequence[Sequence[dict]], labels: Sequence[str],
    score_threshold: float, iou: float = 0.5,
) -> dict:
    """mAP@``iou`` over the model's labels present in the ground truth, and precision/recall at
    the release score threshold: what smoke reports and ``min-map50`` gates.

    Classes are matched by label name where the ground truth carries one (so a set written for
    another label order cannot score by accident), else by class id.
    """
    index = {name: i for i, name in enumerate(labels)}

    def by_name(items: Sequence[dict]) -> list[dict]:
        return [{**g, "class_id": index.get(g["label"], -1)} if "label" in g else g for g in items]

    gt = [by_name(g) for g in ground_truth]
    dets = [by_name(d) for d in detections]
    map50, per_class = mean_average_precision(gt, dets, num_classes=len(labels), iou=iou)
    precision, recall, tp, kept, n_gt = precision_recall(gt, dets, score_threshold, iou)
    return {
        "map50": round(map50, 6),
        "ap50_per_label": {labels[c]: round(ap, 6) for c, ap in per_class.items()},
        "precision": None if precision is None else round(precision, 6),
        "recall": None if recall is None else round(recall, 6),
        "score_threshold": score_threshold,
        "iou": iou,
        "true_positives": tp,
        "detections": kept,
        "ground_truth_boxes": n_gt,
    }
