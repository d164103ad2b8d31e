"""Narrowband interferers inside the signal's band: found and notched (gr_gdmcom.phy.notch, FrameRx step 0)."""

import re

import numpy as np
import pytest

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, measure_snr_db
from gr_gdmcom.phy.channel import awgn, complex_noise, simulate_channel
from gr_gdmcom.phy import notch as notch_mod
from gr_gdmcom.phy.notch import BLOCK, CONFIRM, FORGET, MAX_NOTCHES, ToneNotch


def _link(sps, rng, ampl, freq, n_bursts=4, chunk=2048, lead=40_000, snr_db=20.0):
    """``n_bursts`` bursts after a noise-only ``lead`` at ``snr_db``, plus a tone ``ampl`` x the bursts'
    rms amplitude at ``freq`` cycles/sample: (stream, the bursts' symbols)."""
    cfg = FrameConfig(sps=sps, max_chunk_symbols=chunk)
    sym = complex_noise(n_bursts * chunk, 1.0, rng)
    bursts = FrameTx(cfg).frames(sym, Header(image_id=2, latent_shape=(2, 1, n_bursts * chunk)))
    rms = np.sqrt(np.mean(np.abs(bursts[0]) ** 2))
    gap = np.zeros(500, np.complex64)
    x = awgn(np.concatenate([np.zeros(lead, np.complex64)] + [p for b in bursts for p in (b, gap)]), snr_db, rng)
    n = np.arange(len(x))
    return (x + ampl * rms * np.exp(2j * np.pi * (freq * n + 0.3))).astype(np.complex64), sym.reshape(n_bursts, chunk)


def _receive(x, sps, notch=True, chunk=2048, pieces=None):
    """(frames, the receiver); ``rx.tones_at_end``, ``rx.dc_at_end``: the tones notched and the DC
    offset subtracted when the stream ended."""
    rx = FrameRx(FrameConfig(sps=sps, max_chunk_symbols=chunk, notch=notch))
    frames, k = [], 0
    for p in (pieces if pieces is not None else []):
        frames += rx.push(x[k:k + p])
        k += p
    frames += rx.push(x[k:])
    rx.tones_at_end = list(rx._notch.tones) if rx._notch else []
    rx.dc_at_end = rx._notch.dc if rx._notch else 0
    return frames + rx.flush(), rx


@pytest.mark.parametrize("sps,freq", [(2, 0.05), (8, 0.013), (4, -0.1)])  # (a DC offset: below)
def test_a_tone_3x_the_signal_inside_the_band_is_notched(sps, freq, rng):
    """A tone at 3x the signal's rms amplitude (+9.5 dB) inside the band: without the notch the
    detector found at most 1 of the 4 bursts (its metrics are normalised by all the power in their
    window) and what it found had ~8 dB; with it every burst comes with about 19 of the 20 dB and
    an honest estimate, and the tone is found within two hundredths of a bin."""
    x, sym = _link(sps, rng, 3.0, freq)
    off, _ = _receive(x, sps, notch=False)
    frames, rx = _receive(x, sps)
    assert len(off) <= 1 and rx.counters["tones_notched"] == 1
    assert sorted(f.header.chunk_index for f in frames) == [0, 1, 2, 3]
    got = [measure_snr_db(sym[f.header.chunk_index], f.symbols) for f in frames]
    assert min(got) > 18.0, got
    assert max(abs(f.snr_db - g) for f, g in zip(frames, got)) < 2.0, ([f.snr_db for f in frames], got)
    (tone,) = rx.tones_at_end
    assert abs(tone - freq) < 2.5e-6, tone  # two hundredths of a bin (1 / 8192 cycles/sample)


