"""Check an installed slipway_runtime wheel against an export's golden outputs.

Runs where the wheel was installed: cibuildwheel's test venv (test-command) and the venv
`slipway wheels` makes. The export folder (model.json, model.torchscript.pt, golden/) is named
by --model or the SLIPWAY_MODEL_DIR environment variable; a relative path is taken relative to
--project. Needs numpy and Pillow, and never imports model_export (not installed there): the
matcher below follows model_export.compare.compare_detections.

Exit status 0 when every golden image matches; the last line of output is a JSON summary,
and on failure a line starting with FAILURE_MARK, which `slipway wheels` looks for to tell a
failed check from a failed build.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

FAILURE_MARK = "SLIPWAY-WHEEL-CHECK-FAILED"
PAIR_IOU = 0.5


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


def run(args: argparse.Namespace) -> dict:
    folder = model_dir(args)
    summary: dict = {"kind": args.kind, "model": str(folder), "python": sys.version.split()[0]}
    if args.kind == "self-contained" and importlib.util.find_spec("torch") is not None:
        raise SystemExit("check_wheel: torch is installed here; the self-contained wheel must be checked without it")

    import numpy as np
    from PIL import Image

    import slipway_runtime

    if args.kind != slipway_runtime.KIND:
        raise SystemExit(f"check_wheel: installed slipway_runtime is the {slipway_runtime.KIND} wheel, not {args.kind}")
    summary["version"] = slipway_runtime.__version__
    summary["torch_version"] = slipway_runtime.TORCH_VERSION
    started = time.monotonic()
    detector = slipway_runtime.Detector(folder, threads=args.threads)
    summary["load_s"] = round(time.monotonic() - started, 3)
    summary["fusion_groups"] = detector.fusion_groups

    reference = json.loads((folder / "golden" / "reference.json").read_text())
    results = []
    for entry in reference["images"]:
        pil = Image.open(folder / "golden" / entry["file"]).convert("RGB")
        image = np.asarray(pil)
        got = detector.predict(image)
        result = compare(entry["detections"], got, args.iou, args.score)
        # The numpy-free inputs go through the same C++ code: the very same detections.
        for kind, other in (("PIL image", detector.predict(pil)),
                            ("RGB bytes", detector.predict(pil.tobytes(), size=(pil.height, pil.width)))):
            if other != got:
                result["ok"] = False
                result["problems"].append({"input": kind, "problem": "detections differ from the numpy input's"})
        result["file"] = entry["file"]
        result["detections"] = len(got)
        results.append(result)
    summary["images"] = len(results)
    summary["ok"] = all(r["ok"] for r in results)
    summary["min_iou"] = min((r["min_iou"] for r in results), default=1.0)
    summary["max_score_diff"] = max((r["max_score_diff"] for r in results), default=0.0)
    summary["failures"] = [r for r in results if not r["ok"]]

    if args.kind == "self-contained":
        # The guard must turn a later "import torch" into a clear ImportError.
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            summary["torch_guard"] = "ok" if "slipway-runtime-torch" in str(exc) else f"unexpected message: {exc}"
        else:
            summary["torch_guard"] = "import torch was not refused"
        if summary["torch_guard"] != "ok":
            summary["ok"] = False
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("self-contained", "thin"), required=True)
    p.add_argument("--model", help="export folder (default: $SLIPWAY_MODEL_DIR)")
    p.add_argument("--project", help="folder a relative model path is relative to")
    p.add_argument("--iou", type=float, default=0.99)
    p.add_argument("--score", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    try:
        summary = run(args)
    except SystemExit as exc:
        summary = {"kind": args.kind, "ok": False, "error": str(exc)}
    except Exception as exc:  # the summary must still come out, whatever broke
        summary = {"kind": args.kind, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
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
