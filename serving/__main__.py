"""``python -m serving``: run the service with uvicorn, configured from the environment."""

from __future__ import annotations

import logging
import os
import sys

from serving.config import ConfigurationError, Settings
from serving.manifest import ManifestError
from serving.memory import MMAP_THRESHOLD, TRIM_THRESHOLD, tune_allocator


def main(argv: list[str] | None = None) -> int:
    # libtorch's OpenMP threads sleep between parallel regions instead of spinning (read when the
    # framework loads, so set before any backend is imported). Spinning threads take the CPU from
    # the event loop and the other slots: measured on a busy 2-CPU machine, one slot x 2 threads
    # answered 8 req/s spinning and 93 sleeping. ONNX Runtime's spinning is off in its backend.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Freed memory stays in the process (no page fault per request; serving/memory.py). Forked
    # workers inherit it.
    allocator_tuned = tune_allocator()
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level.upper() in logging._nameToLevel else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if allocator_tuned:
        logging.getLogger("serving.memory").info(
            "allocator: blocks up to %d MiB from the heap, %d MiB of free heap kept (MALLOC_MMAP_THRESHOLD_ "
            "and MALLOC_TRIM_THRESHOLD_ choose otherwise)", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    import uvicorn

    from serving.app import create_app

    try:
        app = create_app(settings)
    except (ManifestError, ValueError) as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    from PIL import Image

    from serving.protocol import protocol_class

    # Pillow's own decompression-bomb guard (process-wide), in line with the service's pixel limit.
    Image.MAX_IMAGE_PIXELS = app.state.service.limits.max_image_pixels

    # One uvicorn process: inferences run in the service's slots (threads, or the worker processes
    # of serving/workers.py, forked when the app was created above).
    # The h11 protocol with a header timeout; limit_concurrency answers 503 (with Retry-After)
    # beyond MAX_CONNECTIONS connections or requests, before any of them is read.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=1,
        http=protocol_class(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
