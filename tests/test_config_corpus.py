"""A corpus of broken release.toml files: 'slipway plan' refuses each with exit 2 and a line that
names the file, the key, the value found and what is allowed.

Every case is one small file: a good configuration (``BASE``) with one mistake made in it, the
kind a user makes (a wrong platform string, a runtime the model cannot feed, a registry written
as a URL, a budget for a variant that does not exist...). Nothing is built: plan only reads.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from slipway.cli import main
from slipway.config import ModelSpec

ROOT = Path(__file__).resolve().parent.parent

# A golden set, where the configuration asks for one (the key every model must have then).
GOLDEN = 'golden = { hook = "pkg.mod:golden", count = 4, seed = 1 }\n' if "golden" in ModelSpec.model_fields else ""

PROJECT = """
[project]
name = "demo"
version = "1.2.3"
source = "https://example.com/demo"
"""

TORCH = """
[[models]]
name = "det"
framework = "pytorch"
entry-point = "pkg.mod:build"
weights = "w.pt"
labels = ["a", "b"]
input = { height = 32, width = 32, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }
""" + GOLDEN

TF = """
[[models]]
name = "tfdet"
framework = "tensorflow"
entry-point = "pkg.tf:build"
weights = "w.h5"
labels = ["a", "b"]
input = { height = 32, width = 32 }
""" + GOLDEN

VARIANT = """
[[variants]]
name = "cpu"
model = "det"
runtime = "torchscript"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "pytorch-cpu"
platforms = ["linux/amd64", "linux/arm64"]
"""

TAIL = """
[wheels]
model = "det"
python = ["3.11", "3.12"]
platforms = ["manylinux_2_28_x86_64"]

[registries]
images = "127.0.0.1:5000/demo"
packages = "http://127.0.0.1:8765/"

[smoke]
memory = "2g"
tolerance.default = { iou = 0.99, score = 1e-4 }

[budgets]
max-image-mb = { cpu = 2000 }
"""

BASE = PROJECT + TORCH + TF + VARIANT + TAIL


@dataclass(frozen=True)
class Case:
    id: str
    toml: str | bytes
    key: str  # the dotted key the error line must name ("" for a whole-file problem)
    value: str  # the value as the line shows it
    allowed: str  # a fragment of what the line says is allowed


def edit(old: str, new: str, base: str = BASE) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def torch_model(line: str) -> str:
    """BASE with one more line in the first model."""
    return edit('labels = ["a", "b"]\ninput', f'labels = ["a", "b"]\n{line}\ninput')


def variant(**changes: str) -> str:
    """BASE with the variant's keys changed (a raw TOML value each) or added."""
    text = VARIANT
    for key, value in changes.items():
        key = key.replace("_", "-")
        line = re.search(rf"^{re.escape(key)} = .*$", text, re.M)
        text = text.replace(line[0], f"{key} = {value}") if line else text + f"{key} = {value}\n"
    return PROJECT + TORCH + TF + text + TAIL


