"""TorchServe's handler: the module-level ``handle(data, context)`` entry point, one batch per call."""

from __future__ import annotations

import json

from peer_pipeline import Pipeline

_pipeline: Pipeline | None = None


def handle(data, context):
    global _pipeline
    if _pipeline is None:
        # The model archive's folder: the TorchScript file and model.json were packed into it.
        _pipeline = Pipeline(context.system_properties.get("model_dir"))
    if data is None:
        return None
    bodies = [bytes(row.get("data") or row.get("body")) for row in data]
    return [json.dumps(out) for out in _pipeline.batch(bodies)]
