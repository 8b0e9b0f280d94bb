"""BlobNet: a Keras detector on a stride-8 grid that predicts box centre offsets and log sizes.

Preprocessed float32 [N, 96, 96, 3] -> (boxes [N, M, 4] in input pixels, scores [N, M, C]): one
box per grid cell with a sigmoid score per class, before NMS (what Slipway's TensorFlow exporter
expects of a Keras detector).
"""

from __future__ import annotations

import tensorflow as tf

from blobs.data import LABELS

keras = tf.keras
STRIDE = 8


class CentreSizeDecode(keras.layers.Layer):
    """(logits [N, h, w, C], regression [N, h, w, 4]: dx, dy, log w, log h) -> boxes and scores."""

    def __init__(self, stride: int = STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def call(self, logits, reg):
        shape = tf.shape(logits)
        n, h, w, c = shape[0], shape[1], shape[2], shape[3]
        ys, xs = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
        s = float(self.stride)
        cx = (tf.cast(xs, tf.float32)[None] + 0.5 + tf.tanh(reg[..., 0])) * s
        cy = (tf.cast(ys, tf.float32)[None] + 0.5 + tf.tanh(reg[..., 1])) * s
        bw = tf.exp(tf.clip_by_value(reg[..., 2], -4.0, 4.0)) * s
        bh = tf.exp(tf.clip_by_value(reg[..., 3], -4.0, 4.0)) * s
        boxes = tf.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
        return tf.reshape(boxes, [n, h * w, 4]), tf.reshape(tf.sigmoid(logits), [n, h * w, c])


def build_model(num_classes: int = len(LABELS)) -> keras.Model:
    inputs = keras.Input((None, None, 3), name="images")
    x = inputs
    for i, (filters, stride) in enumerate(((16, 2), (32, 2), (48, 2), (48, 1))):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.Conv2D(48, 3, dilation_rate=2, padding="same", activation="relu", name="context")(x)
    logits = keras.layers.Conv2D(num_classes, 1, name="heatmap", bias_initializer=keras.initializers.Constant(-4.0))(x)
    reg = keras.layers.Conv2D(4, 1, name="regression")(x)
    boxes, scores = CentreSizeDecode(name="decode")(logits, reg)
    return keras.Model(inputs, [boxes, scores], name="blobnet")
