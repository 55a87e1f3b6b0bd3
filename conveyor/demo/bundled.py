"""Demo data: real handwritten digits (scikit-learn's bundled ``load_digits``) as camera images.

Each 8x8 digit is upscaled to 32x32 and rendered as a colour image with the look of the camera
that "captured" it (gain, tint, background, sensor noise, a small offset), and written as PNG
with a manifest that carries camera, scene and capture time. Two batches:

- batch 1: the first 1100 digits from eight cameras over two weeks;
- batch 2: the remaining digits from four newly installed cameras a week later, plus what real
  uploads bring: a re-uploaded copy and a re-encoded JPEG of earlier images, a zero-byte file, a
  truncated PNG, a text file named .png, a row with an unknown label and a path leaving the
  data root. Ingest quarantines the bad ones and curation removes the copies.

With batch 2 the new cameras also send images nobody has labelled yet (``unlabeled/`` beside the
manifest, with a metadata sidecar); their true labels are kept apart in ``unlabeled-truth.csv``
(conveyor never reads it) so the demo can play the reviewer who works through the review queue.
"""

from __future__ import annotations

from conveyor.core.resources import resource_path

import io
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

BATCH1 = 1100
SIZE = 32
CAMERAS_1 = [f"cam-{i:02d}" for i in range(1, 9)]
CAMERAS_2 = [f"cam-{i:02d}" for i in range(9, 13)]
START_1 = datetime(2026, 10, 1, tzinfo=timezone.utc)
START_2 = datetime(2026, 10, 22, tzinfo=timezone.utc)


# The example `conveyor demo` runs without --example (and `make demo`).
DEFAULT_EXAMPLE = "classification"

# Bundled examples: name -> "module:function"; the function takes the example's resolved spec
# and a batch number (1 or 2) and writes that batch of demo data where the spec's data section
# points (``spec.source_path``, ``spec.data.annotations``).
EXAMPLES = {
    "classification": "conveyor.demo.bundled:write_classification_demo",
    "detection": "conveyor.demo.detection:write_detection_demo",
    "segmentation": "conveyor.demo.segmentation:write_segmentation_demo",
    "multilabel": "conveyor.demo.multilabel:write_multilabel_demo",
}


def example_writer(name: str):
    """The demo-data writer of a bundled example."""
    import importlib

    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; examples: {', '.join(sorted(EXAMPLES))}")
    module, func = EXAMPLES[name].split(":")
    return getattr(importlib.import_module(module), func)


def bundled_example(name: str = DEFAULT_EXAMPLE) -> Path:
    """The example spec that ships with the project."""
    return resource_path("conveyor.demo", "specs", f"{name}.yaml")


def _camera_style(camera: str) -> dict:
    rng = np.random.default_rng(int(camera.split("-")[1]) * 7919)
    return {
        "gain": rng.uniform(0.75, 1.0),
        "tint": rng.uniform(0.7, 1.0, size=3),
        "background": rng.uniform(0.0, 0.15, size=3),
        "noise": rng.uniform(0.01, 0.04),
    }


def render_digit(digit: np.ndarray, camera: str, rng: np.random.Generator, lighting: float = 0.0) -> Image.Image:
    """One 8x8 digit (values 0..16) as a 32x32 RGB image in the camera's style; ``lighting``
    adds ambient light (0.1 = a tenth of full scale on every pixel), as when a lamp changes."""
    style = _camera_style(camera)
    base = Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((SIZE - 4, SIZE - 4), Image.BILINEAR)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    dx, dy = rng.integers(0, 5, size=2)
    canvas[dy : dy + SIZE - 4, dx : dx + SIZE - 4] = np.asarray(base, dtype=np.float32) / 255.0
    ink = canvas[..., None] * style["gain"] * style["tint"][None, None, :]
    img = style["background"][None, None, :] + ink * (1 - style["background"][None, None, :])
    img = img + rng.normal(0, style["noise"], size=img.shape) + lighting
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), mode="RGB")


