"""Digital baseline: separate source and channel coding at the semantic codec's budget.

The chain (one image, one channel realisation)::

    image --source codec (hevc | jpeg | webp), best quality that fits-->
    [length | bitstream | zero padding] = transport block (A bits)
    --CRC24A--> segmentation (+CRC24B per code block when C > 1)
    --5G NR LDPC (py3gpp), rate matching to G = n_symbols * Qm bits-->
    --scrambling (38.211 Gold sequence)--> Gray QAM (38.211 5.1) -->
    AWGN  y = x + w,  w ~ CN(0, N0),  N0 = 10**(-snr_db/10)  (Es = 1)
    --max-log LLRs--> descrambling, rate recovery --> layered normalised
    min-sum LDPC decoding --> desegmentation --> CRC24A check
    --> source decoder, or a mid-grey image when anything failed.

Budget: the chain gets ``n_symbols`` complex channel uses (the semantic
codec's symbol count, e.g. 3*H*W/96 for BCR 1/96) and uses all of them.  An
MCS (modulation with Qm bits per symbol, code rate R) gives
``G = n_symbols * Qm`` coded bits and a transport block of
``A = 8 * floor((R*G - 24 - 24*C') / 8)`` bits (``C'`` = number of code
blocks when more than one, each carrying a CRC24B); 2 bytes of A (4 when
A/8 > 65537) hold the bitstream length, the rest is the source-codec budget.

SNR is Es/N0 per complex symbol with unit symbol energy -- the same
definition as the semantic link (docs/frame-format.md, docs/codec.md).

Link adaptation: ``mcs="adaptive"`` takes the MCS of highest spectral
efficiency whose threshold (SNR for BLER <= 10 %, :data:`MCS_TABLE`) is at
or below the SNR; below every threshold it sends with the most robust MCS
anyway and lets the channel decide.  A fixed MCS is given by name, e.g.
``"16qam-3/4"``.

Notes on fidelity (also in each result's ``fidelity_note``):

* HEVC intra via x265 (pillow-heif) stands in for BPG; BPG's core is HEVC
  intra, and the bitstream is sent with a BPG-like 5-byte header
  (:mod:`gr_gdmcom.eval.source_codecs`).
* py3gpp's LDPC encoder mis-sizes base graph 2 when the code block is short
  (Kb < 10, i.e. B <= 640 bits): it crashes there, so such tiny transport
  blocks use base graph 1 (only relevant below ~80 bytes, where no image
  codec fits anyway).  py3gpp's ``nrRateRecoverLDPC`` is not used: it
  re-derives the segmentation with the 38.212 CRC rule (CRC16 for
  A <= 3824) while this chain always uses CRC24A, so for small blocks it
  would split the codeword wrongly.  Rate recovery here is the exact inverse
  of py3gpp's ``nrRateMatchLDPC``, found by rate-matching the bit indices;
  filler bits get a large finite LLR (py3gpp uses ``inf``).
* CRCs and code-block segmentation are done here byte-wise (:func:`crc_bits`)
  because py3gpp's bit-by-bit Python loop took 2/3 of a call for large
  images; both are tested bit-identical to ``nrCRCEncode``,
  ``nrCodeBlockSegmentLDPC`` and ``nrCodeBlockDesegmentLDPC``.  LDPC
  encoding and rate matching are py3gpp's own.
* Decoding is py3gpp's layered normalised min-sum (scaling 0.75),
  re-written vectorised over the lifting size and the code blocks with an
  early stop when all parity checks hold (:func:`ldpc_decode`; its output is
  bit-identical to ``py3gpp.nrLDPCDecode`` for the same iterations, tested,
  except that py3gpp drops the messages of edges whose base-graph shift is
  Zc + 1 -- its ``_mul_sh`` takes the column-alignment shift Zc - V = -1 for
  "no edge" -- which affects e.g. Zc = 72; here those edges work).
  py3gpp's own decoder always runs every iteration and is about 7x slower;
  ``decoder="py3gpp"`` still selects it.  20 iterations at most: 10 cost
  about 0.4 dB at BLER 10 %, 40 gain about 0.2 dB more (QPSK 1/2, 2048
  symbols).
* Min-sum decoding is invariant to the LLR scale, so the noise variance the
  demapper uses (the true N0 here) has no effect on the result.

This module imports numpy, PIL and (lazily) py3gpp / pillow-heif only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from gr_gdmcom.eval import source_codecs as sc

__all__ = [
    "MODULATIONS",
    "MCS",
    "MCS_TABLE",
    "MCS_NAMES",
    "DEFAULT_LDPC_ITERATIONS",
    "DigitalResult",
    "TransportBlock",
    "get_mcs",
    "select_mcs",
    "transport_block",
    "payload_budget",
    "modulate",
    "demodulate_maxlog",
    "awgn",
    "encode_transport_block",
    "decode_transport_block",
    "ldpc_decode",
    "crc_bits",
    "run_digital",
    "simulate_bler",
    "calibrate_thresholds",
]

#: bits per complex symbol
MODULATIONS: Dict[str, int] = {"BPSK": 1, "QPSK": 2, "16QAM": 4, "64QAM": 6}

DEFAULT_LDPC_ITERATIONS = 20
LDPC_SCALING = 0.75  # normalised min-sum
TB_CRC = "24A"
TB_CRC_BITS = 24
CB_CRC_BITS = 24
SCRAMBLING_CINIT = 0x5A5A  # 38.211 7.3.1.1 style c_init; any fixed value works
GREY = (128, 128, 128)
_FILLER_LLR = 1e6  # known-zero filler bits
_LLR_CLIP = 1e4


def _py3gpp():
    try:
        import py3gpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the digital baseline needs py3gpp: pip install 'gr-gdmcom[eval]'") from exc
    return py3gpp


# --------------------------------------------------------------------------- #
# MCS table
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class MCS:
    """Modulation and coding scheme.

    ``threshold_db``: Es/N0 (dB) at which the transport-block error rate
    falls to 10 % or less (see :data:`MCS_TABLE` for how it was measured).
    """

    name: str
    modulation: str
    rate: Fraction
    threshold_db: float

    @property
    def bits_per_symbol(self) -> int:
        return MODULATIONS[self.modulation]

    @property
    def code_rate(self) -> float:
        return float(self.rate)

    @property
    def spectral_efficiency(self) -> float:
        """Information bits per complex channel use (before CRC/length overhead)."""
        return self.bits_per_symbol * self.code_rate


# Thresholds (last column): lowest Es/N0 on a 0.25 dB grid at which at most
# 10 of 100 random transport blocks fail the CRC (a point is abandoned after
# 11 failures), AWGN, n_symbols = 2048 (a 256 x 256 image at BCR 1/96), at
# most 20 layered normalised min-sum iterations, search started at the AWGN
# capacity limit of the effective rate.  They sit 1.2 (QPSK 1/2) to 2.6 dB
# (64QAM 9/10) above that limit.  Shorter blocks need a little more SNR,
# longer ones a little less.  Regenerated (354 s on 2 cores) by
#   .venv/bin/python -m gr_gdmcom.eval.digital calibrate --n-symbols 2048 --trials 100 --jobs 2
_MCS_ROWS: Tuple[Tuple[str, str, Fraction, float], ...] = (
    ("bpsk-1/5", "BPSK", Fraction(1, 5), -6.0),
    ("bpsk-1/3", "BPSK", Fraction(1, 3), -3.75),
    ("bpsk-1/2", "BPSK", Fraction(1, 2), -1.75),
    ("qpsk-1/3", "QPSK", Fraction(1, 3), -0.75),
    ("qpsk-1/2", "QPSK", Fraction(1, 2), 1.25),
    ("qpsk-2/3", "QPSK", Fraction(2, 3), 3.25),
    ("qpsk-3/4", "QPSK", Fraction(3, 4), 4.25),
    ("16qam-1/2", "16QAM", Fraction(1, 2), 6.5),
    ("16qam-2/3", "16QAM", Fraction(2, 3), 9.0),
    ("16qam-3/4", "16QAM", Fraction(3, 4), 10.25),
    ("64qam-2/3", "64QAM", Fraction(2, 3), 13.75),
    ("64qam-3/4", "64QAM", Fraction(3, 4), 15.5),
    ("64qam-5/6", "64QAM", Fraction(5, 6), 17.0),
    ("64qam-9/10", "64QAM", Fraction(9, 10), 18.75),
)
#: the MCS ladder, most robust first (increasing spectral efficiency)
MCS_TABLE: Tuple[MCS, ...] = tuple(
    sorted((MCS(*row) for row in _MCS_ROWS), key=lambda m: m.spectral_efficiency)
)
MCS_NAMES: Tuple[str, ...] = tuple(m.name for m in MCS_TABLE)
_MCS_BY_NAME = {m.name: m for m in MCS_TABLE}


def get_mcs(name: str) -> MCS:
    """The MCS called ``name`` (e.g. ``"16qam-3/4"``); ValueError listing the choices."""
    try:
        return _MCS_BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown MCS {name!r}; choose 'adaptive' or one of {', '.join(MCS_NAMES)}"
        ) from None


def select_mcs(snr_db: float) -> MCS:
    """Link adaptation: highest spectral efficiency with threshold <= ``snr_db``.

    Below every threshold, the most robust MCS (the channel will decide).
    """
    ok = [m for m in MCS_TABLE if m.threshold_db <= snr_db]
    return max(ok, key=lambda m: m.spectral_efficiency) if ok else MCS_TABLE[0]


# --------------------------------------------------------------------------- #
# Modulation (38.211 5.1, Gray, unit average energy) and max-log demapping
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=None)
def _constellation(modulation: str) -> Tuple[np.ndarray, np.ndarray]:
    """(points[M], bits[M, Qm]) with point index = bits read MSB first (b0 first)."""
    qm = MODULATIONS[modulation]
    idx = np.arange(2 ** qm)
    bits = (idx[:, None] >> np.arange(qm - 1, -1, -1)[None, :]) & 1
    s = 1 - 2 * bits.astype(np.float64)  # 0 -> +1, 1 -> -1
    if modulation == "BPSK":
        pts = (s[:, 0] + 1j * s[:, 0]) / np.sqrt(2)
    elif modulation == "QPSK":
        pts = (s[:, 0] + 1j * s[:, 1]) / np.sqrt(2)
    elif modulation == "16QAM":
        pts = (s[:, 0] * (2 - s[:, 2]) + 1j * s[:, 1] * (2 - s[:, 3])) / np.sqrt(10)
    else:  # 64QAM
        pts = (s[:, 0] * (4 - s[:, 2] * (2 - s[:, 4])) + 1j * s[:, 1] * (4 - s[:, 3] * (2 - s[:, 5]))) / np.sqrt(42)
    return pts, bits.astype(bool)


def _check_modulation(modulation: str) -> None:
    if modulation not in MODULATIONS:
        raise ValueError(f"unknown modulation {modulation!r}; choose one of {', '.join(MODULATIONS)}")


def modulate(bits: np.ndarray, modulation: str) -> np.ndarray:
    """Map bits (0/1, length a multiple of Qm) to complex128 symbols, 38.211 5.1."""
    _check_modulation(modulation)
    qm = MODULATIONS[modulation]
    b = np.asarray(bits, dtype=np.int64).reshape(-1, qm)
    pts, _ = _constellation(modulation)
    return pts[b @ (1 << np.arange(qm - 1, -1, -1))]


def demodulate_maxlog(y: np.ndarray, modulation: str, noise_var: float) -> np.ndarray:
    """Max-log LLRs, log P(b=0)/P(b=1) (positive means 0), Qm per symbol, float64.

    ``LLR_k = (min_{s: b_k=1} |y-s|^2 - min_{s: b_k=0} |y-s|^2) / noise_var``
    with ``noise_var`` the complex noise variance N0.
    """
    _check_modulation(modulation)
    pts, bits = _constellation(modulation)
    y = np.asarray(y, dtype=np.complex128).ravel()
    qm = bits.shape[1]
    out = np.empty((y.size, qm))
    for a in range(0, y.size, 32768):
        d2 = np.abs(y[a:a + 32768, None] - pts[None, :]) ** 2
        for k in range(qm):
            out[a:a + 32768, k] = d2[:, bits[:, k]].min(axis=1) - d2[:, ~bits[:, k]].min(axis=1)
    return (out / float(noise_var)).ravel()


def awgn(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> Tuple[np.ndarray, float]:
    """``x + w``, ``w ~ CN(0, N0)``, ``N0 = 10**(-snr_db/10)``; returns (y, N0)."""
    n0 = 10.0 ** (-float(snr_db) / 10.0)
    w = rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape)
    return x + np.sqrt(n0 / 2.0) * w, n0


# --------------------------------------------------------------------------- #
# Transport block: sizes, LDPC encode / decode
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class TransportBlock:
    """Sizes of one transport block for ``n_symbols`` channel uses at an MCS.

    ``tbs``: A, information bits (multiple of 8); ``G``: coded bits sent;
    ``bgn``: LDPC base graph; ``C``: code blocks; ``K``: bits per code block
    with fillers; ``F``: filler bits per block; ``Zc``: lifting size;
    ``N``: LDPC codeword bits per block (after puncturing 2*Zc);
    ``header_bytes``: length field; ``payload_bytes``: source-codec budget.
    """

    n_symbols: int
    mcs: MCS
    tbs: int
    G: int
    bgn: int
    C: int
    K: int
    F: int
    Zc: int
    N: int
    header_bytes: int
    payload_bytes: int

    @property
    def effective_rate(self) -> float:
        """(A + CRCs) / G: the code rate actually used (at most the MCS rate)."""
        return (self.tbs + TB_CRC_BITS + (CB_CRC_BITS * self.C if self.C > 1 else 0)) / self.G


def _base_graph(A: int, rate: float) -> int:
    from py3gpp.nrDLSCHInfo import getBGNInfo

    bgn = getBGNInfo(A, rate)["BGN"]
    # py3gpp's nrLDPCEncode needs Kb = 10 on base graph 2 (B > 640 bits)
    return 1 if A + TB_CRC_BITS <= 640 else bgn


@functools.lru_cache(maxsize=256)
def transport_block(n_symbols: int, mcs: Union[str, MCS]) -> TransportBlock:
    """Transport-block layout for ``n_symbols`` complex channel uses at ``mcs``.

    Raises ValueError when not even the CRC fits.
    """
    _py3gpp()
    from py3gpp.nrDLSCHInfo import getCBSInfo

    m = get_mcs(mcs) if isinstance(mcs, str) else mcs
    n_symbols = int(n_symbols)
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
    G = n_symbols * m.bits_per_symbol
    info = math.floor(G * m.rate)  # exact: rate is a Fraction
    A = 8 * ((info - TB_CRC_BITS) // 8)
    while A >= 8:
        bgn = _base_graph(A, m.code_rate)
        cbs = getCBSInfo(A + TB_CRC_BITS, bgn)
        C = int(cbs["C"])
        if A + TB_CRC_BITS + (CB_CRC_BITS * C if C > 1 else 0) <= info:
            break
        A -= 8
    if A < 24:
        raise ValueError(f"{n_symbols} symbols at {m.name} carry no transport block ({info} bits for CRC and data)")
    Zc, K = int(cbs["Zc"]), int(cbs["K"])
    N = (66 if bgn == 1 else 50) * Zc
    header = 2 if A // 8 - 2 <= 0xFFFF else 4
    return TransportBlock(n_symbols, m, A, G, bgn, C, K, int(cbs["F"]), Zc, N, header, A // 8 - header)


def payload_budget(n_symbols: int, mcs: Union[str, MCS]) -> int:
    """Bytes the source codec may use for ``n_symbols`` channel uses at ``mcs`` (0 if none)."""
    try:
        return transport_block(n_symbols, mcs).payload_bytes
    except ValueError:
        if isinstance(mcs, str):
            get_mcs(mcs)
        return 0


@functools.lru_cache(maxsize=64)
def _rate_match_map(tb: TransportBlock) -> Tuple[np.ndarray, np.ndarray]:
    """(index of the codeword bit behind each of the G sent bits, filler mask (N, C)).

    Indices are into the codewords flattened block after block
    (``codewords.ravel(order="F")``).  Found by rate-matching the indices with
    py3gpp's own ``nrRateMatchLDPC``, so recovery is its exact inverse.
    """
    from py3gpp import nrRateMatchLDPC

    filler = np.zeros((tb.N, tb.C), dtype=bool)
    # fillers sit at K' .. K-1 of each block; the first 2*Zc bits are punctured
    filler[tb.K - tb.F - 2 * tb.Zc: tb.K - 2 * tb.Zc, :] = True
    idx = np.arange(tb.N)[:, None] + tb.N * np.arange(tb.C)[None, :]
    idx[filler] = -1
    mod = tb.mcs.modulation
    order = np.asarray(nrRateMatchLDPC(idx, tb.G, 0, mod, 1), dtype=np.int64)
    if order.size != tb.G or order.min() < 0:
        raise RuntimeError("rate-matching index map is inconsistent")  # pragma: no cover
    return order, filler


# --------------------------------------------------------------------------- #
# LDPC decoding: py3gpp's layered normalised min-sum, vectorised, early stop
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=64)
def _decoder_graph(bgn: int, Zc: int):
    """Gather indices of the lifted parity-check matrix, one array per layer.

    For layer (base-graph row) r, ``idx[r][t, z]`` is the codeword position
    that the t-th edge's z-th check reads, i.e. py3gpp's
    ``_mul_sh(L[col*Zc:(col+1)*Zc], shift)`` as an index map.  The base graph
    and the set index i_ls come from py3gpp exactly as its nrLDPCDecode
    finds them.
    """
    from py3gpp.nrDLSCHInfo import getZarray
    from py3gpp.nrLDPCEncode import _load_basegraph

    i_ls = next(i for i, zs in enumerate(getZarray()) if Zc in zs)
    bm = _load_basegraph(i_ls, bgn)
    z = np.arange(Zc)
    layers = []
    for r in range(bm.shape[0]):
        cols = np.nonzero(bm[r] != -1)[0]
        layers.append(np.stack([c * Zc + (z + int(bm[r, c])) % Zc for c in cols]))
    k = (22 if bgn == 1 else 10) * Zc
    return layers, k


def ldpc_decode(
    llr: np.ndarray, bgn: int, max_iter: int, scaling: float = LDPC_SCALING, early_stop: bool = True
) -> Tuple[np.ndarray, int]:
    """Layered normalised min-sum decoding of (N, C) codeword LLRs (positive = 0).

    The same arithmetic as ``py3gpp.nrLDPCDecode(llr, bgn, max_iter,
    Algorithm="Normalized min-sum", ScalingFactor=scaling)`` -- bit-identical
    output with ``early_stop=False`` (tested) for lifting sizes where no
    base-graph shift equals Zc + 1 (py3gpp drops those edges' messages; this
    decoder does not) -- but vectorised over the
    lifting size and the code blocks, and with an early stop once every
    block satisfies all parity checks.  Returns ((K, C) uint8 bits,
    iterations run); K = 22*Zc (BG1) or 10*Zc (BG2), first 2*Zc punctured
    bits included, as py3gpp.
    """
    llr = np.asarray(llr, dtype=np.float64)
    n, c = llr.shape
    Zc = n // (66 if bgn == 1 else 50)
    layers, k = _decoder_graph(int(bgn), int(Zc))
    L = np.concatenate([np.zeros((c, 2 * Zc)), llr.T], axis=1)  # (C, nb*Zc)
    R = [np.zeros((c,) + ix.shape) for ix in layers]
    it = 0
    while it < max_iter:
        for ix, r in zip(layers, R):
            t = L[:, ix] - r  # (C, edges, Zc), row-aligned
            a = np.abs(t)
            pos = np.argmin(a, axis=1)[:, None, :]
            min1 = np.take_along_axis(a, pos, axis=1)
            np.put_along_axis(a, pos, np.inf, axis=1)
            min2 = a.min(axis=1, keepdims=True)
            sgn = np.where(t >= 0, 1.0, -1.0)
            parity = np.prod(sgn, axis=1, keepdims=True)
            new = np.broadcast_to(min1 * scaling, t.shape).copy()
            np.put_along_axis(new, pos, min2 * scaling, axis=1)
            new *= sgn * parity
            r[...] = new
            L[:, ix] = t + new
        it += 1
        if early_stop:
            hard = L < 0
            if not any(np.any(np.logical_xor.reduce(hard[:, ix], axis=1)) for ix in layers):
                break
    return (L[:, :k] < 0).T.astype(np.uint8), it


@functools.lru_cache(maxsize=64)
def _scrambling(G: int) -> np.ndarray:
    from py3gpp import nrPRBS

    return np.asarray(nrPRBS(SCRAMBLING_CINIT, G), dtype=np.uint8)


# CRC polynomials of 38.212 5.1 (without the x^L term), as py3gpp's nrCRCEncode
_CRC_POLY = {
    "24A": (24, sum(1 << e for e in (23, 18, 17, 14, 11, 10, 7, 6, 5, 4, 3, 1, 0))),
    "24B": (24, sum(1 << e for e in (23, 6, 5, 1, 0))),
}


@functools.lru_cache(maxsize=None)
def _crc_table(poly: str) -> Tuple[int, ...]:
    L, p = _CRC_POLY[poly]
    top, mask, table = 1 << (L - 1), (1 << L) - 1, []
    for byte in range(256):
        crc = byte << (L - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ p) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return tuple(table)


def crc_bits(bits: np.ndarray, poly: str) -> np.ndarray:
    """CRC parity bits (MSB first) of a 0/1 sequence, 38.212 5.1.

    Same result as ``py3gpp.nrCRCEncode(bits, poly)[-L:]`` (tested), byte-wise
    instead of bit-wise: zero initial state, so leading zero padding to a
    whole number of bytes leaves the CRC unchanged.
    """
    L, _ = _CRC_POLY[poly]
    b = np.asarray(bits, dtype=np.uint8).ravel()
    b = np.concatenate([np.zeros((-b.size) % 8, np.uint8), b])
    table, mask, crc = _crc_table(poly), (1 << L) - 1, 0
    for byte in np.packbits(b).tolist():
        crc = ((crc << 8) & mask) ^ table[((crc >> (L - 8)) ^ byte) & 0xFF]
    return ((crc >> np.arange(L - 1, -1, -1)) & 1).astype(np.uint8)


def _segment(blk: np.ndarray, tb: TransportBlock) -> np.ndarray:
    """Code blocks (K, C), filler bits -1: ``py3gpp.nrCodeBlockSegmentLDPC`` with a fast CRC24B."""
    B = tb.tbs + TB_CRC_BITS
    cbs = -np.ones((tb.K, tb.C), dtype=np.int64)
    if tb.C == 1:
        cbs[:B, 0] = blk
        return cbs
    cbz = -(-B // tb.C)
    for i in range(tb.C):
        part = np.zeros(cbz, dtype=np.int64)
        seg = blk[i * cbz:(i + 1) * cbz]
        part[:seg.size] = seg  # the last block is zero-padded, as py3gpp does
        cbs[:cbz, i] = part
        cbs[cbz:cbz + CB_CRC_BITS, i] = crc_bits(part, "24B")
    return cbs


def _desegment(hard: np.ndarray, tb: TransportBlock) -> np.ndarray:
    """Transport block + CRC bits (B,) from decoded code blocks (K, C), as py3gpp."""
    B = tb.tbs + TB_CRC_BITS
    if tb.C == 1:
        return np.asarray(hard[:B, 0], dtype=np.uint8)
    cbz = -(-B // tb.C)
    return np.asarray(hard[:cbz, :], dtype=np.uint8).T.ravel()[:B]


def encode_transport_block(payload: bytes, tb: TransportBlock) -> np.ndarray:
    """Scrambled, rate-matched LDPC codeword bits (uint8, length G) for ``payload``.

    The transport block is ``length | payload | zeros`` (A bits) + CRC24A.
    """
    from py3gpp import nrLDPCEncode, nrRateMatchLDPC

    if len(payload) > tb.payload_bytes:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {tb.payload_bytes}-byte budget")
    block = bytearray(tb.tbs // 8)
    block[:tb.header_bytes] = len(payload).to_bytes(tb.header_bytes, "big")
    block[tb.header_bytes:tb.header_bytes + len(payload)] = payload
    bits = np.unpackbits(np.frombuffer(bytes(block), dtype=np.uint8)).astype(np.int64)
    tbcrc = np.concatenate([bits, crc_bits(bits, TB_CRC)])
    cbs = _segment(tbcrc, tb)
    coded = nrLDPCEncode(cbs, tb.bgn)
    e = np.asarray(nrRateMatchLDPC(coded, tb.G, 0, tb.mcs.modulation, 1), dtype=np.uint8)
    return e ^ _scrambling(tb.G)


def decode_transport_block(
    llr: np.ndarray, tb: TransportBlock, max_iter: int = DEFAULT_LDPC_ITERATIONS, decoder: str = "fast"
) -> Tuple[Optional[bytes], bool]:
    """Decode G channel LLRs (positive = 0) to ``(payload or None, crc_ok)``.

    ``decoder``: ``"fast"`` (:func:`ldpc_decode`, early stop) or ``"py3gpp"``
    (``nrLDPCDecode`` itself, always ``max_iter`` iterations, ~10x slower).
    """
    from py3gpp import nrLDPCDecode

    llr = np.clip(np.asarray(llr, dtype=np.float64), -_LLR_CLIP, _LLR_CLIP)
    llr = llr * (1.0 - 2.0 * _scrambling(tb.G))  # descramble
    order, filler = _rate_match_map(tb)
    soft = np.zeros(tb.N * tb.C)
    np.add.at(soft, order, llr)  # repetitions (rate < mother rate) are combined
    soft = soft.reshape(tb.C, tb.N).T.copy()
    soft[filler] = _FILLER_LLR
    if decoder == "fast":
        hard, _ = ldpc_decode(soft, tb.bgn, int(max_iter))
    elif decoder == "py3gpp":
        hard, _ = nrLDPCDecode(soft, tb.bgn, int(max_iter), Algorithm="Normalized min-sum",
                               ScalingFactor=LDPC_SCALING)
    else:
        raise ValueError(f"unknown LDPC decoder {decoder!r}; choose 'fast' or 'py3gpp'")
    blk = _desegment(hard, tb)
    if np.any(crc_bits(blk, TB_CRC)):  # the CRC of data + parity is zero iff it checks
        return None, False
    data = np.packbits(blk[:tb.tbs].astype(np.uint8)).tobytes()
    n = int.from_bytes(data[:tb.header_bytes], "big")
    if n > tb.payload_bytes:  # CRC passed on a corrupt block (p ~ 2^-24)
        return None, False
    return data[tb.header_bytes:tb.header_bytes + n], True


# --------------------------------------------------------------------------- #
# The chain
# --------------------------------------------------------------------------- #
@dataclass
class DigitalResult:
    """One image through the digital chain.

    ``image``: PIL RGB, input size; mid-grey (128,128,128) on failure.
    ``decode_success``: CRC passed and the source decoder accepted the bits.
    ``quality``: source-codec quality sent (None when nothing was sent).
    ``payload_bytes``: source bitstream size in bytes (0 when nothing was sent).
    ``modulation``, ``code_rate``, ``mcs``: the MCS used.
    ``symbols_used``: complex channel uses occupied (<= n_symbols).
    ``bits_per_pixel``: 8 * payload_bytes / (H*W) of the source bitstream.
    ``reason``: why it failed ("" on success).
    ``raw_ber``: hard-decision bit error rate of the coded bits before LDPC
    decoding (NaN when nothing was sent).
    """

    image: Image.Image
    decode_success: bool
    source_codec: str
    quality: Optional[int]
    payload_bytes: int
    modulation: str
    code_rate: float
    symbols_used: int
    bits_per_pixel: float
    reason: str
    fidelity_note: str
    mcs: str = ""
    snr_db: float = float("nan")
    n_symbols: int = 0
    tbs_bits: int = 0
    code_blocks: int = 0
    raw_ber: float = float("nan")
    seconds: float = 0.0
    extra: Dict[str, object] = field(default_factory=dict)

    def row(self) -> Dict[str, object]:
        """Everything but the image, for a results table / JSON."""
        return {k: v for k, v in self.__dict__.items() if k != "image"}


def _fidelity_note(codec: str, max_iter: int) -> str:
    src = {
        "hevc": "HEVC-intra via x265 (pillow-heif) stands in for BPG (BPG-like 5-byte header)",
        "jpeg": "JPEG (Pillow/libjpeg, optimised Huffman, 4:2:0)",
        "webp": "WebP lossy (Pillow/libwebp, method 6)",
    }[codec]
    return (
        f"{src}; 5G NR LDPC via py3gpp (CRC24A, rate matching, layered normalised min-sum, "
        f"up to {max_iter} iterations), 38.211 Gray QAM, AWGN, max-log demapping"
    )


def _to_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be a PIL image or a uint8 (H, W, 3) array, got {a.dtype} {a.shape}")
    return Image.fromarray(a, "RGB")


def _is_real(v) -> bool:
    """A Python or numpy number that is not a bool (True is not one symbol)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def run_digital(
    img,
    n_symbols: int,
    snr_db: float,
    rng=None,
    codec: str = "hevc",
    mcs: str = "adaptive",
    max_iter: int = DEFAULT_LDPC_ITERATIONS,
    decoder: str = "fast",
) -> DigitalResult:
    """Send ``img`` through the digital chain with ``n_symbols`` channel uses at ``snr_db``.

    ``img``: PIL image or uint8 (H, W, 3) array.  ``n_symbols``: complex
    channel uses available.  ``snr_db``: Es/N0 per complex symbol (unit Es).
    ``rng``: numpy Generator or seed (channel noise).  ``codec``: one of
    ``hevc``, ``jpeg``, ``webp``.  ``mcs``: ``"adaptive"`` or a name in
    :data:`MCS_NAMES`.  ``max_iter``, ``decoder``: LDPC decoding, see
    :func:`decode_transport_block`.

    Never raises for channel or budget failures: those come back as
    ``decode_success=False`` with a grey image and a ``reason``.  Unknown
    codec or MCS names, and bad arguments, raise ValueError.
    """
    t0 = time.perf_counter()
    # 1. Check inputs
    sc.get_codec(codec)
    if mcs != "adaptive":
        get_mcs(mcs)
    if not (_is_real(n_symbols) and float(n_symbols).is_integer() and n_symbols >= 1):  # (inf, NaN: not integers)
        raise ValueError(f"n_symbols must be a positive integer, got {n_symbols!r}")
    if decoder not in ("fast", "py3gpp"):
        raise ValueError(f"unknown LDPC decoder {decoder!r}; choose 'fast' or 'py3gpp'")
    if not (_is_real(snr_db) and math.isfinite(snr_db)):
        raise ValueError(f"snr_db must be a finite number, got {snr_db!r}")
    n_symbols = int(n_symbols)
    pil = _to_pil(img)
    w, h = pil.size
    rng = np.random.default_rng(rng)
    m = select_mcs(snr_db) if mcs == "adaptive" else get_mcs(mcs)

    def result(ok: bool, image: Image.Image, reason: str, **kw) -> DigitalResult:
        nbytes = kw.pop("payload_bytes", 0)
        return DigitalResult(
            image=image, decode_success=ok, source_codec=codec, quality=kw.pop("quality", None),
            payload_bytes=nbytes, modulation=m.modulation, code_rate=m.code_rate,
            symbols_used=kw.pop("symbols_used", 0), bits_per_pixel=8.0 * nbytes / (w * h),
            reason=reason, fidelity_note=_fidelity_note(codec, max_iter), mcs=m.name,
            snr_db=float(snr_db), n_symbols=n_symbols, seconds=time.perf_counter() - t0, **kw,
        )

    grey = Image.new("RGB", (w, h), GREY)
    adapt_note = ""
    if mcs == "adaptive" and not m.threshold_db <= snr_db:
        adapt_note = f" (SNR {snr_db:g} dB is below the {m.name} threshold {m.threshold_db:g} dB)"

    # 2. Budget and source coding
    try:
        tb = transport_block(n_symbols, m)
    except ValueError as exc:
        return result(False, grey, f"budget: {exc}{adapt_note}")
    try:
        data, quality, _ = sc.encode_to_budget(pil, codec, tb.payload_bytes)
    except sc.BudgetTooSmallError as exc:
        return result(False, grey, f"budget: {exc} at {m.name}, {n_symbols} symbols{adapt_note}",
                      tbs_bits=tb.tbs, code_blocks=tb.C)
    except sc.CodecUnavailableError as exc:
        return result(False, grey, f"codec unavailable: {exc}", tbs_bits=tb.tbs, code_blocks=tb.C)
    sent = dict(quality=quality, payload_bytes=len(data), symbols_used=n_symbols, tbs_bits=tb.tbs, code_blocks=tb.C)

    # 3. Channel coding, modulation, AWGN, demapping, decoding
    bits = encode_transport_block(data, tb)
    y, n0 = awgn(modulate(bits, m.modulation), snr_db, rng)
    llr = demodulate_maxlog(y, m.modulation, n0)
    sent["raw_ber"] = float(np.mean((llr < 0) != bits.astype(bool)))
    payload, crc_ok = decode_transport_block(llr, tb, max_iter, decoder)
    if not crc_ok:
        return result(False, grey, f"CRC failure after LDPC decoding at {m.name}, {snr_db:g} dB{adapt_note}", **sent)

    # 4. Source decoding
    try:
        out = sc.decode(payload, codec)
    except Exception as exc:  # a corrupt bitstream that passed the CRC
        return result(False, grey, f"source decoder rejected the bitstream: {exc}", **sent)
    if out.size != (w, h):
        return result(False, grey, f"decoded size {out.size} differs from {(w, h)}", **sent)
    return result(True, out, "", **sent)


