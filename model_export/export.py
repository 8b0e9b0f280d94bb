"""Export one model: exported files, golden inputs, verification in a fresh process, manifest.

``export_model`` is what the ``slipway export`` stage calls, once per model in release.toml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from model_export import artifacts
from model_export.compare import accuracy
from model_export.errors import ExportError, VerificationError
from model_export.golden import load_golden
from model_export.postprocess import OutputSpec
from model_export.preprocess import InputSpec

EXPORTERS = {"pytorch": ("torchscript", "onnx"), "tensorflow": ("saved_model", "frozen_graph")}
FILE_NAMES = {
    "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
    "saved_model": "saved_model", "frozen_graph": "frozen_graph.pb",
}
VERIFY_TIMEOUT_S = 600


class Prepared(Protocol):
    """A loaded model, ready to export (one implementation per framework)."""

    framework_version: str
    parameters: int
    output_format: str

    def reference(self, images: list) -> list[list[dict]]: ...

    def export(self, kind: str, out_dir: Path, golden_images: list) -> dict: ...


def export_model(model_cfg: Any, out_dir: Path, *, version: str, git_commit: str,
                 log: Callable[[str], None] = print) -> dict:
    """Fill ``out_dir`` (missing or empty) with the export of ``model_cfg``; return the manifest.

    Raises ExportError for any bad input or failed verification; ``out_dir`` is then removed if
    this call created it, or emptied again if the caller did.
    """
    name = str(getattr(model_cfg, "name", "?"))
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(name, out_dir, "output folder exists and is not empty")
    if not out_dir.parent.is_dir():
        raise ExportError(name, out_dir, "the parent of the output folder does not exist")
    created = not out_dir.exists()
    try:
        return _export(model_cfg, name, out_dir, version=version, git_commit=git_commit, log=log)
    except BaseException as exc:
        _clean(out_dir, created)
        if isinstance(exc, ExportError) or not isinstance(exc, Exception):
            raise
        raise ExportError(name, None, f"unexpected {type(exc).__name__}: {exc}") from exc


def _clean(out_dir: Path, created: bool) -> None:
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)
    elif out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def exporters_for(cfg: Any) -> tuple[str, ...]:
    """The configured exporters; all that the framework supports when the config leaves it open."""
    chosen = getattr(cfg, "exporters", None)
    return tuple(chosen) if chosen is not None else EXPORTERS.get(cfg.framework, ())


def _check_config(cfg: Any, name: str) -> tuple[InputSpec, OutputSpec]:
    framework = cfg.framework
    if framework not in EXPORTERS:
        raise ExportError(name, None, f"unknown framework {framework!r} (expected one of {sorted(EXPORTERS)})")
    wrong = [e for e in exporters_for(cfg) if e not in EXPORTERS[framework]]
    if wrong or not exporters_for(cfg):
        raise ExportError(name, None, f"exporters {list(exporters_for(cfg))} are not valid for {framework} "
                                      f"(choose from {list(EXPORTERS[framework])})")
    if not cfg.labels:
        raise ExportError(name, None, "labels are empty")
    try:
        spec = InputSpec.from_any(cfg.input)
        output = OutputSpec.from_any(cfg.output)
    except (TypeError, ValueError) as exc:
        raise ExportError(name, None, f"invalid input/output spec: {exc}") from exc
    if spec.dtype != "uint8" or spec.resize != "stretch":
        raise ExportError(name, None, f"input dtype {spec.dtype!r} / resize {spec.resize!r} unsupported "
                                      "(the contract is uint8 images, 'stretch' resize)")
    weights = Path(cfg.weights)
    if not weights.is_file():
        raise ExportError(name, weights, "weights file not found" if not weights.exists() else "weights is not a file")
    return spec, output


def _prepare(cfg: Any, name: str, spec: InputSpec, log) -> Prepared:
    # Imported here: each framework takes seconds to import and only one of them may be installed.
    package = {"pytorch": "torch", "tensorflow": "tensorflow"}[cfg.framework]
    try:
        if cfg.framework == "pytorch":
            from model_export import torch_export as exporter
        else:
            from model_export import tf_export as exporter
    except ImportError as exc:
        if exc.name != package:
            raise
        raise ExportError(name, None, f"{cfg.framework} export needs the '{package}' package, which is not "
                                      f"installed (pip install 'slipway[{cfg.framework}]')") from exc
    return exporter.prepare(cfg, name, spec, log)


def _export(cfg: Any, name: str, out_dir: Path, *, version: str, git_commit: str, log) -> dict:
    spec, output = _check_config(cfg, name)
    prepared = _prepare(cfg, name, spec, log)
    # Checked after the model has seen the spec, so that a spec contradicting the model is reported
    # as exactly that; these are the contract's own limits.
    if spec.channels != 3:
        raise ExportError(name, None, f"input.channels = {spec.channels}, but images are RGB (3 channels)")
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
        raise ExportError(name, None, f"input mean/std have {len(spec.mean)}/{len(spec.std)} values "
                                      f"for {spec.channels} channels")

    golden = load_golden(cfg, name)
    images = [g.image for g in golden.images]
    log(f"{name}: eager reference on {len(images)} golden images ({golden.source})")
    reference = prepared.reference(images)
    if not any(reference):
        raise ExportError(name, golden.source,
                          f"the model makes no detection at all on its {len(images)} golden images: a golden "
                          "set must show what the model detects (wrong images, labels or weights?)")
    eager_accuracy = accuracy([g.ground_truth for g in golden.images], reference, list(cfg.labels),
                              output.score_threshold)
    log(f"{name}: eager model on the golden set: mAP@0.5 {eager_accuracy['map50']:.3f}, "
        f"precision {_num(eager_accuracy['precision'])}, recall {_num(eager_accuracy['recall'])}")

    out_dir.mkdir(exist_ok=True)
    artifacts.write_golden(out_dir, golden.images, reference)
    exporters: dict[str, dict] = {}
    for kind in exporters_for(cfg):
        log(f"{name}: exporting {kind}")
        exporters[kind] = prepared.export(kind, out_dir, images)

    manifest = {
        "name": name,
        "version": version,
        "framework": cfg.framework,
        "framework_version": prepared.framework_version,
        "input": spec.to_json(),
        "labels": list(cfg.labels),
        "output": {"format": prepared.output_format, "score_threshold": output.score_threshold,
                   "nms_iou": output.nms_iou, "max_detections": output.max_detections},
        "parameters": prepared.parameters,
        "files": {},
        "exporters": exporters,
        "golden": {"dir": artifacts.GOLDEN_DIR, "reference": artifacts.REFERENCE, "count": len(images),
                   "source": golden.description, "eager_accuracy": eager_accuracy},
        "source": {"entry_point": cfg.entry_point, "weights": Path(cfg.weights).name,
                   "weights_sha256": artifacts.sha256_file(Path(cfg.weights))},
        "git_commit": git_commit,
        "verification": None,
    }
    manifest["files"] = _files(out_dir, exporters)
    artifacts.write_json(out_dir / artifacts.MANIFEST, manifest)

    log(f"{name}: verifying {', '.join(exporters)} in a fresh process")
    verification = run_verification(out_dir, list(exporters), name)
    manifest["verification"] = verification
    artifacts.write_json(out_dir / artifacts.MANIFEST, manifest)
    for run in verification["runs"]:
        log(f"{name}: {run['format']}: ok, min IoU {run['min_iou']:.5f}, max score diff {run['max_score_diff']:.2e}")
    return manifest


def _files(out_dir: Path, exporters: dict[str, dict]) -> dict[str, dict]:
    files = {kind: artifacts.file_entry(out_dir, FILE_NAMES[kind]) for kind in exporters}
    files["golden"] = artifacts.file_entry(out_dir, artifacts.GOLDEN_DIR)
    return files


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5g}"


def run_verification(model_dir: Path, formats: list[str], name: str, threads: int = 2) -> dict:
    """Run ``python -m model_export.verify`` in a fresh process; ExportError unless every format matches."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "model_export.verify", str(model_dir), "--threads", str(threads)]
    for f in formats:
        cmd += ["--format", f]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=VERIFY_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VerificationError(name, model_dir, f"verification did not finish within {VERIFY_TIMEOUT_S}s") from exc
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        result = None
    if result is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise VerificationError(name, model_dir, f"verification process failed (exit {proc.returncode}):\n{tail}")
    failed = [r for r in result["runs"] if not r["ok"]]
    if failed:
        details = "\n".join(
            f"{r['format']} ({FILE_NAMES.get(r['format'], r['format'])}): min IoU {_num(r['min_iou'])}, "
            f"max score diff {_num(r['max_score_diff'])}" + (f"\n{r['table']}" if r.get("table") else "")
            + (f"\n  error: {r['error']}" if r.get("error") else "")
            for r in failed
        )
        raise VerificationError(name, model_dir / FILE_NAMES.get(failed[0]["format"], ""),
                          f"verification failed: the export does not match the eager model on the golden images:\n{details}")
    return result
