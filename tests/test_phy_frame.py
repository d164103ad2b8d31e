"""FrameConfig's limits and the RRC pulse, exactly (gr_gdmcom.phy.frame).

Mutation testing (docs/mutation-testing.md) found every bound of ``FrameConfig.validate`` and the
RRC formula's three branches unchecked: a limit moved by one, a message changed or a branch's
formula wrong passed the tests."""

import numpy as np
import pytest
from scipy import integrate

from gr_gdmcom.phy import FrameConfig
from gr_gdmcom.phy.frame import (COPY_ROTATION, HEADER_CODED_BITS as H, HEADER_COPY_AFTER as S, MAX_CHUNK_LIMIT,
                                 SEED_PAYLOAD, SEED_PILOTS, SEED_PROBES, FrameLayout, frank, gaussian_symbols,
                                 prbs_bits, qpsk, rrc, zadoff_chu)

SPS = "sps must be an integer in 1..16"
ROLL = "rolloff must be in (0, 1]"
SPAN = "rrc_span must be an even number >= 2"
PILOT = "pilot_spacing must be in 2..3314 with header_copy (2..4096 without)"
CHUNK = "max_chunk_symbols must be in 1..65535"
SEG = "preamble_seg must be a square >= 4 (Frank sequence length)"
REPS = "preamble_reps - 1 must be a Barker length [2, 3, 4, 5, 7, 11, 13]"
EQ = "eq_taps must be odd, 1..31"
DET, VER = "detect_threshold must be in (0, 1)", "verify_threshold must be in (0, 1)"
CLIP = "tx_clip must be 0 (off) or >= 1"
TIMEOUT = "image_timeout must be 0 (off) or in 1 .. 1e6 (bursts)"
VERSION = "header_version must be 6 (this version) or 5 (for receivers from before 2026-11-29: no sender id)"
CFO = "cfo_search must be an integer in 0 .. sqrt(preamble_seg) - 1"

BAD = [("sps", 0, SPS), ("sps", 17, SPS), ("sps", 2.0, SPS), ("rolloff", 0.0, ROLL), ("rolloff", 1.01, ROLL),
       ("rrc_span", 0, SPAN), ("rrc_span", 3, SPAN), ("pilot_spacing", 1, PILOT), ("pilot_spacing", 3315, PILOT),
       ("max_chunk_symbols", 0, CHUNK), ("max_chunk_symbols", 65536, CHUNK),
       ("gap_symbols", -1, "gap_symbols must be >= 0"), ("preamble_seg", 1, SEG), ("preamble_seg", 8, SEG),
       ("preamble_reps", 7, REPS), ("preamble_reps", 2, REPS), ("eq_taps", 2, EQ), ("eq_taps", 33, EQ),
       ("eq_taps", -1, EQ), ("phase_window", 0, "phase_window must be >= 1"), ("detect_threshold", 0.0, DET),
       ("detect_threshold", 1.0, DET), ("verify_threshold", 0.0, VER), ("verify_threshold", 1.0, VER),
       ("tx_clip", 0.99, CLIP), ("tx_clip", -1.0, CLIP), ("image_timeout", 0.5, TIMEOUT),
       ("image_timeout", 1e6 + 1, TIMEOUT), ("header_copy", 1, "header_copy must be True or False"),
       ("notch", "yes", "notch must be True or False"), ("header_version", 4, VERSION),
       ("header_version", True, VERSION), ("header_version", 6.0, VERSION), ("cfo_search", 4, CFO),
       ("cfo_search", -1, CFO), ("cfo_search", 1.0, CFO)]
GOOD = [("sps", 1), ("sps", 16), ("sps", np.int64(4)), ("rolloff", 1.0), ("rolloff", 0.01), ("rrc_span", 2),
        ("pilot_spacing", 2), ("pilot_spacing", 3314), ("max_chunk_symbols", 1), ("max_chunk_symbols", 65535),
        ("gap_symbols", 0), ("preamble_seg", 9), ("preamble_seg", 64), ("preamble_reps", 3), ("preamble_reps", 14),
        ("eq_taps", 1), ("eq_taps", 31), ("phase_window", 1), ("detect_threshold", 0.999),
        ("verify_threshold", 1e-6), ("tx_clip", 0.0), ("tx_clip", 1.0), ("image_timeout", 0.0),
        ("image_timeout", 1.0), ("image_timeout", 1e6), ("header_copy", np.bool_(False)), ("notch", False),
        ("header_version", 5), ("header_version", np.int32(6)), ("cfo_search", 0), ("cfo_search", 3)]


