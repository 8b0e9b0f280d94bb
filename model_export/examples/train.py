"""Train an example detector on synthetic shapes and write its weights file.

    python -m model_export.examples.train --framework pytorch
    python -m model_export.examples.train --framework tensorflow

Both frameworks learn the same targets (see ``make_targets``), built once from a fixed range of
training seeds; evaluation uses held-out seeds (``shapes.held_out_seeds``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from model_export.examples import shapes
from model_export.examples.evaluate import EXAMPLE_INPUT
from model_export.preprocess import preprocess_batch

STRIDE = 8
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = {"pytorch": WEIGHTS_DIR / "shapes_torch.pt", "tensorflow": WEIGHTS_DIR / "shapes_tf.weights.h5"}


def make_targets(sample: shapes.Sample, height: int, width: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """Heatmap [C, h, w], log edge distances in cells [4, h, w] and their weight [h, w].

    The heatmap is a Gaussian per object, exactly 1 at the cell holding the box centre. Box
    distances are learned at every cell inside the box where the object's Gaussian is >= 0.3,
    so the cells that score high enough to be candidates all carry a usable box.
    """
    gh, gw = height // STRIDE, width // STRIDE
    img_h, img_w = sample.image.shape[:2]
    scale = np.array([width / img_w, height / img_h, width / img_w, height / img_h], dtype=np.float32)
    heat = np.zeros((num_classes, gh, gw), dtype=np.float32)
    dist = np.zeros((4, gh, gw), dtype=np.float32)
    weight = np.zeros((gh, gw), dtype=np.float32)
    cy, cx = (np.mgrid[0:gh, 0:gw].astype(np.float32) + 0.5) * STRIDE
    for box, c in zip(sample.boxes * scale, sample.classes, strict=True):
        x1, y1, x2, y2 = box
        bx, by = (x1 + x2) / 2 / STRIDE - 0.5, (y1 + y2) / 2 / STRIDE - 0.5
        sigma = max(0.5, min(x2 - x1, y2 - y1) / STRIDE / 4)
        gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        g = np.exp(-((gx - bx) ** 2 + (gy - by) ** 2) / (2 * sigma * sigma))
        g[min(gh - 1, round(by)), min(gw - 1, round(bx))] = 1.0
        heat[c] = np.maximum(heat[c], g)
        inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
        pos = inside & (g >= 0.3) & (g > weight)
        edges = np.stack([cx - x1, cy - y1, x2 - cx, y2 - cy])
        dist[:, pos] = np.log(np.maximum(edges[:, pos], 1e-3) / STRIDE)
        weight[pos] = g[pos]
    return heat, dist, weight


def build_dataset(count: int, num_classes: int, log=print) -> tuple[np.ndarray, ...]:
    t0 = time.monotonic()
    spec = EXAMPLE_INPUT
    xs, heats, dists, weights = [], [], [], []
    for s in shapes.samples(range(count)):
        xs.append(preprocess_batch([s.image], spec)[0])
        h, d, w = make_targets(s, spec.height, spec.width, num_classes)
        heats.append(h)
        dists.append(d)
        weights.append(w)
    log(f"built {count} training samples in {time.monotonic() - t0:.1f}s")
    return np.stack(xs), np.stack(heats), np.stack(dists), np.stack(weights)


def train_pytorch(args: argparse.Namespace) -> float:
    import torch
    import torch.nn.functional as F

    from model_export.examples.evaluate import evaluate_map, torch_detector
    from model_export.examples.torch_detector import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, heat, dist, weight = (torch.from_numpy(a) for a in build_dataset(args.samples, len(shapes.LABELS)))
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.monotonic()
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch,), generator=gen)
        xb, hb, db, wb = x[idx], heat[idx], dist[idx], weight[idx]
        # Horizontal flips: every shape here is left-right symmetric, so labels stay valid.
        flip = torch.rand(args.batch, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        hb = torch.where(flip[:, None, None, None], hb.flip(3), hb)
        db = torch.where(flip[:, None, None, None], db.flip(3)[:, [2, 1, 0, 3]], db)
        wb = torch.where(flip[:, None, None], wb.flip(2), wb)
        logits, pred = model.raw(xb)
        cls_loss = focal_loss_torch(logits, hb)
        reg_loss = (F.smooth_l1_loss(pred, db, reduction="none", beta=0.1).sum(1) * wb).sum() / wb.sum().clamp(min=1)
        loss = cls_loss + reg_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} (cls {cls_loss.item():.4f} box {reg_loss.item():.4f}) "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
    train_time = time.monotonic() - t0
    model.eval()
    out = Path(args.out or DEFAULT_WEIGHTS["pytorch"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    m, per_class = evaluate_map(torch_detector(model), count=args.eval)
    print(f"pytorch: trained {args.steps} steps in {train_time:.0f}s; mAP@0.5 on {args.eval} held-out images "
          f"= {m:.4f} {per_class}; weights {out} ({out.stat().st_size} bytes)")
    return m


def focal_loss_torch(logits, target):
    """CenterNet's penalty-reduced focal loss, normalised by the number of object centres."""
    import torch
    import torch.nn.functional as F

    pos = target >= 1.0
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_loss = -((1 - p) ** 2 * log_p)[pos].sum()
    neg_loss = -((1 - target) ** 4 * p**2 * log_not_p)[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=["pytorch", "tensorflow"], required=True)
    parser.add_argument("--out", help="weights file (default: the committed example weights)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--samples", type=int, default=3000, help="training images (seeds 0..N-1)")
    parser.add_argument("--eval", type=int, default=300, help="held-out images for mAP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-map", type=float, default=0.9, help="exit 1 when mAP@0.5 ends below this")
    args = parser.parse_args(argv)
    if args.framework == "pytorch":
        m = train_pytorch(args)
    else:
        from model_export.examples.train_tf import train_tensorflow

        m = train_tensorflow(args)
    if math.isnan(m) or m < args.min_map:
        print(f"mAP@0.5 {m:.4f} is below --min-map {args.min_map}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