@pytest.mark.parametrize("sps,level_db", [(2, 9.5), (2, -20.0), (8, -20.0), (4, -30.0)])
def test_a_dc_offset_is_measured_where_the_stream_is_quiet_and_subtracted(sps, level_db, caplog):
    """A DC offset (LO leakage) at +9.5, -20 or -30 dB against the bursts' power, 20 dB of noise,
    the receiver started 40 000 samples before the first burst: measured in that silence and
    subtracted, every burst gets what it gets without the offset (within 0.15 dB; -20 dB had
    held the payload near 17 dB), the offset measured as well as the silence allows (its noise's
    standard error), counted once in tones_notched,
    no notch left at DC.  (-30 dB is 10 dB under the noise: over the gate, 13 dB under it.)"""
    ampl = 10 ** (level_db / 20)
    x, sym = _link(sps, np.random.default_rng(5), ampl, 0.0)
    clean, _ = _link(sps, np.random.default_rng(5), 0.0, 0.0)
    with caplog.at_level("WARNING", logger="gr_gdmcom.phy.notch"):
        frames, rx = _receive(x, sps)
    ref, _ = _receive(clean, sps)
    assert [re.sub(r"[+-]\d+\.\d", "X", r.getMessage()) for r in caplog.records] == [
        "DC offset X dB against the noise where the stream is quietest: subtracted (counted in tones_notched)"]
    got = [measure_snr_db(sym[f.header.chunk_index], f.symbols) for f in frames]
    want = [measure_snr_db(sym[f.header.chunk_index], f.symbols) for f in ref]
    assert len(frames) == len(ref) == 4 and np.max(np.abs(np.subtract(got, want))) < 0.15, (got, want)
    assert rx.counters["tones_notched"] == 1 and rx.tones_at_end == []
    bursts = FrameTx(FrameConfig(sps=sps, max_chunk_symbols=2048)).frames(
        sym.ravel(), Header(image_id=2, latent_shape=(2, 1, sym.size)))
    rms = np.sqrt(np.mean(np.abs(bursts[0]) ** 2))
    true_dc = ampl * rms * np.exp(2j * np.pi * 0.3)
    # within 3 standard errors of a mean over the 40 000 samples of silence, noise 20 dB under the bursts
    assert abs(rx.dc_at_end - true_dc) < 3 * 0.1 * rms / np.sqrt(40_000), (rx.dc_at_end, true_dc)
    if level_db == -20.0:  # without the stage: the offset is noise to the payload
        off, _ = _receive(x, sps, notch=False)
        assert np.median([measure_snr_db(sym[f.header.chunk_index], f.symbols) for f in off]) < 17.5


def test_a_weak_tone_is_notched_too(rng):
    """10 dB under the signal a tone caps the payload near 11.5 dB at 20 dB; notched: above 18.5."""
    x, sym = _link(2, rng, 0.316, 0.11)
    for notch, lo, hi in ((False, 10.5, 12.5), (True, 18.5, 20.5)):
        frames, rx = _receive(x, 2, notch=notch)
        got = [measure_snr_db(sym[f.header.chunk_index], f.symbols) for f in frames]
        assert len(frames) == 4 and lo < min(got) and max(got) < hi, (notch, got)


def test_pieces_of_any_size_give_the_same_frames_with_a_tone(rng):
    x, _ = _link(4, rng, 3.0, 0.07, n_bursts=2)
    x = (x + np.complex64(0.05 - 0.02j)).astype(np.complex64)  # and a DC offset
    whole, rx = _receive(x, 4)
    pieces = rng.integers(1, 30_000, 40)
    parts, rx2 = _receive(x, 4, pieces=pieces)
    # (3: the tone; the offset, first notched as a tone at 0 while the tone's power hid it from the
    # DC measurement, then -- the tone notched -- measured and subtracted)
    assert rx.counters["tones_notched"] == rx2.counters["tones_notched"] == 3 and rx.dc_at_end == rx2.dc_at_end != 0
    assert len(whole) == len(parts) == 2
    for a, b in zip(whole, parts):
        assert a.start == b.start and a.snr_db == b.snr_db
        np.testing.assert_array_equal(a.symbols, b.symbols)


