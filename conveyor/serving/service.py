"""The inference service (no HTTP here; :mod:`conveyor.serving.http` is the HTTP layer).

:class:`InferenceService` serves the registry's champion (``Registry.alias(name)`` is the source
of truth) and, while a rollout runs, the challenger named in ``<workspace>/state/<name>/rollout.json``
(written by the rollout controller). It polls both every ``poll_s`` seconds; a new model is loaded
into an onnxruntime session and warmed up *before* the routing switches to it, and the switch is
one reference swap under a lock, so a request keeps the models it started with. Routing is
:mod:`conveyor.serving.routing`; the shadow model gets its copy in a thread pool, logged with role
``shadow`` and the same prediction id, never returned, and its failures never touch the answer.

Every answer (and every shadow copy) is a row of the prediction log, and every rejected request a
row of the request quarantine (:mod:`conveyor.serving.log`). Nothing here imports torch or FastAPI.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from conveyor.core.io import atomic_write_json
from conveyor.core.timeutil import utcnow as _now
from conveyor.core.workspace import Workspace
from conveyor.data.imageio import DecodeError
from conveyor.release.registry import Registry
from conveyor.release.rollout import RolloutState, rollout_path
from conveyor.serving.captures import capture_image, captures_dir, should_capture
from conveyor.serving.log import PredictionLog, RequestQuarantine
from conveyor.serving.metrics import ServiceMetrics
from conveyor.serving.model import LoadedModel, ModelLoadError
from conveyor.serving.prediction import Prediction
from conveyor.serving.preprocess import (
    CAMERA_HEADER,
    MAX_BODY_BYTES,
    MAX_HEADER_CHARS,
    REQUEST_ID_HEADER,
    REQUEST_ID_RE,
    DecodedRequest,
    RequestContext,
    RequestError,
    checked_header,
    decode_request,
    header,
)
from conveyor.serving.routing import Routing, read_rollout, route

logger = logging.getLogger("conveyor.serving.service")

MODEL_FILE = "model.onnx"


def service_state_path(ws: Workspace, name: str) -> Path:
    """The service's own state, written on every poll for the rollout controller."""
    return ws.state(name) / "service.json"


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
                ctx.request_id = checked_header(REQUEST_ID_HEADER, rid, REQUEST_ID_RE)
            camera = header(headers, CAMERA_HEADER)
            if camera is not None:
                ctx.camera = checked_header(CAMERA_HEADER, camera)
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
            "predicted_count": features.get("predicted_count"),
            "model_version": model.version, "role": role, "latency_ms": latency_s * 1000.0, "status": status,
            "error": None if error is None else f"{type(error).__name__}: {error}"[:500], "request_key": key,
            **decoded.stats, "width": decoded.width, "height": decoded.height, "capture": decoded.capture,
        })
