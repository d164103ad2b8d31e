"""Rate-1/3, constraint-length-7 convolutional code (LTE generators 133, 171, 165
octal), zero-tailed, with a batched soft-decision Viterbi decoder in numpy.

Soft inputs follow the BPSK map bit 0 -> +1, bit 1 -> -1: a positive value
means "probably 0"; any positive scaling of the inputs gives the same decision.
"""

from __future__ import annotations

import numpy as np

K = 7
GENERATORS = (0o133, 0o171, 0o165)
RATE_INV = len(GENERATORS)
TAIL = K - 1
N_STATES = 1 << TAIL
_UNREACHABLE = -1e30
#: Trellis steps of margin around each window of the windowed decoder (5 K: no FER
#: change measured at -1.5 dB against the full trellis).
OVERLAP = 5 * K
#: At most this many windows per codeword; windows are added while rows <= TARGET_ROWS.
MAX_PARTS, TARGET_ROWS = 8, 16


def _gen_taps(g: int) -> np.ndarray:
    """Generator -> taps on u[t], u[t-1], ..., u[t-6] (MSB = current input)."""
    return np.array([(g >> (TAIL - i)) & 1 for i in range(K)], np.int64)


def coded_length(n_bits: int) -> int:
    """Coded bits for ``n_bits`` information bits (tail included)."""
    return (n_bits + TAIL) * RATE_INV


def _xor_filter(x: np.ndarray, delays) -> np.ndarray:
    """GF(2) convolution y[t] = xor_{i in delays} x[t - i], truncated to len(x).  uint8."""
    y = np.zeros(len(x), np.uint8)
    for i in delays:
        y[i:] ^= x[: len(x) - i]
    return y


def encode(bits: np.ndarray) -> np.ndarray:
    """Encode information bits (uint8/bool (n,)) -> coded bits uint8 (3 (n + 6),),
    ordered (g0, g1, g2) per trellis step."""
    u = np.concatenate([np.asarray(bits, np.uint8).ravel() & 1, np.zeros(TAIL, np.uint8)])
    out = np.empty((len(u), RATE_INV), np.uint8)
    for j, delays in enumerate(_DELAYS):
        out[:, j] = _xor_filter(u, delays)
    return out.ravel()


