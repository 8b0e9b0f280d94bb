"""TensorFlow side of the export: load a Keras detector, write a SavedModel and a frozen graph.

What a Keras detector must be: ``entry_point()`` returns a ``keras.Model`` taking preprocessed
float32 [N, H, W, C] (the input spec's resize and normalisation) and returning
``(boxes [N, M, 4], scores [N, M, num_classes])``: M candidate boxes (x1, y1, x2, y2 in
model-input pixels) with one score per class, before NMS. The exported serving function wraps
it with the resize/normalisation and combined NMS so that it takes raw uint8 images.
Importing this module imports TensorFlow; ``model_export.export`` does so only for TF models.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from model_export.entry_points import load_entry_point, module_file
from model_export.errors import ExportError
from model_export.postprocess import OutputSpec, expand_candidates, postprocess
from model_export.preprocess import InputSpec, preprocess


def set_threads(threads: int) -> None:
    """Thread pools can only be sized before TensorFlow's runtime starts; later calls are ignored."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


class ServingModule(tf.Module):
    """uint8 images [N, H, W, 3] of any size -> detections in original-image pixels."""

    def __init__(self, model: tf.keras.Model, spec: InputSpec, output: OutputSpec):
        super().__init__()
        self.model = model
        self.height, self.width = spec.height, spec.width
        self.mean = tf.constant(spec.mean, tf.float32)
        self.std = tf.constant(spec.std, tf.float32)
        self.output = output

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        shape = tf.shape(images)
        img_h, img_w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        # Bilinear with half-pixel centres and no antialias: the same sampling as the contract's
        # torch.nn.functional.interpolate(align_corners=False).
        x = tf.image.resize(tf.cast(images, tf.float32), (self.height, self.width), method="bilinear",
                            antialias=False)
        x = (x / 255.0 - self.mean) / self.std
        boxes, scores = self.model(x, training=False)
        x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
        m = self.output.max_detections
        nms = tf.image.combined_non_max_suppression(
            tf.stack([y1, x1, y2, x2], axis=-1)[:, :, None, :], scores,
            max_output_size_per_class=m, max_total_size=m, iou_threshold=self.output.nms_iou,
            score_threshold=self.output.score_threshold, pad_per_class=False, clip_boxes=False,
        )
        ny1, nx1, ny2, nx2 = tf.unstack(nms.nmsed_boxes, axis=-1)
        sx, sy = img_w / float(self.width), img_h / float(self.height)
        out_boxes = tf.stack([
            tf.clip_by_value(nx1 * sx, 0.0, img_w), tf.clip_by_value(ny1 * sy, 0.0, img_h),
            tf.clip_by_value(nx2 * sx, 0.0, img_w), tf.clip_by_value(ny2 * sy, 0.0, img_h),
        ], axis=-1)
        return {
            "boxes": out_boxes,
            "scores": nms.nmsed_scores,
            "classes": tf.cast(nms.nmsed_classes, tf.int64),
            "num_detections": tf.cast(nms.valid_detections, tf.int32),
        }