@pytest.mark.parametrize("name, value, msg", BAD)
def test_each_limit_is_refused_in_its_words(name, value, msg):
    with pytest.raises(ValueError) as exc:
        FrameConfig(**{name: value})
    assert str(exc.value) == f"FrameConfig: {msg} (got {name}={value!r}; option --{name.replace('_', '-')})"


@pytest.mark.parametrize("name, value", GOOD)
def test_each_limit_itself_is_taken(name, value):
    assert getattr(FrameConfig(**{name: value}), name) == value


def test_pilot_spacing_goes_to_4096_without_the_header_copy():
    """With the copy, a spacing over 3314 would put the resync preamble before the header (the block
    holding the copy's first symbol, data symbol 1266 + 2048, would be the first): the receiver found
    the header's pilots in the wrong places and returned the payload as noise (-24.7 dB)."""
    assert FrameConfig(pilot_spacing=4096, header_copy=False).pilot_spacing == 4096
    with pytest.raises(ValueError) as exc:
        FrameConfig(pilot_spacing=4097, header_copy=False)
    assert str(exc.value) == f"FrameConfig: {PILOT} (got pilot_spacing=4097; option --pilot-spacing)"


def test_cfo_search_is_bounded_by_the_frank_segment():
    """sqrt(preamble_seg) - 1: 7 at 64-symbol segments, 8 refused; the shortest segment, 4, takes 0 and 1."""
    assert FrameConfig(preamble_seg=4, cfo_search=1).preamble_seg == 4
    assert FrameConfig(preamble_seg=64, cfo_search=7).cfo_search == 7
    with pytest.raises(ValueError, match="cfo_search must be an integer"):
        FrameConfig(preamble_seg=64, cfo_search=8)


def _rrc_reference(t: float, beta: float) -> float:
    """The inverse Fourier transform of the square root of the raised-cosine spectrum (symbol period
    1): 1 up to (1 - beta) / 2, cos(pi / (2 beta) (|f| - (1 - beta) / 2)) up to (1 + beta) / 2."""
    lo, hi = (1 - beta) / 2, (1 + beta) / 2
    flat = (2 * lo if t == 0 else np.sin(2 * np.pi * lo * t) / (np.pi * t))
    roll, _ = integrate.quad(lambda f: np.cos(np.pi / (2 * beta) * (f - lo)) * np.cos(2 * np.pi * f * t), lo, hi,
                             epsabs=1e-13, epsrel=1e-12, limit=200)
    return flat + 2 * roll


@pytest.mark.parametrize("beta", [0.35, 0.2, 1.0])
def test_rrc_is_the_root_raised_cosine(beta):
    """At 0, at the singular points +-1 / (4 beta), at whole and fractional symbols: the transform of the
    spectrum's square root, to 1e-9 (the peak is 1 - beta + 4 beta / pi)."""
    t = np.r_[0.0, 1 / (4 * beta), -1 / (4 * beta), 1 / (4 * beta) + 1e-5, np.arange(-4, 4.01, 0.37), 1, 2, -3]
    got = rrc(t, beta)
    assert got.dtype == np.float64 and got.shape == t.shape
    want = np.array([_rrc_reference(float(v), beta) for v in t])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert got[0] == 1 - beta + 4 * beta / np.pi


