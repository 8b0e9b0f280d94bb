"""GitHub Actions glue: step outputs and the job summary.

The readers of the output folder that rebuild the views several jobs share are in
``slipway.outputs``; they serve a local release as much as a GitHub one.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import TextIO


def on_github() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _format(name: str, value: str) -> str:
    if "\n" not in value:
        return f"{name}={value}\n"
    # GitHub's multiline syntax; a fresh delimiter cannot occur in the value by accident.
    delimiter = f"slipway_{uuid.uuid4().hex}"
    while delimiter in value:
        delimiter = f"slipway_{uuid.uuid4().hex}"
    return f"{name}<<{delimiter}\n{value.rstrip(chr(10))}\n{delimiter}\n"


def set_outputs(outputs: dict[str, str], *, stream: TextIO | None = None) -> None:
    """Append step outputs to ``GITHUB_OUTPUT`` when it is set; otherwise print them (same syntax)."""
    text = "".join(_format(name, str(value)) for name, value in outputs.items())
    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    else:
        (stream or sys.stdout).write(text)
        (stream or sys.stdout).flush()


def read_outputs(path: Path) -> dict[str, str]:
    """Parse a ``GITHUB_OUTPUT`` file as the runner does (for tests and for local wiring)."""
    outputs: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            outputs[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            outputs[name] = value
        i += 1
    return outputs


def add_summary(markdown: str) -> None:
    """Append to the job summary on GitHub; elsewhere there is none (the log has the same text)."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown.rstrip("\n") + "\n\n")
