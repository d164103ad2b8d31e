"""``frame_rx``: samples -> PDUs of equalised latent symbols with metadata (the PHY alone)."""

from __future__ import annotations

import numpy as np
from gnuradio import gr

from ..phy import FrameConfig, FrameRx, Reassembler
from ..phy.reassembly import erased_ranges
from ._common import PORT_PDUS, guarded_receive, pdu


def header_dict(h) -> dict:
    return dict(image_id=int(h.image_id), chunk_index=int(h.chunk_index), chunk_count=int(h.chunk_count),
                latent_shape=[int(v) for v in h.latent_shape], image_size=[int(v) for v in h.image_size],
                k=int(h.k), T=int(h.T), forward=int(h.forward), guidance=float(h.guidance), alpha=float(h.alpha),
                prompt_hash=int(h.prompt_hash), model_hash=int(h.model_hash), total_symbols=int(h.total_symbols), flags=int(h.flags),
                means=[float(v) for v in h.means], sender=int(h.sender))


class frame_rx(gr.sync_block):
    """Frame receiver.

    Input: complex64 samples.  Message output ``pdus``: with ``reassemble``
    one PDU per image — metadata = header fields + ``snr_db`` (estimate, Es/N0),
    ``chunks_received``, ``chunks_total``, ``complete``, ``missing_chunks``,
    ``untracked_chunks`` (chunks whose channel the receiver could not follow),
    ``erased_symbols`` (symbols of received chunks with no signal: a dropout) and
    ``erased_ranges`` (``[start, stop)`` symbol ranges not received: missing chunks
    and erased symbols); vector = the image's latent symbols (c32vector, zero where
    not received) — else one PDU per frame with ``snr_db``, ``noise_var``, ``cfo``,
    ``sro_ppm``, ``start``, ``tracked`` (False: the channel was not followed; the
    estimate is honest but low), ``track_span`` (the channel tracker's window,
    symbols), ``erased_ranges`` (the frame's erased symbols, zero in the vector) and ``cut``
    (the payload symbol from which the burst was cut short -- a TX underflow, an RX overflow,
    a collision: erased from there on -- or -1).
    ``counters()`` gives the PHY's counters (detected, CRC failures, ...).
    """

    def __init__(self, reassemble=True, **frame):
        gr.sync_block.__init__(self, name="gdmcom_frame_rx", in_sig=[np.complex64], out_sig=None)
        self.frame_config = FrameConfig(**frame)
        self.rx = FrameRx(self.frame_config)
        self.reasm = Reassembler(deadline=self.rx.image_deadline) if reassemble else None
        self.internal_errors = 0
        self.message_port_register_out(PORT_PDUS)

    def counters(self) -> dict:
        return {**self.rx.counters, **(self.reasm.counters if self.reasm else {}),
                "internal_errors": self.internal_errors}

    def _emit(self, frames):
        for f in frames:
            if self.reasm is None:
                meta = dict(header_dict(f.header), snr_db=float(f.snr_db), noise_var=float(f.noise_var),
                            cfo=float(f.cfo), sro_ppm=float(f.sro_ppm), start=int(f.start), tracked=bool(f.tracked),
                            track_span=int(f.track_span), erased_ranges=erased_ranges(f.erased),
                            cut=-1 if f.cut is None else int(f.cut))
                self.message_port_pub(PORT_PDUS, pdu(meta, f.symbols))
                continue
            for img in self.reasm.add(f):
                self._emit_image(img)

    def _emit_image(self, img):
        meta = dict(header_dict(img.header), snr_db=float(img.snr_db), chunks_received=int(img.chunks_received),
                    chunks_total=int(img.chunks_total), complete=bool(img.complete),
                    missing_chunks=[int(v) for v in img.missing], untracked_chunks=[int(v) for v in img.untracked],
                    erased_symbols=int(img.erased_symbols), erased_ranges=erased_ranges(~img.mask),
                    repeat=int(img.repeat), update=int(img.update),
                    reception=int(img.reception))
        self.message_port_pub(PORT_PDUS, pdu(meta, img.symbols))

    def _push(self, x):
        self._emit(self.rx.push(x))
        if self.reasm is not None:  # an image the rest of which the stream has passed by now
            for img in self.reasm.idle(self.rx.position):
                self._emit_image(img)

    def stop(self):
        guarded_receive(self, self.rx, lambda _: self._emit(self.rx.flush()), ())
        if self.reasm is not None:
            for img in self.reasm.flush():
                self._emit_image(img)
        return True

    def work(self, input_items, output_items):
        guarded_receive(self, self.rx, self._push, input_items[0])
        return len(input_items[0])
