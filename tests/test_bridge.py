"""The ZMQ inference server, its protocol and the Lazy Pirate client, on loopback.

Every server binds ``tcp://127.0.0.1:0`` (port read back from ``last_endpoint``),
every receive has a timeout, and fixtures stop servers, close sockets and term
contexts.  Most tests use a cheap codec (k=1, m=1, N=2: 3 UNet calls per
decode) built on the session's tiny model; the equality test uses the
session's default codec.
"""

import io
import json
import os
import signal
import socket
import subprocess
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from gr_gdmcom.bridge import Broker, InferenceServer, LocalBackend, RemoteBackend, make_backend
from gr_gdmcom.bridge import protocol as P
from gr_gdmcom.bridge.backend import BackendError, codec_lock
from gr_gdmcom.codec import CodecError, GenerativeCodec, ImageError
from gr_gdmcom.config import CodecConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def cfg():
    return CodecConfig(model="tiny", device="cpu", k=1, m=1, steps=2)


@pytest.fixture(scope="module")
def bcodec(components, cfg):
    return GenerativeCodec(cfg, components=components)


@pytest.fixture(scope="module")
def png(small):
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def enc(bcodec, small):
    return bcodec.encode(small, "small")


def noisy(enc, i, sigma=0.1):
    """The encoded symbols plus noise seeded by ``i`` (distinct inputs, reproducible)."""
    rng = np.random.default_rng(1000 + i)
    n = enc.symbols.size
    return (enc.symbols + sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(np.complex64)


def wait_for(cond, timeout=20.0, what="condition"):
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def in_threads(run, n, timeout=60):
    """``run(i)`` for i in 0..n-1, each in its own thread; returns when all are done."""
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def rss_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def serve(bcodec):
    """serve(**kw) -> a started InferenceServer on a free loopback port; all stopped at teardown."""
    servers = []

    def start(codec=bcodec, bind="tcp://127.0.0.1:0", **kw):
        srv = InferenceServer(codec, bind, **kw).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop(timeout=10)


@pytest.fixture
def client(cfg):
    """client(endpoints, **kw) -> RemoteBackend; all closed (contexts termed) at teardown."""
    made = []

    def make(endpoints, **kw):
        kw.setdefault("timeout_ms", 5000)
        c = RemoteBackend(endpoints, kw.pop("config", cfg), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Raw:
    """A bare DEALER speaking the protocol by hand (for malformed and parallel requests)."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames):
        self.sock.send_multipart([b""] + list(frames))

    def recv(self, timeout_ms=10000):
        assert self.sock.poll(timeout_ms), f"no reply within {timeout_ms} ms"
        msg = self.sock.recv_multipart()
        assert msg[0] == b""
        return P.parse_reply(msg[1:])

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.ctx.term()
            self.sock = None


@pytest.fixture
def raw():
    made = []

    def make(endpoint):
        r = Raw(endpoint)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def decode_frames(enc, rid, symbols=None, **header):
    """A decode request for ``enc`` with header fields overridden (None deletes one)."""
    msg = P.decode_request(rid, enc.symbols if symbols is None else symbols, enc.meta, 5.0)
    h = json.loads(msg[0])
    h.update(header)
    h = {k: v for k, v in h.items() if v is not None}
    return [json.dumps(h).encode()] + msg[1:]


def with_meta(enc, **fields):
    """A decode request for ``enc`` whose ``meta`` has ``fields`` replaced."""
    return decode_frames(enc, "r1", meta={**enc.meta.to_dict(), **fields})


# ---------------------------------------------------------------------- results
def test_replies_equal_in_process_results(codec, png, serve, client):
    """Default codec (k=m=5, snr rule): remote encode/decode == LocalBackend, bit for bit."""
    srv = serve(codec=codec, max_wait_ms=0)
    local = LocalBackend(codec.config, codec=codec)
    remote_raw = client(srv.last_endpoint, config=codec.config)
    remote_png = client(srv.last_endpoint, config=codec.config, image_format="png")
    e_loc, e_rem = local.encode(png), remote_raw.encode(png)
    assert e_rem.symbols.dtype == np.complex64 and e_rem.symbols.size == 128
    assert np.array_equal(e_rem.symbols, e_loc.symbols)
    assert e_rem.meta == e_loc.meta and e_rem.meta.name == "image0"
    assert e_rem.record["unet_calls"] == e_loc.record["unet_calls"] == 5
    rng = np.random.default_rng(7)
    mask = rng.random(e_loc.symbols.size) > 0.1
    for snr_db, m in ((0.0, None), (10.0, None), (5.0, mask)):
        sigma = 10 ** (-snr_db / 20) / np.sqrt(2)
        y = (e_loc.symbols + sigma * (rng.standard_normal(128) + 1j * rng.standard_normal(128))).astype(np.complex64)
        d_loc = local.decode(y, e_loc.meta, snr_db, mask=m)
        for remote in (remote_raw, remote_png):
            d_rem = remote.decode(y, e_rem.meta, snr_db, mask=m)
            assert d_rem.image.dtype == np.uint8 and d_rem.image.shape == (64, 64, 3) and d_rem.image.flags.writeable
            assert np.array_equal(d_rem.image, d_loc.image)
            for key in ("n_steps", "rule", "start_t", "scale", "erased"):
                assert d_rem.record[key] == d_loc.record[key]
            assert d_rem.record["server"]["batch"] == 1
    st = remote_raw.status()
    assert st["served"] == 1 + 6 and st["failed"] == 0 and st["dropped"] == 0


def test_status_reports_model_queue_counters(serve, client, enc, cfg):
    srv = serve(max_batch=3, max_queue=5)
    c = client(srv.last_endpoint)
    c.decode(enc.symbols, enc.meta, 5.0)
    st = c.status()
    assert st["model"] == "tiny" and st["device"] == "cpu" and st["protocol"] == 1
    assert st["speed"] == {}  # no speed option applied to this codec (gdmcom serve records its flags)
    assert st["version"] == __import__("gr_gdmcom").__version__
    assert (st["max_batch"], st["max_queue"], st["queue_depth"]) == (3, 5, 0)
    assert (st["requests"], st["served"], st["failed"], st["busy"], st["batches"]) == (1, 1, 0, 0, 1)
    assert st["model_calls"] == cfg.m + cfg.steps == 3
    assert st["uptime_s"] > 0 and st["config"]["steps"] == 2


def test_make_backend_gives_a_remote_backend(serve, cfg):
    srv = serve()
    b = make_backend(srv.last_endpoint, cfg)
    try:
        assert isinstance(b, RemoteBackend) and b.endpoints == [srv.last_endpoint]
        assert b.status()["model"] == "tiny"
    finally:
        b.close()


def test_either_backend_is_a_context_manager_and_a_closed_client_says_so(serve, cfg, enc):
    """`with make_backend(...) as b:` for local and remote alike (LocalBackend had no __enter__), and a
    RemoteBackend used after close() raises BackendError (it raised ZMQError 'Socket operation on
    non-socket' once it had sent a request before)."""
    with make_backend("local", cfg) as local:
        assert local.decode(enc.symbols, enc.meta, 10.0).image.shape[2] == 3
    srv = serve()
    with make_backend(srv.last_endpoint, cfg) as remote:
        assert remote.status()["model"] == "tiny"
    with pytest.raises(BackendError, match="^RemoteBackend is closed$"):
        remote.status()


def test_four_concurrent_clients_are_batched(serve, client, enc, bcodec):
    srv = serve(max_batch=4, max_wait_ms=300)
    clients = [client(srv.last_endpoint, timeout_ms=20000) for _ in range(4)]
    barrier, out, walls = threading.Barrier(4), {}, []

    def run(i):
        for j in range(2):
            barrier.wait(timeout=30)
            t0 = time.monotonic()
            out[i, j] = clients[i].decode(noisy(enc, 10 * i + j), enc.meta, 5.0)
            walls.append(time.monotonic() - t0)

    in_threads(run, 4)
    st = clients[0].status()
    assert len(out) == 8 and st["requests"] == st["served"] == 8
    assert st["batches"] <= 4 < 8  # 8 requests in at most 4 codec calls (2 rounds of 4 ideally)
    assert st["model_calls"] <= 4 * 3 < 8 * 3
    assert max(d.record["server"]["batch"] for d in out.values()) >= 2
    # metrics: one batch-size observation per codec call, summing to the requests; the server-side
    # latency quantiles lie between the fastest codec call and the slowest client round trip
    text = srv.metrics.text().decode()
    assert f'gdmcom_batch_size_count{{op="decode"}} {float(st["batches"])}' in text
    assert 'gdmcom_batch_size_sum{op="decode"} 8.0' in text and 'gdmcom_latency_seconds_count{op="decode"} 8.0' in text
    q = srv.metrics.quantiles("decode")
    fastest = min(d.record["server"]["codec_ms"] for d in out.values()) / 1e3
    assert fastest <= q[0.5] <= q[0.95] <= max(walls)
    assert f'gdmcom_latency_quantile_seconds{{op="decode",quantile="0.95"}} {q[0.95]!r}' in text
    assert f"gdmcom_batches_total {float(st['batches'])}" in text and 'outcome="batches"' not in text
    assert f"gdmcom_model_calls_total {float(st['model_calls'])}" in text and 'outcome="model_calls"' not in text
    for (i, j), d in out.items():  # batched arithmetic: same result within float rounding
        ref = bcodec.decode(noisy(enc, 10 * i + j), enc.meta, 5.0).image
        assert np.abs(d.image.astype(int) - ref).max() <= 2


def test_interleaved_encodes_and_decodes_fill_their_own_batches(serve, client, enc, small, monkeypatch):
    """Four transmitters' encodes and four receivers' decodes arriving together, in whatever order:
    two codec calls (one of each op), where stopping at the first request of the other op made a
    batch per change of op (up to 8 here).  The server counts a client as active for PEER_WINDOW_S
    (2 s) after its last request; the first round, which shows it the 8 clients, took longer than that
    in a full CI run on a slower machine (3 batches), so the window is a minute here."""
    from gr_gdmcom.bridge import server as server_module
    monkeypatch.setattr(server_module, "PEER_WINDOW_S", 60.0)
    srv = serve(max_batch=4, max_wait_ms=500)
    clients = [client(srv.last_endpoint, timeout_ms=20000) for _ in range(8)]
    barrier, out = threading.Barrier(8), {}

    def run(i):
        for j in range(2):  # the first round lets the server see 8 active clients (then it waits to fill)
            barrier.wait(timeout=30)
            if j == 1:
                time.sleep(0.002 * (i % 4))  # encodes and decodes interleave in the queue
            out[i, j] = (clients[i].encode(small, f"i{i}") if i % 2 else
                         clients[i].decode(noisy(enc, i), enc.meta, 10.0))
            if j == 0:
                barrier.wait(timeout=30)
                if i == 0:
                    out["before"] = clients[0].status()["batches"]

    in_threads(run, 8)
    st = clients[0].status()
    assert st["served"] == 16 and st["batches"] - out["before"] == 2
    assert sorted(out[i, 1].record["server"]["batch"] for i in range(8)) == [4] * 8


# ---------------------------------------------------------------------- bad input
BAD = {
    "garbage bytes": (lambda e: [b"\xff\xfe\x00 not json at all"], P.BAD_JSON),
    "header not an object": (lambda e: [b"[1, 2, 3]"], P.BAD_JSON),
    "wrong version": (lambda e: decode_frames(e, "r1", v=2), P.BAD_VERSION),
    "unknown op": (lambda e: [json.dumps({"v": 1, "op": "train", "id": "r1"}).encode()], P.BAD_OP),
    "no id": (lambda e: decode_frames(e, "r1", id=None), P.BAD_REQUEST),
    "sizes disagree with frames": (lambda e: decode_frames(e, "r1", sizes=[1024 + 8]), P.SIZE_MISMATCH),
    "symbol count disagrees with meta": (lambda e: decode_frames(e, "r1", symbols=e.symbols[:-1]), P.SIZE_MISMATCH),
    "NaN symbol": (lambda e: decode_frames(e, "r1", symbols=np.where(np.arange(128) == 3, np.nan, e.symbols)),
                   P.NON_FINITE),
    "NaN snr": (lambda e: decode_frames(e, "r1", snr_db=float("nan")), P.NON_FINITE),
    # removed means and symbols: a NaN or a value float32 cannot take decoded to an all-black "ok" image
    "NaN means": (lambda e: with_meta(e, means=[float("nan")] * 4), P.NON_FINITE),
    "means 1e300": (lambda e: with_meta(e, means=[1e300] * 4), P.BAD_META),
    "symbols 1e30": (lambda e: decode_frames(e, "r1", symbols=np.full(128, 1e30, np.complex64)), P.BAD_REQUEST),
    "reduce 2 without a method": (lambda e: with_meta(e, reduce=2), P.BAD_META),
    "oversized message": (lambda e: P.encode_request("r1", b"\x89PNG" + bytes(1 << 20), "big"), P.TOO_LARGE),
    "decode without metadata": (lambda e: decode_frames(e, "r1", meta=None), P.MISSING_META),
    "metadata with another T": (lambda e: decode_frames(e, "r1", meta={**e.meta.to_dict(), "T": 40}), P.BAD_META),
    "not an image": (lambda e: P.encode_request("r1", b"GIF89a? no", "x"), P.BAD_IMAGE),
    "mask of the wrong length": (lambda e: P.decode_request("r1", e.symbols, e.meta, 5.0, np.ones(100, bool)),
                                 P.SIZE_MISMATCH),
    # strict schema: no value is coerced to the field's type, every number is range-checked
    "prompt null": (lambda e: with_meta(e, prompt=None), P.BAD_META),
    "k true": (lambda e: with_meta(e, k=True), P.BAD_META),
    "k 5.9": (lambda e: with_meta(e, k=5.9), P.BAD_META),
    "alpha a string": (lambda e: with_meta(e, alpha="0.5"), P.BAD_META),
    "alpha true": (lambda e: with_meta(e, alpha=True), P.BAD_META),
    # in range of a float, not of a latent: alpha 1e-300 failed every request batched with it
    # (ZeroDivisionError, all answered `internal`), 1e-30 decoded to a black picture answered ok
    "alpha 1e-300": (lambda e: with_meta(e, alpha=1e-300), P.BAD_META),
    "alpha 1e-30": (lambda e: with_meta(e, alpha=1e-30), P.BAD_META),
    "image_size floats": (lambda e: with_meta(e, image_size=[63.9, 64.7]), P.BAD_META),
    "latent_shape of 2": (lambda e: with_meta(e, latent_shape=[4, 8]), P.BAD_META),
    "guidance out of range": (lambda e: with_meta(e, guidance=1e9), P.BAD_META),
    "pool reduce 3": (lambda e: with_meta(e, reduce=3, reduce_method="pool"), P.BAD_META),
    "two means for four channels": (lambda e: with_meta(e, means=[0.1, 0.2]), P.BAD_META),
    "reduce_method wavelet": (lambda e: with_meta(e, reduce=2, reduce_method="wavelet"), P.BAD_META),
    "meta not an object": (lambda e: decode_frames(e, "r1", meta=[1, 2]), P.BAD_META),
    "v 1.0": (lambda e: decode_frames(e, "r1", v=1.0), P.BAD_VERSION),
    "v true": (lambda e: decode_frames(e, "r1", v=True), P.BAD_VERSION),
    "snr -1e308": (lambda e: decode_frames(e, "r1", snr_db=-1e308), P.BAD_REQUEST),
    "snr a string": (lambda e: decode_frames(e, "r1", snr_db="5"), P.BAD_REQUEST),
    "infinite alpha": (lambda e: with_meta(e, alpha=float("inf")), P.NON_FINITE),
    "sizes of floats": (lambda e: decode_frames(e, "r1", sizes=[1024.0]), P.BAD_REQUEST),
    "format jpeg": (lambda e: decode_frames(e, "r1", format="jpeg"), P.BAD_REQUEST),
    "name null": (lambda e: [json.dumps({"v": 1, "op": "encode", "id": "r1", "name": None, "sizes": [4]}).encode(),
                             b"\x89PNG"], P.BAD_REQUEST),
    "nested 30000 deep": (lambda e: [b'{"v":1,"op":"status","id":"r1","x":' + b"[" * 30000 + b"]" * 30000 + b"}"],
                           P.BAD_JSON),
}


@pytest.fixture(scope="module")
def strict_server(bcodec):
    srv = InferenceServer(bcodec, "tcp://127.0.0.1:0", max_request_bytes=1 << 20, max_wait_ms=0).start()
    yield srv
    srv.stop(timeout=10)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_error_code_then_server_still_serves(case, strict_server, raw, enc):
    build, code = BAD[case]
    r = raw(strict_server.last_endpoint)
    rejected0 = strict_server.counters["rejected"]
    r.send(build(enc))
    header, payloads = r.recv()
    assert header["ok"] is False and header["code"] == code and payloads == []
    assert isinstance(header["message"], str) and header["message"]
    assert header["retry"] is False
    if code not in (P.BAD_JSON, P.BAD_REQUEST):
        assert header["id"] == "r1"  # echoed whenever it could be read
    assert strict_server.counters["rejected"] == rejected0 + 1
    r.send(P.decode_request("ok-" + case, enc.symbols, enc.meta, 5.0))  # the server is still up
    header, payloads = r.recv()
    assert header["ok"] and header["id"] == "ok-" + case and len(payloads) == 1


def test_a_request_over_the_servers_limit_fails_at_once(serve, client, tmp_path):
    """The server drops a message over --max-request-mb unread (no reply): a client waited 5 x 30 s and
    then blamed the server.  A client that read the server's status refuses it before sending."""
    srv = serve(max_request_bytes=4096)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(big)
    assert big.stat().st_size > 4096
    c = client(srv.last_endpoint, timeout_ms=30000)  # (with a configuration: reads the status before its requests)
    t0 = time.monotonic()
    with pytest.raises(ImageError, match=rf"^encode request of \d+ bytes is over the server's limit of 4096 bytes "
                                         rf"\(its status max_request_bytes; gdmcom serve --max-request-mb\)$"):
        c.encode(str(big))
    assert time.monotonic() - t0 < 5 and srv.counters["received"] == 1  # only the status request went out


def test_frame_and_size_refusals_word_for_word(enc):
    """What a hand-written client gets for a message of the wrong shape (parse_request and
    parse_reply alone): each refusal names what was wrong, with the numbers."""
    limits = P.Limits(T=50, m=1, max_pixels=64 * 64, max_header_bytes=4096, max_prompt_chars=100)

    def message(frames):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_request(frames, limits)
        return e.value.code, e.value.message

    def counted(frames, extra=()):  # frames with header 'sizes' saying what they are
        h = json.loads(frames[0])
        h["sizes"] = [len(f) for f in [*frames[1:], *extra]]
        return [json.dumps(h).encode(), *frames[1:], *extra]

    tall = io.BytesIO()
    Image.fromarray(np.zeros((65, 64, 3), np.uint8)).save(tall, "PNG")
    status, encode = P.status_request("r1"), P.encode_request("r1", tall.getvalue(), "tall")
    assert message([]) == message([b""]) == (P.BAD_JSON, "empty message: frame 0 must be the JSON header")
    assert message([b"{" + b" " * 5000 + b"}"]) == (P.TOO_LARGE, "header of 5002 bytes exceeds the limit of 4096 bytes")
    assert message(status + [b"x"]) == (P.SIZE_MISMATCH, "header says payload sizes [] but the frames have [1] bytes")
    assert message(counted(status, [b"x"])) == (P.BAD_REQUEST, "status takes no payload frames, got 1")
    assert message(counted(encode[:1])) == (P.BAD_REQUEST, "encode takes exactly one payload frame (the image "
                                                           "file), got 0")
    assert message(counted(encode, [b"x"]))[0] == P.BAD_REQUEST
    assert message(encode) == (P.TOO_LARGE, "image tall has 64x65 = 4160 pixels, more than the limit max_pixels=4096")
    assert message(counted(decode_frames(enc, "r1"), [b"\1" * 128, b"x"])) == (
        P.BAD_REQUEST, "'sizes': List should have at most 2 items after validation, not 3, got [1024, 128, 1]")
    odd = json.loads(decode_frames(enc, "r1")[0])
    odd["sizes"] = [1001]
    assert message([json.dumps(odd).encode(), b"\0" * 1001]) == (
        P.SIZE_MISMATCH, "small: symbol frame of 1001 bytes is not a whole number of 8-byte complex64 values")
    assert message(with_meta(enc, latent_shape=[3, 8, 8])) == (
        P.BAD_META, "small: latent has 3 channels but this model's latent has 4")
    assert message(with_meta(enc, latent_shape=[4, 16, 16])) == (
        P.TOO_LARGE, "small: latent [4, 16, 16] means a 128x128 image, more than max_pixels=4096")
    assert message(with_meta(enc, image_size=[72, 64])) == (
        P.BAD_META, "small: image_size [72, 64] does not fit latent [4, 8, 8] (at most 8h x 8w)")
    assert message(with_meta(enc, prompt="a" * 101)) == (P.BAD_META,
                                                          "small: prompt of 101 characters is longer than 100")
    # replies (what RemoteBackend drops with a warning, or raises)
    for frames, want in (([], (P.BAD_JSON, "empty reply")),
                         ([json.dumps({"v": 2, "ok": True, "id": "r"}).encode()],
                          (P.BAD_VERSION, "reply has protocol version 2, expected 1")),
                         ([json.dumps({"v": 1, "ok": True, "id": "r", "sizes": [3]}).encode(), b"ab"],
                          (P.SIZE_MISMATCH, "reply says sizes [3] but frames have [2] bytes"))):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_reply(frames)
        assert (e.value.code, e.value.message) == want


def test_erased_symbols_may_hold_anything(enc):
    """A receiver may write NaN (or garbage) where it erased a symbol: those are replaced by 0
    (mask byte 0), only the symbols kept must be finite."""
    erased = np.arange(128) % 5 == 0
    sym = np.where(erased, np.complex64(complex("nan+nanj")), enc.symbols).astype(np.complex64)
    req = P.parse_request(P.decode_request("r1", sym, enc.meta, 5.0, ~erased), P.Limits(T=50, m=1))
    assert np.array_equal(req.symbols, np.where(erased, 0, enc.symbols))
    kept = P.decode_request("r1", np.where(np.arange(128) == 1, np.nan, sym).astype(np.complex64), enc.meta, 5.0,
                            ~erased)
    with pytest.raises(P.ProtocolError, match=r"^small: received symbols contain 1 non-finite values"):
        P.parse_request(kept, P.Limits(T=50, m=1))


def test_schema_messages_name_the_field_and_value(enc):
    """The strict schema's refusals, word for word (parse_request alone, no server)."""
    limits = P.Limits(T=50, m=1)

    def message(frames):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_request(frames, limits)
        return e.value.code, e.value.message

    assert message(with_meta(enc, prompt=None)) == (P.BAD_META, "small: 'meta.prompt': Input should be a valid "
                                                                "string, got null")
    assert message(with_meta(enc, k=5.9)) == (P.BAD_META, "small: 'meta.k': Input should be a valid integer, got 5.9")
    assert message(decode_frames(enc, "r1", v=1.0)) == (P.BAD_VERSION, "this server speaks protocol version 1: "
                                                                        "header field 'v' must be 1, got 1.0")
    assert message(decode_frames(enc, "r1", snr_db=-1e308)) == (
        P.BAD_REQUEST, "small: 'snr_db': Input should be greater than or equal to -100, got -1e+308")
    assert message(decode_frames(enc, "r1", snr_db=float("-inf"))) == (P.NON_FINITE,
                                                                       "small: 'snr_db' must be finite, got -inf")
    assert message(decode_frames(enc, "r1", id=None)) == (P.BAD_REQUEST, "'id' is missing")
    assert message(decode_frames(enc, "r1", v=None)) == (P.BAD_VERSION, "this server speaks protocol version 1: "
                                                                         "header field 'v' must be 1, got nothing")
    assert message(with_meta(enc, means=[0.0, float("nan"), 0.0, 0.0])) == (
        P.NON_FINITE, "small: 'meta.means.1' must be finite, got nan")
    assert message(with_meta(enc, reduce=2)) == (
        P.BAD_META, "small: reduce 2 needs a reduce method: one of subset, pool, dct ('full' is reduce 1)")
    assert message(decode_frames(enc, "r1", symbols=np.where(np.arange(128) < 3, 1e7, enc.symbols))) == (
        P.BAD_REQUEST, "small: 3 received symbols exceed 1e+06 in magnitude (the symbols are unit-power; is the "
                       "receiver's gain set?)")
    # error messages start with the item's name, cut to 64 characters; "image" where it has none
    assert message(with_meta(enc, name="x" * 200, k=5.9))[1] == "x" * 61 + "...: 'meta.k': Input should be a " \
                                                                "valid integer, got 5.9"
    assert message(with_meta(enc, name=""))[1] == "image: 'meta.name': String should have at least 1 character, got \"\""
    assert message(P.encode_request("r1", b"GIF89a? no", "x")) == (
        P.BAD_IMAGE, "cannot read image x: not an image format Pillow can read")
    # integers are numbers: alpha 1 and guidance 6 pass (as floats), and the codec gets exactly these values
    req = P.parse_request(with_meta(enc, alpha=1, guidance=6), limits)
    assert (req.meta.alpha, req.meta.guidance, req.meta.k) == (1.0, 6.0, enc.meta.k)
    assert isinstance(req.meta.alpha, float) and req.meta.prompt == enc.meta.prompt


def test_sockets_of_ended_threads_are_closed(serve, client):
    """A block's worker thread is new at every flowgraph start: its socket must not pile up."""
    srv = serve()
    c = client(srv.last_endpoint)
    for _ in range(5):
        t = threading.Thread(target=c.status)
        t.start()
        t.join(30)
    assert c.open_sockets == 1  # the last thread's, not yet reaped
    c.status()
    assert c.open_sockets == 1  # this thread's only
    assert c.stats["requests"] == 6 and c.stats["timeouts"] == 0


def test_client_maps_error_codes_to_local_exceptions(serve, client, enc, tmp_path):
    c = client(serve().last_endpoint)
    with pytest.raises(CodecError, match="non-finite"):
        c.decode(np.where(np.arange(128) == 0, np.inf, enc.symbols), enc.meta, 5.0)
    with pytest.raises(CodecError, match="128 symbols but 100"):
        c.decode(enc.symbols[:100], enc.meta, 5.0)
    with pytest.raises(ImageError, match="cannot read image"):
        c.encode(b"definitely not an image")
    with pytest.raises(ImageError, match="image not found"):
        c.encode(tmp_path / "missing.png")
    assert c.status()["rejected"] == 3


# ---------------------------------------------------------------------- failures and retries
def _decode_in_background(c, enc, n):
    """Decode images 0 .. n-1 (:func:`noisy`) through ``c`` in a thread: (thread, {i: Decoded})."""
    out = {}

    def run():
        for i in range(n):
            out[i] = c.decode(noisy(enc, i), enc.meta, 5.0)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_server_restarted_mid_run_loses_no_image(serve, client, enc, bcodec):
    a = serve(max_wait_ms=0)
    endpoint = a.last_endpoint
    c = client(endpoint, timeout_ms=2000, retries=10)
    t, out = _decode_in_background(c, enc, 10)
    wait_for(lambda: a.counters["served"] >= 3, what="3 images served")
    a.stop()
    time.sleep(0.3)  # down for a while
    b = serve(bind=endpoint, max_wait_ms=0)
    t.join(60)
    served = list(a.served_ids) + list(b.served_ids)
    assert sorted(out) == list(range(10))
    # every image computed, and computed again only where the client gave up waiting for it (at-least-once
    # across servers, docs/protocol.md section 7): a retry after a timeout may reach the restarted server
    assert len(set(served)) == 10
    assert len(served) - 10 <= c.stats["timeouts"], (served, c.stats, a.counters, b.counters)
    assert a.counters["served"] >= 3 and b.counters["served"] >= 1
    for i, d in out.items():
        assert np.array_equal(d.image, bcodec.decode(noisy(enc, i), enc.meta, 5.0).image)


def test_stopping_answers_queued_requests_at_once_and_delivers_the_running_batch(serve, raw, enc, bcodec,
                                                                                  monkeypatch):
    """SIGTERM: queued requests were answered unavailable only after the batch in progress (14 s in the
    operator's test); now at once, while that batch still finishes and is delivered."""
    slow = threading.Event()
    real = bcodec.decode_many

    def decode_many(items):
        slow.set()
        time.sleep(2.0)
        return real(items)

    srv = serve(max_batch=1, max_wait_ms=0)
    monkeypatch.setattr(srv.codec, "decode_many", decode_many)
    r = raw(srv.last_endpoint)
    for i in range(4):
        r.send(P.decode_request(f"q{i}", enc.symbols, enc.meta, 5.0))
    assert slow.wait(10)
    wait_for(lambda: srv.status()["queue_depth"] == 3, what="3 requests queued")
    stopper = threading.Thread(target=srv.stop, kwargs=dict(timeout=30))
    t0 = time.monotonic()
    stopper.start()
    replies = {}
    for _ in range(4):
        header, _ = r.recv(timeout_ms=20000)
        replies[header["id"]] = (header.get("code") or "ok", time.monotonic() - t0)
    stopper.join(30)
    assert replies["q0"][0] == "ok" and replies["q0"][1] > 1.0  # the running batch finished and was delivered
    assert all(replies[f"q{i}"][0] == P.UNAVAILABLE and replies[f"q{i}"][1] < 1.0 for i in (1, 2, 3)), replies


def _spawn_server(endpoint: str) -> subprocess.Popen:
    """``gdmcom serve`` in its own process with the test codec's settings, once listening."""
    cmd = [sys.executable, "-m", "gr_gdmcom.cli", "serve", "--model", "tiny", "--device", "cpu", "--bind", endpoint,
           "--torch-threads", "1", "--k", "1", "--m", "1", "--steps", "2", "--max-wait-ms", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT)
    line = proc.stdout.readline()
    assert line and json.loads(line)["event"] == "listening", line
    return proc


def test_server_process_killed_mid_run_loses_no_image(client, enc, bcodec):
    """SIGKILL (no drain, no goodbye) of a `gdmcom serve` process during a 10-image run,
    a new one started on the same port: every image delivered once, each as computed
    in process; the new server computed the rest."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    procs = [_spawn_server(endpoint)]
    try:
        c = client(endpoint, timeout_ms=3000, retries=10)
        t, out = _decode_in_background(c, enc, 10)
        wait_for(lambda: len(out) >= 3, timeout=60, what="3 images decoded")
        procs[0].kill()
        procs[0].wait(10)
        procs.append(_spawn_server(endpoint))
        t.join(90)
        assert sorted(out) == list(range(10)), c.stats
        for i, d in out.items():
            assert np.array_equal(d.image, bcodec.decode(noisy(enc, i), enc.meta, 5.0).image)
        served = client(endpoint, timeout_ms=10000, retries=0).status()["served"]
        assert 1 <= served <= 7, (served, c.stats)  # the first delivered at least 3
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stdout.close()


def test_reply_to_a_client_gone_is_dropped_quietly(serve, raw, client, enc, bcodec):
    srv = serve(max_wait_ms=0)
    r = raw(srv.last_endpoint)
    with codec_lock(bcodec):  # hold the model: the client leaves before its reply exists
        r.send(P.decode_request("gone", enc.symbols, enc.meta, 5.0))
        wait_for(lambda: srv.counters["requests"] == 1, what="request accepted")
        r.close()
        time.sleep(0.2)
    wait_for(lambda: srv.counters["dropped"] == 1, what="reply dropped")
    assert srv.counters["served"] == 1 and srv.running
    st = client(srv.last_endpoint).status()
    assert (st["served"], st["failed"], st["dropped"]) == (1, 0, 1)


def test_retried_id_is_computed_once(serve, raw, enc, bcodec):
    """A retry from a new socket is attached to the queued request; a later one gets the stored reply."""
    srv = serve(max_wait_ms=0)
    frames = P.decode_request("same-id", enc.symbols, enc.meta, 5.0, image_format="raw")
    first, second, third = raw(srv.last_endpoint), raw(srv.last_endpoint), raw(srv.last_endpoint)
    with codec_lock(bcodec):
        first.send(frames)
        wait_for(lambda: srv.counters["requests"] == 1, what="request accepted")
        second.send(frames)
        wait_for(lambda: srv.counters["duplicates"] == 1, what="duplicate seen")
    header, payloads = second.recv()  # the reply goes to the latest sender
    assert header["ok"] and header["id"] == "same-id"
    assert not first.sock.poll(300)
    third.send(frames)
    header3, payloads3 = third.recv()
    assert header3["id"] == "same-id" and payloads3 == payloads
    assert srv.counters["served"] == 1 and list(srv.served_ids) == ["same-id"] and srv.counters["duplicates"] == 2
    third.send(P.decode_request("same-id", enc.symbols, enc.meta, 9.0))  # same id, other request
    assert third.recv()[0]["code"] == P.BAD_REQUEST


def _status_through_a_fake_server(client, answer):
    """``client.status()`` against a fake ROUTER; ``answer(send, rid)`` replies with ``send(frames)``.
    Returns (the status the client got, the client)."""
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.bind("tcp://127.0.0.1:0")
    c = client(fake.getsockopt(zmq.LAST_ENDPOINT).decode(), timeout_ms=5000, retries=0)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("status", c.status()))
    t.start()
    try:
        assert fake.poll(5000)
        ident, delim, header = fake.recv_multipart()
        answer(lambda frames: fake.send_multipart([ident, delim] + frames), json.loads(header)["id"])
        t.join(10)
    finally:
        fake.close(0)
        ctx.term()
    return out["status"], c


def test_client_ignores_stale_replies(client):
    """A fake server answers first with another id: the client waits for its own."""
    def answer(send, rid):
        send(P.reply("some-older-id", "status", status={"model": "stale"}))
        send(P.reply(rid, "status", status={"model": "fresh"}))

    status, c = _status_through_a_fake_server(client, answer)
    assert status == {"model": "fresh"} and c.stats["stale"] == 1


def test_client_drops_and_counts_malformed_replies(client, caplog):
    """Frames that are no protocol reply (garbage, a header that is not JSON, an empty message) are
    logged and counted; the client goes on waiting for its own reply."""
    def answer(send, rid):
        for junk in ([b"\xff\xfe not json"], [b"[1, 2]"], [b""]):
            send(junk)
        send(P.reply(rid, "status", status={"model": "fresh"}))

    status, c = _status_through_a_fake_server(client, answer)
    assert status == {"model": "fresh"}
    assert c.stats["malformed"] == 3 and c.stats["stale"] == 0 and c.stats["timeouts"] == 0
    assert sum("malformed reply dropped" in r.getMessage() for r in caplog.records) == 3


def test_no_server_raises_backend_error_after_retries(client):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind("tcp://127.0.0.1:0")
    endpoint = s.getsockopt(zmq.LAST_ENDPOINT).decode()
    s.close(0)
    ctx.term()  # nobody listens there now
    c = client(endpoint, timeout_ms=300, retries=2)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"after 3 attempts \(timeout 300 ms each\)") as e:
        c.status()
    assert endpoint in str(e.value) and "gdmcom serve" in str(e.value)
    assert 0.85 < time.monotonic() - t0 < 3.0
    assert c.stats["timeouts"] == 3 and c.stats["retries"] == 2


def test_client_backs_off_on_busy_then_succeeds(serve, raw, client, enc, bcodec):
    srv = serve(max_queue=1, max_batch=1, max_wait_ms=0)
    r = raw(srv.last_endpoint)
    c = client(srv.last_endpoint, timeout_ms=5000, retries=8)
    out = {}
    with codec_lock(bcodec):
        r.send(P.decode_request("a", enc.symbols, enc.meta, 5.0))  # taken by the worker, blocked on the lock
        wait_for(lambda: srv.counters["requests"] == 1 and srv.status()["queue_depth"] == 0, what="worker busy")
        r.send(P.decode_request("b", enc.symbols, enc.meta, 5.0))  # fills the queue
        wait_for(lambda: srv.counters["requests"] == 2, what="queue full")
        t = threading.Thread(target=lambda: out.setdefault("d", c.decode(enc.symbols, enc.meta, 5.0)))
        t.start()
        wait_for(lambda: srv.counters["busy"] >= 1, what="busy reply")
    t.join(30)
    assert out["d"].image.shape == (64, 64, 3) and c.stats["busy"] >= 1
    assert {r.recv()[0]["id"], r.recv()[0]["id"]} == {"a", "b"}


# ---------------------------------------------------------------------- several servers
def _run_with_one_server_stopped(c, servers, enc, n):
    """Decode ``n`` images through ``c``; once every server has served 2, stop the last one."""
    t, out = _decode_in_background(c, enc, n)
    wait_for(lambda: all(s.counters["served"] >= 2 for s in servers), what="both servers serving")
    servers[-1].stop()
    t.join(60)
    return out


def test_two_servers_in_the_endpoint_list_share_the_load(serve, client, enc, bcodec):
    a, b = serve(max_wait_ms=0), serve(max_wait_ms=0)
    c = client(f"{a.last_endpoint}, {b.last_endpoint}", timeout_ms=2000, retries=10)
    out = _run_with_one_server_stopped(c, [a, b], enc, 12)
    assert sorted(out) == list(range(12))
    assert a.counters["served"] > 0 and b.counters["served"] > 0
    # 12 computed, plus one per request the client gave up on and sent to the other server
    assert 12 <= a.counters["served"] + b.counters["served"] <= 12 + c.stats["timeouts"], (c.stats, a.counters,
                                                                                          b.counters)
    for i, d in out.items():
        assert np.array_equal(d.image, bcodec.decode(noisy(enc, i), enc.meta, 5.0).image)


def test_broker_in_front_of_two_servers(serve, client, enc):
    broker = Broker("tcp://127.0.0.1:0", "tcp://127.0.0.1:0").start()
    try:
        a = serve(bind=None, connect=broker.backend_endpoint, max_wait_ms=0)
        b = serve(bind=None, connect=broker.backend_endpoint, max_wait_ms=0)
        c = client(broker.frontend_endpoint, timeout_ms=2000, retries=10)
        out = _run_with_one_server_stopped(c, [a, b], enc, 10)
        assert sorted(out) == list(range(10))
        assert a.counters["served"] > 0 and b.counters["served"] > 0
        assert len(set(a.served_ids) | set(b.served_ids)) == 10
    finally:
        broker.stop()


# ---------------------------------------------------------------------- overload
def test_overload_answers_every_request_and_memory_stays_bounded(serve, raw, bcodec):
    queue_size, n = 4, 40
    noise = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    image = buf.getvalue()
    srv = serve(max_queue=queue_size, max_batch=2, max_wait_ms=0)
    bcodec.encode_many([image, image])  # warm the allocator at this size and batch
    r = raw(srv.last_endpoint)
    r.send(P.encode_request("warm", image, "warm"))
    assert r.recv(30000)[0]["ok"]
    rss_idle = rss_bytes()
    sent = {}
    for i in range(n):
        r.send(P.encode_request(f"req{i}", image, f"img{i}"))
        sent[f"req{i}"] = time.monotonic()
    codes, peak_queue = {}, 0
    timeout_s = 30.0
    while len(codes) < n:
        peak_queue = max(peak_queue, srv.status()["queue_depth"])
        header, _ = r.recv(int(timeout_s * 1000))
        assert time.monotonic() - sent[header["id"]] < timeout_s
        codes[header["id"]] = "ok" if header["ok"] else header["code"]
    rss_after = rss_bytes()
    n_ok, n_busy = list(codes.values()).count("ok"), list(codes.values()).count(P.BUSY)
    assert n_ok + n_busy == n and n_ok >= queue_size
    assert n_busy >= n // 2  # most were turned away at once, not queued
    assert peak_queue <= queue_size
    assert srv.counters["busy"] == n_busy and srv.counters["served"] == n_ok + 1
    bound = 1.2 * (rss_idle + queue_size * len(image))
    assert rss_after <= bound, f"RSS {rss_after / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"


# ---------------------------------------------------------------------- CURVE on the edge
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs made with ``gdmcom keys``: server, client (accepted), intruder (not accepted)."""
    from gr_gdmcom.cli import build_parser

    root = tmp_path_factory.mktemp("keys")
    args = build_parser().parse_args(["keys", "--out", str(root / "accepted"), "--name", "client"])
    assert args.func(args) == 0
    args = build_parser().parse_args(["keys", "--out", str(root), "--name", "server", "intruder"])
    assert args.func(args) == 0
    assert args.func(args) == 2  # never overwrites a key pair
    return root


def test_a_curve_server_says_so_and_warns_when_no_client_key_is_accepted(serve, client, keys, tmp_path, caplog):
    """An empty --curve-clients folder started silently, refusing everyone; neither the log nor status
    said CURVE was on.  Both options at once said one of them was needed."""
    from gr_gdmcom.bridge.security import CurveServer

    with pytest.raises(ValueError, match="^--curve-clients DIR and --curve-allow-any exclude each other"):
        CurveServer(str(keys / "server.key_secret"), clients=str(keys / "accepted"), allow_any=True)
    (tmp_path / "none").mkdir()
    with caplog.at_level("WARNING", logger="gr_gdmcom.bridge.security"):
        srv = serve(curve=CurveServer(str(keys / "server.key_secret"), clients=str(tmp_path / "none")))
    assert f"CURVE: no client keys (*.key) in {tmp_path / 'none'}: every client will be refused" in caplog.text
    assert srv.status()["security"] == dict(curve=True, client_keys=0)
    assert serve().status()["security"] == dict(curve=False, client_keys=None)


def test_curve_serves_the_listed_key_and_refuses_others(serve, client, keys, enc, caplog, cfg):
    from gr_gdmcom.bridge.security import CurveServer, public_key_hex

    curve = CurveServer(str(keys / "server.key_secret"), clients=str(keys / "accepted"))
    srv = serve(curve=curve, max_wait_ms=0)
    key = public_key_hex(curve.public)
    # the accepted key, through the server string a flowgraph block gets
    good_secret = keys / "accepted" / "client.key_secret"
    good = make_backend(f"{srv.last_endpoint}?server_key={key}&client_key_file={good_secret}&timeout_ms=5000", cfg)
    try:
        d = good.decode(enc.symbols, enc.meta, 5.0)
        assert np.array_equal(d.image, srv.codec.decode(enc.symbols, enc.meta, 5.0).image)
        good_requests = good.stats["requests"]  # the decode and the client's one-time settings check (status)
    finally:
        good.close()
    assert srv.counters["refused"] == 0
    # a key not in the folder, no key at all, a wrong server key: no reply, each refusal logged and counted
    intruder = make_backend(f"{srv.last_endpoint}?server_key={key}&client_key_file={keys / 'intruder.key_secret'}"
                            f"&timeout_ms=500&retries=0", cfg)
    plain = client(srv.last_endpoint, timeout_ms=500, retries=0)
    wrong_server = make_backend(f"{srv.last_endpoint}?server_key_file={keys / 'intruder.key'}&client_key_file="
                                f"{good_secret}&timeout_ms=500&retries=0", cfg)
    try:
        for i, c in enumerate((intruder, plain, wrong_server)):
            with caplog.at_level("WARNING"), pytest.raises(BackendError, match="no reply within 500 ms"):
                c.decode(enc.symbols, enc.meta, 5.0)
            wait_for(lambda: srv.counters["refused"] >= i + 1, what=f"refusal {i + 1} counted")
    finally:
        intruder.close()
        wrong_server.close()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    intruder_z85 = __import__("zmq.auth").auth.load_certificate(str(keys / "intruder.key"))[0].decode()
    assert any(f"refused client key {intruder_z85}" in m for m in refusals), refusals
    assert any("handshake failed" in m for m in refusals), refusals
    assert srv.counters["served"] == 1 and srv.counters["received"] == good_requests == 2  # none of theirs got in
    # the command line's quick check before any model is loaded uses the string's keys too
    from gr_gdmcom.cli import check_server
    from gr_gdmcom.codec import ModelLoadError

    assert check_server(f"{srv.last_endpoint}?server_key={key}&client_key_file={good_secret}")["model"] == "tiny"
    with pytest.raises(ModelLoadError, match=rf"^no inference server answers at {srv.last_endpoint} with these "
                                             rf"CURVE keys \(status request, 500 ms\)"):
        check_server(f"{srv.last_endpoint}?server_key={key}&client_key_file={keys / 'intruder.key_secret'}"
                     f"&timeout_ms=60000", timeout_ms=500)


def test_the_per_server_status_probe_uses_curve_and_names_what_differs(serve, keys, components, cfg):
    """The client's own-socket status probes (after a timeout with several endpoints; when the
    listed servers turn out to differ) go through CURVE like its requests: without the keys on
    those sockets every CURVE server looked silent, no hung one was ever left out, and the
    servers' differences could not be read."""
    from gr_gdmcom.bridge.client import _differences
    from gr_gdmcom.bridge.security import CurveServer, public_key_hex

    curve = CurveServer(str(keys / "server.key_secret"), clients=str(keys / "accepted"))
    a = serve(curve=curve)
    b = serve(GenerativeCodec(cfg.replace(guidance=2.0), components=components),
              curve=CurveServer(str(keys / "server.key_secret"), clients=str(keys / "accepted")))
    key = public_key_hex(curve.public)
    c = make_backend(f"{a.last_endpoint},{b.last_endpoint}?server_key={key}"
                     f"&client_key_file={keys / 'accepted' / 'client.key_secret'}&timeout_ms=5000", cfg)
    try:
        answers = c._status_each(3000)
    finally:
        c.close()
    assert sorted(answers) == sorted([a.last_endpoint, b.last_endpoint])
    assert answers[b.last_endpoint]["config"]["guidance"] == 2.0
    assert _differences(answers) == (f"; {a.last_endpoint}: guidance={cfg.guidance!r}, "
                                     f"{b.last_endpoint}: guidance=2.0")
    assert a.counters["refused"] == b.counters["refused"] == 0


def test_plain_tcp_off_loopback_is_warned_about(serve, caplog):
    with caplog.at_level("WARNING", logger="gr_gdmcom.bridge.server"):
        serve(bind="tcp://127.0.0.1:0")
        assert not [r for r in caplog.records if "plain TCP" in r.getMessage()]
        srv = serve(bind="tcp://0.0.0.0:0")
    (rec,) = [r for r in caplog.records if "plain TCP" in r.getMessage()]
    assert srv.last_endpoint in rec.getMessage() and "CURVE" in rec.getMessage()


def test_server_string_key_options_are_checked(cfg, keys):
    with pytest.raises(ValueError, match="64 hex digits or 40 Z85"):
        make_backend("tcp://127.0.0.1:5555?server_key=abc", cfg)
    with pytest.raises(ValueError, match="needs the server's public key"):
        make_backend(f"tcp://127.0.0.1:5555?client_key_file={keys / 'intruder.key_secret'}", cfg)
    with pytest.raises(ValueError, match="holds no secret key"):
        make_backend(f"tcp://127.0.0.1:5555?server_key_file={keys / 'server.key'}&client_key_file="
                     f"{keys / 'intruder.key'}", cfg)


# ---------------------------------------------------------------------- GNU Radio blocks
def test_gnuradio_blocks_use_the_server(codec, serve, small, tmp_path):
    """Semantic Source -> AWGN 15 dB -> Semantic Sink, both with ``server=<endpoint>``."""
    gr = pytest.importorskip("gnuradio.gr")
    from gnuradio import analog, blocks

    from gr_gdmcom.blocks import semantic_sink, semantic_source
    from gr_gdmcom.codec import select_steps

    Image.fromarray(small).save(tmp_path / "a.png")
    srv = serve(codec=codec)
    src = semantic_source(images=str(tmp_path / "a.png"), server=srv.last_endpoint, model="tiny", device="cpu")
    snk = semantic_sink(out_dir=str(tmp_path / "out"), server=srv.last_endpoint, model="tiny", device="cpu")
    try:
        assert isinstance(src.pipeline.backend, RemoteBackend) and isinstance(snk.pipeline.backend, RemoteBackend)
        tb = gr.top_block()
        add = blocks.add_cc()
        tb.connect(src, (add, 0))
        tb.connect(analog.noise_source_c(analog.GR_GAUSSIAN, 10 ** (-15 / 20), 7), (add, 1))
        tb.connect(add, snk)
        tb.run()
        (r,) = snk.results
        assert r["complete"] and (r["height"], r["width"]) == (64, 64) and abs(r["snr_est_db"] - 15.0) < 1.5
        alpha = src.pipeline.backend.encode(small).meta.alpha
        assert r["n_steps"] == select_steps(r["snr_est_db"], power=1 / alpha ** 2).n_steps
        assert (srv.counters["served"], srv.counters["failed"]) == (3, 0)  # encode, decode, our encode
    finally:
        src.pipeline.backend.close()
        snk.pipeline.backend.close()


# ---------------------------------------------------------------------- command line and documents
def test_gdmcom_serve_command(client, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "gr_gdmcom.cli", "serve", "--model", "tiny", "--device", "cpu",
           "--bind", "tcp://127.0.0.1:0", "--torch-threads", "1", "--steps", "12", "--max-batch", "2",
           "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        started = json.loads(line)
        assert started["event"] == "listening" and started["model"] == "tiny" and started["max_batch"] == 2
        st = client(started["endpoint"], timeout_ms=10000, retries=0).status()
        assert st["config"]["steps"] == 12 and st["pid"] == proc.pid
        # Prometheus text over HTTP, as a scraper reads it: the status call above is counted
        with urllib.request.urlopen(f"http://127.0.0.1:{started['metrics_port']}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert 'gdmcom_requests_total{outcome="received"} 1.0' in text and "gdmcom_queue_depth 0.0" in text
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["event"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_gdmcom_broker_command_says_when_it_listens_and_when_it_stopped():
    cmd = [sys.executable, "-m", "gr_gdmcom.cli", "broker", "--frontend", "tcp://127.0.0.1:0",
           "--backend", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT)
    try:
        started = json.loads(proc.stdout.readline() or "{}")
        assert started.get("event") == "listening", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == dict(started, event="stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_gdmcom_broker_max_message_mb_reaches_the_broker_and_is_checked(monkeypatch, capsys):
    """--max-message-mb: the broker's per-client frame bound (Broker(max_message_bytes=)), in MiB."""
    from gr_gdmcom.bridge import broker as broker_mod
    from gr_gdmcom.cli import main

    made = []

    class Recorder:
        def __init__(self, frontend, backend, max_message_bytes=None):
            made.append(max_message_bytes)

        def start(self):
            raise OSError("recorded")

    monkeypatch.setattr(broker_mod, "Broker", Recorder)
    assert main(["broker", "--max-message-mb", "1.0625"]) == 2 and main(["broker"]) == 2
    assert made == [(1 << 20) + (64 << 10), None]
    assert main(["broker", "--max-message-mb", "0"]) == 2 and len(made) == 2
    assert "error: --max-message-mb must be at least 1 KiB (0.001), got 0" in capsys.readouterr().err


def test_gdmcom_serve_refuses_curve_behind_a_broker(capsys):
    """A CURVE server connected to a broker refuses the broker itself (the broker does not speak
    CURVE): it received nothing, silently (soak_server.py).  Refused before any model is loaded."""
    from gr_gdmcom.cli import main

    assert main(["serve", "--connect", "tcp://127.0.0.1:1", "--curve-secret-key", "/nonexistent.key_secret",
                 "--model", "tiny", "--device", "cpu"]) == 2
    assert ("error: --curve-secret-key with --connect: gdmcom broker does not speak CURVE, so this server would "
            "refuse the broker itself and receive nothing") in capsys.readouterr().err


def test_server_status_exit_status_is_a_health_check(serve, capsys):
    """0 and the status JSON when the server replies, 1 when nothing replies (a health check's
    failure), 2 for an endpoint it cannot use (docs/server.md)."""
    from gr_gdmcom.cli import main

    srv = serve()
    assert main(["server-status", "--server", srv.last_endpoint]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out.splitlines()[-1])["model"] == "tiny"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["server-status", "--server", f"tcp://127.0.0.1:{port}", "--timeout-ms", "300"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no reply within 300 ms. Is `gdmcom serve` running there?" in err
    assert main(["server-status", "--server", "gpu-host:5555"]) == 2
    assert "error: server endpoint 'gpu-host:5555' has no transport; write e.g. tcp://gpu-host:5555" in \
        capsys.readouterr().err
    # an endpoint ZMQ refuses (no port, another protocol) hung: the socket it failed on was never closed, so
    # closing the client waited forever in Context.term()
    # and an address ZMQ takes but can never connect to (port 99999, no host) waited out the timeout, exit 1
    for bad, why in (("tcp://127.0.0.1", "no port"), ("http://127.0.0.1:5555", "Protocol not supported"),
                     ("tcp://127.0.0.1:99999", "the port must be 1..65535, got '99999'"), ("tcp://:5555", "no host"),
                     ("tcp://127.0.0.1:0", "the port must be 1..65535, got '0'")):
        assert _in_thread(lambda: main(["server-status", "--server", bad, "--timeout-ms", "300"]), 20) == 2
        assert (f"error: cannot use the server endpoint {bad!r}: {why}; write tcp://HOST:PORT (or ipc://PATH)"
                in capsys.readouterr().err)


def test_a_host_that_does_not_resolve_is_named(monkeypatch, capsys):
    """No reply from a host name that does not resolve: still exit 1 (a name can start resolving), the
    message says why; an address that resolves is not named."""
    import socket as socket_mod

    from gr_gdmcom.bridge.client import unresolved_hosts
    from gr_gdmcom.cli import main

    def fake(host, *a, **k):
        if host == "nohost.invalid":
            raise socket_mod.gaierror(-2, "Name or service not known")
        return [(socket_mod.AF_INET, socket_mod.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

    monkeypatch.setattr(socket_mod, "getaddrinfo", fake)
    assert unresolved_hosts(["tcp://nohost.invalid:5555", "tcp://127.0.0.1:5555", "ipc:///tmp/x",
                             "tcp://eth0;nohost.invalid:1"]) == ["nohost.invalid (Name or service not known)"] * 2
    assert main(["server-status", "--server", "tcp://nohost.invalid:5555", "--timeout-ms", "200"]) == 1
    assert capsys.readouterr().err.rstrip().endswith(
        "Is `gdmcom serve` running there? (host name does not resolve: nohost.invalid (Name or service not known))")



def test_simulate_through_a_server_refused_items_are_rows_and_a_server_that_stops_one_line(serve, small, capsys,
                                                                                        tmp_path, monkeypatch):
    """`simulate --server` as `simulate` alone: an SNR the codec refuses is that row's error (it was an
    uncaught BackendError: the server's bad_request), and a server that stops answering mid-run ends
    the run with one line and exit 1, the rows so far printed (it was a traceback)."""
    from gr_gdmcom.cli import main

    srv = serve()
    img = tmp_path / "a.png"
    Image.fromarray(small).save(img)
    argv = ["simulate", "--model", "tiny", "--images", str(img), "--server", srv.last_endpoint, "--out",
            str(tmp_path / "o")]
    # (the command line refuses --snr 400 itself now; the server's refusal of the item is what is tested)
    monkeypatch.setattr("gr_gdmcom.config.SNR_DB_RANGE", (-1000.0, 1000.0))
    assert main(argv + ["--snr", "400", "5"]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rows[0] == dict(image="a", snr_db=400.0, error="a: SNR estimate 400 dB is outside -100..100 dB")
    assert rows[1]["snr_db"] == 5.0 and rows[1]["psnr"] > 5 and "Traceback" not in err

    def dead(self, *a, **kw):
        raise BackendError("decode request r to tcp://x failed after 1 attempt (timeout 2000 ms each): no reply")

    monkeypatch.setattr(RemoteBackend, "decode", dead)
    assert main(argv + ["--snr", "5", "10"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and \
        "error: decode request r to tcp://x failed after 1 attempt (timeout 2000 ms each): no reply\n" in err
    # every image x SNR is still reported (docs/cli.md), without waiting for a dead server once more
    assert [json.loads(line) for line in out.splitlines()] == [
        dict(image="a", snr_db=s, error="not run: decode request r to tcp://x failed after 1 attempt (timeout "
                                        "2000 ms each): no reply") for s in (5.0, 10.0)]

def _in_thread(call, seconds):
    """``call()``'s value, or a test failure (not a hung test run) when it takes longer than ``seconds``."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"still running after {seconds} s")
    finally:
        pool.shutdown(wait=False)


def test_remote_backend_refuses_a_server_string_with_options():
    """RemoteBackend takes endpoints; the '?' options are make_backend's (the doc's example with a key file
    hung in __exit__ and hid ZMQ's error)."""
    with pytest.raises(ValueError, match=r"^RemoteBackend takes endpoints only, not 'tcp://h:5556\?server_key_fi"
                                         r"le=k.key': options after '\?' \(timeout_ms, retries, server_key, ...\) "
                                         r"are read by make_backend\(server, config\)"):
        RemoteBackend("tcp://h:5556?server_key_file=k.key")


def test_the_server_log_names_each_request_its_client_and_time(serve, client, small, caplog):
    """`-v` (INFO) logs each request's outcome with the client's address and its time, each batch,
    and busy refusals -- what an operator matches to an incident (the batches were DEBUG, the
    requests not logged at all)."""
    import logging

    srv = serve()
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.server"):
        c = client(srv.last_endpoint)
        c.encode(small, "small")
        deadline = time.time() + 5
        while time.time() < deadline and not any("served in" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.fullmatch(r"encode [0-9a-f]{32} from 127\.0\.0\.1: served in \d+ ms", m) for m in lines), lines
    assert any(re.fullmatch(r"encode batch of 1: \d+ model calls in [\d.]+ ms", m) for m in lines), lines


def test_a_refused_key_is_one_warning_not_one_per_retry(caplog, monkeypatch):
    """A client with a key not on the list retries several times a second: 21 warnings in 3 s flooded
    the log.  One warning per key, then one every REPEAT_S saying how many more."""
    from gr_gdmcom.bridge import security

    now = [1000.0]
    monkeypatch.setattr(security.time, "monotonic", lambda: now[0])
    keys = security._KeyList({b"good"}, False, "keys/")
    with caplog.at_level("WARNING", logger="gr_gdmcom.bridge.security"):
        for _ in range(20):
            assert keys.callback("", b"bad1") is False
            now[0] += 0.15
        assert keys.callback("", b"bad2") is False and keys.callback("", b"good") is True
        now[0] += 30
        keys.callback("", b"bad1")
    assert [r.getMessage() for r in caplog.records] == [
        "refused client key bad1: not among the accepted keys in keys/",
        "refused client key bad2: not among the accepted keys in keys/",
        "refused client key bad1: not among the accepted keys in keys/ (19 more refusals of it since the last warning)"]


@pytest.mark.parametrize("args, message", [
    (["--metrics-port", "70000"], "--metrics-port must be a TCP port 0..65535 (0: any free one) or -1 (off), got 70000"),
    (["--threads", "-2"], "--threads must be 0 (torch's choice) or a positive number of threads, got -2"),
    (["--reply-cache-mb", "-1"], "--reply-cache-mb must be >= 0 (0: keep no replies), got -1"),
    (["--max-request-mb", "-5"], "--max-request-mb must be at least 1 KiB (0.001), got -5"),
])
def test_serve_options_are_checked_with_their_names(args, message, capsys):
    """A traceback (--metrics-port 70000: OverflowError; --threads -2: torch's RuntimeError), a silent
    acceptance (--reply-cache-mb -1) or an internal name (max_request_bytes) before; one line now."""
    from gr_gdmcom.cli import main

    assert main(["serve", "--model", "tiny", "--bind", "tcp://127.0.0.1:0", *args]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_verbose_is_taken_after_the_command_too():
    from gr_gdmcom.cli import build_parser

    p = build_parser()
    assert p.parse_args(["serve", "-v", "--model", "tiny"]).verbose == 1
    assert p.parse_args(["-vv", "serve", "--model", "tiny"]).verbose == 2
    assert p.parse_args(["serve", "--model", "tiny"]).verbose == 0
    assert p.parse_args(["server-status", "-vv", "--server", "tcp://h:1"]).verbose == 2


def test_cli_registers_serve_broker_and_status():
    from gr_gdmcom.cli import build_parser

    p = build_parser()
    a = p.parse_args(["serve", "--model", "tiny", "--bind", "tcp://0.0.0.0:5555", "--max-batch", "8",
                      "--max-wait-ms", "20", "--max-queue", "64", "--device", "cuda:0", "--steps", "15"])
    assert (a.max_batch, a.max_wait_ms, a.max_queue, a.device, a.steps) == (8, 20.0, 64, "cuda:0", 15)
    b = p.parse_args(["broker", "--frontend", "tcp://*:5555", "--backend", "tcp://*:5556"])
    assert (b.frontend, b.backend) == ("tcp://*:5555", "tcp://*:5556")
    assert p.parse_args(["server-status", "--server", "tcp://h:5555"]).server == "tcp://h:5555"
    r = p.parse_args(["serve", "--engine", "ray", "--min-replicas", "1", "--max-replicas", "4", "--gpus-per-replica",
                      "0.5", "--ray-address", "ray://head:10001", "--curve-secret-key", "s.key_secret",
                      "--curve-allow-any"])
    assert (r.engine, r.min_replicas, r.max_replicas, r.gpus_per_replica, r.ray_address) == ("ray", 1, 4, 0.5,
                                                                                             "ray://head:10001")
    assert (r.curve_secret_key, r.curve_allow_any, r.curve_clients) == ("s.key_secret", True, None)


def test_protocol_document_covers_every_code_and_field():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for code in P.ERROR_CODES:
        assert f"`{code}`" in doc, code
    for name in P.meta_fields() + ["sizes", "snr_db", "retry_after_ms", "n_steps", "<c8"]:
        assert f"`{name}`" in doc or name in doc, name


def test_serve_speed_flags_reach_apply_speed_options():
    """gdmcom serve's speed flags -> the keyword arguments both engines (local, every Ray replica) apply."""
    from gr_gdmcom.bridge.cli import speed_options_from_args
    from gr_gdmcom.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "tiny", "--compile-vae", "--fuse-qkv", "--channels-last"])
    assert speed_options_from_args(args) == dict(attention="sdpa", channels_last=True, compile=True, compile_mode=None,
                                                 compile_vae=True, fuse_qkv=True, inductor_tuning=False)
    args = build_parser().parse_args(["serve", "--compile-mode", "reduce-overhead", "--attention", "classic"])
    opts = speed_options_from_args(args)
    assert opts["compile"] is True and opts["compile_mode"] == "reduce-overhead" and opts["attention"] == "classic"
