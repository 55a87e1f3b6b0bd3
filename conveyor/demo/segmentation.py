"""Demo data for the segmentation example: surface-defect masks on textured parts.

Each image is a 96x96 surface texture in the look of the camera that captured it (brushed
metal, grain direction, gain, tint, sensor noise). Defects are real handwriting strokes:
scikit-learn's bundled ``load_digits`` digits, upscaled, thresholded into stroke shapes, placed
at a random position, scale and turn and darkened into the surface; the stroke shape is the
``defect`` mask (class 1, background 0). About one image in six has no defect. Images go to
``<images>/<camera>/<name>.png``, masks to ``<masks>/<camera>/<name>.png`` (mode L, class
indices), and camera / scene / capture time to ``<images>/metadata.csv``.

- batch 1: 8 cameras, 60 parts each, over two weeks;
- batch 2: 4 newly installed cameras (brighter lighting, the drift the trigger watches for),
  30 parts each, plus bad pairs that ingest quarantines: a missing mask, a mask of the wrong
  size, a mask with a value outside the classes, an RGB mask and a mask that is not a PNG.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96
PER_CAMERA_1 = 60
PER_CAMERA_2 = 30
CAMERAS_1 = [f"cam-{i:02d}" for i in range(1, 9)]
CAMERAS_2 = [f"cam-{i:02d}" for i in range(9, 13)]
START_1 = datetime(2026, 10, 1, tzinfo=timezone.utc)
START_2 = datetime(2026, 10, 22, tzinfo=timezone.utc)
NO_DEFECT_SHARE = 1 / 6


def _camera_style(camera: str) -> dict:
    num = int(camera.split("-")[1])
    rng = np.random.default_rng(num * 7919 + 17)
    return {
        "base": rng.uniform(0.45, 0.65),
        "tint": rng.uniform(0.85, 1.0, size=3),
        "grain_angle": rng.uniform(0, np.pi),
        "grain": rng.uniform(0.04, 0.09),
        "noise": rng.uniform(0.01, 0.03),
        "gain": 1.0 if num <= 8 else 1.25,  # the new cameras have brighter lighting
    }


def _texture(style: dict, rng: np.random.Generator) -> np.ndarray:
    """Brushed-metal texture (H, W) in [0, 1]: streaks along the camera's grain plus blotches."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    a = style["grain_angle"] + rng.normal(0, 0.05)
    across = -np.sin(a) * xx + np.cos(a) * yy
    streaks = np.zeros_like(across)
    for _ in range(6):
        f = rng.uniform(0.2, 1.5)
        streaks += np.sin(across * f + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1.0)
    streaks /= np.abs(streaks).max() + 1e-6
    coarse = rng.normal(0, 1, size=(6, 6)).astype(np.float32)
    blot = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32)
    tex = style["base"] + style["grain"] * streaks + 0.04 * blot
    return tex


