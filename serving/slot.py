"""One inference, from an opened image to detections: what a slot runs, on a thread of the
service or in a worker process (serving/workers.py).

Kept apart from the app so a worker process imports the backend and the image decoder only, not
the web framework.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from serving.images import load_image, to_array

if TYPE_CHECKING:
    from serving.backends.base import Backend, Detection
    from serving.images import Probe


def run_slot(backend: Backend, batcher, probe: Probe) -> tuple[list[Detection], dict[str, float]]:
    """On a slot: decode, preprocess, infer, postprocess; (detections in the original
    pixels, seconds per stage)."""
    started = time.perf_counter()
    if batcher is not None:
        batcher.expect()
    try:
        image = load_image(probe)
        if backend.input_kind == "array":
            pil, image = image, to_array(image)
            pil.close()
    except BaseException:
        if batcher is not None:
            batcher.settle()
        raise
    timings = {"decode": time.perf_counter() - started}
    detections = backend.predict(image, timings) if batcher is None else batcher.predict(image, timings)
    del image
    sx, sy = probe.scale
    if sx != 1.0 or sy != 1.0:
        mapped = time.perf_counter()
        for d in detections:
            x1, y1, x2, y2 = d["box"]
            d["box"] = [
                min(x1 * sx, probe.width), min(y1 * sy, probe.height),
                min(x2 * sx, probe.width), min(y2 * sy, probe.height),
            ]
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - mapped
    return detections, timings
