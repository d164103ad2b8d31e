"""Streaming burst receiver (gr_gdmcom.phy.rx): SNR estimate, impairments, detection,
false alarms, streaming and bad input."""

import logging

import numpy as np
import pytest

from gr_gdmcom.phy import (FrameConfig, FrameRx, FrameTx, Header, awgn, chunk_symbols, measure_snr_db,
                           simulate_channel)
from gr_gdmcom.phy import sync
from gr_gdmcom.phy.channel import complex_noise, fractional_delay

TAPS = [1.0, 0.3j, -0.1]
LEAD = 300  # silent samples before the first burst


def make_stream(cfg, n_bursts, rng, image_id=1):
    """(samples complex64 with LEAD zeros before and after, transmitted chunks, burst starts)."""
    n = cfg.max_chunk_symbols
    sym = complex_noise(n_bursts * n, 1.0, rng)
    h = Header(image_id=image_id, latent_shape=(2, n_bursts, n), image_size=(8 * n_bursts, 8 * n))
    bursts = FrameTx(cfg).frames(sym, h)
    gap = np.zeros(cfg.gap_symbols * cfg.sps, np.complex64)
    parts, starts, pos = [np.zeros(LEAD, np.complex64)], [], LEAD
    for b in bursts:
        starts.append(pos)
        parts += [b, gap]
        pos += len(b) + len(gap)
    parts.append(np.zeros(LEAD, np.complex64))
    return np.concatenate(parts), chunk_symbols(sym, n), np.array(starts)


def receive(cfg, x, chunks=None, rng=None):
    rx = FrameRx(cfg)
    if chunks is None:
        frames = rx.push(x)
    else:
        frames, k = [], 0
        while k < len(x):
            step = int(rng.integers(1, chunks + 1))
            frames += rx.push(x[k: k + step])
            k += step
    return frames + rx.flush(), rx.counters


def payload_mse_db(frames, chunks):
    return [10 * np.log10(np.mean(np.abs(f.symbols - chunks[f.header.chunk_index]) ** 2)) for f in frames]


@pytest.mark.parametrize("sps, snr", [(8, 20.0), (8, 30.0), (4, 40.0)])
def test_a_burst_after_a_noise_only_lead_is_read_from_its_true_peak(sps, snr):
    """The detection window started at the first threshold crossing, which at high SNR can be
    noise well before the burst (the threshold is low, for 0 dB); the window then ended between
    the partial overlap's early peak (192 symbols before the preamble) and the true one, the
    early one was verified (0.09 against 0.06 at sps 8), the header read there failed and the
    burst was lost: 13-17 of 40 clean bursts at sps 8, 20-40 dB, 2 of 40 at sps 4, 30-40 dB.
    Now every burst is found at its start, whatever the chunking of the stream."""
    cfg = FrameConfig(sps=sps, max_chunk_symbols=1024)
    lost, moved = [], []
    for seed in range(16):
        rng = np.random.default_rng(1000 * sps + 10 * int(snr) + seed)
        sym = complex_noise(1024, 1.0, rng)
        (b,) = FrameTx(cfg).frames(sym, Header(image_id=7, latent_shape=(2, 1, 512), image_size=(8, 4096)))
        lead = int(rng.integers(0, 4000))
        x = np.concatenate([np.zeros(lead, np.complex64), b, np.zeros(2000, np.complex64)])
        y = simulate_channel(x, snr, rng, cfo=float(rng.uniform(-0.01, 0.01)) / sps, delay=float(rng.uniform(0, 1)),
                             phase=float(rng.uniform(0, 6.3)))
        frames, counters = receive(cfg, y)
        if len(frames) != 1 or counters["header_crc_fail"]:
            lost.append((seed, lead, counters))
            continue
        chunked, _ = receive(cfg, y, chunks=3000, rng=rng)
        if [(f.start, f.snr_db) for f in chunked] != [(frames[0].start, frames[0].snr_db)]:
            moved.append(seed)
        assert abs(frames[0].start - lead) < 1.5, (seed, frames[0].start, lead)
    assert not lost and not moved, (lost, moved)


@pytest.mark.parametrize("sps", [1, 2])
def test_snr_estimate_bias_and_spread(sps, rng):
    """AWGN, 0..20 dB, 30 frames per SNR: |bias| <= 0.3 dB against the payload's actual
    Es/N0 (what the estimate describes), std <= 0.5 dB; the receiver's implementation
    loss (actual against nominal Es/N0) stays below 0.5 dB."""
    cfg = FrameConfig(sps=sps, max_chunk_symbols=1024)
    x, chunks, _ = make_stream(cfg, 30, rng)
    for snr in (0.0, 5.0, 10.0, 15.0, 20.0):
        frames, counters = receive(cfg, awgn(x, snr, rng))
        assert len(frames) == 30, counters
        est = np.array([f.snr_db for f in frames])
        err = np.mean([np.mean(np.abs(f.symbols - chunks[f.header.chunk_index]) ** 2) for f in frames])
        actual = -10 * np.log10(err)
        assert abs(est.mean() - actual) <= 0.3, (snr, est.mean(), actual)
        assert est.std() <= 0.5, (snr, est.std())
        assert snr - 0.5 <= actual <= snr + 0.1, (snr, actual)
        np.testing.assert_allclose([f.noise_var for f in frames], 10 ** (-est / 10), rtol=1e-6)


