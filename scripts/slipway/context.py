"""What every stage receives: the plan, the parsed configuration and the output folder.

Stages talk to each other only through files in ``out`` (``dist/<version>/``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slipway.config import ReleaseConfig


@dataclass
class StageContext:
    config: ReleaseConfig
    plan: dict[str, Any]
    out: Path
    root: Path
    verbose: bool = False
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        """Progress output: one line, to stderr, prefixed with the elapsed time."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    def read_json(self, relative: str) -> Any:
        """A record of the output folder; a missing or damaged one is a ``RecordError`` naming it."""
        from slipway.fsutil import read_record

        return read_record(self.out / relative, kind=object)

    def write_json(self, relative: str, data: Any) -> Path:
        """Write atomically: a crash never leaves half a JSON file behind."""
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        return path