def _defect_mask(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A digit's strokes as a boolean (SIZE, SIZE) mask at a random scale, turn and place."""
    side = int(rng.integers(34, 56))
    img = Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    img = img.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR, expand=True)
    stroke = np.asarray(img, dtype=np.float32) / 255.0 > rng.uniform(0.45, 0.6)
    h, w = stroke.shape
    canvas = np.zeros((SIZE, SIZE), dtype=bool)
    oy = int(rng.integers(-h // 4, SIZE - 3 * h // 4))
    ox = int(rng.integers(-w // 4, SIZE - 3 * w // 4))
    ys, xs = slice(max(oy, 0), min(oy + h, SIZE)), slice(max(ox, 0), min(ox + w, SIZE))
    canvas[ys, xs] = stroke[ys.start - oy : ys.stop - oy, xs.start - ox : xs.stop - ox]
    return canvas


def render_part(digit: np.ndarray | None, camera: str, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One part: (RGB image, L mask with 0 = background, 1 = defect)."""
    style = _camera_style(camera)
    tex = _texture(style, rng)
    mask = _defect_mask(digit, rng) if digit is not None else np.zeros((SIZE, SIZE), dtype=bool)
    if mask.any():
        depth = rng.uniform(0.35, 0.55)
        tex = np.where(mask, tex * (1 - depth) + rng.normal(0, 0.02, size=tex.shape), tex)
    rgb = tex[..., None] * style["tint"][None, None, :] * style["gain"]
    rgb = rgb + rng.normal(0, style["noise"], size=rgb.shape)
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), mode="RGB")
    return image, Image.fromarray(mask.astype(np.uint8), mode="L")


def _write_parts(cameras: list[str], per_camera: int, start: datetime, days: int, digits: np.ndarray,
                 first: int, images_root: Path, masks_root: Path, rng: np.random.Generator) -> list[dict]:
    rows = []
    k = first
    for camera in cameras:
        scene = f"line-{(int(camera.split('-')[1]) - 1) // 4 + 1}"
        for j in range(per_camera):
            has_defect = rng.random() >= NO_DEFECT_SHARE
            image, mask = render_part(digits[k % len(digits)] if has_defect else None, camera, rng)
            ts = start + timedelta(seconds=int(rng.integers(0, days * 86400)))
            rel = f"{camera}/part-{k:05d}.png"
            for root, im in ((images_root, image), (masks_root, mask)):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                im.save(root / rel)
            rows.append({"path": rel, "camera": camera, "scene": scene, "captured_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
            k += 1
    return rows


def _bad_pairs(images_root: Path, masks_root: Path, rng: np.random.Generator) -> list[dict]:
    """Pairs ingest must quarantine, one of each kind."""
    from sklearn.datasets import load_digits

    digit = load_digits().images[0]
    ts = (START_2 + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    for name in ("missing-mask", "wrong-size", "bad-value", "rgb-mask", "not-png"):
        rel = f"uploads/{name}.png"
        image, mask = render_part(digit, "cam-09", rng)
        (images_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (masks_root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(images_root / rel)
        if name == "wrong-size":
            mask.resize((SIZE // 2, SIZE // 2), Image.NEAREST).save(masks_root / rel)
        elif name == "bad-value":
            arr = np.asarray(mask).copy()
            arr[:4, :4] = 7
            Image.fromarray(arr, mode="L").save(masks_root / rel)
        elif name == "rgb-mask":
            mask.convert("RGB").save(masks_root / rel)
        elif name == "not-png":
            (masks_root / rel).write_text("not an image\n")
        rows.append({"path": rel, "camera": "cam-09", "scene": "line-3", "captured_at": ts})
    return rows


def write_segmentation_demo(spec, batch: int) -> Path:
    """Write batch 1 or 2 where the spec points (images: ``data.source``, masks: ``data.annotations``).

    Returns the images folder.
    """
    if batch not in (1, 2):
        raise ValueError(f"demo batch must be 1 or 2, got {batch}")
    if not spec.data.annotations:
        raise ValueError("the segmentation demo needs data.annotations (the masks folder)")
    return write_segmentation_batch(spec.source_path, spec.resolve_path(spec.data.annotations), batch)


def write_segmentation_batch(images_root: str | Path, masks_root: str | Path, batch: int) -> Path:
    from sklearn.datasets import load_digits

    images_root, masks_root = Path(images_root), Path(masks_root)
    images_root.mkdir(parents=True, exist_ok=True)
    masks_root.mkdir(parents=True, exist_ok=True)
    digits = load_digits().images
    rng = np.random.default_rng(100 + batch)
    meta = images_root / "metadata.csv"
    if batch == 1:
        previous: list[dict] = []
        rows = _write_parts(CAMERAS_1, PER_CAMERA_1, START_1, 14, digits, 0, images_root, masks_root, rng)
    else:
        previous = []
        if meta.exists():
            with meta.open(newline="") as f:
                previous = list(csv.DictReader(f))
        first = len(CAMERAS_1) * PER_CAMERA_1
        rows = _write_parts(CAMERAS_2, PER_CAMERA_2, START_2, 7, digits, first, images_root, masks_root, rng)
        rows += _bad_pairs(images_root, masks_root, rng)
    with meta.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "camera", "scene", "captured_at"])
        writer.writeheader()
        writer.writerows(previous + rows)
    return images_root
