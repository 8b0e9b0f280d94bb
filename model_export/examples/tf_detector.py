"""The TensorFlow/Keras detector for the shapes example: the same design as the PyTorch one.

A stride-8 feature map with a per-class centre heatmap and edge distances per cell. The Keras
model ends in a ``Decode`` layer that turns the maps into per-cell boxes and class scores; the
SavedModel's serving function adds resizing and combined NMS (see ``model_export.tf_export``).
Importing this module imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from model_export.examples.shapes import LABELS
from model_export.postprocess import expand_candidates

keras = tf.keras
STRIDE = 8


def _block(x, name: str, filters: int, stride: int = 1, dilation: int = 1):
    # Stable names (Keras' automatic ones count layers made earlier in the process) keep
    # summaries and error messages comparable between runs.
    x = keras.layers.Conv2D(filters, 3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


class Decode(keras.layers.Layer):
    """(logits [N, h, w, C], log distances [N, h, w, 4]) -> (boxes [N, h*w, 4], scores [N, h*w, C]).

    Boxes are x1, y1, x2, y2 in model-input pixels, one per cell, shared by all classes.
    """

    def __init__(self, stride: int = STRIDE, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def call(self, logits, dist):
        shape = tf.shape(logits)
        n, h, w, c = shape[0], shape[1], shape[2], shape[3]
        scores = tf.reshape(tf.sigmoid(logits), [n, h * w, c])
        ys, xs = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
        cx = tf.reshape((tf.cast(xs, tf.float32) + 0.5) * self.stride, [1, h * w])
        cy = tf.reshape((tf.cast(ys, tf.float32) + 0.5) * self.stride, [1, h * w])
        # Clamp before exp so that no input overflows to inf (the same bounds as the PyTorch model).
        d = tf.reshape(tf.exp(tf.clip_by_value(dist, -8.0, 6.0)) * float(self.stride), [n, h * w, 4])
        boxes = tf.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], axis=-1)
        return boxes, scores


def build_model(num_classes: int = len(LABELS), width: int = 32) -> keras.Model:
    """Entry point named in release.toml.

    Preprocessed float32 [N, H, W, 3] -> (boxes [N, M, 4], scores [N, M, C]): the candidates
    before NMS, which is what ``model_export.tf_export`` expects of a Keras detector.
    """
    w = width
    inputs = keras.Input((None, None, 3), name="images")
    x = _block(inputs, "b1", w // 2, stride=2)
    x = _block(x, "b2", w, stride=2)
    x = _block(x, "b3", w)
    x = _block(x, "b4", 2 * w, stride=2)
    x = _block(x, "b5", 2 * w)
    x = _block(x, "b6", 2 * w, dilation=2)
    x = _block(x, "b7", 2 * w, dilation=4)
    x = _block(x, "neck", 2 * w)
    logits = keras.layers.Conv2D(num_classes, 1, name="heatmap",
                                 bias_initializer=keras.initializers.Constant(-4.0))(x)
    dist = keras.layers.Conv2D(4, 1, name="distances")(x)
    boxes, scores = Decode(name="decode")(logits, dist)
    return keras.Model(inputs, [boxes, scores], name="shapes_detector")


def training_outputs(model: keras.Model) -> keras.Model:
    """The same layers with the raw maps as outputs, for the training losses."""
    return keras.Model(model.inputs, [model.get_layer("heatmap").output, model.get_layer("distances").output])


def candidates(model: keras.Model, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eager model -> every (cell, class) pair as one candidate, in model_export.postprocess's layout."""
    return expand_candidates(*(t.numpy() for t in model(x_nhwc, training=False)))


def load_example(weights: str | None = None) -> keras.Model:
    from model_export.examples.config import example_config

    model = build_model()
    model.load_weights(str(weights or example_config("tensorflow").weights))
    return model


def tf_detector(model: keras.Model, input_spec=None, output_spec=None):
    """Eager Keras model -> Detect (images -> detections), with the numpy pre/postprocessing."""
    from model_export.examples.evaluate import EVAL_OUTPUT, EXAMPLE_INPUT
    from model_export.postprocess import postprocess_batch
    from model_export.preprocess import InputSpec, preprocess_batch

    spec = InputSpec.from_any(input_spec or EXAMPLE_INPUT)
    output_spec = output_spec or EVAL_OUTPUT

    def detect(images: Sequence[np.ndarray]) -> list[list[dict]]:
        x = preprocess_batch(images, spec).transpose(0, 2, 3, 1)
        boxes, scores, classes = candidates(model, x)
        return postprocess_batch(boxes, scores, classes, input_size=(spec.height, spec.width),
                                 image_sizes=[im.shape[:2] for im in images], output=output_spec, labels=LABELS)

    return detect
