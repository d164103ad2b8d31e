"""Step-level scheduling (codec/stepper.py): one batched UNet call per iteration over
requests admitted at different times with different N; every output equals the
same request run alone through GenerativeCodec within float tolerance."""

import numpy as np
import pytest

from gr_gdmcom.codec import Failed, GenerativeCodec
from gr_gdmcom.codec.stepper import StepScheduler
from gr_gdmcom.config import CodecConfig


@pytest.fixture(scope="module")
def codec(components):
    return GenerativeCodec(CodecConfig(model="tiny", device="cpu"), components=components)


def _noisy(enc, snr_db, rng):
    n = enc.symbols.size
    noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.sqrt(10 ** (-snr_db / 10) / 2)
    return (enc.symbols + noise).astype(np.complex64)


def _run(sched, arrivals):
    """arrivals: list of (iteration, key, op, args); admit when due and free. -> {key: result}, iterations."""
    pending, results, it = list(arrivals), {}, 0
    while pending or sched.active:
        while pending and pending[0][0] <= it and sched.free > 0:
            _, key, op, args = pending.pop(0)
            out = (sched.submit_encode if op == "encode" else sched.submit_decode)(key, *args)
            if out is not None:
                results[key] = out
        results.update(dict(sched.step()))
        it += 1
    return results, it


def test_mixed_n_requests_admitted_mid_flight_equal_single_runs(codec, small, rng):
    enc = codec.encode(small, name="a")
    snrs = [0.0, 20.0, 7.0, 13.0, 3.0]
    items = [(_noisy(enc, s, rng), enc.meta, s) for s in snrs]
    single = [codec.decode(*it) for it in items]
    n_steps = [d.record["n_steps"] for d in single]
    assert len(set(n_steps)) >= 3, n_steps  # mixed N: the point of the test
    sched = StepScheduler(codec, max_batch=3)
    calls0 = codec.stats["unet_calls"]
    # two at once, the others arrive while those are in flight
    arrivals = [(0, 0, "decode", items[0]), (0, 1, "decode", items[1]), (2, 2, "decode", items[2]),
                (3, 3, "decode", items[3]), (5, 4, "decode", items[4])]
    got, iterations = _run(sched, arrivals)
    for i, d in enumerate(single):
        assert np.abs(got[i].image.astype(int) - d.image.astype(int)).max() <= 1, i
        assert got[i].record["n_steps"] == d.record["n_steps"]
        assert got[i].record["unet_calls"] == codec.config.m + d.record["n_steps"]
    total_steps = sum(codec.config.m + n for n in n_steps)
    assert codec.stats["unet_calls"] - calls0 == sched.stats["iterations"] == iterations
    assert sched.stats["unet_items"] == total_steps
    # one call per iteration, with 3 slots: never fewer than ceil(total/3) calls, and batching happened
    assert -(-total_steps // 3) <= iterations < total_steps


def test_encodes_and_decodes_share_the_scheduler(codec, small, rng):
    flipped = small[::-1].copy()
    ref = [codec.encode(small, name="a"), codec.encode(flipped, name="b")]
    dec_item = (_noisy(ref[0], 10.0, rng), ref[0].meta, 10.0)
    ref_dec = codec.decode(*dec_item)
    sched = StepScheduler(codec, max_batch=4)
    got, _ = _run(sched, [(0, "a", "encode", (small, "a")), (1, "d", "decode", dec_item),
                          (2, "b", "encode", (flipped, "b"))])
    for key, r in zip("ab", ref):
        np.testing.assert_allclose(got[key].symbols, r.symbols, atol=1e-4)
        assert got[key].meta.alpha == pytest.approx(r.meta.alpha, rel=1e-6)
        assert got[key].meta.to_dict() | dict(alpha=0) == r.meta.to_dict() | dict(alpha=0)
        assert got[key].record["unet_calls"] == codec.config.k
    assert np.abs(got["d"].image.astype(int) - ref_dec.image.astype(int)).max() <= 1


def test_bad_input_is_answered_at_once_and_full_scheduler_refuses(codec, small):
    sched = StepScheduler(codec, max_batch=1)
    enc = codec.encode(small, name="a")
    bad = sched.submit_decode("x", enc.symbols[:-1], enc.meta, 10.0)
    assert isinstance(bad, Failed)
    assert bad.error == "a: metadata says latent shape (4, 8, 8) = 128 symbols but 127 symbols were received"
    assert isinstance(sched.submit_encode("y", b"not an image", "y"), Failed)
    assert sched.submit_decode("z", enc.symbols, enc.meta, 10.0) is None
    with pytest.raises(RuntimeError, match=r"scheduler full \(1 active requests\)"):
        sched.submit_decode("w", enc.symbols, enc.meta, 10.0)


def test_fixed_point_inversion_falls_back_to_whole_requests(components, small):
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu", inversion="fixed-point", k=2, m=2, steps=4),
                            components=components)
    sched = StepScheduler(codec, max_batch=2)
    assert not sched.stepwise
    enc = codec.encode(small, name="a")
    out = sched.submit_decode("k", enc.symbols, enc.meta, 10.0)  # computed on submission
    ref = codec.decode(enc.symbols, enc.meta, 10.0)
    assert np.array_equal(out.image, ref.image) and sched.stats["fallbacks"] == 1 and not sched.active
    assert out.record["inversion"] == "fixed-point"


