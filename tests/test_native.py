"""The C++ runtime (native/): both wheels built once per session, then checked as users get them.

- the self-contained wheel in a venv without torch, on the example export and on an "op zoo"
  model that runs the forward ops a detector may use through the pruned libtorch;
- the thin wheel beside the installed torch: bit-level parity of the C++ pre- and
  postprocessing with model_export, detections against the eager reference;
- the torch guard in both import orders, in subprocesses (a wrong guard aborts the process);
- the C++ example built with find_package(SlipwayRuntime) against the installed wheel;
- wheel size, contents and metadata, the cibuildwheel configuration, the slipway wheels stage.

The wheels are built with the stage's own functions into build/native-test-cache/<hash of the
sources>, so an unchanged tree reuses them (a fresh build takes a few minutes).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from native_fixtures import NATIVE, ROOT, TEST_VERSION, _env, _log, last_json, run_python

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------
# Session fixtures: exports, wheels, environments


@pytest.fixture(scope="session")
def shapes_export(tmp_path_factory) -> Path:
    """The real example model, exported as `slipway export` does (TorchScript + golden outputs)."""
    from model_export.examples.config import example_config
    from model_export.export import export_model

    out = tmp_path_factory.mktemp("export") / "shapes-torch"
    export_model(example_config("pytorch", exporters=("torchscript",)), out, version="1.0.0",
                 git_commit="0" * 40, log=lambda _m: None)
    return out


ZOO_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn


class Zoo(nn.Module):
    """Forward ops a detector may use, reduced to (boxes, scores, classes) candidates."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.ln = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.emb = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 3)
        self.box = nn.Linear(8, 4)
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor):
        y = F.relu(self.bn(self.conv(x)))
        y = self.dw(y)
        y = F.silu(self.gn(y)) + F.gelu(y) + F.hardswish(y) + F.elu(y) + F.leaky_relu(y) + self.prelu(y)
        y = F.max_pool2d(y, 2) + F.avg_pool2d(y, 2)
        y = self.up(y)
        y = F.interpolate(y, size=(16, 16), mode="bilinear", align_corners=False)
        y = y + F.interpolate(y, scale_factor=1.0, mode="nearest")
        y = F.adaptive_avg_pool2d(y, (4, 4)) + F.adaptive_max_pool2d(y, (4, 4))
        y = F.pad(y, (1, 1, 1, 1), mode="reflect")[:, :, 1:-1, 1:-1]
        y = F.pixel_unshuffle(F.pixel_shuffle(y, 2), 2)
        seq = self.ln(y.flatten(2).transpose(1, 2))
        seq = seq + self.lstm(seq)[0] + self.gru(seq)[0]
        seq = seq + self.attn(seq, seq, seq, need_weights=False)[0]
        seq = seq + F.scaled_dot_product_attention(seq, seq, seq)
        seq = seq + self.emb(torch.argmax(seq, dim=2) % 16)
        seq = torch.softmax(seq, dim=-1) + torch.log_softmax(seq, dim=-1).exp() + torch.tanh(seq) * torch.sigmoid(seq)
        seq = seq + torch.cumsum(seq, dim=1) / 16 + torch.einsum("nkc,ncd->nkd", seq, seq.transpose(1, 2) @ seq) / 64
        seq = torch.where(seq > 0.5, seq, seq.clamp(min=-1.0, max=1.0))
        scores_all = torch.sigmoid(self.fc(seq)).flatten(1)
        top, i = torch.topk(scores_all, 20, dim=1)
        classes = i % 3
        cell = torch.div(i, 3, rounding_mode="floor")
        raw = torch.gather(self.box(seq), 1, cell.unsqueeze(2).expand(-1, -1, 4))
        cx = (cell % 4).float() * 32 + 16
        cy = torch.div(cell, 4, rounding_mode="floor").float() * 32 + 16
        wh = torch.exp(raw[..., 2:].clamp(-3.0, 3.0)) * 16
        boxes = torch.stack([cx - wh[..., 0], cy - wh[..., 1], cx + wh[..., 0], cy + wh[..., 1]], dim=2)
        return boxes, top, classes