@pytest.mark.parametrize("cfo", [0.01, -0.01])
def test_impairments_sps2_10db(cfo, rng):
    """CFO, fractional timing, 3-tap multipath at 10 dB: every frame, header OK, SNR
    estimate within 1 dB (of the nominal 10 dB on average, of each frame's payload
    SNR per frame: this channel's linear-equaliser bound is 9.47 dB), payload MSE
    within 1 dB of the AWGN-only receiver."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=2048)
    x, chunks, starts = make_stream(cfg, 10, rng)
    frames, counters = receive(cfg, simulate_channel(x, 10.0, rng, cfo=cfo, delay=0.37, taps=TAPS, phase=1.0))
    ref, _ = receive(cfg, awgn(x, 10.0, rng))
    assert len(frames) == 10 and counters["headers_ok"] == 10 and counters["header_crc_fail"] == 0, counters
    assert sorted(f.header.chunk_index for f in frames) == list(range(10))
    meas = np.array([measure_snr_db(chunks[f.header.chunk_index], f.symbols) for f in frames])
    est = np.array([f.snr_db for f in frames])
    assert abs(np.mean(est) - 10.0) <= 1.0, est
    assert np.all(np.abs(est - meas) <= 1.0) and abs(np.mean(est - meas)) <= 0.3, (est, meas)
    assert all(abs(f.cfo - cfo) < 1e-4 for f in frames)
    np.testing.assert_allclose([f.start for f in frames], starts, atol=2)
    assert np.mean(payload_mse_db(frames, chunks)) <= np.mean(payload_mse_db(ref, chunks)) + 1.0


@pytest.mark.parametrize("sps", [1, 2, 4, 8])
def test_detection_at_0db(sps, rng):
    """>= 99 % of 200 bursts detected and decoded at Es/N0 = 0 dB, at any sps (the verification
    threshold scales with the per-sample SNR above sps 2: at sps 8 a fixed one found 3 of 24)."""
    cfg = FrameConfig(sps=sps, max_chunk_symbols=32)
    x, _, _ = make_stream(cfg, 200, rng)
    frames, counters = receive(cfg, awgn(x, 0.0, rng))
    assert counters["bursts_detected"] >= 198 and len(frames) >= 198, counters
    assert counters["bursts_detected"] <= 200


@pytest.mark.parametrize("sps", [1, 2, 4, 8])
def test_no_false_bursts_in_noise(sps, rng):
    frames, counters = receive(FrameConfig(sps=sps), complex_noise(1_000_000, 1.0, rng))
    assert frames == [] and counters["bursts_detected"] == 0, counters


def test_streaming_same_frames_for_any_chunking(rng):
    cfg = FrameConfig(sps=2, max_chunk_symbols=1024)
    x, _, _ = make_stream(cfg, 6, rng)
    y = simulate_channel(x, 5.0, rng, cfo=0.003, delay=0.2)
    whole, c1 = receive(cfg, y)
    pieces, c2 = receive(cfg, y, chunks=5000, rng=rng)
    assert len(whole) == len(pieces) == 6
    # (rejected candidates may differ: detection skips the bodies of bursts already decoded)
    keys = ("bursts_detected", "headers_ok", "header_crc_fail", "truncated", "frames_out")
    assert {k: c1[k] for k in keys} == {k: c2[k] for k in keys}
    for a, b in zip(whole, pieces):
        assert a.header == b.header and a.start == b.start
        np.testing.assert_allclose(a.symbols, b.symbols, atol=1e-4)
        assert a.snr_db == pytest.approx(b.snr_db, abs=1e-3)


def test_buffer_stays_bounded(rng):
    cfg = FrameConfig(sps=2, max_chunk_symbols=512)
    rx = FrameRx(cfg)
    for _ in range(40):
        rx.push(complex_noise(20_000, 1.0, rng))
        assert len(rx._buf) < 20_000 + 4 * cfg.layout().burst_samples(512)
    big = complex_noise(3_000_000, 1.0, rng)
    rx.push(big)  # processed in slices
    assert len(rx._buf) < 2 * rx.max_slice


def test_frame_fields_gain_and_start(rng):
    cfg = FrameConfig(sps=2, max_chunk_symbols=512)
    x, chunks, starts = make_stream(cfg, 3, rng)
    g = 0.5 * np.exp(1j * 1.0)
    frames, _ = receive(cfg, awgn(g * x, 20.0, rng))
    assert len(frames) == 3
    for f, s0 in zip(frames, starts):
        assert f.start == s0 and f.symbols.dtype == np.complex64 and len(f.symbols) == f.header.chunk_symbols
        assert abs(f.gain - g) < 0.08 * abs(g)
        ref = chunks[f.header.chunk_index]
        # unit scale, not de-normalised (the residual is the pilot phase track's, ~0.03 rms)
        assert abs(np.vdot(ref, f.symbols) / np.vdot(ref, ref) - 1) < 0.1
        assert f.snr_db == pytest.approx(20 + 20 * np.log10(0.5), abs=0.5)
        assert f.header.image_id == 1 and f.header.chunk_count == 3


def test_truncated_burst_is_counted(rng, caplog):
    """... and logged (a warning naming the burst; they used to be counted only)."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=512)
    x, _, starts = make_stream(cfg, 3, rng)
    y = awgn(x, 10.0, rng)
    end = starts[2] + cfg.layout().burst_samples(512)
    for cut, what in ((end - 200, "the burst of image 1 chunk 2 at sample"),  # in the payload
                      (starts[2] + 3000, "a burst at sample"),  # in the header
                      (starts[2] + 600, "a burst at sample")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="gr_gdmcom.phy.rx"):
            frames, counters = receive(cfg, y[:cut])
        assert len(frames) == 2 and counters["truncated"] == 1 and counters["frames_out"] == 2, counters
        assert [r.getMessage().split(" at sample")[0] + " at sample" for r in caplog.records] == [what]
        assert caplog.records[0].getMessage().endswith("; dropped (counted in truncated)")
    # a stream that ends exactly with the last burst's last sample loses nothing
    frames, counters = receive(cfg, y[: starts[2] + cfg.layout().burst_samples(512)])
    assert len(frames) == 3 and counters["truncated"] == 0, counters
    # frames come out of push() as soon as their samples are in, not only at flush()
    rx = FrameRx(cfg)
    assert len(rx.push(y)) == 3 and rx.flush() == []


