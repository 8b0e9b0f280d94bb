"""Train StreetNet on generated street scenes and write weights/streetnet.pt.

    python train.py                      # the committed weights (see README.md for the time it took)
    python train.py --steps 200 --out /tmp/quick.pt

Training scenes use seeds 0..N-1; the mAP printed at the end is measured on held-out seeds
(``streetnet.scenes.held_out_seeds``), never seen in training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from streetnet import scenes
from streetnet.evaluate import evaluate, resize_uint8
from streetnet.model import INPUT_HEIGHT, INPUT_WIDTH, LABELS, MEAN, STD, STRIDE, build_model

HERE = Path(__file__).resolve().parent


def make_targets(scene: scenes.Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap [C, h, w], log edge distances in cells [4, h, w] and their weight [h, w].

    One Gaussian per object in its class's heatmap, shaped like the box and exactly 1 at the cell
    holding the box centre. Edge distances are learned at every cell inside the box where the
    object's Gaussian is >= 0.3, so every cell that can score high carries a usable box.
    """
    gh, gw = INPUT_HEIGHT // STRIDE, INPUT_WIDTH // STRIDE
    img_h, img_w = scene.image.shape[:2]
    scale = np.array([INPUT_WIDTH / img_w, INPUT_HEIGHT / img_h] * 2, np.float32)
    heat = np.zeros((len(LABELS), gh, gw), np.float32)
    dist = np.zeros((4, gh, gw), np.float32)
    weight = np.zeros((gh, gw), np.float32)
    gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    cy, cx = (gy + 0.5) * STRIDE, (gx + 0.5) * STRIDE
    # Smaller objects last, so that where two overlap the smaller one keeps its box targets.
    order = np.argsort(-(scene.boxes[:, 2] - scene.boxes[:, 0]) * (scene.boxes[:, 3] - scene.boxes[:, 1]))
    for box, c in zip(scene.boxes[order] * scale, scene.classes[order], strict=True):
        x1, y1, x2, y2 = box
        bx, by = (x1 + x2) / 2 / STRIDE - 0.5, (y1 + y2) / 2 / STRIDE - 0.5
        sx, sy = max(0.5, (x2 - x1) / STRIDE / 5), max(0.5, (y2 - y1) / STRIDE / 5)
        g = np.exp(-((gx - bx) ** 2 / (2 * sx * sx) + (gy - by) ** 2 / (2 * sy * sy)))
        g[min(gh - 1, max(0, round(by))), min(gw - 1, max(0, round(bx)))] = 1.0
        heat[c] = np.maximum(heat[c], g)
        inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
        pos = inside & (g >= 0.3)
        edges = np.stack([cx - x1, cy - y1, x2 - cx, y2 - cy])
        dist[:, pos] = np.log(np.maximum(edges[:, pos], 1e-3) / STRIDE)
        weight[pos] = np.maximum(g[pos], 0.3)
    return heat, dist, weight


def build_dataset(count: int, log=print) -> tuple[torch.Tensor, ...]:
    t0 = time.monotonic()
    images = np.empty((count, INPUT_HEIGHT, INPUT_WIDTH, 3), np.uint8)
    heats, dists, weights = [], [], []
    for i in range(count):
        scene = scenes.make_scene(i)
        images[i] = resize_uint8(scene.image)
        h, d, w = make_targets(scene)
        heats.append(h)
        dists.append(d)
        weights.append(w)
    log(f"generated {count} training scenes in {time.monotonic() - t0:.0f}s", flush=True)
    return (torch.from_numpy(images), torch.from_numpy(np.stack(heats)), torch.from_numpy(np.stack(dists)),
            torch.from_numpy(np.stack(weights)))


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of object centres."""
    pos = target >= 1.0
    p = torch.sigmoid(logits)
    pos_loss = -((1 - p) ** 2 * F.logsigmoid(logits))[pos].sum()
    neg_loss = -((1 - target) ** 4 * p**2 * F.logsigmoid(-logits))[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    x = images_u8.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "weights" / "streetnet.pt")
    parser.add_argument("--scenes", type=int, default=1500, help="training scenes (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--crop", type=int, nargs=2, default=(160, 224), metavar=("H", "W"),
                        help="train on random crops of this size (multiples of 32) of the 256x384 input")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval", type=int, default=200, help="held-out scenes for the mAP")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-map", type=float, default=0.5, help="exit 1 when mAP@0.5 ends below this")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, heat, dist, weight = build_dataset(args.scenes)
    model = build_model()
    print(f"StreetNet: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t0 = time.monotonic()
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch,), generator=gen)
        # Crops keep the objects' pixel sizes (the model is fully convolutional) at a fraction of
        # the cost of whole images; offsets on the stride-32 grid keep the targets aligned.
        ch, cw = args.crop
        oy = int(torch.randint(0, (INPUT_HEIGHT - ch) // 32 + 1, (1,), generator=gen)) * 32
        ox = int(torch.randint(0, (INPUT_WIDTH - cw) // 32 + 1, (1,), generator=gen)) * 32
        gy, gx, gch, gcw = oy // STRIDE, ox // STRIDE, ch // STRIDE, cw // STRIDE
        xb = normalise(images[idx][:, oy : oy + ch, ox : ox + cw])
        hb = heat[idx][:, :, gy : gy + gch, gx : gx + gcw]
        db = dist[idx][:, :, gy : gy + gch, gx : gx + gcw]
        wb = weight[idx][:, gy : gy + gch, gx : gx + gcw]
        # Horizontal flips (every class is left-right symmetric) and brightness/contrast jitter.
        flip = torch.rand(args.batch, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        hb = torch.where(flip[:, None, None, None], hb.flip(3), hb)
        db = torch.where(flip[:, None, None, None], db.flip(3)[:, [2, 1, 0, 3]], db)
        wb = torch.where(flip[:, None, None], wb.flip(2), wb)
        xb = xb * torch.empty(args.batch, 1, 1, 1).uniform_(0.8, 1.2, generator=gen) \
            + torch.empty(args.batch, 1, 1, 1).uniform_(-0.3, 0.3, generator=gen)
        logits, pred = model.raw(xb)
        cls_loss = focal_loss(logits, hb)
        box_loss = (F.smooth_l1_loss(pred, db, reduction="none", beta=0.1).sum(1) * wb).sum() / wb.sum().clamp(min=1)
        loss = cls_loss + box_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.3f} (heatmap {cls_loss.item():.3f} box {box_loss.item():.3f}) "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
    train_s = time.monotonic() - t0
    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    m, per_class = evaluate(model, [scenes.make_scene(s) for s in scenes.held_out_seeds(args.eval)])
    print(f"trained {args.steps} steps x {args.batch} in {train_s:.0f}s; mAP@0.5 on {args.eval} held-out scenes "
          f"= {m:.3f} {({k: round(v, 3) for k, v in per_class.items()})}; {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)")
    if not m >= args.min_map:
        print(f"mAP@0.5 {m:.3f} is below --min-map {args.min_map}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
