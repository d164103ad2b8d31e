"""The codec on Ray Serve behind the ZMQ gateway (``gdmcom serve --engine ray``).

One local Ray instance and one 2-replica deployment for the whole module (Ray's
start-up costs ~25 s on the 2 shared cores); gateways are cheap and made per test.
The replica-kill test runs last: it leaves the deployment one replica short while
Serve restarts the killed one.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")

from gr_gdmcom.bridge import protocol as P  # noqa: E402
from gr_gdmcom.bridge import ray_engine  # noqa: E402
from gr_gdmcom.bridge.ray_engine import (  # noqa: E402
    DeployError, RayGateway, RayOptions, deploy, replica_actor_names, resource_shortage, shutdown)
from gr_gdmcom.codec import GenerativeCodec  # noqa: E402
from gr_gdmcom.config import CodecConfig  # noqa: E402

from test_bridge import Raw, _decode_in_background, noisy, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
CFG = CodecConfig(model="tiny", device="cpu", k=1, m=1, steps=2)
OPTIONS = RayOptions(replicas=2, cpus_per_replica=0, torch_threads=1)


@pytest.fixture(scope="module")
def deployment():
    # every replica applies gdmcom serve's speed flags (compile with dynamo's eager backend: the warm-up
    # path, without inductor's minutes on 2 cores; the outputs stay those of the in-process codec)
    handle, info, started = deploy(CFG, OPTIONS, max_batch=4, max_wait_ms=5, warm_up_size=64,
                                   speed=dict(compile=True, compile_backend="eager"))
    yield handle, info
    shutdown(started_ray=started)


@pytest.fixture
def gateway(deployment):
    made = []

    def make(bind="tcp://127.0.0.1:0", **kw):
        gw = RayGateway(*deployment, bind, ray_options=kw.pop("ray_options", OPTIONS), **kw).start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop(timeout=10)


@pytest.fixture(scope="module")
def rcodec(components):
    return GenerativeCodec(CFG, components=components)


@pytest.fixture(scope="module")
def renc(rcodec, small):
    return rcodec.encode(small, "small")


@pytest.fixture
def raws():
    made = []

    def make(endpoint, n=1):
        new = [Raw(endpoint) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for r in made:
        r.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_ray_line(*extra, timeout=90):
    """_serve_ray's last stderr line, with its exit status and seconds (stdout must be empty)."""
    rc, out, err, took = _serve_ray(*extra, timeout=timeout)
    assert out == "" and "Traceback" not in err, (rc, out, err)
    return rc, err.rstrip().splitlines()[-1], took


# (these run first: they need no Ray instance on this host, and the module's deployment below is one)
def test_joining_where_no_cluster_answers_is_one_line_in_seconds():
    """``--ray-address HOST:PORT`` where nothing listens: ``ray.init`` retried for ever (Ray's GCS
    warnings every 30 s, the command still waiting after 120 s); ``ray://HOST:PORT`` gave up after 30 s.
    Now one TCP connection is tried first: exit 2 and one line within seconds."""
    port = _free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        rc, line, took = _serve_ray_line("--ray-address", address, "--model", "tiny")
        assert (rc, line) == (2, f"error: --ray-address {address}: nothing answers at 127.0.0.1:{port} (connection "
                                 f"refused) (start one with `ray start --head`, or leave --ray-address out to start a "
                                 f"local one)"), line
        assert took < 30, took
    rc, line, _ = _serve_ray_line("--ray-address", "head-node", "--model", "tiny")
    assert (rc, line) == (2, "error: --ray-address must be auto, HOST:PORT (a cluster's GCS) or ray://HOST[:PORT] "
                             "(Ray Client), got 'head-node'")


def test_auto_without_a_cluster_is_one_line_in_seconds():
    """``--ray-address auto`` finds a cluster by the GCS processes running on this host (and RAY_ADDRESS):
    without one, Ray's own reason in one line, exit 2, no local instance started."""
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray cluster runs on this host: auto would join it")
    rc, line, took = _serve_ray_line("--ray-address", "auto", "--model", "tiny")
    assert (rc, line) == (2, "error: --ray-address auto: Could not find any running Ray instance (start one with "
                             "`ray start --head`, or leave --ray-address out to start a local one)"), line
    assert took < 30 and not find_gcs_addresses(), took


