"""Check an installed slipway_runtime wheel against an export's golden outputs.

The one wheel-check harness: it runs inside the environment the wheel was installed into, where
neither Slipway nor model_export exists, and every place that checks a runtime wheel runs it:

- cibuildwheel's test venv (test-command in pyproject.toml and thin/pyproject.toml);
- `slipway wheels`, in the venv it makes for each wheel it built;
- `slipway smoke`, in a fresh venv (self-contained wheels, model packages) or beside this
  machine's torch (thin wheels); it passes --answers and scores the answers against the
  reference and the ground truth itself (model_export's compare_detections and accuracy).

The export folder (model.json, golden/) is named by --model or the SLIPWAY_MODEL_DIR environment
variable; a relative path is taken relative to --project. The golden images are decoded with
Pillow, or read already decoded from --inputs (one <stem>.npy per golden file), so numpy is the
only package the check itself needs. --package NAME checks a model package: the detector is
NAME.load(), on the runtime installed beside it.

Checks: every golden image's detections against the reference (the matcher below follows
model_export.compare.compare_detections; tests/test_wheels.py holds the two to the same
answers); the same detections from a PIL image (when Pillow is installed) and from raw RGB bytes
as from the numpy array; the installed runtime is the --kind asked for; a self-contained runtime
runs without torch installed and refuses a later `import torch` with its own message.

Exit status 0 when every check passes; the last line of output is a JSON summary, and on failure
a line starting with FAILURE_MARK, which `slipway wheels` looks for to tell a failed check from a
failed build. --json-out writes the summary to a file; --answers writes what the runtime answered
(detections and milliseconds per image, the module's file, torch's presence), whatever the
verdict, once the images have run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

FAILURE_MARK = "SLIPWAY-WHEEL-CHECK-FAILED"
PAIR_IOU = 0.5
# What the self-contained runtime's refusal of `import torch` names (slipway_runtime/_guard.py).
GUARD_ADVICE = "slipway-runtime-torch"


def _iou(a, b) -> float:
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def compare(ref: list[dict], got: list[dict], iou: float, score: float) -> dict:
    """Greedy one-to-one match per class, best-scoring reference first (as compare_detections)."""
    min_iou, max_diff, problems = 1.0, 0.0, []
    for c in sorted({int(d["class_id"]) for d in ref} | {int(d["class_id"]) for d in got}):
        r = sorted((d for d in ref if int(d["class_id"]) == c), key=lambda d: -d["score"])
        g = [d for d in got if int(d["class_id"]) == c]
        used = [False] * len(g)
        for rd in r:
            best, best_iou = -1, -1.0
            for j, gd in enumerate(g):
                v = _iou(rd["box"], gd["box"])
                if not used[j] and v > best_iou:
                    best, best_iou = j, v
            if best < 0 or best_iou < PAIR_IOU:
                problems.append({"unmatched": "reference", **rd})
                continue
            used[best] = True
            diff = abs(float(rd["score"]) - float(g[best]["score"]))
            min_iou, max_diff = min(min_iou, best_iou), max(max_diff, diff)
            if best_iou < iou or diff > score:
                problems.append({"reference": rd, "got": g[best], "iou": best_iou, "score_diff": diff})
        problems.extend({"unmatched": "runtime", **g[j]} for j in range(len(g)) if not used[j])
    return {"ok": not problems, "min_iou": min_iou, "max_score_diff": max_diff, "problems": problems}


def as_dict(d) -> dict:
    """One detection as plain JSON values, from the runtime's dict (or an object with the same fields)."""
    def field(key, default=None):
        return d.get(key, default) if isinstance(d, dict) else getattr(d, key, default)

    return {"box": [float(v) for v in field("box")], "score": float(field("score")),
            "class_id": int(field("class_id")), "label": field("label")}


def model_dir(args: argparse.Namespace) -> Path:
    raw = args.model or os.environ.get("SLIPWAY_MODEL_DIR")
    if not raw:
        raise SystemExit("check_wheel: name the export to check with --model or SLIPWAY_MODEL_DIR")
    path = Path(raw)
    if not path.is_absolute():
        path = Path(args.project or ".") / path
    if not (path / "model.json").is_file() or not (path / "golden" / "reference.json").is_file():
        raise SystemExit(f"check_wheel: {path} is not an export folder (model.json and golden/reference.json)")
    return path.resolve()


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def load_images(folder: Path, entries: list[dict], inputs: Path | None) -> list[tuple[object, object]]:
    """(numpy RGB array, PIL image or None) per golden entry."""
    import numpy as np

    image_module = _pillow()
    if inputs is None and image_module is None:
        raise SystemExit("check_wheel: Pillow is not installed to decode the golden images; install it, or "
                         "pass --inputs with them decoded as <stem>.npy")
    images = []
    for entry in entries:
        pil = None
        if inputs is not None:
            npy = inputs / f"{Path(entry['file']).stem}.npy"
            if not npy.is_file():
                raise SystemExit(f"check_wheel: {npy} is missing (--inputs holds one <stem>.npy per golden image)")
            array = np.load(npy)
            if image_module is not None and array.ndim == 3 and array.shape[2] == 3:
                pil = image_module.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
        else:
            pil = image_module.open(folder / "golden" / entry["file"]).convert("RGB")
            array = np.asarray(pil)
        images.append((np.ascontiguousarray(array, dtype=np.uint8), pil))
    return images


