"""Tests written for the mutants of gr_gdmcom/phy/header.py and gr_gdmcom/codec/images.py that the
other tests let survive (docs/mutation-testing.md, ``scripts/mutation.py header`` / ``images``).

Each asserts what a user or a receiver depends on: the exact bytes of a header, the exact field
values read back, the limits of each field, and error messages that name the problem."""

import re
import struct
import warnings
import zlib

import numpy as np
import pytest

from gr_gdmcom.phy.frame import FrameConfig
from gr_gdmcom.phy.header import HEADER_BYTES, Header, HeaderError, encode_header, fits_float16

# ---------------------------------------------------------------- header
#: every field differs from its default (k's default 5 hid a dropped ``k=`` in ``unpack``), and
#: each integer field holds distinct bytes, so a field read from the wrong place shows
DISTINCT = Header(image_id=0x0102, chunk_index=3, chunk_count=4, total_symbols=0x05060708, chunk_symbols=0x090A,
                  latent_shape=(11, 0x0C0D, 0x0E0F), image_size=(0x1011, 0x1213), k=20, m_hint=21, T=0x1617,
                  forward=1, guidance=2.5, alpha=0.5, model_hash=0x2425, prompt_hash=0x2627, flags=0x41,
                  means=(1.0, -2.0, 0.25))
#: its 52 bytes (docs/frame-format.md): "GD", version 5, flags 0x41, the integers big-endian,
#: guidance 2.5 = float16 0x4100, alpha 0.5 = float32 0x3f000000, model 0x2425 (bytes 36-37),
#: prompt 0x2627 (38-39), means 1, -2, 0.25, 0 as float16, then the CRC-32 of bytes 0..47
DISTINCT_BYTES = bytes.fromhex("4744" "05" "41" "0102" "0003" "0004" "05060708" "090a" "0b" "0c0d" "0e0f"
                               "1011" "1213" "14" "15" "1617" "01" "4100" "3f000000" "2425" "2627"
                               "3c00" "c000" "3400" "0000" "4ce98cc2")


def _with_crc(body) -> bytes:
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


def test_header_bytes_are_pinned_and_every_field_reads_back():
    assert len(DISTINCT_BYTES) == HEADER_BYTES
    assert DISTINCT.pack() == DISTINCT_BYTES
    got = Header.unpack(DISTINCT_BYTES)
    assert got == DISTINCT.replace(means=(1.0, -2.0, 0.25, 0.0))  # unused mean slots come back as 0
    assert (got.k, got.m_hint, got.T, got.forward) == (20, 21, 0x1617, 1)
    # the same burst as version 4: k and the rest as they are, the model unknown
    body = bytearray(DISTINCT_BYTES[:-4])
    body[2] = 4
    got4 = Header.unpack(_with_crc(body))
    assert (got4.version, got4.k, got4.model_hash, got4.prompt_hash) == (4, 20, 0, 0x2627)


def test_unpack_error_messages_name_the_problem():
    with pytest.raises(HeaderError, match=r"^header must be 52 bytes, got 51$") as exc:
        Header.unpack(DISTINCT_BYTES[:-1])
    assert exc.value.reason == "length"
    with pytest.raises(HeaderError, match=r"^bad header magic b'XX' \(expected b'GD'\)$") as exc:
        Header.unpack(b"XX" + DISTINCT_BYTES[2:])
    assert exc.value.reason == "magic"
    bad = bytearray(DISTINCT_BYTES)
    bad[10] ^= 0x01
    with pytest.raises(HeaderError, match=r"^header CRC-32 mismatch \(computed 0xc1617120, "
                                          r"received 0x4ce98cc2\)$") as exc:
        Header.unpack(bytes(bad))
    assert exc.value.reason == "crc"


def test_encode_header_refuses_a_wrong_length_with_reason_length():
    wh = FrameConfig().layout().header_whitening
    for n in (51, 53):
        with pytest.raises(HeaderError, match=rf"^header must be 52 bytes, got {n}$") as exc:
            encode_header(bytes(n), wh)
        assert exc.value.reason == "length"
    assert encode_header(DISTINCT_BYTES, wh).shape == (1266,)


