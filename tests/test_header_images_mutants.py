"""Tests written for the mutants of gr_gdmcom/phy/header.py and gr_gdmcom/codec/images.py that the
other tests let survive (docs/mutation-testing.md, ``scripts/mutation.py header`` / ``images``).

Each asserts what a user or a receiver depends on: the exact bytes of a header, the exact field
values read back, the limits of each field, and error messages that name the problem."""

import io
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gr_gdmcom.codec.images import ImageError, load_rgb, to_tensor, to_uint8, to_uint8_range
from gr_gdmcom.phy.frame import FrameConfig
from gr_gdmcom.phy.header import HEADER_BYTES, Header, HeaderError, encode_header, fits_float16

# ---------------------------------------------------------------- header
#: every field differs from its default (k's default 5 hid a dropped ``k=`` in ``unpack``), and
#: each integer field holds distinct bytes, so a field read from the wrong place shows
DISTINCT = Header(image_id=0x0102, chunk_index=3, chunk_count=4, total_symbols=0x05060708, chunk_symbols=0x090A,
                  latent_shape=(11, 0x0C0D, 0x0E0F), image_size=(0x1011, 0x1213), k=20, m_hint=21, T=0x1617,
                  forward=1, sender=0x18, guidance=2.5, alpha=0.5, model_hash=0x2425, prompt_hash=0x2627, flags=0x41,
                  means=(1.0, -2.0, 0.25))
#: its 52 bytes (docs/frame-format.md): "GD", version 6, flags 0x41, the integers big-endian, byte
#: 29 forward 1 | sender 0x18 << 1 = 0x31,
#: guidance 2.5 = float16 0x4100, alpha 0.5 = float32 0x3f000000, model 0x2425 (bytes 36-37),
#: prompt 0x2627 (38-39), means 1, -2, 0.25, 0 as float16, then the CRC-32 of bytes 0..47
DISTINCT_BYTES = bytes.fromhex("4744" "06" "41" "0102" "0003" "0004" "05060708" "090a" "0b" "0c0d" "0e0f"
                               "1011" "1213" "14" "15" "1617" "31" "4100" "3f000000" "2425" "2627"
                               "3c00" "c000" "3400" "0000" "f9756d69")


def _with_crc(body) -> bytes:
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


def test_header_bytes_are_pinned_and_every_field_reads_back():
    assert len(DISTINCT_BYTES) == HEADER_BYTES
    assert DISTINCT.pack() == DISTINCT_BYTES
    got = Header.unpack(DISTINCT_BYTES)
    assert got == DISTINCT.replace(means=(1.0, -2.0, 0.25, 0.0))  # unused mean slots come back as 0
    assert (got.k, got.m_hint, got.T, got.forward, got.sender) == (20, 21, 0x1617, 1, 0x18)
    # the same burst as version 4: k and the rest as they are, the model unknown
    body = bytearray(DISTINCT_BYTES[:-4])
    body[2], body[29] = 4, 1
    got4 = Header.unpack(_with_crc(body))
    assert (got4.version, got4.k, got4.forward, got4.sender, got4.model_hash, got4.prompt_hash) == (
        4, 20, 1, 0, 0, 0x2627)


def test_unpack_error_messages_name_the_problem():
    with pytest.raises(HeaderError, match=r"^header must be 52 bytes, got 51$") as exc:
        Header.unpack(DISTINCT_BYTES[:-1])
    assert exc.value.reason == "length"
    with pytest.raises(HeaderError, match=r"^bad header magic b'XX' \(expected b'GD'\)$") as exc:
        Header.unpack(b"XX" + DISTINCT_BYTES[2:])
    assert exc.value.reason == "magic"
    bad = bytearray(DISTINCT_BYTES)
    bad[10] ^= 0x01
    with pytest.raises(HeaderError, match=r"^header CRC-32 mismatch \(computed 0x74fd908b, "
                                          r"received 0xf9756d69\)$") as exc:
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
    with pytest.raises(HeaderError, match=r"^alpha=nan and guidance=2\.5 must be finite \(guidance in float16\)$"):
        DISTINCT.replace(alpha=float("nan")).pack()
    with pytest.raises(HeaderError, match=r"^alpha=0\.5 and guidance=inf must be finite \(guidance in float16\)$"):
        DISTINCT.replace(guidance=float("inf")).pack()
    with warnings.catch_warnings():  # (the float16 cast of 70000 printed numpy's overflow warning first)
        warnings.simplefilter("error")
        with pytest.raises(HeaderError, match=r"^alpha=0\.5 and guidance=70000\.0 must be finite \(guidance in float16\)$"):
            DISTINCT.replace(guidance=70000.0).pack()
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


# ---------------------------------------------------------------- images
GREY = np.array([[0, 64], [128, 255]], np.uint8)


