"""Training of the TensorFlow example (called by ``train --framework tensorflow``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def train_tensorflow(args: argparse.Namespace) -> float:
    import tensorflow as tf

    from model_export.examples import shapes
    from model_export.examples.evaluate import evaluate_map
    from model_export.examples.tf_detector import build_model, tf_detector, training_outputs
    from model_export.examples.train import DEFAULT_WEIGHTS, build_dataset

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(args.seed)
    x, heat, dist, weight = build_dataset(args.samples, len(shapes.LABELS))
    # The shared targets are NCHW (PyTorch's layout); Keras convolutions want NHWC.
    x = tf.constant(x.transpose(0, 2, 3, 1))
    heat = tf.constant(heat.transpose(0, 2, 3, 1))
    dist = tf.constant(dist.transpose(0, 2, 3, 1))
    weight = tf.constant(weight)
    model = build_model()
    raw = training_outputs(model)
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        0.0, args.steps - args.steps // 10, warmup_target=args.lr, warmup_steps=args.steps // 10)
    opt = tf.keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4)

    @tf.function
    def step(idx, flip):
        xb, hb, db, wb = (tf.gather(t, idx) for t in (x, heat, dist, weight))
        # Horizontal flips, as for PyTorch: mirror the maps and swap the left/right distances.
        f4 = flip[:, None, None, None]
        xb = tf.where(f4, tf.reverse(xb, [2]), xb)
        hb = tf.where(f4, tf.reverse(hb, [2]), hb)
        db = tf.where(f4, tf.gather(tf.reverse(db, [2]), [2, 1, 0, 3], axis=3), db)
        wb = tf.where(flip[:, None, None], tf.reverse(wb, [2]), wb)
        with tf.GradientTape() as tape:
            logits, pred = raw(xb, training=True)
            cls_loss = focal_loss_tf(logits, hb)
            diff = tf.abs(pred - db)
            smooth = tf.where(diff < 0.1, 0.5 * diff * diff / 0.1, diff - 0.05)
            reg_loss = tf.reduce_sum(tf.reduce_sum(smooth, -1) * wb) / tf.maximum(tf.reduce_sum(wb), 1.0)
            loss = cls_loss + reg_loss
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, cls_loss, reg_loss

    rng = np.random.default_rng(args.seed)
    t0 = time.monotonic()
    for i in range(args.steps):
        idx = rng.integers(0, x.shape[0], args.batch)
        flip = rng.random(args.batch) < 0.5
        loss, cls_loss, reg_loss = step(tf.constant(idx), tf.constant(flip))
        if i % 100 == 0 or i == args.steps - 1:
            print(f"step {i:5d} loss {float(loss):.4f} (cls {float(cls_loss):.4f} box {float(reg_loss):.4f}) "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
    train_time = time.monotonic() - t0
    out = Path(args.out or DEFAULT_WEIGHTS["tensorflow"])
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(out))
    m, per_class = evaluate_map(tf_detector(model), count=args.eval)
    print(f"tensorflow: trained {args.steps} steps in {train_time:.0f}s; mAP@0.5 on {args.eval} held-out images "
          f"= {m:.4f} {per_class}; weights {out} ({out.stat().st_size} bytes)")
    return m


def focal_loss_tf(logits, target):
    """The same penalty-reduced focal loss as the PyTorch training."""
    import tensorflow as tf

    pos = tf.cast(target >= 1.0, tf.float32)
    p = tf.sigmoid(logits)
    log_p = tf.math.log_sigmoid(logits)
    log_not_p = tf.math.log_sigmoid(-logits)
    pos_loss = -tf.reduce_sum(pos * (1 - p) ** 2 * log_p)
    neg_loss = -tf.reduce_sum((1 - pos) * (1 - target) ** 4 * p**2 * log_not_p)
    return (pos_loss + neg_loss) / tf.maximum(tf.reduce_sum(pos), 1.0)
