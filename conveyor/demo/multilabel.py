"""Demo data for multi-label tagging: camera images holding up to three real handwritten digits.

Each image is a 32x32 canvas of four 16x16 cells; each cell is empty or holds one of scikit-learn's
bundled ``load_digits`` (8x8, upscaled to 14x14 with a small random offset), rendered in the look
of the camera that "captured" it (gain, tint, background, sensor noise). The tags of an image are
the digits 0-4 it shows (:data:`CLASSES`); digits 5-9 appear as untagged distractors, and an image
without a tagged digit is a valid negative (empty ``labels``). The manifest (CSV) carries ``path``,
``labels`` (names joined by ``;``), camera, scene and capture time. Two batches, as in the
classification demo:

- batch 1: :data:`BATCH1` images from eight cameras over two weeks;
- batch 2: :data:`BATCH2` images from four new cameras a week later, plus rows ingest must
  quarantine: a tag that is not a class, a missing file, an empty file and a path leaving the root.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

CLASSES = ["0", "1", "2", "3", "4"]
DISTRACTORS = [5, 6, 7, 8, 9]
SIZE = 32
CELL = 16
DIGIT = 14
BATCH1 = 1200
BATCH2 = 400
CAMERAS_1 = [f"cam-{i:02d}" for i in range(1, 9)]
CAMERAS_2 = [f"cam-{i:02d}" for i in range(9, 13)]
START_1 = datetime(2026, 10, 1, tzinfo=timezone.utc)
START_2 = datetime(2026, 10, 22, tzinfo=timezone.utc)
# Digits per image: 0, 1, 2 or 3, with these probabilities; a digit is a distractor with DISTRACTOR_P.
COUNT_P = (0.1, 0.3, 0.35, 0.25)
DISTRACTOR_P = 0.15
MANIFEST_SCHEMA = {"path": pl.Utf8, "labels": pl.Utf8, "camera": pl.Utf8, "scene": pl.Utf8, "captured_at": pl.Utf8}


def camera_style(camera: str) -> dict:
    """The fixed look of one camera: gain, tint, background and noise level."""
    rng = np.random.default_rng(int(camera.split("-")[1]) * 7919)
    return {
        "gain": rng.uniform(0.75, 1.0),
        "tint": rng.uniform(0.7, 1.0, size=3),
        "background": rng.uniform(0.0, 0.15, size=3),
        "noise": rng.uniform(0.01, 0.04),
    }


def render_canvas(digits: list[np.ndarray], cells: list[int], camera: str, rng: np.random.Generator) -> Image.Image:
    """8x8 digits (values 0..16) placed in ``cells`` (0..3, row-major 2x2) of a 32x32 RGB image."""
    style = camera_style(camera)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    for digit, cell in zip(digits, cells):
        base = Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((DIGIT, DIGIT), Image.BILINEAR)
        dx, dy = (int(v) for v in rng.integers(0, CELL - DIGIT + 1, size=2))
        y0, x0 = (cell // 2) * CELL + dy, (cell % 2) * CELL + dx
        canvas[y0 : y0 + DIGIT, x0 : x0 + DIGIT] = np.maximum(canvas[y0 : y0 + DIGIT, x0 : x0 + DIGIT],
                                                              np.asarray(base, dtype=np.float32) / 255.0)
    ink = canvas[..., None] * style["gain"] * style["tint"][None, None, :]
    img = style["background"][None, None, :] + ink * (1 - style["background"][None, None, :])
    img = img + rng.normal(0, style["noise"], size=img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), mode="RGB")


def _pools(targets: np.ndarray, half: int) -> dict[int, np.ndarray]:
    """Digit indices per class, from the first (``half`` = 0) or second (1) half of the data set, so the
    two batches draw their digits from disjoint samples."""
    n = len(targets)
    lo, hi = (0, n // 2) if half == 0 else (n // 2, n)
    return {d: np.flatnonzero(targets[lo:hi] == d) + lo for d in range(10)}


def _rows(n: int, cameras: list[str], start: datetime, days: int, root: Path, rng: np.random.Generator,
          images: np.ndarray, pools: dict[int, np.ndarray], prefix: str) -> list[dict]:
    tagged = [int(c) for c in CLASSES]
    rows = []
    for k in range(n):
        camera = cameras[k % len(cameras)]
        scene = f"aisle-{(int(camera.split('-')[1]) - 1) // 2 + 1}"
        ts = start + timedelta(seconds=int(rng.integers(0, days * 86400)))
        count = int(rng.choice(len(COUNT_P), p=COUNT_P))
        cells = sorted(int(c) for c in rng.choice(4, size=count, replace=False))
        shown = [int(rng.choice(DISTRACTORS)) if rng.random() < DISTRACTOR_P else int(rng.choice(tagged))
                 for _ in cells]
        picks = [images[int(rng.choice(pools[d]))] for d in shown]
        rel = f"images/{camera}/{ts:%Y-%m-%d}/{prefix}-{k:04d}.png"
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        render_canvas(picks, cells, camera, rng).save(dest, optimize=False)
        labels = [c for c in CLASSES if int(c) in shown]
        rows.append({"path": rel, "labels": ";".join(labels), "camera": camera, "scene": scene,
                     "captured_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return rows


def _bad_rows(root: Path, rng: np.random.Generator, images: np.ndarray, pools: dict[int, np.ndarray]) -> list[dict]:
    """Rows that ingest quarantines: an unknown tag, a missing file, an empty file, a path outside the root."""
    up = root / "images" / "uploads"
    up.mkdir(parents=True, exist_ok=True)
    ts = (START_2 + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def row(name: str, labels: str) -> dict:
        return {"path": f"images/uploads/{name}", "labels": labels, "camera": "cam-09", "scene": "aisle-5",
                "captured_at": ts}

    render_canvas([images[int(pools[7][0])]], [0], "cam-09", rng).save(up / "unknown-tag.png")
    (up / "empty.png").write_bytes(b"")
    return [row("unknown-tag.png", "1;7"), row("missing.png", "2"), row("empty.png", "3"),
            {"path": "../outside.png", "labels": "4", "camera": "cam-09", "scene": "aisle-5", "captured_at": ts}]


def write_multilabel_batch(root: str | Path, batch: int) -> Path:
    """Write batch 1 or 2 under ``root`` and append it to ``root/manifest.csv``. Returns the manifest."""
    from sklearn.datasets import load_digits

    if batch not in (1, 2):
        raise ValueError(f"demo batch must be 1 or 2, got {batch}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(100 + batch)
    manifest = root / "manifest.csv"
    if batch == 1:
        previous: list[dict] = []
        rows = _rows(BATCH1, CAMERAS_1, START_1, 14, root, rng, digits.images, _pools(digits.target, 0), "tags")
    else:
        previous = pl.read_csv(manifest, infer_schema=False).to_dicts() if manifest.exists() else []
        pools = _pools(digits.target, 1)
        rows = _rows(BATCH2, CAMERAS_2, START_2, 7, root, rng, digits.images, pools, "tags-b2")
        rows += _bad_rows(root, rng, digits.images, pools)
    pl.DataFrame(previous + rows, schema=MANIFEST_SCHEMA).write_csv(manifest)
    return manifest


def write_multilabel_demo(spec, batch: int) -> Path:
    """The multilabel example: tagged digit canvases under the folder of the spec's manifest."""
    return write_multilabel_batch(spec.source_path.parent, batch)
