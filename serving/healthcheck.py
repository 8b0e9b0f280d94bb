"""``python -m serving.healthcheck``: exit 0 when the local service is ready (the image's HEALTHCHECK).

Python's standard library only, so no image needs curl; it asks /readyz, not /healthz, because a
container is healthy only once it can answer predictions.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("PORT", "8080")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(
            url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "2"))
        ) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(500).decode(errors='replace')}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
