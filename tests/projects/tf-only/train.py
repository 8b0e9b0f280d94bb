"""Train BlobNet and write weights/blobnet.weights.h5 (about a minute on 2 CPU threads).

    python train.py [--steps 600] [--out weights/blobnet.weights.h5]

Targets per grid cell: the class of the object whose centre falls in the cell, its centre offset
(through tanh) and log size in cells. Deterministic: fixed seeds for data, weights and batches.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 96


def resize(image: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    x = tf.image.resize(tf.cast(image[None], tf.float32), (SIZE, SIZE), method="bilinear", antialias=False)
    return ((x[0].numpy() / 255.0) - 0.5) / 0.25


def targets(boxes: np.ndarray, classes: np.ndarray, shape: tuple[int, int], stride: int, num_classes: int):
    g = SIZE // stride
    heat = np.zeros((g, g, num_classes), np.float32)
    reg = np.zeros((g, g, 4), np.float32)
    mask = np.zeros((g, g), np.float32)
    h, w = shape
    for box, c in zip(boxes * np.array([SIZE / w, SIZE / h] * 2), classes, strict=True):
        cx, cy = (box[0] + box[2]) / 2 / stride, (box[1] + box[3]) / 2 / stride
        i, j = min(g - 1, int(cy)), min(g - 1, int(cx))
        heat[i, j, c] = 1.0
        dx, dy = np.clip([cx - j - 0.5, cy - i - 0.5], -0.95, 0.95)
        reg[i, j] = [math.atanh(dx), math.atanh(dy), math.log((box[2] - box[0]) / stride),
                     math.log((box[3] - box[1]) / stride)]
        mask[i, j] = 1.0
    return heat, reg, mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=HERE / "weights" / "blobnet.weights.h5")
    args = parser.parse_args(argv)
    import tensorflow as tf

    sys.path.insert(0, str(HERE))
    from blobs.data import LABELS, make_image
    from blobs.model import STRIDE, build_model

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(0)
    xs, heats, regs, masks = [], [], [], []
    for seed in range(args.images):
        image, boxes, classes = make_image(seed)
        xs.append(resize(image))
        h, r, m = targets(boxes, classes, image.shape[:2], STRIDE, len(LABELS))
        heats.append(h)
        regs.append(r)
        masks.append(m)
    x, heat, reg, mask = (tf.constant(np.stack(a)) for a in (xs, heats, regs, masks))
    model = build_model()
    train = tf.keras.Model(model.inputs, [model.get_layer("heatmap").output, model.get_layer("regression").output])
    opt = tf.keras.optimizers.Adam(tf.keras.optimizers.schedules.CosineDecay(3e-3, args.steps))

    @tf.function
    def step(idx):
        xb, hb, rb, mb = (tf.gather(t, idx) for t in (x, heat, reg, mask))
        with tf.GradientTape() as tape:
            logits, pred = train(xb, training=True)
            p = tf.sigmoid(logits)
            ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=hb, logits=logits)
            focal = tf.reduce_sum(ce * tf.where(hb > 0, (1 - p) ** 2, p**2)) / tf.maximum(tf.reduce_sum(hb), 1.0)
            box = tf.reduce_sum(tf.reduce_sum(tf.abs(pred - rb), -1) * mb) / tf.maximum(tf.reduce_sum(mb), 1.0)
            loss = focal + box
        opt.apply_gradients(zip(tape.gradient(loss, train.trainable_variables), train.trainable_variables,
                                strict=True))
        return loss

    rng = np.random.default_rng(0)
    for i in range(args.steps):
        loss = step(tf.constant(rng.integers(0, args.images, 32)))
        if i % 100 == 0 or i == args.steps - 1:
            print(f"step {i} loss {float(loss):.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
