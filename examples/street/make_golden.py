"""Write the golden set: held-out scenes as JPEG files and their boxes as COCO JSON.

    python make_golden.py [--count 12] [--seed 0]

Writes golden/images/*.jpg and golden/annotations.json (the ``golden`` entry of release.toml).
Boxes are COCO's [x, y, width, height] in pixels; category names are the model's labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image
from streetnet.model import LABELS
from streetnet.scenes import golden

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="offset into the held-out seeds")
    parser.add_argument("--out", type=Path, default=HERE / "golden")
    args = parser.parse_args(argv)
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(LABELS)]}
    for i, (image, objects) in enumerate(golden(args.count, args.seed), start=1):
        name = f"street_{i:03d}.jpg"
        Image.fromarray(image).save(images_dir / name, quality=92)
        h, w = image.shape[:2]
        coco["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i, "category_id": LABELS.index(obj["label"]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    (args.out / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n")
    print(f"wrote {args.count} images and {len(coco['annotations'])} boxes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
