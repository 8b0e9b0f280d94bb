"""Time one runtime on the golden images of one export, in a process of its own.

    python -m slipway.benchmark.worker    (driven by slipway.benchmark.inprocess over stdin/stdout)

The spec names the runtime (``eager``, ``torchscript``, ``onnx``, ``tensorflow``, ``cpp``), the
export folder, the thread count and the number of warm-up runs; the driver then asks for batches
of timed runs (see ``serve``). Each timed run takes
the next golden image as PNG bytes and times four stages with ``time.perf_counter``:

- ``decode``: PNG bytes -> RGB pixels (PIL), the same for every runtime;
- ``preprocess``: pixels -> model input (what the runtime's users do before calling it);
- ``inference``: the model call;
- ``postprocess``: model output -> detections (threshold, NMS, scaling).

The C++ runtime does preprocess, inference and postprocess inside one ``predict`` call; its
per-stage split comes from the runtime's own timing when it reports one. After timing, every
golden image is run once more and compared with the reference detections.

Every answer is one stdout line ``SLIPWAY_BENCH_RESULT <json>``. This module imports only numpy and
PIL at module level, so the C++ runtime's process never sees torch.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MARKER = "SLIPWAY_BENCH_RESULT "
STAGES = ("decode", "preprocess", "inference", "postprocess")


class Unavailable(Exception):
    """The runtime cannot be measured here; the message says why."""


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class Runner:
    """One runtime: ``preprocess``, ``infer`` and ``postprocess`` for a decoded image."""

    version = ""
    # Set by runtimes whose stages run inside one native call and which report their own split.
    native_stages: dict[str, float] | None = None

    def decode(self, png: bytes) -> Any:
        return _decode(png)

    def image_size(self, image: Any) -> tuple[int, int]:
        return int(image.shape[0]), int(image.shape[1])

    def preprocess(self, image: Any) -> Any:
        raise NotImplementedError

    def infer(self, x: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, out: Any, image: Any) -> list[dict]:
        raise NotImplementedError


class _Candidates(Runner):
    """Runtimes that return the top-K candidates; NMS is ``model_export.postprocess``'s."""

    def __init__(self, model_dir: Path, manifest: dict):
        self.manifest = manifest
        self.input = manifest["input"]

    def preprocess(self, image: np.ndarray) -> Any:
        from model_export.preprocess import preprocess

        return preprocess(image, self.input)

    def postprocess(self, out: Any, image: Any) -> list[dict]:
        from model_export.postprocess import postprocess

        boxes, scores, classes = (np.asarray(t) for t in out)
        return postprocess(
            boxes[0], scores[0], classes[0],
            input_size=(int(self.input["height"]), int(self.input["width"])),
            image_size=self.image_size(image), output=self.manifest["output"], labels=self.manifest["labels"],
        )


