"""A signed HTTP webhook that starts a pipeline's cycle (``conveyor webhook``).

Open-source Prefect has no webhooks, so conveyor ships a small receiver. ``POST /hooks/<pipeline>``
with a JSON body ``{"reason": "..."}`` starts a run of the Prefect deployment
``conveyor-cycle/<pipeline>`` with ``trigger="webhook"`` (mode ``deployment``), or emits the Prefect
event ``conveyor.webhook.received`` for an automation to act on (mode ``event``).

Only pipelines whose spec sets ``triggers.webhook: true`` accept webhooks. Every request is signed
with a shared secret taken from the environment (``CONVEYOR_WEBHOOK_SECRET``, never the spec)::

    X-Conveyor-Timestamp: <unix seconds>
    X-Conveyor-Signature: sha256=<hex HMAC-SHA256(secret, b"<timestamp>." + raw body)>

A request is checked in this order, and the first failure answers:

1. size: the body is read up to ``max_body`` bytes, whatever Content-Length says -> 413;
2. signature and timestamp (the body is not parsed yet): missing, malformed or wrong signature,
   missing or non-integer timestamp, timestamp more than ``tolerance_s`` from now, or a signature
   already seen (a replay) -> 401;
3. body: not a JSON object, unknown or repeated fields, ``reason`` not a string of at most 500
   characters, ``pipeline`` not the one in the URL -> 400 naming the field;
4. pipeline: not served, or its spec does not set ``triggers.webhook: true`` -> 404;
5. rate limit, a token bucket per pipeline -> 429 with Retry-After;
6. start: the starter failed -> 502 (the Prefect API answered with an error, e.g. no such
   deployment) or 503 (the Prefect API could not be reached); success -> 202.

Authentication comes before anything that reveals whether a pipeline exists, and only
authenticated requests take rate-limit tokens, so a flood of unsigned requests cannot use up a
pipeline's budget. Clients that keep failing authentication are answered 429 instead of 401 once
they exceed ``ip_failures_per_minute``; correctly signed requests from the same address are still
served (behind a proxy many clients can share one address).

A signed request is single-use: to retry (after a 429 or a 5xx), sign it again.

This module does nothing at import time and needs neither FastAPI nor Prefect to be imported:
``sign`` and ``verify`` use the standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from conveyor.core.spec import Spec

logger = logging.getLogger("conveyor.monitoring.webhook")

SECRET_ENV = "CONVEYOR_WEBHOOK_SECRET"
MIN_SECRET_LENGTH = 16
TIMESTAMP_HEADER = "X-Conveyor-Timestamp"
SIGNATURE_HEADER = "X-Conveyor-Signature"
SIGNATURE_PREFIX = "sha256="
FLOW_NAME = "conveyor-cycle"
EVENT_NAME = "conveyor.webhook.received"
MAX_REASON_LENGTH = 500
BODY_FIELDS = ("pipeline", "reason")
HOOK_PATH = "/hooks/{pipeline}"

Mode = Literal["deployment", "event"]

_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_SIGNATURE_RE = re.compile(r"sha256=[0-9a-fA-F]{64}")


class WebhookConfigError(ValueError):
    """The receiver cannot be set up (missing or weak secret, bad limits, no pipeline to serve)."""


class SignatureError(ValueError):
    """A request that fails authentication; the message says why (and never contains the secret)."""


class StartError(RuntimeError):
    """A starter could not start the run. ``status`` is 502 (the API refused) or 503 (unreachable)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


