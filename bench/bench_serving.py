"""The inference service vs onnxruntime called in-process: p95 latency and throughput at a fixed concurrency.

    python bench/bench_serving.py [--model resnet10t --image-size 64 --requests 400 --concurrency 4]

Builds a classifier with random weights (latency does not depend on the values), exports the
deployable ONNX graph, registers it as the champion of a throw-away pipeline and starts
``conveyor serve`` in a subprocess on a loopback port. Then ``--concurrency`` client threads
(one httpx client each) send ``--requests`` JPEG uploads (after ``--warmup`` untimed ones), and
the same number of threads call ``session.run`` in this process on the same image, preprocessed
as the service does it, with the same onnxruntime thread count. The service's figures include
HTTP, the upload, the safe decode, image statistics, routing, postprocessing and the prediction
log; the baseline is the model call alone. Goal: service p95 <= GOAL x direct p95; PASS or MISS.
After the run the service is stopped with SIGINT and its prediction log must hold one row per
answered request.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GOAL_RATIO = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _camera_jpeg(width: int = 160, height: int = 120) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _hammer(call, total: int, concurrency: int) -> tuple[list[float], float, int]:
    """``total`` calls from ``concurrency`` threads; (per-call seconds, wall seconds, failures)."""
    times: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        local = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t = time.perf_counter()
            ok = call()
            local.append(time.perf_counter() - t)
            if not ok:
                with lock:
                    failures[0] += 1
        with lock:
            times.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, time.perf_counter() - t0, failures[0]


def _summary(times: list[float], wall: float) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "throughput_rps": len(times) / wall if wall > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet10t", help="timm model name (random weights)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--requests", type=int, default=400, help="timed requests (and direct calls)")
    parser.add_argument("--warmup", type=int, default=40, help="untimed requests first")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads (and direct-call threads)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, both sides")
    parser.add_argument("--goal", type=float, default=GOAL_RATIO, help="target ratio service/direct for p95")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with all figures")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)

    import httpx
    import polars as pl
    import torch
    import yaml

    from conveyor.monitoring import feedback
    from conveyor import kinds
    from conveyor.monitoring import monitor
    from conveyor.model.evaluate import export_onnx_model
    from conveyor.release.registry import Registry
    from conveyor.serving.model import LoadedModel
    from conveyor.serving.preprocess import decode_request
    from conveyor.core.io import sha256_file
    from conveyor.core.workspace import Workspace

    kind = kinds.get("classification").training
    torch.manual_seed(0)
    model = kind.build_model(args.model, args.num_classes, {}).eval()
    mean, std = kind.normalization(model)
    classes = [f"c{i}" for i in range(args.num_classes)]
    meta = {"mean": mean, "std": std, "image_size": args.image_size, "classes": classes, "model_name": args.model}
    image = _camera_jpeg()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        onnx_path = export_onnx_model(kind.deploy_module(model, meta), root / "model.onnx", kind.example_input(meta, 1),
                                      input_names=kind.ONNX_INPUT_NAMES, output_names=kind.ONNX_OUTPUT_NAMES,
                                      dynamic_axes=kind.ONNX_DYNAMIC_AXES, metadata=kind.onnx_metadata(meta))
        (root / "metrics.json").write_text("{}")
        spec_path = root / "bench.yaml"
        spec_path.write_text(yaml.safe_dump({"name": "bench-serving", "task": "classification",
                                             "data": {"source": "data", "classes": classes},
                                             "train": {"model": args.model, "image_size": args.image_size}}))
        ws = Workspace(root / "ws")
        reg = Registry(ws.registry)
        v = reg.register("bench-serving", files={"model.onnx": onnx_path, "metrics.json": root / "metrics.json"},
                         model_hash=sha256_file(onnx_path), metrics={}, lineage={}, gate={})
        reg.set_alias("bench-serving", v.version, reason="benchmark")

        # ---- direct: session.run on the preprocessed input, same threads ----
        direct_model = LoadedModel(v.version, onnx_path, args.threads)
        x = decode_request(image, max_pixels=50_000_000).input(args.image_size)
        session, name = direct_model.session, direct_model.input_name

        def direct() -> bool:
            session.run(None, {name: x})
            return True

        def in_process() -> bool:  # decode + statistics + model + postprocessing, no HTTP
            direct_model.predict(decode_request(image, max_pixels=50_000_000))
            return True

        _hammer(direct, args.warmup, args.concurrency)
        d1 = _summary(*_hammer(direct, args.requests, args.concurrency)[:2])
        inproc = _summary(*_hammer(in_process, args.requests, args.concurrency)[:2])

        # ---- the service, in a subprocess ----
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "serve", str(spec_path), "--port", str(port),
                                 "--workspace", str(ws.root), "--threads", str(args.threads)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not become ready: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.1)
            local = threading.local()

            def request() -> bool:
                h = getattr(local, "client", None)
                if h is None:
                    h = local.client = httpx.Client(timeout=30)
                r = h.post(f"{url}/predict", content=image, headers={"Content-Type": "image/jpeg"})
                return r.status_code == 200

            _hammer(request, args.warmup, args.concurrency)
            times, wall, failures = _hammer(request, args.requests, args.concurrency)
            svc = _summary(times, wall)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logged = feedback.read_prediction_log(monitor.prediction_log_dir(ws, "bench-serving"))
        logged_ok = logged.filter(pl.col("status") == "ok").height

        d2 = _summary(*_hammer(direct, args.requests, args.concurrency)[:2])

    direct_p95 = min(d1["p95_ms"], d2["p95_ms"])
    direct_p50 = min(d1["p50_ms"], d2["p50_ms"])
    direct_thr = max(d1["throughput_rps"], d2["throughput_rps"])
    ratio = svc["p95_ms"] / direct_p95
    expected = args.requests + args.warmup - failures
    verdict = "PASS" if ratio <= args.goal and failures == 0 and logged_ok == expected else "MISS"

    print(f"model {args.model}  image 160x120 JPEG -> {args.image_size}px  concurrency {args.concurrency}  "
          f"ort threads {args.threads}  requests {args.requests} (+{args.warmup} warm-up)")
    print(f"direct session.run      p50 {direct_p50:7.3f} ms   p95 {direct_p95:7.3f} ms   {direct_thr:8.0f} calls/s")
    print(f"in-process, no HTTP     p50 {inproc['p50_ms']:7.3f} ms   p95 {inproc['p95_ms']:7.3f} ms   "
          f"{inproc['throughput_rps']:8.0f} calls/s   (decode, statistics, model, postprocessing)")
    print(f"service over HTTP       p50 {svc['p50_ms']:7.3f} ms   p95 {svc['p95_ms']:7.3f} ms   "
          f"{svc['throughput_rps']:8.0f} req/s   failures {failures}")
    print(f"prediction log: {logged_ok} ok rows for {expected} answered requests")
    print(f"p95 ratio service/direct = {ratio:.2f}x  (goal <= {args.goal:g}x)  "
          f"throughput ratio = {svc['throughput_rps'] / direct_thr:.3f}x  {verdict}")
    if args.json:
        print(json.dumps({
            "model": args.model, "image_size": args.image_size, "concurrency": args.concurrency,
            "threads": args.threads, "requests": args.requests, "direct_p50_ms": direct_p50,
            "direct_p95_ms": direct_p95, "direct_throughput": direct_thr, "in_process": inproc, "service": svc,
            "failures": failures, "logged_ok": logged_ok, "ratio_p95": ratio, "goal": args.goal, "verdict": verdict,
        }))
    return 1 if (args.strict and verdict == "MISS") else 0


if __name__ == "__main__":
    raise SystemExit(main())
