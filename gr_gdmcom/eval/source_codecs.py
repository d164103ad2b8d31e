"""Image source codecs for the digital baseline, behind one small interface.

Three codecs, each with an integer quality knob (higher = better, larger):

==========  =============================================  =========
name        implementation                                 quality
==========  =============================================  =========
``hevc``    HEVC intra (x265 inside pillow-heif/libheif),  0 .. 100
            4:2:0 -- stands in for BPG, whose core is
            HEVC intra
``jpeg``    Pillow / libjpeg, optimised Huffman, 4:2:0     1 .. 95
``webp``    Pillow / libwebp lossy, ``method=6``           0 .. 100
==========  =============================================  =========

:func:`encode_to_budget` finds, by binary search, the highest quality whose
bitstream fits a byte budget; it raises :class:`BudgetTooSmallError` when even
the lowest quality does not fit, and :class:`CodecUnavailableError` when the
codec cannot run here (e.g. pillow-heif missing or built without x265).

HEVC bitstream packaging
------------------------
A HEIF file from libheif carries about 380 bytes of container (``ftyp``,
``meta`` with the ``hvcC`` parameter sets, ``iloc`` ...) around the coded
picture.  BPG spends about a dozen bytes on the same job, and at the budgets
of a 1/96 channel (a few hundred bytes for 256 x 256) the container alone
would decide the result.  So the ``hevc`` bitstream sent over the channel is
BPG-like: ``0x01 | width (u16) | height (u16) | mdat payload`` -- the coded
slice NAL units with their 4-byte length prefixes, 5 bytes of overhead.
The receiver rebuilds the HEIF container from a *template*: libheif's own
encoding of a flat grey image of the same size, whose container (``hvcC``
included: x265 puts the QP in the slice header, not in the parameter sets)
is the same for every picture of that size, with only the item length
patched.  The encoder checks that the rebuilt file is byte-identical to the
one x265/libheif wrote; if it is not (a different libheif, a picture larger
than HEVC's level 6.2 allows: 35 651 584 pixels, 16 888 a side), it sends
``0x02 | full HEIF file`` instead, so the decoded image is always exactly
libheif's decode of its own file.  The decoder refuses a ``0x01`` header
outside those bounds (a corrupt header must not make it encode a
65535 x 65535 template) and a zero width or height.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "CODECS",
    "SourceCodecError",
    "CodecUnavailableError",
    "BudgetTooSmallError",
    "SourceCodec",
    "get_codec",
    "check_available",
    "encode",
    "decode",
    "encode_to_budget",
    "hevc_heif_file",
    "hevc_rebuild_heif",
]


class SourceCodecError(RuntimeError):
    """Base class of the source-codec failures the digital chain reports as rows."""


class CodecUnavailableError(SourceCodecError):
    """The codec cannot run on this machine (missing package or encoder)."""


class BudgetTooSmallError(SourceCodecError):
    """Even the lowest quality does not fit the byte budget."""

    def __init__(self, codec: str, max_bytes: int, min_bytes: int, min_quality: int):
        self.codec, self.max_bytes, self.min_bytes, self.min_quality = codec, max_bytes, min_bytes, min_quality
        super().__init__(
            f"budget too small for {codec}: {max_bytes} bytes available, "
            f"lowest quality ({min_quality}) needs {min_bytes} bytes"
        )


def _as_rgb(img: Image.Image) -> Image.Image:
    """Plain 8-bit RGB copy with no metadata (no ICC/EXIF travels with the bits)."""
    return Image.fromarray(np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), "RGB")


def _pil_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


# --------------------------------------------------------------------------- #
# JPEG and WebP (Pillow)
# --------------------------------------------------------------------------- #
def _jpeg_encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), optimize=True, subsampling="4:2:0")
    return buf.getvalue()


def _webp_encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=int(quality), method=6)
    return buf.getvalue()


def _jpeg_available() -> None:
    from PIL import features

    if not features.check("jpg"):
        raise CodecUnavailableError("jpeg unavailable: this Pillow was built without libjpeg")


def _webp_available() -> None:
    from PIL import features

    if not features.check("webp"):
        raise CodecUnavailableError("webp unavailable: this Pillow was built without libwebp")


# --------------------------------------------------------------------------- #
# HEVC intra (pillow-heif / libheif / x265)
# --------------------------------------------------------------------------- #
_HEVC_FLAT = 0x01  # width, height, mdat payload; container rebuilt from a template
_HEVC_FULL = 0x02  # the whole HEIF file follows
# HEVC level 6.2 (ITU-T H.265 Table A.8): MaxLumaPs, and sqrt(8 * MaxLumaPs) a side
HEVC_MAX_PIXELS = 35_651_584
HEVC_MAX_SIDE = 16_888


def _hevc_flat_size_ok(width: int, height: int) -> bool:
    return 1 <= width <= HEVC_MAX_SIDE and 1 <= height <= HEVC_MAX_SIDE and width * height <= HEVC_MAX_PIXELS


def _pillow_heif():
    try:
        import pillow_heif
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CodecUnavailableError(
            "hevc unavailable: pillow-heif is not installed (pip install 'gr-gdmcom[eval]'); "
            "jpeg and webp still work"
        ) from exc
    return pillow_heif


def _hevc_available() -> None:
    ph = _pillow_heif()
    info = ph.libheif_info()
    encoders = " ".join(str(v) for v in info.get("encoders", {}).values()) + " " + str(info.get("HEIF", ""))
    if "x265" not in encoders.lower():
        raise CodecUnavailableError(
            f"hevc unavailable: pillow-heif {ph.__version__} has no x265 HEVC encoder "
            f"(libheif_info: {info}); jpeg and webp still work"
        )


def hevc_heif_file(img: Image.Image, quality: int) -> bytes:
    """The HEIF file libheif/x265 writes for ``img`` at ``quality`` (0..100), 4:2:0."""
    ph = _pillow_heif()
    buf = io.BytesIO()
    ph.from_pillow(_as_rgb(img)).save(buf, quality=int(quality), chroma="420")
    return buf.getvalue()


def _boxes(data: bytes, start: int, end: int):
    """(type, offset, size) of the ISO-BMFF boxes in data[start:end] (32-bit sizes only)."""
    out, off = [], start
    while off + 8 <= end:
        size = int.from_bytes(data[off:off + 4], "big")
        if size < 8 or off + size > end:
            raise ValueError("unsupported or corrupt box layout")
        out.append((data[off + 4:off + 8].decode("latin-1"), off, size))
        off += size
    if off != end:
        raise ValueError("trailing bytes after the last box")
    return out


def _split_heif(data: bytes) -> Tuple[bytes, bytes, int]:
    """Split a single-item HEIF file into (container prefix, mdat payload, iloc length position).

    The prefix is everything up to and including the ``mdat`` box header; the
    position is where the item's 32-bit extent length sits inside the prefix.
    Raises ValueError on any layout this simple packager does not handle.
    """
    top = _boxes(data, 0, len(data))
    if not top or top[-1][0] != "mdat" or [t for t, _, _ in top].count("mdat") != 1:
        raise ValueError("expected exactly one mdat box, at the end")
    _, moff, _ = top[-1]
    meta = [(o, s) for t, o, s in top if t == "meta"]
    if len(meta) != 1:
        raise ValueError("expected one meta box")
    mo, ms = meta[0]
    iloc = [(o, s) for t, o, s in _boxes(data, mo + 12, mo + ms) if t == "iloc"]
    if len(iloc) != 1:
        raise ValueError("expected one iloc box")
    p = iloc[0][0] + 8
    version = data[p]
    p += 4
    offset_size, length_size = data[p] >> 4, data[p] & 15
    base_offset_size = data[p + 1] >> 4
    p += 2
    if version not in (0, 1) or length_size != 4:
        raise ValueError("unsupported iloc layout")
    item_count = int.from_bytes(data[p:p + 2], "big")
    p += 2
    if item_count != 1:
        raise ValueError("expected one item")
    p += 2  # item_ID
    if version == 1:
        p += 2  # construction_method
    p += 2  # data_reference_index
    base_offset = int.from_bytes(data[p:p + base_offset_size], "big") if base_offset_size else 0
    p += base_offset_size
    if int.from_bytes(data[p:p + 2], "big") != 1:
        raise ValueError("expected one extent")
    p += 2
    extent_offset = int.from_bytes(data[p:p + offset_size], "big") if offset_size else 0
    p += offset_size
    if base_offset + extent_offset != moff + 8:
        raise ValueError("item data does not start the mdat payload")
    if int.from_bytes(data[p:p + 4], "big") != len(data) - moff - 8:
        raise ValueError("item data does not fill the mdat payload")
    return data[:moff + 8], data[moff + 8:], p


@functools.lru_cache(maxsize=16)
def _hevc_template(width: int, height: int) -> Tuple[bytes, int]:
    grey = Image.new("RGB", (width, height), (128, 128, 128))
    prefix, _, length_pos = _split_heif(hevc_heif_file(grey, 0))
    return prefix, length_pos


def hevc_rebuild_heif(width: int, height: int, payload: bytes) -> bytes:
    """HEIF file for an mdat ``payload`` of a ``width`` x ``height`` picture, from the template."""
    prefix, length_pos = _hevc_template(int(width), int(height))
    mdat_start = len(prefix) - 8
    n = len(payload)
    out = bytearray(prefix)
    out[length_pos:length_pos + 4] = n.to_bytes(4, "big")
    out[mdat_start:mdat_start + 4] = (n + 8).to_bytes(4, "big")
    return bytes(out) + bytes(payload)


def _hevc_encode(img: Image.Image, quality: int) -> bytes:
    heif = hevc_heif_file(img, quality)
    w, h = img.size
    if _hevc_flat_size_ok(w, h):
        try:
            _, payload, _ = _split_heif(heif)
            if hevc_rebuild_heif(w, h, payload) == heif:
                return bytes([_HEVC_FLAT]) + w.to_bytes(2, "big") + h.to_bytes(2, "big") + payload
        except ValueError:
            pass
    return bytes([_HEVC_FULL]) + heif


def _hevc_to_heif(data: bytes) -> bytes:
    if len(data) < 1:
        raise ValueError("empty hevc bitstream")
    if data[0] == _HEVC_FLAT:
        if len(data) < 5:
            raise ValueError("truncated hevc bitstream header")
        w, h = int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:5], "big")
        if not _hevc_flat_size_ok(w, h):
            raise ValueError(
                f"hevc bitstream header gives a {w} x {h} picture; the BPG-like packaging carries "
                f"1 .. {HEVC_MAX_SIDE} pixels a side and at most {HEVC_MAX_PIXELS} pixels (HEVC level 6.2)"
            )
        return hevc_rebuild_heif(w, h, data[5:])
    if data[0] == _HEVC_FULL:
        return data[1:]
    raise ValueError(f"unknown hevc packaging tag 0x{data[0]:02x}")


def _hevc_decode(data: bytes) -> Image.Image:
    ph = _pillow_heif()
    heif = ph.open_heif(io.BytesIO(_hevc_to_heif(data)), convert_hdr_to_8bit=True)
    return heif.to_pillow().convert("RGB")


# --------------------------------------------------------------------------- #
# The interface
# --------------------------------------------------------------------------- #
def _is_integer(x) -> bool:
    """A Python or numpy integer, not a bool (``True`` is not quality 1)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class SourceCodec:
    """One source codec: quality range, encoder, decoder, availability check."""

    name: str
    q_min: int
    q_max: int
    description: str
    _encode: Callable[[Image.Image, int], bytes]
    _decode: Callable[[bytes], Image.Image]
    _check: Callable[[], None]

    def encode(self, img: Image.Image, quality: int) -> bytes:
        if not (_is_integer(quality) and self.q_min <= quality <= self.q_max):
            raise ValueError(
                f"{self.name} quality must be an integer in [{self.q_min}, {self.q_max}], got {quality!r}"
            )
        check_available(self.name)
        return self._encode(_as_rgb(img), int(quality))

    def decode(self, data: bytes) -> Image.Image:
        check_available(self.name)
        return self._decode(bytes(data))