def test_rrc_takes_integer_times_and_warns_of_nothing():
    """At whole symbols given as integers, and at 0 and the singular points (each branch computed
    where it applies: no 0 / 0 to warn about)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(rrc(np.arange(-4, 5), 0.25), rrc(np.arange(-4, 5).astype(float), 0.25))
        assert np.isfinite(rrc(np.array([0.0, 1.0, -1.0, 0.5]), 0.25)).all()  # (+-1 = +-1 / (4 x 0.25))


def test_the_known_sequences_follow_their_definitions():
    k = np.arange(16)
    np.testing.assert_allclose(zadoff_chu(16, 3), np.exp(-1j * np.pi * 3 * k * k / 16), atol=1e-6)
    # Frank: segment of q^2 symbols, symbol (a q + b) = exp(j 2 pi a b / q)
    a, b = np.divmod(np.arange(9), 3)
    np.testing.assert_allclose(frank(9), np.exp(2j * np.pi * a * b / 3), atol=1e-6)
    assert frank(9).dtype == np.complex64
    np.testing.assert_array_equal(qpsk(np.array([0, 1, 1, 0, 1], np.uint8)),
                                  np.array([1 - 1j, -1 + 1j], np.complex64) / np.float32(np.sqrt(2)))
    with pytest.raises(ValueError) as exc:
        prbs_bits(5, 0)
    assert str(exc.value) == "PRBS seed must be non-zero"


# FrameLayout's maps, against a burst body walked out symbol by symbol (docs/frame-format.md):
# a pilot before every ``pilot_spacing`` data symbols and one after the last; data = header,
# payload[:HEADER_COPY_AFTER], the header's copy, payload[HEADER_COPY_AFTER:] (the copy only with
# ``header_copy`` and at least HEADER_COPY_AFTER payload symbols); the resync preamble before the
# pilot of the block that holds data symbol HEADER_CODED_BITS + HEADER_COPY_AFTER.

def _walked_body(p, n_payload, header_copy, n_resync):
    copy = header_copy and n_payload >= S
    data = ["h"] * H + (["d"] * S + ["c"] * H + ["d"] * (n_payload - S) if copy else ["d"] * n_payload)
    body = []
    for i, kind in enumerate(data):
        if i % p == 0:
            if copy and i == (H + S) // p * p:
                body += ["r"] * n_resync
            body.append("p")
        body.append(kind)
    body.append("p")
    return {kind: np.flatnonzero(np.array(body) == kind) for kind in "hdcpr"}, len(body)


#: 19: a pilot falls between the copy's last two symbols (data symbol 4579 = 19 x 241 starts a block)
LAYOUTS = [(16, True), (16, False), (7, True), (2, True), (19, True), (27, True), (3314, True), (4096, False)]


@pytest.mark.parametrize("p,header_copy", LAYOUTS)
@pytest.mark.parametrize("n_payload", [1, 40, 2047, 2048, 2049, 5000])
def test_the_burst_map_is_the_walked_out_body(p, header_copy, n_payload):
    lay = FrameConfig(pilot_spacing=p, header_copy=header_copy).layout()
    want, n_body = _walked_body(p, n_payload, header_copy, len(lay.resync))
    m = lay.burst_map(n_payload)
    for got, kind in ((m.header, "h"), (m.payload, "d"), (m.copy, "c"), (m.pilots, "p"), (m.resync, "r")):
        np.testing.assert_array_equal(got, want[kind], err_msg=kind)
        assert got.dtype == np.int64, kind
    assert m.n_body == n_body
    assert lay.burst_samples(n_payload) == (len(lay.preamble) + n_body) * 2 + 2 * lay.half


@pytest.mark.parametrize("p,header_copy", LAYOUTS)
def test_the_header_copy_and_resync_regions_are_those_of_every_burst(p, header_copy):
    """header_region, copy_region and resync_start: the receiver reads the header (and its copy, and
    finds the resync preamble) before it knows the payload length, so these are the same in every
    burst: checked against walked-out bodies of 2048 and 9000 payload symbols."""
    lay = FrameConfig(pilot_spacing=p, header_copy=header_copy).layout()
    for n_payload in (2048, 9000):
        want, _ = _walked_body(p, n_payload, header_copy, len(lay.resync))
        data_pos, pilot_pos, n_body = lay.header_region()
        np.testing.assert_array_equal(data_pos, want["h"])
        np.testing.assert_array_equal(pilot_pos, want["p"][want["p"] < want["h"][-1]])
        assert pilot_pos.dtype == np.int64 and len(pilot_pos) == -(-H // p) and n_body == want["h"][-1] + 1
        copy_pos, copy_pilots, copy_end = lay.copy_region()
        if header_copy:
            np.testing.assert_array_equal(copy_pos, want["c"])
            np.testing.assert_array_equal(copy_pilots, want["p"][want["p"] < want["c"][-1]])
            assert copy_end == want["c"][-1] + 1 and lay.resync_start() == want["r"][0]
        else:
            assert len(copy_pos) == len(copy_pilots) == copy_end == 0 and lay.resync_start() == -1
    # the copy region ends where the payload after it (or a pilot) starts
    if header_copy:
        assert copy_end <= lay.burst_map(9000).payload[2048]


def test_the_header_copy_is_the_header_rotated_by_half_and_combining_undoes_it():
    """Copy symbol j is header symbol (j + 633) mod 1266; combine_copies adds the copy's values back
    in the header's order, so two copies of the same soft values give twice each value."""
    assert (H, COPY_ROTATION) == (1266, 633)
    header = np.arange(H) * (1 + 1j)
    copy = FrameLayout.header_copy_symbols(header)
    np.testing.assert_array_equal(copy, header[(np.arange(H) + 633) % H])
    first = np.linspace(-1, 1, H)
    np.testing.assert_array_equal(FrameLayout.combine_copies(first, FrameLayout.header_copy_symbols(first)), 2 * first)
    np.testing.assert_array_equal(FrameLayout.combine_copies(np.zeros(H), copy), header)


