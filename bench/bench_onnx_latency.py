"""ONNX Runtime vs torch eager: p95 single-image latency on the CPU, same model, same threads.

    python bench/bench_onnx_latency.py [--model resnet10t --image-size 32 --runs 300 --threads 2]

Builds the model (random initial weights: latency does not depend on the values), wraps it in the
deployable graph that ``conveyor.model.evaluate`` exports (normalisation included), exports it to ONNX
(opset 17, ``dynamo=False``), checks parity, and times batch-1 calls on both backends with pinned
threads and warm-up. The goal is ORT p95 <= 0.6 x torch p95; the verdict is PASS or MISS.

Detection: ``--task detection --model ssdlite320_mobilenet_v3_large --image-size 160``. Randomly
initialised detectors keep many low-score boxes, so NMS costs more than for a trained model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

GOAL_RATIO = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet10t", help="timm model name (segmentation: unet, lraspp_mobilenet_v3_large, ...)")
    parser.add_argument("--task", default="classification", help="task kind whose adapter builds the model, e.g. segmentation")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300, help="timed batch-1 calls per backend (>= 200)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both backends")
    parser.add_argument("--goal", type=float, default=GOAL_RATIO, help="target ratio onnx/torch for p95")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with all figures")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from conveyor.model.evaluate import run_onnx_batched, export_onnx_model, measure_onnx_latency, measure_torch_latency, onnx_session
    from conveyor import kinds

    kind = kinds.get(args.task).training

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = kind.build_model(args.model, args.num_classes, {}).eval()
    mean, std = kind.normalization(model)
    meta = {"mean": mean, "std": std, "image_size": args.image_size, "classes": [str(i) for i in range(args.num_classes)],
            "model_name": args.model}
    deploy = kind.deploy_module(model, meta)
    example = kind.example_input(meta, 1)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx_model(
            deploy, Path(tmp) / "model.onnx", example, input_names=kind.ONNX_INPUT_NAMES,
            output_names=kind.ONNX_OUTPUT_NAMES, dynamic_axes=kind.ONNX_DYNAMIC_AXES, metadata=kind.onnx_metadata(meta),
        )
        size_mb = onnx_path.stat().st_size / 2**20
        probe = kind.example_input(meta, 8)
        # Detection runs image by image (its graph takes one image and returns boxes, scores, labels).
        run_torch = getattr(kind, "run_torch", None)
        run_ort = getattr(kind, "run_onnx", run_onnx_batched)
        with torch.no_grad():
            ref = run_torch(deploy, probe) if run_torch is not None else deploy(probe).numpy()
        diff = kind.onnx_parity(ref, run_ort(onnx_session(onnx_path, args.threads), probe.numpy()))
        # Alternate the two backends so drift on a shared machine hits both alike.
        sample = example.numpy()
        thr = {"throughput_batch": getattr(kind, "THROUGHPUT_BATCH", 32)}
        t1 = measure_torch_latency(deploy, args.image_size, args.runs, args.threads, sample=example, **thr)
        o1 = measure_onnx_latency(onnx_path, args.image_size, args.runs, args.threads, sample=sample, **thr)
        t2 = measure_torch_latency(deploy, args.image_size, args.runs, args.threads, sample=example, **thr)
        o2 = measure_onnx_latency(onnx_path, args.image_size, args.runs, args.threads, sample=sample, **thr)

    def best(a: dict, b: dict, key: str, fn=min) -> float:
        return float(fn(a[key], b[key]))

    torch_p95, onnx_p95 = best(t1, t2, "latency_p95_ms"), best(o1, o2, "latency_p95_ms")
    torch_p50, onnx_p50 = best(t1, t2, "latency_p50_ms"), best(o1, o2, "latency_p50_ms")
    torch_thr, onnx_thr = best(t1, t2, "throughput_ips", max), best(o1, o2, "throughput_ips", max)
    ratio = onnx_p95 / torch_p95
    verdict = "PASS" if ratio <= args.goal else "MISS"

    print(f"model {args.model}  image {args.image_size}px  batch 1  threads {args.threads}  runs {args.runs} x2  "
          f"params {params_m:.2f} M  onnx {size_mb:.2f} MiB  parity {diff:.2e}")
    tb = thr["throughput_batch"]
    print(f"torch eager   p50 {torch_p50:7.3f} ms   p95 {torch_p95:7.3f} ms   batch-{tb} {torch_thr:9.0f} img/s")
    print(f"onnxruntime   p50 {onnx_p50:7.3f} ms   p95 {onnx_p95:7.3f} ms   batch-{tb} {onnx_thr:9.0f} img/s")
    print(f"p95 ratio onnx/torch = {ratio:.3f}x  (goal <= {args.goal:g}x)  {verdict}")
    if args.json:
        print(json.dumps({
            "model": args.model, "image_size": args.image_size, "threads": args.threads, "runs": args.runs,
            "torch_p50_ms": torch_p50, "torch_p95_ms": torch_p95, "onnx_p50_ms": onnx_p50, "onnx_p95_ms": onnx_p95,
            "torch_throughput_ips": torch_thr, "onnx_throughput_ips": onnx_thr, "ratio_p95": ratio,
            "goal": args.goal, "verdict": verdict, "parity_max_abs_diff": diff, "params_m": params_m,
            "onnx_size_mb": size_mb, "torch_version": torch.__version__,
            "numpy_version": np.__version__,
        }))
    return 1 if (args.strict and verdict == "MISS") else 0


if __name__ == "__main__":
    raise SystemExit(main())
