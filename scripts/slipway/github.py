"""GitHub Actions glue: step outputs, the job summary, and the views that jobs rebuild.

On GitHub every stage job runs on its own runner and sees only the artifacts it downloads, so a
file that several jobs would write (``images.json``, ``smoke/summary.json``) is never trusted to
be complete: readers rebuild it here from the per-artifact files (``images/<variant>.json``,
``smoke/<artifact>.json``). Locally the same functions read what one machine wrote, so a local
release and a GitHub one take the same decisions from the same files.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from slipway.errors import RecordError
from slipway.fsutil import read_record


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


def _read(path: Path, missing: Any = None) -> Any:
    """A record of the output folder; ``missing`` when the file is not there, a ``RecordError``
    naming the file when it is there but damaged (``slipway.fsutil.read_record``)."""
    return read_record(path, missing)


def image_records(out: Path) -> dict[str, dict[str, Any]]:
    """variant -> image record: ``images.json`` (a local build) overlaid by ``images/<variant>.json``."""
    records = _read(out / "images.json", {})
    for path in sorted((out / "images").glob("*.json")):
        record = _read(path)
        if not isinstance(record.get("variant"), str) or not record["variant"]:
            raise RecordError(path, "names no variant")
        records[record["variant"]] = record
    return records


# The platform every plan builds; its smoke result keeps the plain name and key.
PRIMARY_ARCH = "amd64"


def smoke_key(artifact: str, arch: str | None) -> str:
    """The key of one platform's smoke result: ``image:<variant>`` for amd64 (or a result that
    names no platform), ``image:<variant>@<arch>`` for any other, so that the arm64 job's result
    sits beside the amd64 job's instead of replacing it."""
    return artifact if not arch or arch == PRIMARY_ARCH else f"{artifact}@{arch}"


def smoke_file_stem(stem: str, arch: str | None) -> str:
    """``image-<variant>`` for amd64, ``image-<variant>.<arch>`` for any other platform."""
    return stem if not arch or arch == PRIMARY_ARCH else f"{stem}.{arch}"


def smoke_platforms(artifacts: dict[str, dict[str, Any]], artifact: str) -> dict[str, dict[str, Any]]:
    """arch -> result of every platform on which ``artifact`` was smoke-tested."""
    found = {}
    for key, result in artifacts.items():
        if key == artifact or key.startswith(artifact + "@"):
            found[result.get("arch") or (key.split("@", 1)[1] if "@" in key else PRIMARY_ARCH)] = result
    return found


def primary_smoke(artifacts: dict[str, dict[str, Any]], artifact: str) -> dict[str, Any]:
    """The amd64 result of ``artifact``; on a machine of another architecture, its own."""
    platforms = smoke_platforms(artifacts, artifact)
    return platforms.get(PRIMARY_ARCH) or next(iter(platforms.values()), {})


def smoke_result_files(out: Path) -> dict[str, dict[str, Any]]:
    """key -> result, from the per-artifact files ``smoke/*.json`` (all but the summary); one key per
    artifact and platform (``smoke_key``)."""
    results: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "smoke").glob("*.json")):
        if path.name == "summary.json":
            continue
        result = _read(path)
        if not isinstance(result.get("artifact"), str) or not result["artifact"]:
            raise RecordError(path, "names no artifact")
        results[smoke_key(result["artifact"], result.get("arch"))] = result
    return results


def smoke_artifacts(out: Path) -> dict[str, dict[str, Any]]:
    """key (``smoke_key``) -> result: ``smoke/summary.json`` overlaid by the per-artifact files.

    A summary downloaded from several smoke jobs is whichever job's came last; the per-artifact
    files are each job's own and never collide (one per artifact and platform).
    """
    summary = _read(out / "smoke" / "summary.json", {})
    artifacts = dict(summary.get("artifacts") or {})
    artifacts.update(smoke_result_files(out))
    return artifacts
