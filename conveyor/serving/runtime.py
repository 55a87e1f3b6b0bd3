"""The inference service's library: registry models on onnxruntime, preprocessing, routing, logs.

:class:`InferenceService` serves the registry's champion (``Registry.alias(name)`` is the source
of truth) and, while a rollout runs, the challenger named in ``<workspace>/state/<name>/rollout.json``
(written by the rollout controller). It polls both every ``poll_s`` seconds; a new model is loaded
into an onnxruntime session and warmed up *before* the routing switches to it, and the switch is
one reference swap under a lock, so a request keeps the models it started with.

Routing (only a rollout whose ``status`` is ``running`` involves the challenger):

* ``shadow``: the champion answers; the challenger gets a copy in a thread pool, logged with role
  ``shadow`` and the same prediction id, never returned; its failures never touch the answer;
* ``canary``: the challenger answers ``traffic`` of the requests, sticky by a hash of the sticky
  header's value when the request has one (same key and rollout, same model), random otherwise;
* ``blue_green``: once the challenger is loaded and warmed, it answers every request.

Preprocessing is the training decode (:func:`conveyor.kinds.classification.decode_image`): safe
decode with the spec's pixel limit, EXIF transpose, ``conveyor.data.imageio.to_rgb``, bilinear resize
to the model's side, float32 in [0, 1]. The ONNX file describes itself (metadata
``conveyor.task``, ``conveyor.classes``, ``conveyor.image_size``).

Every answer (and every shadow copy) is a row of the prediction log, and every rejected request a
row of the request quarantine (:mod:`conveyor.serving.log`). Nothing here imports torch or
FastAPI (:mod:`conveyor.serving.http` is the HTTP layer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from conveyor.monitoring.feedback import BACKGROUND
from conveyor.data.imageio import DecodeError, features_from_prepared, open_image, prepare_features
from conveyor.serving.log import PredictionLog, RequestQuarantine
from conveyor.release.registry import Registry
from conveyor.release.rollout import RolloutState, rollout_path
from conveyor.core.io import atomic_write_json, onnx_session
from conveyor.core.timeutil import utcnow as _now
from conveyor.core.workspace import Workspace

logger = logging.getLogger("conveyor.serving.runtime")

MODEL_FILE = "model.onnx"
MAX_BODY_BYTES = 20 * 2**20
REQUEST_ID_HEADER = "X-Request-Id"
CAMERA_HEADER = "X-Camera"
DEFAULT_STICKY_HEADER = "X-Request-Key"
MAX_HEADER_CHARS = 200
# conveyor.kinds.detection.model.SCORE_THRESHOLD, repeated so that serving does not import torch.
SCORE_THRESHOLD = 0.5
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]*")


# ---- where things live ------------------------------------------------------------------------
def service_state_path(ws: Workspace, name: str) -> Path:
    """The service's own state, written on every poll for the rollout controller."""
    return ws.state(name) / "service.json"


# ---- requests ---------------------------------------------------------------------------------
class RequestError(Exception):
    """A request the service answers with an error: ``status`` is the HTTP status, ``reason`` a code."""

    def __init__(self, status: int, reason: str, detail: str, size: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail, self.size = status, reason, detail, size
        self.request_id: str | None = None  # set once the request has an id

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "reason": self.reason, "request_id": self.request_id}


@dataclass
class RequestContext:
    request_id: str
    camera: str | None
    headers: Mapping[str, str]
    received_at: datetime
    t0: float
    content_type: str | None = None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header value, case-insensitively (starlette's Headers or a plain dict)."""
    value = headers.get(name)
    if value is None:
        low = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == low), None)
    return value


def _checked_header(name: str, value: str, pattern: re.Pattern | None = None) -> str:
    value = value.strip()
    if not value or len(value) > MAX_HEADER_CHARS or not value.isprintable() or (
            pattern is not None and not pattern.fullmatch(value)):
        raise RequestError(400, "bad_header", f"{name} must be 1 to {MAX_HEADER_CHARS} printable characters"
                           + (" (letters, digits and ._:@/+=-)" if pattern is not None else "")
                           + f"; got {value[:40]!r}")
    return value