def test_a_gateway_that_fails_after_the_deploy_removes_the_application(monkeypatch, capsys):
    """On a joined cluster the application outlives this process unless deleted: a gateway that cannot
    be made (here its constructor raises) or that fails while starting (any exception, not only a port
    in use) deletes it, as a normal stop does; a local instance would be stopped instead."""
    from gr_gdmcom.cli import main

    calls = []
    monkeypatch.setattr(ray_engine, "deploy", lambda *a, **k: ("handle", {"device": "cpu"}, False))
    monkeypatch.setattr(ray_engine, "shutdown", lambda **k: calls.append(k))

    def refuse(*a, **k):
        raise ValueError("the gateway refused its replica's info")

    monkeypatch.setattr(ray_engine, "RayGateway", refuse)
    argv = ["serve", "--engine", "ray", "--ray-address", "auto", "--model", "tiny", "--bind", "tcp://127.0.0.1:0"]
    assert main(argv) == 2 and calls == [dict(started_ray=False)]
    assert capsys.readouterr().err == "error: the gateway refused its replica's info\n"

    class Breaks:
        last_endpoint = None

        def __init__(self, *a, **k):
            self.stopped = False

        def start(self):
            raise RuntimeError("a bug in start")

        def stop(self, timeout=None):
            self.stopped = True

    calls.clear()
    monkeypatch.setattr(ray_engine, "RayGateway", Breaks)
    with pytest.raises(RuntimeError, match="a bug in start"):
        main(argv)
    assert calls == [dict(started_ray=False)]


def test_gateway_serves_what_the_codec_computes(gateway, raws, rcodec, small, renc):
    """Encode and decode through gateway -> deployment equal the in-process codec's; status and
    metrics tell what ran where."""
    from gr_gdmcom.bridge import RemoteBackend

    gw = gateway()
    assert gw.limits.T == CFG.T and gw.limits.m == CFG.m and gw.limits.latent_channels == 4
    with RemoteBackend(gw.last_endpoint, CFG, timeout_ms=30000) as c:
        e = c.encode(small, "small")
        assert np.array_equal(e.symbols, renc.symbols) and e.meta == renc.meta
        d = c.decode(noisy(renc, 1), renc.meta, 5.0)
        assert np.array_equal(d.image, rcodec.decode(noisy(renc, 1), renc.meta, 5.0).image)
        assert d.record["server"]["replica"] in {n.rsplit("#", 1)[1] for n in replica_actor_names()}
        st = c.status()
    assert st["engine"] == "ray" and st["replicas"]["fixed"] == 2 and st["model"] == "tiny"
    assert st["config"]["steps"] == 2 and (st["served"], st["failed"]) == (2, 0)
    # the replicas' batches and UNet calls reach status (each request ran alone: its own calls)
    assert (st["batches"], st["model_calls"]) == (2, e.record["unet_calls"] + d.record["unet_calls"]), st
    assert st["speed"] == dict(attention="sdpa", channels_last=False, fuse_qkv=False, compile="default",
                               compile_vae=False, inductor_tuning=False)
    (r,) = raws(gw.last_endpoint)  # the strict schema guards the gateway as it does the plain server
    r.send(P.decode_request("bad", renc.symbols, renc.meta, 5.0)[:1] + [b"\0" * 8])
    assert r.recv()[0]["code"] == P.SIZE_MISMATCH
    text = gw.metrics.text().decode()
    assert 'gdmcom_requests_total{outcome="served"} 2.0' in text
    assert 'gdmcom_latency_seconds_count{op="decode"} 1.0' in text
    assert 'gdmcom_batch_size_count{op="encode"} 1.0' in text


def test_requests_with_their_own_settings_through_the_replicas(gateway, components, small, renc):
    """Protocol ``settings`` through gateway -> replica: an encode with its own k and a decode
    with its own m / steps / rescale equal codecs configured so; impossible ones are refused
    at the gateway."""
    from gr_gdmcom.bridge import RemoteBackend
    from gr_gdmcom.codec import CodecError

    gw = gateway()
    tx = GenerativeCodec(CFG.replace(k=2, m=0, steps=None), components=components)  # m, N: no part in encoding
    rx = GenerativeCodec(CFG.replace(m=0, steps=3, rescale=False), components=components)
    with RemoteBackend(gw.last_endpoint, CFG, timeout_ms=30000) as c:
        e = c.encode(small, "small", settings={"k": 2})
        assert e.meta.k == 2 and np.array_equal(e.symbols, tx.encode(small, "small").symbols)
        d = c.decode(noisy(renc, 2), renc.meta, 5.0, settings={"m": 0, "steps": 3, "rescale": False})
        assert (d.record["m"], d.record["n_steps"]) == (0, 3)
        assert np.array_equal(d.image, rx.decode(noisy(renc, 2), renc.meta, 5.0).image)
        # the decode's k is the image's (meta.k = 1), named as the transmitter's
        with pytest.raises(CodecError, match=r"^settings: k \+ m must not exceed T: k=1 \(the transmitter's\), "
                                             r"m=51, T=50$"):
            c.decode(noisy(renc, 2), renc.meta, 5.0, settings={"m": 51})
        assert c.status()["settings"]["decode"] == ["m", "steps", "rescale"]


