"""The header's convolutional code (gr_gdmcom.phy.conv) against references written out here.

The module builds its tables (generator taps, feedforward inverse, trellis) when it is imported;
these tests call the builders again and check each against a plain formulation, and check the
batched, windowed Viterbi decoder against a textbook full-trellis decoder (mutation testing,
docs/mutation-testing.md, found the header's tests blind to all of it)."""

import numpy as np
import pytest

from gr_gdmcom.phy import conv

# (133, 171, 165 octal, MSB = the current input: taps on u[t], u[t-1], ..., u[t-6])
TAPS = [[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0, 1], [1, 1, 1, 0, 1, 0, 1]]


def _mul2(a, b):
    """GF(2) polynomial product, coefficient lists lowest power first."""
    return [int(v) % 2 for v in np.convolve(a, b)] if len(a) and len(b) else []


def _coeffs(p: int):
    return [(p >> i) & 1 for i in range(max(p.bit_length(), 1))]


def _int(c) -> int:
    return sum(int(v) << i for i, v in enumerate(c))


def _outputs(reg):
    """The three output bits of the shift register ``reg`` = [u[t], u[t-1], ..., u[t-6]]."""
    return [sum(a * b for a, b in zip(taps, reg)) % 2 for taps in TAPS]


def _encode_ref(bits):
    """A shift register: output j at step t = xor of TAPS[j][i] * u[t - i]."""
    u = list(bits) + [0] * 6
    out = []
    for t in range(len(u)):
        reg = [u[t - i] if t - i >= 0 else 0 for i in range(7)]
        out += _outputs(reg)
    return np.array(out, np.uint8)


def _viterbi_ref(soft):
    """Full-trellis max-correlation decoding of one zero-tailed codeword: state = (u[t-1] .. u[t-6]),
    u[t-1] the MSB; starts and ends in state 0."""
    steps = len(soft) // 3
    metric = np.full(64, -np.inf)
    metric[0] = 0.0
    back = []
    for t in range(steps):
        new, arg = np.full(64, -np.inf), np.zeros(64, np.int64)
        for s in range(64):
            if metric[s] == -np.inf:
                continue
            for u in (0, 1):
                reg = [u] + [(s >> (5 - i)) & 1 for i in range(6)]
                m = metric[s] + sum(soft[3 * t + j] * (1 - 2 * c) for j, c in enumerate(_outputs(reg)))
                nxt = (u << 5) | (s >> 1)
                if m > new[nxt]:
                    new[nxt], arg[nxt] = m, s
        metric = new
        back.append(arg)
    s, bits = 0, []
    for t in range(steps - 1, -1, -1):
        bits.append(s >> 5)
        s = back[t][s]
    return np.array(bits[::-1][: steps - 6], np.uint8)


def test_generator_taps_and_the_encoder_are_the_shift_register():
    assert [conv._gen_taps(g).tolist() for g in conv.GENERATORS] == TAPS
    assert [list(map(int, d)) for d in conv._DELAYS] == [[0, 2, 3, 5, 6], [0, 1, 2, 3, 6], [0, 1, 2, 4, 6]]
    rng = np.random.default_rng(0)
    for n in (1, 7, 40):
        bits = rng.integers(0, 2, n).astype(np.uint8)
        coded = conv.encode(bits.astype(bool))
        assert coded.dtype == np.uint8 and len(coded) == conv.coded_length(n) == 3 * (n + 6)
        np.testing.assert_array_equal(coded, _encode_ref(bits))


def test_polynomial_arithmetic_over_gf2():
    rng = np.random.default_rng(1)
    for a, b in list(zip(rng.integers(0, 1 << 12, 300), rng.integers(1, 1 << 7, 300))) + [(0, 5), (5, 1), (6, 7)]:
        a, b = int(a), int(b)
        assert conv._poly_mul(a, b) == _int(_mul2(_coeffs(a), _coeffs(b))), (a, b)
        q, r = conv._poly_divmod(a, b)
        assert r.bit_length() < b.bit_length() and _int(_mul2(_coeffs(q), _coeffs(b))) ^ r == a, (a, b, q, r)
    assert conv._poly_mul(0b1011, 0) == 0 and conv._poly_divmod(0, 0b11) == (0, 0)


