"""Header packing, CRC and the rate-1/3 K=7 code (gr_gdmcom.phy.header / .conv)."""

import struct
import zlib

import numpy as np
import pytest

from gr_gdmcom.phy import HEADER_BYTES, HEADER_CODED_BITS, Header, HeaderError
from gr_gdmcom.phy import conv
from gr_gdmcom.phy.frame import FrameConfig
from gr_gdmcom.phy.header import decode_headers, encode_header

FULL = Header(image_id=65535, chunk_index=3, chunk_count=7, total_symbols=2 ** 32 - 1, chunk_symbols=65535,
              latent_shape=(4, 96, 128), image_size=(768, 1024), k=5, m_hint=7, T=1000, forward=1, sender=93, guidance=6.5,
              alpha=1.2345678, prompt_hash=0xBEEF, model_hash=0xCAFE, flags=0x81, means=(-2.23, 0.5, -1.25, 1e-3))


def test_pack_roundtrip_and_size():
    data = FULL.pack()
    assert len(data) == HEADER_BYTES == 52
    got = Header.unpack(data)
    for name in ("image_id", "chunk_index", "chunk_count", "total_symbols", "chunk_symbols", "latent_shape",
                 "image_size", "k", "m_hint", "T", "forward", "sender", "prompt_hash", "model_hash", "flags", "version"):
        assert getattr(got, name) == getattr(FULL, name), name
    assert got.guidance == 6.5  # exact in float16
    assert got.alpha == pytest.approx(1.2345678, rel=1e-7)  # float32
    # float16 means: exact where float16 is, else its nearest value (11 significant bits)
    assert got.means == (float(np.float16(-2.23)), 0.5, -1.25, float(np.float16(1e-3)))
    assert abs(got.means[0] + 2.23) <= 2.23 * 2 ** -11 and got.means[0] != -2.23
    assert Header.unpack(FULL.replace(means=(0.75,)).pack()).means == (0.75, 0.0, 0.0, 0.0)  # unused slots: 0
    assert data[:2] == b"GD"


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d[:-1], "length"),
    (lambda d: b"XX" + d[2:], "magic"),
    (lambda d: d[:10] + bytes([d[10] ^ 0x01]) + d[11:], "crc"),
])
def test_unpack_errors(mutate, reason):
    with pytest.raises(HeaderError) as exc:
        Header.unpack(mutate(FULL.pack()))
    assert exc.value.reason == reason
    assert str(exc.value)  # a readable message


def test_a_version_4_header_is_read_with_its_model_unknown():
    """Version 4 had the prompt's full CRC-32 at bytes 36-39; version 5 has the model's
    fingerprint at 36-37 and the CRC's low 16 bits at 38-39, where version 4 has them too: a
    version-4 burst (a capture recorded before) decodes, its model not checked (0)."""
    body = bytearray(FULL.pack()[:-4])
    assert body[2] == 6 and struct.unpack(">HH", bytes(body[36:40])) == (0xCAFE, 0xBEEF)
    assert body[29] == 1 | 93 << 1  # forward | sender << 1
    body[2], body[29] = 4, 1  # (version 4 and 5: byte 29 is forward)
    got = Header.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))
    assert (got.version, got.forward, got.sender, got.model_hash) == (4, 1, 0, 0)
    body[36:40] = struct.pack(">I", 0x1234BEEF)  # version 4's 32-bit prompt CRC
    got = Header.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))
    assert (got.version, got.prompt_hash, got.model_hash) == (4, 0xBEEF, 0)
    body[2] = 3
    with pytest.raises(HeaderError, match="unsupported header version 3 \\(this receiver reads 4, 5, 6\\)"):
        Header.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))


def test_a_version_5_header_is_read_as_sender_0():
    """Version 6 put the sender in byte 29's seven bits above ``forward``; a version-5 burst (its
    byte 29 forward, 0 or 1) is read as sender 0, and a version-5 header cannot name one."""
    body = bytearray(FULL.pack()[:-4])
    body[2], body[29] = 5, 1
    got = Header.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))
    assert (got.version, got.forward, got.sender, got.model_hash, got.k) == (5, 1, 0, 0xCAFE, 5)
    assert Header.unpack(FULL.replace(version=5, sender=0).pack()).sender == 0
    with pytest.raises(HeaderError, match=r"^header field sender=93: a version-5 header has no sender \(0 only; "
                                          r"version 6 carries 0\.\.127\)$"):
        FULL.replace(version=5).pack()
    for bad in (128, -1):
        with pytest.raises(HeaderError, match=rf"^header field sender={bad} is not in 0\.\.127$"):
            FULL.replace(sender=bad).pack()
    with pytest.raises(HeaderError, match=r"^header field forward=2 is not a uint1$"):
        FULL.replace(forward=2).pack()  # (it would have been read as sender 1)
    for sender in (0, 1, 64, 127):
        for forward in (0, 1):
            got = Header.unpack(FULL.replace(sender=sender, forward=forward).pack())
            assert (got.sender, got.forward) == (sender, forward)


