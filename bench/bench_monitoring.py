"""Monitoring costs: profiling arrivals, and evaluating drift over a month of daily profiles.

    python bench/bench_monitoring.py [--n 3000] [--days 30] [--repeats 3]

(1) Profiling throughput. N 48x48 PNG images (sklearn digits, tinted, eight cameras) are written
to a temporary folder and read once to warm the file cache. Then, in this process, best of
``--repeats``:

  (a) plain decode: ``Image.open(p).convert("RGB").load()`` per file;
  (b) conveyor's profiling path: safe decode (``imageio.open_image``), the image statistics in
      bulk (``prepare_features`` + ``features_from_prepared``, without the perceptual hash, which
      only curation needs), the stream table, and whylogs profiles of the batch and of each
      camera (``ProfileStore.write_batch``);
  (c) for reference, whylogs' per-image ``log_image`` on a sample of 200 images, which is what
      the design avoids on the hot path.

It prints images/s and the ratio (b)/(a) with PASS/MISS against the goal (>= 0.5x).

(2) Drift evaluation. ``--days`` daily batches (1000 rows, eight cameras each) go into a profile
store; the drift trigger (six features, per camera) is evaluated over the whole window against
a baseline. The baseline measurement in the same run is reading the same profile files
(deserialisation only). It prints both times, their ratio, and PASS/MISS against the goal
(evaluation well under a second: < 1 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_data_plane import best_of  # noqa: E402  (the same best-of-N timer)
from conveyor.monitoring import drift
from conveyor.data import imageio
from conveyor.monitoring import profiles  # noqa: E402
from conveyor.core.spec import DriftTrigger  # noqa: E402

PROFILE_GOAL = 0.5
DRIFT_GOAL_S = 1.0
CAMERAS = [f"cam-{i:02d}" for i in range(1, 9)]
FEATURES = ["brightness", "contrast", "saturation", "hue", "sharpness", "label"]


def make_images(root: Path, n: int, seed: int = 0) -> list[tuple[Path, str, str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % len(digits.images)
        ink = np.asarray(Image.fromarray((digits.images[k] / 16 * 255).astype(np.uint8)).resize((48, 48)),
                         dtype=np.float32)[..., None] / 255
        rgb = rng.uniform(0, 0.4, 3) * (1 - ink) + rng.uniform(0.4, 1.0, 3) * ink + rng.normal(0, 0.02, (48, 48, 3))
        p = root / f"img_{i:06d}.png"
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(p)
        out.append((p, CAMERAS[i % len(CAMERAS)], str(digits.target[k])))
    return out


def plain_decode(items) -> None:
    for p, _, _ in items:
        Image.open(p).convert("RGB").load()


def profiling_path(items, store_root: Path) -> profiles.Batch:
    prepared, meta = [], []
    for p, camera, label in items:
        opened = imageio.open_image(p.read_bytes(), max_pixels=50_000_000, name=str(p))
        prepared.append(imageio.prepare_features(opened.image, hash_fn=None))
        meta.append((camera, label, opened.width, opened.height))
    feats = imageio.features_from_prepared(prepared, hash_fn=None)
    table = pl.DataFrame({
        "brightness": [f.brightness for f in feats], "contrast": [f.contrast for f in feats],
        "saturation": [f.saturation for f in feats], "hue": [f.hue for f in feats],
        "sharpness": [f.sharpness for f in feats], "width": [float(m[2]) for m in meta],
        "height": [float(m[3]) for m in meta], "label": [m[1] for m in meta], "camera": [m[0] for m in meta],
    })
    shutil.rmtree(store_root, ignore_errors=True)
    return profiles.ProfileStore(store_root).write_batch("images", table)


def log_image_per_image(items) -> None:
    from whylogs.extras.image_metric import log_image

    for p, _, _ in items:
        log_image(Image.open(p).convert("RGB"))


def daily_table(rng: np.random.Generator, rows: int) -> pl.DataFrame:
    return pl.DataFrame({
        "brightness": rng.normal(0.3, 0.05, rows), "contrast": rng.normal(0.2, 0.03, rows),
        "saturation": rng.normal(0.5, 0.1, rows), "hue": rng.uniform(0, 1, rows),
        "sharpness": rng.gamma(2.0, 0.01, rows), "label": rng.choice([str(i) for i in range(10)], rows),
        "camera": rng.choice(CAMERAS, rows),
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="images for the profiling benchmark (default 3000)")
    ap.add_argument("--days", type=int, default=30, help="daily profiles in the drift window (default 30)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-monitoring-"))
    status = 0
    try:
        # ---- (1) profiling throughput ------------------------------------------------------------
        img_dir = tmp / "images"
        img_dir.mkdir()
        items = make_images(img_dir, args.n)
        for p, _, _ in items:
            p.read_bytes()
        profiling_path(items[:100], tmp / "warm")  # imports, resize coefficients
        plain_s = best_of(args.repeats, lambda: plain_decode(items))
        ours_s = best_of(args.repeats, lambda: profiling_path(items, tmp / "store"))
        plain_s = min(plain_s, best_of(args.repeats, lambda: plain_decode(items)))
        sample = items[:200]
        per_image_s = best_of(1, lambda: log_image_per_image(sample))
        n = len(items)
        ratio = plain_s / ours_s
        print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        print(f"plain PIL decode                 : {n / plain_s:9.0f} images/s")
        print(f"decode + statistics + profile    : {n / ours_s:9.0f} images/s")
        print(f"whylogs log_image per image      : {len(sample) / per_image_s:9.0f} images/s (reference, 200 images)")
        ok = ratio >= PROFILE_GOAL
        print(f"ratio profiling / plain decode: {ratio:.2f}x (goal >= {PROFILE_GOAL}x): {'PASS' if ok else 'MISS'}")
        status |= 0 if ok else 1

        # ---- (2) drift over daily profiles ----------------------------------------------------------
        rng = np.random.default_rng(0)
        store = profiles.ProfileStore(tmp / "daily")
        now = datetime(2026, 11, 27, 12, tzinfo=timezone.utc)
        for d in range(args.days):
            store.write_batch("images", daily_table(rng, 1000), at=now - timedelta(days=d, hours=1))
        base_dir = tmp / "baseline"
        train = daily_table(rng, 5000).rename({"label": "label"})
        profiles.write_baseline(base_dir, train, None)
        baseline = {"images": profiles.read_baseline(base_dir, "images")}
        cfg = DriftTrigger(features=FEATURES, window=f"{args.days + 1}d", per_camera=True)
        report = drift.evaluate_drift(cfg, store, baseline, now)
        assert report.rows["images"] == 1000 * args.days, report.rows

        def read_only() -> None:
            for b in store.batches("images", now - timedelta(days=args.days + 1), now):
                profiles.read_view(Path(b.path) / profiles.OVERALL)

        cam_cfg = cfg.model_copy(update={"per_camera": True})
        cfg = cfg.model_copy(update={"per_camera": False})
        read_s = best_of(args.repeats, read_only)
        eval_s = best_of(args.repeats, lambda: drift.evaluate_drift(cfg, store, baseline, now))
        cam_s = best_of(args.repeats, lambda: drift.evaluate_drift(cam_cfg, store, baseline, now))
        print(f"drift over {args.days} daily profiles ({len(FEATURES)} features, 1000 rows a day): "
              f"status {report.status}")
        print(f"read the {args.days} profiles only     : {read_s * 1000:8.1f} ms")
        print(f"evaluate the drift trigger      : {eval_s * 1000:8.1f} ms "
              f"({eval_s / read_s:.2f}x of reading the profiles)")
        print(f"  ... and each of {len(CAMERAS)} cameras  : {cam_s * 1000:8.1f} ms "
              f"({cam_s / read_s:.2f}x; {args.days * len(CAMERAS)} per-camera profiles more)")
        ok = eval_s < DRIFT_GOAL_S
        print(f"drift evaluation {eval_s:.3f} s (goal < {DRIFT_GOAL_S:g} s): {'PASS' if ok else 'MISS'}")
        status |= 0 if ok else 2
        return status
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