_CODECS: Dict[str, SourceCodec] = {
    "hevc": SourceCodec(
        "hevc", 0, 100,
        "HEVC intra via x265 (pillow-heif/libheif), 4:2:0, BPG-like 5-byte packaging; stands in for BPG",
        _hevc_encode, _hevc_decode, _hevc_available,
    ),
    "jpeg": SourceCodec(
        "jpeg", 1, 95, "JPEG (Pillow/libjpeg), 4:2:0, optimised Huffman tables",
        _jpeg_encode, _pil_decode, _jpeg_available,
    ),
    "webp": SourceCodec(
        "webp", 0, 100, "WebP lossy (Pillow/libwebp), method 6",
        _webp_encode, _pil_decode, _webp_available,
    ),
}
CODECS: Tuple[str, ...] = tuple(_CODECS)


def get_codec(name: str) -> SourceCodec:
    """The codec called ``name``; ValueError listing the choices otherwise."""
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown source codec {name!r}; choose one of {', '.join(CODECS)}") from None


@functools.lru_cache(maxsize=None)
def _availability(name: str) -> str:
    try:
        _CODECS[name]._check()
    except CodecUnavailableError as exc:
        return str(exc)
    return ""


def check_available(name: str) -> None:
    """Raise :class:`CodecUnavailableError` (with the reason) if ``name`` cannot run here."""
    get_codec(name)
    msg = _availability(name)
    if msg:
        raise CodecUnavailableError(msg)


