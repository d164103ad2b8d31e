"""Soak the inference server with random requests: valid, mutated, garbage, clients that vanish.

    .venv/bin/python benchmarks/soak_server.py [--seconds 30] [--seed 0] [--threads 4] [--broker] [--curve]

A server (tiny model, k=1 m=1 N=2, max_request_bytes 1 MiB, max_queue 8) runs in a child process;
this process drives it in bursts.  Each burst: ``--threads`` clients, each on its own DEALER socket
(sometimes a REQ one, or a DEALER without the delimiter), send valid requests (encode, decode,
status with random settings and deadline_ms), valid requests mutated at random (JSON fields
deleted/duplicated/retyped/huge/nested/unicode, frames added/dropped/truncated/swapped, sizes
wrong, bytes flipped, ids reused with other content, exact retries), garbage frames and empty
messages; other clients send a request and close at once.  Every reply must be the documented
one: an ok reply whose sizes match its frames, or a one-line error with a code of docs/protocol.md
section 6 (not ``internal``), the request's id echoed, ``retry`` true only for busy/unavailable,
no payload.  A message without a reply is a finding unless it is the documented silent drop (a
frame over max_request_bytes + 64 KiB: ZeroMQ closes the connection).  After each burst the
server must answer a valid encode and decode with what the codec gives in-process.  At the end:
counters must add up (received = rejected + requests + busy + unavailable + duplicates + status
answered; requests = served + failed + expired), the server's log must hold no ERROR record or
traceback, and its RSS and thread count must stay bounded.

Prints messages sent per kind, replies per code, RSS and threads before/after, then the last line
``findings N``; exit 1 when N > 0.  Each run also sends one frame over max_request_bytes + 64 KiB
first (no reply when bound, ``too_large`` through a broker) and checks the server after it.
Found this way: through a broker, one such frame closed the server's only connection to the
broker for good, so no client was answered again (e5867e6).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

CODES = {"bad_json", "too_large", "bad_version", "bad_op", "bad_request", "size_mismatch", "missing_meta",
         "bad_meta", "non_finite", "bad_image", "rejected", "busy", "unavailable", "expired", "internal"}
MAX_REQUEST = 1 << 20
HEADER_MAX = 64 << 10
CFG = dict(model="tiny", device="cpu", k=1, m=1, steps=2)


# ---------------------------------------------------------------------- the server (child process)
def child(args) -> None:
    import logging
    import signal

    from gr_gdmcom.bridge import Broker, InferenceServer
    from gr_gdmcom.bridge.security import CurveServer, make_keys
    from gr_gdmcom.codec import GenerativeCodec
    from gr_gdmcom.config import CodecConfig

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="LOG %(levelname)s %(name)s %(message)s")

    def hook(a):  # an exception that kills a thread
        print(f"LOG ERROR uncaught in thread {a.thread.name}: {a.exc_type.__name__}: {a.exc_value}", file=sys.stderr,
              flush=True)
    threading.excepthook = hook
    codec = GenerativeCodec(CodecConfig(**CFG))
    curve = None
    if args.curve:
        make_keys(args.keys, "server")
        curve = CurveServer(str(Path(args.keys) / "server.key_secret"), allow_any=True)
    broker = None
    kw = dict(max_request_bytes=MAX_REQUEST, max_queue=8, max_batch=4, reply_cache_bytes=1 << 20, reply_ttl_s=10.0)
    if args.broker:
        broker = Broker("tcp://127.0.0.1:0", "tcp://127.0.0.1:0").start()
        srv = InferenceServer(codec, connect=broker.backend_endpoint, curve=curve, **kw).start()
        endpoint = broker.frontend_endpoint
    else:
        srv = InferenceServer(codec, "tcp://127.0.0.1:0", curve=curve, **kw).start()
        endpoint = srv.last_endpoint
    print(json.dumps({"endpoint": endpoint, "server_key": curve.public.decode() if curve else None}), flush=True)
    signal.signal(signal.SIGTERM, lambda *a: None)
    sys.stdin.readline()  # the driver closes stdin to stop us
    srv.stop(timeout=30)
    if broker:
        broker.stop()
    print(json.dumps({"counters": srv.counters}), flush=True)


# ---------------------------------------------------------------------- inputs
def png_bytes(rng: random.Random, fmt: str = "PNG") -> bytes:
    from PIL import Image
    h, w = rng.randint(8, 40), rng.randint(8, 40)
    arr = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


class Inputs:
    """Images and in-process encodings to build requests from (the reference results)."""

    def __init__(self, rng: random.Random):
        from gr_gdmcom.codec import GenerativeCodec
        from gr_gdmcom.config import CodecConfig
        from PIL import Image
        self.codec = GenerativeCodec(CodecConfig(**CFG))
        self.images = [png_bytes(rng, f) for f in ("PNG", "PNG", "JPEG", "BMP", "PNG")]
        self.enc = [self.codec.encode(np.array(Image.open(io.BytesIO(b)).convert("RGB")), f"img{i}")
                    for i, b in enumerate(self.images[:3])]
        self.ref_png = self.images[0]
        self.ref_enc = self.enc[0]
        self.ref_dec = self.codec.decode(self.enc[0].symbols, self.enc[0].meta, 10.0)


def valid(rng: random.Random, inp: Inputs, op: str = None) -> tuple:
    """(op, header dict, payloads) of a random valid request."""
    op, h, payloads = _valid(rng, inp, op)
    h["sizes"] = [len(p) for p in payloads]
    return op, h, payloads


def _valid(rng: random.Random, inp: Inputs, op: str = None) -> tuple:
    op = op or rng.choice(["encode", "encode", "decode", "decode", "decode", "status"])
    rid = uuid.uuid4().hex
    h = {"v": 1, "op": op, "id": rid}
    if rng.random() < 0.3:
        h["deadline_ms"] = rng.choice([rng.uniform(0.001, 50), rng.uniform(1000, 86_400_000), rng.randint(1, 10 ** 6)])
    if op == "status":
        return op, h, []
    if op == "encode":
        h["name"] = rng.choice(["a", "kodim01", "é" * 5, "x" * 256])
        if rng.random() < 0.4:
            h["settings"] = rng.choice([None, {}, {"k": rng.randint(0, 3)}])
        return op, h, [rng.choice(inp.images)]
    enc = rng.choice(inp.enc)
    sym = enc.symbols.copy()
    payloads = [(sym + 0.05 * np.random.default_rng(rng.randrange(1 << 30)).standard_normal(sym.size))
                .astype("<c8").tobytes()]
    if rng.random() < 0.3:
        payloads.append(bytes(rng.choice([0, 1, 255]) for _ in range(sym.size)))
    h.update(meta=enc.meta.to_dict(), snr_db=rng.uniform(-100, 100), format=rng.choice(["png", "raw"]))
    if rng.random() < 0.4:
        s = {}
        if rng.random() < 0.5:
            s["m"] = rng.randint(0, 2)
        if rng.random() < 0.5:
            s["steps"] = rng.choice([None, rng.randint(1, 6), rng.randint(1, 50) if rng.random() < 0.1 else 3])
        if rng.random() < 0.5:
            s["rescale"] = rng.random() < 0.5
        h["settings"] = s
    return op, h, payloads


WEIRD = [None, True, False, 0, -1, 1.5, 1e308, -1e308, 10 ** 30, "", "x", "\u00e9\u4e2d\U0001f600", "\ud800",
         [], [1, 2], {}, {"a": {"b": [None]}}, "x" * 100_000, [0] * 5000, float("nan"), float("inf")]


def mutate_header(rng: random.Random, h: dict, ctx: dict) -> bytes:
    """Frame 0 of ``h`` changed at random (often still JSON)."""
    h = json.loads(json.dumps(h))
    tweak = rng.choice(["delete", "retype", "retype", "meta", "settings", "dup", "nest", "unicode", "huge", "reuse",
                        "extra", "sizes", "v", "op", "raw"])
    ctx["tweak"] = tweak
    keys = list(h)
    if tweak == "delete" and keys:
        del h[rng.choice(keys)]
    elif tweak == "retype" and keys:
        h[rng.choice(keys)] = rng.choice(WEIRD)
    elif tweak == "meta" and isinstance(h.get("meta"), dict):
        mk = rng.choice(list(h["meta"]))
        r = rng.random()
        if r < 0.3:
            del h["meta"][mk]
        elif r < 0.7:
            h["meta"][mk] = rng.choice(WEIRD)
        else:
            h["meta"].update(rng.choice([
                {"reduce": rng.randint(1, 1024), "reduce_method": rng.choice(["subset", "dct", "pool", "full", "x"])},
                {"latent_shape": [4, rng.randint(1, 300), rng.randint(1, 300)]},
                {"image_size": [rng.randint(1, 3000), rng.randint(1, 3000)]}, {"k": rng.randint(-2, 60)},
                {"means": [rng.uniform(-1e7, 1e7) for _ in range(rng.choice([0, 1, 4, 5]))]},
                {"alpha": rng.choice([1e-4, 1e-3, 1e6, 2e6, 0.0, -1.0])}, {"T": rng.randint(0, 1001)},
                {"model_hash": rng.randint(-1, 70000)}, {"forward": "random"}]))
    elif tweak == "settings":
        h["settings"] = rng.choice([{"k": rng.randint(-5, 1005)},
                                    {"m": rng.randint(0, 60), "steps": rng.randint(0, 60)},
                                    {"steps": None, "rescale": rng.choice([1, "no", None, True])}, {"guidance": 2.0},
                                    [1], "k=3", {"m": 2.0}, {"k": True}])
    elif tweak == "nest":
        depth = rng.choice([10, 500, 999, 1001, 5000, 30000])
        return ('{"v":1,"op":"status","id":"n","x":' + "[" * depth + "]" * depth + "}").encode()
    elif tweak == "unicode" and keys:
        k = rng.choice(keys)
        h[k] = rng.choice(["\u0000", "\u202e\u00e9", "\U0001f600" * 200, "\ud800\udc00", "\udfff"])
    elif tweak == "huge":
        h[rng.choice(["pad", "name", "id"])] = "y" * rng.choice([129, 257, 60_000, 70_000, 200_000])
    elif tweak == "reuse" and ctx["ids"]:
        h["id"] = rng.choice(ctx["ids"])  # an id used before, maybe with other content
    elif tweak == "extra":
        h["future_field"] = rng.choice(WEIRD)
    elif tweak == "sizes":
        s = h.get("sizes", [])
        h["sizes"] = rng.choice([[], [0], [x + rng.choice([-1, 1]) for x in s] or [1], s + [0], [-1], [1.5], s[::-1],
                                 [0, 0, 0], "12"])
    elif tweak == "v":
        h["v"] = rng.choice([0, 2, 1.0, "1", True, None, 10 ** 400])
    elif tweak == "op":
        h["op"] = rng.choice(["ENCODE", "", None, 1, "status ", "decode\u0000"])
    elif tweak == "raw":
        text = json.dumps(h, allow_nan=True)
        r = rng.random()
        if r < 0.25:
            return text[: rng.randrange(len(text))].encode()
        if r < 0.5:  # a duplicate key (the last wins)
            return (text[:-1] + ', "op": "status"}').encode()
        if r < 0.75:
            return text.encode("utf-16")
        return text.replace('"v": 1', '"v": 1, "v": 2').encode()
    return json.dumps(h, allow_nan=True).encode("utf-8", "surrogatepass")


def mutate_frames(rng: random.Random, frames: list, ctx: dict) -> list:
    frames = list(frames)
    what = rng.choice(["add", "drop", "truncate", "swap", "flip", "flip", "empty", "big", "many"] * 10 + ["oversize"])
    ctx["frames"] = what
    if what == "add":
        frames.insert(rng.randint(1, len(frames)), os.urandom(rng.choice([0, 1, 8, 1000])))
    elif what == "drop" and len(frames) > 1:
        del frames[rng.randrange(1, len(frames))]
    elif what == "truncate" and len(frames) > 1:
        i = rng.randrange(1, len(frames))
        frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
    elif what == "swap" and len(frames) > 2:
        frames[1], frames[2] = frames[2], frames[1]
    elif what == "flip" and len(frames) > 1:
        i = rng.randrange(1, len(frames))
        b = bytearray(frames[i])
        for _ in range(rng.choice([1, 3, 50])):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        frames[i] = bytes(b)
    elif what == "empty":
        frames = rng.choice([[], [b""], [b"", b""]])
    elif what == "big":  # over max_request_bytes, under ZMQ's cap: too_large
        frames.append(b"\0" * (MAX_REQUEST + rng.randint(1, HEADER_MAX - 1)))
    elif what == "oversize":  # over ZMQ_MAXMSGSIZE: the connection is closed, no reply (documented)
        frames.append(b"\0" * (MAX_REQUEST + HEADER_MAX + 1))
    elif what == "many":  # many frames, each small, over the limit in all
        frames += [b"\1" * 100_000] * 12
    return frames


def garbage(rng: random.Random, ctx: dict) -> list:
    ctx["garbage"] = True
    n = rng.choice([1, 1, 2, 5, 50])
    return [os.urandom(rng.choice([0, 1, 7, 100, 5000])) for _ in range(n)]


# ---------------------------------------------------------------------- checks
class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = Counter()
        self.codes = Counter()
        self.findings = []
        self.status_ok = 0
        self.status_calls = 0

    def find(self, what: str, detail) -> None:
        with self.lock:
            self.findings.append(f"{what}: {detail}")
            if len(self.findings) <= 30:
                print(f"FINDING {what}: {str(detail)[:400]}", flush=True)


def claimed_id(frames: list):
    """The id a reply should echo: frame 0's id when the server can read it, else None."""
    try:
        h = json.loads(frames[0].decode("utf-8"))
        rid = h.get("id") if isinstance(h, dict) else None
        return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None
    except Exception:
        return None


