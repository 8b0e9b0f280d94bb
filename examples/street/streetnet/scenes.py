"""Synthetic street scenes: cars, buses, people, traffic lights, signs and trees.

A scene has a sky, a horizon at a random height, a road with lane marks, buildings with windows
(unlabelled clutter) and 2-9 objects placed in perspective: the lower an object stands, the
larger it is. Objects are drawn far to near, so nearer ones occlude farther ones; each object's
box is the extent of its *visible* pixels, and an object mostly hidden is left out of the ground
truth. Every scene is fully determined by its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LABELS: tuple[str, ...] = ("car", "bus", "person", "traffic_light", "sign", "tree")

# (width, height) of generated images; the model input is 384x256, and the others make sure that
# resizing (and a different aspect ratio) is part of what the model learns.
SIZES: tuple[tuple[int, int], ...] = ((384, 256), (448, 288), (320, 224), (512, 320), (400, 300), (360, 240))

# Training uses seeds below this; held-out evaluation and the golden images use seeds above it.
HELD_OUT_SEED = 5_000_000

# Object size (height in pixels) when it stands at the bottom edge of an image 256 px high.
_BASE_HEIGHT = {"car": 70.0, "bus": 105.0, "person": 95.0, "traffic_light": 48.0, "sign": 34.0, "tree": 150.0}
# width / height
_ASPECT = {"car": (1.9, 2.6), "bus": (2.0, 3.0), "person": (0.32, 0.45), "traffic_light": (0.34, 0.42),
           "sign": (0.95, 1.05), "tree": (0.55, 0.9)}
_MIN_VISIBLE = 0.4  # fraction of an object's pixels that must stay visible for it to be labelled


@dataclass(frozen=True)
class Scene:
    seed: int
    image: np.ndarray  # uint8 [H, W, 3] RGB
    boxes: np.ndarray  # float32 [M, 4] x1, y1, x2, y2 in pixels (x2/y2 exclusive)
    classes: np.ndarray  # int64 [M], indices into LABELS

    def annotations(self) -> list[dict]:
        return [{"box": [float(v) for v in b], "label": LABELS[int(c)]}
                for b, c in zip(self.boxes, self.classes, strict=True)]


class _Canvas:
    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.h, self.w, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), np.float32)
        self.ids = np.zeros((height, width), np.int32)  # 0: background, k: object k

    def paint(self, box: tuple[float, float, float, float], shape: Callable, colour, noise: float = 6.0,
              owner: int = 0, texture: float = 0.0) -> int:
        """Fill the pixels of ``box`` where ``shape(u, v)`` holds (u, v in 0..1 across the box)."""
        x1, y1, x2, y2 = box
        c0, c1 = max(0, int(np.floor(x1))), min(self.w, int(np.ceil(x2)))
        r0, r1 = max(0, int(np.floor(y1))), min(self.h, int(np.ceil(y2)))
        if c1 <= c0 or r1 <= r0:
            return 0
        u = ((np.arange(c0, c1, dtype=np.float32) + 0.5 - x1) / max(x2 - x1, 1e-3))[None, :]
        v = ((np.arange(r0, r1, dtype=np.float32) + 0.5 - y1) / max(y2 - y1, 1e-3))[:, None]
        mask = np.broadcast_to(shape(u, v), (r1 - r0, c1 - c0))
        n = int(mask.sum())
        if n == 0:
            return 0
        region = self.image[r0:r1, c0:c1]
        fill = np.asarray(colour, np.float32) + self.rng.normal(0.0, noise, (n, 3)).astype(np.float32)
        if texture:
            # Stripes at a random angle and period: cloth, paint and bark are not flat colours.
            a, period = self.rng.uniform(0, np.pi), self.rng.uniform(0.08, 0.3)
            stripes = np.sin((np.cos(a) * u + np.sin(a) * v) * (2 * np.pi / period))
            fill += (texture * np.broadcast_to(stripes, mask.shape)[mask])[:, None]
        region[mask] = fill
        self.ids[r0:r1, c0:c1][mask] = owner
        return n


def _rect(u0, v0, u1, v1):
    return lambda u, v: (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def _ellipse(cu, cv, ru, rv):
    return lambda u, v: ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _trapezoid(v0, v1, top, bottom):
    """Symmetric about u = 0.5; half-widths ``top`` at v0 and ``bottom`` at v1."""
    def shape(u, v):
        t = np.clip((v - v0) / (v1 - v0), 0.0, 1.0)
        return (v >= v0) & (v < v1) & (np.abs(u - 0.5) <= top + (bottom - top) * t)
    return shape


def _bright(rng, low=60, high=256):
    return rng.integers(low, high, 3).astype(np.float32)


def _draw_car(cv: _Canvas, box, k, rng):
    body = _bright(rng, 30)
    cv.paint(box, _trapezoid(0.0, 0.42, 0.22, 0.34), body, owner=k)
    cv.paint(box, _trapezoid(0.06, 0.38, 0.17, 0.29), rng.uniform(120, 200) * np.array([0.8, 0.9, 1.0]), owner=k)
    cv.paint(box, _rect(0.0, 0.38, 1.0, 0.82), body, owner=k, texture=4.0)
    cv.paint(box, _rect(0.0, 0.45, 0.07, 0.55), (255, 240, 180), noise=3, owner=k)
    for cu in (0.2, 0.8):
        cv.paint(box, _ellipse(cu, 0.8, 0.11, 0.2), (25, 25, 25), noise=4, owner=k)
        cv.paint(box, _ellipse(cu, 0.8, 0.05, 0.09), (150, 150, 150), noise=4, owner=k)


def _draw_bus(cv: _Canvas, box, k, rng):
    body = _bright(rng, 80)
    cv.paint(box, _rect(0.0, 0.0, 1.0, 0.88), body, owner=k, texture=3.0)
    glass = rng.uniform(60, 140) * np.array([0.8, 0.9, 1.0])
    n = int(rng.integers(4, 8))
    for i in range(n):
        u0 = 0.04 + i * 0.92 / n
        cv.paint(box, _rect(u0, 0.12, u0 + 0.92 / n * 0.8, 0.45), glass, owner=k)
    cv.paint(box, _rect(0.0, 0.55, 1.0, 0.6), body * 0.6, owner=k)
    for cu in (0.15, 0.82):
        cv.paint(box, _ellipse(cu, 0.86, 0.06, 0.14), (25, 25, 25), noise=4, owner=k)


def _draw_person(cv: _Canvas, box, k, rng):
    skin = np.array([rng.uniform(90, 240), rng.uniform(60, 190), rng.uniform(40, 150)])
    shirt, trousers = _bright(rng, 20), _bright(rng, 10, 160)
    cv.paint(box, _rect(0.22, 0.56, 0.47, 1.0), trousers, owner=k)
    cv.paint(box, _rect(0.53, 0.56, 0.78, 1.0), trousers, owner=k)
    cv.paint(box, _rect(0.0, 0.2, 0.16, 0.52), shirt * 0.9, owner=k)
    cv.paint(box, _rect(0.84, 0.2, 1.0, 0.52), shirt * 0.9, owner=k)
    cv.paint(box, _rect(0.14, 0.17, 0.86, 0.58), shirt, owner=k, texture=8.0)
    cv.paint(box, _ellipse(0.5, 0.09, 0.3, 0.09), skin, noise=4, owner=k)


def _draw_traffic_light(cv: _Canvas, box, k, rng):
    x1, y1, x2, y2 = box
    w = x2 - x1
    pole = (x1 + 0.38 * w, y2, x1 + 0.62 * w, y2 + 2.2 * (y2 - y1))
    cv.paint(pole, _rect(0, 0, 1, 1), (70, 70, 75), noise=5)
    cv.paint(box, _rect(0.0, 0.0, 1.0, 1.0), rng.uniform(15, 60, 3), noise=4, owner=k)
    lit = int(rng.integers(3))
    for i, colour in enumerate(((255, 40, 30), (255, 200, 20), (40, 230, 90))):
        c = np.array(colour, np.float32) * (1.0 if i == lit else 0.3)
        cv.paint(box, _ellipse(0.5, 0.18 + 0.32 * i, 0.33, 0.12), c, noise=5, owner=k)


def _draw_sign(cv: _Canvas, box, k, rng):
    x1, y1, x2, y2 = box
    w = x2 - x1
    cv.paint((x1 + 0.45 * w, y2 - 0.1 * w, x1 + 0.55 * w, y2 + 1.6 * (y2 - y1)), _rect(0, 0, 1, 1),
             (110, 110, 115), noise=5)
    cv.paint(box, _ellipse(0.5, 0.5, 0.5, 0.5), (200 + rng.uniform(-30, 40), 25, 30), noise=6, owner=k)
    cv.paint(box, _ellipse(0.5, 0.5, 0.36, 0.36), (235, 235, 235), noise=6, owner=k)
    if rng.random() < 0.5:
        cv.paint(box, _rect(0.25, 0.42, 0.75, 0.58), (30, 30, 30), noise=4, owner=k)
    else:
        cv.paint(box, _rect(0.44, 0.25, 0.56, 0.75), (30, 30, 30), noise=4, owner=k)


def _draw_tree(cv: _Canvas, box, k, rng):
    cv.paint(box, _rect(0.42, 0.55, 0.58, 1.0), (rng.uniform(70, 120), rng.uniform(45, 80), 30), owner=k,
             texture=10.0)
    green = np.array([rng.uniform(20, 90), rng.uniform(90, 190), rng.uniform(20, 80)])
    for cu, cv_, ru, rv in ((0.5, 0.3, 0.5, 0.3), (0.3, 0.45, 0.3, 0.2), (0.7, 0.45, 0.3, 0.2)):
        cv.paint(box, _ellipse(cu, cv_, ru, rv), green * rng.uniform(0.8, 1.2), noise=14, owner=k, texture=12.0)


_DRAW = {"car": _draw_car, "bus": _draw_bus, "person": _draw_person, "traffic_light": _draw_traffic_light,
         "sign": _draw_sign, "tree": _draw_tree}
# How often each class is drawn; the rarer look-alikes (bus, sign) still get enough examples.
_CLASS_P = np.array([0.24, 0.12, 0.24, 0.13, 0.13, 0.14])


def _background(cv: _Canvas, horizon: float, rng: np.random.Generator) -> None:
    h, w = cv.h, cv.w
    top, bottom = _bright(rng, 90), _bright(rng, 120)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    cv.image[:] = top * (1 - t) + bottom * t
    road = rng.uniform(50, 150) + rng.uniform(-15, 15, 3)
    cv.paint((0, horizon, w, h), _rect(0, 0, 1, 1), road, noise=rng.uniform(4, 14))
    # Buildings along the horizon, with rows of windows: boxes of all sizes that are not objects.
    x = -rng.uniform(0, 40)
    while x < w:
        bw, bh = rng.uniform(40, 140), rng.uniform(0.15, 0.9) * horizon
        facade = _bright(rng, 50, 230)
        cv.paint((x, horizon - bh, x + bw, horizon), _rect(0, 0, 1, 1), facade, noise=5, texture=3.0)
        cols, rows = int(rng.integers(2, 6)), int(rng.integers(2, 7))
        glass = _bright(rng, 20, 200)
        cv.paint((x, horizon - bh, x + bw, horizon),
                 lambda u, v, c=cols, r=rows: ((u * c) % 1.0 > 0.3) & ((v * r) % 1.0 > 0.35), glass, noise=5)
        x += bw + rng.uniform(-10, 30)
    # Lane marks: dashes along a line to the vanishing point, wider as they come nearer.
    vx = rng.uniform(0.3, 0.7) * w
    for lane in rng.uniform(-1.2, 1.2, int(rng.integers(1, 4))):
        for s in np.linspace(0.05, 1.0, 9)[:: 1 + int(rng.integers(2))]:
            y = horizon + s * (h - horizon)
            xc, half = vx + lane * s * w * 0.5, 1 + 5 * s
            cv.paint((xc - half, y, xc + half, y + 2 + 10 * s), _rect(0, 0, 1, 1), (230, 230, 210), noise=8)


def make_scene(seed: int, size: tuple[int, int] | None = None) -> Scene:
    """One scene; ``size`` is (width, height), drawn from SIZES when omitted."""
    rng = np.random.default_rng(seed)
    width, height = size if size is not None else SIZES[int(rng.integers(len(SIZES)))]
    cv = _Canvas(height, width, rng)
    horizon = float(rng.uniform(0.3, 0.55)) * height
    _background(cv, horizon, rng)

    placed = []
    for _ in range(int(rng.integers(2, 10))):
        name = LABELS[int(rng.choice(len(LABELS), p=_CLASS_P))]
        foot = float(rng.uniform(horizon + 4, height * 1.08))
        depth = (foot - horizon) / (height - horizon)  # 0 at the horizon, 1 at the bottom edge
        bh = _BASE_HEIGHT[name] * (height / 256.0) * (0.18 + 0.82 * depth) * float(rng.uniform(0.75, 1.3))
        bw = bh * float(rng.uniform(*_ASPECT[name]))
        if name in ("traffic_light", "sign"):
            foot -= bh * (2.2 if name == "traffic_light" else 1.6)  # the object sits on top of its pole
        cx = float(rng.uniform(-0.1 * bw, width + 0.1 * bw))
        placed.append((foot, name, (cx - bw / 2, foot - bh, cx + bw / 2, foot)))
    placed.sort(key=lambda p: p[0])  # far to near: nearer objects occlude farther ones

    drawn = []
    for k, (_, name, box) in enumerate(placed, start=1):
        _DRAW[name](cv, box, k, rng)
        drawn.append((k, name, int((cv.ids == k).sum())))  # before anything nearer hides part of it

    # Light and sensor noise over the whole image.
    cv.image = cv.image * float(rng.uniform(0.75, 1.2)) + float(rng.uniform(-20, 20))
    cv.image += rng.normal(0.0, float(rng.uniform(2, 9)), cv.image.shape).astype(np.float32)

    boxes, classes = [], []
    for k, name, area in drawn:
        ys, xs = np.nonzero(cv.ids == k)
        if area == 0 or len(xs) < _MIN_VISIBLE * area or len(xs) < 30:
            continue
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if box[2] - box[0] < 5 or box[3] - box[1] < 5:
            continue
        boxes.append(box)
        classes.append(LABELS.index(name))
    return Scene(seed=seed, image=np.clip(np.rint(cv.image), 0, 255).astype(np.uint8),
                 boxes=np.array(boxes, np.float32).reshape(-1, 4), classes=np.array(classes, np.int64))


def held_out_seeds(count: int, offset: int = 0) -> range:
    return range(HELD_OUT_SEED + offset, HELD_OUT_SEED + offset + count)


def golden(count: int, seed: int) -> list[tuple[np.ndarray, list[dict]]]:
    """Golden-data hook (``streetnet.scenes:golden``): ``count`` held-out scenes from ``seed``."""
    return [(s.image, s.annotations()) for s in (make_scene(HELD_OUT_SEED + seed + i) for i in range(count))]
