"""Toy image datasets written into a test's temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

TOY_COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}

# The split table of the training tests: its own colours (kept as they were, the trained figures depend on them).
COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def write_toy_dataset(root: Path, per_class_per_camera: int = 6, cameras: int = 6, size: int = 16, seed: int = 0,
                      start_index: int = 0, camera_offset: int = 0) -> Path:
    """Noisy solid-colour squares (3 classes) from several cameras, with a CSV manifest.

    Appends to ``root/manifest.csv`` when it exists, so a second call adds a new batch.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    k = start_index
    for c in range(camera_offset, camera_offset + cameras):
        camera = f"cam-{c:02d}"
        for label, rgb in TOY_COLOURS.items():
            for _ in range(per_class_per_camera):
                arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, size=(size, size, 3)), 0, 255)
                rel = f"img/{camera}/{label}-{k:05d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(root / rel)
                rows.append({"path": rel, "label": label, "camera": camera, "scene": f"scene-{c % 3}",
                             "captured_at": f"2026-10-{1 + c:02d}T{k % 24:02d}:00:00Z"})
                k += 1
    manifest = root / "manifest.csv"
    df = pl.DataFrame(rows)
    if manifest.exists():
        df = pl.concat([pl.read_csv(manifest, infer_schema=False), df])
    df.write_csv(manifest)
    return manifest


def make_color_dataset(root: Path, n_per_class: int = 34, size: int = 16, seed: int = 0) -> Path:
    """Noisy solid-colour images in several file formats and modes, plus a split table."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for name, rgb in COLORS.items():
        for j in range(n_per_class):
            base = np.array(rgb, dtype=float) + rng.uniform(-30, 30, 3)
            pixels = np.clip(base + rng.normal(0, 25, (size + j % 3, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            iid = f"{name}-{j:03d}"
            path = root / f"{iid}.png"
            if j % 7 == 3:
                image = image.convert("RGBA")
            elif j % 11 == 5:
                path = path.with_suffix(".jpg")
            image.save(path)
            r = j % 5
            split = "train" if r < 3 else ("val" if r == 3 else "test")
            rows.append({"id": iid, "path": str(path), "label": name, "split": split, "content_hash": iid})
    # Rows deliberately out of id order: training must sort them itself.
    table = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=1)
    split_path = root / "split.parquet"
    table.write_parquet(split_path)
    return split_path


def write_mask_pair(root: Path, rel: str, camera: str, rng, size: int = 32, mask: np.ndarray | None = None) -> np.ndarray:
    """``root/images/rel`` and its mask ``root/masks/rel``: a dark 8x8 defect on a grey part (or ``mask``)."""
    img = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
    if mask is None:
        mask = np.zeros((size, size), dtype=np.uint8)
        y, x = rng.integers(2, size - 12, size=2)
        mask[y : y + 8, x : x + 8] = 1
    img[mask == 1] = 20
    (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "images" / rel)
    Image.fromarray(mask, mode="L").save(root / "masks" / rel)
    return mask


def write_pairs(root: Path, cameras: int = 6, per_camera: int = 6, size: int = 32, seed: int = 0) -> None:
    """Image/mask pairs from several cameras under ``root/images`` and ``root/masks``, with a metadata CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(cameras):
        for j in range(per_camera):
            rel = f"cam-{c:02d}/part-{j:03d}.png"
            write_mask_pair(root, rel, f"cam-{c:02d}", rng, size)
            rows.append({"path": rel, "camera": f"cam-{c:02d}", "scene": f"line-{c % 2}",
                         "captured_at": f"2026-10-{1 + c:02d}T{j:02d}:00:00Z"})
    pl.DataFrame(rows).write_csv(root / "images" / "metadata.csv")