def _rgb(img) -> np.ndarray:
    return np.asarray(load_rgb(img))


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_image_size_limits_one_pixel_zero_and_max_pixels():
    """One-pixel-wide or -high images load, a zero side is refused naming the image, and
    ``max_pixels`` is the largest size allowed (not one less), for arrays and encoded bytes alike."""
    assert _rgb(np.full((5, 1, 3), 7, np.uint8)).shape == (5, 1, 3)
    assert _rgb(np.full((1, 5, 3), 7, np.uint8)).shape == (1, 5, 3)
    assert _rgb(np.array([[9]], np.uint8)).tolist() == [[[9, 9, 9]]]
    with pytest.raises(ImageError, match=r"^image <PIL image 0x5 RGB> has zero size \(0x5\)$"):
        load_rgb(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match=r"^image <PIL image 5x0 RGB> has zero size \(5x0\)$"):
        load_rgb(Image.new("RGB", (5, 0)))
    img = Image.new("RGB", (8, 4))  # 32 pixels
    png = _png(img)
    assert load_rgb(img, max_pixels=32).size == load_rgb(png, max_pixels=32).size == (8, 4)
    for src in (img, np.zeros((4, 8, 3), np.uint8), png):
        with pytest.raises(ImageError, match=r"^image pic has 8x4 = 32 pixels, more than the limit max_pixels=31$"):
            load_rgb(src, max_pixels=31, name="pic")
    with pytest.raises(ImageError, match=rf"^image <{len(png)} bytes> has 8x4 = 32 pixels, more than the limit "
                                         r"max_pixels=31$"):
        load_rgb(png, max_pixels=31)


def test_input_errors_name_the_input(tmp_path):
    with pytest.raises(ImageError, match=rf"^image path is a folder, not a file: {re.escape(str(tmp_path))}$"):
        load_rgb(tmp_path)
    with pytest.raises(ImageError, match=r"^image <0 bytes> is empty \(0 bytes\)$"):
        load_rgb(b"")
    with pytest.raises(ImageError, match=r"^image upload is empty \(0 bytes\)$"):
        load_rgb(b"", name="upload")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match=rf"^cannot read image {re.escape(str(garbage))}: not an image format "
                                         r"Pillow can read$"):
        load_rgb(garbage, name="other")  # a path names itself
    with pytest.raises(ImageError, match=r"^unsupported image input <int>; give a path, bytes, a PIL image or a "
                                         r"uint8 array$"):
        load_rgb(12345)


def test_pil_images_and_array_shapes():
    assert _rgb(Image.new("RGB", (3, 2), (10, 20, 30))).tolist() == [[[10, 20, 30]] * 3] * 2
    ref = _rgb(GREY)
    np.testing.assert_array_equal(ref, np.repeat(GREY[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(_rgb(GREY[:, :, None]), ref)  # (H, W, 1): its one channel
    for shape in [(2, 2, 2), (2, 2, 5), (2, 2, 3, 1), (4,)]:
        with pytest.raises(ImageError, match=r"^image array must be \(H, W\), \(H, W, 1\), \(H, W, 3\) or "
                                             rf"\(H, W, 4\); got {re.escape(str(shape))}$"):
            load_rgb(np.zeros(shape, np.uint8))


def test_wide_grey_modes_are_scaled_as_their_range_means():
    """16-bit grey (big-endian too), 32-bit grey holding 16-bit values (0 and 256 included) or
    8-bit ones (255 included), float 0..1: the picture they hold; negatives and float values beyond
    255 refused with the image's name."""
    v16 = np.array([[0, 257 * 64], [257 * 128, 65535]])
    big = Image.fromarray(v16.astype(">u2"))
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(_rgb(big)[:, :, 0], GREY)
    for arr, want in ((v16, GREY), (GREY, GREY), (np.array([[0, 256]]), [[0, 1]]), (np.array([[255, 0]]), [[255, 0]])):
        img = Image.fromarray(np.asarray(arr, np.int32))
        assert img.mode == "I"
        np.testing.assert_array_equal(_rgb(img)[:, :, 0], want)
    with pytest.raises(ImageError, match=r"^image neg has negative values \(min -5\); give 0..1 or 0..255$"):
        load_rgb(Image.fromarray(np.array([[-5, 300]], np.int32)), name="neg")
    f = Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], np.float32))
    assert f.mode == "F"
    np.testing.assert_array_equal(_rgb(f)[:, :, 0], [[0, 64], [128, 255]])  # 63.75, 127.5 rounded
    with pytest.raises(ImageError, match=r"^image x has values up to 300\.5, beyond 255; give uint8 0..255, "
                                         r"uint16 0..65535 or float 0..1$"):
        load_rgb(Image.fromarray(np.array([[0.0, 300.5]], np.float32)), name="x")