'''


def export_zoo(out: Path) -> Path:
    """The op zoo, scripted and frozen like an export, with golden outputs from eager PyTorch."""
    import torch
    from PIL import Image

    from model_export.postprocess import postprocess
    from model_export.preprocess import preprocess

    namespace: dict = {}
    module_file = out.parent / "zoo_model.py"
    module_file.write_text(ZOO_SOURCE)
    exec(compile(ZOO_SOURCE, str(module_file), "exec"), namespace)  # torch.jit.script needs the source file
    torch.manual_seed(0)
    model = namespace["Zoo"]().eval()
    (out / "golden").mkdir(parents=True)
    torch.jit.freeze(torch.jit.script(model)).save(str(out / "model.torchscript.pt"))
    spec = {"height": 128, "width": 128, "channels": 3, "dtype": "uint8", "resize": "stretch",
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    output = {"format": "candidates", "score_threshold": 0.0, "nms_iou": 0.5, "max_detections": 10}
    labels = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    images = []
    for k, (h, w) in enumerate([(100, 150), (128, 128), (300, 200)]):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(out / "golden" / f"{k:03d}.png")
        with torch.inference_mode():
            b, s, c = model(torch.from_numpy(preprocess(image, spec)))
        dets = postprocess(b[0].numpy(), s[0].numpy(), c[0].numpy(), input_size=(128, 128), image_size=(h, w),
                           output=output, labels=labels)
        images.append({"file": f"{k:03d}.png", "width": w, "height": h, "detections": dets})
    (out / "golden" / "reference.json").write_text(json.dumps({"images": images}))
    (out / "model.json").write_text(json.dumps({
        "name": "op-zoo", "version": "0", "framework": "pytorch", "input": spec, "labels": labels, "output": output,
        "files": {"torchscript": {"path": "model.torchscript.pt"}},
    }))
    return out


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory) -> Path:
    return export_zoo(tmp_path_factory.mktemp("zoo") / "op-zoo")


def _target(wheel: Path, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", str(folder), str(wheel)], check=True, env=_env())
    return folder


@pytest.fixture(scope="session")
def sc_target(native_wheels, tmp_path_factory) -> Path:
    """The self-contained wheel unpacked for this (torch-holding) interpreter: for the guard tests."""
    return _target(native_wheels["self-contained"], tmp_path_factory.mktemp("sc-target"))


@pytest.fixture(scope="session")
def thin_target(native_wheels, tmp_path_factory) -> Path:
    """The thin wheel unpacked beside this interpreter's torch."""
    return _target(native_wheels["thin"], tmp_path_factory.mktemp("thin-target"))


def check_wheel(python: Path, kind: str, model: Path, pythonpath: Path | None = None) -> dict:
    res = subprocess.run([str(python), str(NATIVE / "tools" / "check_wheel.py"), "--kind", kind, "--model", str(model)],
                         env=_env(pythonpath), capture_output=True, text=True, timeout=600, cwd=model.parent)
    return last_json(res)


# --------------------------------------------------------------------------------------------
# Correctness


def test_self_contained_wheel_matches_golden_outputs_without_torch(sc_python, shapes_export):
    summary = check_wheel(sc_python, "self-contained", shapes_export)
    assert summary["ok"], summary
    assert summary["images"] == 8 and summary["min_iou"] >= 0.99 and summary["max_score_diff"] <= 1e-4
    assert summary["torch_guard"] == "ok"


def test_pruned_libtorch_runs_the_op_zoo(sc_python, zoo_export):
    """Convolutions (incl. transposed, grouped), norms, RNNs, attention, pooling, resampling,
    gathers and reductions through the self-contained wheel's pruned libtorch, against eager."""
    summary = check_wheel(sc_python, "self-contained", zoo_export)
    assert summary["ok"], summary
    assert summary["images"] == 3


def test_thin_wheel_matches_golden_outputs_beside_torch(thin_target, shapes_export):
    summary = check_wheel(Path(sys.executable), "thin", shapes_export, pythonpath=thin_target)
    assert summary["ok"], summary


def test_detections_match_eager_by_compare_detections(thin_target, shapes_export):
    """The acceptance rule of the contract, with model_export's own matcher."""
    res = run_python(sys.executable, f"""
        import json
        from pathlib import Path
        from model_export.artifacts import read_golden
        from model_export.compare import compare_detections
        import slipway_runtime
        folder = Path({str(shapes_export)!r})
        detector = slipway_runtime.Detector(folder, threads=2)
        images, entries = read_golden(folder)
        results = [compare_detections(e["detections"], detector.predict(img), iou=0.99, score=1e-4)
                   for img, e in zip(images, entries)]
        print(json.dumps({{"ok": all(r.ok for r in results), "min_iou": min(r.min_iou for r in results),
                          "max_score_diff": max(r.max_score_diff for r in results),
                          "matched": sum(r.matched for r in results)}}))
    """, pythonpath=thin_target, cwd=ROOT)
    summary = last_json(res)
    assert summary["ok"] and summary["matched"] > 0, summary
    assert summary["min_iou"] >= 0.99 and summary["max_score_diff"] <= 1e-4


def test_cpp_preprocessing_is_bit_identical_to_model_export(thin_target, shapes_export):
    res = run_python(sys.executable, f"""
        import json
        import numpy as np
        import torch
        from model_export.preprocess import preprocess, preprocess_torch
        import slipway_runtime
        detector = slipway_runtime.Detector({str(shapes_export)!r})
        rng = np.random.default_rng(7)
        out = []
        # down, up, identity, odd and extreme aspect ratios
        for h, w in [(160, 192), (128, 128), (37, 53), (480, 641), (1, 300), (1000, 3)]:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            got = detector.preprocess(image)
            ref = preprocess(image, detector.info | {{"height": 128, "width": 128}})
            aten = preprocess_torch(image, {{"height": 128, "width": 128, "mean": detector.info["mean"],
                                             "std": detector.info["std"]}}).numpy()
            out.append({{"shape": [h, w], "exact": bool(np.array_equal(got, ref)),
                         "max_vs_numpy": float(np.abs(got - ref).max()),
                         "max_vs_aten": float(np.abs(got - aten).max())}})
        print(json.dumps(out))
    """, pythonpath=thin_target, cwd=ROOT)
    for row in last_json(res):
        assert row["exact"], row
        # ATen interpolates columns before rows; the results differ in the last float bits only.
        assert row["max_vs_aten"] <= 1e-5, row


def test_cpp_postprocessing_equals_model_export(thin_target):
    """Thresholds, class-aware NMS with ties and overlaps, max_detections, scaling and clipping."""
    res = run_python(sys.executable, """
        import json
        import numpy as np
        from model_export.postprocess import postprocess
        from slipway_runtime import _core
        rng = np.random.default_rng(3)
        labels = ["a", "b", "c"]
        cases = mismatches = 0
        for trial in range(300):
            k = int(rng.integers(0, 60))
            xy = rng.uniform(-20, 140, (k, 2)).astype(np.float32)
            wh = rng.uniform(0, 60, (k, 2)).astype(np.float32)
            boxes = np.concatenate([xy, xy + wh], axis=1)
            if k > 4:
                boxes[1] = boxes[0] + rng.uniform(-3, 3, 4).astype(np.float32)  # heavy overlap
                boxes[3] = boxes[2]  # identical boxes
            scores = rng.choice(np.linspace(0, 1, 11, dtype=np.float32), k)  # many ties
            classes = rng.integers(-1, 5, k)  # includes ids without labels
            out = {"score_threshold": float(rng.choice([0.0, 0.3, 0.5])), "nms_iou": float(rng.choice([0.3, 0.5, 0.9])),
                   "max_detections": int(rng.integers(1, 30))}
            size = (int(rng.integers(1, 500)), int(rng.integers(1, 500)))
            ref = postprocess(boxes, scores, classes, input_size=(128, 96), image_size=size, output=out, labels=labels)
            b, s, c, lab = _core._postprocess(boxes, scores, classes, (128, 96), size, out["score_threshold"],
                                              out["nms_iou"], out["max_detections"], labels)
            got = [{"box": [float(v) for v in b[i]], "score": float(s[i]), "class_id": int(c[i]), "label": lab[i]}
                   for i in range(len(s))]
            cases += 1
            mismatches += got != ref
        print(json.dumps({"cases": cases, "mismatches": mismatches}))
    """, pythonpath=thin_target, cwd=ROOT)
    summary = last_json(res)
    assert summary == {"cases": 300, "mismatches": 0}


# --------------------------------------------------------------------------------------------
# The torch guard of the self-contained wheel


def test_self_contained_wheel_predicts_without_numpy(sc_python, shapes_export):
    """numpy is an extra: a PIL image or raw RGB bytes go in, dicts come out, numpy never loads."""
    res = run_python(sc_python, f"""
        import json, sys
        sys.modules["numpy"] = None  # any import of numpy now fails
        import slipway_runtime
        from PIL import Image
        d = slipway_runtime.Detector({str(shapes_export)!r})
        pil = Image.open({str(shapes_export / "golden" / "000.png")!r}).convert("RGB")
        from_pil = d.predict(pil)
        from_bytes = d.predict(pil.tobytes(), size=(pil.height, pil.width))
        try:
            d.predict_arrays(pil)
        except ImportError as exc:
            arrays = str(exc)
        errors = []
        for bad, kw in ((pil.tobytes(), {{}}), (pil.tobytes()[:-1], {{"size": (pil.height, pil.width)}}),
                        (pil.convert("L"), {{}}), ([1, 2, 3], {{}})):
            try:
                d.predict(bad, **kw)
            except ValueError as exc:
                errors.append(str(exc))
        print(json.dumps({{"pil": from_pil, "same": from_pil == from_bytes, "arrays": arrays, "errors": errors,
                          "fusion_groups": d.fusion_groups, "fusion_error": d.fusion_error,
                          "size": [pil.height, pil.width]}}))
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["pil"] and out["same"], out
    assert {"box", "score", "class_id", "label"} <= set(out["pil"][0])
    assert "pip install numpy" in out["arrays"]
    h, w = out["size"]
    assert out["errors"] == [
        "raw RGB bytes need size=(height, width)",
        f"the buffer holds {h * w * 3 - 1} bytes, not height {h} x width {w} x 3",
        "expected an RGB image, got PIL mode 'L': use image.convert('RGB')",
        "expected a uint8 RGB image: a numpy array [H, W, 3], a PIL RGB image or bytes with size=(height, "
        "width), got list",
    ], out["errors"]
    # The pruned libtorch keeps the oneDNN Graph fuser: the example model runs fused.
    assert out["fusion_groups"] > 0 and out["fusion_error"] == ""


def test_fusion_off_and_fuser_failures_fall_back_to_the_same_detections(sc_python, shapes_export, zoo_export):
    """onednn_fusion=False runs unfused with the same detections; a model libtorch's fuser fails
    on (the op zoo's GRU) loads anyway, unfused, and says why."""
    res = run_python(sc_python, f"""
        import json
        import numpy as np
        from PIL import Image
        import slipway_runtime
        image = np.asarray(Image.open({str(shapes_export / "golden" / "000.png")!r}).convert("RGB"))
        off = slipway_runtime.Detector({str(shapes_export)!r}, onednn_fusion=False)
        on = slipway_runtime.Detector({str(shapes_export)!r})
        few = slipway_runtime.Detector({str(shapes_export)!r}, warmup_runs=1)
        zoo = slipway_runtime.Detector({str(zoo_export)!r})
        print(json.dumps({{"off": off.predict(image), "on": on.predict(image), "groups": [off.fusion_groups,
                          on.fusion_groups, few.fusion_groups], "zoo_groups": zoo.fusion_groups,
                          "zoo_error": zoo.fusion_error, "zoo_dets": len(zoo.predict(image))}}))
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["groups"][0] == 0 and out["groups"][1] > 0 and out["groups"][2] == -1
    assert len(out["off"]) == len(out["on"]) > 0
    for a, b in zip(out["off"], out["on"], strict=True):
        assert a["class_id"] == b["class_id"] and abs(a["score"] - b["score"]) <= 1e-4
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) <= 1e-3
    assert out["zoo_groups"] == 0 and "Schema not found" in out["zoo_error"], out
    assert out["zoo_dets"] >= 0


def test_guard_torch_imported_first(sc_target, shapes_export):
    res = run_python(sys.executable, """
        import torch
        try:
            import slipway_runtime
        except ImportError as exc:
            print("refused:", exc)
        else:
            raise SystemExit("slipway_runtime imported after torch")
        # The process lives on, torch works.
        print("torch still works:", float(torch.ones(2).sum()))
    """, pythonpath=sc_target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refused:" in res.stdout and "slipway-runtime-torch" in res.stdout and "separate processes" in res.stdout
    assert "torch still works: 2.0" in res.stdout


def test_guard_other_libtorch_already_loaded(sc_target):
    """A libtorch loaded by native code, with no torch module in sys.modules, is seen too."""
    res = run_python(sys.executable, """
        import ctypes, importlib.util, os, sys
        lib = os.path.join(importlib.util.find_spec("torch").submodule_search_locations[0], "lib", "libtorch_cpu.so")
        ctypes.CDLL(lib)
        assert "torch" not in sys.modules
        try:
            import slipway_runtime
        except ImportError as exc:
            print("refused:", exc)
    """, pythonpath=sc_target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "refused:" in res.stdout and "another libtorch (" in res.stdout and "/torch/lib/lib" in res.stdout


def test_guard_torch_imported_afterwards(sc_target, shapes_export):
    res = run_python(sys.executable, f"""
        import numpy as np
        import slipway_runtime
        for name in ("torch", "torch.nn"):
            try:
                __import__(name)
            except ImportError as exc:
                print("BLOCKED", name + ":", exc)
            else:
                raise SystemExit(name + " imported after slipway_runtime")
        import importlib, importlib.util
        for look in (lambda: importlib.import_module("torch"), lambda: importlib.util.find_spec("torch")):
            try:
                look()
            except ImportError as exc:
                print("BLOCKED look:", type(exc).__name__)
        # The runtime keeps working after the refusal.
        d = slipway_runtime.Detector({str(shapes_export)!r})
        print("detections:", len(d.predict(np.zeros((64, 64, 3), np.uint8))) >= 0)
    """, pythonpath=sc_target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("BLOCKED") == 4 and "slipway-runtime-torch" in res.stdout
    assert res.stdout.count("BLOCKED look: TorchConflictError") == 2
    assert "detections: True" in res.stdout


def test_thin_wheel_shares_the_process_with_torch(thin_target, shapes_export):
    res = run_python(sys.executable, f"""
        import numpy as np
        import slipway_runtime
        import torch
        d = slipway_runtime.Detector({str(shapes_export)!r})
        print(slipway_runtime.KIND, float(torch.ones(3).sum()), isinstance(d.predict(np.zeros((50, 70, 3), np.uint8)), list))
    """, pythonpath=thin_target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("thin 3.0 True")


# --------------------------------------------------------------------------------------------
# API behaviour


def test_api_errors_threads_and_benchmark(thin_target, shapes_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shapes_export, broken)
    manifest = json.loads((broken / "model.json").read_text())
    res = run_python(sys.executable, f"""
        import json, threading
        from pathlib import Path
        import numpy as np
        import slipway_runtime
        folder, broken = Path({str(shapes_export)!r}), Path({str(broken)!r})
        manifest = json.loads({json.dumps(json.dumps(manifest))})
        out = {{}}

        def error(make):
            try:
                make()
            except (ValueError, RuntimeError) as exc:
                return type(exc).__name__ + ": " + str(exc)
            return None

        d = slipway_runtime.Detector(folder / "model.torchscript.pt", threads=1, interop_threads=1)  # a file works too
        out["interop_again_same"] = error(lambda: slipway_runtime.Detector(folder, interop_threads=1, warmup_runs=0))
        out["interop_changed"] = error(lambda: slipway_runtime.Detector(folder, interop_threads=3, warmup_runs=0))
        out["bad_dtype"] = error(lambda: d.predict(np.zeros((8, 8, 3), np.float32)))
        out["bad_shape"] = error(lambda: d.predict(np.zeros((8, 8), np.uint8)))
        out["no_model"] = error(lambda: slipway_runtime.Detector(broken / "missing"))
        out["bad_threads"] = error(lambda: slipway_runtime.Detector(folder, threads=0))
        for name, change in [("format", ("output", "format", "detections")), ("resize", ("input", "resize", "crop")),
                             ("height", ("input", "height", "x")), ("mean", ("input", "mean", [1, 2]))]:
            m = json.loads(json.dumps(manifest))
            m[change[0]][change[1]] = change[2]
            (broken / "model.json").write_text(json.dumps(m))
            out["manifest_" + name] = error(lambda: slipway_runtime.Detector(broken))
        (broken / "model.json").write_text('{{"name": "x", "input": {{')
        out["manifest_syntax"] = error(lambda: slipway_runtime.Detector(broken))
        # Labels with escapes, through the C++ JSON reader.
        m = json.loads(json.dumps(manifest))
        m["labels"] = ["caf\\u00e9", "\\U0001F600", "a\\"b\\\\c\\n"]
        (broken / "model.json").write_text(json.dumps(m, ensure_ascii=True))
        out["labels"] = slipway_runtime.Detector(broken, warmup_runs=0).labels == m["labels"]

        # The same answers from several Python threads at once (the GIL is released).
        image = np.asarray(np.random.default_rng(1).integers(0, 256, (150, 170, 3)), dtype=np.uint8)
        d.set_num_threads(2)
        first = d.predict(image)
        answers = []
        threads = [threading.Thread(target=lambda: answers.extend(d.predict(image) == first for _ in range(5)))
                   for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        out["concurrent"] = len(answers) == 20 and all(answers)
        out["threads"] = d.threads
        # Non-contiguous input is accepted (copied).
        out["strided"] = d.predict(np.ascontiguousarray(image[:, ::-1])) == d.predict(image[:, ::-1])
        out["bench"] = d.benchmark(image, iterations=5, warmup=1)
        out["last_timings"] = sorted(d.last_timings)
        out["version"] = [slipway_runtime.__version__, slipway_runtime.TORCH_VERSION]
        print(json.dumps(out))
    """, pythonpath=thin_target)
    out = last_json(res)
    assert out["interop_again_same"] is None
    assert "inter-op thread count once per process" in out["interop_changed"]
    assert out["bad_dtype"].startswith("ValueError") and "uint8" in out["bad_dtype"]
    assert out["bad_shape"].startswith("ValueError")
    assert "model not found" in out["no_model"]
    assert "threads" in out["bad_threads"]
    assert "output.format" in out["manifest_format"] and "candidates" in out["manifest_format"]
    assert "input.resize" in out["manifest_resize"]
    assert "input.height" in out["manifest_height"]
    assert "input.mean" in out["manifest_mean"]
    assert "invalid JSON at line 1" in out["manifest_syntax"]
    assert out["labels"] is True
    assert out["concurrent"] is True and out["threads"] == 2 and out["strided"] is True
    bench = out["bench"]
    for stage in ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"):
        assert bench[stage]["median"] > 0
    assert bench["total_ms"]["median"] >= bench["inference_ms"]["median"]
    assert out["last_timings"] == ["inference_ms", "postprocess_ms", "preprocess_ms", "total_ms"]
    assert out["version"] == [TEST_VERSION, importlib.metadata.version("torch").split("+")[0]]


# --------------------------------------------------------------------------------------------
# The manifest reader under a host locale


@pytest.fixture(scope="module")
def manifest_reader(tmp_path_factory) -> Path:
    """tests/cpp/manifest_locale.cpp linked with the runtime's torch-free sources (all but detector.cpp)."""
    return _torch_free_build(tmp_path_factory.mktemp("manifest-reader"))


def _torch_free_build(out: Path) -> Path:
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler, "no C++ compiler (c++ or g++) on PATH: the runtime's tests build C++"
    sources = sorted(p for p in (NATIVE / "src").glob("*.cpp") if p.name != "detector.cpp")
    binary = out / "manifest_locale"
    cmd = [compiler, "-std=c++17", "-O1", "-I", str(NATIVE / "include"), "-I", str(NATIVE / "src"),
           "-isystem", str(NATIVE / "third_party" / "nlohmann-json" / "include"),
           str(ROOT / "tests" / "cpp" / "manifest_locale.cpp"), *map(str, sources), "-o", str(binary)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-3000:]}"
    return binary


def _decimal_comma_locale(binary: Path, model: Path, work: Path) -> tuple[str, dict[str, str]]:
    """de_DE.UTF-8 as installed, else compiled with localedef into a folder named by LOCPATH."""
    name = "de_DE.UTF-8"
    if subprocess.run([str(binary), name, str(model)], capture_output=True).returncode == 0:
        return name, _env()
    localedef = shutil.which("localedef")
    source = Path("/usr/share/i18n/locales/de_DE")
    if not localedef or not source.is_file():
        pytest.skip(f"no {name} locale and no locale sources to make one from ({source}: install Debian's "
                    "'locales' package; make test-tools does)")
    locales = work / "locales"
    locales.mkdir()
    # -c: write the locale even where the source draws warnings (exit 1); the folder is what counts.
    res = subprocess.run([localedef, "-c", "-i", "de_DE", "-f", "UTF-8", str(locales / name)],
                         capture_output=True, text=True, timeout=300)
    assert (locales / name / "LC_NUMERIC").is_file(), f"localedef failed: {res.stdout}{res.stderr}"
    return name, {**_env(), "LOCPATH": str(locales)}


def test_manifest_numbers_ignore_the_host_locale(manifest_reader, tmp_path):
    """A program that set a decimal-comma locale (de_DE) still reads 0.5 from model.json as 0.5:
    the JSON reader must not go through the C library's locale-dependent strtod."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.torchscript.pt").write_bytes(b"")  # the reader checks only that it exists
    (model / "model.json").write_text(json.dumps({
        "name": "locale", "version": "1", "framework": "pytorch", "labels": ["a", "b"],
        "input": {"height": 64, "width": 48, "channels": 3, "resize": "stretch",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "output": {"format": "candidates", "score_threshold": 0.5, "nms_iou": 0.45, "max_detections": 7},
    }))
    binary = manifest_reader
    name, env = _decimal_comma_locale(binary, model, tmp_path)
    runs = {}
    for locale in ("C", name):
        res = subprocess.run([str(binary), locale, str(model)], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 0, f"{locale}: exit {res.returncode}: {res.stderr}"
        runs[locale] = json.loads(res.stdout)
    german = runs[name]
    # The locale really is in effect: the C library itself now stops at the '.'.
    assert german["decimal_point"] == "," and german["strtod_0_5"] == 0.0, german
    for got in runs.values():
        assert got["error"] is None, got
        assert got["score_threshold"] == 0.5 and got["nms_iou"] == 0.45 and got["max_detections"] == 7, got
        assert got["mean"] == pytest.approx([0.485, 0.456, 0.406]) and got["std"] == pytest.approx([0.229, 0.224, 0.225])


@pytest.mark.parametrize(("text", "expected"), [
    ('{"name": "x",\n "input": {', "invalid JSON at line 2, column 12: syntax error while parsing object key"),
    ('{"labels": [1, 2,, 3]}', "invalid JSON at line 1, column 18: syntax error while parsing value"),
    ('{"name": "caf\xe9"}', "invalid JSON at line 1, column 15: syntax error while parsing value - invalid string: "
                            "ill-formed UTF-8 byte"),
    ('{"input": {"height": 8, "width": 8}, "labels": []} trailing', "invalid JSON at line 1, column 54: syntax error "
                                                                  "while parsing value - invalid literal"),
    ('{"input": {"height": 8, "width": 8, "mean": [0, 0], "std": [1, 1, 1]}}', "input.mean must hold 3 numbers"),
    ('{"input": {"height": "8"}}', "input.height must be a number, not a string"),
    ('{"input": {"height": 8, "height": 0.5}}', "input.height must be a positive integer"),  # the last one wins
])
def test_manifest_errors_name_the_file_and_the_place(manifest_reader, tmp_path, text, expected):
    (tmp_path / "model.torchscript.pt").write_bytes(b"")
    (tmp_path / "model.json").write_bytes(text.encode("latin-1"))
    res = subprocess.run([str(manifest_reader), "C", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (json.loads(res.stdout)["error"] or "").startswith(f"{tmp_path / 'model.json'}: {expected}"), res.stdout


# --------------------------------------------------------------------------------------------
# C++ consumers


def test_cpp_example_builds_against_the_installed_wheel(sc_python, shapes_export, tmp_path):
    """find_package(SlipwayRuntime) from the wheel's package folder: no libtorch headers needed."""
    from PIL import Image

    from model_export.compare import compare_detections

    prefix = run_python(sc_python, "import slipway_runtime; print(slipway_runtime.cmake_prefix_path)").stdout.strip()
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(NATIVE / "examples"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    reference = json.loads((shapes_export / "golden" / "reference.json").read_text())
    for entry in reference["images"][:3]:
        ppm = tmp_path / (entry["file"] + ".ppm")
        Image.open(shapes_export / "golden" / entry["file"]).convert("RGB").save(ppm)
        res = subprocess.run([str(build / "detect"), str(shapes_export), str(ppm), "2"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        got = []
        for line in res.stdout.splitlines():
            m = re.match(r"(\S+)\s+([\d.]+)\s+\[([-\d., ]+)\]\s+class (\d+)", line)
            if m:
                got.append({"label": m.group(1), "score": float(m.group(2)),
                            "box": [float(v) for v in m.group(3).split(",")], "class_id": int(m.group(4))})
        assert len(got) == len(entry["detections"])
        # The example prints 3 decimals for boxes and 6 for scores.
        assert compare_detections(entry["detections"], got, iou=0.99, score=1e-5).ok


def test_example_reports_bad_input(sc_python, tmp_path):
    prefix = run_python(sc_python, "import slipway_runtime; print(slipway_runtime.cmake_prefix_path)").stdout.strip()
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(NATIVE / "examples"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    res = subprocess.run([str(build / "detect"), str(tmp_path / "nothing"), str(tmp_path / "x.ppm")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "model not found" in res.stderr


# --------------------------------------------------------------------------------------------
# The wheels themselves


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_wheel_sizes_contents_and_metadata(native_wheels):
    from slipway.stages import wheels

    sc, thin = native_wheels["self-contained"], native_wheels["thin"]
    assert sc.stat().st_size < 100 * 2**20, f"{sc.name}: {sc.stat().st_size / 2**20:.2f} MiB"
    assert thin.stat().st_size < 2 * 2**20
    assert wheels.size_problems([sc, thin], 100.0) == []
    with zipfile.ZipFile(sc) as zf:
        names = zf.namelist()
    vendored = sorted(re.sub(r"-[0-9a-f]{8}", "", n.split("/")[-1]) for n in names
                      if n.startswith("slipway_runtime.libs/") and not n.endswith("/"))
    assert vendored == ["libc10.so", "libgomp.so.1", "libtorch_cpu.so"]
    for required in ("slipway_runtime/include/slipway/detector.hpp", "slipway_runtime/lib/libslipway_runtime.so",
                     "slipway_runtime/lib/cmake/SlipwayRuntime/SlipwayRuntimeConfig.cmake",
                     "slipway_runtime/share/licenses/slipway-runtime/nlohmann-json.txt"):
        assert required in names
    with zipfile.ZipFile(thin) as zf:
        assert not [n for n in zf.namelist() if ".libs/" in n]
    torch_version = importlib.metadata.version("torch").split("+")[0]
    assert f"Requires-Dist: torch=={torch_version}" in _metadata(thin)
    assert "Requires-Dist: torch" not in _metadata(sc)
    assert re.search(r"manylinux_2_\d+_x86_64|manylinux_2_\d+_aarch64", sc.name)
    wheels.twine_check([sc, thin], _log)


def test_libtorch_pruning_account(native_wheels):
    """What repair_wheel blanked, rule by rule (README.md, 'Wheel size')."""
    repair = json.loads((native_wheels["self-contained"].parent / "repair.json").read_text())["self-contained"]
    rules = repair["prune"]["rules"]
    assert repair["prune"]["bytes"] > 10 * 2**20
    assert rules["tracer kernels"]["functions"] > 1000
    assert all(r["why"] for r in rules.values())