def check_reply(t: Tally, kind: str, sent: list, reply: list, ctx: dict) -> dict:
    """Check one reply (envelope already removed) to the body ``sent``; returns its header."""
    try:
        h = json.loads(reply[0].decode("utf-8"))
        assert isinstance(h, dict)
    except Exception as exc:
        t.find("unreadable reply", f"{kind} {ctx}: {exc} {reply[:2]!r:.200}")
        return {}
    code = "ok" if h.get("ok") is True else h.get("code")
    with t.lock:
        t.codes[code] += 1
        if h.get("op") == "status" and h.get("ok"):
            t.status_ok += 1
    if h.get("v") != 1 or h.get("sizes") != [len(f) for f in reply[1:]]:
        t.find("bad reply framing", f"{kind} {ctx} {h!r:.300}")
    if h.get("ok") is not True:
        msg = h.get("message")
        if code not in CODES or code == "internal":
            t.find(f"code {code}", f"{kind} {ctx} {msg!r:.300}")
        if not isinstance(msg, str) or "\n" in msg or not msg:
            t.find("message not one line", f"{kind} {ctx} {msg!r:.300}")
        if h.get("retry") is not (code in ("busy", "unavailable")) or reply[1:]:
            t.find("retry flag / payload", f"{kind} {ctx} {h!r:.300}")
    rid = claimed_id(sent) if sent and len(sent[0]) <= HEADER_MAX else None  # a header too large is not read
    if sent and h.get("id") != rid and not (rid is None and h.get("id") is not None and ctx.get("tweak") == "raw"):
        t.find("id not echoed", f"{kind} {ctx} sent {rid!r:.80} got {h.get('id')!r:.80} ({code})")
    return h


