"""``semantic_source``: images -> diffusion encoder -> framed complex baseband bursts."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pmt
from gnuradio import gr

from ..bridge.backend import make_backend
from ..config import DEFAULT_MODEL, DEFAULT_PROMPT
from ..pipeline import TxPipeline, check_sender, expand_images, header_reduce_ok
from . import _log
from ._common import CHUNK, IMAGE_ID, PACKET_LEN, PORT_INFO, TX_EOB, TX_SOB, pdu, split_config


class semantic_source(gr.sync_block):
    """Semantic transmitter as a GNU Radio source.

    Output: complex64 baseband at ``sps`` samples per symbol; each burst
    starts with tags ``packet_len`` (burst length, samples), ``image_id`` and
    ``chunk``; with ``burst_tags`` also ``tx_sob``/``tx_eob`` for UHD.
    Bursts are separated by ``gap_symbols * sps`` zeros.  The stream ends
    (WORK_DONE) after the last image unless ``repeat`` is 0 (loop forever).
    Message output ``info``: one PDU per image (image_id, name, path, bursts,
    symbols, alpha, seconds, error when it could not be encoded).

    The encoder runs in a worker thread; ``stop()`` ends and joins it (at most
    ``stop_timeout`` seconds) and ``start()`` begins a fresh stream, so a top
    block stopped and started again sends its list again, once.  A pass over
    the list that sends nothing (missing files) is logged once and ends the
    stream; with ``wait_for_images`` the source instead waits for the files.

    Parameters: ``images`` (paths, folders or globs, comma-separated;
    ``package:astronaut.png`` names a bundled image), ``repeat``, ``server`` (``local`` or a ZMQ endpoint of ``gdmcom serve``),
    ``image_id_start``, ``sender_id`` (0-127, in every header: receivers reassemble each sender's
    images apart, so transmitters taking turns on one channel do not split each other's),
    the codec settings of :class:`gr_gdmcom.config.CodecConfig` used by the
    transmitter (``model, device, dtype, k, T, guidance, prompt, forward, seed,
    clean_end, inversion, inversion_iters, reduce, reduce_method, remove_mean``)
    and the PHY settings of :class:`gr_gdmcom.phy.FrameConfig`.
    """

    def __init__(self, images="", repeat=1, server="local", model=DEFAULT_MODEL, device="auto", dtype="auto",
                 k=5, T=50, guidance=6.0, prompt=DEFAULT_PROMPT, forward="ddim", seed=0, image_id_start=0,
                 sender_id=0, burst_tags=False, tail_symbols=512, clean_end="model", inversion="ddim",
                 inversion_iters=3, wait_for_images=False, stop_timeout=10.0, reduce=1, reduce_method="subset", remove_mean=True,
                 **frame):
        gr.sync_block.__init__(self, name="gdmcom_semantic_source", in_sig=None, out_sig=[np.complex64])
        _log.bind(self)
        self.codec_config, self.frame_config = source_config(
            model=model, device=device, dtype=dtype, k=k, T=T, guidance=guidance, prompt=prompt, forward=forward,
            seed=seed, clean_end=clean_end, inversion=inversion, inversion_iters=inversion_iters, reduce=reduce,
            reduce_method=reduce_method, remove_mean=remove_mean, **frame)
        self.message_port_register_out(PORT_INFO)
        self._images = images  # expanded at every pass by the pipeline (a folder's new files)
        check_own_settings(repeat, tail_symbols, stop_timeout, reduce, sender_id, self.frame_config.header_version)
        self._repeat, self._id0, self._sender = int(repeat), int(image_id_start), int(sender_id)
        self._burst_tags = bool(burst_tags)
        self._tail = int(tail_symbols) * self.frame_config.sps
        self._stop_timeout = float(stop_timeout)
        self._worker = None
        self._stop = threading.Event()
        self._reset_stream()
        self.events = []
        # Load the model here, in the constructing thread, not in the scheduler's.
        self.pipeline = TxPipeline(make_backend(server, self.codec_config), self._images, self.frame_config,
                                   self._repeat, self._id0, wait=bool(wait_for_images), sender=self._sender)

    # ------------------------------------------------------------------ control
    def _reset_stream(self):
        """A fresh stream: nothing buffered, no tag pending, the tail still to send."""
        self._queue: "queue.Queue" = queue.Queue(maxsize=4)
        self._buf = np.zeros(0, np.complex64)
        self._pending_tags = []  # (offset in _buf, key, value)
        self._done = False
        self._tail_left = self._tail

    def start(self):
        """(Re)start: stop a previous encoder thread first, then send the list from its start."""
        self._join_worker()
        if not expand_images(self._images):
            self.logger.warn("no images given: the source sends nothing")
        self._reset_stream()
        # Each run owns its stop flag and queue: an encoder thread that outlives its
        # time limit can only finish into a queue nobody reads.
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, args=(self._stop, self._queue), name="gdmcom-source",
                                        daemon=True)
        self._worker.start()
        return True

    def stop(self):
        self._join_worker()
        return True

    def _join_worker(self):
        """Ask the encoder thread to end and wait for it (at most ``stop_timeout`` s: an image being encoded
        finishes first)."""
        self._stop.set()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=self._stop_timeout)
            if self._worker.is_alive():
                self.logger.warn(f"encoder thread still busy {self._stop_timeout} s after stop; it ends after the "
                                 "current image and its bursts are discarded")
        self._worker = None

    def counters(self) -> dict:
        return dict(self.pipeline.counters)

    def set_repeat(self, repeat):
        self._repeat = self.pipeline.repeat = _check_repeat(repeat)

    def _run(self, stop: threading.Event, out: "queue.Queue"):
        _log.bind(self)
        try:
            for ev in self.pipeline.events(stop):
                if stop.is_set():
                    break
                self.events.append(ev.info())
                self.message_port_pub(PORT_INFO, pdu(ev.info()))
                if ev.error:
                    continue  # logged once by the pipeline
                gap = np.zeros(self.frame_config.gap_symbols * self.frame_config.sps, np.complex64)
                for b in ev.bursts:
                    while not stop.is_set():
                        try:
                            out.put((b, gap), timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except Exception as exc:  # noqa: BLE001 - never take the flowgraph down
            self.logger.error(f"source stopped: {exc}")
        finally:
            while True:  # the end marker, even into a full queue nobody reads any more
                try:
                    out.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    # ------------------------------------------------------------------ stream
    def _refill(self) -> bool:
        """Move the next burst into the buffer; False when none is ready."""
        try:
            item = self._queue.get(timeout=0.01)
        except queue.Empty:
            return False
        if item is None:
            self._done = True
            return False
        b, gap = item
        start = len(self._buf)
        n = len(b.samples)
        self._pending_tags += [(start, PACKET_LEN, pmt.from_long(n)), (start, IMAGE_ID, pmt.from_long(b.image_id)),
                               (start, CHUNK, pmt.from_long(b.chunk_index))]
        if self._burst_tags:
            self._pending_tags += [(start, TX_SOB, pmt.PMT_T), (start + n - 1, TX_EOB, pmt.PMT_T)]
        self._buf = np.concatenate([self._buf, b.samples.astype(np.complex64), gap])
        return True

    def work(self, input_items, output_items):
        out = output_items[0]
        while len(self._buf) < len(out) and not self._done:
            if not self._refill():
                break
        if len(self._buf) == 0:
            if not self._done:
                return 0
            if self._tail_left <= 0 or self.nitems_written(0) == 0:
                # (no tail after nothing: a ZMQ PUSH sink with no receiver would hold the run open for it)
                return -1  # WORK_DONE
            n = min(len(out), self._tail_left)
            out[:n] = 0
            self._tail_left -= n
            return n
        n = min(len(out), len(self._buf))
        out[:n] = self._buf[:n]
        base = self.nitems_written(0)
        keep = []
        for off, key, val in self._pending_tags:
            if off < n:
                self.add_item_tag(0, base + off, key, val)
            else:
                keep.append((off - n, key, val))
        self._pending_tags = keep
        self._buf = self._buf[n:]
        return n


#: the Semantic Source's arguments that are not codec or PHY settings (:func:`check_own_settings`)
OWN = ("images", "repeat", "server", "image_id_start", "sender_id", "burst_tags", "tail_symbols", "wait_for_images",
       "stop_timeout")


def source_config(model=DEFAULT_MODEL, device="auto", dtype="auto", k=5, T=50, guidance=6.0, prompt=DEFAULT_PROMPT,
                  forward="ddim", seed=0, clean_end="model", inversion="ddim", inversion_iters=3, reduce=1,
                  reduce_method="subset", remove_mean=True, **frame):
    """``(CodecConfig, FrameConfig)`` of a Semantic Source's codec and PHY arguments, as the block
    makes them; ValueError for impossible ones (also run by the flowgraph preflight)."""
    # m=0: a transmitter has no m (the receiver's); the config's default 5 refused k=46 of T=50
    return split_config(dict(
        model=model, device=device, dtype=dtype, k=int(k), m=0, T=int(T), guidance=float(guidance),
        prompt=prompt, forward=forward, seed=int(seed), clean_end=clean_end, inversion=inversion,
        inversion_iters=int(inversion_iters), reduce=int(reduce), reduce_method=reduce_method,
        remove_mean=bool(remove_mean), **frame))


def check_own_settings(repeat=1, tail_symbols=512, stop_timeout=10.0, reduce=1, sender_id=0, header_version=6) -> None:
    """ValueError for the source's own settings that would fail every image or end the stream
    silently (also run by the flowgraph preflight, before any model loads)."""
    _check_repeat(repeat)
    check_sender(sender_id, header_version)  # (it failed every image at run time, from the frame header)
    if int(tail_symbols) < 0:
        raise ValueError(f"tail_symbols must be >= 0 (zero symbols after the last burst), got {tail_symbols}")
    if not float(stop_timeout) >= 0:
        raise ValueError(f"stop_timeout must be >= 0 seconds, got {stop_timeout}")
    if not header_reduce_ok(reduce):  # (it failed every image at run time, from the frame header)
        raise ValueError(f"reduce must be a power of two in 1..32768 (the frame header carries its log2), got {reduce}")


def _check_repeat(repeat) -> int:
    """``repeat`` as an int >= 0 (0: forever); a negative one sent nothing and ended the
    flowgraph without a word."""
    if int(repeat) < 0:
        raise ValueError(f"repeat must be >= 0 (times to send the image list; 0: forever), got {repeat}")
    return int(repeat)
