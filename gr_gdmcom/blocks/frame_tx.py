"""``frame_tx``: PDU of latent symbols + metadata -> burst samples (the PHY alone)."""

from __future__ import annotations

import queue

import numpy as np
import pmt
from gnuradio import gr

from ..phy import FrameConfig, FrameTx, Header
from ..phy.header import MEANS_FLAG, REDUCE_LOG2_MASK
from ._common import CHUNK, IMAGE_ID, PACKET_LEN, PORT_PDUS, TX_EOB, TX_SOB

HEADER_KEYS = ("image_id", "latent_shape", "image_size", "k", "T", "forward", "guidance", "alpha", "prompt_hash")
#: optional keys: ``flags`` (header flags: reduction, means removed), ``means`` (the removed channel means,
#: needed when flags bit 5 is set), ``total_symbols`` (needed for a reduced latent), ``model_hash`` (the
#: encoding model's fingerprint, ``LatentMeta.model_hash``; 0 or absent: not given, the receiver cannot
#: check it), ``sender`` (0-127, the transmitter's id; absent: 0).  ``prompt_hash`` is
#: ``codec.prompt_hash(prompt)`` (a full CRC-32 is cut to its low 16 bits).


def header_from_meta(meta) -> Header:
    """PDU metadata (a pmt dict with the keys in ``HEADER_KEYS``) -> header template."""
    d = pmt.to_python(meta) if not isinstance(meta, dict) else meta
    if not isinstance(d, dict):
        raise ValueError("PDU metadata must be a dict")
    missing = [k for k in HEADER_KEYS if k not in d]
    if missing:
        raise ValueError(f"PDU metadata lacks {', '.join(missing)}")
    shape = tuple(int(v) for v in d["latent_shape"])
    flags = int(d.get("flags", 0))
    means = tuple(float(v) for v in d.get("means", ()))
    if flags & MEANS_FLAG and not means:
        raise ValueError("PDU metadata: flags say the channel means were removed but 'means' is missing")
    # a reduced latent (flags bits 0-3: log2 of the factor) has fewer symbols than the full one: its PDU
    # must say how many (frame_rx's PDUs do)
    if "total_symbols" in d:
        total = int(d["total_symbols"])
    elif flags & REDUCE_LOG2_MASK:
        raise ValueError("PDU metadata: a reduced latent (flags) needs 'total_symbols'")
    else:
        total = int(np.prod(shape)) // 2
    return Header(image_id=int(d["image_id"]) & 0xFFFF, latent_shape=shape,
                  image_size=tuple(int(v) for v in d["image_size"]), k=int(d["k"]), T=int(d["T"]),
                  forward=int(d["forward"]), guidance=float(d["guidance"]), alpha=float(d["alpha"]),
                  prompt_hash=int(d["prompt_hash"]) & 0xFFFF, model_hash=int(d.get("model_hash", 0)),
                  total_symbols=total, flags=flags, means=means, sender=int(d.get("sender", 0)))


class frame_tx(gr.sync_block):
    """Frame transmitter.

    Message input ``pdus``: (metadata . c32vector of latent symbols); the
    metadata dict carries ``image_id, latent_shape, image_size, k, T, forward
    (0 ddim / 1 random), guidance, alpha, prompt_hash`` (optionally ``model_hash``,
    the encoding model's fingerprint, and ``sender``, the transmitter's id 0-127) and, for a latent sent
    with its channel means removed (the codec's default) or reduced, ``flags``,
    ``means`` and ``total_symbols`` as frame_rx's PDUs give them.  A PDU whose metadata
    has ``eos`` = #t ends the stream once everything before it is sent.
    Output: complex64 burst samples (tags ``packet_len``, ``image_id``,
    ``chunk``; ``tx_sob``/``tx_eob`` with ``burst_tags``), bursts separated by
    ``gap_symbols * sps`` zeros; while idle it produces nothing (or zeros with
    ``idle_zeros``, for radios that need a continuous stream).
    Bad PDUs are logged and counted (``counters()['bad_pdus']``).
    """

    def __init__(self, burst_tags=False, idle_zeros=False, **frame):
        gr.sync_block.__init__(self, name="gdmcom_frame_tx", in_sig=None, out_sig=[np.complex64])
        self.frame_config = FrameConfig(**frame)
        self.tx = FrameTx(self.frame_config)
        self._burst_tags, self._idle_zeros = bool(burst_tags), bool(idle_zeros)
        self._q: "queue.Queue" = queue.Queue()
        self._cur = None  # (samples, tags)
        self._pos = 0
        self._eos = False
        self._counters = dict(pdus=0, bad_pdus=0, bursts=0)
        self.message_port_register_in(PORT_PDUS)
        self.set_msg_handler(PORT_PDUS, self._handle)

    def counters(self) -> dict:
        return dict(self._counters)

    def _handle(self, msg):
        try:
            if not pmt.is_pair(msg):
                raise ValueError("message is not a PDU pair")
            meta, vec = pmt.car(msg), pmt.cdr(msg)
            if pmt.is_dict(meta) and pmt.to_python(pmt.dict_ref(meta, pmt.intern("eos"), pmt.PMT_F)) is True:
                self._q.put(None)
                return
            if not pmt.is_c32vector(vec):
                raise ValueError("PDU vector must be a c32vector of latent symbols")
            sym = np.asarray(pmt.c32vector_elements(vec), np.complex64)
            if not np.isfinite(sym).all():
                raise ValueError("PDU symbols contain NaN/inf")
            header = header_from_meta(meta)
            if sym.size != header.total_symbols:
                raise ValueError(f"PDU has {sym.size} symbols but latent shape {header.latent_shape} "
                                 f"needs {header.total_symbols}")
            gap = self.frame_config.gap_symbols * self.frame_config.sps
            for i, b in enumerate(self.tx.frames(sym, header)):
                n = len(b)
                tags = [(0, PACKET_LEN, pmt.from_long(n)), (0, IMAGE_ID, pmt.from_long(header.image_id)),
                        (0, CHUNK, pmt.from_long(i))]
                if self._burst_tags:
                    tags += [(0, TX_SOB, pmt.PMT_T), (n - 1, TX_EOB, pmt.PMT_T)]
                self._q.put((np.concatenate([b.astype(np.complex64), np.zeros(gap, np.complex64)]), tags))
                self._counters["bursts"] += 1
            self._counters["pdus"] += 1
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop the flowgraph
            self._counters["bad_pdus"] += 1
            self.logger.warn(f"dropped PDU: {exc}")

    def work(self, input_items, output_items):
        out = output_items[0]
        if self._cur is None:
            try:
                item = self._q.get(timeout=0.01)
            except queue.Empty:
                if self._eos:
                    return -1
                if self._idle_zeros:
                    out[:] = 0
                    return len(out)
                return 0
            if item is None:
                self._eos = True
                return 0
            self._cur, self._pos = item, 0
        samples, tags = self._cur
        n = min(len(out), len(samples) - self._pos)
        out[:n] = samples[self._pos:self._pos + n]
        base = self.nitems_written(0) - self._pos
        for off, key, val in tags:
            if self._pos <= off < self._pos + n:
                self.add_item_tag(0, base + off, key, val)
        self._pos += n
        if self._pos >= len(samples):
            self._cur = None
        return n