def test_beyond_capacity_is_busy_with_retry_after(gateway, raws, renc):
    gw = gateway(max_queue=1, ray_options=RayOptions(replicas=2, max_inflight=1))
    (r,) = raws(gw.last_endpoint)
    n = 12
    for i in range(n):
        r.send(P.decode_request(f"b{i}", noisy(renc, i), renc.meta, 5.0))
    replies = [r.recv(30000)[0] for _ in range(n)]
    busy = [h for h in replies if not h["ok"]]
    assert sorted(h["id"] for h in replies) == sorted(f"b{i}" for i in range(n))
    assert all(h["code"] == P.BUSY and h["retry"] and h["retry_after_ms"] >= 10 for h in busy), busy
    assert len(busy) >= n - 4  # 1 at the deployment, 1 in the worker's hand, 1 queued (+1 if one finished)
    assert gw.counters["busy"] == len(busy) and gw.status()["max_inflight"] == 1


def test_gateway_restarted_mid_run_loses_no_image(gateway, rcodec, renc):
    """The gateway stopped after 3 of 10 decodes and a new one started on its port: the client's
    retries (docs/protocol.md section 7) deliver all 10, each as the codec computes it."""
    from gr_gdmcom.bridge import RemoteBackend

    a = gateway()
    with RemoteBackend(a.last_endpoint, CFG, timeout_ms=3000, retries=10) as c:
        t, out = _decode_in_background(c, renc, 10)
        wait_for(lambda: a.counters["served"] >= 3, timeout=60, what="3 images served")
        a.stop()
        b = gateway(bind=a.last_endpoint)
        t.join(90)
    assert sorted(out) == list(range(10)) and b.counters["served"] >= 1
    assert len(set(a.served_ids) | set(b.served_ids)) == 10
    for i, d in out.items():
        assert np.array_equal(d.image, rcodec.decode(noisy(renc, i), renc.meta, 5.0).image)


def test_step_scheduling_runs_in_the_replicas(deployment, rcodec, small, renc):
    """``gdmcom serve --engine ray --scheduling step``: a second application whose replica runs the
    step loop; 8 concurrent decodes and an encode through its gateway equal the in-process codec's
    (within float rounding of differently composed batches), share UNet calls, and status says so."""
    from concurrent.futures import ThreadPoolExecutor

    from gr_gdmcom.bridge import RemoteBackend

    handle, info, _ = deploy(CFG, RayOptions(replicas=1, cpus_per_replica=0, torch_threads=1), max_batch=4,
                             app_name="gdmcom-step", scheduling="step")
    try:
        assert info["scheduling"] == "step"
        gw = RayGateway(handle, info, "tcp://127.0.0.1:0", ray_options=OPTIONS).start()
        try:
            def one(i):
                with RemoteBackend(gw.last_endpoint, CFG, timeout_ms=60000) as c:
                    return c.decode(noisy(renc, i), renc.meta, 5.0)

            with ThreadPoolExecutor(8) as pool:
                decs = list(pool.map(one, range(8)))
            for i, d in enumerate(decs):
                ref = rcodec.decode(noisy(renc, i), renc.meta, 5.0).image
                assert np.abs(d.image.astype(int) - ref.astype(int)).max() <= 1, i
                assert d.record["scheduling"] == "step"
            assert max(d.record["server"]["batch"] for d in decs) > 1  # requests shared UNet calls
            with RemoteBackend(gw.last_endpoint, CFG, timeout_ms=60000) as c:
                e = c.encode(small, "small")
                np.testing.assert_allclose(e.symbols, renc.symbols, atol=1e-4)
                st = c.status()
            assert st["scheduling"] == "step" and st["engine"] == "ray" and (st["served"], st["failed"]) == (9, 0)
            # one UNet call per step, fewer steps than the requests' calls (they shared them)
            own = sum(d.record["unet_calls"] for d in decs) + e.record["unet_calls"]
            assert st["batches"] == st["model_calls"] and 0 < st["model_calls"] < own, (st, own)
        finally:
            gw.stop(timeout=10)
    finally:
        shutdown("gdmcom-step", started_ray=False)


def _serve_ray(*extra, timeout=90):
    """``gdmcom serve --engine ray ...`` in a subprocess that must end by itself -> (rc, stdout, stderr, seconds)."""
    cmd = [sys.executable, "-m", "gr_gdmcom.cli", "serve", "--engine", "ray", "--bind", "tcp://127.0.0.1:0",
           "--device", "cpu", *extra]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t0


