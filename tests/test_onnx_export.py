"""ONNX export of models whose layers' Python-side checks trip the tracer (GroupNorm, LayerNorm).

Both exporters are covered: the torch.export-based one (``dynamo=True``, the default where
onnxscript is installed) and the TorchScript-based one with its allow-list of harmless tracer
warnings. A model with data-dependent control flow must be refused by both.
"""

from __future__ import annotations

import ast
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_export import torch_export  # noqa: E402
from model_export.errors import ExportError  # noqa: E402
from model_export.examples.config import example_config  # noqa: E402
from model_export.export import export_model  # noqa: E402
from model_export.postprocess import expand_candidates  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Small detectors in the shapes contract, each with a normalisation layer whose input check the
# tracer reports. The class head's bias is raised so that the untrained model makes plenty of
# detections: verification then compares real boxes, not two empty lists.
MODELS = """
import torch
from torch import nn

from model_export.examples.torch_detector import ShapesDetector


class GroupNormDetector(ShapesDetector):
    def __init__(self):
        super().__init__(width=16)
        self.neck = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU())
        nn.init.constant_(self.cls_head.bias, 0.5)


class LayerNormDetector(ShapesDetector):
    def __init__(self):
        super().__init__(width=16)
        self.norm = nn.LayerNorm(32)
        nn.init.constant_(self.cls_head.bias, 0.5)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.neck(self.backbone(x))
        f = self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.cls_head(f), self.box_head(f)


class DataDependentGroupNorm(GroupNormDetector):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, classes = GroupNormDetector.forward(self, x)
        if x.mean() > 0:
            scores = scores * 0.5
        return boxes, scores, classes


def group_norm():
    return GroupNormDetector()


def layer_norm():
    return LayerNormDetector()


def data_dependent():
    return DataDependentGroupNorm()
"""


@pytest.fixture
def norm_models(tmp_path, monkeypatch):
    """(module name, weights per entry point) for the models above, importable in this test only."""
    folder = tmp_path / "modules"
    folder.mkdir()
    module = f"norm_models_{tmp_path.name.replace('-', '_')}"
    (folder / f"{module}.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.syspath_prepend(str(folder))
    # The fresh verification process must import nothing of these: it only reads the export.
    mod = __import__(module)
    weights = {}
    for name in ("group_norm", "layer_norm", "data_dependent"):
        torch.manual_seed(0)
        path = tmp_path / f"{name}.pt"
        torch.save(getattr(mod, name)().state_dict(), path)
        weights[name] = path
    return module, weights


def _export(tmp_path: Path, module: str, weights: dict, name: str):
    cfg = example_config("pytorch", name=f"norm-{name.replace('_', '-')}", entry_point=f"{module}:{name}",
                         weights=weights[name], exporters=("onnx",))
    out = tmp_path / "models"
    out.mkdir(exist_ok=True)
    return export_model(cfg, out / cfg.name, version="0", git_commit="x", log=lambda _: None)


def _assert_verified(manifest: dict, exporter: str) -> None:
    run = manifest["verification"]["runs"][0]
    assert run["format"] == "onnx" and run["ok"], run
    assert run["detections"] > 0, "the comparison must cover real detections"
    assert exporter in manifest["exporters"]["onnx"]["exporter"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["group_norm", "layer_norm"])
def test_norm_detector_exports_to_onnx_with_the_torch_export_based_exporter(tmp_path, norm_models, name):
    pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript")
    assert torch_export.onnx_exporter() == "dynamo"
    manifest = _export(tmp_path, *norm_models, name)
    _assert_verified(manifest, "dynamo=True")
    assert manifest["exporters"]["onnx"]["opset"] == torch_export.ONNX_OPSET_DYNAMO


@pytest.mark.slow
@pytest.mark.parametrize("name", ["group_norm", "layer_norm"])
def test_norm_detector_exports_to_onnx_with_the_torchscript_based_exporter(tmp_path, norm_models, name,
                                                                           monkeypatch):
    monkeypatch.setattr(torch_export, "onnx_exporter", lambda: "torchscript")
    manifest = _export(tmp_path, *norm_models, name)
    _assert_verified(manifest, "dynamo=False")


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_data_dependent_control_flow_is_still_refused(tmp_path, norm_models, monkeypatch, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript")
    monkeypatch.setattr(torch_export, "onnx_exporter", lambda: exporter)
    with pytest.raises(ExportError) as info:
        _export(tmp_path, *norm_models, "data_dependent")
    message = str(info.value)
    assert "norm-data-dependent" in message and norm_models[0] in message
    assert "data-dependent" in message
    assert list((tmp_path / "models").iterdir()) == [], "a refused export left files behind"


def _tracer_warnings(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def test_only_the_normalisation_input_checks_are_harmless():
    gn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8)).eval()
    caught = _tracer_warnings(lambda: torch.jit.trace(gn, torch.zeros(1, 3, 8, 8), check_trace=False))
    assert caught and all(torch_export.harmless_tracer_warning(w) for w in caught)
    assert torch_export._data_dependent(caught) == []

    def branchy(x):
        # The very message GroupNorm's check produces, from code outside it.
        return x * 2 if bool(x.sum() > 0) else x

    caught = _tracer_warnings(lambda: torch.jit.trace(branchy, torch.ones(2), check_trace=False))
    assert caught and not any(torch_export.harmless_tracer_warning(w) for w in caught)
    assert torch_export._data_dependent(caught)


def test_exporters_do_not_import_the_example_models():
    for module in ("tf_export.py", "torch_export.py", "export.py", "verify.py", "postprocess.py", "preprocess.py"):
        tree = ast.parse((ROOT / "model_export" / module).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not [m for m in imported if m.startswith("model_export.examples")], module


def test_expand_candidates_pairs_every_box_with_every_class():
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    scores = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) / 100
    b, s, c = expand_candidates(boxes, scores)
    assert b.shape == (2, 6, 4) and s.shape == (2, 6) and c.shape == (2, 6)
    assert c[0].tolist() == [0, 1, 0, 1, 0, 1]
    assert np.array_equal(b[1, 3], boxes[1, 1]) and s[1, 3] == scores[1, 1, 1]
