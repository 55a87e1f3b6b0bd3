"""Demo data for the detection example: "products on a shelf" made of real handwritten digits.

scikit-learn's bundled digits (8x8, values 0..16) are upscaled to 26-44 px and placed, 1 to 4
per canvas and without overlap, on 160 x 160 shelf images (a back wall, two shelf boards) in the
look of the camera that "captured" them (gain, tint, background, sensor noise). Each digit is one
product box of class "0".."9"; the box is the tight box of its ink. Images and a COCO JSON file
(``xywh`` boxes, categories with ids 1..10, and per-image ``camera`` / ``scene`` /
``captured_at``) go where the spec's ``data.source`` and ``data.annotations`` point.

- batch 1: ``BATCH1`` canvases from eight cameras over two weeks;
- batch 2: ``BATCH2`` canvases from two newly installed cameras a week later, plus what real
  labelling exports bring: a box outside the image, a zero-area box, a NaN box, an unknown
  category id, an annotation of an image id that does not exist, an image record whose file is
  missing, and a truncated PNG. Ingest quarantines those (boxes one by one, images whole).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

CANVAS = 160
BATCH1 = 400
BATCH2 = 80
CAMERAS_1 = [f"cam-{i:02d}" for i in range(1, 9)]
CAMERAS_2 = [f"cam-{i:02d}" for i in range(9, 11)]
START_1 = datetime(2026, 10, 1, tzinfo=timezone.utc)
START_2 = datetime(2026, 10, 22, tzinfo=timezone.utc)
CLASSES = [str(i) for i in range(10)]


def _camera_style(camera: str) -> dict:
    rng = np.random.default_rng(int(camera.split("-")[1]) * 7919)
    return {
        "gain": rng.uniform(0.75, 1.0),
        "tint": rng.uniform(0.7, 1.0, size=3),
        "wall": rng.uniform(0.05, 0.25, size=3),
        "board": rng.uniform(0.3, 0.5, size=3),
        "noise": rng.uniform(0.01, 0.03),
    }


def render_shelf(digits: list[np.ndarray], camera: str, rng: np.random.Generator) -> tuple[Image.Image, list[list[float]]]:
    """A shelf canvas with the given digits; returns the image and one xyxy box per placed digit."""
    style = _camera_style(camera)
    img = np.ones((CANVAS, CANVAS, 3), dtype=np.float32) * style["wall"][None, None, :]
    for y in (CANVAS // 2 - 3, CANVAS - 8):  # two shelf boards
        img[y : y + 5] = style["board"][None, None, :]
    ink_colour = style["gain"] * style["tint"]
    boxes: list[list[float]] = []
    taken: list[tuple[int, int, int, int]] = []
    for d in digits:
        s = int(rng.integers(26, 45))
        glyph = np.asarray(Image.fromarray((d / 16.0 * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                           dtype=np.float32) / 255.0
        for _ in range(30):
            x, y = (int(v) for v in rng.integers(0, CANVAS - s, size=2))
            if all(x + s <= a or a + c <= x or y + s <= b or b + c <= y for a, b, c, _ in taken):
                break
        else:
            continue
        taken.append((x, y, s, s))
        region = img[y : y + s, x : x + s]
        a = glyph[..., None]
        img[y : y + s, x : x + s] = region * (1 - a) + a * ink_colour[None, None, :]
        ys, xs = np.nonzero(glyph > 0.15)
        boxes.append([float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1)])
    img = img + rng.normal(0, style["noise"], size=img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), mode="RGB"), boxes


def _canvases(start_index: int, count: int, cameras: list[str], start: datetime, days: int, images_root: Path,
              digits, targets, rng, first_image_id: int, first_ann_id: int) -> tuple[list[dict], list[dict]]:
    records, anns = [], []
    ann_id = first_ann_id
    for k in range(count):
        camera = cameras[k % len(cameras)]
        scene = f"aisle-{(int(camera.split('-')[1]) - 1) // 2 + 1}"
        ts = start + timedelta(seconds=int(rng.integers(0, days * 86400)))
        n = int(rng.integers(1, 5))
        picks = rng.integers(0, len(digits), size=n)
        image, boxes = render_shelf([digits[i] for i in picks], camera, rng)
        rel = f"{camera}/{ts:%Y-%m-%d}/shelf-{start_index + k:04d}.png"
        (images_root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(images_root / rel, optimize=False)
        image_id = first_image_id + k
        records.append({"id": image_id, "file_name": rel, "width": CANVAS, "height": CANVAS, "camera": camera,
                        "scene": scene, "captured_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
        for i, (x1, y1, x2, y2) in zip(picks, boxes):
            anns.append({"id": ann_id, "image_id": image_id, "category_id": int(targets[i]) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            ann_id += 1
    return records, anns


def write_detection_demo(spec, batch: int) -> Path:
    """Write batch 1 or 2 under ``spec.source_path`` and (re)write the COCO file ``spec.data.annotations``."""
    from sklearn.datasets import load_digits

    if batch not in (1, 2):
        raise ValueError(f"demo batch must be 1 or 2, got {batch}")
    if not spec.data.annotations:
        raise ValueError("the detection demo needs data.annotations (the COCO JSON file to write)")
    images_root = spec.source_path
    ann_path = spec.resolve_path(spec.data.annotations)
    images_root.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(100 + batch)
    categories = [{"id": i + 1, "name": c, "supercategory": "product"} for i, c in enumerate(CLASSES)]
    if batch == 1:
        records, anns = _canvases(0, BATCH1, CAMERAS_1, START_1, 14, images_root, digits.images, digits.target, rng, 1, 1)
    else:
        coco = json.loads(ann_path.read_text()) if ann_path.exists() else {"images": [], "annotations": []}
        records, anns = list(coco["images"]), list(coco["annotations"])
        next_img = max((r["id"] for r in records), default=0) + 1
        next_ann = max((a["id"] for a in anns), default=0) + 1
        new_r, new_a = _canvases(BATCH1, BATCH2, CAMERAS_2, START_2, 7, images_root, digits.images, digits.target,
                                 rng, next_img, next_ann)
        records += new_r
        anns += new_a
        anns, records = _bad_annotations(images_root, records, anns, new_r)
    coco = {"info": {"description": "conveyor detection demo: digits as products on shelves"},
            "images": records, "annotations": anns, "categories": categories}
    ann_path.write_text(json.dumps(coco, indent=1))  # NaN is written as the JSON extension NaN on purpose
    return ann_path


def _bad_annotations(images_root: Path, records: list[dict], anns: list[dict], new: list[dict]):
    """What labelling exports bring besides good boxes."""
    next_ann = max(a["id"] for a in anns) + 1
    target = new[0]["id"]
    bad = [
        [CANVAS - 20.0, 10.0, 40.0, 30.0],  # reaches 20 px past the right edge
        [30.0, 30.0, 0.0, 12.0],  # zero width
        [float("nan"), 5.0, 10.0, 10.0],  # NaN
    ]
    for k, bbox in enumerate(bad):
        anns.append({"id": next_ann + k, "image_id": target, "category_id": 3, "bbox": bbox, "area": 0.0, "iscrowd": 0})
    anns.append({"id": next_ann + 3, "image_id": target, "category_id": 99, "bbox": [5.0, 5.0, 10.0, 10.0],
                 "area": 100.0, "iscrowd": 0})  # unknown category
    anns.append({"id": next_ann + 4, "image_id": 999_999, "category_id": 2, "bbox": [5.0, 5.0, 10.0, 10.0],
                 "area": 100.0, "iscrowd": 0})  # no such image
    last = max(r["id"] for r in records)
    cam = new[-1]["camera"]
    records.append({"id": last + 1, "file_name": f"{cam}/uploads/missing.png", "width": CANVAS, "height": CANVAS,
                    "camera": cam, "scene": new[-1]["scene"], "captured_at": new[-1]["captured_at"]})
    good = (images_root / new[1]["file_name"]).read_bytes()
    (images_root / cam / "uploads").mkdir(parents=True, exist_ok=True)
    (images_root / cam / "uploads" / "truncated.png").write_bytes(good[: len(good) // 2])
    records.append({"id": last + 2, "file_name": f"{cam}/uploads/truncated.png", "width": CANVAS, "height": CANVAS,
                    "camera": cam, "scene": new[-1]["scene"], "captured_at": new[-1]["captured_at"]})
    anns.append({"id": next_ann + 5, "image_id": last + 2, "category_id": 4, "bbox": [10.0, 10.0, 20.0, 20.0],
                 "area": 400.0, "iscrowd": 0})  # its image will be quarantined: so is this box
    return anns, records