# ---- signing ----------------------------------------------------------------------------------


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The two headers that authenticate ``body``: add them to the POST request."""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("sign() needs the raw body as bytes, exactly as it will be sent")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: SIGNATURE_PREFIX + _digest(bytes(body), secret, ts)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)  # case-insensitive for Starlette and httpx headers
    if value is None:
        lowered = name.lower()
        for key, v in headers.items():
            if key.lower() == lowered:
                return v
    return value


@dataclass(frozen=True)
class Verified:
    timestamp: int
    signature: str  # lower-case hex digest; unique per signed request

    @property
    def request_id(self) -> str:
        return self.signature[:16]


def verify(body: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None,
           tolerance_s: float = 300) -> Verified:
    """Check the signature and timestamp headers of ``body`` (not parsed). Raises SignatureError."""
    ts_text = _header(headers, TIMESTAMP_HEADER)
    sig_text = _header(headers, SIGNATURE_HEADER)
    if sig_text is None:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if ts_text is None:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    ts_text = ts_text.strip()
    if not _TIMESTAMP_RE.fullmatch(ts_text):
        raise SignatureError(f"{TIMESTAMP_HEADER} must be an integer number of seconds since the epoch")
    sig_text = sig_text.strip()
    if not _SIGNATURE_RE.fullmatch(sig_text):
        raise SignatureError(f"{SIGNATURE_HEADER} must be 'sha256=' followed by 64 hex digits")
    timestamp = int(ts_text)
    given = sig_text[len(SIGNATURE_PREFIX):].lower()
    expected = _digest(bytes(body), secret, timestamp)
    if not hmac.compare_digest(given.encode("ascii"), expected.encode("ascii")):
        raise SignatureError("signature does not match")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp is {now - timestamp:+.0f} s from the server clock "
                             f"(allowed: {tolerance_s:g} s either way)")
    return Verified(timestamp=timestamp, signature=expected)


# ---- configuration --------------------------------------------------------------------------


def check_secret(secret: str | None) -> str:
    if not secret:
        raise WebhookConfigError(f"{SECRET_ENV} is not set: export a shared secret of at least "
                                 f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`)")
    if len(secret) < MIN_SECRET_LENGTH:
        raise WebhookConfigError(f"{SECRET_ENV} is too short ({len(secret)} characters); "
                                 f"use at least {MIN_SECRET_LENGTH} (e.g. `openssl rand -hex 32`)")
    return secret


def secret_from_env(env: Mapping[str, str] | None = None) -> str:
    return check_secret((os.environ if env is None else env).get(SECRET_ENV))


@dataclass(frozen=True)
class WebhookConfig:
    """Receiver settings. ``secret`` is the shared HMAC key (use ``from_env`` to read it)."""

    secret: str = field(repr=False)
    max_body: int = 64 * 1024
    tolerance_s: float = 300
    rate_per_minute: float = 6
    burst: int = 3
    mode: Mode = "deployment"
    ip_failures_per_minute: float = 10
    max_replay_entries: int = 10_000

    def __post_init__(self) -> None:
        check_secret(self.secret)
        if self.mode not in ("deployment", "event"):
            raise WebhookConfigError(f"mode must be 'deployment' or 'event', got {self.mode!r}")
        for name in ("max_body", "tolerance_s", "rate_per_minute", "burst", "max_replay_entries"):
            if getattr(self, name) <= 0:
                raise WebhookConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.ip_failures_per_minute < 0:
            raise WebhookConfigError("ip_failures_per_minute must be >= 0 (0 turns the per-client cap off)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **settings: Any) -> "WebhookConfig":
        return cls(secret=secret_from_env(env), **settings)


# ---- in-memory limits -----------------------------------------------------------------------


class RateLimiter:
    """Token buckets by key: ``burst`` tokens, refilled at ``rate_per_s``. Thread-safe."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float], max_keys: int = 10_000):
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]
        self._lock = threading.Lock()

    def take(self, key: str) -> tuple[float, bool]:
        """Take one token. Returns (0, False) when allowed, else (seconds to wait, first refusal in a row)."""
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                self._prune(now)
                bucket = self._buckets[key] = [self.burst, now, 0.0]
            tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0], bucket[2] = tokens - 1.0, 0.0
                return 0.0, False
            bucket[0] = tokens
            first = bucket[2] == 0.0
            bucket[2] = 1.0
            return (1.0 - tokens) / self.rate, first

    def _prune(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        full = [k for k, (t, last, _) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) >= self.max_keys:  # oldest first
            del self._buckets[next(iter(self._buckets))]


class ReplayCache:
    """Signatures seen within the tolerance window; each signed request is accepted once."""

    def __init__(self, tolerance_s: float, clock: Callable[[], float], max_entries: int = 10_000):
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}  # signature -> time after which its timestamp is stale anyway
        self._lock = threading.Lock()

    def add(self, v: Verified) -> bool:
        """Record ``v``; False when it was seen before. Raises OverflowError when the cache is full."""
        with self._lock:
            now = self.clock()
            if v.signature in self._seen:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {s: t for s, t in self._seen.items() if t >= now}
                if len(self._seen) >= self.max_entries:
                    raise OverflowError
            self._seen[v.signature] = v.timestamp + self.tolerance_s
            return True


# ---- starters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartRequest:
    """What an accepted request asks for; a starter turns it into a run (or an event)."""

    pipeline: str
    deployment: str
    reason: str | None
    request_id: str  # derived from the request's signature; unique per signed request
    client: str
    trigger: str = "webhook"

    @property
    def parameters(self) -> dict[str, Any]:
        """Parameters for ``flows/cycle.py:continuous_training`` (the deployment supplies spec_path)."""
        return {"trigger": self.trigger, "reason": self.reason}