def _torch_threads(threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    return torch


class EagerRunner(_Candidates):
    """What a user has today: PIL resize, numpy normalisation, the eager ``nn.Module``."""

    def __init__(self, model_dir: Path, manifest: dict, spec: dict):
        super().__init__(model_dir, manifest)
        torch = _torch_threads(spec["threads"])
        try:
            from model_export.entry_points import load_entry_point
        except ImportError:
            from model_export.torch_export import load_entry_point

        # The model's own code may live beside the project's release.toml.
        sys.path[:0] = [p for p in spec.get("sys_path", []) if p not in sys.path]
        entry_point = spec.get("entry_point") or manifest.get("source", {}).get("entry_point")
        weights = spec.get("weights")
        if not entry_point or not weights:
            raise Unavailable("the eager baseline needs the model's entry point and weights file")
        if not Path(weights).is_file():
            raise Unavailable(f"weights file {weights} not found")
        model = load_entry_point(entry_point, manifest["name"])()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        self.model = model.eval()
        self.torch = torch
        self.version = torch.__version__
        self.size = (int(self.input["width"]), int(self.input["height"]))
        self.mean = np.asarray(self.input["mean"], dtype=np.float32)
        self.std = np.asarray(self.input["std"], dtype=np.float32)

    def decode(self, png: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image.load()
        return image

    def image_size(self, image: Image.Image) -> tuple[int, int]:
        return image.height, image.width

    def preprocess(self, image: Image.Image) -> Any:
        x = np.asarray(image.resize(self.size, Image.BILINEAR), dtype=np.float32)
        x = (x / np.float32(255.0) - self.mean) / self.std
        return self.torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))[None])

    def infer(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return tuple(t.numpy() for t in self.model(x))


class TorchScriptRunner(_Candidates):
    """``model.torchscript.pt`` loaded with torch, as the pytorch-cpu image serves it."""

    def __init__(self, model_dir: Path, manifest: dict, spec: dict):
        super().__init__(model_dir, manifest)
        entry = manifest.get("files", {}).get("torchscript")
        if not entry:
            raise Unavailable("no TorchScript file in this export")
        torch = _torch_threads(spec["threads"])
        # As serving.backends.torchscript runs it on a CPU: with libtorch's oneDNN Graph fuser.
        torch.jit.enable_onednn_fusion(bool(spec.get("onednn_fusion", True)))
        self.module = torch.jit.load(str(model_dir / entry["path"]), map_location="cpu").eval()
        self.torch = torch
        self.version = torch.__version__

    def preprocess(self, image: np.ndarray) -> Any:
        return self.torch.from_numpy(super().preprocess(image))

    def infer(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return tuple(t.numpy() for t in self.module(x))


class OnnxRunner(_Candidates):
    def __init__(self, model_dir: Path, manifest: dict, spec: dict):
        super().__init__(model_dir, manifest)
        entry = manifest.get("files", {}).get("onnx")
        if not entry:
            raise Unavailable("no ONNX file in this export")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise Unavailable(f"onnxruntime does not import: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        # Spinning worker threads keep burning CPU after each call and slow down what runs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_dir / entry["path"]), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def infer(self, x: np.ndarray) -> Any:
        return self.session.run(None, {self.input_name: x})


class TensorFlowRunner(Runner):
    """The SavedModel's ``serving_default``: uint8 images in, detections out (resize and NMS inside)."""

    def __init__(self, model_dir: Path, manifest: dict, spec: dict):
        entry = manifest.get("files", {}).get("saved_model")
        if not entry:
            raise Unavailable("no SavedModel in this export")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise Unavailable(f"tensorflow does not import: {exc}") from exc
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.tf = tf
        self.fn = tf.saved_model.load(str(model_dir / entry["path"])).signatures["serving_default"]
        self.labels = manifest["labels"]
        self.version = tf.__version__

    def preprocess(self, image: np.ndarray) -> Any:
        return self.tf.constant(image[None])

    def infer(self, x: Any) -> Any:
        out = self.fn(images=x)
        return {k: v.numpy() for k, v in out.items()}

    def postprocess(self, out: dict, image: Any) -> list[dict]:
        n = int(out["num_detections"][0])
        dets = []
        for box, score, cls in zip(out["boxes"][0][:n], out["scores"][0][:n], out["classes"][0][:n], strict=True):
            c = int(cls)
            dets.append({"box": [float(v) for v in box], "score": float(score), "class_id": c,
                         "label": self.labels[c] if 0 <= c < len(self.labels) else str(c)})
        return dets


# Names a per-stage timing of the C++ runtime may use for the stages timed here.
_NATIVE_KEYS = {
    "preprocess": ("preprocess", "preprocess_ms", "pre"),
    "inference": ("inference", "inference_ms", "forward", "model"),
}


class CppRunner(Runner):
    """The C++ wheel: ``slipway_runtime.Detector(model_dir, threads).predict(image)``."""

    def __init__(self, model_dir: Path, manifest: dict, spec: dict):
        if "torch" in sys.modules:
            raise Unavailable("torch is already imported in this process; the C++ runtime must run without it")
        try:
            import slipway_runtime
        except Exception as exc:
            raise Unavailable(f"slipway_runtime does not import: {type(exc).__name__}: {exc}") from exc
        self.detector = slipway_runtime.Detector(str(model_dir), threads=spec["threads"])
        self.version = str(getattr(slipway_runtime, "__version__", ""))
        self._timing = self._find_timing()

    def _find_timing(self) -> Callable[[], Any] | None:
        for name in ("last_timings", "last_timing", "timings", "timing"):
            attr = getattr(self.detector, name, None)
            if attr is not None:
                return attr if callable(attr) else (lambda n=name: getattr(self.detector, n))
        return None

    def preprocess(self, image: np.ndarray) -> Any:
        return image

    def infer(self, x: np.ndarray) -> Any:
        dets = self.detector.predict(x)
        self.native_stages = self._native_split()
        return dets

    def postprocess(self, out: Any, image: Any) -> list[dict]:
        return [dict(d) for d in out]

    def _native_split(self) -> dict[str, float] | None:
        if self._timing is None:
            return None
        try:
            timing = self._timing()
        except Exception:
            return None
        if not isinstance(timing, dict):
            timing = getattr(timing, "__dict__", {})
        split = {}
        for stage, keys in _NATIVE_KEYS.items():
            value = next((timing[k] for k in keys if k in timing), None)
            if value is None:
                return None
            split[stage] = float(value)
        return split


RUNNERS: dict[str, Callable[[Path, dict, dict], Runner]] = {
    "eager": EagerRunner, "torchscript": TorchScriptRunner, "onnx": OnnxRunner,
    "tensorflow": TensorFlowRunner, "cpp": CppRunner,
}


def _run_once(runner: Runner, png: bytes) -> tuple[list[dict], dict[str, float]]:
    t0 = time.perf_counter()
    image = runner.decode(png)
    t1 = time.perf_counter()
    x = runner.preprocess(image)
    t2 = time.perf_counter()
    out = runner.infer(x)
    t3 = time.perf_counter()
    dets = runner.postprocess(out, image)
    t4 = time.perf_counter()
    ms = {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "inference": (t3 - t2) * 1e3,
          "postprocess": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3}
    if runner.native_stages is not None:
        # One native call did preprocess + inference + postprocess: split it by the runtime's own
        # timing; postprocess keeps the rest of the call (the binding's conversion to Python).
        call = ms["preprocess"] + ms["inference"] + ms["postprocess"]
        ms["preprocess"] = runner.native_stages["preprocess"]
        ms["inference"] = runner.native_stages["inference"]
        ms["postprocess"] = max(0.0, call - ms["preprocess"] - ms["inference"])
    # From a decoded uint8 image to detections: what the C++ runtime's targets are stated on.
    ms["pipeline"] = ms["total"] - ms["decode"]
    return dets, ms


def _check(runner: Runner, pngs: list[bytes], reference: list[dict], tolerance: dict) -> dict[str, Any]:
    from model_export.compare import compare_detections

    iou, score = float(tolerance.get("iou", 0.99)), float(tolerance.get("score", 1e-4))
    results = []
    for png, entry in zip(pngs, reference, strict=True):
        dets, _ = _run_once(runner, png)
        results.append(compare_detections(entry["detections"], dets, iou=iou, score=score))
    return {
        "ok": all(r.ok for r in results),
        "min_iou": min(r.min_iou for r in results),
        "max_score_diff": max(r.max_score_diff for r in results),
        "tolerance": {"iou": iou, "score": score},
    }


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write("\n" + MARKER + json.dumps(data) + "\n")
    sys.stdout.flush()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def serve(stdin=sys.stdin) -> int:
    """Load the runtime and warm it up, then answer the driver's commands, one JSON line each.

    ``{"cmd": "run", "n": k}``: one untimed run (caches after another runtime ran), then ``k``
    timed runs, answered with their samples; ``{"cmd": "finish"}``: the reference check, then exit.
    The driver interleaves batches of all runtimes, so load from outside the benchmark falls on
    all of them alike instead of on whichever happened to run at that moment.
    """
    spec = json.loads(stdin.readline())
    runtime = spec["runtime"]
    model_dir = Path(spec["model_dir"])
    try:
        manifest = json.loads((model_dir / "model.json").read_text())
        reference = json.loads((model_dir / "golden" / "reference.json").read_text())["images"]
        pngs = [(model_dir / "golden" / e["file"]).read_bytes() for e in reference]
        started = time.perf_counter()
        runner = RUNNERS[runtime](model_dir, manifest, spec)
        load_s = time.perf_counter() - started
        for i in range(spec["warmup"]):
            _run_once(runner, pngs[i % len(pngs)])
    except Unavailable as exc:
        _emit({"runtime": runtime, "available": False, "reason": str(exc)})
        return 0
    except Exception as exc:
        _emit({"runtime": runtime, "available": False, "error": True,
               "reason": f"failed to load or warm up: {_first_line(exc)}"})
        return 0
    _emit({"runtime": runtime, "available": True, "version": runner.version, "load_s": round(load_s, 3),
           "images": len(pngs)})
    position = 0
    for line in stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "run":
                _run_once(runner, pngs[(position - 1) % len(pngs)])
                samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "total", "pipeline")}
                for _ in range(int(cmd["n"])):
                    _, ms = _run_once(runner, pngs[position % len(pngs)])
                    position += 1
                    for key, value in ms.items():
                        samples[key].append(round(value, 4))
                _emit({"samples_ms": samples})
            elif cmd["cmd"] == "finish":
                split = "runtime" if runner.native_stages is not None else (
                    "none: preprocess, inference and postprocess are one call" if runtime == "cpp" else "python")
                _emit({"reference_check": _check(runner, pngs, reference, spec.get("tolerance") or {}),
                       "stages_split_by": split, "torch_imported": "torch" in sys.modules})
                return 0
        except Exception as exc:
            _emit({"error": True, "reason": f"failed while measuring: {_first_line(exc)}"})
            return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(serve())
