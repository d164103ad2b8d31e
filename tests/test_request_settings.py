"""Per-request codec settings (protocol ``settings``): a transmitter's own ``k``, a receiver's
own ``m``, fixed ``steps`` and ``rescale``, on one server whose configuration says otherwise.

Each request must come out as a codec configured that way computes it (batch and step
scheduling, alone or mixed with requests at the server's settings), and bad settings must be
refused with one line before anything runs.
"""

import dataclasses
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gr_gdmcom.bridge import InferenceServer, LocalBackend, RemoteBackend
from gr_gdmcom.bridge import protocol as P
from gr_gdmcom.bridge.backend import request_config
from gr_gdmcom.codec import CodecError, GenerativeCodec, ImageError
from gr_gdmcom.config import CodecConfig

SERVER = CodecConfig(model="tiny", device="cpu", k=1, m=1, T=20)
TX = dict(k=3)
RX = dict(m=0, steps=6, rescale=False)


@pytest.fixture(scope="module")
def codecs(components):
    """The server's codec, and codecs configured as the settings ask (the references)."""
    return dict(server=GenerativeCodec(SERVER, components=components),
                tx=GenerativeCodec(SERVER.replace(**TX), components=components),
                rx=GenerativeCodec(SERVER.replace(**RX), components=components))


@pytest.fixture(scope="module", params=["batch", "step"])
def server(request, codecs):
    srv = InferenceServer(codecs["server"], "tcp://127.0.0.1:0", scheduling=request.param, max_wait_ms=20).start()
    yield srv
    srv.stop(timeout=10)


def _noisy(enc, i):
    rng = np.random.default_rng(i)
    n = enc.symbols.size
    return (enc.symbols + 0.1 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(np.complex64)


def _close(a, b):
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_requests_with_their_own_settings_equal_codecs_configured_so(server, codecs, small):
    with RemoteBackend(server.last_endpoint, timeout_ms=60000) as c:
        e = c.encode(small, "small", settings=TX)
        ref = codecs["tx"].encode(small, "small")
        assert e.meta.k == 3 and e.record["unet_calls"] == 3
        np.testing.assert_allclose(e.symbols, ref.symbols, atol=1e-4)
        plain = c.encode(small, "small")  # the server's own k
        assert plain.meta.k == 1
        d = c.decode(_noisy(ref, 0), ref.meta, 12.0, settings=RX)
        want = codecs["rx"].decode(_noisy(ref, 0), ref.meta, 12.0)
        assert (d.record["m"], d.record["n_steps"], d.record["rule"]) == (0, 6, want.record["rule"])
        assert _close(d.image, want.image)
        st = c.status()
    assert st["settings"] == {"encode": ["k"], "decode": ["m", "steps", "rescale"]}
    assert st["config"]["k"] == 1 and st["config"]["m"] == 1  # the server's own settings did not change


def test_mixed_settings_in_flight_together_each_get_their_own(server, codecs, small):
    """8 concurrent decodes, alternately with the receiver settings and without: each equals its
    reference (a batch is split by settings; the step loop shares UNet calls across them)."""
    enc = codecs["server"].encode(small, "small")

    def one(i):
        with RemoteBackend(server.last_endpoint, timeout_ms=60000) as c:
            return c.decode(_noisy(enc, i), enc.meta, 12.0, settings=RX if i % 2 else None)

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(one, range(8)))
    for i, d in enumerate(out):
        want = codecs["rx" if i % 2 else "server"].decode(_noisy(enc, i), enc.meta, 12.0)
        assert d.record["m"] == (0 if i % 2 else 1) and d.record["n_steps"] == want.record["n_steps"], i
        assert _close(d.image, want.image), i


