"""A TensorFlow SavedModel's ``serving_default`` run in the service (tensorflow-cpu/-gpu images)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from serving.backends._tf import detections_from_outputs
from serving.backends.base import Backend, BackendError, Detection
from serving.manifest import model_file

log = logging.getLogger("serving.backend.tensorflow")


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def load(self) -> None:
        import tensorflow as tf

        # Thread pools are fixed at the first op; set them before anything runs. TensorFlow's
        # intra-op pool is one per process, shared by the slots' concurrent calls: size it for all.
        try:
            tf.config.threading.set_intra_op_parallelism_threads(self.threads * int(self.options.get("slots", 1)))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            log.warning("TensorFlow was already initialised; thread settings unchanged")
        gpus = tf.config.list_physical_devices("GPU")
        if self.device == "gpu" and not gpus:
            log.warning("DEVICE=gpu but TensorFlow sees no GPU; running on the CPU")
        elif self.device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
        path = self.model_dir / model_file(self.manifest, "saved_model", "saved_model")
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{path}: no SavedModel (saved_model.pb) here")
        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        try:
            self._signature = self._loaded.signatures["serving_default"]
        except KeyError:
            raise BackendError(f"{path}: the SavedModel has no 'serving_default' signature") from None
        inputs = self._signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise BackendError(f"{path}: serving_default must take one input, it takes {sorted(inputs)}")
        self._input_name = next(iter(inputs))
        self._gpu = bool(gpus) and self.device != "cpu"

    def _predict(self, image: np.ndarray) -> list[Detection]:
        outputs = self._signature(**{self._input_name: self._tf.constant(image[None])})
        return detections_from_outputs(
            {k: v.numpy() for k, v in outputs.items()}, self.manifest.get("labels") or []
        )

    def describe(self) -> dict[str, Any]:
        tf = getattr(self, "_tf", None)
        return {
            "device": "gpu" if getattr(self, "_gpu", False) else "cpu",
            "runtime": f"tensorflow {tf.__version__}" if tf else None,
        }