def test_unsupported_version_is_reported():
    body = bytearray(FULL.pack()[:-4])
    body[2] = 9
    with pytest.raises(HeaderError, match="version 9") as exc:
        Header.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))
    assert exc.value.reason == "version"


@pytest.mark.parametrize("field, value", [("image_id", 70000), ("chunk_symbols", -1), ("k", 300),
                                          ("prompt_hash", 0x10000), ("model_hash", -1),
                                          ("latent_shape", (4, 64)), ("alpha", float("nan")),
                                          ("means", (0.0, float("inf"))), ("means", (70000.0,)),
                                          ("means", (0.0,) * 5)])
def test_pack_rejects_out_of_range(field, value):
    with pytest.raises(HeaderError):
        FULL.replace(**{field: value}).pack()


@pytest.mark.parametrize("slot, value", [(0, float("nan")), (3, float("-inf"))])
def test_unpack_refuses_non_finite_means(slot, value):
    """A header with a valid CRC but a non-finite mean (a faulty transmitter) is refused as ``field``."""
    body = bytearray(FULL.pack()[:-4])
    off = 40 + 2 * slot  # the means: four big-endian float16 from byte 40
    body[off:off + 2] = struct.pack(">e", value)
    with pytest.raises(HeaderError, match="non-finite header values") as exc:
        Header.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))
    assert exc.value.reason == "field"


def test_code_roundtrip_and_hard_shortcut(rng):
    bits = rng.integers(0, 2, 416).astype(np.uint8)
    coded = conv.encode(bits)
    assert len(coded) == conv.coded_length(416) == HEADER_CODED_BITS == 1266
    soft = 1.0 - 2.0 * coded
    np.testing.assert_array_equal(conv.viterbi(soft), bits)
    np.testing.assert_array_equal(conv.decode_hard(soft), bits)
    soft[17] *= -0.1  # one wrong hard decision: not a codeword, Viterbi corrects it
    assert conv.decode_hard(soft) is None
    np.testing.assert_array_equal(conv.viterbi(soft), bits)
    # odd and short lengths, batches of any size decode like single words
    for n in (1, 9, 101):
        b = rng.integers(0, 2, (5, n)).astype(np.uint8)
        y = np.stack([1.0 - 2.0 * conv.encode(r) for r in b]) + 0.6 * rng.standard_normal((5, 3 * (n + 6)))
        np.testing.assert_array_equal(conv.viterbi(y), np.stack([conv.viterbi(r) for r in y]))
    with pytest.raises(ValueError):
        conv.viterbi(np.zeros(10))


def test_header_failure_rate_at_0db_below_1e3(rng):
    """BPSK over AWGN at Es/N0 = 0 dB (sps = 1, perfect sync): <= 1e-3 header failures."""
    wh = FrameConfig().layout().header_whitening
    n = 2000
    heads = [FULL.replace(image_id=int(i), alpha=float(rng.uniform(0.5, 2))) for i in rng.integers(0, 65535, n)]
    tx = np.stack([encode_header(h.pack(), wh) for h in heads])
    rx = tx + np.sqrt(0.5) * (rng.standard_normal(tx.shape) + 1j * rng.standard_normal(tx.shape))  # CN(0, 1)
    fails = sum(1 for h, d in zip(heads, decode_headers(rx, wh)) if d != h.pack())
    assert fails <= n * 1e-3


def test_the_interleaved_header_survives_a_fade_over_a_third_of_it(rng):
    """On air, header symbol k carries coded bit 785 k mod 1266.  A contiguous third of the
    symbols in a deep fade (their maximum-ratio soft values ~0) and the rest at 3 dB decodes
    at every place of the fade; the same erasure on the coded bits in their own order (what
    an interleaver-free header suffered) loses the header at most places."""
    wh = FrameConfig().layout().header_whitening
    coded = conv.encode(np.unpackbits(np.frombuffer(FULL.pack(), np.uint8)))
    sent = encode_header(FULL.pack(), wh)
    np.testing.assert_array_equal((sent * np.conj(wh)).real < 0, coded[np.arange(1266) * 785 % 1266].astype(bool))
    n, run, plain_ok = 1266, 422, 0
    for start in range(0, n - run, 40):
        noise = np.sqrt(0.25) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))  # 3 dB
        gain = np.ones(n)
        gain[start: start + run] = 1e-3
        rx = (sent * gain + noise) * gain  # received, weighted by its gain
        assert decode_headers(rx, wh)[0] == FULL.pack(), start
        plain = ((1.0 - 2.0 * coded) * gain + noise.real) * gain
        plain_ok += np.array_equal(conv.viterbi(plain), np.unpackbits(np.frombuffer(FULL.pack(), np.uint8)))
    assert plain_ok <= 6, plain_ok  # 0 of 22 measured
