"""The evaluate stage: quality metrics on one split, ONNX export with a parity check, latency.

``evaluate`` rebuilds the model from its checkpoint alone, scores it on the chosen split with the
task adapter's metrics, exports the deployable graph to ONNX (opset 17, dynamic batch), checks that
onnxruntime agrees with torch on every evaluated image (a model whose ONNX disagrees must not be
deployed, so a disagreement raises :class:`OnnxParityError`), and times single-image inference
with pinned threads. Everything lands in ``out_dir/metrics.json``.

The gated latency (``latency_p50_ms`` / ``latency_p95_ms``) is what a served request pays at batch 1:
the encoded bytes of the split's real images (read once, up front) through the service's safe
decode and preprocessing (:func:`conveyor.serving.preprocess.decode_request`), the model call and
the kind's ``decode_prediction`` (:meth:`conveyor.serving.model.LoadedModel.predict` for ONNX).
The model call alone is reported beside it (``model_latency_p50_ms`` / ``model_latency_p95_ms``);
``latency["timed_path"]`` says which path the gated figures timed.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl
import torch

from conveyor import kinds
from conveyor.core.io import atomic_write_json, onnx_session, write_parquet_atomic
from conveyor.core.spec import DataSpec
from conveyor.model.train import load_checkpoint
from conveyor.serving.model import LoadedModel
from conveyor.serving.preprocess import decode_request

ONNX_NAME = "model.onnx"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.parquet"
ONNX_OPSET = 17
MIN_LATENCY_RUNS = 200
WARMUP_RUNS = 20
THROUGHPUT_BATCH = 32
# Latency figures that are also gate metrics (conveyor.core.spec.METRIC_DIRECTIONS).
LATENCY_METRICS = ("latency_p50_ms", "latency_p95_ms", "throughput_ips", "model_size_mb", "peak_memory_mb")
# The model call alone, reported beside the served path (not gated).
MODEL_LATENCY_KEYS = ("model_latency_p50_ms", "model_latency_p95_ms", "model_latency_mean_ms")
MAX_SERVED_IMAGES = 64  # distinct encoded images the served path cycles through
SERVED_PATH = "served: encoded bytes -> decode_request (safe decode, stats, resize) -> model -> decode_prediction"
MODEL_PATH = "model call alone on a preprocessed input"
DEFAULT_MAX_PIXELS = DataSpec.model_fields["max_pixels"].default
_MB = 1024.0 * 1024.0


class OnnxParityError(RuntimeError):
    """onnxruntime's output differs from torch's by more than the adapter's tolerance."""


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    metrics_path: str
    onnx_path: str | None
    onnx_max_abs_diff: float | None
    split: str
    n_images: int
    latency: dict = field(default_factory=dict)
    predictions_path: str | None = None  # per-image prediction features (the monitoring baseline)
    curves: dict = field(default_factory=dict)  # e.g. detection: precision-recall curves per class
    classes: list = field(default_factory=list)  # class order: rows and columns of the confusion matrix
    # Rows of the split left out because they carry classes the model does not know (a class that is
    # new since the model was trained): {"classes": [...], "rows": n}; empty when none was.
    excluded: dict = field(default_factory=dict)
    # The metrics on the rows whose classes are all in ``compare_classes`` (the classes the champion
    # knows), for the champion comparison: {"classes": [...], "left_out": [...], "rows": n,
    # "metrics": {...}}; empty when every class of the split is common.
    common: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KnownRows:
    """The rows of one split whose classes a model knows, written as a split table of their own."""

    split_path: Path
    excluded_classes: list[str]
    excluded_rows: int

    def record(self) -> dict[str, Any]:
        return {"classes": self.excluded_classes, "rows": self.excluded_rows} if self.excluded_rows else {}


