"""Prometheus metrics of an inference server or Ray gateway (``docs/server.md``, "Metrics").

Each server has its own :class:`prometheus_client.CollectorRegistry` (two servers
in one process do not mix), exposed as Prometheus text by :meth:`ServerMetrics.text`
and, with ``gdmcom serve --metrics-port``, over HTTP at ``/metrics``
(``prometheus_client.start_http_server``).  Families, all prefixed ``gdmcom_``:

* ``requests_total{outcome}``: the server's counters (``received``, ``served``,
  ``busy`` ... as in ``status``), read from it at scrape time; the request rate is
  ``rate(gdmcom_requests_total{outcome="served"}[1m])``.
* ``batches_total``, ``model_calls_total``, ``batch_retries_total``: codec calls, UNet calls,
  and failed calls over several requests retried in parts (the ``status`` counters ``batches``,
  ``model_calls``, ``batch_retries``; not request outcomes).
* ``queue_depth``, ``inflight``: requests waiting / accepted and not yet answered.
* ``batch_size{op}``: histogram of the requests per codec call.
* ``latency_seconds{op}``: histogram of the time from a request's arrival to its
  reply (served or failed), for ``histogram_quantile`` across servers, and
  ``latency_quantile_seconds{op,quantile}``: p50 and p95 over the last
  :data:`WINDOW` replies of this server.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

WINDOW = 1024  # replies per op kept for the p50/p95 gauges
QUANTILES = (0.5, 0.95)
OPS = ("encode", "decode")
#: status counters that count the model's work, exported as their own families
WORK_COUNTERS = {"batches": "codec calls (a step-level server: UNet steps)", "model_calls": "UNet calls",
                 "batch_retries": "model calls over several requests that raised and were retried in parts"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, float("inf"))


class ServerMetrics:
    """Metrics of one server.

    Args:
        counters: the server's counter dict (read at scrape time, never copied).
        gauges: a callable returning ``{"queue_depth": n, "inflight": n}`` at scrape time.
    """

    def __init__(self, counters: Dict[str, int], gauges: Callable[[], Dict[str, int]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters, self._gauges = counters, gauges
        self._window = {op: collections.deque(maxlen=WINDOW) for op in OPS}
        self._lock = threading.Lock()
        self.latency = Histogram("gdmcom_latency_seconds", "time from a request's arrival to its reply",
                                 ["op"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("gdmcom_batch_size", "requests per codec call", ["op"], buckets=BATCH_BUCKETS,
                               registry=self.registry)
        self.registry.register(self)
        self._http: Optional[Tuple] = None

    def observe_reply(self, op: str, seconds: float) -> None:
        """One encode/decode request answered (served or failed) ``seconds`` after it arrived."""
        self.latency.labels(op).observe(seconds)
        with self._lock:
            self._window[op].append(seconds)

    def observe_batch(self, op: str, size: int) -> None:
        self.batch.labels(op).observe(size)

    def quantiles(self, op: str) -> Dict[float, float]:
        """p50 and p95 (s) of the last :data:`WINDOW` replies to ``op`` (empty dict before the first)."""
        with self._lock:
            values = np.array(self._window[op])
        if values.size == 0:
            return {}
        return dict(zip(QUANTILES, np.quantile(values, QUANTILES).tolist()))

    def collect(self):
        """prometheus_client custom-collector hook: the counters and gauges, read now."""
        c = CounterMetricFamily("gdmcom_requests", "messages by outcome (the status counters)", labels=["outcome"])
        work = {}
        for key, value in list(self._counters.items()):
            if key in WORK_COUNTERS:
                work[key] = value
            else:
                c.add_metric([key], value)
        yield c
        for key, value in work.items():  # what the model did, not what became of requests
            yield CounterMetricFamily(f"gdmcom_{key}", WORK_COUNTERS[key], value=value)
        for key, value in self._gauges().items():
            yield GaugeMetricFamily(f"gdmcom_{key}", f"{key.replace('_', ' ')} now", value=value)
        q = GaugeMetricFamily("gdmcom_latency_quantile_seconds", f"latency quantiles over the last {WINDOW} replies",
                              labels=["op", "quantile"])
        for op in OPS:
            for quantile, value in self.quantiles(op).items():
                q.add_metric([op, str(quantile)], value)
        yield q

    def describe(self):
        return []  # collected at scrape time only (keeps auto_describe from calling collect at register)

    def text(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (port 0: any free port); returns the port."""
        httpd, thread = start_http_server(port, addr, registry=self.registry)
        self._http = (httpd, thread)
        return httpd.server_port

    def close(self) -> None:
        if self._http is not None:
            httpd, thread = self._http
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)
            self._http = None