def test_more_gpus_than_the_local_instance_has_is_one_line_not_an_endless_wait():
    """``--replicas 2 --gpus-per-replica 1`` on a host without 2 GPUs: Ray kept the replicas pending
    and the gateway waited forever, silently; now it compares the ask with the instance's resources
    before deploying and exits 2 with one line (its local Ray instance stopped with it)."""
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this host has the 2 GPUs")
    rc, out, err, took = _serve_ray("--replicas", "2", "--gpus-per-replica", "1", "--model", "tiny")
    assert rc == 2 and out == "", (rc, out, err)
    assert "Traceback" not in err and err.rstrip().splitlines()[-1].startswith(
        "error: --replicas 2 x --gpus-per-replica 1 needs 2 GPUs; the local Ray instance has "), err
    assert took < 60, took


def test_a_folder_that_is_not_a_model_is_the_local_engines_line_before_ray_starts(tmp_path):
    """``--model EMPTY_FOLDER``: a 35-line traceback from serve.run (the reason only in Ray's controller
    log); now the gateway runs the local engine's model check first: its one line, status 2, no Ray."""
    from gr_gdmcom.codec import ModelLoadError
    from gr_gdmcom.codec.models import check_model

    with pytest.raises(ModelLoadError) as exc:
        check_model(str(tmp_path))
    rc, out, err, took = _serve_ray("--model", str(tmp_path))
    assert (rc, out, err) == (2, "", f"error: {exc.value}\n")
    assert "is a folder but not a diffusers model" in err and took < 30, took


def test_a_replica_that_cannot_load_the_model_fails_the_deploy_in_one_line(deployment, tmp_path):
    """A model the gateway's check passes but a replica cannot load (a folder with only unet/):
    after Serve's retries the deploy fails with the replica's ModelLoadError in one line, as the
    local engine says it, and the failed application is removed."""
    from ray import serve

    from gr_gdmcom.codec import ModelLoadError

    (tmp_path / "unet").mkdir()
    cfg = CFG.replace(model=str(tmp_path))
    with pytest.raises(ModelLoadError) as local:
        GenerativeCodec(cfg)
    t0 = time.monotonic()
    with pytest.raises(DeployError) as exc:
        deploy(cfg, RayOptions(replicas=1, cpus_per_replica=0, torch_threads=1, start_timeout=120),
               app_name="gdmcom-broken")
    assert str(exc.value) == str(local.value) and "\n" not in str(exc.value)
    assert time.monotonic() - t0 < 90
    wait_for(lambda: "gdmcom-broken" not in serve.status().applications, timeout=60, what="the failed app deleted")


def test_the_local_instance_refuses_gpus_it_lacks_before_deploying(deployment):
    """In-process: the ask is compared with ``ray.nodes()`` before ``serve.run``; nothing is deployed."""
    import ray
    from ray import serve

    gpus = ray.cluster_resources().get("GPU", 0.0)
    t0 = time.monotonic()
    with pytest.raises(DeployError, match=rf"^--replicas 2 x --gpus-per-replica {gpus + 1:g} needs "
                                          rf"{2 * (gpus + 1):g} GPUs; the local Ray instance has {gpus:g} "):
        deploy(CFG, RayOptions(replicas=2, gpus_per_replica=gpus + 1, cpus_per_replica=0), app_name="gdmcom-gpus")
    assert time.monotonic() - t0 < 5 and "gdmcom-gpus" not in serve.status().applications


@pytest.mark.parametrize("replicas", [dict(replicas=1), dict(min_replicas=0, max_replicas=2)],
                         ids=["fixed", "scale-from-zero"])
def test_a_cluster_that_may_grow_is_waited_for_until_the_deadline(deployment, caplog, monkeypatch, replicas):
    """A joined cluster (``--ray-address``) may add GPU nodes (an autoscaler): a warning, a line every
    ``PROGRESS_EVERY_S`` saying what is pending, and at ``start_timeout`` one line naming it (with
    ``--min-replicas 0`` the application runs at once and the first call waits for its replica)."""
    import ray

    monkeypatch.setattr(ray_engine, "PROGRESS_EVERY_S", 1.0)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    ro = RayOptions(**replicas, gpus_per_replica=gpus + 1, cpus_per_replica=0, address="auto", start_timeout=4)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="gr_gdmcom.bridge.ray_engine"):
        with pytest.raises(DeployError) as exc:
            deploy(CFG, ro, app_name="gdmcom-pending")
    took = time.monotonic() - t0
    assert 4 <= took < 15, took
    msg = str(exc.value)
    assert msg.startswith("the Ray Serve deployment is not running after 4 s (--ray-start-timeout): CodecReplica: "
                          "0 of 1 replicas running"), msg
    assert msg.endswith(f"each replica asks {gpus + 1:g} GPU; free in the cluster now: {gpus:g} of {gpus:g} GPU")
    lines = [r.getMessage() for r in caplog.records]
    assert any("the Ray cluster has" in m and "waiting up to 4 s" in m for m in lines), lines
    assert sum(m.startswith(("waiting for the Ray Serve deployment to run", "waiting for a replica to answer"))
               for m in lines) >= 2, lines


