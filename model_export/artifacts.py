"""Files of an export folder: golden inputs, checksums, the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from model_export.golden import GoldenImage

MANIFEST = "model.json"
GOLDEN_DIR = "golden"
REFERENCE = "golden/reference.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(root: Path, relative: str) -> dict:
    """Size and sha256 of a file, or of a folder (then each file in it is listed too).

    A folder's sha256 hashes the sorted ``<sha256>  <path>`` lines of its files, so it changes
    when any file's content or name changes.
    """
    path = root / relative
    if path.is_file():
        return {"path": relative, "size": path.stat().st_size, "sha256": sha256_file(path)}
    files = []
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        files.append({"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)})
    listing = "".join(f"{f['sha256']}  {f['path']}\n" for f in files).encode()
    return {
        "path": relative, "size": sum(f["size"] for f in files),
        "sha256": hashlib.sha256(listing).hexdigest(), "files": files,
    }


def write_golden(out_dir: Path, golden: list[GoldenImage], detections: list[list[dict]]) -> None:
    """``golden/NNN.png`` (lossless, whatever the source format) and ``golden/reference.json``:
    per image its file, size, source, ground truth and the eager model's detections."""
    folder = out_dir / GOLDEN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (item, dets) in enumerate(zip(golden, detections, strict=True)):
        name = f"{i:03d}.png"
        Image.fromarray(item.image).save(folder / name)
        h, w = item.image.shape[:2]
        images.append({
            "file": name, "width": w, "height": h, "source": item.name,
            "ground_truth": item.ground_truth, "detections": dets,
        })
    write_json(out_dir / REFERENCE, {"images": images})


def read_golden(model_dir: Path) -> tuple[list, list[dict]]:
    """The golden images as uint8 arrays, and their reference.json entries."""
    import numpy as np

    ref = json.loads((model_dir / REFERENCE).read_text())
    images = [np.asarray(Image.open(model_dir / GOLDEN_DIR / e["file"]).convert("RGB")) for e in ref["images"]]
    return images, ref["images"]


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
