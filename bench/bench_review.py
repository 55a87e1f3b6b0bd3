"""The label/review stage's cost on a pool of unlabelled images, and what its caches save.

    python bench/bench_review.py [--n 2000] [--repeats 3]

N 32x32 PNG digits without labels (the demo's new cameras) are written to a temporary folder
beside a small labelled source, and a champion is registered: an untrained timm ``resnet10t``
exported to ONNX with conveyor's metadata (speed does not depend on the weights). Measured in
this process, after one warm read of the files:

  (a) baseline: plain decode of every pool image, ``Image.open(p).convert("RGB").load()``
      (best of ``--repeats``);
  (b) the first label stage: safe ingest of the pool (decode, statistics, perceptual hash),
      the champion's scores of every image (onnxruntime, batch 1), auto-labels, hard-case
      sampling and the Label Studio queue;
  (c) the stage again with nothing changed: the pool's ingest is found by content fingerprint
      and the scores by model hash, so no image is decoded for the model again.

It prints images/s of (b), the ratios (b)/(a) and (c)/(b), and PASS/MISS for the goal that a
rerun with an unchanged pool costs at most a quarter of the first stage (c)/(b) <= 0.25.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL = 0.25


def _champion(ws, name: str, root: Path) -> None:
    import timm
    import torch

    from conveyor.model.evaluate import export_onnx_model
    from conveyor.kinds.classification import model as classification
    from conveyor.release.registry import Registry
    from conveyor.core.io import sha256_file

    classes = [str(i) for i in range(10)]
    meta = {"classes": classes, "image_size": 32, "model_name": "resnet10t", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225)}
    model = classification.DeployModel(timm.create_model("resnet10t", pretrained=False, num_classes=10),
                                       meta["mean"], meta["std"]).eval()
    onnx = export_onnx_model(model, root / "model.onnx", torch.rand(1, 3, 32, 32), input_names=["images"],
                             output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                             metadata=classification.onnx_metadata(meta))
    (root / "metrics.json").write_text("{}")
    reg = Registry(ws.registry)
    v = reg.register(name, files={"model.onnx": onnx, "metrics.json": root / "metrics.json"},
                     model_hash=sha256_file(onnx), metrics={}, lineage={}, gate={}).version
    reg.set_alias(name, v, reason="bench")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import polars as pl
    import yaml
    from PIL import Image

    from conveyor.labels import stage as review
    from conveyor.demo.bundled import bundled_example, write_unlabeled_batch
    from conveyor.data.ingest import ingest
    from conveyor.core.spec import load_spec
    from conveyor.core.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-review-")).resolve()
    try:
        src = root / "data"
        src.mkdir()
        rows = []
        for k in range(30):  # a small labelled source: the stage needs one
            Image.new("RGB", (32, 32), (8 * k, 40, 90)).save(src / f"l{k}.png")
            rows.append({"path": f"l{k}.png", "label": str(k % 10), "camera": "cam-01"})
        pl.DataFrame(rows).write_csv(src / "manifest.csv")
        write_unlabeled_batch(root / "pool", args.n)
        spec_d = yaml.safe_load(bundled_example().read_text())
        spec_d["data"]["source"] = "data/manifest.csv"
        spec_d["labeling"]["unlabeled"] = "pool"
        spec_d["labeling"]["budget"] = 100
        spec_d["labeling"]["auto_label_threshold"] = 0.12  # an untrained model is unsure: a low bar
        (root / "spec.yaml").write_text(yaml.safe_dump(spec_d))
        spec = load_spec(root / "spec.yaml")
        ws = Workspace(root / "workspace")
        _champion(ws, spec.name, root)
        ing = ingest(spec, ws.datasets)
        champion, challenger = review.model_refs(ws.registry, spec.name)
        files = sorted((root / "pool").rglob("*.png"))
        for p in files:
            p.read_bytes()

        base = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for p in files:
                with Image.open(p) as im:
                    im.convert("RGB").load()
            base.append(time.perf_counter() - t)
        decode = min(base)

        t = time.perf_counter()
        first = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion,
                                   challenger)
        t_first = time.perf_counter() - t
        reruns = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            again = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion,
                                       challenger)
            reruns.append(time.perf_counter() - t)
        t_rerun = min(reruns)
        assert again.labeled_version == first.labeled_version

        n = len(files)
        print(f"pool: {n} images, {first.auto_labeled} auto-labelled, {first.queued} queued "
              f"({first.selection.get('taken')})")
        print(f"(a) plain decode:           {decode:7.3f} s  ({n / decode:8.0f} images/s)")
        print(f"(b) first label stage:      {t_first:7.3f} s  ({n / t_first:8.0f} images/s)  "
              f"ratio (b)/(a) = {t_first / decode:.2f}x")
        print(f"(c) rerun, nothing changed: {t_rerun:7.3f} s  ratio (c)/(b) = {t_rerun / t_first:.3f}x "
              f"(goal <= {GOAL:.2f}x): {'PASS' if t_rerun / t_first <= GOAL else 'MISS'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