def test_resource_shortage_counts_what_one_node_holds():
    """Totals first (the ask x the replicas the deployment starts with), then per node: one
    replica's ask must fit on one node; None when the replicas fit."""
    two_nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert resource_shortage(RayOptions(replicas=3, gpus_per_replica=1), two_nodes) is None
    assert resource_shortage(RayOptions(replicas=2, gpus_per_replica=1.5), two_nodes, local=False) == (
        "--replicas 2 x --gpus-per-replica 1.5 and --cpus-per-replica 1: the Ray cluster holds 1 such replicas "
        "(each must fit on one node; the most one node has: 2 GPU, 8 CPU; ray status lists them)")
    assert resource_shortage(RayOptions(replicas=4, gpus_per_replica=1), two_nodes, local=False) == (
        "--replicas 4 x --gpus-per-replica 1 needs 4 GPUs; the Ray cluster has 3 now (ray status lists them)")
    assert resource_shortage(RayOptions(replicas=3, cpus_per_replica=1), [{"CPU": 2.0}]).startswith(
        "--replicas 3 x --cpus-per-replica 1 needs 3 CPUs; the local Ray instance has 2 ")
    # autoscaling: what it starts with (at least one replica), not --max-replicas
    assert resource_shortage(RayOptions(max_replicas=8, gpus_per_replica=1), two_nodes) is None
    scale_from_zero = RayOptions(min_replicas=0, max_replicas=2, gpus_per_replica=1)
    assert resource_shortage(scale_from_zero, [{"CPU": 2.0}]).startswith(
        "1 replica (--min-replicas 0 starts one at the first request) x --gpus-per-replica 1 needs 1 GPU; ")
    assert resource_shortage(RayOptions(replicas=50, cpus_per_replica=0), [{"CPU": 2.0}]) is None  # asks nothing


def test_replica_killed_under_16_clients_loses_and_duplicates_nothing(gateway, raws, rcodec, renc):
    """16 clients x 3 decodes; one replica actor is ray.kill-ed mid-load.  Every request is answered
    exactly once (no client gets a second reply), each image as the codec computes it."""
    import ray

    gw = gateway(max_queue=64)
    clients = raws(gw.last_endpoint, 16)
    per_client = 3
    for j in range(per_client):
        for i, r in enumerate(clients):
            r.send(P.decode_request(f"c{i}-{j}", noisy(renc, 100 * i + j), renc.meta, 5.0, image_format="raw"))
    wait_for(lambda: gw.counters["served"] >= 4, timeout=60, what="4 requests served")
    victim = replica_actor_names()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    got = {}
    for i, r in enumerate(clients):
        for _ in range(per_client):
            header, payloads = r.recv(60000)
            assert header["ok"], header
            assert header["id"] not in got, f"{header['id']} answered twice"
            got[header["id"]] = np.frombuffer(payloads[0], np.uint8).reshape(64, 64, 3)
    assert sorted(got) == sorted(f"c{i}-{j}" for i in range(16) for j in range(per_client))
    time.sleep(0.5)
    assert not any(r.sock.poll(0) for r in clients), "a client got an extra reply"
    assert gw.counters["served"] == 16 * per_client and gw.counters["failed"] == 0
    assert gw.counters["resubmitted"] >= 1  # the kill hit requests in flight: they were computed again
    # Serve's controller replaces the killed replica (a new actor name): a new worker process that
    # imports torch and builds the codec, over 90 s once on these 2 cores with other work running
    wait_for(lambda: len(replica_actor_names()) == 2 and victim not in replica_actor_names(), timeout=240,
             what="the killed replica replaced")
    for rid, image in got.items():
        i, j = map(int, rid[1:].split("-"))
        ref = rcodec.decode(noisy(renc, 100 * i + j), renc.meta, 5.0).image
        assert np.abs(image.astype(int) - ref).max() <= 2, rid  # batched arithmetic: rounding only


def test_the_gateway_reads_a_replica_config_with_fields_it_does_not_know():
    """A replica of a later version may report codec settings this gateway has no field for: the
    gateway's view of the configuration (what it checks request settings against) skips them."""
    gw = RayGateway.__new__(RayGateway)  # no Ray: only the configuration from a replica's info
    gw.info = {"config": {**vars(CodecConfig(model="tiny", k=3)), "a_later_setting": 1}}
    assert gw._codec_config() == CodecConfig(model="tiny", k=3)


