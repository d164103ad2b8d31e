"""``gdmcom sweep --server``: the paper's method on an inference server, the rest here.

The server runs the tiny model in this process (loopback); its rows must be the rows a
local sweep computes, its settings must be the ones that apply, and what it cannot run
is refused before anything is computed.
"""

import csv
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from gr_gdmcom.bridge import BackendCodec, BackendError, InferenceServer
from gr_gdmcom.codec import CodecError, Failed, GenerativeCodec
from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval.sweep import SweepError, SweepOptions, run_sweep

from test_eval_sweep import folder  # noqa: F401,E402 - two images of different sizes (a fixture)

SERVER_CFG = CodecConfig(model="tiny", device="cpu", k=2, m=1)


@pytest.fixture(scope="module")
def server(components):
    srv = InferenceServer(GenerativeCodec(SERVER_CFG, components=components), "tcp://127.0.0.1:0").start()
    yield srv
    srv.stop(timeout=10)


def _opts(folder, out, **kw):
    base = dict(images=[folder], out=out, snrs=[5.0, 15.0], methods="proposed", plots=False, progress=False,
                metrics=(), argv=["test"], config=CodecConfig(model="tiny", device="cpu"))
    base.update(kw)
    return SweepOptions(**base)


def _rows(out):
    with open(Path(out) / "rows.csv", newline="") as f:
        return {(r["image"], r["snr_db"], r["method"], r["setting"]): r for r in csv.DictReader(f)}


def test_rows_from_the_server_are_the_local_rows_at_the_servers_settings(server, folder, tmp_path, caplog):
    """This command gives no codec option (its k = 5, m = 5 are defaults); the server runs k = 2,
    m = 1: its settings apply (a warning says so), and every row equals a local sweep's at those
    settings."""
    served0 = server.counters["served"]
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.eval.sweep"):
        res = run_sweep(_opts(folder, tmp_path / "remote", server=server.last_endpoint))
    assert res.rows_computed == 4 and res.rows_failed == 0
    assert f"codec settings of the server at {server.last_endpoint} (not given here): k=2 (here: 5), " \
           "m=1 (here: 5)" in caplog.text
    local = run_sweep(_opts(folder, tmp_path / "local", config=SERVER_CFG))
    assert local.rows_failed == 0
    remote_rows, local_rows = _rows(tmp_path / "remote"), _rows(tmp_path / "local")
    assert remote_rows.keys() == local_rows.keys() and len(remote_rows) == 4
    for key, r in remote_rows.items():
        ref = local_rows[key]
        assert r["setting"] == ref["setting"] == "k2,m1,snr,rescale"
        assert (r["n_steps"], r["unet_calls"], r["symbols"]) == (ref["n_steps"], ref["unet_calls"], ref["symbols"])
        assert abs(float(r["psnr"]) - float(ref["psnr"])) < 0.05, (key, r["psnr"], ref["psnr"])
    # one encode per image, one decode per image and SNR, all on the server
    assert server.counters["served"] - served0 == 2 + 4
    run = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert run["server"]["endpoint"] == server.last_endpoint and run["server"]["model"] == "tiny"
    assert run["device"] == f"cpu (inference server {server.last_endpoint})"
    assert run["config"]["k"] == 2 and run["model"] == dict(id="tiny", revision=None)
    assert run["server"]["model"] == "tiny" and server.status()["latent_channels"] == 4
    assert "codec on the inference server at " + server.last_endpoint in run["sweep"]["settings"]["proposed/k2,m1,snr,rescale"]
    # the same folder resumes locally: the fingerprint (model, T, guidance, prompt, seed) is the server's
    again = run_sweep(_opts(folder, tmp_path / "remote", config=SERVER_CFG))
    assert (again.rows_computed, again.rows_reused) == (0, 4)


def test_options_the_command_gave_hold_and_the_rest_are_the_servers(server, folder, tmp_path):
    """`gdmcom sweep --k 3 --server ...` against the k = 2 / m = 1 server: the given k = 3 goes with
    each encode, m = 1 is the server's; the rows equal a local sweep's at k = 3, m = 1.  A given
    option no request can carry (guidance) is refused before any work, naming it."""
    mine = CodecConfig(model="tiny", device="cpu", k=3)
    res = run_sweep(_opts(folder, tmp_path / "remote", server=server.last_endpoint, config=mine, given=("k",)))
    assert res.rows_computed == 4 and res.rows_failed == 0
    local = run_sweep(_opts(folder, tmp_path / "local", config=SERVER_CFG.replace(k=3)))
    remote_rows, local_rows = _rows(tmp_path / "remote"), _rows(tmp_path / "local")
    assert remote_rows.keys() == local_rows.keys() and {k[3] for k in remote_rows} == {"k3,m1,snr,rescale"}
    for key, r in remote_rows.items():
        assert (r["n_steps"], r["unet_calls"]) == (local_rows[key]["n_steps"], local_rows[key]["unet_calls"])
        assert abs(float(r["psnr"]) - float(local_rows[key]["psnr"])) < 0.05, key
    requests0 = server.counters["requests"]
    with pytest.raises(SweepError, match=r"proposed \(k2,m1,snr,rescale\) needs codec settings the server at .* "
                                         r"does not run and a request cannot set: guidance=3.0 \(server: 6.0\); start"):
        # (a seed seeds this side's channel: given and different, it is not the server's business)
        run_sweep(_opts(folder, tmp_path / "g", server=server.last_endpoint,
                        config=CodecConfig(model="tiny", device="cpu", guidance=3.0, seed=7),
                        given=("guidance", "seed")))
    assert server.counters["requests"] == requests0  # its status only: no encode or decode