@pytest.mark.parametrize("p", [16, 27, 3, 2521])
def test_the_layouts_sequences_have_their_documented_lengths_and_types(p):
    """pilots: exactly as many as the largest burst carries (the header, its copy and 65535 payload
    symbols), QPSK for the header's pilots then the probes; scrambler: one phase per payload symbol
    of the largest chunk; barker and cover float64."""
    lay = FrameConfig(pilot_spacing=p).layout()
    largest = len(lay.burst_map(MAX_CHUNK_LIMIT).pilots)
    assert len(lay.pilots) == largest and lay.pilots.dtype == np.complex64
    hp = lay.header_pilots
    assert hp == -(-1266 // p)
    np.testing.assert_array_equal(lay.pilots[:hp], qpsk(prbs_bits(2 * hp, SEED_PILOTS)))
    np.testing.assert_array_equal(lay.pilots[hp:], gaussian_symbols(largest - hp, SEED_PROBES))
    np.testing.assert_array_equal(lay.scrambler, qpsk(prbs_bits(2 * MAX_CHUNK_LIMIT, SEED_PAYLOAD)))
    assert len(lay.scrambler) == MAX_CHUNK_LIMIT
    assert lay.barker.dtype == lay.cover.dtype == np.float64
    seven = FrameConfig(pilot_spacing=p, preamble_reps=8).layout()  # Barker 7: + + + - - + -
    np.testing.assert_array_equal(seven.barker, [1, 1, 1, -1, -1, 1, -1])
    np.testing.assert_array_equal(seven.cover, [1, 1, 1, 1, -1, 1, 1, -1])


def test_at_one_sample_per_symbol_there_is_no_pulse():
    """sps 1: no RRC (one unit tap, scale 1, no delay), shape() returns the symbols as complex64."""
    lay = FrameConfig(sps=1).layout()
    assert lay.half == 0 and lay.rrc_scale == 1.0
    np.testing.assert_array_equal(lay.taps, [1.0])
    assert lay.taps.shape == (1,)
    sym = np.array([1 + 2j, -0.5j, 3.0], np.complex128)
    out = lay.shape(sym)
    assert out.dtype == np.complex64
    np.testing.assert_array_equal(out, sym.astype(np.complex64))
    np.testing.assert_array_equal(lay.template, lay.preamble)
    assert lay.burst_samples(40) == len(lay.preamble) + lay.burst_map(40).n_body