def test_a_request_whose_replicas_all_die_is_answered_with_why():
    """A request that hangs every replica it reaches (each replaced for failing its health checks, 4 in
    a row: 56 s with --ray-stall-timeout 5) is answered ``internal`` saying so in one line, not Ray's
    multi-line actor description; another exception keeps its own words."""
    import ray.exceptions

    gw = RayGateway.__new__(RayGateway)  # no Ray: only the reply's text
    gw.ray_options = RayOptions(attempts=4)
    assert gw._failure_text(ray.exceptions.ActorDiedError()) == (
        "ActorDiedError: the replica serving this request died under it on each of 4 tries (crashed, killed, "
        "or replaced after failing its health checks: hung or stalled); last: The actor died unexpectedly "
        "before finishing this task.")
    assert gw._failure_text(ValueError("bad\nthing")) == "ValueError: bad\nthing"


def test_each_replica_holds_four_batches_of_requests():
    """The encode and the decode batcher each need a batch running or waiting and one filling
    behind it; with two batches' worth, interleaved encodes and decodes ran in batches of ~1.3
    (docs/server.md, Ray with transmitters and receivers on one deployment)."""
    assert RayOptions(replicas=3).deployment_options(max_batch=8)["max_ongoing_requests"] == 32


def _batch_replica(codec, max_wait_s, stall_timeout=None):
    """A replica with batch scheduling as Serve would hold it, without Ray (its loop not started)."""
    import queue
    import threading

    from gr_gdmcom.bridge.backend import CodecVariants
    from gr_gdmcom.bridge.ray_engine import CodecReplica

    rep = CodecReplica.__new__(CodecReplica)
    rep.codec, rep._lock, rep._variants = codec, threading.Lock(), CodecVariants(codec)
    rep.max_batch, rep.max_wait_s, rep._jobs, rep._batches, rep.name = 4, max_wait_s, queue.Queue(), 0, "r"
    rep._sched, rep.scheduling, rep._retries = None, "batch", 0
    rep._init_progress(stall_timeout)
    return rep


def test_a_lone_clients_request_does_not_wait_for_a_batch(rcodec, small):
    """The gateway tells the replica whether it has other clients (``wait``): a lone client's
    request starts at once; otherwise a batch it starts waits up to max_wait_ms to fill."""
    import asyncio
    import threading

    rep = _batch_replica(rcodec, max_wait_s=1.0)
    threading.Thread(target=rep._batch_loop, daemon=True).start()
    took = {}
    for wait in (False, True):
        t0 = time.monotonic()
        res, info = asyncio.run(rep._submit("encode", (small, "s"), "batch", wait))
        took[wait] = time.monotonic() - t0
        assert info["batch"] == 1 and res.symbols.size > 0
    assert took[False] < 0.9 < 1.0 <= took[True], took


def test_a_replica_batches_interleaved_encodes_and_decodes_by_op(rcodec, small, renc):
    """The replica's batch loop (no Ray needed: the class as Serve would hold it): 4 encodes and 4
    decodes queued alternately run as 2 codec calls of 4, each result the codec's own; a request
    its caller cancelled is computed with its batch and dropped, and the loop goes on."""
    import concurrent.futures
    import threading

    rep = _batch_replica(rcodec, max_wait_s=0.5)
    t0, jobs = time.monotonic() + 0.5, []  # (each job: op, item, future, the latest its batch starts)
    for i in range(8):
        item = (small, f"s{i}") if i % 2 == 0 else (noisy(renc, i), renc.meta, 10.0, None)
        jobs.append(("encode" if i % 2 == 0 else "decode", item, concurrent.futures.Future(), t0))
        rep._jobs.put(jobs[-1])
    jobs[3][2].cancel()  # a caller that gave up (Serve cancelled its call): its result is dropped
    loop = threading.Thread(target=rep._batch_loop, daemon=True)
    loop.start()
    out = [job[2].result(timeout=60) for i, job in enumerate(jobs) if i != 3]
    jobs.pop(3)
    assert rep._batches == 2 and [info["batch"] for _, info in out] == [4] * 7
    assert loop.is_alive()  # answering the cancelled request did not stop the loop
    for (op, item, _, _), (res, _) in zip(jobs, out):
        if op == "encode":
            np.testing.assert_allclose(res.symbols, renc.symbols, atol=1e-4)
        else:
            assert np.abs(res.image.astype(int) - rcodec.decode(*item[:3]).image.astype(int)).max() <= 2


