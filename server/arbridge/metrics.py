"""Prometheus metrics, one registry per server (so several can share a process).

Exposed by prometheus-client's own HTTP server on --metrics-port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

# First tokens take a prefill (tens of ms to seconds on CPU); later ones one step.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5,
                    2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rpcs = Counter("arbridge_rpcs", "Finished RPCs by method and gRPC status code",
                            ["method", "code"], registry=r)
        self.open_rpcs = Gauge("arbridge_open_rpcs", "RPCs in progress", ["method"], registry=r)
        self.active = Gauge("arbridge_active_requests",
                            "Requests holding a batch slot (prefilling or decoding)", registry=r)
        self.queued = Gauge("arbridge_queued_requests", "Requests waiting for a batch slot",
                            registry=r)
        self.ttft = Histogram("arbridge_time_to_first_token_seconds",
                              "Request arrival to first generated token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("arbridge_inter_token_latency_seconds",
                             "Gap between a request's consecutive decode steps", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.tokens = Counter("arbridge_generated_tokens", "Tokens generated", registry=r)
        self.completions = Counter("arbridge_completions", "Finished sequences by reason",
                                   ["reason"], registry=r)
        self.batch_size = Histogram("arbridge_decode_batch_size",
                                    "Sequences in each batched decode step", registry=r,
                                    buckets=_BATCH_BUCKETS)
        self._http = None

    def watch(self, backend) -> None:
        """Active/queued gauges read the backend at scrape time."""
        self.active.set_function(lambda: backend.load[0])
        self.queued.set_function(lambda: backend.load[1])
        scheduler = getattr(backend, "scheduler", None)
        if scheduler is not None:
            self.registry.register(_KVCollector(scheduler))

    def watch_streams(self, store) -> None:
        """Resumable replies held, their buffers, and resumes (read at scrape time)."""
        self.registry.register(_StreamCollector(store))

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _KVCollector:
    """Reads the engine's KV pool and prefix-cache counters at scrape time."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def collect(self):
        scheduler = self.scheduler
        pool = scheduler.pool
        blocks = GaugeMetricFamily("arbridge_kv_blocks", "KV pool blocks by state "
                                   "(prefix_cache: kept for reuse, also counted as used)",
                                   labels=["state"])
        for state, count in scheduler.kv_blocks.items():
            blocks.add_metric([state], count)
        yield blocks
        yield GaugeMetricFamily("arbridge_kv_cache_bytes", "Size of the KV pool (kv_cache_mb)",
                                value=pool.usable * pool.block_bytes)
        yield CounterMetricFamily("arbridge_kv_preemptions",
                                  "Requests whose KV blocks were taken back to make room "
                                  "(they are recomputed)", value=scheduler.preemptions)
        drafts = CounterMetricFamily(
            "arbridge_draft_tokens", "Tokens guessed ahead and read in decode passes "
            "(speculative_tokens), by whether the model agreed", labels=["outcome"])
        drafts.add_metric(["kept"], scheduler.kept)
        drafts.add_metric(["rejected"], scheduler.drafted - scheduler.kept)
        yield drafts
        cache = scheduler.prefix_cache
        if cache is None:
            return
        tokens = CounterMetricFamily(
            "arbridge_prompt_tokens",
            "Prompt tokens of text-only requests, by where their KV came from", labels=["source"])
        tokens.add_metric(["prefix_cache"], cache.reused_tokens)
        tokens.add_metric(["prefill"], cache.prefilled_tokens)
        yield tokens
        yield GaugeMetricFamily("arbridge_prefix_cache_bytes",
                                "KV pool memory held by cached prompt prefixes",
                                value=len(cache) * pool.block_bytes)


class _StreamCollector:
    """Reads the resumable-stream store (serving/streams.py) at scrape time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        yield GaugeMetricFamily("arbridge_resumable_streams",
                                "Resumable replies held, followed or not", value=len(self.store))
        yield GaugeMetricFamily("arbridge_resume_buffer_bytes",
                                "Bytes of events kept for resumable replies",
                                value=self.store.bytes)
        yield CounterMetricFamily("arbridge_resumed_streams",
                                  "Resume calls that found their stream", value=self.store.resumed)