@pytest.mark.parametrize("op,settings,message", [
    ("encode", {"k": 25}, "settings: k + m must not exceed T: k=25, m=0, T=20"),
    ("decode", {"m": 21}, "settings: k + m must not exceed T: k=1 (the transmitter's), m=21, T=20"),
    ("decode", {"m": 3, "steps": 2}, "settings: "),  # N below m: check_steps' own message follows
    # N at least m but below the transmitter's k + m: refused before it is queued, naming that k
    ("decode", {"m": 1, "steps": 1}, "settings: steps N must satisfy k + m <= N <= T, got N=1, k=1, m=1, T=20"),
])
def test_impossible_settings_are_refused_with_one_line(server, codecs, small, op, settings, message):
    enc = codecs["server"].encode(small, "small")
    rejected = server.counters["rejected"]
    with RemoteBackend(server.last_endpoint, timeout_ms=20000) as c:
        with pytest.raises(CodecError) as e:
            if op == "encode":
                c.encode(small, "small", settings=settings)
            else:
                c.decode(enc.symbols, enc.meta, 10.0, settings=settings)
    assert str(e.value).startswith(message), str(e.value)  # code "rejected": the caller's input, not a fault
    assert server.counters["rejected"] == rejected + 1


def test_local_and_remote_backends_refuse_the_same_input_alike(server, codecs, small, tmp_path):
    """server.md: a RemoteBackend's bad input raises what a LocalBackend raises.  Found by a library
    walkthrough: a setting an encode cannot carry was the server's bad_request (BackendError, which
    BackendCodec takes for a dead server) remotely and CodecError locally; a missing image was
    CodecError locally and ImageError remotely.  ImageError is a CodecError now."""
    local = LocalBackend(SERVER, codec=codecs["server"])
    with RemoteBackend(server.last_endpoint, timeout_ms=20000) as remote:
        for b in (local, remote):
            with pytest.raises(CodecError, match=r"^settings: encode requests cannot set m \(only k\)$"):
                b.encode(small, "small", settings={"m": 1})
            with pytest.raises(ImageError, match="image not found: "):
                b.encode(str(tmp_path / "nope.png"))
    assert issubclass(ImageError, CodecError)


def test_the_schema_refuses_unknown_and_mistyped_settings(small):
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(small).save(buf, "PNG")
    lim = P.Limits()

    def err(settings, op="encode"):
        frames = (P.encode_request("r", buf.getvalue(), "n", settings) if op == "encode" else
                  P.decode_request("r", np.zeros(8, np.complex64), _meta(), 5.0, settings=settings))
        with pytest.raises(P.ProtocolError) as e:
            P.parse_request(frames, lim)
        return e.value.code, e.value.message

    # the image's name starts the message, as a decode's does
    assert err({"k": 3, "guidance": 2.0}) == (P.BAD_REQUEST, "n: 'settings.guidance': Extra inputs are not permitted, "
                                                             "got 2.0")
    assert err({"k": 2.5}) == (P.BAD_REQUEST, "n: 'settings.k': Input should be a valid integer, got 2.5")
    assert err({"m": 1}) == (P.BAD_REQUEST, "n: 'settings.m': Extra inputs are not permitted, got 1")  # encode has no m
    assert err({"rescale": "no"}, "decode")[1] == "n: 'settings.rescale': Input should be a valid boolean, got \"no\""
    ok = P.parse_request(P.decode_request("r", np.zeros(8, np.complex64), _meta(), 5.0,
                                          settings={"steps": None, "m": 0}), lim)
    assert ok.settings == {"steps": None, "m": 0}  # null steps: back to the rule


def _meta():
    from gr_gdmcom.codec import LatentMeta

    return LatentMeta(alpha=1.0, latent_shape=(4, 2, 2), image_size=(16, 16), k=1, T=50, guidance=6.0, prompt="",
                      name="n")


def test_request_config_changes_only_what_the_operation_uses():
    base = CodecConfig(model="tiny", k=5, m=5, T=50, steps=None)
    assert request_config(base, "encode", {}) is base
    assert request_config(base, "encode", {"k": 45}) == base.replace(k=45, m=0)  # m plays no part in encoding
    assert request_config(base, "decode", {"m": 0, "steps": 15, "rescale": False}) == \
        base.replace(k=0, m=0, steps=15, rescale=False)
    with pytest.raises(ValueError, match=r"^decode requests cannot set k \(only m, steps, rescale\)$"):
        request_config(base, "decode", {"k": 3})