def test_a_replica_whose_loop_stalls_with_requests_fails_its_health_check(rcodec, small):
    """A model call that never returns (here: the codec's lock held, as a CUDA call stuck in the driver
    or a deadlock would) with a request pending: check_health raised nothing before (it only checked
    that the loop thread lived), so Serve never replaced the replica and its requests waited for ever.
    Now it fails once the loop has made no progress for the stall bound; idle, or progressing, it passes."""
    import asyncio
    import threading

    rep = _batch_replica(rcodec, max_wait_s=0.0, stall_timeout=0.6)
    rep._stepper = threading.Thread(target=rep._batch_loop, daemon=True)
    rep._stepper.start()
    rep.check_health()
    time.sleep(0.8)
    rep.check_health()  # idle for longer than the bound: healthy
    out = {}
    with rep._lock:  # the next model call blocks
        t = threading.Thread(target=lambda: out.update(r=asyncio.run(rep._submit("encode", (small, "s"), "batch"))))
        t.start()
        wait_for(lambda: len(rep._pending) == 1 and rep._jobs.empty(), timeout=10, what="the request taken")
        rep.check_health()  # (the first sample with the request pending)
        time.sleep(0.8)
        with pytest.raises(RuntimeError, match=r"replica r: the batch loop has made no progress for \d+ s with "
                                               r"1 request\(s\) pending \(stall bound 0.6 s, --ray-stall-timeout\)"):
            rep.check_health()
    t.join(60)  # the call went through once unblocked: healthy again, nothing pending
    assert out["r"][0].symbols.size > 0 and not rep._pending
    rep.check_health()


def test_a_long_batch_that_makes_progress_is_not_a_stall():
    """A batch that takes far longer than the bound but finishes model calls (UNet steps) as it goes
    stays healthy; the bound grows to STALL_FACTOR x the longest wait for progress seen; None is
    automatic (STALL_CPU_S on a CPU or with --compile, or 60 s per image of a full batch if longer;
    STALL_GPU_S on a GPU); 0 turns it off."""
    import concurrent.futures
    import types

    codec = types.SimpleNamespace(stats=dict(unet_calls=0), c=types.SimpleNamespace(device="cpu", speed={}))
    rep = _batch_replica(codec, max_wait_s=0.0, stall_timeout=1.0)
    rep._stepper = types.SimpleNamespace(is_alive=lambda: True)
    rep._pending.add(concurrent.futures.Future())  # a request in the loop's hands
    now = 100.0
    for _ in range(20):  # 10 s of one batch: a UNet call every 0.5 s, checked every 0.25 s
        now += 0.25
        assert rep._stalled(now) is None
        now += 0.25
        codec.stats["unet_calls"] += 1
        assert rep._stalled(now) is None
    assert rep.stall_bound() == 2.0  # 4 x the 0.5 s it waited for progress
    assert rep._stalled(now + 1.9) is None and "no progress for 2 s" in rep._stalled(now + 2.1)
    rep.stall_timeout = 0
    assert rep.stall_bound() is None and rep._stalled(now + 1e6) is None
    rep._slowest_gap, rep.stall_timeout = 0.0, None
    assert rep.stall_bound() == ray_engine.STALL_CPU_S == 900
    rep.max_batch = 32  # a UNet call over 32 images at 512² on one slow CPU thread: 11 min
    assert rep.stall_bound() == 32 * ray_engine.STALL_CPU_PER_IMAGE_S == 1920
    codec.c.device = "cuda:0"
    assert rep.stall_bound() == ray_engine.STALL_GPU_S == 120
    codec.c.speed, rep.max_batch = dict(compile=True), 4  # a new shape compiles inside a request
    assert rep.stall_bound() == ray_engine.STALL_CPU_S