CASES = [
    # --- the whole file --------------------------------------------------------------------------
    Case("toml-syntax", "[project\nname = 'demo'\n", "", "", "not valid TOML"),
    Case("not-utf8", BASE.encode().replace(b'name = "demo"', b'name = "d\xe9mo"'), "", "", "not UTF-8"),
    Case("unknown-table", BASE + "\n[model]\nname = 'x'\n", "model", "{'name': 'x'}", "did you mean 'models'"),
    Case("project-not-a-table", edit(PROJECT, "project = 'demo'\n"), "project", "'demo'", "expected a table"),
    Case("project-array", edit("[project]", "[[project]]"), "project", "[{", "expected a table"),
    Case("project-empty", edit(PROJECT, "[project]\n"), "project.name", "(missing)", "required"),
    # --- [project] ------------------------------------------------------------------------------
    Case("name-capitals", edit('name = "demo"', 'name = "Demo"'), "project.name", "'Demo'", "lowercase"),
    Case("name-empty", edit('name = "demo"', 'name = ""'), "project.name", "''", "at least 1"),
    Case("name-space", edit('name = "demo"', 'name = "my demo"'), "project.name", "'my demo'", "lowercase"),
    Case("version-v", edit('version = "1.2.3"', 'version = "v1.2.3"'), "project.version", "'v1.2.3'", "MAJOR.MINOR"),
    Case("version-short", edit('version = "1.2.3"', 'version = "1.2"'), "project.version", "'1.2'", "MAJOR.MINOR"),
    Case("version-float", edit('version = "1.2.3"', "version = 1.2"), "project.version", "1.2", "expected a string"),
    Case("source-not-url", edit('source = "https://example.com/demo"', 'source = "github.com/x/y"'),
         "project.source", "'github.com/x/y'", "http(s) URL"),
    # --- [[models]] -----------------------------------------------------------------------------
    Case("models-empty", "models = []\n" + PROJECT, "models", "[]", "at least 1"),
    Case("model-name-capitals", edit('name = "det"', 'name = "Det"'), "models[0].name", "'Det'", "lowercase"),
    Case("framework-typo", edit('framework = "pytorch"', 'framework = "torch"'), "models[0].framework", "'torch'",
         "'pytorch' or 'tensorflow'"),
    Case("entry-point-dots", edit('entry-point = "pkg.mod:build"', 'entry-point = "pkg.mod.build"'),
         "models[0].entry-point", "'pkg.mod.build'", "module:callable"),
    Case("weights-missing", edit('weights = "w.pt"', 'weights = "weights/missing.pt"'), "models[0].weights",
         "'weights/missing.pt'", "does not exist"),
    Case("labels-string", edit('labels = ["a", "b"]', 'labels = "a"'), "models[0].labels", "'a'", "expected an array"),
    Case("labels-empty", edit('labels = ["a", "b"]', "labels = []"), "models[0].labels", "[]", "at least 1"),
    Case("labels-duplicate", edit('labels = ["a", "b"]', 'labels = ["a", "b", "a"]'), "models[0].labels",
         "['a', 'b', 'a']", "listed twice"),
    Case("labels-blank", edit('labels = ["a", "b"]', 'labels = ["a", " "]'), "models[0].labels[1]", "' '",
         "non-empty"),
    Case("height-zero", edit("input = { height = 32,", "input = { height = 0,"), "models[0].input.height", "0",
         "greater than 0"),
    Case("height-huge", edit("input = { height = 32,", "input = { height = 100000,"), "models[0].input.height",
         "100000", "less than or equal to 4096"),
    Case("width-text", edit("width = 32, mean", 'width = "wide", mean'), "models[0].input.width", "'wide'",
         "expected a whole number"),
    Case("channels-4", edit("input = { height = 32,", "input = { channels = 4, height = 32,"),
         "models[0].input.channels", "4", "1 or 3"),
    Case("mean-length", edit("mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]"), "models[0].input.mean", "[0.5, 0.5]",
         "expected 3 values"),
    Case("std-zero", edit("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]"), "models[0].input.std",
         "[0.5, 0.0, 0.5]", "must not contain 0"),
    Case("score-threshold", torch_model("output = { score-threshold = 1.5 }"), "models[0].output.score-threshold",
         "1.5",
         "less than or equal to 1"),
    Case("nms-iou-zero", torch_model("output = { nms-iou = 0 }"), "models[0].output.nms-iou", "0",
         "greater than 0"),
    Case("exporters-empty", torch_model("exporters = []"), "models[0].exporters", "[]", "at least one exporter"),
    Case("exporter-wrong-framework", torch_model('exporters = ["torchscript", "saved_model"]'),
         "models[0].exporters[1]", "'saved_model'", "torchscript or onnx"),
    Case("exporter-twice", torch_model('exporters = ["torchscript", "torchscript"]'),
         "models[0].exporters", "['torchscript', 'torchscript']", "listed twice"),
    Case("model-duplicate", edit('name = "tfdet"', 'name = "det"'), "models[1].name", "'det'", "duplicate"),
    Case("model-unknown-key", edit('labels = ["a", "b"]', 'labels = ["a", "b"]\nlabel-map = "x"'),
         "models[0].label-map", "'x'", "unknown key"),
    # --- [[variants]] ---------------------------------------------------------------------------
    Case("platform-x86_64", variant(platforms='["linux/x86_64"]'), "variants[0].platforms[0]", "'linux/x86_64'",
         "linux/amd64"),
    Case("platform-no-os", variant(platforms='["arm64"]'), "variants[0].platforms[0]", "'arm64'", "linux/arm64"),
    Case("platform-twice", variant(platforms='["linux/amd64", "linux/amd64"]'), "variants[0].platforms",
         "['linux/amd64', 'linux/amd64']", "listed twice"),
    Case("platforms-empty", variant(platforms="[]"), "variants[0].platforms", "[]", "at least 1"),
    Case("platforms-string", variant(platforms='"linux/amd64"'), "variants[0].platforms", "'linux/amd64'",
         "expected an array"),
    Case("runtime-unknown", variant(runtime='"pytorch"'), "variants[0].runtime", "'pytorch'", "'torchscript'"),
    Case("onnx-on-tensorflow", variant(model='"tfdet"', runtime='"onnx"'), "variants[0].runtime", "'onnx'",
         "runtimes for tensorflow: tensorflow, tfserving"),
    Case("torchscript-on-tensorflow", variant(model='"tfdet"'), "variants[0].runtime", "'torchscript'",
         "cannot produce"),
    Case("tensorflow-on-pytorch", variant(runtime='"tensorflow"', target='"pytorch-cpu"'), "variants[0].runtime",
         "'tensorflow'", "runtimes for pytorch: torchscript, cpp, onnx"),
    Case("runtime-export-not-listed", edit('runtime = "torchscript"\ndockerfile', 'runtime = "onnx"\ndockerfile',
                                           torch_model('exporters = ["torchscript"]')),
         "variants[0].runtime", "'onnx'", "add 'onnx' to its exporters"),
    Case("gpu-cpp", variant(runtime='"cpp"', device='"gpu"', target='"pytorch-cpp-cpu"'), "variants[0].device",
         "'gpu'", "GPU runtimes: torchscript, tensorflow, onnx"),
    Case("gpu-tfserving", variant(model='"tfdet"', runtime='"tfserving"', device='"gpu"'), "variants[0].device",
         "'gpu'", "no GPU build"),
    Case("device-cuda", variant(device='"cuda"'), "variants[0].device", "'cuda'", "'cpu' or 'gpu'"),
    Case("target-unknown", variant(target='"pytorch-cuda"'), "variants[0].target", "'pytorch-cuda'",
         "stages: "),
    Case("dockerfile-missing", variant(dockerfile='"docker/Dockerfile"'), "variants[0].dockerfile",
         "'docker/Dockerfile'", "does not exist"),
    Case("variant-model-unknown", variant(model='"dett"'), "variants[0].model", "'dett'", "did you mean 'det'"),
    Case("variant-duplicate", BASE + VARIANT, "variants[1].name", "'cpu'", "duplicate"),
    Case("variant-empty", PROJECT + TORCH + TF + "\n[[variants]]\n" + TAIL, "variants[0].name", "(missing)",
         "required"),
    Case("variant-name-capitals", variant(name='"CPU"'), "variants[0].name", "'CPU'", "lowercase"),
    Case("base-image-spaces", variant(base_image='"Python 3.11"'), "variants[0].base-image", "'Python 3.11'",
         "image reference"),
    Case("build-arg-number", variant(build_args="{ THREADS = 4 }"), "variants[0].build-args.THREADS", "4",
         "expected a string"),
    Case("build-arg-name", variant(build_args='{ "MY ARG" = "1" }'), "variants[0].build-args", "'MY ARG'",
         "letters, digits"),
    # --- [wheels] -------------------------------------------------------------------------------
    Case("python-cp311", edit('python = ["3.11", "3.12"]', 'python = ["cp311"]'), "wheels.python[0]", "'cp311'",
         "such as 3.11"),
    Case("python-twice", edit('python = ["3.11", "3.12"]', 'python = ["3.11", "3.11"]'), "wheels.python",
         "['3.11', '3.11']", "listed twice"),
    Case("python-number", edit('python = ["3.11", "3.12"]', "python = [3.11]"), "wheels.python[0]", "3.11",
         "expected a string"),
    Case("wheel-platform-oci", edit('platforms = ["manylinux_2_28_x86_64"]', 'platforms = ["linux/amd64"]'),
         "wheels.platforms[0]", "'linux/amd64'", "manylinux_2_28_x86_64"),
    Case("wheel-platform-dash", edit('platforms = ["manylinux_2_28_x86_64"]', 'platforms = ["manylinux_2_28_x86-64"]'),
         "wheels.platforms[0]", "'manylinux_2_28_x86-64'", "wheel platform tag"),
    Case("wheels-model-tensorflow", edit('model = "det"\npython', 'model = "tfdet"\npython'), "wheels.model",
         "'tfdet'", "expected a pytorch model"),
    Case("wheels-model-unknown", edit('model = "det"\npython', 'model = "nope"\npython'), "wheels.model", "'nope'",
         "no model of that name"),
    Case("wheels-max-size", edit('python = ["3.11", "3.12"]', 'python = ["3.11"]\nmax-size-mib = 0'),
         "wheels.max-size-mib", "0", "greater than 0"),
    # --- [registries] ---------------------------------------------------------------------------
    Case("images-url", edit('images = "127.0.0.1:5000/demo"', 'images = "https://ghcr.io/acme"'),
         "registries.images", "'https://ghcr.io/acme'", "without a scheme"),
    Case("images-space", edit('images = "127.0.0.1:5000/demo"', 'images = "ghcr.io/acme corp"'),
         "registries.images", "'ghcr.io/acme corp'", "no spaces"),
    Case("images-capitals", edit('images = "127.0.0.1:5000/demo"', 'images = "ghcr.io/Acme"'),
         "registries.images", "'ghcr.io/Acme'", "lowercase"),
    Case("images-tag", edit('images = "127.0.0.1:5000/demo"', 'images = "ghcr.io/acme:latest"'),
         "registries.images", "'ghcr.io/acme:latest'", "tag or digest"),
    Case("images-empty", edit('images = "127.0.0.1:5000/demo"', 'images = ""'), "registries.images", "''",
         "not an empty string"),
    Case("packages-pypi", edit('packages = "http://127.0.0.1:8765/"', 'packages = "pypi"'), "registries.packages",
         "'pypi'", "https://upload.pypi.org/legacy/"),
    Case("packages-no-scheme", edit('packages = "http://127.0.0.1:8765/"', 'packages = "upload.pypi.org/legacy/"'),
         "registries.packages", "'upload.pypi.org/legacy/'", "http(s) URL"),
    Case("packages-space", edit('packages = "http://127.0.0.1:8765/"', 'packages = "https://upload pypi.org/"'),
         "registries.packages", "'https://upload pypi.org/'", "without spaces"),
    Case("packages-bad-port", edit('packages = "http://127.0.0.1:8765/"', 'packages = "http://127.0.0.1:x/"'),
         "registries.packages", "'http://127.0.0.1:x/'", "http(s) URL"),
    Case("packages-simple-ftp", edit('packages = "http://127.0.0.1:8765/"',
                                     'packages = "http://127.0.0.1:8765/"\npackages-simple = "ftp://mirror/simple"'),
         "registries.packages-simple", "'ftp://mirror/simple'", "http(s) URL"),
    # --- [smoke] --------------------------------------------------------------------------------
    Case("memory-gb", edit('memory = "2g"', 'memory = "2GB"'), "smoke.memory", "'2GB'", "such as 2g or 512m"),
    Case("memory-space", edit('memory = "2g"', 'memory = "2 g"'), "smoke.memory", "'2 g'", "docker memory size"),
    Case("memory-zero", edit('memory = "2g"', 'memory = "0"'), "smoke.memory", "'0'", "docker memory size"),
    Case("memory-number", edit('memory = "2g"', "memory = 2"), "smoke.memory", "2", "expected a string"),
    Case("cpus-zero", edit('memory = "2g"', 'memory = "2g"\ncpus = 0'), "smoke.cpus", "0", "greater than 0"),
    Case("timeout-negative", edit('memory = "2g"', 'memory = "2g"\ntimeout-s = -1'), "smoke.timeout-s", "-1",
         "greater than 0"),
    Case("tolerance-unknown-runtime", edit("tolerance.default =", "tolerance.tensorrt ="),
         "smoke.tolerance.tensorrt", "{'iou': 0.99, 'score': 0.0001}", "no runtime named 'tensorrt'"),
    Case("tolerance-typo", edit("tolerance.default =", "tolerance.torchscipt ="), "smoke.tolerance.torchscipt",
         "{'iou'", "did you mean 'torchscript'"),
    Case("tolerance-iou", edit("iou = 0.99", "iou = 1.5"), "smoke.tolerance.default.iou", "1.5",
         "less than or equal to 1"),
    # --- [budgets] ------------------------------------------------------------------------------
    Case("budget-unknown-variant", edit("max-image-mb = { cpu = 2000 }", "max-image-mb = { cpu-gpu = 2000 }"),
         "budgets.max-image-mb.cpu-gpu", "2000", "no variant named 'cpu-gpu'"),
    Case("budget-ready-unknown", edit("max-image-mb = { cpu = 2000 }", "max-ready-s = { gpu = 5 }"),
         "budgets.max-ready-s.gpu", "5", "variants: cpu"),
    Case("budget-p95-runtime", edit("max-image-mb = { cpu = 2000 }", "max-p95-ms = { tensorrt = 5 }"),
         "budgets.max-p95-ms.tensorrt", "5", "expected one of: cpp, eager"),
    Case("budget-negative", edit("max-image-mb = { cpu = 2000 }", "max-image-mb = { cpu = -1 }"),
         "budgets.max-image-mb.cpu", "-1", "greater than 0"),
    Case("budget-disabled-variant", edit(VARIANT, VARIANT + "enabled = false\n"), "budgets.max-image-mb.cpu", "2000",
         "is disabled"),
    Case("speedup-without-wheels", edit("[wheels]\n", "[wheels]\nenabled = false\n",
                                        edit("max-image-mb = { cpu = 2000 }", "min-cpp-speedup = 3.0")),
         "budgets.min-cpp-speedup", "3.0", "wheels.enabled = false"),
    Case("speedup-zero", edit("max-image-mb = { cpu = 2000 }", "min-cpp-speedup = 0"),
         "budgets.min-cpp-speedup", "0", "greater than 0"),
    Case("budget-unknown-key", edit("max-image-mb = { cpu = 2000 }", "max-image-size = { cpu = 2000 }"),
         "budgets.max-image-size", "{'cpu': 2000}", "did you mean 'max-image-mb'"),
]