def test_methods_a_server_cannot_run_are_refused_before_any_work(server, folder, tmp_path):
    requests0 = server.counters["requests"]
    with pytest.raises(SweepError) as e:
        run_sweep(_opts(folder, tmp_path / "a", methods="proposed,sd_semcom,random_noise", server=server.last_endpoint))
    ep = server.last_endpoint
    assert str(e.value) == (
        f"--server {ep}: sd_semcom (t=auto,caption=fixed) needs the model in this process (it uses more than a "
        f"server's encode and decode); random_noise (k2,m1,snr,rescale) needs codec settings the server at {ep} "
        f"does not run and a request cannot set: forward='random' (server: 'ddim'); start a server with them "
        f"(gdmcom serve takes the same codec flags); drop them from --methods/--grid or run without --server")
    assert server.counters["requests"] == requests0  # a status each, no encode or decode
    assert not (tmp_path / "a" / "rows.csv").exists()


def test_grid_settings_travel_with_each_request(server, folder, tmp_path):
    """--grid (Table II: k, m, N fixed, no rescaling) on a server configured k = 2, m = 1: each
    setting's k goes with its encodes and m / steps / rescale with its decodes; the rows equal a
    local grid sweep's.  A server that takes no per-request settings refuses the grid instead."""
    grid = [(3, 0, 4), (1, 2, 5)]
    res = run_sweep(_opts(folder, tmp_path / "remote", grid=grid, server=server.last_endpoint))
    assert res.rows_computed == 8 and res.rows_failed == 0
    local = run_sweep(_opts(folder, tmp_path / "local", grid=grid, config=SERVER_CFG))
    remote_rows, local_rows = _rows(tmp_path / "remote"), _rows(tmp_path / "local")
    assert len(remote_rows) == 8
    for key, r in remote_rows.items():
        ref = local_rows[key]
        assert r["setting"] == ref["setting"] and r["setting"] in ("k3,m0,N4,norescale", "k1,m2,N5,norescale")
        assert (r["n_steps"], r["unet_calls"]) == (ref["n_steps"], ref["unet_calls"]), (key, r["setting"])
        assert abs(float(r["psnr"]) - float(ref["psnr"])) < 0.05, (key, r["psnr"], ref["psnr"])
    assert {r["n_steps"] for r in remote_rows.values()} == {"4", "5"}


def test_a_server_without_per_request_settings_refuses_the_grid(server, folder, tmp_path, monkeypatch):
    from gr_gdmcom.eval import baselines

    real = baselines.ServerCodecs.__init__

    def older(self, *a, **kw):  # a server from before protocol settings: its status lists none
        real(self, *a, **kw)
        self.per_request = {}

    monkeypatch.setattr(baselines.ServerCodecs, "__init__", older)
    with pytest.raises(SweepError, match=r"proposed \(k2,m1,N3,norescale\) needs codec settings the server at "
                                         r".* does not run and a request cannot set: rescale=False \(server: True\), "
                                         r"steps=3 \(server: None\)"):
        run_sweep(_opts(folder, tmp_path / "b", grid=[(2, 1, 3)], server=server.last_endpoint))


def test_no_server_answering_is_a_one_line_error(folder, tmp_path):
    with pytest.raises(SweepError, match=r"^no inference server answers at tcp://127.0.0.1:1 \(status request, "
                                         r"3000 ms\): start one with `gdmcom serve --bind tcp://127.0.0.1:1`"):
        run_sweep(_opts(folder, tmp_path / "x", server="tcp://127.0.0.1:1"))


class _Fake:
    """A backend that records how many calls overlap; 'bad' images fail, 'down' kills it."""

    def __init__(self):
        self.now = self.most = self.calls = 0
        self.lock = threading.Lock()

    def encode(self, image, name=None):
        with self.lock:
            self.calls += 1
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)
            if image == "bad":
                raise CodecError("bad: cannot read image")
            if image == "down":
                raise BackendError("no reply from tcp://gpu:5555 after 5 attempts")
            return f"enc:{image}"
        finally:
            with self.lock:
                self.now -= 1


def test_backend_codec_overlaps_requests_fails_items_and_stops_at_a_dead_backend():
    fake = _Fake()
    bc = BackendCodec(fake, None, concurrency=4)
    out = bc.encode_many(["a", "bad", "c", "d"], ["a", "b", "c", "d"])
    assert out[0] == "enc:a" and out[2:] == ["enc:c", "enc:d"]
    assert out[1] == Failed("bad: cannot read image", "b")
    assert fake.most >= 2  # requests were in flight together (a server batches them)
    with pytest.raises(BackendError, match="no reply from tcp://gpu:5555"):
        bc.encode_many(["down"], ["x"])
    calls = fake.calls
    with pytest.raises(BackendError, match=r"no reply from tcp://gpu:5555 after 5 attempts \(no request sent since\)"):
        bc.encode_many(["a", "c"], ["a", "c"])
    assert fake.calls == calls  # nothing was sent to a backend known to be gone
    bc.close()
    assert BackendCodec(fake, None).encode_many(["a"], ["a"]) == ["enc:a"]
