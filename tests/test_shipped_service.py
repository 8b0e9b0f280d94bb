"""What an image ships of the service: the service, and no test double or request case."""

from __future__ import annotations

import json

from plans import bare_plan
from test_smoke_fixtures import make_project

from slipway import records
from slipway.config import load_config
from slipway.context import StageContext
from slipway.paths import resource
from slipway.stages import images

DOUBLES = ("testing.py", "tfserving_stub.py", "tfserving_standin.py", "request_cases.py")
MODEL = """[[models]]
name = "tiny"
framework = "pytorch"
entry-point = "tests.replay:build"
weights = "replay.pt"
labels = ["circle", "square"]
golden = { hook = "tests.replay:golden", count = 4 }
input = { height = 32, width = 32 }
"""


def test_the_staged_build_context_holds_no_test_double(tmp_path):
    config = load_config(
        make_project(
            tmp_path / "proj",
            name="ctx",
            models=MODEL,
            variants=[{"name": "alpha", "model": "tiny", "runtime": "onnx",
                       "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "onnx-cpu"}],
            registry="127.0.0.1:5000/ctx",
        )
    )
    out = tmp_path / "out"
    (out / "models" / "tiny").mkdir(parents=True)
    (out / "models" / "tiny" / "model.json").write_text(json.dumps({"name": "tiny"}))
    ctx = StageContext(config=config, plan=bare_plan("0.0.1"), out=out, root=config.root)
    entry = records.ImageEntry(variant="alpha", model="tiny", framework="pytorch", runtime="onnx", device="cpu",
                               dockerfile="dockerfiles/pytorch.Dockerfile", target="onnx-cpu",
                               platforms="linux/amd64", image="127.0.0.1:5000/ctx/ctx-alpha")
    build = images.stage_context(ctx, entry, local_torch=False)
    shipped = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}
    assert "serving/app.py" in shipped and "serving/__main__.py" in shipped
    found = sorted(p for p in shipped if p.rsplit("/", 1)[-1] in DOUBLES)
    assert not found, f"test doubles in the build context of an image: {found}"
    # The service package Slipway carries (and stages) has none either.
    assert not [name for name in DOUBLES if (resource("serving") / name).is_file()]