def _project(tmp_path: Path, toml: str | bytes) -> Path:
    (tmp_path / "dockerfiles").mkdir()
    shutil.copy(ROOT / "dockerfiles" / "pytorch.Dockerfile", tmp_path / "dockerfiles" / "pytorch.Dockerfile")
    (tmp_path / "w.pt").write_bytes(b"weights")
    (tmp_path / "w.h5").write_bytes(b"weights")
    path = tmp_path / "release.toml"
    if isinstance(toml, bytes):
        path.write_bytes(toml)
    else:
        path.write_text(textwrap.dedent(toml))
    return path


def _plan(path: Path, capsys) -> tuple[int, str]:
    code = main(["plan", "--config", str(path), "--event", "local", "--sha", "0" * 40])
    return code, capsys.readouterr().err


def test_the_base_configuration_plans(tmp_path, capsys):
    code, err = _plan(_project(tmp_path, BASE), capsys)
    assert code == 0, err


def test_the_corpus_is_broad():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    sections = {c.key.split(".", 1)[0].split("[", 1)[0] for c in CASES}
    assert {"", "project", "models", "variants", "wheels", "registries", "smoke", "budgets"} <= sections


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_refuses(case: Case, tmp_path, capsys):
    path = _project(tmp_path, case.toml)
    code, err = _plan(path, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if str(path) in line]
    if case.key:
        named = [line for line in lines if f"{path}: {case.key} = " in line]
        assert named, f"no line names {case.key!r}:\n{err}"
        line = named[0]
        assert f" = {case.value}" in line, f"value {case.value!r} not shown:\n{line}"
    else:
        # A whole-file problem: file:line[:column], then what is wrong.
        named = [line for line in lines if re.search(rf"{re.escape(str(path))}:\d+(:\d+)?: ", line)]
        assert named, err
        line = named[0]
    assert case.allowed in line, f"{case.allowed!r} not said:\n{line}"
    assert "Traceback" not in err
    # One line per problem, never a screenful.
    assert all(len(x) < 400 for x in err.splitlines()), err


def test_a_long_value_is_shown_shortened(tmp_path, capsys):
    long_name = "x" * 600
    code, err = _plan(_project(tmp_path, edit('source = "https://example.com/demo"', f'source = "{long_name}"')),
                      capsys)
    assert code == 2
    line = next(x for x in err.splitlines() if "project.source" in x)
    assert len(line) < 300 and "(602 characters)" in line


def test_a_syntax_error_names_line_and_column(tmp_path, capsys):
    code, err = _plan(_project(tmp_path, '[project]\nname = "demo"\nversion = 1.2.3\n'), capsys)
    assert code == 2
    assert f"{tmp_path / 'release.toml'}:3:" in err and " = (missing)" not in err, err


def test_bad_registry_overrides_are_refused(tmp_path, capsys):
    path = _project(tmp_path, BASE)
    code = main(["plan", "--config", str(path), "--event", "local", "--image-registry", "https://ghcr.io/x"])
    err = capsys.readouterr().err
    assert code == 2 and "--image-registry: registries.images = 'https://ghcr.io/x'" in err, err
    code = main(["plan", "--config", str(path), "--event", "local", "--package-index", "pypi"])
    err = capsys.readouterr().err
    assert code == 2 and "--package-index: registries.packages = 'pypi'" in err, err