@pytest.mark.parametrize("shape", [(0, 0, 0), (255, 65535, 65535), (1, 65535, 0), (255, 0, 65535)])
def test_latent_shape_limits_are_those_of_its_bytes(shape):
    """C is one byte, H and W two: their whole ranges pack and read back."""
    assert Header.unpack(DISTINCT.replace(latent_shape=shape).pack()).latent_shape == shape


@pytest.mark.parametrize("shape", [(256, 64, 64), (4, 65536, 64), (4, 64, 65536), (4, 64, -1), (4, -1, 64),
                                   (4, 64), (4, 64, 64, 1)])
def test_latent_shape_beyond_its_bytes_is_refused_by_name(shape):
    """Refused as a HeaderError naming the shape (not a struct.error from packing)."""
    with pytest.raises(HeaderError, match=r"^latent_shape " + re.escape(repr(shape))
                       + r" must be \(C < 256, H < 65536, W < 65536\)$"):
        DISTINCT.replace(latent_shape=shape).pack()


@pytest.mark.parametrize("size", [(0, 0), (65535, 65535), (0, 65535)])
def test_image_size_limits_are_those_of_its_bytes(size):
    assert Header.unpack(DISTINCT.replace(image_size=size).pack()).image_size == size


@pytest.mark.parametrize("size", [(65536, 512), (512, 65536), (-1, 512), (512,), (512, 512, 3)])
def test_image_size_beyond_its_bytes_is_refused_by_name(size):
    with pytest.raises(HeaderError, match=r"^image_size " + re.escape(repr(size))
                       + r" must be \(height, width\), each < 65536$"):
        DISTINCT.replace(image_size=size).pack()


def test_field_error_messages_name_the_field_and_value():
    with pytest.raises(HeaderError, match=r"^header field image_id=70000 is not a uint16$"):
        DISTINCT.replace(image_id=70000).pack()
    with pytest.raises(HeaderError, match=r"^header field k=256 is not a uint8$"):
        DISTINCT.replace(k=256).pack()
    with pytest.raises(HeaderError, match=r"^alpha=nan and guidance=2\.5 must be finite$"):
        DISTINCT.replace(alpha=float("nan")).pack()
    with pytest.raises(HeaderError, match=r"^alpha=0\.5 and guidance=inf must be finite$"):
        DISTINCT.replace(guidance=float("inf")).pack()
    with pytest.raises(HeaderError, match=r"^means \(0\.0, 70000\.0\) must be at most 4 values finite in float16$"):
        DISTINCT.replace(means=(0.0, 70000.0)).pack()
    with pytest.raises(HeaderError, match=r"^means \(1, 2, 3, 4, 5\) must be at most 4 values finite in float16$"):
        DISTINCT.replace(means=(1, 2, 3, 4, 5)).pack()


def test_fits_float16_says_what_the_header_can_pack_without_numpy_warnings():
    """``fits_float16`` is True exactly where ``struct`` packs the value (a Python float, as
    ``Header.pack`` gives it) as float16: 65504 is float16's largest, values below 65520 round
    to it, 65520 and beyond overflow.  A value held more precisely than float64 (a long double
    just below 65520) is judged as the float64 the header packs.  An overflow is an answer
    (False), not a numpy RuntimeWarning on the user's console."""
    just_below = np.longdouble(65520) - np.longdouble(2) ** -30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v, fits in ((65504.0, True), (-65504.0, True), (65519.99, True), (float(just_below), True),
                        (just_below, True), (65520.0, False), (-70000.0, False), (1e300, False),
                        (float("nan"), False), (float("-inf"), False)):
            assert fits_float16([0.5, v]) is fits, v
            try:
                struct.pack(">e", float(v))
                packs = np.isfinite(v)
            except OverflowError:
                packs = False
            assert packs == fits, v
        assert fits_float16([]) is True
        with pytest.raises(HeaderError, match="must be at most 4 values finite in float16"):
            DISTINCT.replace(means=(70000.0,)).pack()