def known_rows(split_path: str | Path, split: str, task: str, classes: Sequence[str], out_path: Path) -> KnownRows:
    """Leave out of ``split`` the rows with a class outside ``classes`` (as the task kind counts a
    row's classes: its label, its boxes, its mask's classes ...). Without any, the table is used as it is."""
    df = pl.read_parquet(split_path)
    rows = df.with_row_index("__row").filter(pl.col("split") == split)
    # class_frame carries the split column through: give it the row number to learn each row's classes
    occ = kinds.get(task).class_frame(rows.with_columns(pl.col("__row").cast(pl.Utf8).alias("split")))
    unknown = occ.filter(pl.col("cls").is_not_null() & ~pl.col("cls").cast(pl.Utf8).is_in([str(c) for c in classes]))
    if unknown.height == 0:
        return KnownRows(Path(split_path), [], 0)
    drop = sorted({int(r) for r in unknown["split"].to_list()})
    kept = df.with_row_index("__row").filter(~pl.col("__row").is_in(drop)).drop("__row")
    write_parquet_atomic(kept, out_path)
    return KnownRows(out_path, sorted({str(c) for c in unknown["cls"].to_list()}), len(drop))


def gate_metrics(result: EvalResult | Mapping[str, Any]) -> dict[str, float]:
    """The flat ``name -> value`` dict the gate reads (from an EvalResult or a loaded metrics.json)."""
    metrics = result.metrics if isinstance(result, EvalResult) else result.get("metrics", result)
    return {str(k): float(v) for k, v in metrics.items() if v is not None}