def test_header_crc_failure_is_counted(rng):
    cfg = FrameConfig(sps=2, max_chunk_symbols=256)
    tx = FrameTx(cfg)
    good = Header(total_symbols=256, chunk_symbols=256)
    bad = bytearray(good.pack())
    bad[12] ^= 0x10  # a flipped bit: the CRC no longer matches
    gap = np.zeros(200, np.complex64)
    payload = complex_noise(256, 1.0, rng)
    x = np.concatenate([gap, tx.burst(good, payload), gap, tx.burst(bytes(bad), payload), gap,
                        tx.burst(good.replace(image_id=2), payload), gap])
    frames, counters = receive(cfg, awgn(x, 15.0, rng))
    assert [f.header.image_id for f in frames] == [0, 2]
    assert counters["header_crc_fail"] == 1 and counters["bursts_detected"] == 3, counters


@pytest.mark.parametrize("fields, why", [
    # one CRC-valid burst claiming 65535 chunks made the reassembler allocate the whole image: 1.7 GB
    # for chunks of 2048 symbols, 5 GB in the receiver's weighting (and 21 GB at 8192-symbol chunks)
    (dict(chunk_count=65535, total_symbols=65535 * 256), "total_symbols 16776960 is more than a receiver assembles "
                                                          "(4194304, frame.MAX_IMAGE_SYMBOLS)"),
    (dict(latent_shape=(4, 0, 8)), "empty latent [4, 0, 8] or image [512, 512]"),
    # was decoded as ddim; since version 6 forward is one bit (byte 29's others the sender), a version-5 burst
    (dict(forward=7, version=5), "unknown forward process 7 (0 ddim, 1 random)"),
    (dict(alpha=1e-30), "alpha 1e-30 outside 0.001..1e+06"),            # was a black picture reported good
    (dict(guidance=65504.0), "guidance 65504 outside 0..100"),
])
def test_a_crc_valid_header_no_transmitter_sends_is_refused(rng, caplog, fields, why):
    """Refused before the reassembler allocates anything (counter header_invalid, the reason
    logged at DEBUG); the next burst is received."""
    caplog.set_level(logging.DEBUG, logger="gr_gdmcom.phy.rx")
    cfg = FrameConfig(sps=2, max_chunk_symbols=256)
    tx = FrameTx(cfg)
    gap = np.zeros(200, np.complex64)
    payload = complex_noise(256, 1.0, rng)
    odd = Header(total_symbols=256, chunk_symbols=256).replace(**fields)
    if odd.version != cfg.header_version:  # (a transmitter's bursts carry its configured version)
        tx = FrameTx(FrameConfig(sps=2, max_chunk_symbols=256, header_version=odd.version))
    x = np.concatenate([gap, tx.burst(odd, payload), gap,
                        FrameTx(cfg).burst(Header(image_id=2, total_symbols=256, chunk_symbols=256), payload), gap])
    frames, counters = receive(cfg, awgn(x, 20.0, rng))
    assert [f.header.image_id for f in frames] == [2]
    assert counters["header_invalid"] == 1 and counters["headers_ok"] == 1, counters
    assert any(why in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_header_lost_in_a_fade_is_read_with_its_copy(rng):
    """A -40 dB fade over the whole header after the preamble and 400 symbols beyond (a
    shallower one over part of the header the interleaved code corrects alone, see
    test_the_interleaved_header_survives_a_fade_over_a_third_of_it): the burst of 3000 symbols is still
    received, through the header's copy (counter header_copies), with an honest
    estimate; a 1000-symbol burst has no copy and is a counted header_crc_fail, and the
    burst after it is received."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=3000)
    lay, tx = cfg.layout(), FrameTx(cfg)
    gap = np.zeros(400, np.complex64)
    long_pay, short_pay = complex_noise(3000, 1.0, rng), complex_noise(1000, 1.0, rng)
    bursts = [tx.burst(Header(image_id=1, total_symbols=3000, chunk_symbols=3000), long_pay),
              tx.burst(Header(image_id=2, total_symbols=1000, chunk_symbols=1000), short_pay),
              tx.burst(Header(image_id=3, total_symbols=1000, chunk_symbols=1000), short_pay)]
    hdr_lo = len(lay.preamble) * cfg.sps + lay.half  # the first header symbol's sample
    hdr_hi = hdr_lo + int(lay.burst_map(3000).header[-1] + 1 + 400) * cfg.sps
    fade = np.full(hdr_hi - hdr_lo, 0.01)
    for b in bursts[:2]:
        b[hdr_lo: hdr_hi] *= fade.astype(np.float32)
    x = np.concatenate([gap, bursts[0], gap, bursts[1], gap, bursts[2], gap])
    frames, counters = receive(cfg, awgn(x, 15.0, rng))
    assert [f.header.image_id for f in frames] == [1, 3], counters
    assert counters["header_copies"] == 1 and counters["header_crc_fail"] == 1, counters
    act = measure_snr_db(long_pay, frames[0].symbols)  # the faded symbols' errors dominate it
    assert abs(frames[0].snr_db - act) < 1.0, (frames[0].snr_db, act)
    assert measure_snr_db(long_pay[1000:], frames[0].symbols[1000:]) > 12.0
    # without the copy (header_copy=False at both ends) the faded burst is lost
    cfg = FrameConfig(sps=2, max_chunk_symbols=3000, header_copy=False)
    burst = FrameTx(cfg).burst(Header(image_id=1, total_symbols=3000, chunk_symbols=3000), long_pay)
    burst[hdr_lo: hdr_hi] *= fade.astype(np.float32)
    frames, counters = receive(cfg, awgn(np.concatenate([gap, burst, gap]), 15.0, rng))
    assert frames == [] and counters["header_crc_fail"] == 1, counters


def test_a_burst_whose_preamble_is_lost_in_a_fade_is_found_from_its_resync_preamble(rng):
    """The preamble, the header and 400 symbols beyond in a -50 dB fade that lifts over the
    last 200 samples (a stream starting 3000 samples before the burst): the receiver never
    detects the burst's start, but its resync preamble
    before the header copy; the burst is read from its start (counter bursts_resynced), its
    payload as sent within the noise, with an honest estimate (the faded part's symbols with
    larger noise variances).  Two bursts later the same resync preamble of an unfaded burst is
    not counted again, and a stream cut between preamble and resync preamble counts the burst
    as truncated."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=3000)
    lay, tx = cfg.layout(), FrameTx(cfg)
    gap = np.zeros(3000, np.complex64)
    pays = [complex_noise(3000, 1.0, rng) for _ in range(2)]
    bursts = [tx.burst(Header(image_id=i + 1, total_symbols=3000, chunk_symbols=3000), p) for i, p in enumerate(pays)]
    hi = (len(lay.preamble) + int(lay.burst_map(3000).header[-1]) + 1 + 400) * cfg.sps + lay.half
    fade = np.minimum(np.maximum(np.arange(hi) - (hi - 200), 0) / 200 + 0.003, 1.0)
    faded = bursts[0].copy()
    faded[:hi] *= fade.astype(np.float32)
    x = np.concatenate([gap, faded, gap, bursts[1], gap])
    frames, counters = receive(cfg, awgn(x, 15.0, rng))
    assert [f.header.image_id for f in frames] == [1, 2], counters
    assert counters["bursts_resynced"] == 1 and counters["bursts_detected"] == 2, counters
    assert counters["header_copies"] == 1 and counters["header_crc_fail"] == 0, counters
    assert abs(frames[0].start - len(gap)) <= 1, frames[0].start
    tail = slice(2048 - 1000, 3000)  # after the fade
    assert measure_snr_db(pays[0][tail], frames[0].symbols[tail]) > 13.0
    act = measure_snr_db(pays[0], frames[0].symbols)
    assert abs(frames[0].snr_db - act) < 1.0, (frames[0].snr_db, act)
    nv = frames[0].symbol_noise_var
    assert nv[:100].mean() > 10 * nv[tail].mean(), (nv[:100].mean(), nv[tail].mean())
    # the stream starts after the burst's preamble: its resync preamble finds a truncated burst
    cut = len(lay.preamble) * cfg.sps + 100
    frames, counters = receive(cfg, awgn(np.concatenate([bursts[0][cut:], gap, bursts[1], gap]), 15.0, rng))
    assert [f.header.image_id for f in frames] == [2], counters
    assert counters["truncated"] == 1 and counters["bursts_resynced"] == 0, counters


def test_nonfinite_samples_are_counted_and_contained(rng):
    cfg = FrameConfig(sps=2, max_chunk_symbols=512)
    x, chunks, starts = make_stream(cfg, 4, rng)
    y = awgn(x, 15.0, rng)
    y[starts[1] - 60: starts[1] - 50] = np.nan                # in a gap
    y[starts[2] + 4000] = np.inf                              # in a payload
    y[starts[2] + 4001] = complex(np.nan, 1.0)
    y[starts[3] + 4000: starts[3] + 4003] = 3e19  # out of range (another sample format read as complex64)
    with np.errstate(over="raise", invalid="raise"):  # and no float overflow anywhere behind it
        frames, counters = receive(cfg, y)
    assert counters["nonfinite_samples"] == 15
    assert len(frames) == 4, counters
    for f in frames:
        assert np.all(np.isfinite(f.symbols)) and np.isfinite(f.snr_db)
    ok = [f for f in frames if f.header.chunk_index < 2]
    assert all(measure_snr_db(chunks[f.header.chunk_index], f.symbols) > 13 for f in ok)


@pytest.mark.parametrize("n_bad", [1, 10, 30])
def test_short_runs_of_nan_samples_give_their_symbols_the_noise_they_add(n_bad, rng):
    """1, 10 or 30 NaN samples inside a payload (replaced by 0, counted): the symbols whose
    pulses they cut get the energy they lost as noise (erased where it exceeds half their
    power), the known symbols there stay out of the estimate, and the live symbols' actual
    Es/N0 is the one reported.  Before, a run too short for the dead-stretch rule left
    symbols with errors of 0.3-6 reported at the burst's 23 dB (~0.005): the estimate was
    0.9 dB optimistic at 30 samples and the stream's other symbols looked as good."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=4096)
    x, chunks, starts = make_stream(cfg, 2, rng)
    y = awgn(x, 23.0, rng)
    at = starts[0] + 6000
    y[at: at + n_bad] = np.nan
    frames, counters = receive(cfg, y)
    assert [f.header.chunk_index for f in frames] == [0, 1] and counters["nonfinite_samples"] == n_bad, counters
    f, g = frames
    err = np.abs(f.symbols - chunks[0]) ** 2
    live = np.ones(len(err), bool) if f.erased is None else ~f.erased
    assert int((~live).sum()) == counters["symbols_erased"] == {1: 1, 10: 5, 30: 15}[n_bad], counters
    assert abs(f.snr_db - measure_snr_db(chunks[0][live], f.symbols[live])) < 0.2
    lay = cfg.layout()
    sample_of = starts[0] + (len(lay.preamble) + lay.burst_map(4096).payload) * cfg.sps + lay.half
    near = live & (sample_of > at - 14) & (sample_of < at + n_bad + 14)
    # what the symbols around the run lost is in their variance (the one before it: ~40 x the
    # burst's noise; the errors there 5-27 x) -- before, they had the burst's noise, and the
    # errors of those erased now were 100-300 x it
    assert err[near].mean() < 2.0 * f.symbol_noise_var[near].mean(), (err[near], f.symbol_noise_var[near])
    assert f.symbol_noise_var[near].max() > 1.2 * np.median(f.symbol_noise_var)
    assert g.erased is None and abs(g.snr_db - 23.0) < 0.5


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_a_dropout_in_the_payload_is_erased_not_divided_by(fill, rng):
    """1000 samples of a payload zeroed (a radio's dropout) or NaN (zeroed and counted): the
    symbols where the tracked gain is ~0 are erased (0, counted, RxFrame.erased) instead of
    divided by that gain (the old code gave NaN symbols and an estimate of -280 dB); the
    estimate covers the other symbols and is their actual Es/N0; the next burst is
    unharmed."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=4096)
    x, chunks, starts = make_stream(cfg, 2, rng)
    y = awgn(x, 10.0, rng)
    lo, hi = starts[0] + 3000, starts[0] + 5000  # 1000 symbols of the payload
    y[lo:hi] = fill
    frames, counters = receive(cfg, y)
    assert [f.header.chunk_index for f in frames] == [0, 1], counters
    f, g = frames
    assert np.all(np.isfinite(f.symbols)) and np.isfinite(f.snr_db) and f.erased is not None
    assert counters["symbols_erased"] == int(f.erased.sum()) and g.erased is None
    assert counters["nonfinite_samples"] == (2000 if np.isnan(fill) else 0)
    assert not f.symbols[f.erased].any() and not f.symbol_noise_var[f.erased].any()
    # the erased symbols are the dead stretch's (each symbol's sample: preamble + body position)
    lay = cfg.layout()
    sample_of = starts[0] + (len(lay.preamble) + lay.burst_map(cfg.max_chunk_symbols).payload) * cfg.sps + lay.half
    dead = (sample_of >= lo) & (sample_of < hi)
    assert dead.sum() > 800 and f.erased[dead].mean() > 0.9, f.erased[dead].mean()
    assert np.all((sample_of[f.erased] >= lo - 20) & (sample_of[f.erased] < hi + 20))
    # the dead known symbols are left out of the channel track: the live symbols' estimate
    # is their actual Es/N0 (the old track, pulled to 0 by the dropout, gave errors of 10 next to it)
    live = ~f.erased
    actual = measure_snr_db(chunks[0][live], f.symbols[live])
    assert f.snr_db == pytest.approx(10 * np.log10(1 / np.mean(f.symbol_noise_var[live])))
    assert abs(f.snr_db - actual) < 0.5 and actual > 9.3, (f.snr_db, actual)
    assert abs(g.snr_db - 10.0) < 0.5


def test_a_dropout_over_the_header_leaves_the_payload_whole(rng):
    """Samples 200..3000 of a burst zeroed (most of its preamble and header): the header is
    read from its copy, and the dead known symbols stay out of the channel track, so the
    payload after them is whole (the old track, pulled towards 0 there, gave the first 256
    payload symbols an error of 10) and its estimate is honest."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=4096)
    x, chunks, starts = make_stream(cfg, 1, rng)
    y = awgn(x, 10.0, rng)
    y[starts[0] + 200: starts[0] + 3000] = 0
    frames, counters = receive(cfg, y)
    assert len(frames) == 1 and counters["header_copies"] == 1, counters
    f, = frames
    assert f.erased is None
    assert measure_snr_db(chunks[0][:256], f.symbols[:256]) > 8.5
    actual = measure_snr_db(chunks[0], f.symbols)
    assert actual > 9.0 and abs(f.snr_db - actual) < 0.5, (f.snr_db, actual)


@pytest.mark.parametrize("tx_scramble", [True, False])
def test_the_receiver_follows_the_bursts_scrambling(tx_scramble, rng):
    """Whether the payload was scrambled travels in the header (flags bit 7, set by FrameTx):
    a receiver configured the other way still descrambles right. Before, a mismatch was silent
    garbage under a good estimate (15 dB estimated, -3 dB actual)."""
    from gr_gdmcom.phy.header import PLAIN_FLAG
    x, chunks, _ = make_stream(FrameConfig(scramble=tx_scramble, max_chunk_symbols=1024), 2, rng)
    y = awgn(x, 15.0, rng)
    for rx_scramble in (True, False):
        frames, counters = receive(FrameConfig(scramble=rx_scramble, max_chunk_symbols=1024), y)
        assert len(frames) == 2, counters
        for f in frames:
            assert bool(f.header.flags & PLAIN_FLAG) == (not tx_scramble)
            assert measure_snr_db(chunks[f.header.chunk_index], f.symbols) > 14.0
            assert abs(f.snr_db - 15.0) < 0.7


def test_input_types(rng):
    cfg = FrameConfig(sps=2, max_chunk_symbols=256)
    x, _, _ = make_stream(cfg, 1, rng)
    y = awgn(x, 20.0, rng)
    assert len(receive(cfg, y.astype(np.complex128))[0]) == 1
    rx = FrameRx(cfg)
    assert rx.push(np.zeros(0, np.complex64)) == []
    assert rx.push(np.zeros(100, np.float32)) == [] and rx.push([0, 1, 2]) == []
    with pytest.raises(TypeError):
        rx.push(np.array(["a", "b"]))
    with pytest.raises(ValueError):
        rx.push(np.zeros((2, 2), np.complex64))


def test_matched_filter_at_matches_the_polyphase_filter(rng):
    """The per-instant matched filter used on a drifting clock agrees with the fixed-phase
    one where both apply, and a carrier ramp folded into its taps equals derotating first."""
    from gr_gdmcom.phy import sync

    cfg = FrameConfig(sps=2)
    lay = cfg.layout()
    r = complex_noise(4000, 1.0, rng)
    mu = 0.3
    ref = sync.matched_filter(r, sync.mf_taps(mu, lay.half, cfg.sps, cfg.rolloff, lay.rrc_scale), cfg.sps, 100)
    table = sync.mf_table(lay.half, cfg.sps, cfg.rolloff, lay.rrc_scale)
    t = lay.half + mu + cfg.sps * np.arange(100)
    np.testing.assert_allclose(sync.matched_filter_at(r, t, lay.half, table), ref, rtol=0, atol=1e-5)
    f = 0.01
    ramp = np.exp(-2j * np.pi * f * np.arange(table.shape[1]))
    n0 = np.floor(t).astype(int) - lay.half
    got = sync.matched_filter_at(r, t, lay.half, table, ramp) * np.exp(-2j * np.pi * f * n0)
    want = sync.matched_filter_at(r * np.exp(-2j * np.pi * f * np.arange(len(r))), t, lay.half, table)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_timing_discriminator_gains():
    """Plain early/late slope from the pulse; the interference-cancelled one keeps 0.41
    of it at rolloff 0.35 (the pilot's leakage into its neighbours' estimates)."""
    from gr_gdmcom.phy import sync

    cfg = FrameConfig(sps=2)
    lay = cfg.layout()
    plain = sync.timing_gain(lay.half, 2, cfg.rolloff, lay.rrc_scale, 0)
    fine = sync.timing_gain(lay.half, 2, cfg.rolloff, lay.rrc_scale, cfg.rrc_span)
    e = 0.05  # samples: q of the plain discriminator from the pulse response directly
    R = lambda d: sync.pulse_response(d, lay.half, 2, cfg.rolloff, lay.rrc_scale)[0]  # noqa: E731
    q = (R(1 - e) - R(1 + e)) / (R(1 - e) + R(1 + e))
    assert plain == pytest.approx(q / e, rel=0.01)
    assert fine / plain == pytest.approx(0.41, abs=0.01)
    assert sync.timing_q(np.array([1.0 + 0j]), np.array([2.0 + 0j]), np.array([1.0 + 0j]))[0] == 0.0


@pytest.mark.parametrize("sps,cfo", [(2, 0.07), (2, -0.05), (1, 0.14)])
def test_cfo_beyond_the_detector_range(sps, cfo, rng):
    """The detector reads the CFO modulo 1/(16 sps); whole steps around it are tried, so
    CFOs up to 2.5 steps (0.078 cycles/sample at sps 2) are acquired at 0 dB: every frame,
    CFO right to 1e-4.  With cfo_search = 0 the same bursts are lost."""
    cfg = FrameConfig(sps=sps, max_chunk_symbols=512)
    x, chunks, _ = make_stream(cfg, 20, rng)
    y = awgn(x * np.exp(2j * np.pi * cfo * np.arange(len(x))).astype(np.complex64), 0.0, rng)
    frames, counters = receive(cfg, y)
    assert len(frames) == 20 and counters["header_crc_fail"] == 0, counters
    assert all(abs(f.cfo - cfo) < 1e-4 for f in frames)
    ref, _ = receive(cfg, awgn(x, 0.0, rng))  # the same bursts without CFO
    assert np.mean(payload_mse_db(frames, chunks)) <= np.mean(payload_mse_db(ref, chunks)) + 0.3
    lost, _ = receive(FrameConfig(sps=sps, max_chunk_symbols=512, cfo_search=0), y)
    assert len(lost) == 0


@pytest.mark.parametrize("sps", [2, 4])
def test_matched_filter_leaves_no_pulse_pair_isi(sps, rng):
    """Both RRC filters truncated at +-rrc_span / 2 symbols: the matched filter's outputs of
    a shaped symbol stream differ from the symbols by -37 to -40 dB of interference (the
    pulse pair's own, mostly 4 symbols away); with sync.isi_taps's known part removed
    (sync.cancel_isi), by less than -47 dB, at any fractional instant."""
    cfg = FrameConfig(sps=sps)
    lay = cfg.layout()
    s = complex_noise(3000, 1.0, rng)
    x = simulate_channel(lay.shape(s), None, rng, delay=0.37)  # symbol j's peak at half + j sps + 0.37
    table = sync.mf_table(lay.half, sps, cfg.rolloff, lay.rrc_scale)
    d, p = sync.isi_taps(lay.half, sps, cfg.rolloff, lay.rrc_scale)
    reach = int(np.abs(d).max())
    j = np.arange(100, 2900)
    y = sync.matched_filter_at(x, lay.half + j * sps + 0.37, lay.half, table)
    raw = 10 * np.log10(np.mean(np.abs(y - s[j]) ** 2))
    clean = 10 * np.log10(np.mean(np.abs(sync.cancel_isi(y, d, p) - s[j][reach: -reach]) ** 2))
    assert -41 < raw < -36, raw
    assert clean < -47, clean


@pytest.mark.parametrize("sps", [1, 2])
def test_implementation_loss_at_20db(sps, rng):
    """The payload's actual Es/N0 (against the sent symbols) at 20 dB, AWGN, 40 bursts of
    1024 symbols: within 0.1 dB of the nominal on average (+-0.02 dB by chance; it was
    0.1-0.2 dB below: the pilots'
    residual-frequency error turned into a phase error along the payload, and at sps 2
    the truncated pulse pair's -38 dB of interference), the estimate within 0.1 dB of it."""
    cfg = FrameConfig(sps=sps, max_chunk_symbols=1024)
    x, chunks, _ = make_stream(cfg, 40, rng)
    frames, counters = receive(cfg, awgn(x, 20.0, rng))
    assert len(frames) == 40, counters
    act = np.array([measure_snr_db(chunks[f.header.chunk_index], f.symbols) for f in frames])
    est = np.array([f.snr_db for f in frames])
    assert act.mean() > 19.9, act.mean()
    assert abs(est.mean() - act.mean()) < 0.1, (est.mean(), act.mean())


def test_a_crossing_the_every_symbol_metric_does_not_confirm_is_passed_not_looped_on(monkeypatch):
    """A noiseless stream (sps 4, 0.1-sample delay) ending in the flush's zeros: the strided
    detection metric crosses the threshold where the every-symbol one, from other prefix
    sums, stays at it; the detector used to re-examine that crossing forever (a hang in
    flush).  It moves on: 4 frames, a handful of candidates."""
    cfg = FrameConfig(sps=4, max_chunk_symbols=256)
    x = FrameTx(cfg).stream(complex_noise(4 * 256, 1.0, np.random.default_rng(0)), Header(image_id=1))
    y = fractional_delay(np.concatenate([np.zeros(500, np.complex64), x, np.zeros(500, np.complex64)]), 0.1)
    calls = []
    real = FrameRx._synchronise

    def counted(self, *a, **kw):
        calls.append(a[0])
        if len(calls) > 100:
            raise RuntimeError(f"detector looping at sample {a[0]}")
        return real(self, *a, **kw)

    monkeypatch.setattr(FrameRx, "_synchronise", counted)
    frames, counters = receive(cfg, y)
    assert len(frames) == 4 and len(calls) < 20, (len(calls), counters)


@pytest.mark.parametrize("eq_taps", [1, 3])
def test_the_dispersive_pass_works_with_the_shortest_equalisers(eq_taps, rng):
    """The second pass takes its inputs from the first pass's matched-filter outputs, which reach
    only eq_taps // 2 symbols beyond the burst: with 1 or 3 taps it used to index past them
    (IndexError out of FrameRx.push); it now uses as many as there are."""
    cfg = FrameConfig(sps=2, max_chunk_symbols=2048, eq_taps=eq_taps)
    x, chunks, starts = make_stream(cfg, 2, rng)
    frames, counters = receive(cfg, awgn(x, 20.0, rng))
    assert [f.header.chunk_index for f in frames] == [0, 1], counters
    assert all(measure_snr_db(chunks[f.header.chunk_index], f.symbols) > 18.0 for f in frames)


BLAS_PROBE = """
import json, torch
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(2, user_api="blas")  # what OpenBLAS starts with on a 2-core machine
blas = lambda: sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})
before, torch_before = blas(), torch.get_num_threads()
from gr_gdmcom.phy import FrameRx
FrameRx(); FrameRx()
print(json.dumps([before, blas(), torch_before, torch.get_num_threads()]))
"""


@pytest.mark.parametrize("env, expect", [({}, [1]), ({"OPENBLAS_NUM_THREADS": "2"}, [2])])
def test_the_receiver_runs_numpy_blas_on_one_thread_unless_the_user_chose(env, expect):
    """OpenBLAS's idle worker spins between the receiver's small matrix products: a receiving
    flowgraph (channel_model -> frame_rx, ``bench_phy.py --cores 0``) ran at 1.65 Msps of wall time
    and 0.83 per CPU-second, on one BLAS thread 1.79 and 1.64.  FrameRx sets one thread, once,
    unless the user set it; torch's threads are not touched."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                                              "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", BLAS_PROBE], capture_output=True, text=True, timeout=120,
                       env=dict(clean, PYTHONPATH=str(Path(__file__).resolve().parent.parent), **env))
    assert r.returncode == 0, r.stderr[-2000:]
    before, after, torch_before, torch_after = json.loads(r.stdout.strip().splitlines()[-1])
    if before != [2]:
        pytest.skip(f"BLAS would not take 2 threads here ({before})")
    assert after == expect and torch_after == torch_before
