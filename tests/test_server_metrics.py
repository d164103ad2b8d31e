"""bridge/metrics.py alone: the Prometheus text of a server's counters, gauges, histograms and
latency quantiles, read at scrape time, and /metrics over HTTP (no model, < 1 s).

The server feeding it is tested in test_bridge.py (``gdmcom serve --metrics-port``)."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

from gr_gdmcom.bridge import metrics as M
from gr_gdmcom.bridge.metrics import ServerMetrics


def _lines(m) -> list:
    """The exposition (of ``m``, or the text ``m``) without prometheus_client's ``*_created``
    families (wall-clock times)."""
    text = m if isinstance(m, str) else m.text().decode()
    text = re.sub(r"# HELP (\w+)_created .*\n# TYPE \1_created gauge\n(\1_created.*\n)+", "", text)
    return text.splitlines()


def _hist(name, op, buckets, values):
    out = []
    for le in buckets:
        label = "+Inf" if le == float("inf") else repr(float(le))
        out.append(f'{name}_bucket{{le="{label}",op="{op}"}} {float(sum(v <= le for v in values))!r}')
    return out + [f'{name}_count{{op="{op}"}} {float(len(values))!r}', f'{name}_sum{{op="{op}"}} {float(sum(values))!r}']


def test_the_exposition_is_every_family_with_its_help_in_order():
    counters = dict(received=3, served=2, batches=4, busy=0, model_calls=9, batch_retries=1)
    m = ServerMetrics(counters, lambda: dict(queue_depth=1, inflight=2))
    m.observe_reply("encode", 0.02)
    m.observe_reply("encode", 0.3)
    m.observe_reply("decode", 0.25)
    m.observe_batch("decode", 3)
    m.observe_batch("decode", 64)
    m.observe_batch("step", 65)
    assert _lines(m) == [
        "# HELP gdmcom_latency_seconds time from a request's arrival to its reply",
        "# TYPE gdmcom_latency_seconds histogram",
        *_hist("gdmcom_latency_seconds", "encode", M.LATENCY_BUCKETS, [0.02, 0.3]),
        *_hist("gdmcom_latency_seconds", "decode", M.LATENCY_BUCKETS, [0.25]),
        "# HELP gdmcom_batch_size requests per codec call",
        "# TYPE gdmcom_batch_size histogram",
        *_hist("gdmcom_batch_size", "decode", M.BATCH_BUCKETS, [3, 64]),
        *_hist("gdmcom_batch_size", "step", M.BATCH_BUCKETS, [65]),
        "# HELP gdmcom_requests_total messages by outcome (the status counters)",
        "# TYPE gdmcom_requests_total counter",
        'gdmcom_requests_total{outcome="received"} 3.0',
        'gdmcom_requests_total{outcome="served"} 2.0',
        'gdmcom_requests_total{outcome="busy"} 0.0',
        "# HELP gdmcom_batches_total codec calls (a step-level server: UNet steps)",
        "# TYPE gdmcom_batches_total counter",
        "gdmcom_batches_total 4.0",
        "# HELP gdmcom_model_calls_total UNet calls",
        "# TYPE gdmcom_model_calls_total counter",
        "gdmcom_model_calls_total 9.0",
        "# HELP gdmcom_batch_retries_total model calls over several requests that raised and were retried in parts",
        "# TYPE gdmcom_batch_retries_total counter",
        "gdmcom_batch_retries_total 1.0",
        "# HELP gdmcom_queue_depth queue depth now",
        "# TYPE gdmcom_queue_depth gauge",
        "gdmcom_queue_depth 1.0",
        "# HELP gdmcom_inflight inflight now",
        "# TYPE gdmcom_inflight gauge",
        "gdmcom_inflight 2.0",
        "# HELP gdmcom_latency_quantile_seconds latency quantiles over the last 1024 replies",
        "# TYPE gdmcom_latency_quantile_seconds gauge",
        'gdmcom_latency_quantile_seconds{op="encode",quantile="0.5"} 0.16',
        'gdmcom_latency_quantile_seconds{op="encode",quantile="0.95"} 0.286',  # numpy: 0.02 + 0.95 (0.3 - 0.02)
        'gdmcom_latency_quantile_seconds{op="decode",quantile="0.5"} 0.25',
        'gdmcom_latency_quantile_seconds{op="decode",quantile="0.95"} 0.25',
    ]


def test_the_buckets_and_window_are_those_documented():
    assert M.LATENCY_BUCKETS == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                 float("inf"))
    assert M.BATCH_BUCKETS == (1, 2, 4, 8, 16, 32, 64, float("inf"))
    assert (M.WINDOW, M.QUANTILES, M.OPS) == (1024, (0.5, 0.95), ("encode", "decode"))
    assert set(M.WORK_COUNTERS) == {"batches", "model_calls", "batch_retries"}


def test_counters_and_gauges_are_read_at_scrape_time_not_copied():
    counters, state = dict(received=0), dict(queue_depth=0, inflight=0)
    m = ServerMetrics(counters, lambda: dict(state))
    assert 'gdmcom_requests_total{outcome="received"} 0.0' in _lines(m)
    assert [ln for ln in _lines(m) if "quantile=" in ln] == []  # no reply yet: no quantile samples
    counters["received"] = 5
    counters["failed"] = 1
    state.update(queue_depth=7, inflight=3)
    lines = _lines(m)
    assert 'gdmcom_requests_total{outcome="received"} 5.0' in lines
    assert 'gdmcom_requests_total{outcome="failed"} 1.0' in lines
    assert "gdmcom_queue_depth 7.0" in lines and "gdmcom_inflight 3.0" in lines
    assert not any(ln.startswith("gdmcom_batches_total") for ln in lines)  # absent from the counters: absent here


def test_quantiles_cover_the_last_window_of_replies_per_op():
    m = ServerMetrics({}, dict)
    assert m.quantiles("encode") == {} and m.quantiles("decode") == {}
    values = np.arange(M.WINDOW + 100, dtype=float)
    for v in values:
        m.observe_reply("encode", v)
    m.observe_reply("decode", 2.0)
    q = m.quantiles("encode")
    assert list(q) == [0.5, 0.95]
    assert q == {p: float(np.quantile(values[-M.WINDOW:], p)) for p in (0.5, 0.95)}
    assert q[0.5] == 100 + (M.WINDOW - 1) / 2  # the first 100 fell out
    assert m.quantiles("decode") == {0.5: 2.0, 0.95: 2.0}
    assert all(type(v) is float for v in q.values())
    # the histogram keeps every reply
    assert f'gdmcom_latency_seconds_count{{op="encode"}} {float(M.WINDOW + 100)!r}' in _lines(m)


def test_two_servers_in_one_process_do_not_mix():
    a, b = ServerMetrics(dict(received=1), dict), ServerMetrics(dict(received=2), dict)
    a.observe_batch("encode", 4)
    assert 'gdmcom_requests_total{outcome="received"} 2.0' in _lines(b)
    assert not any("gdmcom_batch_size_count" in ln for ln in _lines(b))
    assert 'gdmcom_batch_size_count{op="encode"} 1.0' in _lines(a)
    assert a.describe() == []


def test_metrics_are_served_over_http_until_closed():
    m = ServerMetrics(dict(served=6), lambda: dict(queue_depth=0))
    port = m.serve_http(0)
    assert port > 0 and m._http[0].server_address[:2] == ("127.0.0.1", port)  # loopback unless told otherwise
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            body = page.read().decode()
        assert 'gdmcom_requests_total{outcome="served"} 6.0' in body.splitlines()
        assert _lines(body) == _lines(m) and "gdmcom_queue_depth 0.0" in body.splitlines()
    finally:
        m.close()
    assert m._http is None
    m.close()  # twice is harmless
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_closing_metrics_that_never_served_http_is_harmless():
    ServerMetrics({}, dict).close()


def test_metrics_bind_the_address_given():
    m = ServerMetrics({}, dict)
    port = m.serve_http(0, "0.0.0.0")
    try:
        assert m._http[0].server_address[:2] == ("0.0.0.0", port)
    finally:
        m.close()
