"""Prometheus metrics for one app (its own CollectorRegistry: several apps in one process, as in
tests, must not share counters)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Paths used as label values; anything else is "other" so random URLs cannot blow up cardinality.
KNOWN_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "amd_llama4_"
        self.requests = Counter(p + "http_requests", "HTTP requests by path and status code",
                                ["path", "status"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Generated tokens", registry=r)
        self.finished = Counter(p + "request_finished", "Finished generations by finish reason",
                                ["reason"], registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first generated token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between generated tokens",
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to last token",
                             buckets=_E2E_BUCKETS, registry=r)
        self.in_flight = Gauge(p + "requests_in_flight", "Requests admitted by this replica (queue size)",
                               registry=r)
        self.rejected = Counter(p + "requests_rejected", "Requests refused by admission control (429)",
                                registry=r)
        self.kv_usage = Gauge(p + "kv_cache_usage_ratio", "Fraction of KV cache blocks in use", registry=r)
        self.kv_used = Gauge(p + "kv_cache_blocks_used", "KV cache blocks in use", registry=r)
        self.kv_total = Gauge(p + "kv_cache_blocks_total", "KV cache blocks", registry=r)
        self.running = Gauge(p + "num_requests_running", "Requests the engine is running", registry=r)
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting in the engine", registry=r)
        # vLLM's prefix_cache_queries / prefix_cache_hits (tokens); the engine reports running totals
        self.prefix_queries = Counter(p + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                      registry=r)
        self.prefix_hits = Counter(p + "prefix_cache_hits", "Prompt tokens found in the prefix cache", registry=r)
        self._engine_totals: dict[str, float] = {}

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in KNOWN_PATHS else "other", str(status)).inc()

    def update_engine(self, stats: dict[str, Any] | None) -> None:
        if not stats:
            return
        for gauge, key in ((self.kv_usage, "kv_usage"), (self.kv_used, "kv_blocks_used"),
                           (self.kv_total, "kv_blocks_total"), (self.running, "num_running"),
                           (self.waiting, "num_waiting")):
            if isinstance(stats.get(key), (int, float)):
                gauge.set(stats[key])
        for counter, key in ((self.prefix_queries, "prefix_cache_queries"), (self.prefix_hits, "prefix_cache_hits")):
            total = stats.get(key)
            if isinstance(total, (int, float)):
                before = self._engine_totals.get(key, 0)
                # a rebuilt engine restarts from 0: its whole total is new
                counter.inc(total - before if total >= before else total)
                self._engine_totals[key] = total

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
