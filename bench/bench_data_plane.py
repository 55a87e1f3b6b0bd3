"""Data-plane throughput: ingest + curate against a plain PIL decode loop over the same files.

    python bench/bench_data_plane.py [--n 3000] [--repeats 3]

Writes N small PNG images (sklearn digits, upscaled to 32-64 px RGB with varied tint and
background) into a temporary folder-per-class dataset, warms the file cache, then times

  (a) a plain loop ``Image.open(p).convert("RGB")`` + ``.load()`` over the files, and
  (b) ``conveyor.data.ingest.ingest`` + ``conveyor.data.curate.curate`` (fresh output folders each time),

best of ``--repeats`` for each, in the same process, and prints images/s, the ratio
(ingest+curate) / (plain decode) and PASS/MISS against the goal (>= 0.8x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conveyor.data.curate import curate  # noqa: E402
from conveyor.data.ingest import ingest  # noqa: E402
from conveyor.core.spec import spec_from_dict  # noqa: E402

GOAL = 0.8


def make_dataset(root: Path, n: int, seed: int = 0) -> list[Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        k = i % len(digits.images)
        glyph = (digits.images[k] / 16.0 * 255).astype(np.uint8)
        size = int(rng.integers(32, 65))
        ink = np.asarray(Image.fromarray(glyph).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        tint = rng.uniform(0.3, 1.0, 3)
        background = rng.uniform(0.0, 0.5, 3)
        rgb = background * (1 - ink[..., None]) + tint * ink[..., None]
        rgb += rng.normal(0, 0.02, rgb.shape)
        label = str(digits.target[k])
        path = root / label / f"img_{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def plain_decode(paths: list[Path]) -> None:
    for p in paths:
        im = Image.open(p).convert("RGB")
        im.load()


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="number of images (default 3000)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    ap.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    root = args.keep or tmp / "data"
    try:
        t = time.perf_counter()
        paths = make_dataset(root, args.n)
        print(f"dataset: {len(paths)} PNG images, 32-64 px, in {root} ({time.perf_counter() - t:.1f} s to write)")
        for p in paths:  # warm the file cache for both contenders
            p.read_bytes()
        spec = spec_from_dict({"name": "bench", "task": "classification", "data": {"source": str(root)}}, base_dir=tmp)

        runs = []

        def pipeline() -> None:
            out = Path(tempfile.mkdtemp(dir=tmp, prefix="out-"))
            t0 = time.perf_counter()
            ing = ingest(spec, out / "datasets")
            t1 = time.perf_counter()
            cur = curate(ing.manifest_path, spec, out / "curated")
            t2 = time.perf_counter()
            runs.append((t2 - t0, t1 - t0, t2 - t1, ing, cur))
            shutil.rmtree(out, ignore_errors=True)

        pipeline()  # warm-up: imports, caches of the resize coefficients
        runs.clear()
        plain_s = best_of(args.repeats, lambda: plain_decode(paths))
        ours_s = best_of(args.repeats, pipeline)
        plain2_s = best_of(args.repeats, lambda: plain_decode(paths))  # the machine may drift: re-measure
        plain_s = min(plain_s, plain2_s)
        total, ing_s, cur_s, ing, cur = min(runs, key=lambda r: r[0])

        n = len(paths)
        plain_ips, ours_ips = n / plain_s, n / ours_s
        ratio = plain_s / ours_s
        threads = os.environ.get("CONVEYOR_INGEST_THREADS") or f"auto ({min(4, os.cpu_count() or 1)})"
        print(f"cpus: {os.cpu_count()}, ingest threads: {threads}, load average: {os.getloadavg()[0]:.2f}")
        print(f"ingest: accepted {ing.accepted}/{ing.received}, quarantined {ing.quarantined}")
        print(f"curate: kept {cur.kept}, removed {cur.removed_reasons}")
        print(f"plain PIL decode      : {plain_ips:9.0f} images/s  ({plain_s * 1e6 / n:6.1f} us/image)")
        print(f"ingest + curate       : {ours_ips:9.0f} images/s  ({ours_s * 1e6 / n:6.1f} us/image;"
              f" ingest {ing_s * 1e6 / n:.1f}, curate {cur_s * 1e6 / n:.1f})")
        verdict = "PASS" if ratio >= GOAL else "MISS"
        print(f"ratio ingest+curate / plain decode: {ratio:.2f}x (goal >= {GOAL}x): {verdict}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