def encode(img: Image.Image, codec: str, quality: int) -> bytes:
    """Bitstream of ``img`` at ``quality`` (exactly what goes over the channel)."""
    return get_codec(codec).encode(img, quality)


def decode(data: bytes, codec: str) -> Image.Image:
    """RGB image decoded from a bitstream made by :func:`encode`."""
    return get_codec(codec).decode(data)


# bitstreams per (image content, size, codec) and quality, shared by every budget
_ENCODE_CACHE: "OrderedDict[tuple, Dict[int, bytes]]" = OrderedDict()
_ENCODE_CACHE_IMAGES = 8


def encode_to_budget(img: Image.Image, codec: str, max_bytes: int) -> Tuple[bytes, int, Image.Image]:
    """Highest-quality bitstream of ``img`` that fits ``max_bytes``.

    Binary search over the codec's integer quality range: the returned quality
    fits and quality + 1 does not (or it is the codec's maximum).  Sizes are
    very nearly, not strictly, monotone in quality, so "highest" means the
    bracket the search ends in.

    Returns ``(bitstream, quality, decoded RGB image)``.  Raises
    :class:`BudgetTooSmallError` when the lowest quality does not fit,
    :class:`CodecUnavailableError` when the codec cannot run here, and
    ValueError for an unknown codec name or a ``max_bytes`` that is not an
    integer.  Bitstreams are cached per (image
    content, codec, quality) for the last few images, so a sweep over SNRs
    and budgets encodes each quality of an image at most once.
    """
    spec = get_codec(codec)
    if not _is_integer(max_bytes):
        raise ValueError(f"max_bytes must be an integer number of bytes, got {max_bytes!r}")
    check_available(codec)
    rgb = _as_rgb(img)
    max_bytes = int(max_bytes)
    key = (hashlib.sha1(rgb.tobytes()).hexdigest(), rgb.size, codec)
    sizes = _ENCODE_CACHE.pop(key, None) or {}
    _ENCODE_CACHE[key] = sizes  # most recently used last
    while len(_ENCODE_CACHE) > _ENCODE_CACHE_IMAGES:
        _ENCODE_CACHE.popitem(last=False)

    def enc(q: int) -> bytes:
        if q not in sizes:
            sizes[q] = spec.encode(rgb, q)
        return sizes[q]

    lo, hi = spec.q_min, spec.q_max
    if len(enc(lo)) > max_bytes:
        raise BudgetTooSmallError(codec, max_bytes, len(enc(lo)), lo)
    if len(enc(hi)) <= max_bytes:
        lo = hi
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        if len(enc(mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid
    return enc(lo), lo, spec.decode(enc(lo))