def run(args: argparse.Namespace, summary: dict, answers: dict) -> None:
    """Fills ``summary`` (what --json-out writes) and ``answers`` (what --answers writes)."""
    folder = model_dir(args)
    summary.update({"model": str(folder), "python": sys.version.split()[0]})
    if args.package:
        summary["package"] = args.package
    # Asked before the runtime is imported: the self-contained runtime refuses even a look for torch.
    torch_installed = importlib.util.find_spec("torch") is not None
    if args.kind == "self-contained" and torch_installed:
        raise SystemExit("check_wheel: torch is installed here; the self-contained wheel must be checked without it")

    import slipway_runtime

    kind = getattr(slipway_runtime, "KIND", None)
    if args.kind != kind:
        raise SystemExit(f"check_wheel: installed slipway_runtime is the {kind} wheel, not {args.kind}")
    summary["version"] = getattr(slipway_runtime, "__version__", None)
    summary["torch_version"] = getattr(slipway_runtime, "TORCH_VERSION", None)
    reference = json.loads((folder / "golden" / "reference.json").read_text())["images"]
    images = load_images(folder, reference, args.inputs)

    started = time.monotonic()
    if args.package:
        # A model package: its own load() finds its own model files.
        detector = importlib.import_module(args.package).load(threads=args.threads)
    else:
        detector = slipway_runtime.Detector(folder, threads=args.threads)
    summary["load_s"] = round(time.monotonic() - started, 3)
    summary["fusion_groups"] = getattr(detector, "fusion_groups", None)

    answers["images"] = {}
    results = []
    for i, (entry, (array, pil)) in enumerate(zip(reference, images, strict=True)):
        if i == 0:
            detector.predict(array)  # warm-up: first-call allocations are not the runtime's speed
        t = time.perf_counter()
        got = [as_dict(d) for d in detector.predict(array)]
        ms = (time.perf_counter() - t) * 1000
        answers["images"][Path(entry["file"]).stem] = {"detections": got, "ms": ms}
        result = compare(entry["detections"], got, args.iou, args.score)
        # The numpy-free inputs go through the same C++ code: the very same detections.
        others = [("RGB bytes", (array.tobytes(),), {"size": tuple(array.shape[:2])})]
        if pil is not None:
            others.append(("PIL image", (pil,), {}))
        for name, call_args, call_kwargs in others:
            if [as_dict(d) for d in detector.predict(*call_args, **call_kwargs)] != got:
                result["ok"] = False
                result["problems"].append({"input": name, "problem": "detections differ from the numpy input's"})
        result["file"] = entry["file"]
        result["detections"] = len(got)
        results.append(result)
    answers.update({"module": slipway_runtime.__file__, "version": summary["version"],
                    "torch_imported": "torch" in sys.modules, "torch_installed": torch_installed,
                    "inputs": ["numpy array", "RGB bytes"] + (["PIL image"] if images and images[0][1] else [])})
    summary["images"] = len(results)
    summary["ok"] = bool(results) and all(r["ok"] for r in results)
    summary["min_iou"] = min((r["min_iou"] for r in results), default=1.0)
    summary["max_score_diff"] = max((r["max_score_diff"] for r in results), default=0.0)
    summary["failures"] = [r for r in results if not r["ok"]]

    if args.kind == "self-contained":
        # The guard must turn a later "import torch" into a clear ImportError.
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            summary["torch_guard"] = "ok" if GUARD_ADVICE in str(exc) else f"unexpected message: {exc}"
        else:
            summary["torch_guard"] = "import torch was not refused"
        if summary["torch_guard"] != "ok":
            summary["ok"] = False
            summary["error"] = f"torch guard: {summary['torch_guard']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("self-contained", "thin"), required=True,
                   help="the runtime wheel installed here (a model package runs on self-contained)")
    p.add_argument("--model", help="export folder (default: $SLIPWAY_MODEL_DIR)")
    p.add_argument("--project", help="folder a relative model path is relative to")
    p.add_argument("--package", help="import name of a model package: check NAME.load() on its own model files")
    p.add_argument("--inputs", type=Path, help="folder of the golden images decoded as <stem>.npy (no Pillow needed)")
    p.add_argument("--iou", type=float, default=0.99)
    p.add_argument("--score", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", type=Path, help="write the summary here too")
    p.add_argument("--answers", type=Path, help="write the detections and timings per image here")
    args = p.parse_args(argv)
    summary: dict = {"kind": args.kind, "ok": False}
    answers: dict = {}
    try:
        run(args, summary, answers)
    except SystemExit as exc:
        summary.update(ok=False, error=str(exc))
    except Exception as exc:  # the summary must still come out, whatever broke
        summary.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    if args.answers and "images" in answers and "module" in answers:
        args.answers.write_text(json.dumps(answers) + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    for failure in summary.get("failures", []):
        print(f"  {failure['file']}: {json.dumps(failure['problems'])[:2000]}", file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    if not summary["ok"]:
        print(f"{FAILURE_MARK}: {summary.get('error') or 'detections differ from the golden outputs'}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