def extract_upload(body: bytes, content_type: str | None, field_name: str = "file") -> bytes:
    """The image bytes of a request: the raw body, or the ``file`` field of a multipart form."""
    if not content_type or not content_type.lower().startswith("multipart/"):
        return body
    params = Message()
    params["content-type"] = content_type
    boundary = params.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(400, "bad_multipart", "multipart body without a boundary parameter", len(body))
    parts = body.split(b"--" + boundary.encode("latin-1"))
    for part in parts[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = Message()
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon and key.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        if disposition.get_param("name", header="content-disposition") == field_name:
            return content[:-2] if content.endswith(b"\r\n") else content
    raise RequestError(400, "missing_file", f"multipart body has no {field_name!r} field", len(body))


# ---- preprocessing ----------------------------------------------------------------------------
class DecodedRequest:
    """One request's image, decoded once: RGB pixels, image statistics, model inputs per side."""

    def __init__(self, image, stats: dict[str, float], fmt: str | None = None):
        self.image = image
        self.format = fmt
        self.capture: str | None = None  # where the service kept the image (relative to the captures folder)
        self.width, self.height = image.size
        self.stats = stats
        self._inputs: dict[int, np.ndarray] = {}

    def input(self, size: int) -> np.ndarray:
        x = self._inputs.get(size)
        if x is None:
            x = self._inputs[size] = model_input(self.image, size)
        return x


def model_input(image, size: int) -> np.ndarray:
    """float32 (1, 3, S, S) in [0, 1], exactly what training decodes for the same image."""
    from PIL import Image

    if image.size != (size, size):
        image = image.resize((size, size), resample=Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(arr.astype(np.float32) / np.float32(255.0))


def image_stats(image) -> dict[str, float]:
    f = features_from_prepared([prepare_features(image, None)], None)[0]
    return {"brightness": f.brightness, "contrast": f.contrast, "saturation": f.saturation, "hue": f.hue,
            "sharpness": f.sharpness}


def decode_request(data: bytes, max_pixels: int, name: str = "<request>") -> DecodedRequest:
    """Decode request bytes safely (raises :class:`conveyor.data.imageio.DecodeError`)."""
    opened = open_image(data, max_pixels=max_pixels, name=name)
    return DecodedRequest(opened.image, image_stats(opened.image), opened.format)


# ---- captured images --------------------------------------------------------------------------
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


def captures_dir(ws: Workspace, name: str) -> Path:
    """Images the service kept, content-addressed: ``<sha256[:2]>/<sha256>.<ext>``."""
    return ws.root / "monitoring" / name / "captures"


def should_capture(request_id: str, share: float) -> bool:
    """Whether to keep a request's image: a stable draw from the request id (same id, same answer)."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def capture_image(root: Path, data: bytes, fmt: str | None) -> str:
    """Keep the request's bytes once per content; returns the path relative to ``root``."""
    digest = hashlib.sha256(data).hexdigest()
    rel = f"{digest[:2]}/{digest}{_EXTENSIONS.get((fmt or '').upper(), '.img')}"
    path = root / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return rel


# ---- models -----------------------------------------------------------------------------------
class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Prediction:
    payload: dict[str, Any]  # the task's part of the answer
    features: dict[str, Any]  # the prediction log's predicted / confidence / ... columns


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def classification_result(outputs: dict[str, np.ndarray], classes: list[str], size: int, width: int,
                          height: int) -> Prediction:
    p = _softmax(outputs["logits"][0], 0)
    i = int(p.argmax())
    return Prediction({"label": classes[i], "confidence": float(p[i]),
                       "probabilities": {c: float(v) for c, v in zip(classes, p)}},
                      {"predicted": classes[i], "confidence": float(p[i])})


def detection_result(outputs: dict[str, np.ndarray], classes: list[str], size: int, width: int,
                     height: int) -> Prediction:
    """Detections at ``SCORE_THRESHOLD``, boxes scaled from the S x S input to the original pixels.
    ``predicted`` is the top detection's class (``background`` without any), as feedback names it."""
    boxes = np.asarray(outputs["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(outputs["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(outputs["labels"]).reshape(-1).astype(np.int64)
    keep = np.flatnonzero(scores >= SCORE_THRESHOLD)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    scale = np.array([width / size, height / size, width / size, height / size])
    limit = np.array([width, height, width, height], dtype=np.float64)
    objects = []
    for j in keep:
        box = np.clip(boxes[j] * scale, 0.0, limit)
        label = classes[labels[j]] if 0 <= labels[j] < len(classes) else str(int(labels[j]))
        objects.append({"label": label, "score": float(scores[j]), "box": [round(float(v), 2) for v in box]})
    kb = boxes[keep]
    sides = np.sqrt(np.clip(kb[:, 2] - kb[:, 0], 0, None) * np.clip(kb[:, 3] - kb[:, 1], 0, None)) / size
    return Prediction({"objects": objects, "count": len(objects)}, {
        "predicted": objects[0]["label"] if objects else BACKGROUND,
        "confidence": float(scores.max()) if scores.size else 0.0,
        "predicted_objects": float(len(objects)),
        "predicted_object_size": float(sides.mean()) if sides.size else None,
    })


def segmentation_result(outputs: dict[str, np.ndarray], classes: list[str], size: int, width: int,
                        height: int) -> Prediction:
    """Pixel share per class, the share not predicted as class 0 (background), mean max probability."""
    p = _softmax(outputs["logits"][0], 0)
    idx = p.argmax(0)
    share = np.bincount(idx.ravel(), minlength=len(classes))[: len(classes)] / idx.size
    confidence = float(p.max(0).mean())
    foreground = float(1.0 - share[0])
    top = int(share[1:].argmax()) + 1 if len(classes) > 1 and foreground > 0 else 0
    return Prediction({"classes": {c: float(s) for c, s in zip(classes, share)}, "foreground": foreground,
                       "confidence": confidence},
                      {"predicted": classes[top] if top else BACKGROUND, "confidence": confidence,
                       "predicted_foreground": foreground})


RESULTS: dict[str, Callable[..., Prediction]] = {
    "classification": classification_result, "detection": detection_result, "segmentation": segmentation_result,
}
OUTPUTS = {"classification": ("logits",), "detection": ("boxes", "scores", "labels"), "segmentation": ("logits",)}


class LoadedModel:
    """One registry version in an onnxruntime session, described by its ONNX metadata."""

    def __init__(self, version: int, path: str | Path, threads: int = 1):
        self.version = int(version)
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"v{version}: {self.path} does not exist")
        try:
            self.session = onnx_session(self.path, threads)
        except Exception as err:  # noqa: BLE001 - any damaged or foreign file
            raise ModelLoadError(f"v{version}: onnxruntime cannot load {self.path}: {err}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.task = meta["conveyor.task"]
            self.classes = [str(c) for c in json.loads(meta["conveyor.classes"])]
            self.image_size = int(meta["conveyor.image_size"])
        except (KeyError, ValueError, TypeError) as err:
            raise ModelLoadError(f"v{version}: {self.path} lacks conveyor metadata ({err}); export it with "
                                 f"conveyor.model.evaluate") from None
        if self.task not in RESULTS:
            raise ModelLoadError(f"v{version}: unknown task {self.task!r} in {self.path}")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = [o for o in OUTPUTS[self.task] if o not in self.output_names]
        if missing:
            raise ModelLoadError(f"v{version}: a {self.task} graph needs outputs {missing}; it has {self.output_names}")

    def predict(self, request: DecodedRequest) -> Prediction:
        outs = self.session.run(None, {self.input_name: request.input(self.image_size)})
        return RESULTS[self.task](dict(zip(self.output_names, outs)), self.classes, self.image_size,
                                  request.width, request.height)

    def warm_up(self, runs: int = 3) -> None:
        """A few calls on a synthetic image, so the first request does not pay for allocation."""
        from PIL import Image

        rng = np.random.default_rng(self.version)
        pixels = rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)
        request = DecodedRequest(Image.fromarray(pixels, "RGB"), {})
        for _ in range(max(1, runs)):
            self.predict(request)


# ---- rollout state and routing ----------------------------------------------------------------
def read_rollout(path: str | Path) -> RolloutState | None:
    """The rollout state, None without the file; ValueError for a file that cannot be used."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


@dataclass(frozen=True, eq=False)
class Routing:
    """What the service serves now; replaced as a whole, never changed in place."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None  # loaded and warmed, while a rollout runs
    rollout: RolloutState | None = None

    @property
    def sticky_header(self) -> str:
        return (self.rollout.sticky_header if self.rollout else None) or DEFAULT_STICKY_HEADER

    @property
    def traffic(self) -> float:
        """The share of requests the challenger answers now."""
        r = self.rollout
        if self.challenger is None or r is None or not r.running or r.strategy == "shadow":
            return 0.0
        return 1.0 if r.strategy == "blue_green" else r.traffic

    def key(self) -> tuple:
        return (self.champion and self.champion.version, self.challenger and self.challenger.version, self.rollout)

    def summary(self) -> tuple:
        """What routing does (without the rollout's timestamps)."""
        r = self.rollout
        return self.key()[:2] + ((r.rollout_id, r.strategy, r.status, self.traffic) if r else ())


def sticky_fraction(rollout_id: str, key: str) -> float:
    """A key's fixed position in [0, 1) for one rollout: the same key always lands the same side."""
    digest = hashlib.sha256(f"{rollout_id}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def route(routing: Routing, key: str | None, rng: random.Random) -> tuple[LoadedModel, str, LoadedModel | None]:
    """(model that answers, its role, model that gets a shadow copy or None)."""
    champion, challenger, r = routing.champion, routing.challenger, routing.rollout
    assert champion is not None
    if challenger is None or r is None or not r.running:
        return champion, "champion", None
    if r.strategy == "shadow":
        return champion, "champion", challenger
    if r.strategy == "blue_green":
        return challenger, "challenger", None
    u = sticky_fraction(r.rollout_id, key) if key else rng.random()
    return (challenger, "challenger", None) if u < r.traffic else (champion, "champion", None)


# ---- metrics ----------------------------------------------------------------------------------
class ServiceMetrics:
    """Prometheus metrics in their own CollectorRegistry (several services may share a process)."""

    LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("conveyor_requests", "Prediction requests by model version, role and outcome",
                                ["model_version", "role", "status"], registry=self.registry)
        self.latency = Histogram("conveyor_request_latency_seconds", "Time to answer a prediction (decode, "
                                 "model, postprocessing)", ["model_version", "role"], buckets=self.LATENCY_BUCKETS,
                                 registry=self.registry)
        self.confidence = Histogram("conveyor_prediction_confidence", "Confidence of the predictions",
                                    ["model_version"], buckets=self.CONFIDENCE_BUCKETS, registry=self.registry)
        self.model_info = Gauge("conveyor_model_info", "Models served now (1 per version and role)",
                                ["version", "role"], registry=self.registry)
        self.shadow_dropped = Counter("conveyor_shadow_dropped", "Shadow copies skipped because the queue was full",
                                      registry=self.registry)

    def observe(self, version: int | str, role: str, status: str, latency_s: float | None = None,
                confidence: float | None = None) -> None:
        self.requests.labels(str(version), role, status).inc()
        if latency_s is not None:
            self.latency.labels(str(version), role).observe(latency_s)
        if confidence is not None:
            self.confidence.labels(str(version)).observe(confidence)

    def set_models(self, routing: Routing) -> None:
        self.model_info.clear()
        for role, m in (("champion", routing.champion), ("challenger", routing.challenger)):
            if m is not None:
                self.model_info.labels(str(m.version), role).set(1)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---- the service ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceConfig:
    threads: int = 1  # onnxruntime intra-op threads per model; requests run in parallel threads
    poll_s: float = 1.0
    flush_rows: int = 200
    flush_s: float = 5.0
    max_body: int = MAX_BODY_BYTES
    warmup_runs: int = 3
    shadow_workers: int = 2
    shadow_queue: int = 64  # shadow copies waiting at most; more are skipped (counted)
    seed: int = 0  # canary draws for requests without a sticky key
    host: str = "127.0.0.1"  # recorded in service.json
    port: int = 8080

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not self.poll_s > 0:
            raise ValueError(f"poll must be > 0 seconds, got {self.poll_s}")
        if self.max_body < 1 or self.flush_rows < 1 or not self.flush_s > 0:
            raise ValueError("max_body, flush_rows and flush_s must be positive")


class InferenceService:
    """Models, routing, logs and metrics of one pipeline's inference service (no HTTP here)."""

    def __init__(self, spec: Any, workspace: Workspace | str | Path, config: ServiceConfig | None = None):
        self.spec = spec
        self.name = spec.name
        self.ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.config = config or ServiceConfig()
        self.registry = Registry(self.ws.registry)
        self.metrics = ServiceMetrics()
        self.log = PredictionLog(self.ws, self.name, self.config.flush_rows, self.config.flush_s)
        self.quarantine = RequestQuarantine(self.ws, self.name, self.config.flush_rows, self.config.flush_s)
        self.rollout_path = rollout_path(self.ws, self.name)
        self.state_path = service_state_path(self.ws, self.name)
        self.captures = captures_dir(self.ws, self.name)
        self.capture_share = spec.deploy.capture
        self._routing = Routing()
        self._models: dict[int, LoadedModel] = {}
        self._load_errors: dict[int, str] = {}
        self._rollout: RolloutState | None = None
        self._rollout_error: str | None = None
        self._rng = random.Random(self.config.seed)
        self._swap_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._shadow_pool: ThreadPoolExecutor | None = None
        self._shadow_slots = threading.BoundedSemaphore(self.config.shadow_queue)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the log writers, the shadow pool and the poller (which loads the models at once)."""
        if self._poller is not None:
            return
        self._stop.clear()
        self.log.buffer.start()
        self.quarantine.buffer.start()
        self._shadow_pool = ThreadPoolExecutor(self.config.shadow_workers, thread_name_prefix="conveyor-shadow")
        self._poller = threading.Thread(target=self._poll, name="conveyor-serving-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop polling, finish the shadow copies, write every buffered row (no row is lost)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        if self._shadow_pool is not None:
            self._shadow_pool.shutdown(wait=True)
            self._shadow_pool = None
        self.log.buffer.close()
        self.quarantine.buffer.close()
        try:
            self._write_state(self._routing, stopped=True)
        except OSError:
            logger.exception("could not write %s", self.state_path)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep serving what is loaded; try again next poll
                logger.exception("refreshing the served models failed")
            self._stop.wait(self.config.poll_s)

    @property
    def routing(self) -> Routing:
        return self._routing

    @property
    def ready(self) -> bool:
        return self._routing.champion is not None

    # ---- models ---------------------------------------------------------------------------------
    def _model(self, version: int) -> LoadedModel | None:
        if version in self._models:
            return self._models[version]
        try:
            path = self.registry.get(self.name, version).file(MODEL_FILE)
            t = time.perf_counter()
            model = LoadedModel(version, path, self.config.threads)
            if model.task != self.spec.task:
                raise ModelLoadError(f"v{version} is a {model.task} model; the spec's task is {self.spec.task}")
            model.warm_up(self.config.warmup_runs)
        except Exception as err:  # noqa: BLE001 - a version that cannot serve is reported, never switched to
            message = f"{type(err).__name__}: {err}"
            if self._load_errors.get(version) != message:
                logger.error("cannot serve %s v%d: %s", self.name, version, message)
            self._load_errors = {**self._load_errors, version: message}  # replaced, never changed: read by requests
            return None
        self._load_errors = {k: v for k, v in self._load_errors.items() if k != version}
        logger.info("loaded and warmed %s v%d (%s, %d px) in %.0f ms", self.name, version, model.task,
                    model.image_size, (time.perf_counter() - t) * 1000)
        return model

    def _read_rollout(self) -> RolloutState | None:
        try:
            self._rollout = read_rollout(self.rollout_path)
            self._rollout_error = None
        except (OSError, ValueError) as err:  # keep routing as it was until the file is fixed
            if self._rollout_error != str(err):
                logger.error("ignoring an unusable rollout state, routing unchanged: %s", err)
            self._rollout_error = str(err)
        return self._rollout

    def refresh(self) -> Routing:
        """Read the champion alias and the rollout state; load new models first, then switch."""
        with self._refresh_lock:
            current = self._routing
            wanted = self.registry.alias(self.name)
            rollout = self._read_rollout()
            champion = self._model(wanted) if wanted is not None else None
            if champion is None:
                champion = current.champion  # keep serving the last good champion
            target = rollout.challenger if rollout is not None and rollout.running else None
            challenger = None
            if target is not None and champion is not None and target != champion.version:
                challenger = self._model(target)
            new = Routing(champion, challenger, rollout)
            if new.key() != current.key():
                with self._swap_lock:
                    self._routing = new
                self.metrics.set_models(new)
            if new.summary() != current.summary():
                logger.info("serving %s: champion %s, challenger %s (%s)", self.name,
                            f"v{champion.version}" if champion else "none",
                            f"v{challenger.version}" if challenger else "none",
                            f"{rollout.strategy} {rollout.status}" if rollout else "no rollout")
            # Unload what is no longer served; requests in flight still hold their own references.
            self._models = {m.version: m for m in (new.champion, new.challenger) if m is not None}
            self._write_state(new, wanted=wanted)
            return new

    def _write_state(self, routing: Routing, *, wanted: int | None = None, stopped: bool = False) -> None:
        r = routing.rollout
        atomic_write_json(self.state_path, {
            "pid": os.getpid(), "host": self.config.host, "port": self.config.port,
            "updated_at": _now().isoformat(timespec="milliseconds"),
            "champion": routing.champion.version if routing.champion else None,
            "challenger": routing.challenger.version if routing.challenger else None,
            "ready": [] if stopped else sorted(self._models),
            "strategy": r.strategy if r else None, "rollout_id": r.rollout_id if r else None,
            "rollout_status": r.status if r else None, "traffic": routing.traffic,
            "registry_champion": wanted if not stopped else None, "stopped": stopped,
            "load_errors": {str(k): v for k, v in sorted(self._load_errors.items())},
        })

    def status(self) -> dict[str, Any]:
        routing = self._routing
        r = routing.rollout
        return {
            "pipeline": self.name, "task": self.spec.task, "ready": self.ready,
            "champion": routing.champion.version if routing.champion else None,
            "challenger": routing.challenger.version if routing.challenger else None,
            "strategy": r.strategy if r else None, "traffic": routing.traffic,
            "rollout_id": r.rollout_id if r else None, "rollout_status": r.status if r else None,
            "sticky_header": routing.sticky_header, "loaded": sorted(self._models),
            "load_errors": {str(k): v for k, v in sorted(self._load_errors.items())},
            "rollout_error": self._rollout_error, "rollout": r.to_dict() if r else None,
        }

    # ---- requests -------------------------------------------------------------------------------
    def context(self, headers: Mapping[str, str], content_type: str | None = None) -> RequestContext:
        """The request's id (``X-Request-Id`` or a new one) and camera; a bad header is rejected."""
        ctx = RequestContext(uuid.uuid4().hex, None, headers, _now(), time.perf_counter(), content_type)
        try:
            rid = header(headers, REQUEST_ID_HEADER)
            if rid is not None:
                ctx.request_id = _checked_header(REQUEST_ID_HEADER, rid, _REQUEST_ID_RE)
            camera = header(headers, CAMERA_HEADER)
            if camera is not None:
                ctx.camera = _checked_header(CAMERA_HEADER, camera)
        except RequestError as err:
            raise self.reject(ctx, err) from None
        return ctx

    def reject(self, ctx: RequestContext, err: RequestError) -> RequestError:
        """Count and quarantine a rejected request; returns the error for the caller to raise."""
        err.request_id = ctx.request_id
        self.metrics.observe("none", "none", "bad_request")
        self.quarantine.add({"request_id": ctx.request_id, "timestamp": ctx.received_at, "reason": err.reason,
                             "detail": err.detail, "size": err.size, "content_type": ctx.content_type,
                             "camera": ctx.camera})
        logger.info("rejected request %s (%d %s): %s", ctx.request_id, err.status, err.reason, err.detail)
        return err

    def predict(self, data: bytes, ctx: RequestContext) -> dict[str, Any]:
        """Decode, route, run and log one request; raises :class:`RequestError` for 400 / 500 / 503."""
        routing = self._routing  # this request's models, whatever a switch does meanwhile
        if routing.champion is None:
            self.metrics.observe("none", "none", "unavailable")
            err = RequestError(503, "not_ready", f"no champion of {self.name!r} is loaded yet")
            err.request_id = ctx.request_id
            raise err
        try:
            decoded = decode_request(data, self.spec.data.max_pixels, name=f"request {ctx.request_id}")
        except DecodeError as err:
            raise self.reject(ctx, RequestError(400, err.reason, err.detail, len(data))) from None
        if should_capture(ctx.request_id, self.capture_share) and self._may_keep(ctx.camera):
            try:
                decoded.capture = capture_image(self.captures, data, decoded.format)
            except OSError as err:  # a full disk costs the capture, never the answer
                logger.warning("could not keep the image of request %s: %s", ctx.request_id, err)
        key = header(ctx.headers, routing.sticky_header)
        key = key[:MAX_HEADER_CHARS] if key else None
        model, role, shadow = route(routing, key, self._rng)
        try:
            pred = model.predict(decoded)
        except Exception as err:  # noqa: BLE001 - the answer is a 500, the service keeps serving
            latency = time.perf_counter() - ctx.t0
            logger.exception("model v%d failed on request %s", model.version, ctx.request_id)
            self._record(ctx, decoded, model, role, key, None, latency, err)
            failed = RequestError(500, "model_error", f"model v{model.version} failed: {type(err).__name__}")
            failed.request_id = ctx.request_id
            raise failed from None
        latency = time.perf_counter() - ctx.t0
        self._record(ctx, decoded, model, role, key, pred, latency, None)
        if shadow is not None:
            self._shadow(shadow, decoded, ctx, key)
        return {"request_id": ctx.request_id, "model_version": model.version, "role": role,
                "latency_ms": round(latency * 1000.0, 3), "task": model.task, **pred.payload}

    def _may_keep(self, camera: str | None) -> bool:
        """The spec's privacy rules hold for kept images too: no image of an excluded camera."""
        pv = self.spec.curation.privacy
        return not (camera in pv.exclude_cameras or (camera is None and pv.drop_missing_camera))

    def _shadow(self, model: LoadedModel, decoded: DecodedRequest, ctx: RequestContext, key: str | None) -> None:
        pool = self._shadow_pool
        if pool is None or not self._shadow_slots.acquire(blocking=False):
            self.metrics.shadow_dropped.inc()
            return

        def run() -> None:
            t = time.perf_counter()
            try:
                pred = model.predict(decoded)
                self._record(ctx, decoded, model, "shadow", key, pred, time.perf_counter() - t, None)
            except Exception as err:  # noqa: BLE001 - a shadow failure never affects the answer
                logger.warning("shadow model v%d failed on request %s: %s", model.version, ctx.request_id, err)
                self._record(ctx, decoded, model, "shadow", key, None, time.perf_counter() - t, err)
            finally:
                self._shadow_slots.release()

        try:
            pool.submit(run)
        except RuntimeError:  # shutting down
            self._shadow_slots.release()

    def _record(self, ctx: RequestContext, decoded: DecodedRequest, model: LoadedModel, role: str,
                key: str | None, pred: Prediction | None, latency_s: float, error: BaseException | None) -> None:
        features = pred.features if pred is not None else {}
        status = "ok" if error is None else "error"
        self.metrics.observe(model.version, role, status, latency_s, features.get("confidence"))
        self.log.add({
            "prediction_id": ctx.request_id, "timestamp": ctx.received_at, "camera": ctx.camera,
            "predicted": features.get("predicted"), "confidence": features.get("confidence"),
            "predicted_objects": features.get("predicted_objects"),
            "predicted_object_size": features.get("predicted_object_size"),
            "predicted_foreground": features.get("predicted_foreground"),
            "model_version": model.version, "role": role, "latency_ms": latency_s * 1000.0, "status": status,
            "error": None if error is None else f"{type(error).__name__}: {error}"[:500], "request_key": key,
            **decoded.stats, "width": decoded.width, "height": decoded.height, "capture": decoded.capture,
        })
