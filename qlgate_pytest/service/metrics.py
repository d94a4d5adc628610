"""The service's own Prometheus metrics (``GET /metrics``): requests, queue and jobs.

Each app gets its own registry, so two apps in one process (tests, or a service embedded in a
larger one) never share or double-register counters. Route templates (``/jobs/{job_id}``), not
raw paths, label requests: a client cannot blow up cardinality by inventing URLs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A gate run takes seconds (tiny model) to an hour (8B on CPU); request latency spans ms to that.
_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
# Set in a request's ASGI scope by the server when the body deadline expired and it answered 408.
READ_TIMEOUT_KEY = "qlgate.read_timeout"
_REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600, float("inf"))


class ServiceMetrics:
    """Counters, gauges and histograms of one service instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "qlgate_service_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "qlgate_service_request_duration_seconds", "Time to answer a request", ["route"],
            buckets=_REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.jobs_submitted = Counter(
            "qlgate_service_jobs_submitted", "Gate jobs accepted into the queue", registry=r
        )
        self.jobs_finished = Counter(
            "qlgate_service_jobs_finished", "Gate jobs finished, by outcome", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.queue_full = Counter(
            "qlgate_service_queue_full", "Requests refused with 503 because the queue was full",
            registry=r,
        )  # fmt: skip
        self.queued = Gauge("qlgate_service_jobs_queued", "Jobs waiting for a worker", registry=r)
        self.running = Gauge("qlgate_service_jobs_running", "Jobs being evaluated", registry=r)
        self.job_seconds = Histogram(
            "qlgate_service_job_duration_seconds", "Wall time of one gate run", ["outcome"],
            buckets=_JOB_BUCKETS, registry=r,
        )  # fmt: skip
        for outcome in ("approved", "rejected", "failed"):
            # Export zeros from the start so rate() and alerts see the series before the first job.
            self.jobs_finished.labels(outcome)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts every answered request by method, route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before answering, the server answers 500

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            if scope.get(READ_TIMEOUT_KEY):
                status = 408  # the server answered for the app: the body never arrived
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope.get("method", ""), name, str(status)).inc()
            self.metrics.request_seconds.labels(name).observe(time.perf_counter() - start)