def test_health_check_options_reach_serve_and_the_command_line(monkeypatch):
    """Serve's defaults (a check every 10 s, 30 s to answer, 3 failures in a row) replaced a
    SIGSTOPped replica after 99 s, past a client's retries; the deployment now asks for 2 s and
    10 s (replaced in about 32 s), set by ``--ray-health-period``/``--ray-health-timeout``, and
    ``--ray-stall-timeout`` reaches each replica."""
    from gr_gdmcom.cli import main

    opts = RayOptions().deployment_options(max_batch=4)
    assert (opts["health_check_period_s"], opts["health_check_timeout_s"]) == (2.0, 10.0)
    for bad in (dict(health_period=0), dict(health_timeout=-1), dict(stall_timeout=-1)):
        with pytest.raises(ValueError, match="must be"):
            RayOptions(**bad).validate()
    seen = []

    def fake_deploy(cfg, ro, **kw):
        seen.append(ro)
        raise DeployError("stop here")

    monkeypatch.setattr(ray_engine, "deploy", fake_deploy)
    assert main(["serve", "--engine", "ray", "--model", "tiny", "--ray-health-period", "1.5",
                 "--ray-health-timeout", "4", "--ray-stall-timeout", "300"]) == 2
    assert (seen[0].health_period, seen[0].health_timeout, seen[0].stall_timeout) == (1.5, 4.0, 300.0)
    assert main(["serve", "--engine", "ray", "--model", "tiny"]) == 2 and seen[1].stall_timeout is None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hung_replica_is_replaced_and_its_requests_answered(deployment, raws, rcodec, renc):
    """The replica SIGSTOPped under 16 decodes (its own application, one replica, health checked every
    1 s with 3 s to answer).  With Serve's defaults the replica was replaced after 99 s and its
    requests sent again 20 s later (graceful shutdown), past the clients' retries; now it is killed
    within period + 3 x timeout (+ the controller's ticks), its requests are sent again then, and
    every request is answered once, by the new replica, as the codec computes it."""
    import signal

    from gr_gdmcom.bridge.backend import CodecVariants

    ro = RayOptions(replicas=1, cpus_per_replica=0, torch_threads=1, health_period=1.0, health_timeout=3.0)
    handle, info, _ = deploy(CFG, ro, max_batch=4, max_wait_ms=5, app_name="gdmcom-hang")
    pid = info["pid"]
    try:
        gw = RayGateway(handle, info, "tcp://127.0.0.1:0", ray_options=ro).start()
        try:
            assert gw.status()["health"] == dict(period_s=1.0, timeout_s=3.0, stall_s=ray_engine.STALL_CPU_S)
            clients = raws(gw.last_endpoint, 16)
            for i, r in enumerate(clients):  # 4 batches of 4 at 50 steps: the last ones are at the replica
                r.send(P.decode_request(f"h{i}", noisy(renc, i), renc.meta, 5.0, image_format="raw",
                                        settings={"steps": 50}))
            wait_for(lambda: gw.counters["served"] >= 1, timeout=60, what="a request served")
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            wait_for(lambda: gw.counters["resubmitted"] >= 1, timeout=40, what="the hung replica's requests sent again")
            resent = time.monotonic() - t0
            assert resent < 1.1 + 3 * 3.0 + 8, resent  # (measured: 10.5-11 s; Serve's defaults: 118 s)
            wait_for(lambda: not _alive(pid), timeout=40, what="the hung replica's process gone")
            got = {}
            for r in clients:
                header, payloads = r.recv(120000)  # (the new replica starts: seconds, a minute on a busy host)
                assert header["ok"], header
                assert header["id"] not in got, f"{header['id']} answered twice"
                got[header["id"]] = np.frombuffer(payloads[0], np.uint8).reshape(64, 64, 3)
            assert sorted(got) == sorted(f"h{i}" for i in range(16))
            assert gw.counters["resubmitted"] >= 1 and gw.counters["failed"] == 0, gw.counters
            variants = CodecVariants(rcodec)
            slow = variants.get(variants.config("decode", {"steps": 50}))
            for i in (0, 15):
                ref = slow.decode(noisy(renc, i), renc.meta, 5.0).image
                assert np.abs(got[f"h{i}"].astype(int) - ref).max() <= 2, i
        finally:
            gw.stop(timeout=10)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        shutdown("gdmcom-hang", started_ray=False)


def test_a_request_whose_client_stopped_waiting_is_not_sent_again(rcodec, renc):
    """A replica that dies under a request whose deadline_ms has passed: the gateway sent it again
    (up to 4 tries, each waiting for a new replica) for a client that had given up; now it is
    answered ``expired`` and counted, not sent again.  (No Ray: a handle whose replica dies.)"""
    import dataclasses as dc

    import ray.exceptions

    calls = []

    class Dying:
        def remote(self, args, **kw):
            calls.append(time.monotonic())
            time.sleep(0.5)
            raise ray.exceptions.ActorDiedError()

    class Handle:
        decode = Dying()

    c = rcodec
    info = dict(limits=dc.asdict(P.Limits.for_codec(c)), model=c.config.model, model_hash=c.model_hash,
                device="cpu", dtype="float32", config=dc.asdict(c.config), speed={}, scheduling="batch",
                replica="r0", pid=os.getpid())
    gw = RayGateway(Handle(), info, "tcp://127.0.0.1:0", ray_options=RayOptions(attempts=4)).start()
    r = Raw(gw.last_endpoint)
    try:
        r.send(P.decode_request("x1", noisy(renc, 0), renc.meta, 5.0, deadline_ms=300))
        header, _ = r.recv(20000)
        assert (header["ok"], header["code"]) == (False, "expired"), header
        assert header["message"] == ("not sent again after its replica failed, 0.5 s after it came, past its "
                                     "deadline_ms 300 (its client no longer waits)"), header
        assert len(calls) == 1 and gw.counters["expired"] == 1 and gw.counters["resubmitted"] == 0, gw.counters
    finally:
        r.close()
        gw.stop(timeout=10)
