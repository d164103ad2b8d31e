"""The burst header: 52 bytes, CRC-32, rate-1/3 K=7 convolutional code, BPSK.

Byte layout (big-endian, ``HEADER_STRUCT``); the CRC-32 (zlib / IEEE 802.3
polynomial) covers bytes 0..47::

    off size field              off size field
      0  2   magic "GD"          21  2   image height
      2  1   version (6)         23  2   image width
      3  1   flags               25  1   k
      4  2   image_id            26  1   m_hint (0 = receiver default)
      6  2   chunk_index         27  2   T
      8  2   chunk_count         29  1   bit 0 forward (0 ddim, 1 random),
                                         bits 1-7 sender (0-127)
     10  4   total_symbols       30  2   guidance (IEEE float16)
     14  2   chunk_symbols       32  4   alpha (IEEE float32)
     16  1   latent C            36  2   model_hash (0 = not given)
                                 38  2   prompt_hash
     17  2   latent H            40  8   means: 4 x IEEE float16
     19  2   latent W            48  4   CRC-32

The 416 bits (MSB of byte 0 first) plus 6 zero tail bits are encoded at rate
1/3 (1266 coded bits) and sent as BPSK, each bit on the axis of a PRBS-15 QPSK
phase (``FrameLayout.header_whitening``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields
from typing import Tuple

import numpy as np

from . import conv

MAGIC = b"GD"
#: 4: the resync preamble before the header copy (docs/frame-format.md section 2); a
#: version-3 burst has the copy at another place, so it is refused, never misread.
#: 5: bytes 36-39, version 4's CRC-32 of the prompt, are the model's fingerprint and the
#: prompt's CRC-32 low 16 bits (which version 4 has at bytes 38-39): a version-4 burst is read,
#: its model unknown (``model_hash`` 0)
#: 6: byte 29's bits 1-7, unused by ``forward`` (0 or 1), are the transmitter's ``sender`` id: a
#: version 4 or 5 burst is read as sender 0
HEADER_VERSION = 6
READ_VERSIONS = (4, 5, 6)
#: senders a header can name (byte 29's seven high bits)
SENDERS = 128
#: channel-mean slots in the header (float16 each; SD's latent has 4 channels)
MEAN_SLOTS = 4
#: ``flags`` bits (docs/rate.md): bits 0-3 log2 of the latent reduction, bit 4 pool, bit 5 channel means
#: removed, bit 6 dct (neither pool nor dct: subset); bit 7 (the PHY's, set by FrameTx): the payload is
#: not scrambled (``FrameConfig.scramble`` off), which the receiver follows
REDUCE_LOG2_MASK, REDUCE_POOL_FLAG, MEANS_FLAG, REDUCE_DCT_FLAG = 0x0F, 0x10, 0x20, 0x40
PLAIN_FLAG = 0x80
#: magic, version, flags, image_id, chunk_index, chunk_count, total_symbols, chunk_symbols,
#: latent C, latent H, latent W, image h, image w, k, m_hint, T, forward | sender << 1, guidance, alpha, model_hash,
#: prompt_hash, means
HEADER_STRUCT = struct.Struct(">2sBBHHHIHBHHHHBBHBefHH" + "e" * MEAN_SLOTS)
CRC_BYTES = 4
HEADER_BYTES = HEADER_STRUCT.size + CRC_BYTES
HEADER_BITS = 8 * HEADER_BYTES
HEADER_CODED_BITS = conv.coded_length(HEADER_BITS)
#: Interleaver of the coded header: on-air symbol k carries coded bit k * HEADER_STRIDE mod
#: HEADER_CODED_BITS (a stride near the golden section of the length, coprime with it: any 50
#: consecutive symbols carry coded bits at least 23 apart), so that a fade over a stretch of
#: the header leaves scattered weak bits the Viterbi decoder corrects, not one erased run.
HEADER_STRIDE = 785
HEADER_ORDER = np.arange(HEADER_CODED_BITS) * HEADER_STRIDE % HEADER_CODED_BITS
assert len(set(HEADER_ORDER.tolist())) == HEADER_CODED_BITS
FORWARD_DDIM, FORWARD_RANDOM = 0, 1

_RANGES = dict(version=8, flags=8, image_id=16, chunk_index=16, chunk_count=16, total_symbols=32,
               chunk_symbols=16, k=8, m_hint=8, T=16, forward=1, sender=7, model_hash=16, prompt_hash=16)


def fits_float16(values) -> bool:
    """Whether every value is finite as an IEEE float16 (the header's means and guidance)."""
    with np.errstate(over="ignore"):
        return bool(np.all(np.isfinite(np.asarray(values, np.float64).astype(np.float16))))


class HeaderError(ValueError):
    """A header that cannot be used.  ``reason`` is one of ``length``, ``magic``,
    ``crc``, ``version``, ``field``."""

    def __init__(self, message: str, reason: str = "field"):
        super().__init__(message)
        self.reason = reason


@dataclass
class Header:
    """Everything the receiver needs about one burst and its image.

    Attributes:
        version: format version (``HEADER_VERSION``).
        image_id: uint16, same for every chunk of an image.
        chunk_index, chunk_count: uint16, this chunk and the chunks of the image.
        total_symbols: uint32, latent symbols of the whole image.
        chunk_symbols: uint16, latent symbols in this burst.
        latent_shape: (C, H, W) of the latent (C uint8, H/W uint16).
        image_size: (height, width) of the original image, pixels (uint16).
        k: DDIM-inversion steps at the transmitter (uint8).
        m_hint: receiver inversion steps suggested by the transmitter (0 = receiver default).
        T: DDIM grid size (uint16).
        forward: 0 = DDIM inversion, 1 = random forward noise.
        sender: 0-127, the transmitter's id (version 6; 0 in an older burst): the receiver
            reassembles each sender's images apart, so transmitters that share a channel do
            not split each other's images.
        guidance: classifier-free guidance scale (sent as float16).
        alpha: power-normalisation factor (float32).
        model_hash: uint16, the transmitter's model fingerprint
            (:func:`gr_gdmcom.codec.models.model_fingerprint`; 0 = not given, no check).
        prompt_hash: uint16, the CRC-32 of the prompt text's low 16 bits
            (:func:`gr_gdmcom.codec.prompt_hash`).
        flags: uint8: bits 0-3 log2 of the latent reduction, bit 4 pool, bit 5 channel
            means removed, bit 6 dct (docs/rate.md, ``pipeline.header_flags``); 0 for the paper's
            signal; bit 7 payload not scrambled (set by :class:`FrameTx` from its config).
        means: up to ``MEAN_SLOTS`` removed channel means of the latent (float16 each, the
            unused slots sent as 0); unpacked as ``MEAN_SLOTS`` values.
    """

    image_id: int = 0
    chunk_index: int = 0
    chunk_count: int = 1
    total_symbols: int = 0
    chunk_symbols: int = 0
    latent_shape: Tuple[int, int, int] = (4, 64, 64)
    image_size: Tuple[int, int] = (512, 512)
    k: int = 5
    m_hint: int = 0
    T: int = 50
    forward: int = FORWARD_DDIM
    sender: int = 0
    guidance: float = 6.0
    alpha: float = 1.0
    prompt_hash: int = 0
    model_hash: int = 0
    flags: int = 0
    means: Tuple[float, ...] = ()
    version: int = HEADER_VERSION

    def _values(self) -> tuple:
        old = self.version < 6  # (a version 4 or 5 header, as tests pack one: forward a byte, no sender)
        for name, nbits in _RANGES.items():
            v = getattr(self, name)
            if old and name in ("forward", "sender"):
                nbits = 8 if name == "forward" else 0
            if not isinstance(v, (int, np.integer)) or not 0 <= int(v) < (1 << nbits):
                if name == "sender" and old:
                    raise HeaderError(f"header field sender={v!r}: a version-{self.version} header has no sender "
                                      f"(0 only; version 6 carries 0..{SENDERS - 1})")
                if name == "sender":
                    raise HeaderError(f"header field sender={v!r} is not in 0..{SENDERS - 1}")
                raise HeaderError(f"header field {name}={v!r} is not a uint{nbits}")
        shape, size = tuple(self.latent_shape), tuple(self.image_size)
        if len(shape) != 3 or not 0 <= shape[0] < 256 or not all(0 <= int(v) < 65536 for v in shape[1:]):
            raise HeaderError(f"latent_shape {shape!r} must be (C < 256, H < 65536, W < 65536)")
        if len(size) != 2 or not all(0 <= int(v) < 65536 for v in size):
            raise HeaderError(f"image_size {size!r} must be (height, width), each < 65536")
        if not np.isfinite(self.alpha) or not fits_float16([self.guidance]):  # (no numpy overflow warning)
            raise HeaderError(f"alpha={self.alpha!r} and guidance={self.guidance!r} must be finite (guidance in float16)")
        means = [float(v) for v in self.means]
        if len(means) > MEAN_SLOTS or not fits_float16(means):
            raise HeaderError(f"means {tuple(self.means)!r} must be at most {MEAN_SLOTS} values finite in float16")
        return (MAGIC, self.version, self.flags, self.image_id, self.chunk_index, self.chunk_count,
                self.total_symbols, self.chunk_symbols, *map(int, shape), *map(int, size), self.k, self.m_hint,
                self.T, int(self.forward) | int(self.sender) << 1, float(self.guidance), float(self.alpha),
                self.model_hash, self.prompt_hash, *means, *[0.0] * (MEAN_SLOTS - len(means)))

    def pack(self) -> bytes:
        """Serialise: ``HEADER_BYTES`` bytes (fields, then CRC-32 big-endian).

        Raises:
            HeaderError: a field does not fit its type.
        """
        body = HEADER_STRUCT.pack(*self._values())
        return body + struct.pack(">I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> "Header":
        """Parse and check ``HEADER_BYTES`` bytes.

        Raises:
            HeaderError: wrong length, bad magic, CRC mismatch, unsupported version
            (``reason`` says which) or a non-finite alpha, guidance or mean (``field``).
        """
        data = bytes(data)
        if len(data) != HEADER_BYTES:
            raise HeaderError(f"header must be {HEADER_BYTES} bytes, got {len(data)}", "length")
        body, (crc,) = data[:-CRC_BYTES], struct.unpack(">I", data[-CRC_BYTES:])
        if body[:2] != MAGIC:
            raise HeaderError(f"bad header magic {body[:2]!r} (expected {MAGIC!r})", "magic")
        if zlib.crc32(body) != crc:
            raise HeaderError(f"header CRC-32 mismatch (computed 0x{zlib.crc32(body):08x}, "
                              f"received 0x{crc:08x})", "crc")
        v = HEADER_STRUCT.unpack(body)
        if v[1] not in READ_VERSIONS:
            raise HeaderError(f"unsupported header version {v[1]} (this receiver reads "
                              f"{', '.join(map(str, READ_VERSIONS))})", "version")
        h = cls(version=v[1], flags=v[2], image_id=v[3], chunk_index=v[4], chunk_count=v[5],
                   total_symbols=v[6], chunk_symbols=v[7], latent_shape=tuple(v[8:11]),
                   image_size=tuple(v[11:13]), k=v[13], m_hint=v[14], T=v[15],
                   forward=v[16] & 1 if v[1] >= 6 else v[16], sender=v[16] >> 1 if v[1] >= 6 else 0,
                   guidance=float(v[17]), alpha=float(v[18]), model_hash=v[19] if v[1] >= 5 else 0,
                   prompt_hash=v[20], means=tuple(float(x) for x in v[21:21 + MEAN_SLOTS]))
        if not np.all(np.isfinite([h.alpha, h.guidance, *h.means])):
            raise HeaderError(f"non-finite header values: alpha={h.alpha!r}, guidance={h.guidance!r}, "
                              f"means={h.means!r}")
        return h

    def replace(self, **changes) -> "Header":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(changes)
        return Header(**kw)


def header_bits(data: bytes) -> np.ndarray:
    """Header bytes -> bits uint8 (HEADER_BITS,), MSB first."""
    return np.unpackbits(np.frombuffer(bytes(data), np.uint8))


def encode_header(data: bytes, whitening: np.ndarray) -> np.ndarray:
    """Header bytes -> symbols complex64 (HEADER_CODED_BITS,): symbol k is coded bit
    c = c_{HEADER_ORDER[k]} sent as (1 - 2 c) whitening[k] (interleaved BPSK on the
    PN-rotated axis whitening[k])."""
    if len(data) != HEADER_BYTES:
        raise HeaderError(f"header must be {HEADER_BYTES} bytes, got {len(data)}", "length")
    return ((1.0 - 2.0 * conv.encode(header_bits(data))[HEADER_ORDER]) * whitening).astype(np.complex64)


def decode_headers(symbols: np.ndarray, whitening: np.ndarray) -> list:
    """Batch-decode received header symbols (exact ML: hard decisions when they
    already form a codeword, the Viterbi decoder for the others).

    Args:
        symbols: complex (B, HEADER_CODED_BITS) or (HEADER_CODED_BITS,), equalised,
            phase-corrected header symbols.
        whitening: complex (HEADER_CODED_BITS,), the PN axis of each symbol.
    Returns:
        list of B bytes objects (HEADER_BYTES each; CRC not yet checked).
    """
    soft = np.empty((np.atleast_2d(symbols).shape[0], HEADER_CODED_BITS), np.float32)
    soft[:, HEADER_ORDER] = np.atleast_2d((np.asarray(symbols) * np.conj(whitening)).real)  # de-interleaved
    bits = [conv.decode_hard(row) for row in soft]
    todo = [i for i, b in enumerate(bits) if b is None]
    if todo:
        for i, b in zip(todo, conv.viterbi(soft[todo])):
            bits[i] = b
    return [np.packbits(b).tobytes() for b in bits]