class PreparedTF:
    output_format = "detections"

    def __init__(self, cfg: Any, name: str, spec: InputSpec, log):
        self.cfg, self.name, self.spec, self.log = cfg, name, spec, log
        self.weights = Path(cfg.weights)
        self.output = OutputSpec.from_any(cfg.output)
        self.framework_version = tf.__version__
        factory = load_entry_point(cfg.entry_point, name)
        source = module_file(cfg.entry_point.partition(":")[0])
        try:
            model = factory()
        except Exception as exc:
            raise ExportError(name, source, f"entry point {cfg.entry_point!r} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, tf.keras.Model):
            raise ExportError(name, source, f"entry point returned {type(model).__name__}, not a keras.Model")
        self.source = source
        self._load_weights(model)
        self.model = model
        self.parameters = int(model.count_params())
        self._check_input_spec()

    def _load_weights(self, model: tf.keras.Model) -> None:
        import h5py

        if self.weights.suffixes[-2:] != [".weights", ".h5"]:
            raise ExportError(self.name, self.weights, "Keras weights files must end in '.weights.h5'")
        if not h5py.is_hdf5(self.weights):
            raise ExportError(self.name, self.weights, "cannot read the weights file (corrupt or not HDF5)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.load_weights(str(self.weights))
            except OSError as exc:
                raise ExportError(self.name, self.weights,
                                  f"cannot read the weights file (corrupt or truncated): {exc}") from exc
            except Exception as exc:
                raise ExportError(self.name, self.weights,
                                  f"weights do not fit the model: {type(exc).__name__}: {exc}") from exc
        # A matching file loads silently; Keras only warns (and loads nothing) for layers it cannot
        # find in the file, which is a wrong file as well.
        skipped = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, UserWarning)]
        if skipped:
            raise ExportError(self.name, self.weights, "weights do not fit the model: " + "; ".join(skipped[:3]))

    def _check_input_spec(self) -> None:
        spec = self.spec
        channels = self.model.inputs[0].shape[-1]
        if channels is not None and channels != spec.channels:
            raise ExportError(self.name, self.weights,
                              f"input spec says {spec.channels} channels but the model's input has {channels}")
        try:
            out = self.model(np.zeros((2, spec.height, spec.width, spec.channels), np.float32), training=False)
        except Exception as exc:
            raise ExportError(self.name, self.weights,
                              f"model fails on the input spec [N, {spec.height}, {spec.width}, {spec.channels}]: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        problem = None
        if not isinstance(out, list | tuple) or len(out) != 2:
            problem = f"the model must return (boxes, scores), got {type(out).__name__}"
        else:
            boxes, scores = out
            if len(boxes.shape) != 3 or boxes.shape[-1] != 4 or len(scores.shape) != 3 \
                    or boxes.shape[:2] != scores.shape[:2]:
                problem = f"output shapes {tuple(boxes.shape)}, {tuple(scores.shape)} are not [N,M,4], [N,M,C]"
            elif scores.shape[-1] != len(self.cfg.labels):
                problem = f"the model scores {scores.shape[-1]} classes but labels has {len(self.cfg.labels)}"
        if problem:
            raise ExportError(self.name, self.source, f"output breaks the detection contract: {problem}")

    def reference(self, images: list[np.ndarray]) -> list[list[dict]]:
        """Eager Keras model + numpy pre/postprocessing, one image at a time."""
        out = []
        for image in images:
            x = preprocess(image, self.spec).transpose(0, 2, 3, 1)
            boxes, scores = (t.numpy() for t in self.model(x, training=False))
            b, s, c = expand_candidates(boxes, scores)
            out.append(postprocess(b[0], s[0], c[0], input_size=(self.spec.height, self.spec.width),
                                   image_size=image.shape[:2], output=self.output, labels=self.cfg.labels))
        return out

    def export(self, kind: str, out_dir: Path, golden_images: list[np.ndarray]) -> dict:
        module = ServingModule(self.model, self.spec, self.output)
        if kind == "saved_model":
            path = out_dir / "saved_model"
            try:
                tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})
            except Exception as exc:
                raise ExportError(self.name, path.name, f"SavedModel export failed: {type(exc).__name__}: {exc}") from exc
            return {"signature": "serving_default", "inputs": {"images": "uint8[N,H,W,3]"},
                    "outputs": {"boxes": "float32[N,M,4]", "scores": "float32[N,M]", "classes": "int64[N,M]",
                                "num_detections": "int32[N]"},
                    "nms": "combined_non_max_suppression", "file": path.name}
        if kind == "frozen_graph":
            return self._frozen_graph(module, out_dir / "frozen_graph.pb")
        raise ExportError(self.name, None, f"unknown exporter {kind!r} for tensorflow")

    def _frozen_graph(self, module: ServingModule, path: Path) -> dict:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        concrete = module.serve.get_concrete_function()
        try:
            frozen = convert_variables_to_constants_v2(concrete)
        except Exception as exc:
            raise ExportError(self.name, path.name, f"freezing the graph failed: {type(exc).__name__}: {exc}") from exc
        path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
        # The serving function returns a dict; flat outputs follow tf.nest's order, i.e. sorted keys.
        keys = sorted(concrete.structured_outputs)
        return {
            "inputs": {"images": frozen.inputs[0].name},
            "outputs": {k: t.name for k, t in zip(keys, frozen.outputs, strict=True)},
            "file": path.name,
        }


def prepare(cfg: Any, name: str, spec: InputSpec, log) -> PreparedTF:
    return PreparedTF(cfg, name, spec, log)


def load_saved_model_signature(path: Path, threads: int = 2):
    """The ``serving_default`` function: uint8 [N, H, W, 3] numpy -> dict of numpy arrays."""
    set_threads(threads)
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}

    run.loaded = loaded  # keeps the restored variables alive as long as the function
    return run


def load_frozen_graph(path: Path, inputs: dict[str, str], outputs: dict[str, str], threads: int = 2):
    """A frozen GraphDef as a function: uint8 [N, H, W, 3] numpy -> dict of numpy arrays."""
    set_threads(threads)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    fn = wrapped.prune(feeds=[graph.get_tensor_by_name(inputs["images"])],
                       fetches={k: graph.get_tensor_by_name(v) for k, v in outputs.items()})

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in fn(tf.constant(images)).items()}

    return run
