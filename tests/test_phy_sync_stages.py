"""Each receiver stage of phy/sync.py against the claim its docstring makes, tested alone
(identity, convergence, no divergence, ranges, unit gain), the way GNU Radio's
qa_costas_loop_cc tests a loop; and a stored GNU Radio channel capture as a regression input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gr_gdmcom.phy import FrameConfig, FrameRx, sync
from gr_gdmcom.phy.sync import (OMEGA_LAG, equalise, fine_timing_cfo, integrate_dump, phasor, preamble_correlation,
                                preamble_metric, pulse_response, residual_frequency, slope, solve_small,
                                train_equaliser, unwrap)

CAPTURE = Path(__file__).resolve().parent / "data" / "capture_awgn_cfo.c64"


def cn(rng, n, var=1.0):
    """Complex white Gaussian noise of variance ``var``."""
    return np.sqrt(var / 2) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))


def qpsk(rng, n):
    return ((2 * rng.integers(0, 2, n) - 1) + 1j * (2 * rng.integers(0, 2, n) - 1)) / np.sqrt(2)


@pytest.fixture(scope="module")
def lay():
    return FrameConfig(sps=1).layout()


# ---------------------------------------------------------------------- detection
def test_integrate_dump_sums_each_symbol_and_is_identity_at_sps_1(rng):
    x = cn(rng, 60).astype(np.complex64)
    assert np.array_equal(integrate_dump(x, 1), x)
    for sps in (2, 3, 4):
        np.testing.assert_allclose(integrate_dump(x, sps), x.reshape(-1, sps).sum(1), rtol=1e-6)


def test_preamble_metric_is_one_on_a_clean_preamble_whatever_the_cfo(lay):
    seg, barker = lay.cfg.preamble_seg, lay.barker
    y = np.concatenate([np.zeros(40), lay.preamble, np.zeros(40)]).astype(np.complex128)
    m0, p0 = preamble_metric(y, seg, barker)
    assert int(np.argmax(m0)) == 40 and m0[40] == pytest.approx(1.0, abs=1e-6)
    for f in (0.003, -0.02):  # cycles/element
        yf = y * np.exp(2j * np.pi * f * np.arange(len(y)))
        m, p = preamble_metric(yf, seg, barker)
        assert m[40] == pytest.approx(1.0, abs=1e-6) and abs(p[40]) == pytest.approx(abs(p0[40]), rel=1e-9)
        assert np.angle(p[40]) == pytest.approx(-2 * np.pi * f * seg, abs=1e-6)


def test_preamble_metric_in_0_1_about_1_over_w_on_noise_and_rho_law_on_a_noisy_preamble(lay, rng):
    seg, barker = lay.cfg.preamble_seg, lay.barker
    W = (len(barker)) * seg
    m, _ = preamble_metric(cn(rng, 20000), seg, barker)
    assert m.min() >= 0 and m.max() <= 1
    assert 0.5 / W < m.mean() < 2.0 / W
    rho = 10 ** (3 / 10)  # 3 dB per element
    vals = []
    for _ in range(40):
        y = np.concatenate([cn(rng, 50, 1 / rho), lay.preamble + cn(rng, len(lay.preamble), 1 / rho)])
        vals.append(preamble_metric(y, seg, barker)[0][50])
    assert np.mean(vals) == pytest.approx((rho / (1 + rho)) ** 2, abs=0.05)
    # stride: the same values at every stride-th start
    y = cn(rng, 1000)
    np.testing.assert_allclose(preamble_metric(y, seg, barker, stride=3)[0], preamble_metric(y, seg, barker)[0][::3])
    assert preamble_metric(y[:len(lay.preamble) - 1], seg, barker)[0].size == 0


def test_preamble_correlation_verify_is_one_on_the_preamble_small_on_noise(lay, rng):
    reps, seg = lay.cfg.preamble_reps, lay.cfg.preamble_seg
    tseg = lay.preamble.reshape(reps, seg)
    r = np.concatenate([np.zeros(7), lay.preamble, np.zeros(7)]).astype(np.complex128)
    c, score, verify = preamble_correlation(r, tseg)
    assert int(np.argmax(score)) == 7 and verify[7] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(c[7], np.full(reps, seg), atol=1e-4)  # each segment correlates to its energy
    _, _, v = preamble_correlation(cn(rng, 3000), tseg)
    assert v.min() >= 0 and v.max() <= 1 + 1e-12
    assert v.mean() < 3 / math.sqrt(seg * reps)
    # H versions at once give the same as one by one
    two = np.stack([tseg, tseg * 1j])
    c2, s2, v2 = preamble_correlation(r, two)
    np.testing.assert_allclose(s2[0], score) and np.testing.assert_allclose(v2[1], verify)


@pytest.mark.parametrize("cfo", [0.0, 0.004, -0.011])
def test_fine_timing_cfo_finds_lag_and_cfo(lay, cfo, rng):
    reps, seg = lay.cfg.preamble_reps, lay.cfg.preamble_seg
    tseg = lay.preamble.reshape(reps, seg)
    r = np.concatenate([np.zeros(9), lay.preamble, np.zeros(9)])
    r = r * np.exp(2j * np.pi * cfo * np.arange(len(r))) + cn(rng, len(r), 0.01)
    c, score, _ = preamble_correlation(r, tseg)
    lag, f, best = fine_timing_cfo(c, score, seg, fractional=False)
    assert best == 9 and lag == 9.0
    assert f == pytest.approx(cfo, abs=2e-4)


def test_fine_timing_fraction_is_the_parabola_vertex():
    c = np.ones((5, 3), np.complex128)
    score = np.array([0.0, 2.0, 4.0, 3.0, 0.0])  # parabola through (1,2),(2,4),(3,3): vertex 2 + 0.5/3
    lag, _, best = fine_timing_cfo(c, score, 4, fractional=True)
    assert best == 2 and lag == pytest.approx(2 + 1 / 6)
    assert fine_timing_cfo(c, score, 4, fractional=False)[0] == 2.0


# ---------------------------------------------------------------------- pulse, equaliser
def test_matched_pulse_has_unit_gain_and_no_isi():
    lay2 = FrameConfig(sps=4).layout()
    half, sps, beta, scale = lay2.half, 4, lay2.cfg.rolloff, lay2.rrc_scale
    r = pulse_response(np.arange(-3, 4) * sps, half, sps, beta, scale)
    assert r[3] == pytest.approx(1.0, abs=1e-6)  # truncated RRC: a small energy loss
    assert np.abs(np.delete(r, 3)).max() < 0.02


def test_solve_small_matches_numpy_and_reports_singular(rng):
    for n in (1, 3, 7, 15):
        a = cn(rng, n * n).reshape(n, n) + 3 * np.eye(n)
        b = cn(rng, n)
        np.testing.assert_allclose(solve_small(a, b), np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    assert np.isnan(solve_small(np.zeros((3, 3)), np.ones(3))).all()
    # pivoting: a zero on the diagonal is not singular
    np.testing.assert_allclose(solve_small(np.array([[0, 1], [1, 0]]), np.array([2, 3])), [3, 2])


def test_equalise_is_a_correlation_with_the_taps(rng):
    y, w = cn(rng, 40), cn(rng, 5)
    ref = np.array([np.sum(w * y[j:j + 5]) for j in range(30)])
    np.testing.assert_allclose(equalise(y, w, 30), ref, rtol=1e-12)


def test_train_equaliser_identity_convergence_unit_gain_and_degenerate_input(rng):
    n, ntaps = 400, 7
    s = qpsk(rng, n + ntaps)
    # identity: y[j + 3] = s[j] -> the centre tap alone
    y = np.concatenate([np.zeros(3), s])
    w = train_equaliser(y, s[:n], ntaps)
    np.testing.assert_allclose(w, np.eye(ntaps)[3], atol=1e-6)
    # convergence: an ISI channel with noise at 25 dB is undone, output = s + noise with unit gain
    h = np.array([0.1j, 1.0, -0.25, 0.05])
    y = np.convolve(s, h)[: n + ntaps] * np.exp(0.7j)
    y = np.concatenate([np.zeros(2), y]) + cn(rng, n + ntaps + 2, 10 ** -2.5)
    w = train_equaliser(y, s[:n], ntaps)
    out = equalise(y, w, n)
    gain = np.vdot(s[:n], out) / np.vdot(s[:n], s[:n])
    assert gain == pytest.approx(1.0, abs=1e-9)
    assert 10 * np.log10(1 / np.mean(np.abs(out - s[:n]) ** 2)) > 20
    # no divergence: silence gives zero taps, never NaN
    assert np.array_equal(train_equaliser(np.zeros(n + ntaps, complex), s[:n], ntaps), np.zeros(ntaps))


# ---------------------------------------------------------------------- phase and frequency
def test_phasor_unwrap_slope_helpers(rng):
    np.testing.assert_allclose(phasor(0.013, 777, 5), np.exp(-2j * np.pi * 0.013 * (5 + np.arange(777))), atol=2e-6)
    ph = np.cumsum(rng.uniform(-3, 3, 200))
    np.testing.assert_allclose(unwrap(np.angle(np.exp(1j * ph))), np.unwrap(np.angle(np.exp(1j * ph))))
    x = np.arange(10.0)
    assert slope(x, 3 * x + 1) == pytest.approx(3.0) and slope(x[:2], x[:2]) == 0.0


@pytest.mark.parametrize("omega_frac", [0.0, 0.3, -0.9])
def test_residual_frequency_recovers_omega_within_its_range(omega_frac, rng):
    spacing, n_p = 33, 40
    pos = 5 + spacing * np.arange(n_p)
    omega = omega_frac * np.pi / (OMEGA_LAG * spacing)  # up to 90 % of the documented range
    zp = np.exp(1j * (omega * pos + 0.4)) + cn(rng, n_p, 0.01)
    assert residual_frequency(zp, pos) == pytest.approx(omega, abs=1e-4)  # a wrap would be off by >= 5e-3


# ---------------------------------------------------------------------- stored capture
@pytest.mark.skipif(not CAPTURE.exists(), reason="capture not generated")
def test_stored_gnuradio_capture_decodes_to_its_headers_and_snr():
    """A capture made by scripts/make_capture.py (GNU Radio channel_model: AWGN, CFO, clock
    offset, two taps): FrameRx gives back the headers and symbols that were sent.  The stored
    capture has version-4 headers (recorded before the model fingerprint): still read, their
    32-bit prompt CRC as its low 16 bits, the model unknown."""
    info = json.loads(CAPTURE.with_suffix(".json").read_text())
    x = np.fromfile(CAPTURE, np.complex64)
    rx = FrameRx(FrameConfig(**info["frame"]))
    frames = rx.push(x) + rx.flush()
    assert len(frames) == len(info["headers"])
    sym = _capture_symbols(info)
    for f, h in zip(frames, info["headers"]):
        got = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(f.header).items()}
        assert {k: got[k] for k in h} == dict(h, prompt_hash=h["prompt_hash"] & 0xFFFF)
        assert f.header.version == info.get("header_version", 4) and f.header.model_hash == 0
        assert f.header.alpha == pytest.approx(info["alpha"], rel=1e-6) and f.header.guidance == info["guidance"]
        sent = sym[h["chunk_index"] * info["chunk"]: h["chunk_index"] * info["chunk"] + len(f.symbols)]
        measured = 10 * np.log10(1 / np.mean(np.abs(f.symbols - sent) ** 2))
        assert abs(f.snr_db - info["snr_db"]) < 1.5 and abs(f.snr_db - measured) < 1.0
    assert rx.counters["header_crc_fail"] == 0


def _capture_symbols(info):
    r = np.random.default_rng(info["symbol_seed"])
    n = info["total_symbols"]
    return ((r.standard_normal(n) + 1j * r.standard_normal(n)) / np.sqrt(2)).astype(np.complex64)


def test_fse_regressors_rows_hold_the_symbol_and_half_symbol_outputs_around_each_symbol():
    h, k, n = 3, 2, 10
    y = np.arange(n + 2 * h) + 0j          # y[i] is symbol i - h
    y_half = np.arange(n + 2 * h + 1) + 0.5j  # y_half[i] is symbol i - h - 1/2
    x = sync.fse_regressors(y, y_half, h, k, n)
    assert x.shape == (n, 4 * k + 3)
    j = 4  # symbol 4: y's symbols 2..6, then the half outputs at 1.5 .. 6.5
    assert np.array_equal(x[j, :5].real, [2 + h, 3 + h, 4 + h, 5 + h, 6 + h])
    assert np.array_equal(x[j, 5:].real, np.arange(2, 8) + h)  # y_half index m is symbol m - h - 1/2
    assert np.all(x[j, 5:].imag == 0.5)


def test_windowed_equaliser_is_least_squares_with_exact_leave_one_out(rng):
    """One window over the burst: the taps are the least-squares fit on the known rows, and each
    known symbol's leave-one-out output is the output of the fit made without it.  Windowed:
    a segment's outputs come from the fit on the known rows of the segments within the window."""
    n, r = 640, 5
    x = rng.standard_normal((n, r)) + 1j * rng.standard_normal((n, r))
    w_true = rng.standard_normal(r) + 1j * rng.standard_normal(r)
    pos = np.sort(rng.choice(n, 200, replace=False))
    target = x[pos] @ w_true + 0.1 * (rng.standard_normal(200) + 1j * rng.standard_normal(200))
    z, z_loo = sync.windowed_equaliser(x, pos, target, window=10 ** 9, ridge=0.0)
    w_ls = np.linalg.lstsq(x[pos], target, rcond=None)[0]
    assert np.allclose(z, x @ w_ls, atol=1e-9)
    for i in (0, 57, 199):
        keep = np.arange(200) != i
        w_i = np.linalg.lstsq(x[pos[keep]], target[keep], rcond=None)[0]
        assert z_loo[i] == pytest.approx(x[pos[i]] @ w_i, abs=1e-9)
    # windowed: hop 64, window 128 -> one segment each side; segment 5 (symbols 320..383) uses 4..6
    z, z_loo = sync.windowed_equaliser(x, pos, target, window=128, hop=64, ridge=0.0)
    near = (pos >= 256) & (pos < 448)
    w_5 = np.linalg.lstsq(x[pos[near]], target[near], rcond=None)[0]
    assert np.allclose(z[320:384], x[320:384] @ w_5, atol=1e-9)
    # the first segment's window is the first three segments (clipped at the start)
    first = pos < 192
    assert np.allclose(z[:64], x[:64] @ np.linalg.lstsq(x[pos[first]], target[first], rcond=None)[0], atol=1e-9)