def _rows(indices: range, cameras: list[str], start: datetime, days: int, images, targets, root: Path, rng) -> list[dict]:
    rows = []
    for k, idx in enumerate(indices):
        camera = cameras[k % len(cameras)]
        scene = f"aisle-{(int(camera.split('-')[1]) - 1) // 2 + 1}"
        ts = start + timedelta(seconds=int(rng.integers(0, days * 86400)))
        rel = f"images/{camera}/{ts:%Y-%m-%d}/digit-{idx:04d}.png"
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        render_digit(images[idx], camera, rng).save(dest, optimize=False)
        rows.append({"path": rel, "label": str(int(targets[idx])), "camera": camera, "scene": scene,
                     "captured_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return rows


def write_classification_demo(spec, batch: int) -> Path:
    """The classification example: digits under the folder of the spec's manifest (and, with batch 2,
    unlabelled digits where ``labeling.unlabeled`` points)."""
    manifest = write_demo_batch(spec.source_path.parent, batch)
    if batch == 2 and spec.labeling.unlabeled:
        write_unlabeled_batch(spec.resolve_path(spec.labeling.unlabeled), UNLABELED)
    return manifest


UNLABELED = 300


def write_unlabeled_batch(root: str | Path, n: int, seed: int = 7) -> Path:
    """``n`` digits from the new cameras without labels: images and a metadata sidecar under ``root``,
    the truth in ``<root>-truth.csv`` beside it (for the demo's reviewer). Returns the truth file."""
    from sklearn.datasets import load_digits

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(20_000 + seed)
    meta, truth = [], []
    for k in range(n):
        idx = int(rng.integers(0, len(digits.images)))
        camera = CAMERAS_2[k % len(CAMERAS_2)]
        ts = START_2 + timedelta(days=7, seconds=int(rng.integers(0, 86400)))
        rel = f"{camera}/capture-{k:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        render_digit(digits.images[idx], camera, rng).save(root / rel, optimize=False)
        meta.append({"path": rel, "camera": camera, "scene": "aisle-6", "captured_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
        truth.append({"path": rel, "label": str(int(digits.target[idx]))})
    pl.DataFrame(meta).write_csv(root / "metadata.csv")
    out = root.parent / f"{root.name}-truth.csv"
    pl.DataFrame(truth).write_csv(out)
    return out


def review_as_truth(queue_csv: str | Path, truth_csv: str | Path, out: str | Path, prefix: str = "unlabeled/") -> Path:
    """The demo's reviewer: fills the queue CSV's ``label`` column with the true digits (a labelled
    image sent back as a suspected label error keeps its label: the demo's labels are the truth)."""
    truth = dict(pl.read_csv(truth_csv, infer_schema=False).iter_rows())
    q = pl.read_csv(queue_csv, infer_schema=False)
    current = q["current_label"].to_list() if "current_label" in q.columns else [None] * q.height
    labels = [truth.get(i[len(prefix):]) if i.startswith(prefix) else c for i, c in zip(q["id"].to_list(), current)]
    q.with_columns(pl.Series("label", labels, dtype=pl.Utf8)).write_csv(out)
    return Path(out)


def write_demo_batch(root: str | Path, batch: int) -> Path:
    """Write batch 1 or 2 under ``root`` and append it to ``root/manifest.csv``. Returns the manifest."""
    from sklearn.datasets import load_digits

    if batch not in (1, 2):
        raise ValueError(f"demo batch must be 1 or 2, got {batch}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images, targets = digits.images, digits.target
    rng = np.random.default_rng(batch)
    manifest = root / "manifest.csv"
    if batch == 1:
        rows = _rows(range(0, BATCH1), CAMERAS_1, START_1, 14, images, targets, root, rng)
        previous = []
    else:
        previous = pl.read_csv(manifest, infer_schema=False).to_dicts() if manifest.exists() else []
        rows = _rows(range(BATCH1, len(images)), CAMERAS_2, START_2, 7, images, targets, root, rng)
        rows += _bad_and_copied(root, previous, rng)
    all_rows = previous + rows
    pl.DataFrame(all_rows, schema={"path": pl.Utf8, "label": pl.Utf8, "camera": pl.Utf8, "scene": pl.Utf8,
                                   "captured_at": pl.Utf8}).write_csv(manifest)
    return manifest


def _bad_and_copied(root: Path, previous: list[dict], rng: np.random.Generator) -> list[dict]:
    """What real uploads bring besides good images."""
    up = root / "images" / "uploads"
    up.mkdir(parents=True, exist_ok=True)
    ts = (START_2 + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []

    def row(name: str, label: str, camera: str = "cam-09", scene: str = "aisle-5") -> dict:
        return {"path": f"images/uploads/{name}", "label": label, "camera": camera, "scene": scene, "captured_at": ts}

    if previous:
        src = previous[3]
        shutil.copyfile(root / src["path"], up / "reupload-0003.png")  # exact copy under a new name
        rows.append(row("reupload-0003.png", src["label"], src["camera"], src["scene"]))
        src = previous[5]
        buf = io.BytesIO()
        Image.open(root / src["path"]).convert("RGB").save(buf, format="JPEG", quality=95)
        (up / "reencoded-0005.jpg").write_bytes(buf.getvalue())  # a near-duplicate
        rows.append(row("reencoded-0005.jpg", src["label"], src["camera"], src["scene"]))
        good = (root / src["path"]).read_bytes()
        (up / "truncated.png").write_bytes(good[: len(good) // 2])
        rows.append(row("truncated.png", src["label"]))
    (up / "empty.png").write_bytes(b"")
    rows.append(row("empty.png", "1"))
    (up / "notes.png").write_text("this is a text file, not an image\n")
    rows.append(row("notes.png", "2"))
    img = render_digit(np.full((8, 8), 8.0), "cam-09", rng)
    img.save(up / "unknown-label.png")
    rows.append(row("unknown-label.png", "not-a-digit"))
    rows.append({"path": "../outside.png", "label": "3", "camera": "cam-09", "scene": "aisle-5", "captured_at": ts})
    return rows


def write_production_sample(root: str | Path, n: int, *, seed: int, cameras: list[str] | None = None,
                            lighting: float | dict[str, float] = 0.0, start: datetime | None = None) -> Path:
    """What the cameras of batch 1 send later: ``n`` digits drawn at random, labelled, with a
    manifest under ``root``. ``lighting`` shifts the ambient light of every camera (a number) or
    of some cameras (``{camera: shift}``), to inject drift. Returns the manifest."""
    from sklearn.datasets import load_digits

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(10_000 + seed)
    cameras = cameras or CAMERAS_1
    start = start or START_2
    rows = []
    for k in range(n):
        idx = int(rng.integers(0, len(digits.images)))
        camera = cameras[k % len(cameras)]
        shift = lighting.get(camera, 0.0) if isinstance(lighting, dict) else float(lighting)
        ts = start + timedelta(seconds=int(rng.integers(0, 86400)))
        rel = f"images/{camera}/sample-{seed}-{k:05d}.png"
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        render_digit(digits.images[idx], camera, rng, lighting=shift).save(dest, optimize=False)
        rows.append({"path": rel, "label": str(int(digits.target[idx])), "camera": camera, "scene": "production",
                     "captured_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
    manifest = root / "manifest.csv"
    pl.DataFrame(rows).write_csv(manifest)
    return manifest