def test_per_symbol_noise_variance_reaches_the_step_choice(codec, small, rng):
    enc = codec.encode(small, name="a")
    var = rng.uniform(0.01, 1.0, enc.symbols.size)
    y = _noisy(enc, 10.0, rng)
    ref = codec.decode(y, enc.meta, 10.0, noise_var=var)
    got, _ = _run(StepScheduler(codec, max_batch=2), [(0, 0, "decode", (y, enc.meta, 10.0, None, var))])
    assert got[0].record["snr_db"] == ref.record["snr_db"] != 10.0 and got[0].record["snr_in_db"] == 10.0
    assert got[0].record["n_steps"] == ref.record["n_steps"]
    assert np.abs(got[0].image.astype(int) - ref.image.astype(int)).max() <= 1


def test_server_with_step_scheduling_serves_concurrent_mixed_snr_clients(codec, small, rng):
    """gdmcom serve --scheduling step: replies equal in-process single runs; fewer UNet calls than steps."""
    from concurrent.futures import ThreadPoolExecutor

    from gr_gdmcom.bridge import InferenceServer, RemoteBackend

    enc = codec.encode(small, name="a")
    snrs = [0.0, 20.0, 5.0, 12.0, 2.0, 16.0]
    items = [(_noisy(enc, s, rng), enc.meta, s) for s in snrs]
    single = [codec.decode(*it) for it in items]
    srv = InferenceServer(codec, "tcp://127.0.0.1:0", max_batch=3, scheduling="step").start()
    clients = [RemoteBackend(srv.last_endpoint, codec.config, timeout_ms=20000) for _ in range(3)]
    out = {}
    try:
        def run(c):
            for i in range(c, len(items), 3):
                out[i] = clients[c].decode(*items[i])
            out["enc", c] = clients[c].encode(small, name="a")

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(run, range(3)))
        st = clients[0].status()
    finally:
        for c in clients:
            c.close()
        srv.stop(timeout=10)
    for i, d in enumerate(single):
        assert np.abs(out[i].image.astype(int) - d.image.astype(int)).max() <= 1, i
        assert out[i].record["n_steps"] == d.record["n_steps"] and out[i].record["scheduling"] == "step"
    for c in range(3):
        np.testing.assert_allclose(out["enc", c].symbols, enc.symbols, atol=1e-4)
    steps = sum(codec.config.m + d.record["n_steps"] for d in single) + 3 * codec.config.k
    assert st["scheduling"] == "step" and st["served"] == len(items) + 3 and st["failed"] == 0
    assert st["model_calls"] == st["batches"] < steps  # one UNet call per iteration, shared


def test_scheduling_option_is_checked():
    from gr_gdmcom.bridge.server import ServerOptions

    with pytest.raises(ValueError, match=r"^scheduling must be one of batch, step, got 'steps'$"):
        ServerOptions(scheduling="steps").validate()
