"""``semantic_sink``: complex baseband -> bursts -> SNR estimate -> N -> decoded images."""

from __future__ import annotations

import queue
import threading

import numpy as np
from gnuradio import gr

from ..bridge.backend import make_backend
from ..config import DEFAULT_MODEL, DEFAULT_PROMPT
from ..pipeline import RxPipeline, check_filename
from . import _log
from ._common import PORT_IMAGES, guarded_receive, pdu, split_config


class semantic_sink(gr.sync_block):
    """Semantic receiver as a GNU Radio sink.

    Input: complex64 samples at ``sps`` samples per symbol.  The PHY finds
    bursts, estimates CFO, gain and the SNR from known symbols, decodes the
    header and reassembles each image's latent; the decoder then picks N from
    the **estimated** SNR and writes ``out_dir/filename``.  Message output
    ``images``: one PDU per image, metadata ``image_id, name, snr_est_db,
    n_steps, rule, k, m, T, alpha, s_tot2, unet_calls, symbols, height, width,
    chunks_received, chunks_total, complete, missing_chunks, untracked_chunks,
    erased_symbols, repeat, snr_eff_db, seconds, model_mismatch, file`` (or ``error``) and the counters
    (``snr_eff_db``: the SNR the step rule used after weighting each symbol by its
    reliability, docs/codec.md); the vector is the decoded
    image as uint8 (H*W*3, row-major RGB).

    By default images are decoded inside ``work()``: the stream waits while
    the model runs (simulation: nothing is lost, every PDU is published while
    the flowgraph runs).  With ``threaded`` they are decoded in a worker
    thread so a live radio stream keeps flowing; its queue is bounded
    (``max_pending`` images, backpressure when full).  At end of stream the
    PHY is flushed and pending images are decoded in ``stop()`` (waiting at
    most ``drain_timeout`` seconds); their files and ``results`` are written,
    but GNU Radio may no longer deliver PDUs published that late.

    Parameters: ``out_dir`` ('' = do not write files), ``filename`` (pattern
    with ``{image_id}`` and ``{name}``), ``server`` (``local`` or an endpoint),
    the receiver's codec settings (``model, device, dtype, m, T, rule, rescale,
    guidance, prompt, steps`` (0 = rule), ``seed, clean_end, inversion,
    inversion_iters``) and the PHY settings.
    """

    def __init__(self, out_dir="out", filename="img{image_id:05d}.png", server="local", model=DEFAULT_MODEL,
                 device="auto", dtype="auto", m=5, T=50, rule="snr", rescale=True, guidance=6.0,
                 prompt=DEFAULT_PROMPT, steps=0, seed=0, threaded=False, max_pending=8, drain_timeout=600.0,
                 clean_end="model", inversion="ddim", inversion_iters=3, **frame):
        gr.sync_block.__init__(self, name="gdmcom_semantic_sink", in_sig=[np.complex64], out_sig=None)
        _log.bind(self)
        check_filename(filename)
        if not float(drain_timeout) >= 0:
            raise ValueError(f"drain_timeout must be >= 0 seconds, got {drain_timeout}")
        self.codec_config, self.frame_config = sink_config(
            model=model, device=device, dtype=dtype, m=m, T=T, rule=rule, rescale=rescale, guidance=guidance,
            prompt=prompt, steps=steps, seed=seed, clean_end=clean_end, inversion=inversion,
            inversion_iters=inversion_iters, **frame)
        self.message_port_register_out(PORT_IMAGES)
        self._out_dir, self._filename = out_dir or None, filename
        self._threaded = bool(threaded)
        self._max_pending = max(1, int(max_pending))
        self._queue: "queue.Queue" = queue.Queue(maxsize=self._max_pending)
        self._drain_timeout = float(drain_timeout)
        self._worker = None
        self._flushed = False
        self.names = {}
        self.results = []
        self.internal_errors = 0
        # Load the model here, in the constructing thread, not in the scheduler's.
        self.pipeline = RxPipeline(make_backend(server, self.codec_config), self.codec_config,
                                   self.frame_config, self._out_dir, self._filename, self.names)

    def set_names(self, names: dict):
        """``{image_id: name}`` used for file names and reports."""
        self.names = dict(names)
        self.pipeline.names = self.names

    def start(self):
        """(Re)start: a previous run was drained by ``stop()``; a fresh queue and decoder thread."""
        self._flushed = False
        if self._threaded:
            self._queue = queue.Queue(maxsize=self._max_pending)
            self._worker = threading.Thread(target=self._run, args=(self._queue,), name="gdmcom-sink", daemon=True)
            self._worker.start()
        return True

    def stop(self):
        self._drain()
        return True

    def counters(self) -> dict:
        return {**self.pipeline.all_counters(), "internal_errors": self.internal_errors}

    def _drain(self):
        """End of stream: flush the PHY, decode what is pending, stop the worker."""
        if self._flushed:
            return
        self._flushed = True
        _log.bind(self)
        pending = guarded_receive(self, self.pipeline.rx, lambda _: self.pipeline.flush(), ()) or []
        if self._worker is None:
            for img in pending:
                self._decode(img)
            return
        for img in pending:
            self._queue.put(img)
        self._queue.put(None)
        self._worker.join(timeout=self._drain_timeout)
        if self._worker.is_alive():
            self.logger.error(f"decoder still busy after {self._drain_timeout} s at stop; results may be missing")
        self._worker = None

    def _run(self, pending: "queue.Queue"):
        _log.bind(self)
        while True:
            img = pending.get()
            if img is None:
                return
            self._decode(img)

    def _decode(self, img):
        try:
            res = self.pipeline.decode(img)
        except Exception as exc:  # noqa: BLE001 - decode() reports its own errors; this is a last guard
            res = dict(image_id=int(img.header.image_id), error=f"internal error: {exc}")
            self.logger.error(f"image {res['image_id']} failed: {res['error']}")
        res["counters"] = self.counters()
        if "error" not in res:  # (failures were logged once, by the pipeline)
            self.logger.info(f"image {res['image_id']} decoded: SNR est {res['snr_est_db']:.2f} dB, N={res['n_steps']}")
        self.results.append({k: v for k, v in res.items() if k != "image"})
        img_vec = res.get("image")
        self.message_port_pub(PORT_IMAGES, pdu(res, None if img_vec is None else img_vec.reshape(-1)))

    def work(self, input_items, output_items):
        _log.bind(self)
        x = input_items[0]
        for img in guarded_receive(self, self.pipeline.rx, self.pipeline.push, x) or ():
            if self._worker is None:
                self._decode(img)
            else:
                self._queue.put(img)  # blocks when the decoder is behind: backpressure, no loss
        return len(x)


#: the Semantic Sink's arguments that are not codec or PHY settings
OWN = ("out_dir", "filename", "server", "threaded", "max_pending", "drain_timeout")


def sink_config(model=DEFAULT_MODEL, device="auto", dtype="auto", m=5, T=50, rule="snr", rescale=True, guidance=6.0,
                prompt=DEFAULT_PROMPT, steps=0, seed=0, clean_end="model", inversion="ddim", inversion_iters=3,
                **frame):
    """``(CodecConfig, FrameConfig)`` of a Semantic Sink's codec and PHY arguments, as the block
    makes them; ValueError for impossible ones (also run by the flowgraph preflight)."""
    # k=0: a receiver's k is each image's own (its header); the config's default 5 refused a fixed
    # N below 5 + m that a transmitter with a smaller k makes valid
    return split_config(dict(
        model=model, device=device, dtype=dtype, k=0, m=int(m), T=int(T), rule=rule, rescale=bool(rescale),
        guidance=float(guidance), prompt=prompt, steps=int(steps) if steps else None, seed=int(seed),
        clean_end=clean_end, inversion=inversion, inversion_iters=int(inversion_iters), **frame))
