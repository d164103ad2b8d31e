"""Burst transmitter: latent symbols + header template -> shaped complex bursts."""

from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional, Union

import numpy as np

from .frame import FrameConfig
from .header import PLAIN_FLAG, Header, encode_header

log = logging.getLogger(__name__)


def chunk_sizes(total: int, count: int) -> np.ndarray:
    """Sizes of ``count`` balanced chunks of ``total`` symbols (the first ``total % count``
    one larger), as both ends compute them.  int64 (count,)."""
    base, extra = divmod(int(total), int(count))
    return base + (np.arange(count) < extra).astype(np.int64)


def chunk_symbols(symbols: np.ndarray, max_chunk: int) -> List[np.ndarray]:
    """Split symbols into ``ceil(n / max_chunk)`` balanced chunks (sizes differ by at
    most one, so chunk offsets follow from (total, count, index) alone).

    Args:
        symbols: 1-D array (n,), n >= 1.
        max_chunk: most symbols per chunk, >= 1.
    Returns:
        list of views into ``symbols``, each of <= max_chunk elements.
    """
    symbols = np.asarray(symbols).ravel()
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
    if symbols.size == 0:
        raise ValueError("no symbols to send")
    count = -(-symbols.size // int(max_chunk))
    return np.split(symbols, np.cumsum(chunk_sizes(symbols.size, count))[:-1])


class FrameTx:
    """Builds bursts (see ``docs/frame-format.md``).

    Args:
        cfg: :class:`FrameConfig` (default settings if None).
    """

    def __init__(self, cfg: Optional[FrameConfig] = None):
        self.cfg = cfg or FrameConfig()
        self.layout = self.cfg.layout()

    def burst(self, header: Union[Header, bytes], payload: np.ndarray) -> np.ndarray:
        """One burst.

        Args:
            header: the burst's header, or raw header bytes (a test hook for
                corrupted headers).
            payload: complex (n,), 1 <= n <= max_chunk_symbols, unit-energy latent symbols.
        Returns:
            complex64 (layout.burst_samples(n),): preamble, coded header and payload
            (with a resync preamble and the header's copy after HEADER_COPY_AFTER payload
            symbols) with pilots, RRC-shaped at ``sps`` including the filter tails (unit energy
            per symbol), each sample's amplitude limited to ``tx_clip`` sqrt(1/sps) when
            ``tx_clip`` is set.
        """
        lay = self.layout
        payload = np.asarray(payload, np.complex64).ravel()
        if not 1 <= payload.size <= self.cfg.max_chunk_symbols:
            raise ValueError(f"payload must have 1..{self.cfg.max_chunk_symbols} symbols, got {payload.size}")
        if isinstance(header, Header):  # bit 7: whether the payload is scrambled, which the receiver follows
            header = dataclasses.replace(header, flags=(header.flags & ~PLAIN_FLAG)
                                         | (0 if self.cfg.scramble else PLAIN_FLAG), version=self.cfg.header_version)
        data = header.pack() if isinstance(header, Header) else bytes(header)
        if self.cfg.scramble:
            payload = payload * lay.scrambler[: payload.size]
        body = lay.burst_body(encode_header(data, lay.header_whitening), payload)
        x = lay.shape(np.concatenate([lay.preamble, body]))
        if self.cfg.tx_clip:
            limit = self.cfg.tx_clip / np.sqrt(self.cfg.sps)
            mag = np.abs(x)
            x = np.where(mag > limit, x * (limit / np.maximum(mag, 1e-30)), x).astype(np.complex64)
        return x

    def frames(self, symbols: np.ndarray, header_template: Header) -> List[np.ndarray]:
        """Split an image's latent symbols into chunks and build one burst per chunk.

        Args:
            symbols: complex (n,), the image's unit-energy latent symbols (finite).
            header_template: image-level fields; ``chunk_index``, ``chunk_count``,
                ``total_symbols`` and ``chunk_symbols`` are filled in here.
        Returns:
            list of complex64 bursts (see :meth:`burst`).
        """
        symbols = np.asarray(symbols).ravel()
        if not np.issubdtype(symbols.dtype, np.number):
            raise TypeError(f"symbols must be numeric, got dtype {symbols.dtype}")
        if not np.all(np.isfinite(symbols)):
            raise ValueError("symbols contain NaN or inf")
        chunks = chunk_symbols(symbols, self.cfg.max_chunk_symbols)
        if len(chunks) > 0xFFFF:
            raise ValueError(f"{symbols.size} symbols need {len(chunks)} chunks (at most 65535)")
        bursts = []
        for i, c in enumerate(chunks):
            hdr = header_template.replace(chunk_index=i, chunk_count=len(chunks), total_symbols=symbols.size,
                                          chunk_symbols=c.size)
            bursts.append(self.burst(hdr, c))
        log.debug("image %d: %d symbols -> %d bursts", header_template.image_id, symbols.size, len(bursts))
        return bursts

    def stream(self, symbols: np.ndarray, header_template: Header) -> np.ndarray:
        """:meth:`frames` joined by ``gap_symbols * sps`` zero samples.  complex64 (n_samples,)."""
        gap = np.zeros(self.cfg.gap_symbols * self.cfg.sps, np.complex64)
        bursts = self.frames(symbols, header_template)
        parts = [bursts[0]]
        for b in bursts[1:]:
            parts += [gap, b]
        return np.concatenate(parts)
