"""What every stage receives: the plan, the parsed configuration and the output folder.

Stages talk to each other only through records in ``out`` (``dist/<version>/``), each read and
written through its model in ``slipway.records``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from slipway import records
from slipway.config import ReleaseConfig

M = TypeVar("M", bound=BaseModel)

# What a stage's ``run`` answers the command that ran it: a one-line ``summary`` and, for callers
# in the same process (tests, ``slipway release``), what it made. Never read by another stage:
# stages hear of each other only through the records they write.
StageResult = dict[str, object]


@dataclass
class StageContext:
    config: ReleaseConfig
    plan: records.Plan
    out: Path
    root: Path
    verbose: bool = False
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not isinstance(self.plan, records.Plan):
            # A plan given as JSON data (a test, a caller of the library) is checked like plan.json.
            self.plan = records.parse("plan", self.plan, records.Plan)

    def log(self, message: str) -> None:
        """Progress output: one line, to stderr, prefixed with the elapsed time."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    def read(self, relative: str, model: type[M], missing: Any = records.REQUIRED) -> M:
        """A record of the output folder; a missing (unless ``missing`` is given), damaged or
        mismatched one is a ``RecordError`` naming it."""
        return records.read(self.out / relative, model, missing)

    def write(self, relative: str, record: BaseModel) -> Path:
        """Write a record of the output folder atomically."""
        return records.write(self.out / relative, record)