# ---- resident memory --------------------------------------------------------------------------
def _rss_mb() -> float | None:
    """Resident set size of this process in MiB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _PeakRss:
    """Peak RSS increase over a baseline, sampled between inference calls (no sampling thread, so
    the timings are undisturbed). Approximate: memory the allocator reuses does not show up."""

    def __init__(self) -> None:
        self.base = _rss_mb()
        self.peak = self.base

    def sample(self) -> None:
        now = _rss_mb()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    def increase_mb(self) -> float | None:
        if self.base is None or self.peak is None:
            return None
        return round(max(self.peak - self.base, 0.0), 3)


# ---- latency ----------------------------------------------------------------------------------
LATENCY_QUANTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
LATENCY_HISTOGRAM_BINS = 30


def latency_distribution(ms: np.ndarray) -> dict[str, Any]:
    """The shape of the single-image timings, compact enough for metrics.json: quantiles
    (``p0`` is the fastest call, ``p100`` the slowest) and a histogram over [fastest, p99] with the
    calls slower than p99 counted in ``above``, so one slow outlier does not squash the bins."""
    ms = np.asarray(ms, dtype=np.float64)
    if ms.size == 0:
        return {}
    q = np.percentile(ms, LATENCY_QUANTILES)
    lo, hi = float(ms.min()), float(q[LATENCY_QUANTILES.index(99)])
    if hi <= lo:
        hi = lo + 1e-3
    counts, edges = np.histogram(ms, bins=LATENCY_HISTOGRAM_BINS, range=(lo, hi))
    return {
        "latency_quantiles_ms": {f"p{p}": round(float(v), 4) for p, v in zip(LATENCY_QUANTILES, q)},
        "latency_histogram_ms": {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts],
                                 "above": int((ms > hi).sum())},
    }


def _summarise(times_s: list[float], thr_images: int, thr_seconds: float) -> dict[str, Any]:
    ms = np.asarray(times_s) * 1000.0
    return {
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p95_ms": float(np.percentile(ms, 95)),
        "latency_mean_ms": float(ms.mean()),
        "throughput_ips": float(thr_images / thr_seconds) if thr_seconds > 0 else 0.0,
        **latency_distribution(ms),
    }


def _check_runs(runs: int) -> None:
    if runs < MIN_LATENCY_RUNS:
        raise ValueError(f"latency needs at least {MIN_LATENCY_RUNS} timed runs for a stable p95, got {runs}")


def _throughput_iters(single_ms: float) -> int:
    # About half a second of batch-32 calls, at least 5 and at most 50.
    est_batch_ms = max(single_ms * THROUGHPUT_BATCH * 0.5, 1e-3)
    return int(min(50, max(5, 500.0 / est_batch_ms)))




def _time_calls(single, batched, runs: int, warmup: int, mem: "_PeakRss") -> tuple[list[float], int, float]:
    """Warm up, time ``runs`` single-image calls with perf_counter, then time batched calls for
    the throughput. Returns (per-call seconds, batched iterations, batched seconds)."""
    for _ in range(warmup):
        single()
    mem.sample()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        single()
        times.append(time.perf_counter() - t)
    for _ in range(2):
        batched()
    iters = _throughput_iters(float(np.median(times)) * 1000.0)
    t = time.perf_counter()
    for _ in range(iters):
        batched()
        mem.sample()
    return times, iters, time.perf_counter() - t


def _latency_report(backend: dict[str, Any], timed: tuple[list[float], int, float], batch: int, mem: "_PeakRss",
                    *, runs: int, warmup: int, num_threads: int, image_size: int) -> dict[str, Any]:
    times, iters, thr_s = timed
    out: dict[str, Any] = {**backend, **_summarise(times, iters * batch, thr_s)}
    peak = mem.increase_mb()
    if peak is not None:
        out["peak_memory_mb"] = peak
    out.update(runs=runs, warmup=warmup, batch=1, throughput_batch=batch, num_threads=int(num_threads),
               image_size=int(image_size))
    return out


def measure_onnx_latency(
    onnx_path: str | Path,
    image_size: int,
    runs: int = MIN_LATENCY_RUNS,
    num_threads: int = 2,
    *,
    warmup: int = WARMUP_RUNS,
    sample: np.ndarray | None = None,
    throughput_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """p50/p95 of single-image onnxruntime calls and batch-32 throughput, on the CPU.

    ``throughput_batch`` is 1 for graphs with a fixed batch of one image (detection)."""
    _check_runs(runs)
    mem = _PeakRss()
    session = onnx_session(onnx_path, num_threads)
    mem.sample()
    name = session.get_inputs()[0].name
    x1 = sample if sample is not None else np.random.default_rng(0).random((1, 3, image_size, image_size), dtype=np.float32)
    x1 = np.ascontiguousarray(x1[:1], dtype=np.float32)
    xb = np.ascontiguousarray(np.repeat(x1, int(throughput_batch), axis=0))
    timed = _time_calls(lambda: session.run(None, {name: x1}), lambda: session.run(None, {name: xb}),
                        runs, warmup, mem)
    return _latency_report({"backend": "onnxruntime", "provider": "CPUExecutionProvider"}, timed,
                           int(throughput_batch), mem, runs=runs, warmup=warmup, num_threads=num_threads,
                           image_size=image_size)


def measure_torch_latency(
    model: torch.nn.Module,
    image_size: int,
    runs: int = MIN_LATENCY_RUNS,
    num_threads: int = 2,
    *,
    warmup: int = WARMUP_RUNS,
    sample: torch.Tensor | None = None,
    throughput_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """p50/p95 of single-image torch eager calls (CPU, inference mode) and batch-32 throughput."""
    _check_runs(runs)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        model = model.eval().cpu()
        x1 = sample[:1].float().cpu() if sample is not None else torch.rand(
            (1, 3, image_size, image_size), generator=torch.Generator().manual_seed(0)
        )
        xb = x1.repeat(int(throughput_batch), 1, 1, 1)
        mem = _PeakRss()
        with torch.inference_mode():
            timed = _time_calls(lambda: model(x1), lambda: model(xb), runs, warmup, mem)
    finally:
        torch.set_num_threads(prev_threads)
    return _latency_report({"backend": "torch"}, timed, int(throughput_batch), mem, runs=runs, warmup=warmup,
                           num_threads=num_threads, image_size=image_size)


def read_encoded_images(split_path: str | Path, split: str, limit: int = MAX_SERVED_IMAGES) -> list[bytes]:
    """The encoded bytes of up to ``limit`` image files of ``split`` (sorted by path), read once so
    the timed calls pay for decoding, not for the disk."""
    rows = pl.read_parquet(split_path, columns=["split", "path"]).filter(pl.col("split") == split)
    paths = sorted(set(rows["path"].to_list()))[: max(1, int(limit))]
    if not paths:
        raise ValueError(f"split table {split_path} has no image files with split == {split!r} to time")
    return [Path(p).read_bytes() for p in paths]


def _time_interleaved(served, model, runs: int, warmup: int, mem: "_PeakRss") -> tuple[list[float], list[float]]:
    """Warm up both, then time ``runs`` calls of ``served(i)`` and ``model(i)`` with perf_counter,
    alternating, so that both see the same machine load. Returns seconds per call of each."""
    for i in range(warmup):
        served(i)
        model(i)
    mem.sample()
    served_s, model_s = [], []
    for i in range(runs):
        t = time.perf_counter()
        served(i)
        t1 = time.perf_counter()
        model(i)
        t2 = time.perf_counter()
        served_s.append(t1 - t)
        model_s.append(t2 - t1)
    mem.sample()
    return served_s, model_s


def _model_only(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1000.0
    return {"model_latency_p50_ms": float(np.percentile(ms, 50)), "model_latency_p95_ms": float(np.percentile(ms, 95)),
            "model_latency_mean_ms": float(ms.mean())}


def _served_report(backend: dict[str, Any], served: list[float], model: list[float], thr: tuple[int, float],
                   mem: "_PeakRss", *, runs: int, warmup: int, num_threads: int, image_size: int, batch: int,
                   n_images: int, max_pixels: int) -> dict[str, Any]:
    iters, thr_s = thr
    out: dict[str, Any] = {**backend, **_summarise(served, iters * batch, thr_s), **_model_only(model)}
    peak = mem.increase_mb()
    if peak is not None:
        out["peak_memory_mb"] = peak
    out.update(runs=runs, warmup=warmup, batch=1, throughput_batch=batch, num_threads=int(num_threads),
               image_size=int(image_size), timed_path=SERVED_PATH, model_timed_path=MODEL_PATH,
               throughput_path="model call alone, batched", served_images=int(n_images), max_pixels=int(max_pixels))
    return out


def _time_throughput(batched, single_ms: float, mem: "_PeakRss") -> tuple[int, float]:
    for _ in range(2):
        batched()
    iters = _throughput_iters(single_ms)
    t = time.perf_counter()
    for _ in range(iters):
        batched()
        mem.sample()
    return iters, time.perf_counter() - t


def measure_served_latency(
    onnx_path: str | Path,
    encoded: Sequence[bytes],
    runs: int = MIN_LATENCY_RUNS,
    num_threads: int = 2,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warmup: int = WARMUP_RUNS,
    throughput_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """p50/p95 of what a served request pays at batch 1, in the service's own code: the encoded
    image bytes (cycled through ``encoded``) -> :func:`~conveyor.serving.preprocess.decode_request`
    -> :meth:`~conveyor.serving.model.LoadedModel.predict` (model input, onnxruntime, the kind's
    ``decode_prediction``). ``model_latency_*`` times ``session.run`` alone on the same
    preprocessed inputs; ``throughput_ips`` is the batched model call."""
    _check_runs(runs)
    if not encoded:
        raise ValueError("the served-path latency needs at least one encoded image")
    mem = _PeakRss()
    model = LoadedModel(0, onnx_path, threads=num_threads)
    mem.sample()
    n = len(encoded)
    inputs = [decode_request(b, max_pixels).input(model.image_size) for b in encoded]
    name = model.input_name
    served, model_times = _time_interleaved(lambda i: model.predict(decode_request(encoded[i % n], max_pixels)),
                                            lambda i: model.session.run(None, {name: inputs[i % n]}),
                                            runs, warmup, mem)
    xb = np.ascontiguousarray(np.concatenate([inputs[i % n] for i in range(int(throughput_batch))]))
    thr = _time_throughput(lambda: model.session.run(None, {name: xb}), float(np.median(model_times)) * 1000.0, mem)
    return _served_report({"backend": "onnxruntime", "provider": "CPUExecutionProvider"}, served, model_times, thr,
                          mem, runs=runs, warmup=warmup, num_threads=num_threads, image_size=model.image_size,
                          batch=int(throughput_batch), n_images=n, max_pixels=max_pixels)


def measure_served_torch_latency(
    module: torch.nn.Module,
    task: str,
    classes: Sequence[str],
    image_size: int,
    output_names: Sequence[str],
    encoded: Sequence[bytes],
    runs: int = MIN_LATENCY_RUNS,
    num_threads: int = 2,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warmup: int = WARMUP_RUNS,
    throughput_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """The served path of :func:`measure_served_latency` with the torch eager module in place of
    onnxruntime (no ONNX export): decode_request -> model input -> module -> the kind's
    ``decode_prediction`` on the outputs named ``output_names``."""
    _check_runs(runs)
    if not encoded:
        raise ValueError("the served-path latency needs at least one encoded image")
    kind, classes, size, n = kinds.get(task), list(classes), int(image_size), len(encoded)
    names = list(output_names)

    def forward(x: np.ndarray) -> dict[str, np.ndarray]:
        out = module(torch.from_numpy(x))
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return {k: v.detach().numpy() for k, v in zip(names, out)}

    def served(i: int):
        req = decode_request(encoded[i % n], max_pixels)
        return kind.decode_prediction(forward(req.input(size)), classes, size, req.width, req.height)

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        module = module.eval().cpu()
        mem = _PeakRss()
        with torch.inference_mode():
            inputs = [torch.from_numpy(decode_request(b, max_pixels).input(size)) for b in encoded]
            served_times, model_times = _time_interleaved(served, lambda i: module(inputs[i % n]), runs, warmup,
                                                          mem)
            xb = torch.cat([inputs[i % n] for i in range(int(throughput_batch))])
            thr = _time_throughput(lambda: module(xb), float(np.median(model_times)) * 1000.0, mem)
    finally:
        torch.set_num_threads(prev_threads)
    return _served_report({"backend": "torch"}, served_times, model_times, thr, mem, runs=runs, warmup=warmup,
                          num_threads=num_threads, image_size=size, batch=int(throughput_batch), n_images=n,
                          max_pixels=max_pixels)


# ---- ONNX -------------------------------------------------------------------------------------
def export_onnx_model(
    module: torch.nn.Module,
    path: str | Path,
    example: torch.Tensor,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """TorchScript-based export (``dynamo=False``), opset 17, written atomically to ``path``."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        module = module.eval().cpu()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based exporter"
            torch.onnx.export(
                module,
                (example.cpu(),),
                tmp,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        model_proto = onnx.load(tmp)
        onnx.checker.check_model(model_proto)
        for key, value in (metadata or {}).items():
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.save(model_proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_onnx_batched(session, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)


@torch.no_grad()
def _run_torch_batched(module: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    outs = [module(inputs[i : i + batch_size]).float().numpy() for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)


# ---- the stage --------------------------------------------------------------------------------
def evaluate(
    checkpoint_path: str | Path,
    split_path: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    num_threads: int = 2,
    latency_runs: int = 200,
    export_onnx: bool = True,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    compare_classes: Sequence[str] | None = None,
) -> EvalResult:
    """Score a checkpoint on one split, export and check ONNX, measure latency, write metrics.json.

    ``latency_runs=0`` skips the latency measurement (for quick checks); otherwise at least 200
    timed single-image calls are made, on the served path (the split's encoded images through the
    service's decode, preprocessing, model call and ``decode_prediction``; ``max_pixels`` is the
    service's decode limit, ``spec.data.max_pixels``). With ``export_onnx=False`` the model call is
    torch eager (``latency["backend"] == "torch"``).

    Rows with classes the model does not know (new since it was trained) are left out of its
    evaluation and recorded in ``excluded``. With ``compare_classes`` (the classes of the model this
    one is compared with), the metrics on the rows whose classes are all common land in ``common``.
    """
    if latency_runs != 0:
        _check_runs(latency_runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_checkpoint(checkpoint_path)
    adapter = kinds.get(meta.get("task") or kinds.LEGACY_TASK).training
    classes = list(meta["classes"])
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    task = meta.get("task") or kinds.LEGACY_TASK
    tmp = tempfile.TemporaryDirectory(prefix="conveyor-eval-")
    try:
        source = split_path
        known = known_rows(source, split, task, classes, Path(tmp.name) / "known.parquet")
        split_path = known.split_path  # the rows the model can be scored on
        data = adapter.load_split(split_path, classes, split, int(meta["image_size"]), progress=progress)
        if len(data) == 0:
            left_out = f" (all {known.excluded_rows} have classes the model does not know: {known.excluded_classes})" \
                if known.excluded_rows else ""
            raise ValueError(f"split table {source} has no rows with split == {split!r}{left_out}")
        outputs = adapter.predict(model, data, norm=(meta["mean"], meta["std"]), device="cpu")
        scored = adapter.evaluate_outputs(outputs, data, classes)
        common: dict[str, Any] = {}
        if compare_classes is not None:
            both = [c for c in classes if c in {str(x) for x in compare_classes}]
            sub = known_rows(split_path, split, task, both, Path(tmp.name) / "common.parquet") if both else None
            if sub is not None and sub.excluded_rows:
                cdata = adapter.load_split(sub.split_path, classes, split, int(meta["image_size"]), progress=progress)
                if len(cdata):
                    cscored = adapter.evaluate_outputs(
                        adapter.predict(model, cdata, norm=(meta["mean"], meta["std"]), device="cpu"), cdata, classes)
                    common = {"classes": both, "left_out": sub.excluded_classes, "rows": len(cdata),
                              "left_out_rows": sub.excluded_rows, "metrics": dict(cscored.metrics)}
        predictions_path = write_parquet_atomic(pl.DataFrame(adapter.prediction_records(outputs, data, classes)),
                                                out_dir / PREDICTIONS_NAME)
        deploy = adapter.deploy_module(model, meta)
        params_m = sum(p.numel() for p in model.parameters()) / 1e6

        onnx_path: Path | None = None
        size_mb: float
        latency: dict[str, Any] = {}
        if export_onnx:
            onnx_path = export_onnx_model(
                deploy,
                out_dir / ONNX_NAME,
                adapter.example_input(meta, 1),
                input_names=list(adapter.ONNX_INPUT_NAMES),
                output_names=list(adapter.ONNX_OUTPUT_NAMES),
                dynamic_axes=adapter.ONNX_DYNAMIC_AXES,
                metadata=adapter.onnx_metadata(meta) if hasattr(adapter, "onnx_metadata") else None,
            )
            size_mb = onnx_path.stat().st_size / _MB
            # Latency first, in a fresh session, so its memory figure is not hidden by the parity run.
            if latency_runs:
                latency = measure_served_latency(
                    onnx_path, read_encoded_images(split_path, split), latency_runs, num_threads,
                    max_pixels=max_pixels, throughput_batch=getattr(adapter, "THROUGHPUT_BATCH", THROUGHPUT_BATCH))
            session = onnx_session(onnx_path, num_threads)
            inputs = adapter.deploy_inputs(data)
            # Adapters whose outputs are not one array per batch (detection) run image by image.
            ort_out = getattr(adapter, "run_onnx", run_onnx_batched)(session, inputs.numpy())
            torch_out = getattr(adapter, "run_torch", _run_torch_batched)(deploy, inputs)
            del session
            diff = float(adapter.onnx_parity(torch_out, ort_out))
            if not diff <= adapter.PARITY_ATOL:
                onnx_path.unlink(missing_ok=True)
                raise OnnxParityError(
                    f"ONNX output disagrees with torch on split {split!r}: max abs diff {diff:.3g} > "
                    f"{adapter.PARITY_ATOL:g}; the export is not deployable"
                )
            onnx_diff: float | None = diff
        else:
            onnx_diff = None
            size_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / _MB
            if latency_runs:
                latency = measure_served_torch_latency(
                    deploy, task, classes, int(meta["image_size"]),
                    list(adapter.ONNX_OUTPUT_NAMES), read_encoded_images(split_path, split), latency_runs,
                    num_threads, max_pixels=max_pixels,
                    throughput_batch=getattr(adapter, "THROUGHPUT_BATCH", THROUGHPUT_BATCH))
        latency["model_size_mb"] = round(size_mb, 4)
        latency["params_m"] = round(params_m, 4)
        if not latency.get("backend"):
            latency["backend"] = "none (latency_runs=0)"

        metrics = dict(scored.metrics)
        for key in LATENCY_METRICS:
            if key in latency and latency[key] is not None:
                metrics[key] = float(latency[key])
        metrics_path = out_dir / METRICS_NAME
        result = EvalResult(
            metrics=metrics,
            per_class=scored.per_class,
            confusion_matrix=scored.confusion_matrix,
            metrics_path=str(metrics_path),
            onnx_path=str(onnx_path) if onnx_path is not None else None,
            onnx_max_abs_diff=onnx_diff,
            split=split,
            n_images=len(data),
            latency=latency,
            predictions_path=str(predictions_path),
            curves=dict(getattr(scored, "curves", None) or {}),
            classes=classes,
            excluded=known.record(),
            common=common,
        )
        atomic_write_json(metrics_path, result.to_dict())
        return result
    finally:
        torch.set_num_threads(prev_threads)
        tmp.cleanup()
