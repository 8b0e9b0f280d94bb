"""Build hook: the requirements files at the top of the repository go into a standard wheel as
``slipway/_resources/requirements*.txt`` (``slipway.paths`` finds them there).

Single files cannot be renamed by ``sources`` (a folder mapping); ``force-include`` in
pyproject.toml would also copy them into an editable install, where the checkout's own files
must be the ones read. So they are added here, for standard wheels only.
"""

from __future__ import annotations

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

REQUIREMENTS = ("requirements.txt", "requirements-pytorch.txt", "requirements-tensorflow.txt")


class RequirementsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or version != "standard":
            return
        for name in REQUIREMENTS:
            path = Path(self.root) / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: a requirements file Slipway's wheel must carry is missing")
            build_data["force_include"][str(path)] = f"slipway/_resources/{name}"