# --------------------------------------------------------------------------- #
# Threshold calibration
# --------------------------------------------------------------------------- #
def simulate_bler(
    mcs: Union[str, MCS], snr_db: float, n_symbols: int = 2048, trials: int = 100, rng=0,
    max_iter: int = DEFAULT_LDPC_ITERATIONS, stop_after_errors: Optional[int] = None,
) -> Tuple[int, int]:
    """(block errors, blocks sent) for random transport blocks; stops early after ``stop_after_errors``."""
    tb = transport_block(n_symbols, mcs)
    rng = np.random.default_rng(rng)
    errors = sent = 0
    for _ in range(trials):
        payload = rng.integers(0, 256, tb.payload_bytes, dtype=np.uint8).tobytes()
        bits = encode_transport_block(payload, tb)
        y, n0 = awgn(modulate(bits, tb.mcs.modulation), snr_db, rng)
        got, ok = decode_transport_block(demodulate_maxlog(y, tb.mcs.modulation, n0), tb, max_iter)
        sent += 1
        errors += int(not ok or got != payload)
        if stop_after_errors is not None and errors >= stop_after_errors:
            break
    return errors, sent


def _threshold_one(args) -> Tuple[str, float, list]:
    name, n_symbols, trials, step, target, seed, max_iter = args
    m = get_mcs(name)
    # start just below the AWGN capacity limit for the effective rate
    tb = transport_block(n_symbols, m)
    se = tb.effective_rate * m.bits_per_symbol
    snr = step * math.floor(10 * math.log10(2 ** se - 1) / step)
    log = []
    while True:
        limit = int(math.floor(target * trials)) + 1
        e, n = simulate_bler(m, snr, n_symbols, trials, rng=[seed, int(round(snr * 100)) + 10000],
                             max_iter=max_iter, stop_after_errors=limit)
        log.append((snr, e, n))
        if e < limit:
            return name, snr, log
        snr = round(snr + step, 6)


