"""Metrics in Prometheus' text exposition format, for `GET /metrics`.

Counters only grow (requests by endpoint and status, tokens, cancellations); gauges are read when
scraped (queue depth, running requests); histograms count observations into buckets (time to first
token, end-to-end latency), from which Prometheus computes quantiles. Each server has its own registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only say when the server started
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmlab_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.queue_depth = Gauge("lmlab_queue_depth", "generations waiting for a slot", registry=r)
        self.running = Gauge("lmlab_running_requests", "generations holding a slot", registry=r)
        self.time_to_first_token = Histogram("lmlab_time_to_first_token_seconds",
                                             "from a request's arrival to its first generated token",
                                             buckets=SECONDS, registry=r)
        self.latency = Histogram("lmlab_request_latency_seconds", "from a request's arrival to its last token",
                                 buckets=SECONDS, registry=r)
        self.prompt_tokens = Counter("lmlab_prompt_tokens", "prompt tokens of the requests answered", registry=r)
        self.generated_tokens = Counter("lmlab_generation_tokens", "tokens generated", registry=r)
        self.cancelled = Counter("lmlab_cancelled_requests", "requests whose client left before the end",
                                 registry=r)

    def watch(self, engine) -> None:
        """Read the engine's queue depth and running requests at each scrape."""
        self.queue_depth.set_function(lambda: engine.queued)
        self.running.set_function(lambda: engine.running)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count each HTTP request by endpoint (its route, or "other") and response status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
