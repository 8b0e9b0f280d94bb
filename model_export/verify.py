"""Check exported files against the eager reference, in a process that never saw the eager model.

    python -m model_export.verify MODEL_DIR --format torchscript --format onnx

Reads model.json and golden/reference.json, runs each format on the golden images with the
deployed preprocessing/postprocessing, and prints one JSON line:
``{"ok": bool, "runs": [{"format", "ok", "min_iou", "max_score_diff", "images", "table"}]}``.
Exit status 0 when the run finished (whether or not it matched), 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model_export import artifacts
from model_export.compare import compare_detections
from model_export.postprocess import postprocess_batch
from model_export.preprocess import InputSpec, preprocess_batch

Runner = Callable[[list[np.ndarray]], list[list[dict]]]


def _candidates_runner(manifest: dict, run_batch: Callable[[np.ndarray], tuple]) -> Runner:
    spec = InputSpec.from_any(manifest["input"])

    def run(images: list[np.ndarray]) -> list[list[dict]]:
        # All golden images in one batch: this also proves the dynamic batch dimension.
        boxes, scores, classes = run_batch(preprocess_batch(images, spec))
        return postprocess_batch(
            np.asarray(boxes), np.asarray(scores), np.asarray(classes), input_size=(spec.height, spec.width),
            image_sizes=[im.shape[:2] for im in images], output=manifest["output"], labels=manifest["labels"],
        )

    return run


def torchscript_runner(model_dir: Path, manifest: dict, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    module = torch.jit.load(str(model_dir / manifest["files"]["torchscript"]["path"]), map_location="cpu")

    def run_batch(x: np.ndarray) -> tuple:
        with torch.inference_mode():
            return tuple(t.numpy() for t in module(torch.from_numpy(x)))

    return _candidates_runner(manifest, run_batch)


def onnx_runner(model_dir: Path, manifest: dict, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads keep burning CPU after each call and slow down whatever runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_dir / manifest["files"]["onnx"]["path"]), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run_batch(x: np.ndarray) -> tuple:
        return tuple(session.run(None, {input_name: x}))

    return _candidates_runner(manifest, run_batch)


def _tf_detections(boxes, scores, classes, num, labels) -> list[dict]:
    out = []
    for j in range(int(num)):
        c = int(classes[j])
        out.append({"box": [float(v) for v in boxes[j]], "score": float(scores[j]), "class_id": c,
                    "label": labels[c] if 0 <= c < len(labels) else str(c)})
    return out


def saved_model_runner(model_dir: Path, manifest: dict, threads: int) -> Runner:
    from model_export.tf_export import load_saved_model_signature

    signature = load_saved_model_signature(model_dir / manifest["files"]["saved_model"]["path"], threads)

    def run(images: list[np.ndarray]) -> list[list[dict]]:
        # One image per call: golden images have different sizes, and a uint8 batch needs one size.
        result = []
        for image in images:
            o = signature(image[None])
            result.append(_tf_detections(o["boxes"][0], o["scores"][0], o["classes"][0], o["num_detections"][0],
                                         manifest["labels"]))
        return result

    return run


def frozen_graph_runner(model_dir: Path, manifest: dict, threads: int) -> Runner:
    from model_export.tf_export import load_frozen_graph

    names = manifest["exporters"]["frozen_graph"]
    fn = load_frozen_graph(model_dir / manifest["files"]["frozen_graph"]["path"], names["inputs"], names["outputs"],
                           threads)

    def run(images: list[np.ndarray]) -> list[list[dict]]:
        result = []
        for image in images:
            o = fn(image[None])
            result.append(_tf_detections(o["boxes"][0], o["scores"][0], o["classes"][0], o["num_detections"][0],
                                         manifest["labels"]))
        return result

    return run


RUNNERS = {
    "torchscript": torchscript_runner, "onnx": onnx_runner,
    "saved_model": saved_model_runner, "frozen_graph": frozen_graph_runner,
}


def verify(model_dir: Path, formats: list[str], threads: int = 2, iou: float = 0.99, score: float = 1e-4) -> dict:
    manifest = json.loads((model_dir / artifacts.MANIFEST).read_text())
    images, entries = artifacts.read_golden(model_dir)
    reference = [e["detections"] for e in entries]
    runs = []
    for fmt in formats:
        t0 = time.perf_counter()
        try:
            got = RUNNERS[fmt](model_dir, manifest, threads)(images)
        except Exception as exc:
            runs.append({"format": fmt, "ok": False, "min_iou": None, "max_score_diff": None,
                         "images": len(images), "error": f"{type(exc).__name__}: {exc}"})
            continue
        seconds = time.perf_counter() - t0
        results = [compare_detections(r, g, iou=iou, score=score) for r, g in zip(reference, got, strict=True)]
        table = "\n".join(f"  image {entries[i]['file']}:\n{r.table()}" for i, r in enumerate(results) if not r.ok)
        runs.append({
            "format": fmt,
            "ok": all(r.ok for r in results),
            "min_iou": min(r.min_iou for r in results),
            "max_score_diff": max(r.max_score_diff for r in results),
            "images": len(images),
            "detections": sum(r.matched for r in results),
            "seconds": round(seconds, 3),
            "tolerance": {"iou": iou, "score": score},
            **({"table": table} if table else {}),
        })
    return {"ok": all(r["ok"] for r in runs), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--format", action="append", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        result = verify(args.model_dir, args.format, args.threads)
    except Exception as exc:
        print(f"verification could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
