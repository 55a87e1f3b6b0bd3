"""The inference service over HTTP (``conveyor serve``): a FastAPI app around :mod:`conveyor.serving`.

Endpoints:

* ``POST /predict``: an image as the raw body (``Content-Type: image/*`` or
  ``application/octet-stream``) or as the ``file`` field of a multipart form. Optional headers
  ``X-Request-Id`` (becomes the prediction id; a new one otherwise), ``X-Camera``, and the sticky
  key header of a canary (``X-Request-Key`` unless rollout.json names another). Answers 200 with
  ``request_id``, ``model_version``, ``role``, ``latency_ms``, ``task`` and the task's fields;
  400 (bad header, not an image, corrupt, over the pixel limit) or 413 (body over ``max_body``)
  with ``reason`` and ``detail``; 500 when the model fails; 503 before a champion is loaded.
* ``GET /healthz`` (the process answers), ``GET /readyz`` (200 once the champion is loaded and
  warmed, else 503), ``GET /metrics`` (Prometheus text), ``GET /status`` (JSON).

This module does nothing at import time; FastAPI and uvicorn are imported by the functions.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.serving.preprocess import REQUEST_ID_HEADER, RequestError, extract_upload
from conveyor.serving.service import InferenceService, ServiceConfig

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

logger = logging.getLogger("conveyor.serving.http")


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"body of {int(declared)} bytes is over the limit of {limit} bytes",
                           int(declared))
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise RequestError(413, "body_too_large", f"body is over the limit of {limit} bytes", len(buf))
    return bytes(buf)


def create_app(service: InferenceService) -> "FastAPI":
    """The HTTP app; its lifespan starts the service and, at shutdown, writes every buffered row."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title=f"conveyor inference: {service.name}", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        routing = service.routing
        if routing.champion is None:
            return JSONResponse({"ready": False, "detail": "no champion loaded yet", **_versions(service)}, 503)
        return {"ready": True, **_versions(service)}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return service.status()

    async def predict(request):
        content_type = request.headers.get("content-type")
        try:
            ctx = service.context(request.headers, content_type)
            try:
                data = extract_upload(await read_body(request, service.config.max_body), content_type)
            except RequestError as err:
                raise service.reject(ctx, err) from None
            answer = await run_in_threadpool(service.predict, data, ctx)
        except RequestError as err:
            rid = err.request_id
            return JSONResponse(err.body(), err.status, headers={REQUEST_ID_HEADER: rid} if rid else None)
        return JSONResponse(answer, headers={REQUEST_ID_HEADER: ctx.request_id})

    predict.__annotations__["request"] = Request  # a real class: FastAPI injects by type
    app.post("/predict")(predict)
    return app


def _versions(service: InferenceService) -> dict[str, Any]:
    r = service.routing
    return {"champion": r.champion.version if r.champion else None,
            "challenger": r.challenger.version if r.challenger else None}


def serve(spec: Any, workspace: str | Path, host: str = "127.0.0.1", port: int = 8080,
          config: ServiceConfig | None = None) -> None:
    """Serve ``spec``'s pipeline with uvicorn until interrupted (SIGINT / SIGTERM shut down cleanly)."""
    import uvicorn

    config = replace(config or ServiceConfig(), host=host, port=port)
    service = InferenceService(spec, workspace, config)
    app = create_app(service)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("conveyor").setLevel(logging.INFO)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without TLS: put a TLS-terminating proxy in front of it", host)
    logger.info("inference service for %s on http://%s:%d (workspace %s, poll %gs, %d onnxruntime threads per model)",
                service.name, host, port, service.ws.root, config.poll_s, config.threads)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


class BackgroundServer:
    """uvicorn serving an app in a thread of this process, on a free loopback port (tests, benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0):
        import uvicorn

        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="conveyor-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.01)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut down cleanly (the app's lifespan shutdown runs) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