def test_a_decodes_own_settings_are_checked_against_the_transmitters_k():
    """``m`` and ``steps`` a decode asks for are checked with its ``meta.k`` (not k = 0), so an
    impossible N is refused before it is queued (it used to fail in the codec as ``internal``),
    and a high-k image with the request's own m = 0 is decodable on a server at m = 5."""
    base = CodecConfig(model="tiny", k=5, m=5, T=50, steps=None)
    with pytest.raises(ValueError, match=r"^steps N must satisfy k \+ m <= N <= T, got N=6, k=5, m=5, T=50$"):
        request_config(base, "decode", {"steps": 6}, k=5)
    assert request_config(base, "decode", {"steps": 6}, k=1) == base.replace(k=0, steps=6)
    lim = P.Limits(T=50, m=5)
    high = dataclasses.replace(_meta(), k=48)
    assert P.parse_request(P.decode_request("r", np.zeros(8, np.complex64), high, 5.0, settings={"m": 0}),
                           lim).meta.k == 48
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(P.decode_request("r", np.zeros(8, np.complex64), high, 5.0), lim)
    assert (e.value.code, e.value.message) == (P.BAD_META, "n: k + m must not exceed T: k=48, m=5, T=50")
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(P.decode_request("r", np.zeros(8, np.complex64), high, 5.0, settings={"m": 3}), lim)
    assert (e.value.code, e.value.message) == \
        (P.REJECTED, "settings: k + m must not exceed T: k=48 (the transmitter's), m=3, T=50")


def test_a_local_backend_takes_the_same_settings(codecs, small):
    b = LocalBackend(SERVER, codec=codecs["server"])
    e = b.encode(small, "small", settings=TX)
    assert e.meta.k == 3
    d = b.decode(_noisy(e, 1), e.meta, 12.0, settings=RX)
    assert d.record["n_steps"] == 6 and _close(d.image, codecs["rx"].decode(_noisy(e, 1), e.meta, 12.0).image)
    with pytest.raises(CodecError, match=r"^settings: k \+ m must not exceed T"):
        b.encode(small, settings={"k": 21})


def test_a_client_configured_otherwise_sends_its_own_k_m_steps_rescale(server, codecs, small, caplog):
    """A RemoteBackend (what the GNU Radio blocks and `gdmcom link --server` use) whose configuration
    says k = 3, m = 0, N = 6 without rescaling, against a server at k = 1, m = 1: those go with each
    request (the block's parameters hold); a guidance that differs cannot, and is a warning."""
    import logging

    mine = SERVER.replace(**TX, **RX, guidance=2.0)
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.client"):
        with RemoteBackend(server.last_endpoint, mine, timeout_ms=60000) as c:
            e = c.encode(small, "small")
            d = c.decode(_noisy(e, 3), e.meta, 12.0)
            kept = c.encode(small, "small", settings={})  # explicit settings win: none, the server's k
    assert e.meta.k == 3 and kept.meta.k == 1
    assert (d.record["m"], d.record["n_steps"]) == (0, 6)
    assert _close(d.image, codecs["rx"].decode(_noisy(e, 3), e.meta, 12.0).image)
    assert "this side's 3 goes with each encode request" in caplog.text
    assert "uses guidance=6.0 but this side's configuration says 2.0; the server's applies" in caplog.text


