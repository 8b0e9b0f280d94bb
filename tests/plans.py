"""Plans for tests that run one stage function without planning a release."""

from __future__ import annotations

from typing import Any

from slipway import records


def bare_plan(version: str = "0.1.0", sha: str = "0" * 40, *, project: str = "test", **fields: Any) -> records.Plan:
    """A valid plan that plans nothing: what a stage function needs of the plan is its version and
    commit. ``fields`` replace top-level keys, as JSON data ("matrix": {...}) checked by the model."""
    data: dict[str, Any] = {
        "schema_version": 1, "project": project, "version": version, "prerelease": False, "dry_run": True,
        "event": "local", "ref": "", "sha": sha, "short_sha": sha[:7], "output_dir": f"dist/{version}",
        "config": "release.toml", "registries": {"images": "127.0.0.1:5000/test", "packages": "http://127.0.0.1:8765/"},
        "runtime": {"version": "0.1.0", "publish": False}, "packages": [],
        "matrix": {"export": [], "wheels": [], "images": [], "image_builds": [], "smoke": [], "publish": []},
        "stages": [], "skipped": [], "notes": [],
    }
    matrix = fields.pop("matrix", {})
    data.update(fields)
    data["matrix"].update(matrix)
    return records.Plan.model_validate(data)
