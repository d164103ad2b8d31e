"""FrameConfig's limits and the RRC pulse, exactly (gr_gdmcom.phy.frame).

Mutation testing (docs/mutation-testing.md) found every bound of ``FrameConfig.validate`` and the
RRC formula's three branches unchecked: a limit moved by one, a message changed or a branch's
formula wrong passed the tests."""

import numpy as np
import pytest
from scipy import integrate

from gr_gdmcom.phy import FrameConfig
from gr_gdmcom.phy.frame import rrc

SPS = "sps must be an integer in 1..16"
ROLL = "rolloff must be in (0, 1]"
SPAN = "rrc_span must be an even number >= 2"
PILOT = "pilot_spacing must be in 2..4096"
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
       ("rrc_span", 0, SPAN), ("rrc_span", 3, SPAN), ("pilot_spacing", 1, PILOT), ("pilot_spacing", 4097, PILOT),
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
        ("pilot_spacing", 2), ("pilot_spacing", 4096), ("max_chunk_symbols", 1), ("max_chunk_symbols", 65535),
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
    from gr_gdmcom.phy.frame import prbs_bits, qpsk, zadoff_chu
    k = np.arange(16)
    np.testing.assert_allclose(zadoff_chu(16, 3), np.exp(-1j * np.pi * 3 * k * k / 16), atol=1e-6)
    np.testing.assert_array_equal(qpsk(np.array([0, 1, 1, 0, 1], np.uint8)),
                                  np.array([1 - 1j, -1 + 1j], np.complex64) / np.float32(np.sqrt(2)))
    with pytest.raises(ValueError) as exc:
        prbs_bits(5, 0)
    assert str(exc.value) == "PRBS seed must be non-zero"
