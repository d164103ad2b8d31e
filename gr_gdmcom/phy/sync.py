"""Receiver signal processing, as pure vectorised numpy functions.

Detection (:func:`preamble_metric`), timing/CFO/verification
(:func:`preamble_correlation`, :func:`fine_timing_cfo`), fractional-delay
matched filtering (:func:`matched_filter`) and the removal of the pulse pair's
residual interference (:func:`cancel_isi`), the LS equaliser
(:func:`train_equaliser`, :func:`equalise`) and the channel tracker
(:func:`track_gain`: complex gain, amplitude and phase, along the burst).  :class:`~gr_gdmcom.phy.rx.FrameRx` strings them together.
"""

from __future__ import annotations

import cmath
import functools
import threading
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .frame import rrc

#: Per-sample power below which a window counts as silent (guards 0/0 in the metrics).
SILENCE_POWER = 1e-10
#: Largest pilot lag of the first residual-frequency estimate (its range is
#: +-pi / (OMEGA_LAG * pilot distance) rad/symbol: 8x the preamble's CFO error at 0 dB).
OMEGA_LAG = 16
#: Resolution of the matched filter's fractional timing, steps per sample.
MU_STEPS = 256
#: Smallest residual interference tap :func:`isi_taps` keeps (its square: -60 dB), and
#: the fractional instants it averages over.
ISI_TAP_MIN = 1e-3
ISI_MU_POINTS = 16


def integrate_dump(x: np.ndarray, sps: int) -> np.ndarray:
    """Sum of each ``sps`` consecutive samples (a cheap matched filter for detection).

    Args:
        x: complex64 (n,), n a multiple of sps.
    Returns:
        complex64 (n // sps,).
    """
    if sps == 1:
        return x
    y = x[0::sps] + x[1::sps]
    for k in range(2, sps):
        y += x[k::sps]
    return y