def test_a_client_configured_for_another_model_is_told_the_servers_and_its_fingerprint_travels(server, codecs,
                                                                                               small, caplog):
    """The model is the server's: a client whose configuration names another hears so at its first
    request; what it encodes carries the server's fingerprint (status.model_hash), and a decode of a
    latent from another model comes back flagged."""
    import logging

    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.bridge.client"):
        with RemoteBackend(server.last_endpoint, SERVER.replace(model="patch-gmm"), timeout_ms=60000) as c:
            e = c.encode(small, "small")
            fingerprint = c.status()["model_hash"]
            ok = c.decode(_noisy(e, 4), e.meta, 12.0)
            foreign = c.decode(_noisy(e, 4), dataclasses.replace(e.meta, model_hash=fingerprint % 65535 + 1), 12.0)
    assert e.meta.model_hash == fingerprint == codecs["server"].model_hash != 0
    assert (ok.record["model_mismatch"], foreign.record["model_mismatch"]) == (False, True)
    warned = [r.getMessage() for r in caplog.records if "runs model" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        f"server {server.last_endpoint} runs model 'tiny', not this side's 'patch-gmm': the server's model encodes")


def test_the_command_line_says_which_options_it_gave():
    """What `--server` runs keeps only the options typed: abbreviations, `--opt=value` and
    `--bcr` count; defaults (and set_defaults) do not, and the parser's defaults survive."""
    from gr_gdmcom.cli import build_parser, given_options

    parser = build_parser()
    argv = ["sweep", "--images", "a.png", "--snr", "5", "--out", "o", "--k=3", "--ste", "4", "--bcr", "1/384",
            "--no-rescale"]
    assert given_options(parser, argv) == {"cmd", "images", "snr", "out", "k", "steps", "bcr", "rescale"}
    args = parser.parse_args(argv)  # the defaults are back
    assert (args.m, args.guidance, args.server, args.func.__name__) == (5, 6.0, "local", "cmd_sweep")
    assert given_options(parser, ["steps", "--snr", "5"]) == {"cmd", "snr"}