def test_transparent_pixels_are_white_and_opaque_ones_keep_their_colour():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    assert _rgb(rgba).tolist() == _rgb(Image.fromarray(rgba)).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    la = Image.new("LA", (2, 1))
    la.putdata([(50, 255), (50, 0)])
    assert _rgb(la).tolist() == [[[50, 50, 50], [255, 255, 255]]]
    pa = Image.new("PA", (2, 1))
    pa.putpalette([10, 20, 30, 40, 50, 60])
    pa.putdata([(0, 255), (1, 0)])
    assert _rgb(pa).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 40, 50, 60])
    p.putdata([0, 1])
    assert _rgb(_png(p)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    assert _rgb(_png(p, transparency=1)).tolist() == [[[10, 20, 30], [255, 255, 255]]]  # palette entry 1 clear
    assert _rgb(Image.new("RGB", (1, 1), (1, 2, 3))).tolist() == [[[1, 2, 3]]]
    # an RGB or grey PNG's colour key (tRNS) is transparency too: white, as in a palette PNG (the key
    # colour itself was kept, black here, where a viewer shows the page)
    rgb = Image.fromarray(np.array([[[0, 0, 0], [10, 20, 30]]], np.uint8))
    assert _rgb(_png(rgb)).tolist() == [[[0, 0, 0], [10, 20, 30]]]
    assert _rgb(_png(rgb, transparency=(0, 0, 0))).tolist() == [[[255, 255, 255], [10, 20, 30]]]
    grey = Image.fromarray(np.array([[7, 200]], np.uint8))
    assert _rgb(_png(grey, transparency=7)).tolist() == [[[255, 255, 255], [200, 200, 200]]]


def test_to_tensor_reflects_the_padding_or_replicates_when_the_image_is_too_small():
    a = (np.arange(10 * 12).reshape(10, 12) * 2).astype(np.uint8)
    x = to_tensor(Image.fromarray(a).convert("RGB"))
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    v = ((x[0, 0] + 1.0) * 127.5).round().to(torch.int64).numpy()
    np.testing.assert_array_equal(v[:10, :12], a)
    np.testing.assert_array_equal(v[10:, :12], a[[8, 7, 6, 5, 4, 3]])  # reflected about row 9
    np.testing.assert_array_equal(v[:10, 12:], a[:, [10, 9, 8, 7]])
    assert x[0, :, 0, 0].tolist() == [-1.0] * 3 and float(x[0, 0, 0, 1]) == pytest.approx(2 / 127.5 - 1.0, abs=1e-7)
    for h, w in ((4, 12), (12, 4)):  # the 4 rows (columns) of padding need 5 to reflect
        b = (np.arange(h * w).reshape(h, w) * 5).astype(np.uint8)
        y = to_tensor(Image.fromarray(b).convert("RGB"))
        assert y.shape == (1, 3, 8 if h == 4 else 16, 16 if w == 12 else 8)
        u = ((y[0, 1] + 1.0) * 127.5).round().to(torch.int64).numpy()
        np.testing.assert_array_equal(u, np.pad(b, ((0, (-h) % 8), (0, (-w) % 8)), mode="edge"))


def test_to_uint8_clamps_rounds_and_crops():
    row0, row1 = [-1.5, -1.0, 0.0], [0.5, 1.0, 1.5]
    x = torch.tensor([row0, row1]).expand(3, 2, 3)
    out = to_uint8(x, (2, 3))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[:, :, 0].tolist() == [[0, 0, 128], [191, 255, 255]]  # 127.5 -> 128, 191.25 -> 191
    assert to_uint8(x, (1, 2))[:, :, 2].tolist() == [[0, 0]]


def test_to_uint8_range_types_and_values():
    b = to_uint8_range(np.array([[True, False]]))
    assert b.dtype == np.uint8 and b.tolist() == [[255, 0]]
    # uint16: rounded to the nearest of 255 levels (128 -> 0.498, 129 -> 0.502, 32768 -> 127.502)
    u = to_uint8_range(np.array([0, 128, 129, 32768, 65535], np.uint16))
    assert u.dtype == np.uint8 and u.tolist() == [0, 0, 1, 128, 255]
    f = to_uint8_range(np.array([0.0, 0.5, 1.0]))
    assert f.dtype == np.uint8 and f.tolist() == [0, 128, 255]
    assert to_uint8_range(np.array([0.0, 1.5, 2.0])).tolist() == [0, 2, 2]  # largest value above 1: 0..255
    assert to_uint8_range(np.array([0, 255], np.int64)).tolist() == [0, 255]
    with pytest.raises(ImageError, match=r"^image x has values up to 256, beyond 255; give uint8 0..255, "
                                         r"uint16 0..65535 or float 0..1$"):
        to_uint8_range(np.array([0, 256], np.int64), "x")
    with pytest.raises(ImageError, match=r"^image x has values of type complex128; give uint8, uint16, bool or float$"):
        to_uint8_range(np.array([1 + 1j]), "x")
    for bad in (np.nan, np.inf):
        with pytest.raises(ImageError, match=r"^image x contains non-finite values$"):
            to_uint8_range(np.array([0.5, bad]), "x")
    # the [-1, 1] hint only for floats down to -1
    for arr, lo in ((np.array([-3, 5]), "-3"), (np.array([-1, 5]), "-1"), (np.array([-2.0, 0.5]), "-2")):
        with pytest.raises(ImageError, match=rf"^image x has negative values \(min {lo}\); give 0..1 or 0..255$"):
            to_uint8_range(arr, "x")
    with pytest.raises(ImageError, match=r"^image image has negative values \(min -1\); give 0..1 or 0..255 "
                                         r"\(a \[-1, 1\] tensor: give \(x \+ 1\) / 2\)$"):
        to_uint8_range(np.array([-1.0, 0.5]))  # the default name