Starter = Callable[[StartRequest], str]


# ---- the app --------------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, unauthenticated: bool = False):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}
        self.unauthenticated = unauthenticated  # counts against the per-client failure cap


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def parse_body(body: bytes, pipeline: str) -> str | None:
    """The ``reason`` of a request body. Raises ValueError naming the field for a bad body."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"{k}: field given twice")
            out[k] = v
        return out

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=no_repeats)
    except UnicodeDecodeError:
        raise ValueError("body: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"body: not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(data, dict):
        raise ValueError(f"body: must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(BODY_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0][:64]}: unknown field; allowed: {', '.join(BODY_FIELDS)}")
    if "pipeline" in data and data["pipeline"] != pipeline:
        raise ValueError(f"pipeline: {str(data['pipeline'])[:64]!r} does not match the URL ({pipeline!r})")
    reason = data.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise ValueError(f"reason: must be a string, got {type(reason).__name__}")
    if len(reason) > MAX_REASON_LENGTH:
        raise ValueError(f"reason: longer than {MAX_REASON_LENGTH} characters ({len(reason)})")
    if any(unicodedata.category(ch) == "Cc" for ch in reason):
        raise ValueError("reason: must not contain control characters")
    return reason


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.strip().isdigit()):
            raise _Reject(400, "Content-Length is not a number", unauthenticated=True)
        if int(declared) > limit:
            raise _Reject(413, f"body larger than {limit} bytes", unauthenticated=True)
    buf = bytearray()
    async for chunk in request.stream():  # whatever Content-Length says, stop past the limit
        buf += chunk
        if len(buf) > limit:
            raise _Reject(413, f"body larger than {limit} bytes", unauthenticated=True)
    return bytes(buf)


def _spec_map(specs: Sequence["Spec"] | Mapping[str, "Spec"]) -> dict[str, "Spec"]:
    if isinstance(specs, Mapping):
        items = list(specs.values())
    else:
        items = list(specs)
    out: dict[str, Spec] = {}
    for s in items:
        if s.name in out:
            raise WebhookConfigError(f"two specs are named {s.name!r}; pipeline names must be unique")
        out[s.name] = s
    return out


def create_app(specs: Sequence["Spec"] | Mapping[str, "Spec"], config: WebhookConfig | None = None, *,
               starter: Starter, clock: Callable[[], float] = time.time) -> "FastAPI":
    """The receiver as a FastAPI app. ``config`` defaults to ``WebhookConfig.from_env()``.

    ``starter`` turns an accepted request into a run or an event; the Prefect ones are
    :func:`conveyor.orchestration.prefect_api.deployment_starter` and ``event_starter``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    config = WebhookConfig.from_env() if config is None else config
    pipelines = _spec_map(specs)
    enabled = sorted(name for name, s in pipelines.items() if s.triggers.webhook)
    id_key = "flow_run_id" if config.mode == "deployment" else "event_id"
    per_pipeline = RateLimiter(config.rate_per_minute / 60.0, config.burst, clock)
    per_client = (RateLimiter(config.ip_failures_per_minute / 60.0, config.ip_failures_per_minute, clock)
                  if config.ip_failures_per_minute > 0 else None)
    replays = ReplayCache(config.tolerance_s, clock, config.max_replay_entries)

    app = FastAPI(title="conveyor webhook", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pipelines = enabled
    app.state.config = config

    def answer(status: int, pipeline: str, client: str, why: str, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None, level: int = logging.WARNING) -> JSONResponse:
        logger.log(level, "webhook %s %s pipeline=%r client=%s: %s",
                   "accepted" if status < 400 else "rejected", status, pipeline[:80], client, why)
        return JSONResponse(body if body is not None else {"detail": why}, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "mode": config.mode, "pipelines": enabled}

    async def hook(pipeline, request):
        client = request.client.host if request.client else "unknown"
        try:
            body = await _read_body(request, config.max_body)
            try:
                verified = verify(body, request.headers, config.secret, now=clock(), tolerance_s=config.tolerance_s)
            except SignatureError as err:
                raise _Reject(401, str(err), unauthenticated=True) from None
            try:
                if not replays.add(verified):
                    raise _Reject(401, "replayed request: this signature was already used; sign the request again",
                                  unauthenticated=True)
            except OverflowError:
                raise _Reject(429, "too many signed requests in the replay window", _retry_after(60)) from None
            try:
                reason = parse_body(body, pipeline)
            except ValueError as err:
                raise _Reject(400, str(err)) from None
            spec = pipelines.get(pipeline)
            if spec is None:
                raise _Reject(404, f"unknown pipeline {pipeline[:80]!r}; served: {', '.join(enabled) or 'none'}")
            if not spec.triggers.webhook:
                raise _Reject(404, f"pipeline {pipeline!r} does not accept webhooks "
                                   f"(its spec does not set triggers.webhook: true)")
            wait, _ = per_pipeline.take(pipeline)
            if wait > 0:
                raise _Reject(429, f"rate limit for {pipeline!r}: {config.rate_per_minute:g} per minute, "
                                   f"burst {config.burst}", _retry_after(wait))
        except _Reject as rej:
            if rej.unauthenticated and per_client is not None:
                wait, first = per_client.take(client)
                if wait > 0:  # a client that keeps failing: 429, and one warning per episode
                    return answer(429, pipeline, client, f"too many authentication failures ({rej.detail})",
                                  {"detail": "too many authentication failures"}, _retry_after(wait),
                                  logging.WARNING if first else logging.DEBUG)
            return answer(rej.status, pipeline, client, rej.detail, headers=rej.headers)

        deployment = f"{FLOW_NAME}/{pipeline}"
        req = StartRequest(pipeline=pipeline, deployment=deployment, reason=reason,
                           request_id=verified.signature[:32], client=client)
        failed = (f"could not start {deployment!r}" if config.mode == "deployment"
                  else f"could not emit {EVENT_NAME!r} for {pipeline!r}")
        try:
            started = await run_in_threadpool(starter, req)
        except StartError as err:
            headers = _retry_after(30) if err.status == 503 else None
            return answer(err.status, pipeline, client, f"{failed} (request {verified.request_id}): {err}",
                          headers=headers, level=logging.ERROR)
        except Exception as err:  # a starter bug or an unexpected API error: still no traceback in the answer
            logger.exception("webhook start failed pipeline=%r request=%s", pipeline, verified.request_id)
            return answer(502, pipeline, client, f"{failed} (request {verified.request_id}): {type(err).__name__}",
                          level=logging.ERROR)
        return answer(202, pipeline, client, f"started {config.mode} {id_key}={started} request={verified.request_id}",
                      {"pipeline": pipeline, "deployment": deployment, id_key: started, "mode": config.mode},
                      level=logging.INFO)

    # Real classes, not the strings this module's annotations become: FastAPI injects by type.
    hook.__annotations__.update(pipeline=str, request=Request)
    app.post(HOOK_PATH)(hook)
    return app


# ---- serving --------------------------------------------------------------------------------


def serve(specs: Sequence["Spec | str | Path"], host: str = "127.0.0.1", port: int = 8787,
          config: WebhookConfig | None = None, *, starter: Starter) -> None:
    """Serve the receiver with uvicorn until interrupted. Specs may be given as paths."""
    import uvicorn

    from conveyor.core.spec import load_spec

    config = WebhookConfig.from_env() if config is None else config
    loaded = [load_spec(s) if isinstance(s, (str, Path)) else s for s in specs]
    disabled = [s.name for s in loaded if not s.triggers.webhook]
    if len(disabled) == len(loaded):
        raise WebhookConfigError(f"no pipeline accepts webhooks: set `triggers: {{webhook: true}}` in the spec "
                                 f"({', '.join(disabled)})")
    app = create_app(loaded, config, starter=starter)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    for name in disabled:
        logger.warning("pipeline %r is not served: its spec does not set triggers.webhook: true", name)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without TLS: put a TLS-terminating proxy in front of it", host)
    logger.info("webhook receiver on http://%s:%d%s for %s (mode %s)", host, port,
                HOOK_PATH.replace("{pipeline}", "<pipeline>"), ", ".join(app.state.pipelines), config.mode)
    uvicorn.run(app, host=host, port=port, log_level="info")


def send(url: str, reason: str | None = None, secret: str | None = None, timeout: float = 10.0):
    """POST a signed request to a receiver URL (``http://host:8787/hooks/<pipeline>``); returns the response."""
    import httpx
    from urllib.parse import urlparse

    secret = check_secret(secret) if secret is not None else secret_from_env()
    payload: dict[str, Any] = {}
    path = urlparse(url).path.rstrip("/")
    if "/hooks/" in path:  # bind the signature to the pipeline named in the URL
        payload["pipeline"] = path.rsplit("/", 1)[-1]
    if reason is not None:
        payload["reason"] = reason
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **sign(body, secret)}
    return httpx.post(url, content=body, headers=headers, timeout=timeout)
