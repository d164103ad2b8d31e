"""bridge/security.py alone: key files, key parsing, the server string's CURVE options, the ZAP
key list and its throttle, and a CURVE round trip on real sockets (no model, a few seconds).

The server's use of it (status, refusal counters, the socket monitor) is tested with the server
in test_bridge.py and test_server_mutants.py.
"""

from __future__ import annotations

import logging
import os
import stat

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from gr_gdmcom.bridge import security
from gr_gdmcom.bridge.backend import remote_backend
from gr_gdmcom.bridge.security import (HANDSHAKE_FAILED, CurveServer, Throttle, check_key_name,
                                       client_from_options, is_loopback, make_keys, parse_public_key,
                                       public_key_hex)

#: the key of pyzmq's certificate example, and the same 32 bytes in hex
Z85_KEY = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
HEX_KEY = z85.decode(Z85_KEY).hex()


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    """server, client, intruder pairs; accepted/ holds client.key and other.key."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "client", "intruder"):
        make_keys(root, name)
    make_keys(root / "accepted", "other")
    (root / "accepted" / "client.key").write_bytes((root / "client.key").read_bytes())
    return root


# ------------------------------------------------------------------------------------- key files
@pytest.mark.parametrize("name", ["server", "a", "A-1_b.c", "0", "..", "x" * 200])
def test_key_names_of_letters_digits_dots_dashes_underscores_are_taken(name):
    assert check_key_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "../x", "a b", "a\n", "é", "a*", "/abs", "a\\b"])
def test_other_key_names_are_refused_with_the_allowed_characters(name):
    with pytest.raises(ValueError) as e:
        check_key_name(name)
    assert str(e.value) == f"key name {name!r} must be letters, digits, '_', '.', '-'"


def test_make_keys_writes_a_pair_that_loads_and_keeps_the_secret_to_its_owner(tmp_path):
    public, secret = make_keys(tmp_path / "a" / "b", "srv")  # folders made as needed
    assert (public, secret) == (tmp_path / "a" / "b" / "srv.key", tmp_path / "a" / "b" / "srv.key_secret")
    pub, none = zmq.auth.load_certificate(str(public))
    pub2, sec = zmq.auth.load_certificate(str(secret))
    assert none is None and pub == pub2 and len(pub) == len(sec) == 40
    assert zmq.curve_public(sec) == pub  # a matching pair
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert make_keys(tmp_path / "a" / "b", "cli")[0].exists()  # a second pair in an existing folder


@pytest.mark.parametrize("existing", [".key", ".key_secret"])
def test_make_keys_never_overwrites_either_file_of_a_pair(tmp_path, existing):
    (tmp_path / ("srv" + existing)).write_text("mine")
    with pytest.raises(FileExistsError) as e:
        make_keys(tmp_path, "srv")
    assert str(e.value) == f"{tmp_path / ('srv' + existing)} exists; remove it or choose another --name"
    assert (tmp_path / ("srv" + existing)).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["srv" + existing]


def test_make_keys_checks_the_name_before_making_anything(tmp_path):
    with pytest.raises(ValueError, match="^key name '../x' must be"):
        make_keys(tmp_path / "new", "../x")
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------- key parsing
def test_public_key_hex_is_the_32_bytes_in_lower_case_hex():
    assert public_key_hex(Z85_KEY) == HEX_KEY == z85.decode(Z85_KEY).hex()
    assert len(HEX_KEY) == 64 and HEX_KEY == HEX_KEY.lower()


@pytest.mark.parametrize("text", [HEX_KEY, HEX_KEY.upper(), f"  {HEX_KEY}\n", Z85_KEY.decode(),
                                  f" {Z85_KEY.decode()} "])
def test_a_public_key_is_read_from_hex_or_z85(text):
    assert parse_public_key(text) == Z85_KEY


@pytest.mark.parametrize("text, n, hint", [
    ("", 0, ""),
    (HEX_KEY[:-1], 63, ""),
    (HEX_KEY + "0", 65, ""),
    ("g" + HEX_KEY[1:], 64, ""),  # not hex
    (Z85_KEY.decode()[:-1], 39, ""),
    ("~" + Z85_KEY.decode()[1:], 40, ""),  # not in Z85's alphabet (KeyError inside pyzmq)
    ("é" + Z85_KEY.decode()[1:], 40, ""),  # not ASCII
    ("#" * 40, 40, ""),  # Z85 characters, but each group of 5 over 2**32 (struct.error inside pyzmq)
    (Z85_KEY.decode()[:10] + " " + Z85_KEY.decode()[11:], 40,
     " (a '+' of a Z85 key reads as a space in a server string: give the hex digits)"),
])
def test_anything_else_is_refused_with_the_two_forms_and_its_length(text, n, hint):
    with pytest.raises(ValueError) as e:
        parse_public_key(text)
    assert str(e.value) == (f"server_key must be 64 hex digits or 40 Z85 characters (gdmcom keys prints both), "
                            f"got {n} characters{hint}")


# ------------------------------------------------------------------------ the client's options
def test_no_server_key_means_no_curve():
    assert client_from_options() is None
    assert client_from_options(None, None, None) is None


def test_a_server_key_gives_a_throw_away_client_pair_each_time():
    a, b = client_from_options(server_key=HEX_KEY), client_from_options(server_key=Z85_KEY.decode())
    assert a.server_public == b.server_public == Z85_KEY
    assert a.public != b.public and a.secret != b.secret
    for c in (a, b):
        assert zmq.curve_public(c.secret) == c.public and len(c.public) == 40


def test_key_files_give_the_server_key_and_the_client_pair(keydir):
    c = client_from_options(server_key_file=str(keydir / "server.key"),
                            client_key_file=str(keydir / "client.key_secret"))
    server_pub = zmq.auth.load_certificate(str(keydir / "server.key"))[0]
    assert (c.server_public, c.public, c.secret) == (server_pub, *zmq.auth.load_certificate(
        str(keydir / "client.key_secret")))
    c2 = client_from_options(server_key=public_key_hex(server_pub), client_key_file=str(keydir / "client.key_secret"))
    assert c2 == c


@pytest.mark.parametrize("kw, error, message", [
    (dict(server_key=HEX_KEY, server_key_file="s.key"), ValueError, "give server_key or server_key_file, not both"),
    (dict(server_key="", server_key_file=""), ValueError, "give server_key or server_key_file, not both"),
    (dict(client_key_file="c.key_secret"), ValueError,
     "client_key_file needs the server's public key (server_key= or server_key_file=)"),
    (dict(client_key_file=""), ValueError,
     "client_key_file needs the server's public key (server_key= or server_key_file=)"),
    (dict(server_key=""), ValueError,  # empty is not "no CURVE"
     "server_key must be 64 hex digits or 40 Z85 characters (gdmcom keys prints both), got 0 characters"),
    (dict(server_key_file="/nonexistent/s.key"), FileNotFoundError,
     "CURVE key file /nonexistent/s.key not found (make one with `gdmcom keys --out DIR`)"),
    (dict(server_key=HEX_KEY, client_key_file="/nonexistent/c.key_secret"), FileNotFoundError,
     "CURVE key file /nonexistent/c.key_secret not found (make one with `gdmcom keys --out DIR`)"),
])
def test_contradictory_or_missing_options_are_refused(kw, error, message):
    with pytest.raises(error) as e:
        client_from_options(**kw)
    assert type(e.value) is error and str(e.value) == message


def test_a_public_key_file_is_refused_where_the_secret_one_is_needed(keydir):
    with pytest.raises(ValueError) as e:
        client_from_options(server_key=HEX_KEY, client_key_file=str(keydir / "client.key"))
    assert str(e.value) == f"{keydir / 'client.key'} holds no secret key: give the .key_secret file"
    with pytest.raises(FileNotFoundError, match="^CURVE key file .* not found"):  # a folder is not a key file
        client_from_options(server_key_file=str(keydir))


def test_a_server_key_file_may_be_the_secret_one_only_its_public_half_is_used(keydir):
    c = client_from_options(server_key_file=str(keydir / "server.key_secret"))
    assert c.server_public == zmq.auth.load_certificate(str(keydir / "server.key"))[0]


# --------------------------------------------------------------- the server string's options
def _curve_of(server):
    with remote_backend(server) as b:
        return b.curve


def test_the_server_string_carries_the_keys_to_the_client(keydir):
    c = _curve_of(f"tcp://127.0.0.1:5?server_key={HEX_KEY}&client_key_file={keydir / 'client.key_secret'}&")
    assert (c.server_public, c.public) == (Z85_KEY, zmq.auth.load_certificate(str(keydir / "client.key"))[0])
    assert _curve_of(f"tcp://127.0.0.1:5?&&server_key={HEX_KEY}").server_public == Z85_KEY  # stray '&' harmless
    percent = "".join(f"%{b:02X}" for b in Z85_KEY)  # a Z85 key works percent-encoded
    assert _curve_of(f"tcp://127.0.0.1:5?server_key={percent}").server_public == Z85_KEY
    assert _curve_of("tcp://127.0.0.1:5") is None and _curve_of("tcp://127.0.0.1:5?timeout_ms=5") is None


@pytest.mark.parametrize("query, message", [
    # A Z85 key pasted raw: before, its '&' cut the query, the field without '=' was dropped, and
    # the client ran with no CURVE at all (plain text to whatever answered)
    ("server_key=&7cN((MAssd58i$}HkzVh^1+uVc$6v}HZLsOyDgK",
     "server options must be name=value pairs joined by '&', got 'server_key=&7cN((MAssd58i$}HkzVh^1+uVc$6v}HZLsOyDgK'"
     " (a Z85 key holds '&', '+' and '=': give server_key as the 64 hex digits gdmcom keys prints)"),
    ("timeout_ms", "server options must be name=value pairs joined by '&', got 'timeout_ms' (a Z85 key holds '&', "
                   "'+' and '=': give server_key as the 64 hex digits gdmcom keys prints)"),
    # ... its '+' read as a space
    ("server_key=G7cN((MAssd58i$}HkzVh^1+uVc$6v}HZLsOyDgK",
     "server_key must be 64 hex digits or 40 Z85 characters (gdmcom keys prints both), got 40 characters"
     " (a '+' of a Z85 key reads as a space in a server string: give the hex digits)"),
    # an empty key was dropped: no CURVE
    ("server_key=", "server_key must be 64 hex digits or 40 Z85 characters (gdmcom keys prints both), got 0 "
                    "characters"),
    ("server_key=&client_key_file=c.key_secret", "server_key must be 64 hex digits or 40 Z85 characters (gdmcom "
                                                 "keys prints both), got 0 characters"),
    # the last of two was taken silently
    (f"server_key={HEX_KEY}&server_key={HEX_KEY[::-1]}", "server option(s) server_key given more than once"),
    ("retries=1&timeout_ms=5&retries=2&timeout_ms=6", "server option(s) retries, timeout_ms given more than once"),
    ("timeout_ms=", "server option timeout_ms='' must be an integer"),
    ("colour=red&size=2", "unknown server option(s) colour, size; use timeout_ms, retries, image_format, server_key, "
                          "server_key_file, client_key_file"),
])
def test_a_malformed_server_string_is_refused_not_read_as_no_curve(query, message):
    with pytest.raises(ValueError) as e:
        remote_backend(f"tcp://127.0.0.1:5?{query}")
    assert str(e.value) == message


# ----------------------------------------------------------------------------- the server side
def test_a_curve_server_needs_exactly_one_of_a_key_folder_and_allow_any(keydir, tmp_path):
    secret = str(keydir / "server.key_secret")
    with pytest.raises(ValueError) as e:
        CurveServer(secret, clients=str(keydir / "accepted"), allow_any=True)
    assert str(e.value) == ("--curve-clients DIR and --curve-allow-any exclude each other: give the folder of "
                            "accepted client keys, or accept any key (encryption without authentication)")
    with pytest.raises(ValueError) as e:
        CurveServer(secret)
    assert str(e.value) == ("a CURVE server needs either a folder of accepted client keys (--curve-clients DIR) "
                            "or --curve-allow-any")
    with pytest.raises(FileNotFoundError) as e:
        CurveServer(secret, clients=str(tmp_path / "none"))
    assert str(e.value) == f"client key folder {tmp_path / 'none'} not found"
    with pytest.raises(FileNotFoundError) as e:
        CurveServer(secret, clients=str(keydir / "server.key"))  # a file, not a folder
    assert str(e.value) == f"client key folder {keydir / 'server.key'} not found"
    with pytest.raises(ValueError) as e:
        CurveServer(str(keydir / "server.key"), allow_any=True)
    assert str(e.value) == f"{keydir / 'server.key'} holds no secret key: give the .key_secret file"


def test_a_curve_server_holds_its_pair_and_names_its_public_key(keydir):
    s = CurveServer(str(keydir / "server.key_secret"), allow_any=True)
    assert (s.public, s.secret) == zmq.auth.load_certificate(str(keydir / "server.key_secret"))
    assert s.public_hex == public_key_hex(s.public) and len(s.public_hex) == 64
    assert (s.clients, s.allow_any) == (None, True)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _serve_once(ctx, curve, client_curve, timeout_ms=1500):
    """A REP socket made a CURVE server by ``curve``; a REQ with ``client_curve`` (None: plain)
    sends b"ping"; the reply, or None when none came within ``timeout_ms``."""
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    curve.apply(rep)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    if client_curve is not None:
        client_curve.apply(req)
    req.connect(f"tcp://127.0.0.1:{port}")
    try:
        req.send(b"ping")
        if not rep.poll(timeout_ms):
            return None
        rep.send(rep.recv() + b" pong")
        return req.recv() if req.poll(timeout_ms) else None
    finally:
        req.close()
        rep.close()


def test_listed_client_keys_are_served_and_others_refused_and_logged(keydir, ctx, caplog):
    srv = CurveServer(str(keydir / "server.key_secret"), clients=str(keydir / "accepted"))
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.security"):
        srv.start(ctx)
    try:
        assert srv.accepting == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"CURVE: server key {srv.public_hex}, accepting 2 client key(s) from {keydir / 'accepted'}"]
        listed = client_from_options(server_key=srv.public_hex, client_key_file=str(keydir / "client.key_secret"))
        intruder = client_from_options(server_key=srv.public_hex,
                                       client_key_file=str(keydir / "intruder.key_secret"))
        wrong_server = client_from_options(server_key=HEX_KEY, client_key_file=str(keydir / "client.key_secret"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gr_gdmcom.bridge.security"):
            assert _serve_once(ctx, srv, listed) == b"ping pong"
            assert _serve_once(ctx, srv, intruder, 500) is None
            assert _serve_once(ctx, srv, wrong_server, 500) is None
            assert _serve_once(ctx, srv, None, 500) is None  # no CURVE at all
            assert _serve_once(ctx, srv, client_from_options(server_key=srv.public_hex), 500) is None  # throw-away
        refused = [r.getMessage() for r in caplog.records if r.name == "gr_gdmcom.bridge.security"]
        intruder_pub = zmq.auth.load_certificate(str(keydir / "intruder.key"))[0].decode()
        assert refused[0] == f"refused client key {intruder_pub}: not among the accepted keys in {keydir / 'accepted'}"
        assert len(refused) == 2 and refused[1].startswith("refused client key ")  # the throw-away one
    finally:
        srv.stop()
    assert srv._auth is None
    srv.stop()  # twice is harmless


def test_the_authenticators_own_log_is_under_the_modules_logger(keydir, ctx, caplog):
    """pyzmq's authenticator logs each decision at DEBUG; under ``gr_gdmcom.bridge.security.zap``
    (not pyzmq's ``zmq.auth``) a user's gr_gdmcom log settings reach it."""
    srv = CurveServer(str(keydir / "server.key_secret"), allow_any=True)
    with caplog.at_level(logging.DEBUG, logger="gr_gdmcom.bridge.security.zap"):
        srv.start(ctx)
        try:
            assert _serve_once(ctx, srv, client_from_options(server_key=srv.public_hex)) == b"ping pong"
        finally:
            srv.stop()
    zap = [r for r in caplog.records if r.name == "gr_gdmcom.bridge.security.zap"]
    assert any(r.levelno == logging.DEBUG and "ALLOWED" in r.getMessage() for r in zap), [
        (r.name, r.getMessage()) for r in caplog.records]


def test_stopping_a_server_that_never_started_is_harmless(keydir):
    CurveServer(str(keydir / "server.key_secret"), allow_any=True).stop()


def test_allow_any_serves_a_throw_away_key_but_not_a_plain_client(keydir, ctx, caplog):
    srv = CurveServer(str(keydir / "server.key_secret"), allow_any=True)
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.security"):
        srv.start(ctx)
    try:
        assert srv.accepting == "any"
        assert [r.getMessage() for r in caplog.records] == [
            f"CURVE: server key {srv.public_hex}, accepting any client key"]
        assert _serve_once(ctx, srv, client_from_options(server_key=srv.public_hex)) == b"ping pong"
        assert _serve_once(ctx, srv, client_from_options(
            server_key=srv.public_hex, client_key_file=str(keydir / "intruder.key_secret"))) == b"ping pong"
        assert _serve_once(ctx, srv, None, 500) is None
    finally:
        srv.stop()


def test_an_empty_key_folder_is_a_warning_that_everyone_will_be_refused(keydir, tmp_path, ctx, caplog):
    srv = CurveServer(str(keydir / "server.key_secret"), clients=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.bridge.security"):
        srv.start(ctx)
    try:
        assert srv.accepting == 0
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
            "WARNING", f"CURVE: no client keys (*.key) in {tmp_path}: every client will be refused; copy the "
                       f"clients' public .key files there (gdmcom keys makes them)")]
    finally:
        srv.stop()


def test_apply_sets_the_sockets_keys(keydir, ctx):
    """(libzmq does not read CURVE keys back through pyzmq: the keys are checked on a stand-in,
    the mechanism on real sockets)"""
    from types import SimpleNamespace

    srv = CurveServer(str(keydir / "server.key_secret"), allow_any=True)
    cli = client_from_options(server_key=srv.public_hex, client_key_file=str(keydir / "client.key_secret"))
    a, b = SimpleNamespace(), SimpleNamespace()
    srv.apply(a)
    cli.apply(b)
    assert vars(a) == dict(curve_server=True, curve_publickey=srv.public, curve_secretkey=srv.secret)
    assert vars(b) == dict(curve_serverkey=srv.public, curve_publickey=cli.public, curve_secretkey=cli.secret)
    a, b = ctx.socket(zmq.REP), ctx.socket(zmq.REQ)
    try:
        srv.apply(a)
        cli.apply(b)
        assert (a.mechanism, b.mechanism, a.curve_server, b.curve_server) == (zmq.CURVE, zmq.CURVE, 1, 0)
    finally:
        a.close(0)
        b.close(0)


def test_handshake_failures_are_the_three_events_with_their_reasons():
    assert HANDSHAKE_FAILED == {
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "connection closed during the handshake (a client that went away, a "
                                              "TCP probe, or a client without CURVE)",
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed (protocol: wrong or no CURVE key?)",
        zmq.EVENT_HANDSHAKE_FAILED_AUTH: "client key refused by the authenticator"}


# ------------------------------------------------------------------------------------ loopback
@pytest.mark.parametrize("endpoint, loop", [
    ("ipc:///tmp/x.sock", True), ("inproc://x", True),
    ("tcp://127.0.0.1:5555", True), ("tcp://127.9.8.7:1", True), ("tcp://localhost:5555", True),
    ("tcp://LOCALHOST:5555", True), ("tcp://[::1]:5555", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://[::]:5555", False),
    ("tcp://192.168.1.2:5555", False), ("tcp://eth0:5555", False), ("tcp://gpu-host:5555", False),
    ("tcp://localhost.example.com:1", False), ("tcp://128.0.0.1:1", False), ("tcp://", False),
    ("ipcx://a", False), ("127.0.0.1:5555", False),
])
def test_loopback_endpoints_are_those_no_other_host_reaches(endpoint, loop):
    assert is_loopback(endpoint) is loop


# ---------------------------------------------------------------------------- refusal throttle
@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(security.time, "monotonic", lambda: now[0])
    return now


def test_a_throttle_warns_once_then_once_per_period_with_the_count_held_back(clock):
    t = Throttle(10)
    assert (t.every_s, t.max_keys) == (10.0, 1024) and type(t.every_s) is float
    assert t.due("a") == 0
    clock[0] += 9.999
    assert [t.due("a"), t.due("a"), t.due("b")] == [None, None, 0]  # keys apart
    clock[0] += 0.001  # exactly one period after the warning: due again
    assert t.due("a") == 2
    clock[0] += 5
    assert t.due("a") is None
    clock[0] += 5
    assert t.due("a") == 1 and t.due("b") == 0
    assert Throttle().every_s == 30.0 and security._KeyList.REPEAT_S == 30.0


def test_a_throttle_forgets_everything_when_full_so_a_key_scan_cannot_grow_it(clock):
    t = Throttle(10, max_keys=3.9)
    assert t.max_keys == 3
    assert [t.due(k) for k in "abc"] == [0, 0, 0]
    assert t.due("a") is None and len(t._seen) == 3
    assert t.due("d") == 0 and t._seen == {"d": (1000.0, 0)}  # full: cleared before d went in
    assert t.due("a") == 0  # forgotten: warned again


def test_the_key_list_accepts_listed_keys_or_any_and_logs_refusals(clock, caplog):
    listed = security._KeyList({b"good"}, False, "keys/")
    anyone = security._KeyList(set(), True, None)
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.bridge.security"):
        assert listed.callback("*", b"good") is True and anyone.callback("", b"whoever") is True
        assert listed.callback("", b"bad") is False
        clock[0] += 29
        assert listed.callback("", b"bad") is False
        clock[0] += 1
        assert listed.callback("", b"bad\xff") is False and listed.callback("", b"bad") is False
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "refused client key bad: not among the accepted keys in keys/"),
        ("WARNING", "refused client key bad\ufffd: not among the accepted keys in keys/"),
        ("WARNING", "refused client key bad: not among the accepted keys in keys/ (1 more refusals of it since the "
                    "last warning)")]
