"""A model's golden set: images with ground-truth boxes, from a COCO folder or a hook.

A model names its golden set in release.toml, either as a folder of images with COCO annotations
or as a ``module:callable`` hook that makes them. Both come out of ``load_golden`` in one form: a
list of ``GoldenImage`` (RGB uint8 pixels, ground-truth boxes in pixels with the model's label
and class id). The export writes them to ``golden/`` as PNG, with ``golden/reference.json``; every
later stage reads them from there.

``coco_problems`` checks a COCO folder without decoding a single image (names, labels, sizes from
the image headers); ``slipway plan`` reports what it finds as configuration problems. What needs
the project's code (a hook that fails or returns bad data) is reported by the export.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_export.entry_points import module_file
from model_export.errors import ExportError

MIN_GOLDEN_IMAGES = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class GoldenImage:
    name: str  # where it came from: the file name in the COCO folder, or "<hook>#<index>"
    image: np.ndarray  # uint8 [H, W, 3] RGB
    ground_truth: list[dict] = field(default_factory=list)  # {"box": [x1, y1, x2, y2], "class_id", "label"}


@dataclass(frozen=True)
class GoldenSet:
    images: list[GoldenImage]
    source: str  # what a message names: the annotations file, or the hook's module file
    description: dict[str, Any]  # recorded in model.json: kind and where


def _attr(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def golden_kind(spec: Any) -> str:
    """'coco' or 'hook' for a ``models[].golden`` value (a dict or an object with attributes)."""
    return "hook" if _attr(spec, "hook") else "coco"


# --------------------------------------------------------------------------------------------
# COCO folder


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def coco_problems(images: Path, annotations: Path, labels: Sequence[str], model: str) -> list[tuple[str, Any, str]]:
    """Every problem of a COCO golden set, as ``(key, value, message)`` with ``key`` one of
    ``images`` / ``annotations`` (the sub-key of ``models[].golden``). Empty when it is usable."""
    problems: list[tuple[str, Any, str]] = []
    ann_text = str(annotations)
    if not images.is_dir():
        problems.append(("images", str(images), "folder does not exist" if not images.exists() else "not a folder"))
    if not annotations.is_file():
        problems.append(("annotations", ann_text, "file does not exist" if not annotations.exists() else "not a file"))
    if problems:
        return problems
    present = {p.name: p for p in folder_images(images)}
    if not present:
        return [("images", str(images), f"no images ({', '.join(IMAGE_SUFFIXES)}) in the golden folder "
                                        f"of model '{model}'")]
    try:
        data = json.loads(annotations.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [("annotations", ann_text, f"not valid JSON: {exc}")]
    malformed = _coco_shape_problems(data)
    if malformed:
        return [("annotations", ann_text, f"malformed COCO: {m}") for m in malformed]
    categories = {c["id"]: c["name"] for c in data["categories"]}
    for cid, name in categories.items():
        if name not in labels:
            problems.append(("annotations", ann_text,
                             f"category {name!r} (id {cid}) is not a label of model '{model}' "
                             f"(labels: {', '.join(labels)})"))
    entries = {e["id"]: e for e in data["images"]}
    listed = {e["file_name"] for e in data["images"]}
    for e in data["images"]:
        if e["file_name"] not in present:
            problems.append(("annotations", ann_text,
                             f"image {e['file_name']!r} (id {e['id']}) is not in the golden folder {images}"))
            continue
        size = _image_size(present[e["file_name"]])
        if size is None:
            problems.append(("images", str(present[e["file_name"]]), "not a readable PNG or JPEG image"))
        elif size != (e["width"], e["height"]):
            problems.append(("annotations", ann_text,
                             f"image {e['file_name']!r} is {size[0]}x{size[1]} but the annotations say "
                             f"{e['width']}x{e['height']}"))
    unlisted = sorted(set(present) - listed)
    if unlisted:
        problems.append(("annotations", ann_text,
                         f"images in the golden folder have no entry in 'images' (list every golden image, "
                         f"with no annotations if it shows nothing): {', '.join(unlisted[:5])}"
                         + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")))
    for k, a in enumerate(data["annotations"]):
        if a["image_id"] not in entries:
            problems.append(("annotations", ann_text, f"annotations[{k}]: image_id {a['image_id']} is not in 'images'"))
        if a["category_id"] not in categories:
            problems.append(("annotations", ann_text,
                             f"annotations[{k}]: category_id {a['category_id']} is not in 'categories'"))
    if len(listed) < MIN_GOLDEN_IMAGES:
        problems.append(("images", str(images),
                         f"{len(listed)} golden image(s) for model '{model}'; at least {MIN_GOLDEN_IMAGES} needed"))
    return problems


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coco_shape_problems(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    out = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            out.append(f"'{key}' must be a list")
    if out:
        return out
    for k, e in enumerate(data["images"]):
        if not (isinstance(e, dict) and isinstance(e.get("id"), int) and isinstance(e.get("file_name"), str)
                and isinstance(e.get("width"), int) and isinstance(e.get("height"), int)):
            out.append(f"images[{k}] needs id, file_name, width, height (got {e!r:.120})")
    for k, c in enumerate(data["categories"]):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            out.append(f"categories[{k}] needs id and name (got {c!r:.120})")
    for k, a in enumerate(data["annotations"]):
        bbox = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(a, dict) and isinstance(a.get("image_id"), int) and isinstance(a.get("category_id"), int)
                and isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            out.append(f"annotations[{k}] needs image_id, category_id and bbox [x, y, w, h] (got {a!r:.120})")
        elif bbox[2] <= 0 or bbox[3] <= 0:
            out.append(f"annotations[{k}]: bbox {bbox} has no area")
    ids = [e["id"] for e in data["images"] if isinstance(e, dict)]
    if len(ids) != len(set(ids)):
        out.append("image ids are not unique")
    names = [e.get("file_name") for e in data["images"] if isinstance(e, dict)]
    if len(names) != len(set(names)):
        out.append("file names in 'images' are not unique")
    return out[:10]


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG"):
                return None
            return im.size
    except (OSError, UnidentifiedImageError):
        return None


def load_coco(images: Path, annotations: Path, labels: Sequence[str], model: str) -> GoldenSet:
    from PIL import Image

    images, annotations = Path(images), Path(annotations)
    problems = coco_problems(images, annotations, labels, model)
    if problems:
        _key, value, message = problems[0]
        raise ExportError(model, value, f"golden set: {message}")
    data = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        label = names[a["category_id"]]
        by_image.setdefault(a["image_id"], []).append(
            {"box": [x, y, x + w, y + h], "class_id": list(labels).index(label), "label": label}
        )
    out = []
    for e in sorted(data["images"], key=lambda e: e["file_name"]):
        with Image.open(images / e["file_name"]) as im:
            pixels = np.array(im.convert("RGB"), dtype=np.uint8)  # writable: torch takes it as is
        out.append(GoldenImage(e["file_name"], pixels, by_image.get(e["id"], [])))
    return GoldenSet(out, str(annotations), {"kind": "coco", "images": images.name, "annotations": annotations.name})


# --------------------------------------------------------------------------------------------
# Hook


def load_hook(hook: str, count: int, seed: int, labels: Sequence[str], model: str) -> GoldenSet:
    """Call ``module:callable(count, seed)``; check and convert what it returns."""
    module_name, sep, attr = hook.partition(":")
    try:
        where = module_file(module_name)
    except Exception:  # a parent package that fails to import: reported by the import below
        where = f"module {module_name}"
    if not sep or not module_name or not attr:
        raise ExportError(model, hook, "golden hook must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ExportError(model, where, f"golden hook {hook!r} does not import: {type(exc).__name__}: {exc}") from exc
    where = getattr(module, "__file__", None) or where
    func = getattr(module, attr, None)
    if not callable(func):
        raise ExportError(model, where, f"golden hook {hook!r}: no callable {attr!r} in the module")
    try:
        made = func(int(count), int(seed))
    except Exception as exc:
        raise ExportError(model, where, f"golden hook {hook!r} raised {type(exc).__name__}: {exc}") from exc

    def bad(message: str) -> ExportError:
        return ExportError(model, where, f"golden hook {hook!r} returned bad data: {message}")

    try:
        made = list(made)
    except TypeError as exc:
        raise bad(f"expected a list of (image, boxes), got {type(made).__name__}") from exc
    if len(made) < MIN_GOLDEN_IMAGES:
        raise bad(f"{len(made)} golden image(s); at least {MIN_GOLDEN_IMAGES} needed")
    out = []
    for i, item in enumerate(made):
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise bad(f"item {i} is not an (image, boxes) pair")
        image, boxes = item
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise bad(f"item {i}: the image must be a uint8 array [H, W, 3], got {desc}")
        truth = []
        for j, b in enumerate(boxes if isinstance(boxes, list | tuple) else [None]):
            box = b.get("box") if isinstance(b, dict) else None
            label = b.get("label") if isinstance(b, dict) else None
            if not (isinstance(box, list | tuple) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise bad(f"item {i}, box {j}: expected {{'box': [x1, y1, x2, y2], 'label': str}}, got {b!r:.120}")
            if label not in labels:
                raise bad(f"item {i}, box {j}: label {label!r} is not a label of model '{model}' "
                          f"(labels: {', '.join(labels)})")
            truth.append({"box": [float(v) for v in box], "class_id": list(labels).index(label), "label": label})
        out.append(GoldenImage(f"{hook}#{i}", np.array(image, copy=True), truth))
    return GoldenSet(out, str(where), {"kind": "hook", "hook": hook, "count": int(count), "seed": int(seed)})


def load_golden(cfg: Any, model: str) -> GoldenSet:
    """The golden set of a model config (``cfg.golden``, ``cfg.labels``)."""
    spec = getattr(cfg, "golden", None)
    labels = list(cfg.labels)
    if spec is None:
        raise ExportError(model, None, "no golden set: set models[].golden in release.toml "
                                       "(a COCO folder or a 'module:callable' hook)")
    if golden_kind(spec) == "hook":
        return load_hook(str(_attr(spec, "hook")), int(_attr(spec, "count") or 8), int(_attr(spec, "seed") or 0),
                         labels, model)
    return load_coco(Path(_attr(spec, "images")), Path(_attr(spec, "annotations")), labels, model)


def write_coco(folder: Path, samples: Sequence[tuple[np.ndarray, list[dict]]], labels: Sequence[str],
               *, suffix: str = ".png") -> Path:
    """Write ``(image, [{"box", "label"}])`` pairs as a COCO golden folder (``images/`` and
    ``annotations.json``); returns the annotations file. Handy to turn a hook's output into files."""
    from PIL import Image

    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, list] = {"images": [], "annotations": [],
                             "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels)]}
    for i, (image, boxes) in enumerate(samples):
        name = f"{i:03d}{suffix}"
        Image.fromarray(image).save(images_dir / name, **({"quality": 95} if suffix != ".png" else {}))
        data["images"].append({"id": i + 1, "file_name": name, "width": int(image.shape[1]),
                               "height": int(image.shape[0])})
        for b in boxes:
            x1, y1, x2, y2 = (float(v) for v in b["box"])
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": list(labels).index(b["label"]) + 1,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                        "iscrowd": 0})
    path = folder / "annotations.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