def test_the_feedforward_inverse_recovers_the_input():
    """x0 g0 + x1 g1 = 1 over GF(2)[D]: the information bits are x0 c0 + x1 c1, exactly."""
    inv = conv._inverse()
    assert inv == conv._INV and all(d == sorted(d) for d in inv)
    x0, x1 = (_coeffs(sum(1 << i for i in d)) for d in inv)
    g0, g1 = TAPS[:2]  # (the coefficient of D^i: the tap on u[t - i])
    total = np.zeros(max(len(x0) + len(g0), len(x1) + len(g1)), int)
    for x, g in ((x0, g0), (x1, g1)):
        p = _mul2(x, g)
        total[: len(p)] ^= np.array(p)
    assert total.tolist() == [1] + [0] * (len(total) - 1)
    bits = np.random.default_rng(2).integers(0, 2, 60).astype(np.uint8)
    c = conv.encode(bits).reshape(-1, 3)
    np.testing.assert_array_equal((conv._xor_filter(c[:, 0], inv[0]) ^ conv._xor_filter(c[:, 1], inv[1]))[:60], bits)


def test_catastrophic_generators_are_refused(monkeypatch):
    monkeypatch.setattr(conv, "GENERATORS", (0o133, 0o133, 0o165))
    with pytest.raises(RuntimeError) as exc:
        conv._inverse()
    assert str(exc.value) == "generators are catastrophic (no feedforward inverse)"


def test_the_trellis_tables_are_the_encoders_outputs():
    """Branch b into state s' leaves state ((s' & 31) << 1) | b on input s' >> 5: its three output bits,
    as the number sum(bit_j << j), are those of the shift register; the sign table maps them to +-1."""
    combo, signs = conv._trellis()
    want = []
    for b in (0, 1):
        for sp in range(64):
            s, u = ((sp & 31) << 1) | b, sp >> 5
            reg = [u] + [(s >> (5 - i)) & 1 for i in range(6)]
            want.append(sum(c << j for j, c in enumerate(_outputs(reg))))
    assert combo.tolist() == want
    assert signs.dtype == np.float32 and signs.tolist() == [[1.0 - 2.0 * ((c >> j) & 1) for c in range(8)]
                                                             for j in range(3)]
    np.testing.assert_array_equal(conv._COMBO, combo)


@pytest.mark.parametrize("n, batch, noise", [(40, 20, 1.8), (30, 1, 2.2), (400, 1, 0.8), (120, 3, 0.9), (300, 3, 0.8)])
def test_viterbi_equals_a_full_trellis_decoder(n, batch, noise):
    """Noisy codewords: the same bits as the textbook decoder.  One window (20 codewords, or a word too
    short to cut) with errors left after decoding, so ties and near ties matter; several windows (a
    long word, a small batch) where the windows' margin keeps the full trellis's decisions.  (Far below
    the header's operating point the margin costs a little: 416-bit words at Es/N0 -3 dB per coded bit
    in the header's terms, 1600 of them, 22.4 % frame errors with the full trellis, 22.8 % windowed.)"""
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, (batch, n)).astype(np.uint8)
    soft = np.stack([1.0 - 2.0 * conv.encode(b) for b in bits]) + noise * rng.standard_normal((batch, 3 * (n + 6)))
    got = conv.viterbi(soft)
    want = np.stack([_viterbi_ref(s) for s in soft])
    assert got.dtype == np.uint8 and got.shape == (batch, n)
    np.testing.assert_array_equal(got, want)
    one_window = batch * 2 > conv.TARGET_ROWS or n + conv.TAIL < 2 * conv.OVERLAP
    assert (want != bits).any() == one_window  # (the decoder had errors to make where it is exact)
    np.testing.assert_array_equal(conv.viterbi(soft[0]), want[0])


@pytest.mark.parametrize("length", [100, 18, 10, 0])
def test_viterbi_refuses_a_length_that_is_not_a_codeword(length):
    with pytest.raises(ValueError) as exc:
        conv.viterbi(np.ones(length))
    assert str(exc.value) == f"soft input length {length} is not a coded length of this code"


def test_the_hard_shortcut_takes_zero_as_bit_0_and_any_positive_scale():
    """A soft value of exactly 0 (an erased bit) is a 0 -- a tie, either is maximum-likelihood; the
    decisions do not depend on the soft values' scale."""
    bits = np.random.default_rng(3).integers(0, 2, 50).astype(np.uint8)
    soft = 0.01 * (1.0 - 2.0 * conv.encode(bits))
    np.testing.assert_array_equal(conv.decode_hard(soft), bits)
    zeros = np.flatnonzero(conv.encode(bits) == 0)[:5]
    soft[zeros] = 0.0
    np.testing.assert_array_equal(conv.decode_hard(soft), bits)
    np.testing.assert_array_equal(conv.decode_hard(np.zeros(3 * 56)), np.zeros(50, np.uint8))