def calibrate_thresholds(
    n_symbols: int = 2048, trials: int = 100, step_db: float = 0.25, target_bler: float = 0.1,
    seed: int = 0, jobs: int = 1, names: Optional[Sequence[str]] = None,
    max_iter: int = DEFAULT_LDPC_ITERATIONS,
) -> Dict[str, Tuple[float, list]]:
    """Per MCS: lowest SNR on a ``step_db`` grid with BLER <= ``target_bler``.

    Starts at the AWGN capacity limit for the effective code rate and steps up.
    Returns ``{name: (threshold_db, [(snr, errors, blocks), ...])}``.
    """
    names = list(names or MCS_NAMES)
    work = [(n, n_symbols, trials, step_db, target_bler, seed, max_iter) for n in names]
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            out = pool.map(_threshold_one, work, chunksize=1)
    else:
        out = [_threshold_one(a) for a in work]
    return {name: (thr, log) for name, thr, log in out}


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..config import finite_float

    p = argparse.ArgumentParser(prog="python -m gr_gdmcom.eval.digital", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", help="measure the MCS thresholds (BLER <= 10 %%)")
    c.add_argument("--n-symbols", type=int, default=2048, help="[default=%(default)r]")
    c.add_argument("--trials", type=int, default=100, help="[default=%(default)r]")
    c.add_argument("--step", type=finite_float, default=0.25, help="SNR grid, dB [default=%(default)r]")
    c.add_argument("--seed", type=int, default=0, help="[default=%(default)r]")
    c.add_argument("--jobs", type=int, default=1, help="processes [default=%(default)r]")
    c.add_argument("--mcs", nargs="*", default=None, help="subset of MCS names [default: all]")
    s = sub.add_parser("sweep", help="run an skimage test image through the chain over SNRs")
    s.add_argument("--image", default="astronaut", help="skimage.data image [default=%(default)r]")
    s.add_argument("--size", type=int, default=256, help="resize to size x size [default=%(default)r]")
    s.add_argument("--bcr", type=finite_float, default=1 / 96, help="n_symbols = bcr*3*size^2 [default=1/96]")
    s.add_argument("--snr", type=finite_float, nargs="+", default=[0, 5, 10, 15, 20], help="dB [default=%(default)r]")
    s.add_argument("--codec", default="hevc", help="[default=%(default)r]")
    s.add_argument("--mcs", default="adaptive", help="[default=%(default)r]")
    s.add_argument("--trials", type=int, default=1, help="channel realisations per SNR [default=%(default)r]")
    s.add_argument("--seed", type=int, default=0, help="[default=%(default)r]")
    a = p.parse_args(argv)

    if a.cmd == "calibrate":
        t = time.time()
        res = calibrate_thresholds(a.n_symbols, a.trials, a.step, seed=a.seed, jobs=a.jobs, names=a.mcs)
        for name in MCS_NAMES:
            if name in res:
                thr, log = res[name]
                print(f"{name:11s} {thr:6.2f} dB   " + " ".join(f"{s:g}:{e}/{n}" for s, e, n in log))
        print(json.dumps({k: v[0] for k, v in res.items()}))
        print(f"# {time.time() - t:.0f} s", file=sys.stderr)
        return 0

    from skimage import data as skdata

    if a.image.startswith("_") or not callable(getattr(skdata, a.image, None)):
        p.error(f"--image {a.image!r} is not an image of skimage.data (astronaut, coffee, chelsea, ...)")
    if a.size < 8:
        p.error(f"--size must be at least 8 pixels, got {a.size}")
    img = Image.fromarray(getattr(skdata, a.image)()).convert("RGB").resize((a.size, a.size), Image.LANCZOS)
    n_symbols = int(round(a.bcr * 3 * a.size * a.size))
    ref = np.asarray(img)
    rng = np.random.default_rng(a.seed)
    print(f"# {a.image} {a.size}x{a.size}, n_symbols={n_symbols}, codec={a.codec}, mcs={a.mcs}")
    print(f"{'snr_dB':>6} {'mcs':>10} {'ok':>5} {'q':>4} {'bytes':>6} {'bpp':>6} {'psnr':>6} {'s/call':>6}  reason")
    for snr in a.snr:
        for _ in range(a.trials):
            r = run_digital(img, n_symbols, snr, rng, codec=a.codec, mcs=a.mcs)
            print(f"{snr:6g} {r.mcs:>10} {str(r.decode_success):>5} {str(r.quality):>4} {r.payload_bytes:6d} "
                  f"{r.bits_per_pixel:6.3f} {_psnr(ref, np.asarray(r.image)):6.2f} {r.seconds:6.2f}  {r.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
