"""Backend registry: a name from ``BACKEND`` -> the class, imported only when chosen.

Each backend module imports its framework (torch, onnxruntime, tensorflow, slipway_runtime) at
module or load time, so an image holds only the framework of its own variant.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from serving.backends.base import Backend, BackendError, BackendUnavailable

_MODULES = {
    "torchscript": "serving.backends.torchscript:TorchScriptBackend",
    "cpp": "serving.backends.cpp:CppBackend",
    "onnx": "serving.backends.onnx:OnnxBackend",
    "tensorflow": "serving.backends.tensorflow:TensorFlowBackend",
    "tfserving": "serving.backends.tfserving:TFServingBackend",
}

__all__ = ["NAMES", "Backend", "BackendError", "BackendUnavailable", "backend_class", "create_backend"]

NAMES = tuple(_MODULES)


def backend_class(name: str) -> type[Backend]:
    try:
        target = _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_backend(name: str, model_dir: Path, manifest: dict[str, Any], **options: Any) -> Backend:
    return backend_class(name)(model_dir, manifest, **options)