class Client:
    """One socket (DEALER with or without delimiter, or REQ) sending one request at a time."""

    def __init__(self, ctx, endpoint, curve, style):
        self.style = style
        self.sock = ctx.socket(zmq.REQ if style == "req" else zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve:
            pub, sec = zmq.curve_keypair()
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = curve, pub, sec
        self.sock.connect(endpoint)
        self.pending = {}  # id -> (kind, body, ctx, t_sent) of requests answered later

    def close(self):
        self.sock.close(0)

    def send(self, body):
        if self.style == "dealer":
            self.sock.send_multipart([b""] + body)
        else:
            self.sock.send_multipart(body if body else [b""])

    def recv(self, timeout_ms):
        if not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart()
        if self.style == "dealer":
            if not frames or frames[0] != b"":
                return ["__noenvelope__"] + frames
            return frames[1:]
        return frames


def exchange(t: Tally, cl: Client, kind: str, body: list, ctx: dict, wait_ms: int = 3000, retried=()):
    """Send ``body``, wait for its reply; True when the socket must be replaced."""
    t.sent[kind] += 1
    rid = claimed_id(body) if body else None
    oversize = any(len(f) > MAX_REQUEST + HEADER_MAX for f in body)
    misread = cl.style == "nodelim" and any(len(f) == 0 for f in body[1:]) or (cl.style == "nodelim" and (not body
                                                                                     or len(body[0]) == 0))
    try:
        cl.send(body)
    except zmq.ZMQError as exc:
        t.find("send failed", f"{kind} {exc}")
        return True
    t0 = time.monotonic()
    while True:
        rep = cl.recv(max(1, int(wait_ms - (time.monotonic() - t0) * 1e3)))
        if rep is None:
            if oversize:
                with t.lock:
                    t.codes["(dropped: frame over ZMQ_MAXMSGSIZE)"] += 1
                return True
            if cl.style == "req" and rid is not None and time.monotonic() - t0 < 60:
                continue  # a REQ socket cannot leave it pending: wait for a request queued behind others
            if cl.style == "req" and rid in retried:  # documented: the reply went to the retry's sender
                with t.lock:
                    t.codes["(reply went to the retry, documented)"] += 1
                return True
            if cl.style == "req" or rid is None:
                t.find("no reply", f"{kind} {cl.style} {ctx} {body[0][:150] if body else body!r}")
                return True
            cl.pending[rid] = (kind, body, ctx, t0)  # queued behind others: collected later
            return cl.style == "req"
        if rep and rep[0] == "__noenvelope__":
            t.find("reply without delimiter to a DEALER that sent one", f"{kind} {ctx} {rep[1:3]!r:.200}")
            return True
        if misread:  # documented: a zero-length frame ends the envelope; the reply begins with our frames
            with t.lock:
                t.codes["(misread envelope, documented)"] += 1
            return True
        try:
            h = json.loads(rep[0])
            got = h.get("id")
        except Exception:
            got = "?"
        if got is not None and got != rid and got in cl.pending:
            kind2, body2, ctx2, _ = cl.pending.pop(got)
            check_reply(t, kind2, body2, rep, ctx2)
            continue
        check_reply(t, kind, body, rep, ctx)
        if cl.style == "req":
            return False
        return False


def drain(t: Tally, cl: Client, wait_s: float, retried=()) -> None:
    end = time.monotonic() + wait_s
    while set(cl.pending) - set(retried) and time.monotonic() < end:
        rep = cl.recv(200)
        if rep is None:
            continue
        if rep[0] == "__noenvelope__":
            rep = rep[1:]
        try:
            rid = json.loads(rep[0]).get("id")
        except Exception:
            rid = None
        if rid in cl.pending:
            kind, body, ctx, _ = cl.pending.pop(rid)
            check_reply(t, kind, body, rep, ctx)
        else:
            check_reply(t, "late/unknown", [], rep, {"id": rid})
    for rid, (kind, body, ctx, t0) in cl.pending.items():
        if rid in retried:  # documented: the reply to a request in the queue goes to its latest sender
            with t.lock:
                t.codes["(reply went to the retry, documented)"] += 1
            continue
        t.find("no reply (queued)", f"{kind} {ctx} id {rid} after {time.monotonic() - t0:.0f} s")
    cl.pending.clear()


def abuse_thread(t: Tally, zctx, endpoint, curve, inp, seed, n, ids, retries, retried, broker=False):
    rng = random.Random(seed)
    style = ["dealer", "nodelim", "req", "dealer"][seed % 4]
    if broker and style == "nodelim":  # documented: no reply at all through a broker (protocol.md section 1)
        style = "dealer"
    cl = Client(zctx, endpoint, curve, style)
    try:
        for _ in range(n):
            r = rng.random()
            ctx = {"ids": ids}
            if r < 0.08:
                op, h, p = valid(rng, inp)
                kind = f"valid {op}"
                body = [json.dumps(h).encode()] + p
                if op != "status":
                    ids.append(h["id"])
                    retries.append(body)
            elif r < 0.12 and retries:
                kind, body = "exact retry", rng.choice(retries)
                retried.add(claimed_id(body))
            elif r < 0.55:
                op, h, p = valid(rng, inp)
                kind = f"header-mutated {op}"
                body = [mutate_header(rng, h, ctx)] + p
            elif r < 0.85:
                op, h, p = valid(rng, inp)
                kind = f"frame-mutated {op}"
                body = mutate_frames(rng, [json.dumps(h).encode()] + p, ctx)
            else:
                kind, body = "garbage", garbage(rng, ctx)
            ctx.pop("ids")
            ctx["style"] = style
            if exchange(t, cl, kind, body, ctx, retried=retried):
                drain(t, cl, 60, retried)
                cl.close()
                cl = Client(zctx, endpoint, curve, style)
        drain(t, cl, 60, retried)
    finally:
        cl.close()


def vanish_thread(t: Tally, zctx, endpoint, curve, inp, seed, n):
    rng = random.Random(seed)
    for _ in range(n):
        cl = Client(zctx, endpoint, curve, "dealer")
        op, h, p = valid(rng, inp, rng.choice(["encode", "decode"]))
        body = [json.dumps(h).encode()] + p
        if rng.random() < 0.3:
            body = body[:1]  # cut short: the server answers a client already gone
        t.sent["vanishing " + op] += 1
        cl.send(body)
        time.sleep(rng.choice([0, 0, 0.001, 0.05]))
        cl.close()


def proc_stat(pid: int) -> tuple:
    text = Path(f"/proc/{pid}/status").read_text()
    val = {ln.split(":")[0]: ln.split(":", 1)[1].split() for ln in text.splitlines() if ":" in ln}
    return int(val["VmRSS"][0]) / 1024, int(val["Threads"][0])


def check_valid(t: Tally, zctx, endpoint, curve, inp) -> bool:
    """The server answers a valid encode and decode as the codec does in-process (False: it did
    not answer at all)."""
    from gr_gdmcom.bridge import protocol as P
    cl = Client(zctx, endpoint, curve, "dealer")

    def ask(op, frames):
        """(header, payloads) of the reply; None when there was none, (header, None) when it was
        an error: both findings."""
        cl.send(frames)
        rep = cl.recv(30_000)
        if rep is None:
            t.find(f"no reply to a valid {op} after a burst", "")
            return None
        h, pl = P.parse_reply(rep)
        if not h.get("ok"):
            t.find(f"valid {op} refused after a burst", h)
            return h, None
        return h, pl

    try:
        got = ask("encode", P.encode_request(uuid.uuid4().hex, inp.ref_png, "img0"))
        if got is None or got[1] is None:
            return got is not None
        sym = np.frombuffer(got[1][0], "<c8")
        if sym.shape != inp.ref_enc.symbols.shape or np.abs(sym - inp.ref_enc.symbols).max() > 1e-4:
            t.find("encode differs from in-process", np.abs(sym - inp.ref_enc.symbols).max())
        got = ask("decode", P.decode_request(uuid.uuid4().hex, inp.ref_enc.symbols, inp.ref_enc.meta, 10.0,
                                             image_format="raw"))
        if got is None or got[1] is None:
            return got is not None
        img = P.decoded_from_reply(*got).image
        diff = np.abs(img.astype(int) - inp.ref_dec.image.astype(int)).max()
        if diff > 1:
            t.find("decode differs from in-process", f"max grey-level difference {diff}")
        return True
    finally:
        cl.close()


def status(t, zctx, endpoint, curve) -> dict:
    t.status_calls += 1
    cl = Client(zctx, endpoint, curve, "dealer")
    try:
        cl.send([json.dumps({"v": 1, "op": "status", "id": uuid.uuid4().hex}).encode()])
        rep = cl.recv(10_000)
        return json.loads(rep[0])["status"] if rep else {}
    finally:
        cl.close()


def run(args) -> int:
    rng = random.Random(args.seed)
    keys = tempfile.mkdtemp(prefix="soak-keys-")
    cmd = [sys.executable, __file__, "--child", "--keys", keys] + (["--broker"] if args.broker else []) + \
          (["--curve"] if args.curve else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    errlog = open(Path(keys) / "server.log", "w+")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True, env=env)
    t = Tally()
    zctx = zmq.Context()
    try:
        info = json.loads(proc.stdout.readline())
        endpoint, curve = info["endpoint"], info["server_key"]
        curve = curve.encode() if curve else None
        inp = Inputs(rng)
        check_valid(t, zctx, endpoint, curve, inp)  # warm-up
        rss0, thr0 = proc_stat(proc.pid)
        big = Client(zctx, endpoint, curve, "dealer")  # one frame over ZMQ_MAXMSGSIZE, then the server must serve
        body = [json.dumps({"v": 1, "op": "status", "id": "oversize", "sizes": [2 * MAX_REQUEST]}).encode(),
                b"\0" * (2 * MAX_REQUEST)]
        if exchange(t, big, "oversize frame", body, {"style": "dealer"}, wait_ms=5000):
            pass
        big.close()
        alive = check_valid(t, zctx, endpoint, curve, inp)
        ids, retries, retried = [], [], set()
        t_end = time.monotonic() + (args.seconds if alive else 0)  # a server that answers nothing: stop here
        bursts, peak = 0, (rss0, thr0)
        while time.monotonic() < t_end:
            seeds = [rng.randrange(1 << 30) // 4 * 4 + i for i in range(args.threads)]  # seed % 4: the socket kind
            threads = [threading.Thread(target=abuse_thread, args=(t, zctx, endpoint, curve, inp, seed, args.burst,
                                                                  ids, retries, retried, args.broker))
                       for seed in seeds]
            threads += [threading.Thread(target=vanish_thread, args=(t, zctx, endpoint, curve, inp, rng.random(), 4))]
            for th in threads:
                th.start()
            for th in threads:
                th.join(300)
                if th.is_alive():
                    t.find("client thread hung", th.name)
            if not check_valid(t, zctx, endpoint, curve, inp):
                break
            del retries[:-50], ids[:-200]
            bursts += 1
            st = proc_stat(proc.pid)
            peak = (max(peak[0], st[0]), max(peak[1], st[1]))
        time.sleep(1.0)
        for _ in range(100):  # let the vanished clients' requests finish
            s = status(t, zctx, endpoint, curve)
            if not s or (s.get("queue_depth") == 0 and s.get("inflight") == 0):
                break
            time.sleep(0.2)
        rss1, thr1 = proc_stat(proc.pid)
    finally:
        zctx.destroy(0)
        try:
            proc.stdin.close()
        except Exception:
            pass
        try:
            out = proc.stdout.read()
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = ""
            t.find("server did not stop", "")
    counters = json.loads(out.strip().splitlines()[-1])["counters"] if out.strip() else {}
    errlog.seek(0)
    log = errlog.read()
    warns = Counter(" ".join(ln.split()[3:9]) for ln in log.splitlines() if ln.startswith("LOG WARNING"))
    for w, n in warns.most_common(5):
        print(f"server warning x{n}: {w} ...")
    errors = [ln for ln in log.splitlines() if ln.startswith("LOG ERROR") or "Traceback" in ln]
    for ln in errors[:10]:
        t.find("server log", ln[:300])
    if len(errors) > 10:
        t.find("server log", f"{len(errors)} ERROR lines in all")
    c = counters
    if c:
        status_answered = t.status_ok + t.status_calls
        rhs = c["rejected"] + c["requests"] + c["busy"] + c["unavailable"] + c["duplicates"]
        st_n = c["received"] - rhs
        if c["requests"] != c["served"] + c["failed"] + c["expired"] + c["unavailable"]:
            t.find("counters", f"requests {c['requests']} != served + failed + expired + unavailable {c}")
        if not status_answered <= st_n <= status_answered + c["dropped"]:
            t.find("counters", f"received {c['received']} - (rejected+requests+busy+unavailable+duplicates) = "
                               f"{st_n} status answers; client saw {status_answered}")
    else:
        t.find("no counters from the server", out[-300:])
    print(f"# soak_server: {args.seconds:.0f} s, {bursts} bursts of {args.threads} x {args.burst} messages, "
          f"seed {args.seed}{', broker' if args.broker else ''}{', CURVE' if args.curve else ''}")
    print("| sent | messages |")
    for k, v in sorted(t.sent.items()):
        print(f"| {k} | {v} |")
    print("| reply | count |")
    for k, v in sorted(t.codes.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v} |")
    print("counters:", json.dumps({k: v for k, v in c.items() if v}))
    print(f"server RSS {rss0:.0f} -> {rss1:.0f} MB (peak {peak[0]:.0f}), threads {thr0} -> {thr1} (peak {peak[1]})")
    if rss1 - rss0 > args.max_rss_growth_mb:
        t.find("memory", f"RSS grew {rss1 - rss0:.0f} MB")
    if thr1 > thr0 + 2:
        t.find("threads", f"{thr0} -> {thr1}")
    print(f"findings {len(t.findings)}")
    return 1 if t.findings else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to drive the server")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=4, help="abusing clients per burst")
    ap.add_argument("--burst", type=int, default=60, help="messages per client per burst")
    ap.add_argument("--broker", action="store_true", help="through a Broker (the server connects to it)")
    ap.add_argument("--curve", action="store_true", help="CURVE on (any client key accepted)")
    ap.add_argument("--max-rss-growth-mb", type=float, default=150.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keys", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.broker and args.curve:  # the broker speaks no CURVE: a CURVE server connected to it refuses it
        ap.error("--broker and --curve exclude each other (Broker has no CURVE: the server would refuse it)")
    if args.child:
        child(args)
        return
    sys.exit(run(args))


if __name__ == "__main__":
    main()