def test_streams_without_a_tone_pass_unchanged(rng):
    """The bursts' own spectral lines (the same preamble and pilots in every burst) never pass for a
    tone at sps >= 2: 16-8192-symbol chunks back to back, 0-45 dB, carrier offset, multipath --
    no notch, frames bit-identical to the receiver without the stage."""
    for _ in range(10):
        sps = int(rng.choice([2, 4, 8]))
        chunk = int(rng.choice([16, 64, 300, 2048, 8192]))
        cfg = FrameConfig(sps=sps, max_chunk_symbols=chunk, gap_symbols=int(rng.choice([0, 64])))
        n = int(rng.integers(chunk, 4 * chunk + 1))
        s = FrameTx(cfg).stream(complex_noise(n, 1.0, rng), Header(image_id=1, latent_shape=(1, 1, n)))
        s = np.tile(s, 60_000 // len(s) + 1)
        x = simulate_channel(np.concatenate([np.zeros(int(rng.integers(0, 9000)), np.complex64), s]),
                             float(rng.uniform(0, 45)), rng, cfo=float(rng.uniform(-0.02, 0.02)) / sps,
                             taps=[1, 0.3j, 0.1] if rng.random() < 0.3 else None)
        on, rx = _receive(x, sps, chunk=chunk)
        off, _ = _receive(x, sps, notch=False, chunk=chunk)
        assert rx.counters["tones_notched"] == 0, (sps, chunk)
        assert [f.start for f in on] == [f.start for f in off] and on, (sps, chunk)
        for a, b in zip(on, off):
            np.testing.assert_array_equal(a.symbols, b.symbols)


def test_the_notch_goes_when_the_tone_does(rng):
    """A tone that stops: its notch is removed 8 blocks (65 536 samples) later, logged."""
    x, _ = _link(2, rng, 3.0, 0.05, n_bursts=1, lead=40_000)
    quiet = awgn(np.zeros(120_000, np.complex64), 20.0, rng) * np.sqrt(np.mean(np.abs(x[:1000]) ** 2) / 2)
    rx = FrameRx(FrameConfig(sps=2, max_chunk_symbols=2048))
    rx.push(x)
    assert len(rx._notch.tones) == 1
    rx.push(quiet.astype(np.complex64))
    assert rx._notch.tones == [] and rx.counters["tones_notched"] == 1


def test_no_notch_at_one_sample_per_symbol_or_when_turned_off():
    assert FrameRx(FrameConfig(sps=1))._notch is None
    assert FrameRx(FrameConfig(sps=2, notch=False))._notch is None
    with pytest.raises(ValueError, match="notch must be True or False"):
        FrameConfig(notch="yes")


# --------------------------------------------------------------------------- ToneNotch alone
# Exact checks of the stage's pieces, block by block (mutation testing, docs/mutation-testing.md,
# found the end-to-end tests above blind to most of its arithmetic, its timing and its log lines).


def _tone(f, ampl, n, start=0):
    k = np.arange(start, start + n)
    return (ampl * np.exp(2j * np.pi * f * k)).astype(np.complex64)


def _qpsk_blocks(n_blocks, seed=0):
    """Zero-mean noise of exactly constant power 2 per block (+-1 +-j, each block's mean exactly 0):
    the DC tests' ratios are then exact."""
    rng = np.random.default_rng(seed)
    half = np.tile(np.r_[np.ones(BLOCK // 4), -np.ones(BLOCK // 4)], 2)
    out = [(rng.permutation(half) + 1j * rng.permutation(half)).astype(np.complex64) for _ in range(n_blocks)]
    return np.concatenate(out)


def _reference_candidates(buf, edge, threshold_db):
    """_candidates written out plainly: Hann window, log power, each bin's mean log power over bins
    k-32 .. k+32 but k-3 .. k+3 (circular), local maxima in the band over the threshold, a parabola
    through the peak's log power and its neighbours for the fraction."""
    p = np.abs(np.fft.fft(buf * np.hanning(BLOCK).astype(np.float32))) ** 2
    lp = 10 * np.log10(np.maximum(p, p.max() * 1e-15))
    offs = np.r_[np.arange(-32, -3), np.arange(4, 33)]
    around = np.array([lp[(k + offs) % BLOCK].mean() for k in range(BLOCK)])
    out = []
    for k in range(BLOCK):
        a, b, d = lp[k - 1], lp[k], lp[(k + 1) % BLOCK]
        if b - around[k] > threshold_db and b >= a and b >= d and abs(np.fft.fftfreq(BLOCK)[k]) <= edge:
            out.append((k + (0.5 * (a - d) / (a - 2 * b + d) if a - 2 * b + d < 0 else 0.0), b - around[k]))
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


@pytest.mark.parametrize("scale", [1.0, 1e-5])
def test_candidates_equal_the_written_out_reference(scale):
    """Every local maximum 3 dB over its surroundings (a noise block has hundreds, near DC and the band
    edges too) and three tones, one at DC: the bins (to the fraction) and contrasts of the reference, float64; at
    1e-5 of full scale (the spectrum's peak ~1e-3) as at 1 -- a level, not a power, decides."""
    rng = np.random.default_rng(3)
    buf = (complex_noise(BLOCK, 0.01, rng) + _tone(0.0123, 1.0, BLOCK) + _tone(0.00031, 0.5, BLOCK) + 0.3) * scale
    n = ToneNotch(0.3)
    n._buf[:] = buf
    for thr in (3.0, notch_mod.CONTRAST_DB):
        bins, contrast = n._candidates(thr)
        ref_bins, ref_contrast = _reference_candidates(n._buf, 0.3, thr)
        assert bins.dtype == contrast.dtype == np.float64 and len(bins) == len(ref_bins) > (0 if thr > 3 else 100)
        np.testing.assert_allclose(bins, ref_bins, rtol=0, atol=1e-9)
        np.testing.assert_allclose(contrast, ref_contrast, rtol=0, atol=1e-6)
    bins, _ = n._candidates()
    assert np.round(bins).astype(int).tolist() == [0, 3, 101]  # (0, 0.00031 and 0.0123 cycles/sample)
    assert abs(bins[2] - 0.0123 * BLOCK) < 0.05


def test_candidates_of_silence_and_of_noise_are_empty_and_the_band_edge_is_in():
    n = ToneNotch(0.25)
    for buf in (np.zeros(BLOCK, np.complex64), complex_noise(BLOCK, 1.0, np.random.default_rng(1))):
        n._buf[:] = buf
        bins, contrast = n._candidates()
        assert len(bins) == 0 and len(contrast) == 0
    noise = complex_noise(BLOCK, 1e-4, np.random.default_rng(2))
    for f, found in ((0.25, [2048.0]), (-0.25 + 1 / BLOCK, [4096.0 + 2049.0]), (0.25 + 2 / BLOCK, [])):
        n._buf[:] = noise + _tone(f, 1.0, BLOCK)
        assert np.round(n._candidates()[0], 3).tolist() == found, f


def test_a_tone_is_notched_from_the_block_after_its_third_and_dropped_8_blocks_after_its_last(caplog):
    """A tone from block 5 to block 12: a tone from the CONFIRM-th block it is seen in (block 7: the
    samples from 8 x 8192 on are notched, those before passed exactly); its notch removed after block
    12 + FORGET -- FORGET blocks without it -- with an info line. Pushed in odd pieces."""
    noise = complex_noise(24 * BLOCK, 0.01, np.random.default_rng(4))
    x = noise.copy()
    x[5 * BLOCK:13 * BLOCK] += _tone(0.1, 1.0, 8 * BLOCK, 5 * BLOCK)
    n = ToneNotch(0.3)
    count, out, k = [], [], 0
    with caplog.at_level("DEBUG", logger="gr_gdmcom.phy.notch"):
        for size in [1000, 7192, 3, 8189] + [BLOCK] * 22:
            out.append(n.process(x[k:k + size]))
            k += size
            if k % BLOCK == 0:
                count.append(len(n.tones))
    out = np.concatenate(out)
    assert k == len(x) == len(out) and out.dtype == np.complex64
    start = 5 + CONFIRM
    gone = 12 + FORGET  # (the block whose analysis removes it)
    assert count == [0] * (start - 1) + [1] * (gone - start + 1) + [0] * (24 - gone), count
    np.testing.assert_array_equal(out[:start * BLOCK], x[:start * BLOCK])
    tone_left = out[(start + 1) * BLOCK:13 * BLOCK] - noise[(start + 1) * BLOCK:13 * BLOCK]
    assert np.mean(np.abs(tone_left) ** 2) < 1e-3  # the tone 30 dB down (the notch takes a little noise)
    assert n.found == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "narrowband interferer at 0.10000 cycles/sample (60 dB over the spectrum around it) in the "
                    "signal's band: notched (counted in tones_notched)"),
        ("INFO", "interferer at 0.10000 cycles/sample gone: its notch removed")]
    assert n.process(np.zeros(0, np.complex64)).tolist() == []


def test_a_notched_tone_is_kept_down_to_keep_db_and_at_most_four_are_notched(caplog):
    """Five tones: four notched (MAX_NOTCHES), the first logged as a warning, the rest at debug.  One of
    them then drops to ~18 dB over the spectrum (under CONTRAST_DB, over KEEP_DB): still notched, and
    its frequency followed; another stops: its notch goes, and the fifth takes its place."""
    freqs = [0.02, 0.05, 0.08, 0.11, 0.14]
    centre = [round(f * BLOCK) / BLOCK for f in freqs]  # (bin centres: contrasts without scalloping)
    n_blocks = 3 + FORGET + 6
    x = complex_noise(n_blocks * BLOCK, 0.01, np.random.default_rng(6))
    for i, f in enumerate(centre):
        ampl = np.r_[np.ones(5 * BLOCK), np.full((n_blocks - 5) * BLOCK, 0.011 if i == 0 else 1.0)]
        if i == 1:
            ampl[5 * BLOCK:] = 0.0
        x += (ampl * _tone(f, 1.0, n_blocks * BLOCK)).astype(np.complex64)
    n = ToneNotch(0.3)
    with caplog.at_level("DEBUG", logger="gr_gdmcom.phy.notch"):
        n.process(x[:3 * BLOCK])
        assert [round(t, 5) for t in n.tones] == [round(f, 5) for f in centre[:MAX_NOTCHES]] and n.found == 4
        n.process(x[3 * BLOCK:])
    assert [r.levelname for r in caplog.records[:4]] == ["WARNING", "DEBUG", "DEBUG", "DEBUG"]
    assert sorted(round(t, 4) for t in n.tones) == [round(f, 4) for f in centre if f != centre[1]] and n.found == 5
    assert "interferer at 0.05005 cycles/sample gone: its notch removed" in [r.getMessage() for r in caplog.records]


def _dc_stream(levels, seed=0):
    """Blocks of exact-power noise (2 per sample) plus a DC offset of |dc|^2 / 2 = levels[i] in block i."""
    x = _qpsk_blocks(len(levels), seed)
    dc = np.repeat(np.sqrt(2 * np.asarray(levels, np.float64)) * np.exp(0.7j), BLOCK)
    return (x + dc).astype(np.complex64)


def test_a_dc_offset_is_subtracted_over_5_percent_of_the_noise_and_kept_until_under_2(caplog, monkeypatch):
    """The offset measured on the quiet blocks (here all: their power about the mean is equal) is
    subtracted from the next block on when |DC|^2 is over DC_GATE (5 %) of their noise, stays while over
    DC_GATE_OFF (2 %): 0.1 in blocks 0-3 and none after make the history's mean 0.1 x (4 / (k + 1))^2:
    on after block 0, on through block 7 (0.025), off after block 8 (0.0198), exactly 0 from then on.
    Back at 4 (block 10): on again, logged at debug.  (The tone finder is kept out: from about 3 % of
    the noise an offset -- or what is left of one -- is also a line 24 dB over the spectrum at 0.)"""
    monkeypatch.setattr(notch_mod, "CONTRAST_DB", 200.0)
    levels = [0.1] * 4 + [0.0] * 6 + [4.0] * 2
    x = _dc_stream(levels)
    n = ToneNotch(0.3)
    dcs, outs = [], []
    with caplog.at_level("DEBUG", logger="gr_gdmcom.phy.notch"):
        for i in range(len(levels)):
            outs.append(n.process(x[i * BLOCK:(i + 1) * BLOCK]))
            dcs.append(complex(n.dc))
            assert isinstance(n.dc, np.complex64)
    on = [abs(d) > 0 for d in dcs]
    assert on == [True] * 8 + [False] * 2 + [True] * 2, on
    for k in range(8):  # the mean of the history's block means
        want = np.sqrt(0.2) * np.exp(0.7j) * min(4, k + 1) / (k + 1)
        assert abs(dcs[k] - want) < 1e-6, (k, dcs[k], want)
    for i in range(1, len(levels)):  # each block less the offset measured up to the one before
        np.testing.assert_array_equal(outs[i], x[i * BLOCK:(i + 1) * BLOCK] - np.complex64(dcs[i - 1]))
    np.testing.assert_array_equal(outs[0], x[:BLOCK])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "DC offset -10.0 dB against the noise where the stream is quietest: subtracted (counted in "
                    "tones_notched)"),
        ("INFO", "DC offset gone (-17.0 dB against the noise): no longer subtracted"),
        ("DEBUG", "DC offset -10.6 dB against the noise where the stream is quietest: subtracted (counted in "
                  "tones_notched)")]
    assert n.found == 2
    n.reset()
    assert n.dc == 0 and isinstance(n.dc, np.complex64) and n.tones == []
    fresh = ToneNotch(0.3)
    for i in range(len(levels)):  # after reset() as new
        np.testing.assert_array_equal(n.process(x[i * BLOCK:(i + 1) * BLOCK]), fresh.process(x[i * BLOCK:(i + 1) * BLOCK]))


def test_a_dc_offset_under_5_percent_of_the_noise_is_left(monkeypatch):
    monkeypatch.setattr(notch_mod, "CONTRAST_DB", 200.0)  # (the tone finder would notch it: see above)
    n = ToneNotch(0.3)
    x = _dc_stream([0.03] * 6)
    np.testing.assert_array_equal(n.process(x), x)
    assert n.dc == 0 and n.found == 0
