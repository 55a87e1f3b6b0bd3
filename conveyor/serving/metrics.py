"""The inference service's Prometheus metrics."""

from __future__ import annotations

from conveyor.serving.routing import Routing


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
