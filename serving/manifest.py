"""Reading and checking ``model.json``: the service refuses to start on a manifest it cannot serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ManifestError(ValueError):
    """``model.json`` is missing or lacks what the service needs; the message names the key."""


def load_manifest(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "model.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found (MODEL_DIR must name a model export folder)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    problems = []
    if not isinstance(manifest.get("name"), str) or not manifest.get("name"):
        problems.append("name: expected a non-empty string")
    elif "/" in manifest["name"] or ":" in manifest["name"]:
        # The name is a URL path segment in /v1/models/{name}:predict.
        problems.append(f"name: {manifest['name']!r} must not contain '/' or ':'")
    inp = manifest.get("input")
    if not isinstance(inp, dict):
        problems.append("input: expected an object")
    else:
        for key in ("height", "width"):
            if not isinstance(inp.get(key), int) or inp[key] <= 0:
                problems.append(f"input.{key}: expected a positive integer")
    if not isinstance(manifest.get("labels"), list):
        problems.append("labels: expected a list of class names")
    if not isinstance(manifest.get("output"), dict):
        problems.append("output: expected an object")
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))
    return manifest


def label_for(manifest: dict[str, Any], class_id: int) -> str:
    labels = manifest.get("labels") or []
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def model_file(manifest: dict[str, Any], key: str, default: str) -> str:
    """The file (or folder) of one export format, as model.json's ``files`` names it."""
    entry = (manifest.get("files") or {}).get(key) or {}
    return entry.get("path") or default