def _poly_mul(a: int, b: int) -> int:
    """Product of GF(2) polynomials held as ints (bit i = coefficient of D^i)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a, b = a << 1, b >> 1
    return out


def _poly_divmod(a: int, b: int):
    """Quotient and remainder of GF(2) polynomials held as ints."""
    q = 0
    while a and a.bit_length() >= b.bit_length():
        shift = a.bit_length() - b.bit_length()
        q ^= 1 << shift
        a ^= b << shift
    return q, a


def _inverse():
    """Feedforward inverse of the first two generators: polynomials (x0, x1) with
    x0 g0 + x1 g1 = 1 over GF(2)[D] (extended Euclid), so u = x0 c0 + x1 c1."""
    g0, g1 = (int("".join(map(str, _gen_taps(g)[::-1])), 2) for g in GENERATORS[:2])
    r0, r1, s0, s1, t0, t1 = g0, g1, 1, 0, 0, 1
    while r1:
        q, r = _poly_divmod(r0, r1)
        r0, r1 = r1, r
        s0, s1 = s1, s0 ^ _poly_mul(q, s1)
        t0, t1 = t1, t0 ^ _poly_mul(q, t1)
    if r0 != 1:
        raise RuntimeError("generators are catastrophic (no feedforward inverse)")
    return [[i for i in range(p.bit_length()) if (p >> i) & 1] for p in (s0, t0)]


_DELAYS = [list(np.flatnonzero(_gen_taps(g))) for g in GENERATORS]
_INV = _inverse()


def decode_hard(soft: np.ndarray):
    """Exact shortcut of :func:`viterbi`: when the hard decisions of ``soft`` form a
    codeword, that codeword is the max-correlation one, so its information bits are
    the Viterbi output.

    Args:
        soft: float (3 (n + 6),) soft values (positive = bit 0).
    Returns:
        uint8 (n,) information bits, or None when the hard decisions are not a codeword.
    """
    hard = (np.asarray(soft) < 0).astype(np.uint8).reshape(-1, RATE_INV)
    steps = len(hard)
    u = _xor_filter(hard[:, 0], _INV[0]) ^ _xor_filter(hard[:, 1], _INV[1])
    if u[steps - TAIL:].any() or not np.array_equal(encode(u[: steps - TAIL]), hard.ravel()):
        return None
    return u[: steps - TAIL]


def _trellis():
    """Branch outputs of every (branch b, next state s').

    State s = u[t-1] u[t-2] ... u[t-6] (u[t-1] the MSB); next state
    s' = (u[t] << 5) | (s >> 1); the predecessors of s' are ((s' & 31) << 1) | b.
    Returns (combo int64 (2 * 64,): the 3 output bits of branch b * 64 + s' as a
    number 0..7, signs float32 (3, 8): +-1 of each output bit of each number).
    """
    sp = np.arange(N_STATES)
    prev = np.concatenate([((sp & 31) << 1) | b for b in (0, 1)])
    reg = np.tile(sp >> 5, 2) << TAIL | prev
    combo = np.array([sum((bin(int(r) & g).count("1") & 1) << j for j, g in enumerate(GENERATORS)) for r in reg])
    signs = np.array([[1.0 - 2.0 * ((c >> j) & 1) for c in range(8)] for j in range(RATE_INV)], np.float32)
    return combo, signs


_COMBO, _SIGNS8 = _trellis()


def _segments(steps: int, parts: int):
    """Split ``steps`` trellis steps into ``parts`` windows with ``OVERLAP`` steps of
    warm-up/trace-back margin.  Returns (starts int (parts,), window length, first output
    step int (parts,), outputs per window)."""
    out_len = -(-steps // parts)
    win = min(steps, out_len + 2 * OVERLAP)
    first = np.arange(parts) * out_len
    return np.clip(first - OVERLAP, 0, steps - win), win, first, out_len


def viterbi(soft: np.ndarray) -> np.ndarray:
    """Maximum-likelihood (max-correlation) decoding of a batch of zero-tailed codewords.

    Few codewords are cut into overlapping windows decoded side by side (the window
    at the start begins in state 0, the one at the end finishes in state 0, inner
    windows start from all states equal and trace back from the best one), so the
    sequential loop is shorter; ``OVERLAP`` steps of margin keep the decisions
    those of the full trellis in all but negligible cases.

    Args:
        soft: float (B, 3 (n + 6)) or (3 (n + 6),) soft values (positive = bit 0).
    Returns:
        uint8 (B, n) (or (n,)) decoded information bits.
    """
    soft = np.asarray(soft, np.float32)
    single = soft.ndim == 1
    soft = np.atleast_2d(soft)
    nb, nc = soft.shape
    if nc % RATE_INV or nc // RATE_INV <= TAIL:
        raise ValueError(f"soft input length {nc} is not a coded length of this code")
    steps = nc // RATE_INV
    parts = max(1, min(MAX_PARTS, TARGET_ROWS // nb, steps // OVERLAP))
    starts, win, first, out_len = _segments(steps, parts)
    rows = nb * parts
    # soft values of every window, step-major: (win, rows, 3)
    seg = soft.reshape(nb, steps, RATE_INV)[:, starts[:, None] + np.arange(win)]
    seg = seg.transpose(2, 0, 1, 3).reshape(win, rows, RATE_INV)
    # metric of the 8 output triples, then of each branch (win, rows, b, u, s' & 31);
    # branch b comes from state ((s' & 31) << 1) | b
    bm8 = sum(seg[..., j, None] * _SIGNS8[j] for j in range(RATE_INV))
    bm = bm8[..., _COMBO].reshape(win, rows, 2, 2, N_STATES // 2)
    pm = np.zeros((rows, N_STATES), np.float32)
    pm.reshape(nb, parts, N_STATES)[:, 0, 1:] = _UNREACHABLE  # the first window starts in state 0
    pm_in = pm.reshape(rows, N_STATES // 2, 2).transpose(0, 2, 1)[:, :, None, :]
    pm_out = pm.reshape(rows, 2, N_STATES // 2)
    # add-compare-select, two ufunc calls per step; the decisions are taken afterwards
    # from the stored candidates in one go
    cand = np.empty((win, rows, 2, 2, N_STATES // 2), np.float32)
    for t in range(win):
        np.add(pm_in, bm[t], out=cand[t])
        np.maximum(cand[t, :, 0], cand[t, :, 1], out=pm_out)
    dec = cand[:, :, 1] > cand[:, :, 0]
    # trace back in Python over 64-bit decision words (one per step and row)
    words = np.packbits(dec.reshape(win, rows, N_STATES), axis=-1, bitorder="little").view("<u8")[..., 0]
    words = words.T.tolist()
    ends = pm.argmax(axis=1).reshape(nb, parts)
    ends[:, -1] = 0  # zero tail
    bits = np.empty((nb, steps), np.uint8)
    for i in range(nb):
        for p in range(parts):
            w, state = words[i * parts + p], int(ends[i, p])
            stop = min(steps, first[p] + out_len)
            traced = []
            for t in range(win - 1, first[p] - starts[p] - 1, -1):  # state = state after step t
                traced.append(state >> 5)
                state = ((state & 31) << 1) | ((w[t] >> state) & 1)
            traced.reverse()
            bits[i, first[p]: stop] = traced[: stop - first[p]]
    out = bits[:, : steps - TAIL]
    return out[0] if single else out
