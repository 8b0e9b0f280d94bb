"""Resolving a model's ``module:callable`` entry point, with errors that name the file."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from model_export.errors import ExportError


def load_entry_point(entry_point: str, name: str) -> Any:
    module_name, sep, attr = entry_point.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(name, entry_point, "entry point must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ExportError(name, module_file(module_name),
                          f"entry point {entry_point!r} does not import: {type(exc).__name__}: {exc}") from exc
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ExportError(name, module.__file__, f"entry point {entry_point!r}: no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ExportError(name, module.__file__, f"entry point {entry_point!r} is not callable")
    return target


def module_file(module_name: str) -> str:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    return spec.origin if spec is not None and spec.origin else f"module {module_name}"
