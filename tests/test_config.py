"""release.toml: parsing, every problem reported at once, the committed JSON Schema."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from slipway.config import json_schema, load_config
from slipway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_repository_config_parses():
    config = load_config(ROOT / "release.toml")
    assert [m.name for m in config.models] == ["shapes-torch", "shapes-tf"]
    assert config.model("shapes-torch").weights.is_absolute()
    assert {v.name for v in config.variants} >= {
        "pytorch-cpu",
        "pytorch-cpp-cpu",
        "tfserving-client",
        "onnx-cpu",
    }
    # Frozen: configuration cannot change under a running stage.
    with pytest.raises(Exception, match="frozen"):
        config.project.name = "other"  # type: ignore[misc]


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "dockerfiles").mkdir()
    shutil.copy(ROOT / "dockerfiles" / "pytorch.Dockerfile", tmp_path / "dockerfiles" / "pytorch.Dockerfile")
    path = tmp_path / "release.toml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD_MODEL = """
[project]
name = "demo"

[[models]]
name = "det"
framework = "pytorch"
entry-point = "pkg.mod:build"
weights = "w.pt"
labels = ["a"]
golden = { hook = "pkg.golden:make", count = 4 }
input = { height = 32, width = 32, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }
"""


def test_three_mistakes_are_reported_in_one_run(tmp_path):
    path = _write(
        tmp_path,
        GOOD_MODEL
        + """
[[variants]]
name = "cpu"
model = "dett"
runtime = "torchscript"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "pytorch-cpu"
platfroms = ["linux/amd64"]

[smoke]
timeout-s = "soon"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    problems = {p.key: p for p in info.value.problems}
    assert "3 configuration problem(s)" in text
    # Unknown key, with a suggestion.
    assert problems["variants[0].platfroms"].message == "unknown key; did you mean 'platforms'?"
    # Wrong type, with the value found.
    assert problems["smoke.timeout-s"].value == "soon"
    assert "number" in problems["smoke.timeout-s"].message
    # A variant naming a model that does not exist.
    assert "no model of that name" in problems["variants[0].model"].message
    assert "did you mean 'det'" in problems["variants[0].model"].message
    # Every line names the file.
    assert all(line.strip().startswith(f"- {path}") for line in text.splitlines()[1:])


def test_missing_required_key_and_bad_literal(tmp_path):
    path = _write(
        tmp_path,
        GOOD_MODEL.replace('framework = "pytorch"', 'framework = "jax"').replace('labels = ["a"]\n', ""),
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = {p.key: p for p in info.value.problems}
    assert problems["models[0].framework"].value == "jax"
    assert "'pytorch' or 'tensorflow'" in problems["models[0].framework"].message
    assert problems["models[0].labels"].message == "required key is missing"


def test_mean_must_match_channels_and_runtime_must_match_framework(tmp_path):
    body = (
        GOOD_MODEL.replace("mean = [0.5, 0.5, 0.5]", "mean = [0.5]")
        + """
[[variants]]
name = "tf"
model = "det"
runtime = "tensorflow"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "pytorch-cpu"
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, body))
    keys = {p.key for p in info.value.problems}
    assert keys == {"models[0].input.mean", "variants[0].runtime"}


def test_not_toml_and_missing_file(tmp_path):
    bad = tmp_path / "release.toml"
    bad.write_text("[project\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


def test_committed_schema_is_current():
    committed = json.loads((ROOT / "scripts" / "slipway" / "release.schema.json").read_text())
    assert committed == json_schema(), "stale schema: run 'make schema' and commit the result"


def test_schema_validates_the_repository_config_shape():
    schema = json_schema()
    assert set(schema["properties"]) >= {
        "project",
        "models",
        "variants",
        "wheels",
        "registries",
        "smoke",
        "budgets",
    }
    model = schema["$defs"]["ModelSpec"]["properties"]
    assert "entry-point" in model and "torchscript-method" in model
