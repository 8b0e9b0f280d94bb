"""``python -m serving``: run the service with uvicorn, configured from the environment."""

from __future__ import annotations

import logging
import sys

from serving.config import ConfigurationError, Settings
from serving.manifest import ManifestError


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level.upper() in logging._nameToLevel else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from serving.app import create_app

    try:
        app = create_app(settings)
    except (ManifestError, ValueError) as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    # One worker: a second process would load a second copy of the model and split the cores.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
