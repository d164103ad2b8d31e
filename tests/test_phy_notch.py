"""Narrowband interferers inside the signal's band: found and notched (gr_gdmcom.phy.notch, FrameRx step 0)."""

import re

import numpy as np
import pytest

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, measure_snr_db
from gr_gdmcom.phy.channel import awgn, complex_noise, simulate_channel


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