def test_gdmcom_simulate_on_a_server_runs_the_servers_settings_but_the_options_given(server, tmp_path, capsys,
                                                                                    caplog):
    """`gdmcom simulate --server` against the k = 1, m = 1, T = 20 server: without options the row
    is the server's k, m; `--m 0 --steps 6` given go with each decode; a given `--guidance` that no
    request can carry is refused with one line (exit 2) before any image is sent."""
    import json

    from gr_gdmcom.cli import main

    img = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(img)
    base = ["simulate", "--images", str(img), "--snr", "12", "--out", str(tmp_path / "o"), "--server",
            server.last_endpoint]
    assert main(base) == 0
    assert main(base + ["--m", "0", "--steps", "6", "--no-rescale"]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    assert [(r["k"], r["m"]) for r in rows] == [(1, 1), (1, 0)] and rows[1]["n_steps"] == 6
    assert "(not given here): model='tiny' (here: 'stable-diffusion-v1-5/stable-diffusion-v1-5'), k=1 (here: 5), " \
           "m=1 (here: 5), T=20 (here: 50)" in caplog.text
    served = server.counters["requests"]
    assert main(base + ["--guidance", "2"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"error: the server at {server.last_endpoint} runs other codec settings and a request cannot change "
        f"them: guidance=2.0 (server: 6.0); drop those options or start a server with them (gdmcom serve "
        f"takes the same codec flags)")
    assert server.counters["requests"] == served


def test_a_receiver_is_warned_only_about_the_settings_its_decodes_use(server, codecs, small, caplog):
    """A client that only decodes (a GNU Radio sink) with another guidance and reduction than the
    server's: a decode takes them from the image's metadata, so no warning; its first encode warns
    about the transmitter's settings, once each."""
    import logging

    from gr_gdmcom.bridge.client import OP_FIELDS, SERVER_SIDE_FIELDS

    assert set(SERVER_SIDE_FIELDS) == set(OP_FIELDS["encode"]) | set(OP_FIELDS["decode"])
    enc = codecs["server"].encode(small, name="small")
    mine = SERVER.replace(guidance=2.0, reduce=2, remove_mean=False)
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.bridge.client"):
        with RemoteBackend(server.last_endpoint, mine, timeout_ms=60000) as c:
            c.decode(_noisy(enc, 1), enc.meta, 12.0)
            assert "applies" not in caplog.text
            c.encode(small, "small")
            c.encode(small, "small")
    warned = [r.getMessage() for r in caplog.records if "the server's applies" in r.getMessage()]
    assert [w.split(" uses ")[1].split("=")[0] for w in warned] == ["guidance", "remove_mean", "reduce"]


@pytest.mark.parametrize("kw, message", [
    (dict(k=2.5), "k must be an integer, got 2.5"),
    (dict(T=float("nan")), "T must be an integer, got nan"),
    (dict(steps=12.5), "steps must be an integer (or None), got 12.5"),
    (dict(remove_mean="no"), "remove_mean must be True or False, got 'no'"),
    (dict(k=True), "k must be an integer, got True"),
    (dict(k="5"), "k must be an integer, got '5'"),
    (dict(rule=None), "rule must be a string, got None"),
    (dict(guidance="6"), "guidance must be a number, got '6'"),
])
def test_config_of_the_wrong_type_is_refused_by_name(kw, message):
    """Found by a library walkthrough: validate() checked ranges only, so k=2.5 passed and failed later
    as a TypeError, steps=12.5 ran 12 steps and remove_mean='no' removed the means."""
    from gr_gdmcom.config import CodecConfig

    with pytest.raises(ValueError) as exc:
        CodecConfig(**kw).validate()
    assert str(exc.value) == message
    CodecConfig(guidance=6, steps=None, seed=np.int64(3), remove_mean=np.bool_(False)).validate()  # numbers as numbers


def test_a_server_restarted_with_other_settings_still_gets_this_sides_and_is_read_again(codecs, components, small,
                                                                                        caplog):
    """A client whose k, m, N, rescale equal the server's first, then the server restarted on the
    same port with k = 10, m = 0 and another guidance: the client's k/m/N/rescale still apply (they
    go with every request, equal or not: before, the next encode came back with k = 10 and no
    word), and the guidance that no request carries is warned about after the restart."""
    import logging

    mine = SERVER.replace(steps=8)
    first = InferenceServer(GenerativeCodec(mine, components=components), "tcp://127.0.0.1:0", max_wait_ms=0).start()
    endpoint = first.last_endpoint
    other = mine.replace(k=10, m=0, steps=None, rescale=not mine.rescale, guidance=2.0)
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.client"):
        with RemoteBackend(endpoint, mine, timeout_ms=20000) as c:
            try:
                before = c.encode(small, "small")
                assert "goes with each" not in caplog.text and "guidance" not in caplog.text  # all equal
                first.stop(timeout=10)
                second = InferenceServer(GenerativeCodec(other, components=components), endpoint,
                                         max_wait_ms=0).start()
                after = c.encode(small, "small")
                d = c.decode(_noisy(after, 5), after.meta, 12.0)
                again = c.encode(small, "small")
                st = c.status()
            finally:
                first.stop(timeout=10)
                second.stop(timeout=10)
    assert before.meta.k == after.meta.k == again.meta.k == 1 and st["config"]["k"] == 10
    assert (d.record["m"], d.record["n_steps"]) == (1, 8)
    want = GenerativeCodec(mine, components=components).decode(_noisy(after, 5), after.meta, 12.0)
    assert _close(d.image, want.image)  # rescale too: this side's
    assert after.meta.guidance == 2.0  # the restarted server's: no request carries it
    changed = [r.getMessage() for r in caplog.records if "now runs other settings" in r.getMessage()]
    assert len(changed) == 1 and changed[0].startswith(f"server {endpoint} now runs other settings (config_id ")
    warned = [r.getMessage() for r in caplog.records if "uses guidance=2.0" in r.getMessage()]
    assert warned == [f"server {endpoint} uses guidance=2.0 but this side's configuration says 6.0; the server's "
                      f"applies"]


def test_requests_carrying_the_servers_own_settings_share_its_batches(codecs, small):
    """A client carries its k with every request, mostly equal to the server's: such a request is
    batched with those that carry none (before, a batch was split between them)."""
    import threading

    gate = threading.Event()
    codec = codecs["server"]
    srv = InferenceServer(codec, "tcp://127.0.0.1:0", max_batch=4, max_wait_ms=1000).start()  # < PEER_WINDOW_S
    try:
        def one(i):
            with RemoteBackend(srv.last_endpoint, timeout_ms=30000) as c:
                c.encode(small, f"s{i}")  # four clients known to the server: it waits for a full batch
                gate.wait(30)
                return c.encode(small, f"s{i}", settings={"k": SERVER.k} if i % 2 else None)

        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(one, i) for i in range(4)]
            try:
                t0 = time.monotonic()
                while srv.counters["served"] < 4 and time.monotonic() - t0 < 20:
                    time.sleep(0.01)
            finally:
                gate.set()
            out = [f.result(timeout=60) for f in futs]
        assert [e.record["server"]["batch"] for e in out] == [4, 4, 4, 4], [e.record["server"] for e in out]
    finally:
        srv.stop(timeout=10)


def test_replies_from_servers_of_a_list_with_different_settings_are_warned_about_once(caplog):
    """Two servers behind one client with different settings: replies alternate between two
    config_ids, each seen before; that is one warning, not a reread per reply."""
    import logging

    c = RemoteBackend("tcp://127.0.0.1:9", SERVER, timeout_ms=100, retries=0)
    c._checked, c._config_id, c._config_ids = True, "aaaaaaaaaaaa", {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.client"):
        for cid in ["bbbbbbbbbbbb", "aaaaaaaaaaaa", "bbbbbbbbbbbb", "bbbbbbbbbbbb"]:
            c._note_config("encode", {"config_id": cid})
    c.close()
    assert [r.getMessage() for r in caplog.records] == [
        "replies from tcp://127.0.0.1:9 come from servers with different settings (config_id aaaaaaaaaaaa and "
        "bbbbbbbbbbbb; or a server restarted back to settings it had before): what no request carries is "
        "each server's own"]
    assert c._config_id == "bbbbbbbbbbbb" and c.stats["requests"] == 0  # no status asked


def test_two_servers_with_different_settings_cost_one_status_reread_not_one_per_reply(components, small, caplog):
    """Two servers listed, the second with another guidance: the DEALER's round robin sends the
    status re-read to one server and the next encode to the other, so each reply of that one came
    with a config_id never read. Before, every such reply cost a status round trip and an info
    line 'restarted?' (10 encodes: 9 re-reads) and the warning that the servers differ never came;
    now a config_id is noted when a reply brings it, and one re-read answered with the other
    server's settings is that warning."""
    import logging

    a = InferenceServer(GenerativeCodec(SERVER, components=components), "tcp://127.0.0.1:0", max_wait_ms=0).start()
    b = InferenceServer(GenerativeCodec(SERVER.replace(guidance=2.0), components=components), "tcp://127.0.0.1:0",
                        max_wait_ms=0).start()
    try:
        with caplog.at_level(logging.INFO, logger="gr_gdmcom.bridge.client"):
            with RemoteBackend(f"{a.last_endpoint},{b.last_endpoint}", SERVER, timeout_ms=20000) as c:
                for _ in range(10):
                    c.encode(small, "small")
                requests = c.stats["requests"]
    finally:
        a.stop(timeout=10)
        b.stop(timeout=10)
    assert a.counters["served"] and b.counters["served"], (a.counters, b.counters)
    assert requests <= 12, requests  # 10 encodes, the first status, at most one re-read
    assert len([r for r in caplog.records if "now runs other settings" in r.getMessage()]) <= 1
    mixed = [r.getMessage() for r in caplog.records if "come from servers with different settings" in r.getMessage()]
    assert len(mixed) == 1, caplog.text
    # and it says which server runs what (each asked on its own socket)
    assert (f"before); {a.last_endpoint}: guidance={SERVER.guidance!r}, {b.last_endpoint}: guidance=2.0: what no "
            "request carries") in mixed[0], mixed[0]
    guidance = [r for r in caplog.records if "uses guidance=2.0" in r.getMessage()]
    assert len(guidance) <= 1