def preamble_metric(y: np.ndarray, seg: int, barker: np.ndarray, stride: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Barker-weighted repeated-segment (Schmidl-Cox-like) detection metric.

    P[m] = sum_i b_i sum_{k in segment i} y[m+k] conj(y[m+k+seg]),
    M[m] = |P|^2 / (E1 E2) with E1, E2 the energies of y[m : m+W] and
    y[m+seg : m+seg+W], W = (reps - 1) seg.  M is in [0, 1], insensitive to
    CFO (|P| does not depend on it), ~1/W on noise and ~(rho/(1+rho))^2 on a
    preamble at per-element SNR rho; angle(P) = -2 pi f seg (f in cycles/element).

    Args:
        y: complex (n,), symbol-rate stream (e.g. :func:`integrate_dump` output).
        seg: segment length in elements of ``y``.
        barker: float (reps - 1,), adjacent-segment sign products.
        stride: compute M and P at m = 0, stride, 2 stride, ...
    Returns:
        (M float64 (ceil((n - reps seg + 1) / stride),), P complex128 (same,)); empty
        if n is too short.
    """
    reps = len(barker) + 1
    n = len(y) - reps * seg + 1
    if n <= 0:
        return np.zeros(0), np.zeros(0, np.complex128)
    c = np.zeros(len(y) - seg + 1, np.complex128)
    np.cumsum(y[:-seg] * np.conj(y[seg:]), out=c[1:])
    # P[m] = sum_i b_i (C[m + (i+1) seg] - C[m + i seg]) = sum_i w_i C[m + i seg]
    w = np.concatenate([[0.0], barker]) - np.concatenate([barker, [0.0]])
    nz = np.flatnonzero(w)
    p = w[nz[0]] * c[nz[0] * seg: nz[0] * seg + n: stride]
    for i in nz[1:]:
        p += w[i] * c[i * seg: i * seg + n: stride]
    e = np.zeros(len(y) + 1)
    np.cumsum(y.real ** 2 + y.imag ** 2, out=e[1:])
    win = (reps - 1) * seg
    e1 = e[win: win + n: stride] - e[:n: stride]
    e2 = e[seg + win: seg + win + n: stride] - e[seg: seg + n: stride]
    m = (p.real ** 2 + p.imag ** 2) / (e1 * e2 + (win * SILENCE_POWER) ** 2)
    return m, p


def preamble_correlation(r: np.ndarray, tseg: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment-wise correlation of ``r`` with the known preamble at every lag.

    Args:
        r: complex (n_lags + reps * seglen - 1,), CFO-corrected samples.
        tseg: complex (reps, seglen), the preamble waveform cut into segments, or
            (H, reps, seglen): H versions of it, each correlated (the energies are shared).
    Returns:
        (c complex ([H,] n_lags, reps): per-segment correlations,
         score float ([H,] n_lags,): sum_i |c_i|^2 (non-coherent: robust to residual CFO),
         verify float ([H,] n_lags,): |sum_i n_{i+1} conj(n_i)| / (reps - 1) with n_i = c_i
         normalised by its segment energies; in [0, 1], ~1 / sqrt(seglen reps) on
         noise, ~rho / (1 + rho) on the preamble (rho: per-sample SNR).  The sign
         cover makes it small at whole-segment offsets and partial overlaps.)
    """
    reps, seglen = tseg.shape[-2:]
    win = sliding_window_view(r, reps * seglen).reshape(-1, reps, seglen)
    c = np.einsum("lrd,...rd->...lr", win, np.conj(tseg))
    er = np.einsum("lrd,lrd->lr", win.real, win.real) + np.einsum("lrd,lrd->lr", win.imag, win.imag)
    et = np.sum(np.abs(tseg) ** 2, axis=-1)[..., None, :]
    cn = c / np.sqrt(er * et + (seglen * SILENCE_POWER) ** 2)
    verify = np.abs(np.sum(cn[..., 1:] * np.conj(cn[..., :-1]), axis=-1)) / (reps - 1)
    return c, np.sum(c.real ** 2 + c.imag ** 2, axis=-1), verify


def fine_timing_cfo(c: np.ndarray, score: np.ndarray, seglen: int, fractional: bool) -> Tuple[float, float, int]:
    """Best lag (with parabolic fractional refinement) and the residual CFO from the
    phase progression of the segment correlations at that lag.

    Args:
        c, score: from :func:`preamble_correlation`.
        seglen: samples per preamble segment.
        fractional: refine the lag by a parabola through the score (sps > 1).
    Returns:
        (lag float (index into score, fractional), cfo float cycles/sample, best int).
    """
    best = int(np.argmax(score))
    lag = float(best)
    if fractional and 0 < best < len(score) - 1:
        a, b, d = score[best - 1], score[best], score[best + 1]
        den = a - 2 * b + d
        if den < 0:
            lag += float(np.clip(0.5 * (a - d) / den, -0.5, 0.5))
    cb = c[best]
    f1 = cmath.phase((cb[1:] * np.conj(cb[:-1])).sum()) / (2 * np.pi * seglen)
    i = np.arange(len(cb))
    f2 = slope(i, unwrap(np.angle(cb * np.exp(-2j * np.pi * f1 * seglen * i)))) / (2 * np.pi * seglen)
    return lag, float(f1 + f2), best


def mf_taps(mu: float, half: int, sps: int, beta: float, scale: float) -> np.ndarray:
    """Matched-filter taps for a sampling instant ``mu`` samples (0 <= mu < 1) after a
    sample: rrc((k - mu) / sps) * scale for k = -half .. half + 1, with mu rounded to
    1/``MU_STEPS`` sample (cached).  float32 (2 half + 2,)."""
    return _mf_taps(int(round(mu * MU_STEPS)), half, sps, beta, scale)


@functools.lru_cache(maxsize=4 * MU_STEPS)
def _mf_taps(mu_q: int, half: int, sps: int, beta: float, scale: float) -> np.ndarray:
    taps = (rrc((np.arange(-half, half + 2) - mu_q / MU_STEPS) / sps, beta) * scale).astype(np.float32)
    taps.flags.writeable = False
    return taps


def matched_filter(r: np.ndarray, taps: np.ndarray, sps: int, n_out: int) -> np.ndarray:
    """Matched-filter outputs at one instant per symbol.

    Args:
        r: complex64 samples; output j uses r[j sps : j sps + len(taps)].
        taps: float32 (L,), see :func:`mf_taps`.
        sps: samples per symbol.  n_out: outputs wanted.
    Returns:
        complex64 (n_out,).
    """
    if len(taps) == 1:
        return r[: n_out * sps: sps] * taps[0]
    phases = [np.ascontiguousarray(r[p::sps]) for p in range(sps)]  # polyphase: unit-stride reads
    y = np.zeros(n_out, np.complex64)
    for k, t in enumerate(taps):
        y += t * phases[k % sps][k // sps: k // sps + n_out]
    return y


@functools.lru_cache(maxsize=16)
def mf_table(half: int, sps: int, beta: float, scale: float) -> np.ndarray:
    """:func:`mf_taps` for every fractional instant mu = q / MU_STEPS, q = 0..MU_STEPS.
    float32 (MU_STEPS + 1, 2 half + 2), read-only."""
    table = np.stack([_mf_taps(q, half, sps, beta, scale) for q in range(MU_STEPS + 1)])
    table.flags.writeable = False
    return table


def matched_filter_at(r: np.ndarray, t: np.ndarray, half: int, table: np.ndarray,
                      ramp: Optional[np.ndarray] = None) -> np.ndarray:
    """Matched-filter outputs at arbitrary fractional sample instants.

    Args:
        r: complex64 samples.
        t: float64 (n,) instants, in samples of ``r`` (``half <= t < len(r) - half - 2``).
        half: RRC delay in samples; table: :func:`mf_table`.
        ramp: complex (2 half + 2,) factors applied to the taps (e.g. a carrier), or None.
    Returns:
        complex64 (n,): sum_k r[floor(t) + k] rrc((k - mu) / sps) scale ramp[k + half], k = -half .. half + 1.
    """
    n = np.floor(t).astype(np.int64)
    q = np.rint((t - n) * MU_STEPS).astype(np.int64)
    idx = (n - half)[:, None] + np.arange(table.shape[1])[None, :]
    if ramp is not None:  # (the same products, made once per table row instead of once per output)
        table = table * ramp[None, :]
    return np.einsum("ij,ij->i", r[idx], table[q]).astype(np.complex64)


@functools.lru_cache(maxsize=16)
def isi_taps(half: int, sps: int, beta: float, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """The residual intersymbol interference of the truncated pulse pair: the TX pulse
    (``rrc_span`` symbols, delayed by mu samples as a band-limited waveform) through
    :func:`mf_taps` at mu, sampled at the other symbols, p(d), averaged over mu.
    Truncating both filters at +-rrc_span / 2 symbols leaves p(+-4) ~ 0.006 (rolloff
    0.35, span 8): -38 to -40 dB of ISI in all (depending on mu), beyond the reach of a
    7-tap equaliser (0.07 dB at 20 dB; docs/frame-format.md section 6); less the average,
    -48 dB or less at any mu.  Returns (d int64, p float64): the offsets whose
    |p(d)| >= ISI_TAP_MIN (each left out adds at most -60 dB), empty at sps = 1."""
    if sps < 2:
        return np.zeros(0, np.int64), np.zeros(0)
    tx = rrc(np.arange(-half, half + 1) / sps, beta) * scale
    reach = (2 * half + 1) // sps + 1
    pad = (reach + 1) * sps
    nfft = 1 << int(np.ceil(np.log2(len(tx) + 2 * pad + 2)))
    spec = np.fft.fft(np.concatenate([np.zeros(pad), tx]), nfft)
    freq = np.fft.fftfreq(nfft)
    d = np.arange(-reach, reach + 1)
    idx = pad + d[:, None] * sps + np.arange(2 * half + 2)[None, :]  # each output's window
    p = np.zeros(len(d))
    for q in range(0, MU_STEPS, MU_STEPS // ISI_MU_POINTS):
        rx = np.fft.ifft(spec * np.exp(-2j * np.pi * freq * q / MU_STEPS)).real  # delayed by q / MU_STEPS
        p += rx[idx] @ _mf_taps(q, half, sps, beta, scale) / ISI_MU_POINTS
    keep = (d != 0) & (np.abs(p) >= ISI_TAP_MIN)
    return d[keep], p[keep]


def cancel_isi(y: np.ndarray, d: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Remove a known symbol-spaced interference from matched-filter outputs:
    out[j] = y[j + L] - sum_i p_i y[j + L - d_i] (L = max |d|), which leaves
    s_j + O(p^2) of y[j] = s_j + sum_i p_i s_(j - d_i) (:func:`isi_taps`).

    Args:
        y: complex (n + 2 L,), outputs at symbols -L .. n + L - 1.
        d, p: from :func:`isi_taps`.
    Returns:
        (n,) of y's dtype: symbols 0 .. n - 1.
    """
    reach = int(np.abs(d).max()) if len(d) else 0
    n = len(y) - 2 * reach
    out = y[reach: reach + n].copy()
    for di, pi in zip(d, p):
        out -= y.dtype.type(pi) * y[reach - di: reach - di + n]
    return out


def pulse_response(d: np.ndarray, half: int, sps: int, beta: float, scale: float) -> np.ndarray:
    """R(d): one symbol through the TX pulse and the matched filter, sampled ``d``
    samples after its peak (truncated RRC both ways, as sent and received).  float64."""
    k = np.arange(-half, half + 1)
    tx = rrc(k / sps, beta) * scale
    d = np.atleast_1d(np.asarray(d, np.float64))
    return (tx[None, :] * rrc((k[None, :] - d[:, None]) / sps, beta) * scale).sum(1)


@functools.lru_cache(maxsize=16)
def timing_gain(half: int, sps: int, beta: float, scale: float, span: int) -> float:
    """Slope at 0 (per sample) of the early/late discriminator :func:`timing_q` of a
    known symbol, sampling instants off by e samples (peaks e samples later).

    ``span`` = 0: plain, q(e) = (R(sps/2 - e) - R(sps/2 + e)) / (R(sps/2 - e) + R(sps/2 + e))
    with R the :func:`pulse_response`; monotone over |e| < sps/2.
    ``span`` > 0: the interference of ``span`` symbols on either side predicted and
    removed first.  Their estimates come from the same mistimed on-time outputs, so
    they carry the known symbol's own leakage R(j sps - e) / R(-e), and removing it
    takes part of the slope away (0.41 of it at rolloff 0.35): this is the gain for
    timing errors the equaliser has not absorbed (a drift since its training).
    """
    e = np.array([-1e-3, 1e-3]) * sps
    j = np.concatenate([np.arange(-span, 0), np.arange(1, span + 1)])

    def r(d):
        return pulse_response(np.ravel(d), half, sps, beta, scale).reshape(np.shape(d))

    late, early = r(sps / 2 - e), r(-sps / 2 - e)
    if span:
        leak = r(j[None, :] * sps - e[:, None]) / r(-e)[:, None]  # neighbour estimates, (2, 2 span)
        late, early = late - leak @ r(sps / 2 - j * sps), early - leak @ r(-sps / 2 - j * sps)
    q = (late - early) / (late + early)
    return float((q[1] - q[0]) / (e[1] - e[0]))


def timing_q(s_early: np.ndarray, s_on: np.ndarray, s_late: np.ndarray) -> np.ndarray:
    """Early/late discriminator from sums of known-symbol-weighted matched-filter
    outputs half a symbol early, on time and half a symbol late (complex, one per
    window): (late - early) / (late + early), each projected on the on-time sum.
    About :func:`timing_gain` times the timing offset for small offsets.  float64."""
    ref = np.conj(s_on)
    late, early = (s_late * ref).real, (s_early * ref).real
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num((late - early) / (late + early))


def phasor(f: float, n: int, n0: int = 0) -> np.ndarray:
    """exp(-j 2 pi f (n0 + m)) for m = 0..n-1, built from two tables of ~sqrt(n) exponentials.
    complex64 (n,)."""
    blk = max(1, int(np.sqrt(n)))
    nb = -(-n // blk)
    fine = np.exp(-2j * np.pi * f * np.arange(blk))
    coarse = np.exp(-2j * np.pi * f * (n0 + blk * np.arange(nb)))
    return (coarse[:, None] * fine[None, :]).ravel()[:n].astype(np.complex64)


def train_equaliser(y: np.ndarray, known: np.ndarray, ntaps: int) -> np.ndarray:
    """Unbiased least-squares symbol-spaced equaliser trained on symbols 0..n-1.

    Solves min_w sum_j |sum_k w_k y[j + k] - s_j|^2, then divides w by the MMSE
    bias <Y w, s> / <s, s> so that the output is s + noise (unit gain).  The
    rows are sliding windows, so the normal equations come from lagged products
    and prefix sums (no BLAS/LAPACK: between bursts OpenBLAS's idle threads can
    take milliseconds to wake for a 7 x 7 problem).

    Args:
        y: complex (>= n + ntaps - 1,), MF outputs; symbol j is estimated from
           y[j : j + ntaps] (y is offset by ntaps // 2 symbols).
        known: complex (n,), the training symbols 0..n-1.
        ntaps: odd number of taps.
    Returns:
        complex128 (ntaps,) taps (all zero if the data are degenerate).
    """
    n = len(known)
    y = np.asarray(y[: n + ntaps - 1], np.complex128)
    # prefix sums of the lagged products conj(y[m]) y[m + d], d = 0..ntaps-1:
    # gram[k, k + d] = sum_{m=k}^{n-1+k} conj(y[m]) y[m + d] = c[d, n + k] - c[d, k]
    c = np.zeros((ntaps, len(y) + 1), np.complex128)
    yc = np.conj(y)
    for d in range(ntaps):
        np.multiply(yc[: len(y) - d], y[d:], out=c[d, 1: len(y) - d + 1])
    np.cumsum(c, axis=1, out=c)
    k, d = _upper(ntaps)
    gram = np.empty((ntaps, ntaps), np.complex128)
    gram[k, k + d] = c[d, n + k] - c[d, k]
    gram[k + d, k] = np.conj(gram[k, k + d])
    diag = np.arange(ntaps)
    gram[diag, diag] += 1e-9 * (gram[diag, diag].real.sum() / ntaps + SILENCE_POWER)
    known = np.asarray(known, np.complex128)
    w = solve_small(gram, np.conj(np.correlate(y, known, "valid")))
    if not np.isfinite(w).all():
        return np.zeros(ntaps, np.complex128)
    bias = (np.conj(known) * equalise(y, w, n)).sum() / (known.real ** 2 + known.imag ** 2).sum()
    if not np.isfinite(bias) or abs(bias) < 1e-6:
        return np.zeros(ntaps, np.complex128)
    return w / bias


@functools.lru_cache(maxsize=8)
def _upper(n: int):
    """(row k, lag d) of the upper triangle of an n x n matrix (entry (k, k + d))."""
    k, col = np.triu_indices(n)
    return k, col - k


def solve_small(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a small dense system a x = b by Gaussian elimination with partial pivoting,
    in Python (n up to a few dozen).  complex128 (n,); NaN if a is singular."""
    n = len(b)
    m = [list(map(complex, row)) + [complex(v)] for row, v in zip(a, b)]
    for i in range(n):
        piv = max(range(i, n), key=lambda r: abs(m[r][i]))
        m[i], m[piv] = m[piv], m[i]
        if m[i][i] == 0:
            return np.full(n, np.nan, np.complex128)
        inv = 1.0 / m[i][i]
        row_i = m[i]
        for r in range(i + 1, n):
            f = m[r][i] * inv
            if f:
                row_r = m[r]
                for c in range(i, n + 1):
                    row_r[c] -= f * row_i[c]
    x = [0j] * n
    for i in range(n - 1, -1, -1):
        x[i] = (m[i][n] - sum(m[i][c] * x[c] for c in range(i + 1, n))) / m[i][i]
    return np.array(x, np.complex128)


def equalise(y: np.ndarray, w: np.ndarray, n_out: int) -> np.ndarray:
    """Apply equaliser taps: out[j] = sum_k w[k] y[j + k].  (n_out,), y's dtype."""
    w = w.astype(y.dtype)
    out = y[:n_out] * w[0]
    for k in range(1, len(w)):
        out += y[k: k + n_out] * w[k]
    return out


def fse_regressors(y: np.ndarray, y_half: np.ndarray, h: int, k: int, n: int) -> np.ndarray:
    """Inputs of a fractionally spaced (T/2) equaliser with 2 k + 1 symbol-spaced and 2 k + 2
    half-symbol taps around each of symbols 0 .. n - 1.

    Args:
        y: matched-filter outputs of symbols -h .. (``y[i]`` is symbol i - h), h >= k.
        y_half: the outputs halfway between: ``y_half[i]`` is symbol i - h - 1/2 (one more than
            ``y``, starting half a symbol before it).
    Returns:
        complex128 (n, 4 k + 3): row j = y's symbols j - k .. j + k, then y_half's j - k - 1/2 .. j + k + 1/2.
    """
    a = sliding_window_view(np.asarray(y, np.complex128), 2 * k + 1)[h - k: h - k + n]
    b = sliding_window_view(np.asarray(y_half, np.complex128), 2 * k + 2)[h - k: h - k + n]
    return np.concatenate([a, b], 1)


def windowed_equaliser(x: np.ndarray, pos: np.ndarray, target: np.ndarray, window: int, hop: int = 64,
                       ridge: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
    """Least-squares equaliser re-fitted along a burst on its known symbols only.

    Every ``hop`` symbols the taps are fitted (ridge-regularised) on the known symbols within
    about ``window`` symbols around (whole hop segments; ``window >= len(x)``: one fit over
    the burst) and applied to that segment's rows.

    Args:
        x: complex (n, r) equaliser inputs per symbol (:func:`fse_regressors`).
        pos: int (m,) increasing positions of the known symbols; target: complex (m,) what the
            equaliser should output there.
    Returns:
        (z complex128 (n,) outputs, z_loo complex128 (m,) the output at each known symbol of
        the fit made without it -- exact for a least-squares fit: target + e / (1 - leverage)
        -- which is what the channel tracker and the noise estimate may see).
    """
    n, r = x.shape
    xk = x[pos]
    if window >= n:  # one fit
        g = xk.conj().T @ xk
        g[np.arange(r), np.arange(r)] += ridge * np.trace(g).real / r + 1e-30
        g_inv = np.linalg.inv(g)
        z = x @ (g_inv @ (xk.conj().T @ target))
        lev = ((xk @ g_inv) * xk.conj()).sum(1).real
        return z, target + (z[pos] - target) / np.maximum(1.0 - lev, 0.05)
    n_seg = -(-n // hop)
    # each segment's Gram matrix and right-hand side (sums over its known symbols), cumulated
    seg_of = pos // hop
    gram = np.zeros((n_seg + 1, r, r), np.complex128)
    rhs = np.zeros((n_seg + 1, r), np.complex128)
    np.add.at(gram, seg_of + 1, xk.conj()[:, :, None] * xk[:, None, :])
    np.add.at(rhs, seg_of + 1, xk.conj() * target[:, None])
    gram, rhs = np.cumsum(gram, 0), np.cumsum(rhs, 0)
    half = max(1, int(round(window / hop / 2)))  # segments each side
    lo = np.clip(np.arange(n_seg) - half, 0, max(n_seg - 2 * half - 1, 0))
    hi = np.minimum(lo + 2 * half + 1, n_seg)
    g, b = gram[hi] - gram[lo], rhs[hi] - rhs[lo]
    g[:, np.arange(r), np.arange(r)] += (ridge * np.einsum("sii->s", g).real / r + 1e-30)[:, None]
    g_inv = np.linalg.inv(g)
    w = np.einsum("sab,sb->sa", g_inv, b)
    z = np.einsum("nr,nr->n", x, w[np.arange(n) // hop])
    lev = (np.einsum("ma,mab->mb", xk, g_inv[seg_of]) * xk.conj()).sum(1).real
    return z, target + (z[pos] - target) / np.maximum(1.0 - lev, 0.05)


def unwrap(ph: np.ndarray) -> np.ndarray:
    """np.unwrap for 1-D float arrays, with less overhead."""
    if len(ph) < 2:
        return np.asarray(ph, np.float64)
    d = np.diff(ph)
    d -= 2 * np.pi * np.round(d / (2 * np.pi))
    out = np.empty(len(ph))
    out[0] = ph[0]
    np.cumsum(d, out=out[1:])
    out[1:] += ph[0]
    return out


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y against x (0 for fewer than 3 points)."""
    if len(x) < 3:
        return 0.0
    xc = x - x.mean()
    return float((xc * y).sum() / (xc * xc).sum())


def residual_frequency(zp: np.ndarray, pos: np.ndarray) -> float:
    """Residual carrier frequency from regularly spaced pilots: the phase of
    sum_k z[k+L] conj(z[k]), first with L = min(n_p / 2, ``OMEGA_LAG``) (wide range),
    then, after removing each estimate, with L four times longer, up to L = n_p / 2
    (precise).  Each stage must resolve the next one's phase ambiguity: one jump from
    16 to n_p / 2 = 208 pilots (an 8192-symbol burst) took the wrong turn in about one
    burst in 600 at 0 dB, its error a whole turn over the burst.

    Args:
        zp: complex (n_p,), received pilots times conj(known pilots).
        pos: int (n_p,), their symbol positions (increasing).
    Returns:
        float, rad/symbol.
    """
    zp = np.asarray(zp, np.complex128)
    omega = 0.0
    lags = [min(len(zp) // 2, OMEGA_LAG)]
    while lags[-1] < len(zp) // 2:
        lags.append(min(4 * lags[-1], len(zp) // 2))
    for lag in lags:
        if lag >= 1:
            zr = zp * np.exp(-1j * omega * pos)
            spacing = float(pos[-lag:].sum() - pos[:lag].sum()) / (len(pos) - lag)  # mean of pos[k+lag] - pos[k]
            omega += cmath.phase((zr[lag:] * np.conj(zr[:-lag])).sum()) / spacing
    return omega


#: :func:`track_gain` keeps the longest window whose leave-one-out error is within this
#: many standard errors of the best one's.  At 1, a still channel at 0 dB with few pilots
#: to score on (a 1024-symbol payload: 60) got a window of 32-64 pilot periods in ~1 burst
#: in 200, whose gain then followed the noise (the payload 1.7-2.7 dB below nominal); at
#: 1.5 none in 400, while the fading rows' median |est - act| moves by 0.02 dB on average
#: (docs/frame-format.md section 6 step 4).
WINDOW_SE = 1.5
#: Most observations :func:`track_gain` scores a window on (an even subsample beyond),
#: and the largest residual-frequency refinement over the burst (radians) it applies as a
#: turn of each window's gain (second-order error below (RAMP_LINEAR / 2)^2 / 6) instead
#: of a refit.
MAX_SCORED = 128
RAMP_LINEAR = 0.3
#: Largest phase step (rad) between two observations across which :func:`track_gain`
#: interpolates the gain along the chord rather than the arc.
ARC_CHORD = 0.05


#: Level steps (:func:`level_steps`; docs/frame-format.md section 6 step 4): the gains of the
#: known symbols in two adjacent windows differ by STEP_SIGMAS2 times the noise of that
#: difference (each window's residuals about its own gain, pooled with those of the windows
#: beyond them), by STEP_RATIO in amplitude (3 dB), and by no more than STEP_PHASE rad in
#: phase beyond three standard deviations of its noise (a fade turns the phase too); and each
#: side is level: its window's gain and the next one out differ by no more than
#: STEP_BESIDE_NOISE times the noise of that difference plus 1 / STEP_SMOOTH of the jump (a
#: fade keeps changing).  On bench_channels.py's rows (its defaults; seeds 1-6 of the Rayleigh
#: and Rician rows; seeds 1-3 of the fading, selective, CFO and clock rows at 0, 5 and 10 dB)
#: no AWGN, slow-fading, CFO, clock, PA or ADC burst keeps a step; on fast fading (fD Ts
#: 1e-3) 1-3 bursts of 20 per row do (the defaults), which moves those rows by up to 0.1 dB.  (A threshold
#: of 12 and a looser level test found 6-100 per row there.)
STEP_SIGMAS2 = 36.0
STEP_RATIO = 1.41
STEP_PHASE = 0.5
STEP_BESIDE_NOISE = 4.0
STEP_SMOOTH = 64.0
#: ... each of the two windows next to it holding at least STEP_MIN_KNOWN known symbols and
#: STEP_MIN_WEIGHT of their power (a window of 4 Gaussian probes: 4 on average).
STEP_MIN_KNOWN = 3
STEP_MIN_WEIGHT = 1.0
#: :func:`track_gain` follows a step only where the level on either side, over all of its
#: known symbols, is above STEP_FLOOR times the noise (-13 dB): a signal that drops 20 dB
#: below the noise is lost there (``RxFrame.tracked``), not a level to follow (a window of
#: probes cannot tell -20 dB from -10 dB; a whole level's known symbols can).
STEP_FLOOR = 10 ** -1.3
#: :func:`track_gain` looks for steps with windows of ``step_window`` and STEP_LONG times that
#: (the gains of a few probes are too noisy to show a -20 dB step at 10 dB).
STEP_LONG = 4


def level_steps(zk: np.ndarray, pos: np.ndarray, window: int, weight: Optional[np.ndarray] = None,
                power: Optional[np.ndarray] = None) -> np.ndarray:
    """Where the channel's gain jumps between two known symbols: a receiver's AGC step, a
    transmitter's keying ramp, the level 6-20 dB apart on either side.  For each pair of
    consecutive known symbols, the least-squares gains of the known symbols within ``window``
    symbols before (L) and after (R) it, and of the windows beyond those (LL, RR), are
    compared: a step where g_L and g_R differ far beyond their noise and by STEP_RATIO in
    amplitude but not in phase, while g_LL ~ g_L and g_R ~ g_RR (STEP_* constants), and the
    pair's statistic is the largest within ``window`` symbols (one step is found once).  It
    is then placed where two gains fit the known symbols of its two windows best, with the
    likelihood of the received power of every symbol there (``power``: exponential with mean
    |g_L|^2 + N0 before the step, |g_R|^2 + N0 after) added: between Gaussian probes of small
    weight at 10 dB the known symbols alone put it one or two pilots off.

    Args:
        zk: complex (n_k,), received known symbols times conj(their value).
        pos: int (n_k,), their positions (increasing).
        window: symbols per window.
        weight: float (n_k,), |known symbol|^2 (None: unit-modulus).
        power: float (>= pos[-1] + 1,), |received symbol|^2 at every position (unit-energy
            symbols), or None.
    Returns:
        int64 (n_steps,), increasing: the index of the first known symbol after each step.
    """
    n = len(pos)
    if n < 4 * STEP_MIN_KNOWN or window < 1:
        return np.zeros(0, np.int64)
    pos = np.asarray(pos, np.int64)
    zk = np.asarray(zk, np.complex128)
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    q = (zk.real ** 2 + zk.imag ** 2) / np.maximum(w, 1e-30)  # |z|^2 of each: its residual about a gain
    cz, cw, cq = (np.concatenate([[0], np.cumsum(v)]) for v in (zk, w, q))
    b = np.arange(1, n)  # the pair (b - 1, b); where the known symbols are dense, every
    b = b[(pos[b] - pos[b - 1] > 1) | (b % max(1, window // 16) == 0)]  # window / 16-th (placed below)
    lo = np.searchsorted(pos, pos[b - 1] - window, "right")
    hi = np.searchsorted(pos, pos[b] + window, "left")

    def fit(a, e):
        sw = cw[e] - cw[a]
        ok = (e - a >= STEP_MIN_KNOWN) & (sw >= STEP_MIN_WEIGHT)
        sw = np.where(ok, sw, 1.0)
        sz = cz[e] - cz[a]
        res = np.maximum(cq[e] - cq[a] - (sz.real ** 2 + sz.imag ** 2) / sw, 0.0)
        return np.where(ok, sz / sw, 0.0), sw, ok, np.where(ok, res, 0.0), np.where(ok, e - a - 1, 0)

    gl, wl, okl, rl, dl = fit(lo, b)
    gr, wr, okr, rr, dr = fit(b, hi)
    al, ar = np.abs(gl), np.abs(gr)
    jump = np.abs(gr - gl) ** 2
    # a first sieve on the two windows' own noise (a quarter of the threshold), then the rest
    # on the few pairs left
    with np.errstate(divide="ignore", invalid="ignore"):
        rough = jump * np.maximum(dl + dr, 1) / ((rl + rr) * (1.0 / wl + 1.0 / wr))
    sub = np.flatnonzero(okl & okr & ((ar > STEP_RATIO * al) | (al > STEP_RATIO * ar))
                         & (np.nan_to_num(rough, nan=0.0, posinf=np.inf) > 0.25 * STEP_SIGMAS2))
    if not len(sub):
        return np.zeros(0, np.int64)
    b, lo, hi = b[sub], lo[sub], hi[sub]
    gl, wl, rl, dl, gr, wr, rr, dr = gl[sub], wl[sub], rl[sub], dl[sub], gr[sub], wr[sub], rr[sub], dr[sub]
    al, ar, jump = al[sub], ar[sub], jump[sub]
    llo = np.searchsorted(pos, pos[b - 1] - 2 * window, "right")
    hhi = np.searchsorted(pos, pos[b] + 2 * window, "left")
    gll, wll, okll, rll, dll = fit(llo, lo)
    grr, wrr, okrr, rrr, drr = fit(hi, hhi)
    noise = (rl + rr + rll + rrr) / np.maximum(dl + dr + dll + drr, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.nan_to_num(jump / (noise * (1.0 / wl + 1.0 / wr)), nan=0.0, posinf=0.0)
        # the changes beside it, less what noise would make of them (up to STEP_BESIDE_NOISE
        # times its variance: the gain of a window of 4 probes is noisy)
        left = np.abs(gl - gll) ** 2 - STEP_BESIDE_NOISE * noise * (1.0 / wl + 1.0 / wll)
        right = np.abs(grr - gr) ** 2 - STEP_BESIDE_NOISE * noise * (1.0 / wr + 1.0 / wrr)
        # a level step keeps the phase, to within STEP_PHASE and three standard deviations of
        # the phase difference's noise (a fade turns it too)
        sd_phase = np.sqrt(0.5 * noise * (1.0 / np.maximum(wl * al * al, 1e-30)
                                          + 1.0 / np.maximum(wr * ar * ar, 1e-30)))
    beside = jump / STEP_SMOOTH  # (a change beside it that noise does not explain, far below the jump)
    flat = (okll | okrr) & ~(okll & (left > beside)) & ~(okrr & (right > beside))
    turn = np.abs(np.angle(gr * np.conj(gl)))
    hit = np.flatnonzero((stat > STEP_SIGMAS2) & flat & (turn <= STEP_PHASE + 3.0 * sd_phase))
    steps = []
    for i in hit:  # the largest statistic within a window either side
        near = (pos[b] > pos[b[i]] - window) & (pos[b] < pos[b[i]] + window)
        if stat[i] < stat[near].max():
            continue
        # placed where two gains fit the known symbols of its two windows best (the pair
        # with the largest statistic may have a known symbol of the other level in a window:
        # a probe's weight is small beside the header's)
        j = np.arange(lo[i] + 1, hi[i])
        wa, wb = cw[j] - cw[lo[i]], cw[hi[i]] - cw[j]
        za, zb = cz[j] - cz[lo[i]], cz[hi[i]] - cz[j]
        ok = (wa > 0) & (wb > 0)
        fit_j = np.where(ok, (za.real ** 2 + za.imag ** 2) / np.where(ok, wa, 1.0)
                         + (zb.real ** 2 + zb.imag ** 2) / np.where(ok, wb, 1.0), -np.inf) / max(noise[i], 1e-30)
        if power is not None and ok.any():
            # each place c (the first symbol of the new level) from the first known symbol
            # after the region's first to its last: the known symbols' fit of the split there
            # and the power of the symbols between
            c = np.arange(pos[lo[i]] + 1, pos[hi[i] - 1] + 1)
            ma, mb = abs(gl[i]) ** 2 + noise[i], abs(gr[i]) ** 2 + noise[i]
            p = np.asarray(power[pos[lo[i]]: pos[hi[i] - 1]], np.float64)
            llr = np.log(mb / ma) - p * (1.0 / ma - 1.0 / mb)  # log p_A - log p_B of each symbol
            ll = np.cumsum(llr)[c - pos[lo[i]] - 1] + fit_j[np.searchsorted(pos, c, "left") - lo[i] - 1]
            best = int(np.searchsorted(pos, c[int(np.argmax(ll))], "left"))
        else:
            best = int(j[int(np.argmax(fit_j))]) if ok.any() else int(b[i])
        if not steps or best > steps[-1]:
            steps.append(best)
    return np.asarray(steps, np.int64)


class GainTrack(NamedTuple):
    """A complex channel gain tracked along a burst (:func:`track_gain`).

    Attributes:
        g: complex128 (n,), the gain at every symbol position (the ramp included).
        g_loo: complex128 (n_k,), the gain at each known symbol predicted *without it*
            (leave-one-out, the ramp included).
        wsum: float64 (n_k,), the weight (sum of |known symbol|^2) of each one's
            window, itself included.
        span: the window length chosen, symbols.
        score: float, the leave-one-out error power (per unit symbol energy) that chose it.
        omega: the residual frequency removed, rad/symbol (the one given, refined).
        steps: int64 (n_steps,), the symbol positions where a level step (:func:`level_steps`)
            was placed: the first symbol of each new level.
        step_var: float64 (n,) or None (no step): each symbol's share of the gain error the
            step's uncertain place leaves, |g_A - g_B|^2 / |g|^2 times the probability that the
            symbol lies on the other side (a variance at unit symbol power, after division by g).
    """

    g: np.ndarray
    g_loo: np.ndarray
    wsum: np.ndarray
    span: int
    score: float
    omega: float = 0.0
    steps: np.ndarray = np.zeros(0, np.int64)
    step_var: Optional[np.ndarray] = None


def track_gain(zk: np.ndarray, pos: np.ndarray, n: int, omega: float, spans: Sequence[int],
               score: Optional[np.ndarray] = None, weight: Optional[np.ndarray] = None,
               step_window: int = 0, power: Optional[np.ndarray] = None) -> GainTrack:
    """Complex channel gain (amplitude and phase) along a burst from its known symbols,
    the smoothing length chosen by leave-one-out cross-validation.

    After removing the ramp ``omega``, the gain at each observation is the
    least-squares fit over the observations within +-span / 2 symbols of it
    (sum of zk over sum of |s|^2: a box window, truncated at the ends), interpolated
    between the observations linearly in amplitude and phase.  For each candidate span the fit is also
    formed without the observation itself; the span whose leave-one-out prediction
    error is smallest (over the observations ``score``) is kept: a long window where
    the channel is still (noise averages out), a short one where it moves (fading, a
    drifting carrier), with no constant to set by hand.

    Args:
        zk: complex (n_k,), received known symbols times conj(their value).
        pos: int (n_k,), their symbol positions (increasing, any spacing).
        n: number of symbol positions to return the gain for (0..n-1).
        omega: residual frequency, rad/symbol (:func:`residual_frequency`).
        spans: candidate window lengths, symbols.
        score: bool (n_k,), the observations whose prediction error chooses the span
            (e.g. the payload's pilots); None or too few (< 8): all of them.
        weight: float (n_k,), |known symbol|^2 (None: unit-modulus symbols).
        step_window: > 0: look for level steps (:func:`level_steps`, windows of this many
            symbols); no window then reaches across one, and the gain between the two known
            symbols around it is held on either side of the step's place.
        power: float (n,), |received symbol|^2 at every position (unit-energy symbols), to
            place a step between its two known symbols (None: midway).
    Returns:
        :class:`GainTrack`.
    """
    pos = np.asarray(pos)
    w = np.ones(len(pos)) if weight is None else np.asarray(weight, np.float64)
    sel = np.ones(len(pos), bool) if score is None or np.count_nonzero(score) < 8 else np.asarray(score, bool)
    zk = np.asarray(zk, np.complex128)
    breaks = np.zeros(0, np.int64)
    if step_window:
        zs = zk * np.exp(-1j * omega * pos) if omega else zk
        breaks = level_steps(zs, pos, step_window, w, power)
        # and with windows STEP_LONG times longer (a few probes' gains are too noisy to show
        # a step at 10 dB), where the short ones found none near
        for b in level_steps(zs, pos, STEP_LONG * step_window, w, power):
            if not len(breaks) or np.abs(pos[breaks] - pos[b]).min() >= step_window:
                breaks = np.sort(np.append(breaks, b))
    plan = _track_plan(pos, w, sel, tuple(int(v) for v in spans), breaks)
    fit = _fit_windows(plan, zk, omega)
    if len(breaks):
        low = _lost_levels(plan, fit, breaks, STEP_LONG * step_window)
        if low.any():  # the steps into (or out of) a level below the noise are not followed
            drop = np.zeros(len(breaks), bool)
            drop |= low[:-1]  # the step at the end of a low level
            drop |= low[1:]   # and at its start
            breaks = breaks[~drop]
            plan = _track_plan(pos, w, sel, tuple(int(v) for v in spans), breaks)
            fit = _fit_windows(plan, zk, omega)
    # a still channel: the ramp refined by all the observations (docs/frame-format.md
    # section 6 step 4).  ``omega`` comes from the pilots alone, and a window cut off by
    # the burst's end turns its error into a phase error growing towards that end (0.05
    # dB at 20 dB on a 1024-symbol burst).  Measured with the longest window (a leftover
    # ramp may be what made a shorter one score better), kept where the longest window
    # then wins the choice
    longest = len(plan.spans) - 1 if plan.usable.size else -1
    k, _, zr, _, loo = fit if fit[0] == longest else _fit_windows(plan, zk, omega, longest)
    d_omega = _ramp_correction(plan, k, zr, loo)
    # where the longest window won with the ramp left in, it wins without it too, and a
    # small ramp (d (p - c) well below a radian) just turns each window's gain by d (p - c)
    turn = d_omega if fit[0] == longest and abs(d_omega) * float(pos[-1] - pos[0]) < RAMP_LINEAR else 0.0
    if d_omega and not turn:
        refit = _fit_windows(plan, zk, omega + d_omega, longest if fit[0] == longest else None)
        if refit[0] == longest:
            omega, fit = omega + d_omega, refit
    k, err, zr, s, loo = fit
    span, _, _, ws, _, inv_ws = plan.final(k)
    if turn:
        s = s * np.exp(1j * turn * plan.offsets(k, own=True))
        loo = loo * np.exp(1j * turn * plan.offsets(k))
    # the ramp put back at the observations, the gain interpolated between them in
    # amplitude and (unwrapped) phase: where a fade's null turns the phase by nearly
    # half a turn from one observation to the next, the chord between the two gains
    # would pass by zero -- a null deeper than the channel's, which the division by the
    # gain would turn into errors tens of dB above the noise estimated for them
    avg = s * inv_ws
    if omega:
        ramp = np.exp(1j * omega * pos)
        avg, loo = avg * ramp, loo * ramp
    g = _interpolate_gain(avg, pos, n)
    if not len(breaks):
        return GainTrack(g=g, g_loo=loo, wsum=ws, span=int(span), score=err, omega=float(omega + turn))
    steps, step_var = _place_steps(g, avg, loo, zk, w, pos, breaks, step_window, power)
    return GainTrack(g=g, g_loo=loo, wsum=ws, span=int(span), score=err, omega=float(omega + turn),
                     steps=steps, step_var=step_var)


def _lost_levels(plan: "_TrackPlan", fit, breaks: np.ndarray, window: int) -> np.ndarray:
    """bool (len(breaks) + 1,): the levels between the steps whose power, over all their known
    symbols, is below STEP_FLOOR times the noise (the known symbols' leave-one-out errors per
    unit weight).  Each known symbol's gain there is that of the longest candidate window up to
    ``window`` symbols, less its noise's share: the window chosen on the payload's pilots may be
    far too long for the other level (a phase that turns along a weak header region averages
    out: a burst found from its resync preamble), a shorter one too noisy to tell a level 20 dB
    below the noise from one 10 dB below over a few hundred probes."""
    _, _, zr, _, loo = fit
    w = plan.w
    e = zr - loo * w
    noise = float((e.real ** 2 + e.imag ** 2).sum()) / max(float(w.sum()), 1e-30)
    k = int(np.searchsorted(plan.spans, window, "right")) - 1 if len(plan.spans) else -1
    _, hi, lo, ws, _, inv_ws = plan.final(max(k, 0) if len(plan.spans) else -1)
    c = np.concatenate([[0], np.cumsum(zr)])
    g = (c[hi] - c[lo]) * inv_ws if hi is not None else np.full(len(zr), c[-1]) * inv_ws
    lvl = w * (g.real ** 2 + g.imag ** 2 - noise * inv_ws)
    edges = np.concatenate([[0], breaks, [len(w)]])
    per = np.add.reduceat(lvl, edges[:-1]) / np.maximum(np.add.reduceat(w, edges[:-1]), 1e-30)
    return per < STEP_FLOOR * noise


def _place_steps(g, avg, loo, zk, w, pos, breaks, window, power):
    """The gain ``g`` (changed in place) between the two known symbols around each level step
    held at each one's value on its side of the step, the step placed by the received power
    there (``power``: exponential with mean |g_A|^2 + N0 before, |g_B|^2 + N0 after, each
    side's noise N0 from its known symbols' leave-one-out errors within ``window``); each
    symbol's probability of lying on the other side (over the places' posterior) times the
    relative gain error it would then have.  Returns (steps int64, step_var float64 (n,))."""
    n = len(g)
    var = np.zeros(n)
    steps = []
    e = zk - loo * w  # (noise times conj(s): |e|^2 / |s|^2 is the noise's power there)
    for b in breaks:
        pa, pb = int(pos[b - 1]), int(pos[b])
        ga, gb = avg[b - 1], avg[b]
        t = np.arange(pa + 1, min(pb, n))
        if not len(t):
            steps.append(pb)
            continue
        if power is not None:
            side_a = (pos > pa - window) & (pos <= pa)
            side_b = (pos >= pb) & (pos < pb + window)
            n_a = float((e[side_a].real ** 2 + e[side_a].imag ** 2).sum() / max(w[side_a].sum(), 1e-30))
            n_b = float((e[side_b].real ** 2 + e[side_b].imag ** 2).sum() / max(w[side_b].sum(), 1e-30))
            ma, mb = abs(ga) ** 2 + n_a, abs(gb) ** 2 + n_b
            p = np.asarray(power[t], np.float64)
            llr = (np.log(mb / ma) - p * (1.0 / ma - 1.0 / mb)) if ma > 0 and mb > 0 else np.zeros(len(t))
        else:
            llr = np.zeros(len(t))
        # the step before t[j] for j = 0 .. len(t) (len(t): after the gap, at pb)
        ll = np.concatenate([[0.0], np.cumsum(llr)])
        post = np.exp(ll - ll.max())
        post /= post.sum()
        p_b = np.cumsum(post)[:-1]  # t[j] on side B: the step at or before it
        on_b = p_b > 0.5
        g[t] = np.where(on_b, gb, ga)
        wrong = np.where(on_b, 1.0 - p_b, p_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            var[t] = np.nan_to_num(wrong * abs(gb - ga) ** 2 / np.abs(g[t]) ** 2, nan=0.0, posinf=0.0)
        steps.append(int(pa + 1 + np.argmax(post)))
    return np.asarray(steps, np.int64), var


def _interpolate_gain(avg: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """The gain at symbols 0..n-1 from its values ``avg`` at the observations ``pos``:
    linear in amplitude and (unwrapped) phase.  Where consecutive observations differ by
    less than ARC_CHORD rad the chord is used instead (for close amplitudes within about
    ARC_CHORD^2 / 8 of the arc: -70 dB), an exponential per symbol only across wider
    steps (a fade's null).  complex128 (n,)."""
    t = np.arange(n)
    g = np.empty(n, np.complex128)
    g.real = np.interp(t, pos, avg.real)
    g.imag = np.interp(t, pos, avg.imag)
    if len(pos) < 2:
        return g
    step = avg[1:] * np.conj(avg[:-1])
    wide = (step.real <= 0) | (np.abs(step.imag) > ARC_CHORD * step.real)  # |phase step| > ~ARC_CHORD
    if wide.any():
        seg = np.clip(np.searchsorted(pos, t, "right") - 1, 0, len(pos) - 2)
        arc = np.flatnonzero(wide[seg] & (t > pos[0]) & (t < pos[-1]))
        ph = unwrap(np.angle(avg))
        g[arc] = np.interp(arc, pos, np.abs(avg)) * np.exp(1j * np.interp(arc, pos, ph))
    return g


def _fit_windows(plan: "_TrackPlan", zk: np.ndarray, omega: float, k: Optional[int] = None):
    """:func:`track_gain`'s window choice on ``zk`` with the ramp ``omega`` removed, or
    candidate ``k``: (k, its score, the derotated observations zr, each one's window sum
    s, each one's leave-one-out gain; the last three without the ramp)."""
    zr = zk * np.exp(-1j * omega * plan.pos) if omega else zk
    c = np.zeros(len(zr) + 1, np.complex128)
    np.cumsum(zr, out=c[1:])
    if k is not None:  # its score alone
        z_sel = zr[plan.idx]
        d = z_sel - (c[plan.hi[k]] - c[plan.lo[k]] - z_sel) * plan.w_ratio[k]
        err = float(((d.real ** 2 + d.imag ** 2) * plan.okf[k]).sum() / plan.den[k]) if k >= 0 else float("inf")
    elif plan.usable.size:
        # every candidate window at once, scored on the selected observations only
        z_sel = zr[plan.idx]
        d = z_sel - (c[plan.hi] - c[plan.lo] - z_sel) * plan.w_ratio
        errs = np.einsum("ij,ij->i", d.real ** 2 + d.imag ** 2, plan.okf) / plan.den
        # the longest window within WINDOW_SE standard errors of the best (noise makes the
        # scores of nearby windows differ by chance; the longer one is the safer bet)
        err = float(errs[plan.usable].min())
        near = plan.usable[errs[plan.usable] * plan.se_factor[plan.usable] <= err]
        k = int(near[-1])
    else:  # too few observations for a window: one gain for the whole burst
        err, k = float("inf"), -1
    _, hi, lo, _, inv_loo, inv_ws = plan.final(k)
    s = c[hi] - c[lo] if hi is not None else np.full(len(zr), c[-1])
    loo = np.where(inv_loo > 0, (s - zr) * inv_loo, s * inv_ws)
    return k, err, zr, s, loo


def _ramp_correction(plan: "_TrackPlan", k: int, zr: np.ndarray, loo: np.ndarray) -> float:
    """Residual frequency (rad/symbol) left in the derotated observations ``zr``:
    a leftover ramp d e^(j d p) tilts each observation's phase against its leave-one-out
    window gain by d (p - c), c that window's weighted centre (zero inside a full
    symmetric window, up to half a window at the burst's ends).  Weighted least squares
    on Im(zr conj(loo)) ~ d (p - c) w |g|^2; 0.0 where no observation is off-centre."""
    x = plan.offsets(k)
    den = float((plan.w * (loo.real ** 2 + loo.imag ** 2) * x * x).sum())
    if not den > 0:
        return 0.0
    d = float((x * (zr.imag * loo.real - zr.real * loo.imag)).sum()) / den
    return d if np.isfinite(d) else 0.0


class _TrackPlan:
    """What :func:`track_gain` computes from the positions, weights and candidate windows
    alone (the same for every burst of one size): window index bounds, weights and masks."""

    def __init__(self, pos: np.ndarray, w: np.ndarray, sel: np.ndarray, spans: Tuple[int, ...],
                 breaks: np.ndarray = np.zeros(0, np.int64)):
        self.pos, self.w = pos, w
        # level steps (:func:`level_steps`): each observation's segment, [seg_lo, seg_hi)
        if len(breaks):
            edges = np.concatenate([[0], breaks, [len(pos)]]).astype(np.int64)
            seg = np.searchsorted(breaks, np.arange(len(pos)), "right")
            self.seg_lo, self.seg_hi = edges[seg], edges[seg + 1]
        else:
            self.seg_lo = self.seg_hi = None
        self.cw = np.zeros(len(w) + 1)
        np.cumsum(w, out=self.cw[1:])
        self.cwp = np.zeros(len(w) + 1)
        np.cumsum(w * pos, out=self.cwp[1:])
        idx = np.flatnonzero(sel)
        self.idx = idx[:: max(1, len(idx) // MAX_SCORED)]  # the score needs no more
        # windows longer than twice the extent all cover everything: the first is enough
        sp = np.sort(np.asarray(spans, np.int64))
        self.spans = sp[: int(np.searchsorted(sp, 2 * (pos[-1] - pos[0]) + 2)) + 1]
        p_sel, w_sel = pos[self.idx], w[self.idx]
        self.hi = np.searchsorted(pos, p_sel[None, :] + self.spans[:, None] // 2, "right")
        self.lo = np.searchsorted(pos, p_sel[None, :] - self.spans[:, None] // 2, "left")
        if self.seg_hi is not None:  # no window across a step
            self.hi = np.minimum(self.hi, self.seg_hi[self.idx][None, :])
            self.lo = np.maximum(self.lo, self.seg_lo[self.idx][None, :])
        ws = self.cw[self.hi] - self.cw[self.lo]
        w_loo = ws - w_sel
        ok = w_loo > 1e-3 * np.maximum(ws, 1e-30)
        self.w_ratio = np.where(ok, w_sel / np.where(ok, w_loo, 1.0), 0.0)
        self.okf = ok.astype(np.float64)  # (n_spans, n_sel)
        self.den = np.maximum(self.okf @ w_sel, 1e-30)
        n_ok = ok.sum(1)
        self.usable = np.flatnonzero(n_ok > 0)
        self.se_factor = 1.0 - WINDOW_SE / np.sqrt(np.maximum(n_ok, 1))
        self._final = {}
        self._offsets = {}

    def final(self, k: int):
        """(span, hi, lo, window weights, 1 / leave-one-out weight (0 where none),
        1 / window weight) of candidate ``k`` over every observation (k < 0: one window
        over everything)."""
        if k not in self._final:
            if k < 0 and self.seg_hi is None:
                span, hi, lo = 0, None, None
                ws = np.full(len(self.w), max(float(self.cw[-1]), 1e-30))
            elif k < 0:  # one window per level
                span, hi, lo = 0, self.seg_hi, self.seg_lo
                ws = self.cw[hi] - self.cw[lo]
            else:
                span = int(self.spans[k])
                hi = np.searchsorted(self.pos, self.pos + span // 2, "right")
                lo = np.searchsorted(self.pos, self.pos - span // 2, "left")
                if self.seg_hi is not None:
                    hi, lo = np.minimum(hi, self.seg_hi), np.maximum(lo, self.seg_lo)
                ws = self.cw[hi] - self.cw[lo]
            w_loo = ws - self.w
            valid = w_loo > 1e-3 * np.maximum(ws, 1e-30)
            inv_loo = np.where(valid, 1.0 / np.where(valid, w_loo, 1.0), 0.0)
            self._final[k] = (span, hi, lo, ws, inv_loo, 1.0 / np.maximum(ws, 1e-30))
        return self._final[k]

    def offsets(self, k: int, own: bool = False) -> np.ndarray:
        """Each observation's position minus the weighted centre of its window of
        candidate ``k`` without it (0 where that window is empty), or with it (``own``).
        float64 (n_k,)."""
        if (k, own) not in self._offsets:
            _, hi, lo, _, inv_loo, inv_ws = self.final(k)
            wp = self.cwp[hi] - self.cwp[lo] if hi is not None else np.full(len(self.w), self.cwp[-1])
            self._offsets[k, own] = self.pos - wp * inv_ws if own else \
                np.where(inv_loo > 0, self.pos - (wp - self.w * self.pos) * inv_loo, 0.0)
        return self._offsets[k, own]


_PLANS: "dict" = {}
_PLANS_LOCK = threading.Lock()  # receivers may run in several GNU Radio threads


def _track_plan(pos: np.ndarray, w: np.ndarray, sel: np.ndarray, spans: Tuple[int, ...],
                breaks: np.ndarray = np.zeros(0, np.int64)) -> _TrackPlan:
    """The cached :class:`_TrackPlan` of these inputs (a burst size's layout repeats)."""
    key = (len(pos), pos.tobytes(), w.tobytes(), sel.tobytes(), spans, breaks.tobytes())
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
    if plan is None:
        plan = _TrackPlan(pos.copy(), w.copy(), sel, spans, breaks)
        with _PLANS_LOCK:
            while len(_PLANS) >= 32:
                _PLANS.pop(next(iter(_PLANS)))
            _PLANS[key] = plan
    return plan
