"""A small release.toml for tests that run real stages: the shapes-torch example, one image variant."""

from __future__ import annotations

import textwrap
from pathlib import Path

from registry_cleanup import pushes_to

ROOT = Path(__file__).resolve().parent.parent


def small_release(path: Path, project: str, registry: str, *, variant: str = "pytorch-cpu",
                  runtime: str = "torchscript", extra: str = "") -> Path:
    """Write release.toml at ``path``: TorchScript export of shapes-torch (4 golden images), one
    variant of dockerfiles/pytorch.Dockerfile, no wheels, images to ``registry``; ``extra`` TOML
    (a [budgets] table, say) goes at the end."""
    pushes_to(f"{registry}/{project}")  # its images, removed from the registry after the session
    weights = (ROOT / "model_export" / "examples" / "weights" / "shapes_torch.pt").as_posix()
    path.write_text(
        textwrap.dedent(
            f"""
            [project]
            name = "{project}"
            version = "0.1.0"

            [[models]]
            name = "shapes-torch"
            framework = "pytorch"
            entry-point = "model_export.examples.torch_detector:build_model"
            weights = "{weights}"
            labels = ["circle", "square", "triangle"]
            exporters = ["torchscript"]
            golden = {{ hook = "model_export.examples.shapes:golden", count = 4, seed = 20201215 }}
            input = {{ height = 128, width = 128, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }}

            [[variants]]
            name = "{variant}"
            model = "shapes-torch"
            runtime = "{runtime}"
            dockerfile = "dockerfiles/pytorch.Dockerfile"
            target = "{variant}"

            [wheels]
            enabled = false

            [registries]
            images = "{registry}"
            """
        )
        + textwrap.dedent(extra)
    )
    return path
