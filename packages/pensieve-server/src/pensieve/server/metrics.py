"""`GET /metrics`: Prometheus text format through prometheus-client.

Each app gets its own `CollectorRegistry` (not the library's global one), so several apps in one
process, as in the tests, never collide over metric names. Request counters and latency
histograms are updated by the observing middleware when a request ends; what describes the
present (queue depth, active sequences, MLX memory, load times) is read from the model provider
at scrape time by a custom collector, so it can never go stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pensieve.models import ModelStatus
from pensieve.server.observe import RequestSummary
from pensieve.server.protocols import ModelProvider

routes = web.RouteTableDef()

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2, 0.5, 1.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _ProviderCollector(Collector):
    """Gauges read from the provider when scraped."""

    def __init__(self, provider: ModelProvider) -> None:
        self.provider = provider

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        models = self.provider.status()
        queue = GaugeMetricFamily("pensieve_queue_depth", "Requests waiting for a batch slot", labels=["model"])
        active = GaugeMetricFamily("pensieve_active_sequences", "Sequences being decoded", labels=["model"])
        load = GaugeMetricFamily("pensieve_model_load_seconds", "Seconds the last load of a model took", labels=["model"])
        weights = GaugeMetricFamily("pensieve_model_weight_bytes", "Bytes of a loaded model's weights", labels=["model"])
        state = GaugeMetricFamily("pensieve_model_state", "1 for each model's current state", labels=["model", "state"])
        kv = GaugeMetricFamily("pensieve_kv_bytes", "A loaded model's KV memory: its capacity and who holds it", labels=["model", "kind"])
        preempted = CounterMetricFamily("pensieve_preemptions", "Sequences paused for memory and resumed later", labels=["model"])
        for model in models:
            state.add_metric([model.name, model.state], 1)
            if model.load is not None:
                queue.add_metric([model.name], model.load.queued)
                active.add_metric([model.name], model.load.active)
            if model.load_seconds is not None:
                load.add_metric([model.name], model.load_seconds)
            if model.weight_bytes is not None:
                weights.add_metric([model.name], model.weight_bytes)
            if model.kv is not None:
                kv.add_metric([model.name, "capacity"], model.kv.capacity_bytes)
                kv.add_metric([model.name, "sequences"], model.kv.sequences_bytes)
                kv.add_metric([model.name, "prefix_cache"], model.kv.prefix_cache_bytes)
                preempted.add_metric([model.name], model.kv.preemptions)
        yield from (queue, active, load, weights, state, kv, preempted)
        yield from _prefix_cache_families(models)
        memory = GaugeMetricFamily("pensieve_mlx_memory_bytes", "MLX allocator memory", labels=["kind"])
        for key, value in self.provider.memory().as_dict().items():
            memory.add_metric([key.removesuffix("_bytes")], value)
        yield memory
        disk = self.provider.disk_cache()
        if disk is not None:
            yield GaugeMetricFamily(
                "pensieve_prefix_cache_disk_total_bytes", "Bytes of every model's prefixes in the disk tier's folder", value=disk.bytes
            )


def _prefix_cache_families(models: list[ModelStatus]) -> list[GaugeMetricFamily | CounterMetricFamily]:
    """Per model and tier (`memory`, `disk`): lookups served, lookups not served, bytes held.

    A lookup goes to disk only when memory missed, so a tier's hits over its lookups is its own
    hit rate. The counters restart when a model is reloaded, as Prometheus counters may.
    """
    labels = ["model", "tier"]
    hits = CounterMetricFamily("pensieve_prefix_cache_hits", "Prompts whose prefix a tier served", labels=labels)
    misses = CounterMetricFamily("pensieve_prefix_cache_misses", "Prompts a tier was asked for and could not serve", labels=labels)
    held = GaugeMetricFamily("pensieve_prefix_cache_bytes", "Bytes of KV cache a tier holds for a model", labels=labels)
    for model in models:
        stats = model.prefix_cache
        if stats is None:
            continue
        for tier, figures in (("memory", stats.memory), ("disk", stats.disk)):
            if figures is not None:
                hits.add_metric([model.name, tier], figures.hits)
                misses.add_metric([model.name, tier], figures.misses)
                held.add_metric([model.name, tier], figures.bytes)
    return [hits, misses, held]


class Metrics:
    """The app's metrics and the one method that records a finished request."""

    def __init__(self, provider: ModelProvider) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pensieve_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.duration = Histogram(
            "pensieve_request_duration_seconds", "Time to answer a request, whole", ["route"], buckets=DURATION_BUCKETS, registry=r
        )
        self.tokens = Counter("pensieve_tokens", "Tokens processed", ["model", "direction"], registry=r)
        self.ttft = Histogram(
            "pensieve_time_to_first_token_seconds", "Queue + prefill time of a generation", ["model"], buckets=TTFT_BUCKETS, registry=r
        )
        self.token_latency = Histogram(
            "pensieve_time_per_output_token_seconds", "Decode time per output token after the first", ["model"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.speculation = Counter(
            "pensieve_speculation_tokens", "Tokens proposed by speculative decoding, and those the model accepted",
            ["model", "outcome"], registry=r,
        )
        self.passes = Counter(
            "pensieve_decode_passes", "Forward passes of single-sequence decoding (one verification is one)", ["model"], registry=r
        )
        self.pass_tokens = Counter(
            "pensieve_decode_pass_tokens", "Tokens those passes produced: over pensieve_decode_passes, tokens per pass",
            ["model"], registry=r,
        )
        self.in_progress = Gauge("pensieve_requests_in_progress", "HTTP requests being handled", registry=r)
        self.reloads = Counter("pensieve_config_reloads", "Configuration reloads (SIGHUP)", registry=r)
        r.register(_ProviderCollector(provider))

    def observe(self, summary: RequestSummary) -> None:
        self.requests.labels(summary.route, summary.method, str(summary.status)).inc()
        self.duration.labels(summary.route).observe(summary.duration_s)
        if not summary.generated:
            return
        model = summary.model or "unknown"
        self.tokens.labels(model, "in").inc(summary.input_tokens or 0)
        self.tokens.labels(model, "out").inc(summary.output_tokens or 0)
        if summary.ttft_s is not None:
            self.ttft.labels(model).observe(summary.ttft_s)
        if summary.time_per_token_s is not None:
            self.token_latency.labels(model).observe(summary.time_per_token_s)
        figures = summary.profile or {}
        if figures.get("decode_passes"):
            self.passes.labels(model).inc(figures["decode_passes"])
            self.pass_tokens.labels(model).inc(figures.get("decode_pass_tokens", 0.0))
            self.speculation.labels(model, "proposed").inc(figures.get("speculation_proposed", 0.0))
            self.speculation.labels(model, "accepted").inc(figures.get("speculation_accepted", 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition; behind the API key unless server.metrics_require_auth is false."""
    body: Any = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
