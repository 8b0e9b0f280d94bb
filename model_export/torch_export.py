"""PyTorch side of the export: load the model, TorchScript (script or trace) and ONNX."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_export.entry_points import load_entry_point, module_file
from model_export.errors import ExportError
from model_export.postprocess import postprocess
from model_export.preprocess import InputSpec, preprocess_batch, preprocess_torch

ONNX_OPSET = 17
# The torch.export-based exporter's own opset; asking it for an older one adds a conversion pass.
ONNX_OPSET_DYNAMO = 18
ONNX_OUTPUTS = ("boxes", "scores", "classes")
# Tracer warnings with this text mean a tensor value became a Python value: control flow or a
# size that depends on the data, frozen into the trace for the example input only.
DATA_DEPENDENT_MARKERS = ("might cause the trace to be incorrect", "Converting a tensor to a Python")


def _source_file(model: nn.Module) -> str:
    try:
        return inspect.getsourcefile(type(model)) or type(model).__module__
    except TypeError:
        return type(model).__module__


class PreparedTorch:
    output_format = "candidates"

    def __init__(self, cfg: Any, name: str, spec: InputSpec, log):
        self.cfg, self.name, self.spec, self.log = cfg, name, spec, log
        self.weights = Path(cfg.weights)
        self.framework_version = torch.__version__.split("+")[0]
        factory = load_entry_point(cfg.entry_point, name)
        try:
            model = factory()
        except Exception as exc:
            raise ExportError(name, module_file(cfg.entry_point.partition(":")[0]),
                              f"entry point {cfg.entry_point!r} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ExportError(name, cfg.entry_point, f"entry point returned {type(model).__name__}, not a torch.nn.Module")
        self._load_weights(model)
        self.model = model.eval()
        self.parameters = sum(p.numel() for p in model.parameters())
        self._check_input_spec()

    def _load_weights(self, model: nn.Module) -> None:
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ExportError(self.name, self.weights,
                              f"cannot read the weights file (corrupt or not a torch.save file): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ExportError(self.name, self.weights, "weights file does not hold a state_dict (name -> tensor)")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ExportError(self.name, self.weights, f"weights do not fit the model: {exc}") from exc

    def _check_input_spec(self) -> None:
        spec = self.spec
        first_conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is not None and first_conv.in_channels != spec.channels:
            raise ExportError(self.name, self.weights,
                              f"input spec says {spec.channels} channels but the model's first convolution "
                              f"expects {first_conv.in_channels}")
        x = torch.zeros(2, spec.channels, spec.height, spec.width)
        try:
            with torch.inference_mode():
                out = self.model(x)
        except Exception as exc:
            raise ExportError(self.name, self.weights,
                              f"model fails on the input spec [N, {spec.channels}, {spec.height}, {spec.width}]: "
                              f"{type(exc).__name__}: {exc}") from exc
        self._check_outputs(out)

    def _check_outputs(self, out: Any) -> None:
        problem = None
        if not isinstance(out, tuple) or len(out) != 3 or not all(isinstance(t, torch.Tensor) for t in out):
            problem = f"forward must return (boxes, scores, classes), got {type(out).__name__}"
        else:
            boxes, scores, classes = out
            n, k = scores.shape[:2] if scores.dim() == 2 else (-1, -1)
            if tuple(boxes.shape) != (n, k, 4) or tuple(classes.shape) != (n, k) or n != 2:
                problem = (f"output shapes {tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(classes.shape)} "
                           "are not [N,K,4], [N,K], [N,K]")
            elif boxes.dtype != torch.float32 or scores.dtype != torch.float32 or classes.dtype != torch.int64:
                problem = f"output dtypes {boxes.dtype}, {scores.dtype}, {classes.dtype} are not float32, float32, int64"
            elif k and (classes.min() < 0 or classes.max() >= len(self.cfg.labels)):
                problem = f"class ids outside 0..{len(self.cfg.labels) - 1} (labels has {len(self.cfg.labels)})"
        if problem:
            raise ExportError(self.name, _source_file(self.model), f"output breaks the detection contract: {problem}")

    # -- reference ---------------------------------------------------------------------------

    def reference(self, images: list[np.ndarray]) -> list[list[dict]]:
        """Eager model + torch preprocessing + numpy postprocessing, one image at a time."""
        out = []
        with torch.inference_mode():
            for image in images:
                boxes, scores, classes = self.model(preprocess_torch(image, self.spec))
                out.append(postprocess(
                    boxes[0].numpy(), scores[0].numpy(), classes[0].numpy(),
                    input_size=(self.spec.height, self.spec.width), image_size=image.shape[:2],
                    output=self.cfg.output, labels=self.cfg.labels,
                ))
        return out

    # -- exporters ---------------------------------------------------------------------------

    def export(self, kind: str, out_dir: Path, golden_images: list[np.ndarray]) -> dict:
        if kind == "torchscript":
            return self._torchscript(out_dir / "model.torchscript.pt", golden_images)
        if kind == "onnx":
            return self._onnx(out_dir / "model.onnx", golden_images)
        raise ExportError(self.name, None, f"unknown exporter {kind!r} for pytorch")

    def _torchscript(self, path: Path, golden_images: list[np.ndarray]) -> dict:
        method = getattr(self.cfg, "torchscript_method", "script")
        x = torch.from_numpy(preprocess_batch(golden_images, self.spec))
        if method == "script":
            module = self._script()
        elif method == "trace":
            module = self._trace(x)
        else:
            raise ExportError(self.name, path.name, f"torchscript_method must be 'script' or 'trace', got {method!r}")
        # Frozen only: freezing already folds BatchNorm into the convolutions. optimize_for_inference
        # would turn weights into MKLDNN constants, which torch 2.13 saves but cannot load back
        # ("required keyword attribute 'value' is undefined"); a runtime may apply it after loading.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            frozen = torch.jit.freeze(module.eval())
        frozen.save(str(path))
        return {"method": method, "frozen": True, "optimized_for_inference": False, "file": path.name}

    def _script(self) -> torch.jit.ScriptModule:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                return torch.jit.script(self.model)
            except Exception as exc:
                first = "\n".join(str(exc).strip().splitlines()[:12])
                raise ExportError(self.name, _source_file(self.model),
                                  f"the model cannot be compiled by torch.jit.script: {type(exc).__name__}: {first}"
                                  ) from exc

    def _trace(self, x: torch.Tensor) -> torch.jit.ScriptModule:
        """Trace on the first golden image; refuse when the trace cannot stand for the model.

        Two independent signs: tracer warnings that a tensor value became a Python value
        (data-dependent control flow or sizes), and a trace whose outputs differ from the eager
        model on the other golden images, which have different content.
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                traced = torch.jit.trace(self.model, x[:1], check_trace=False)
            except Exception as exc:
                raise ExportError(self.name, _source_file(self.model),
                                  f"torch.jit.trace failed: {type(exc).__name__}: {exc}") from exc
        data_dependent = _data_dependent(caught)
        mismatched = []
        with torch.inference_mode():
            for i in range(x.shape[0]):
                want, got = self.model(x[i : i + 1]), traced(x[i : i + 1])
                if any(a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=1e-4)
                       for a, b in zip(want, got, strict=True)):
                    mismatched.append(i)
        if data_dependent or mismatched:
            reasons = []
            if data_dependent:
                reasons.append("the tracer reports data-dependent Python values: " + "; ".join(data_dependent))
            if mismatched:
                reasons.append(f"the trace differs from the eager model on golden images {mismatched}")
            raise ExportError(self.name, _source_file(self.model),
                              "torchscript_method = 'trace' is refused: forward has data-dependent control flow "
                              f"({' and '.join(reasons)}); use torchscript_method = 'script'")
        return traced

    def _onnx(self, path: Path, golden_images: list[np.ndarray]) -> dict:
        """ONNX with a dynamic batch dimension.

        The torch.export-based exporter (``dynamo=True``) where its ``onnxscript`` dependency is
        installed: it captures the graph symbolically, so the Python-side checks of GroupNorm and
        friends never become tracer warnings, and data-dependent control flow is refused by
        torch.export itself. Without onnxscript, the TorchScript-based exporter, which refuses
        tracer warnings except the few known to be harmless (see ``harmless_tracer_warning``).
        Either way the fresh-process verification then compares the file with the eager model.
        """
        x = torch.from_numpy(preprocess_batch(golden_images[:2], self.spec))
        info = self._onnx_dynamo(path, x) if onnx_exporter() == "dynamo" else self._onnx_torchscript(path, x)
        try:
            import onnx

            onnx.checker.check_model(str(path))
            opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                          if o.domain in ("", "ai.onnx")), info["opset"])
        except ImportError:
            opset = info["opset"]
        except Exception as exc:
            raise ExportError(self.name, path.name, f"the ONNX checker rejects the file: {exc}") from exc
        return {**info, "opset": opset, "dynamic_axes": {"batch": 0}, "input": "images",
                "outputs": list(ONNX_OUTPUTS), "file": path.name}

    def _onnx_dynamo(self, path: Path, x: torch.Tensor) -> dict:
        batch = torch.export.Dim("batch", min=1, max=4096)
        noise = io.StringIO()
        # The exporter prints its progress and logs optional torchvision ops it skips; what matters
        # comes back as the exception or the verification.
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(record=True), contextlib.redirect_stdout(noise):
                warnings.simplefilter("always")
                torch.onnx.export(
                    self.model, (x,), str(path), dynamo=True, opset_version=ONNX_OPSET_DYNAMO,
                    input_names=["images"], output_names=list(ONNX_OUTPUTS), dynamic_shapes=({0: batch},),
                    external_data=False, verbose=False,
                )
        except Exception as exc:
            raise ExportError(self.name, _source_file(self.model),
                              "ONNX export (torch.export-based) failed: " + _export_failure(exc)) from exc
        finally:
            quiet.setLevel(level)
        return {"opset": ONNX_OPSET_DYNAMO, "exporter": "torch.onnx (torch.export-based, dynamo=True)"}

    def _onnx_torchscript(self, path: Path, x: torch.Tensor) -> dict:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                torch.onnx.export(
                    self.model, (x,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                    input_names=["images"], output_names=list(ONNX_OUTPUTS),
                    dynamic_axes={n: {0: "batch"} for n in ["images", *ONNX_OUTPUTS]},
                )
            except Exception as exc:
                raise ExportError(self.name, path.name, f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        data_dependent = _data_dependent(caught)
        if data_dependent:
            raise ExportError(self.name, _source_file(self.model),
                              "ONNX export traces the model and the tracer reports data-dependent Python values: "
                              + "; ".join(data_dependent))
        return {"opset": ONNX_OPSET, "exporter": "torch.onnx (TorchScript-based, dynamo=False)"}


def onnx_exporter() -> str:
    """'dynamo' where the torch.export-based exporter can run (it needs onnxscript), else 'torchscript'."""
    return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "torchscript"


def _export_failure(exc: BaseException) -> str:
    """The exporter's own message is pages long: its first line and that of the root cause."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first}"
    if root is not exc:
        cause = next((line for line in str(root).strip().splitlines() if line.strip()), "")
        text += f"; caused by {type(root).__name__}: {cause}"
    if "DataDependent" in type(root).__name__:
        text += " (forward has data-dependent control flow: a Python branch or size on a tensor's value)"
    return text


@functools.cache
def _harmless_ranges() -> tuple[tuple[str, int, int], ...]:
    """(file, first line, last line) of the Python-side checks whose tracer warnings are harmless.

    ``torch.nn.functional._verify_batch_size`` (batch_norm in training, group_norm) and
    ``_verify_spatial_size`` (instance_norm) compare the input's size with 1 to raise a clear
    error for a single value per channel; the comparison never shapes the computed graph, but
    the tracer warns that it became a Python boolean. Matched by source location, so the same
    message from anywhere else (the model's own code included) still refuses the export.
    """
    ranges = []
    for fn in (F._verify_batch_size, F._verify_spatial_size):
        try:
            lines, first = inspect.getsourcelines(fn)
            ranges.append((str(Path(inspect.getsourcefile(fn) or "").resolve()), first, first + len(lines) - 1))
        except (OSError, TypeError):
            continue  # no source to match against: nothing is treated as harmless
    return tuple(ranges)


def harmless_tracer_warning(w: warnings.WarningMessage) -> bool:
    if not issubclass(w.category, torch.jit.TracerWarning) or "to a Python boolean" not in str(w.message):
        return False
    where = str(Path(w.filename).resolve())
    return any(where == file and first <= w.lineno <= last for file, first, last in _harmless_ranges())


def _data_dependent(caught: list[warnings.WarningMessage]) -> list[str]:
    return sorted({
        f"{str(w.message).splitlines()[0]} ({Path(w.filename).name}:{w.lineno})" for w in caught
        if issubclass(w.category, torch.jit.TracerWarning) and any(m in str(w.message) for m in DATA_DEPENDENT_MARKERS)
        and not harmless_tracer_warning(w)
    })


def prepare(cfg: Any, name: str, spec: InputSpec, log) -> PreparedTorch:
    return PreparedTorch(cfg, name, spec, log)
