"""Chunks (received frames) back into images.

Policy (never silent):

* chunks are collected by ``image_id``, each sender's (``Header.sender``) apart; an image is
  finalised when all its chunks are in, when a frame of its sender's next image arrives
  (``finalise_on_new_id``),
  when it has received nothing for ``timeout_frames`` frames, when more than
  ``max_pending`` images of its sender are open (oldest first), when the stream has passed its
  ``deadline`` (:meth:`Reassembler.idle`: the receiver's stream position is past where the
  rest of it would have been received; counted in ``images_idle``) or on
  :meth:`Reassembler.flush`;
* a missing chunk leaves zeros in ``symbols`` and False in ``mask``; the image
  is returned with ``complete=False`` and its ``missing`` chunk indices (the
  decoder treats masked symbols as erased); so do a frame's erased symbols
  (:attr:`RxFrame.erased`: no signal there), counted in ``erased_symbols``, and an
  image with any is not ``complete`` either;
* a frame whose image-level header fields differ from the open image of the
  same id starts a new image (the old one is finalised first);
* a chunk received twice keeps the copy with the lower expected error (its noise
  variance; an erased symbol counts as lost);
* a sender's image ids are expected to increase by one per image (mod 65536): a jump of
  d (1 < d <= ``MAX_ID_GAP``) counts d - 1 images as lost (a late chunk of an image already
  finalised is no jump);
* an image received again after it was finalised (same id and image-level header
  fields as one of the last ``REPEAT_MEMORY`` finalised, starting with a chunk one of its
  receptions had: a retransmission, a capture replayed twice) is collected and returned again,
  counted in ``images_repeated`` and marked by its ``repeat`` number, so a consumer can
  tell it from a new image;
* a chunk an image was finalised without, arriving late (more of its bursts lost in a row than
  its deadline allows, a burst delayed behind another image's), re-opens it with the chunks it
  had (the last ``UPDATE_MEMORY`` images finalised with chunks missing keep theirs): it is
  returned again, more complete, marked by its ``update`` number and counted in
  ``images_updated``, in place of its earlier reception in ``images_partial`` /
  ``images_complete``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .header import Header
from .rx import RxFrame
from .snr import noise_var_to_snr_db
from .tx import chunk_sizes

log = logging.getLogger(__name__)

#: Largest image-id jump still read as lost images (larger jumps = a new sender/session).
MAX_ID_GAP = 256
#: how many finalised images are remembered to recognise one received again
REPEAT_MEMORY = 64
ID_MODULUS = 1 << 16
#: how many images finalised with chunks missing keep their chunks, so that a late one re-opens
#: the image (an ``update``) instead of starting a reception of the rest alone
UPDATE_MEMORY = 8
#: header fields every chunk of one image carries alike: a frame of the open image's id that differs
#: in any starts a new image (another picture under a reused id, or another transmitter's)
_IMAGE_FIELDS = ("sender", "total_symbols", "chunk_count", "latent_shape", "image_size", "k", "T", "forward", "alpha",
                 "prompt_hash", "model_hash", "guidance", "flags", "means")


@dataclass
class ReassembledImage:
    """An image's latent symbols as received.

    Attributes:
        header: header of chunk 0 (or of the first chunk received if chunk 0 is missing).
        symbols: complex64 (total_symbols,), unit-power scale; 0 where ``mask`` is False.
        mask: bool (total_symbols,), True where symbols were received (False in a
            missing chunk and at a frame's erased symbols).
        snr_db: Es/N0 estimate over the received symbols (their chunks' noise variances
            weighted by the symbols received in each; where every received symbol was erased,
            the plain mean of the chunks' estimates), dB.
        noise_var: that mean complex noise variance.
        chunks_received, chunks_total: counts.
        missing: sorted indices of the chunks not received.
        complete: True when no chunk is missing and no symbol was erased.
        chunk_noise_var: {chunk index: noise variance} of the received chunks.
        symbol_noise_var: float32 (total_symbols,), each received symbol's noise variance
            (:attr:`RxFrame.symbol_noise_var`, or its chunk's ``noise_var`` where a frame
            has none); 0 where ``mask`` is False.
        untracked: sorted indices of the chunks whose channel the receiver could not
            follow (:attr:`RxFrame.tracked` False).
        erased_symbols: symbols of the received chunks that were erased (no signal).
        repeat: 0 for an image's first reception; n for its n-th reception again after it
            was finalised (same id and image-level header fields: a retransmission).
        update: 0, or n when a chunk this image had been finalised without arrived late: the
            n-th more complete version of the same reception (its chunks and the late ones),
            to be used in place of the earlier one.
        reception: this reassembler's serial number of the reception (1, 2, ...): an update
            has its earlier version's, so a consumer knows which it replaces (two images can
            share a sender, an id and ``repeat``: two transmitters with one sender id).
    """

    header: Header
    symbols: np.ndarray
    mask: np.ndarray
    snr_db: float
    noise_var: float
    chunks_received: int
    chunks_total: int
    missing: List[int]
    complete: bool
    chunk_noise_var: Dict[int, float] = field(default_factory=dict)
    symbol_noise_var: Optional[np.ndarray] = None
    untracked: List[int] = field(default_factory=list)
    erased_symbols: int = 0
    repeat: int = 0
    update: int = 0
    reception: int = 0


def erased_ranges(erased: Optional[np.ndarray]) -> List[List[int]]:
    """``[start, stop)`` index ranges of the True runs of ``erased`` (None: none), e.g. for
    the ``erased_ranges`` field of a PDU."""
    if erased is None:
        return []
    e = np.concatenate([[False], np.asarray(erased, bool), [False]])
    edges = np.flatnonzero(e[1:] != e[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def _chunk_error(f: RxFrame) -> float:
    """A received chunk's expected per-symbol MMSE error ``v / (1 + v)``, 1 at an erased
    symbol: of two copies of a chunk the lower is kept."""
    if f.erased is None:
        return float(f.noise_var / (1.0 + f.noise_var))
    n = len(f.erased)
    live = n - int(np.count_nonzero(f.erased))
    return float((live * f.noise_var / (1.0 + f.noise_var) + (n - live)) / max(n, 1))


@dataclass
class _Open:
    header: Header
    chunks: Dict[int, RxFrame]
    last_seen: int
    repeat: int = 0
    deadline: Optional[int] = None
    update: int = 0
    reception: int = 0


def _who(sender: int) -> str:
    """A log line's prefix naming a sender other than 0."""
    return f"sender {sender}: " if sender else ""


def _image_key(h: Header) -> tuple:
    return tuple(getattr(h, f) for f in _IMAGE_FIELDS)


class Reassembler:
    """Collect :class:`RxFrame` chunks into :class:`ReassembledImage` s.

    Args:
        timeout_frames: finalise an open image after this many frames without a chunk of it.
        max_pending: most images open at once per sender.
        finalise_on_new_id: a frame of a new image id finalises its sender's open images.
        deadline: ``frame -> stream position (or None)`` by which the rest of the frame's image
            has been received if it was sent (:meth:`FrameRx.image_deadline
            <gr_gdmcom.phy.FrameRx.image_deadline>`); :meth:`idle` finalises an open image
            past the latest of its chunks' deadlines.  None: no deadlines.

    Attributes:
        counters: images_complete, images_partial (each image once: an update replaces its
            earlier reception), images_lost, chunks_duplicate, chunks_inconsistent,
            images_repeated, images_idle (finalised by :meth:`idle`), images_updated (returned
            again with late chunks).
    """

    def __init__(self, timeout_frames: int = 64, max_pending: int = 4, finalise_on_new_id: bool = True,
                 deadline: Optional[Callable[[RxFrame], Optional[int]]] = None):
        if timeout_frames < 1 or max_pending < 1:
            raise ValueError(f"timeout_frames and max_pending must be >= 1, got {timeout_frames}, {max_pending}")
        self.timeout_frames, self.max_pending = int(timeout_frames), int(max_pending)
        self.finalise_on_new_id = bool(finalise_on_new_id)
        self.counters = dict(images_complete=0, images_partial=0, images_lost=0, chunks_duplicate=0,
                             chunks_inconsistent=0, images_repeated=0, images_idle=0,
                             images_updated=0)
        self._deadline = deadline
        self._open: Dict[Tuple[int, int], _Open] = {}  # by (sender, image id)
        #: (image id, image-level fields) of the last REPEAT_MEMORY finalised images -> (receptions,
        #: the chunk indices received)
        self._done: Dict[tuple, Tuple[int, frozenset]] = {}
        #: the same key -> (repeat, update, reception, chunks) of the last UPDATE_MEMORY finalised with
        #: chunks missing
        self._partial: Dict[tuple, Tuple[int, int, int, Dict[int, RxFrame]]] = {}
        self._receptions = 0
        self._frames = 0
        self._last_id: Dict[int, int] = {}  # by sender

    def add(self, frame: RxFrame) -> List[ReassembledImage]:
        """Add one frame; return the images it (or a timeout) finalised."""
        self._frames += 1
        h, out = frame.header, []
        sizes = chunk_sizes(h.total_symbols, h.chunk_count) if 0 < h.chunk_count else np.zeros(0, np.int64)
        if not h.chunk_index < len(sizes) or len(frame.symbols) != sizes[h.chunk_index]:
            self.counters["chunks_inconsistent"] += 1
            log.warning("%simage %d: chunk %d/%d with %d symbols does not fit %d total symbols; dropped",
                        _who(h.sender), h.image_id, h.chunk_index, h.chunk_count, len(frame.symbols), h.total_symbols)
            return self._expire()
        at = (h.sender, h.image_id)
        img = self._open.get(at)
        if img is not None and _image_key(img.header) != _image_key(h):
            out.append(self._finalise(at))
            img = None
        if img is None:
            if self.finalise_on_new_id:
                out += [self._finalise(i) for i in list(self._open) if i[0] == h.sender]
            key = (h.image_id, _image_key(h))
            seen, had = self._done.get(key, (0, frozenset()))
            prior = None
            if h.chunk_index not in had:  # the rest of an image finalised without it: not a repeat
                seen, prior = 0, self._partial.pop(key, None)
            if seen:
                self.counters["images_repeated"] += 1
                log.info("%simage %d received again (same header as an image already finalised): a repeated "
                         "transmission, returned as repeat %d", _who(h.sender), h.image_id, seen)
            elif prior is not None:  # re-opened with what it had: published again, more complete
                seen, update, reception, chunks = prior
                log.info("%simage %d: chunk %d arrived after the image was finalised with %d of %d chunks; "
                         "re-opened, to be returned again as update %d", _who(h.sender), h.image_id, h.chunk_index,
                         len(chunks), h.chunk_count, update + 1)
                img = _Open(h, dict(chunks), self._frames, seen, update=update + 1, reception=reception)
            elif key not in self._done:  # (the rest of an image finalised long ago is no id jump)
                self._count_lost(h.sender, h.image_id)
            if img is None:
                self._receptions += 1
                img = _Open(h, {}, self._frames, seen, reception=self._receptions)
            self._open[at] = img
        old = img.chunks.get(h.chunk_index)
        if old is not None:
            self.counters["chunks_duplicate"] += 1
        if old is None or _chunk_error(frame) < _chunk_error(old):
            img.chunks[h.chunk_index] = frame
        img.last_seen = self._frames
        if self._deadline is not None:
            d = self._deadline(frame)
            img.deadline = d if img.deadline is None or d is None else max(img.deadline, d)
        if len(img.chunks) == h.chunk_count:
            out.append(self._finalise(at))
        return out + self._expire()

    def flush(self) -> List[ReassembledImage]:
        """Finalise every open image (end of stream)."""
        return [self._finalise(i) for i in list(self._open)]

    def idle(self, position: int) -> List[ReassembledImage]:
        """Finalise the open images whose deadline the receiver's stream ``position`` (how far it
        has buffered the stream, :attr:`FrameRx.position <gr_gdmcom.phy.FrameRx.position>`) has
        passed: the rest of them was not sent, or was lost.  Call after each
        :meth:`FrameRx.push <gr_gdmcom.phy.FrameRx.push>`."""
        late = [i for i, img in self._open.items() if img.deadline is not None and position >= img.deadline]
        self.counters["images_idle"] += len(late)
        return [self._finalise(i) for i in late]

    def _expire(self) -> List[ReassembledImage]:
        out = [self._finalise(i) for i, img in list(self._open.items())
               if self._frames - img.last_seen >= self.timeout_frames]
        for sender in sorted({s for s, _ in self._open}):  # each sender's oldest beyond max_pending
            mine = [i for i in self._open if i[0] == sender]
            while len(mine) > self.max_pending:
                oldest = min(mine, key=lambda i: self._open[i].last_seen)
                out.append(self._finalise(oldest))
                mine.remove(oldest)
        return out

    def _count_lost(self, sender: int, image_id: int):
        last = self._last_id.get(sender)
        if last is not None:
            gap = (image_id - last) % ID_MODULUS
            if 1 < gap <= MAX_ID_GAP:
                self.counters["images_lost"] += gap - 1
                log.warning("%simages %d..%d lost (no chunk received)", _who(sender), (last + 1) % ID_MODULUS,
                            (image_id - 1) % ID_MODULUS)
        self._last_id[sender] = image_id

    def _finalise(self, at: Tuple[int, int]) -> ReassembledImage:
        img = self._open.pop(at)
        image_id = at[1]
        done = (image_id, _image_key(img.header))
        # the chunks of every reception so far: the rest of an image (a late chunk) adds to them, so
        # that a retransmission starting with any chunk ever received is still known as a repeat
        seen, had = self._done.pop(done, (0, frozenset()))
        self._done[done] = (max(seen, img.repeat + 1), had | frozenset(img.chunks))
        while len(self._done) > REPEAT_MEMORY:
            del self._done[next(iter(self._done))]
        h0 = img.chunks[0].header if 0 in img.chunks else img.header
        sizes = chunk_sizes(h0.total_symbols, h0.chunk_count)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        symbols = np.zeros(h0.total_symbols, np.complex64)
        mask = np.zeros(h0.total_symbols, bool)
        sym_nv = np.zeros(h0.total_symbols, np.float32)
        live = {}
        for i, f in img.chunks.items():
            symbols[offsets[i]: offsets[i + 1]] = f.symbols
            mask[offsets[i]: offsets[i + 1]] = True if f.erased is None else ~f.erased
            sym_nv[offsets[i]: offsets[i + 1]] = f.noise_var if f.symbol_noise_var is None else f.symbol_noise_var
            live[i] = sizes[i] - (0 if f.erased is None else int(np.count_nonzero(f.erased)))
        sym_nv[~mask] = 0  # (a frame without symbol_noise_var: its noise_var was filled in at erased symbols)
        nv = {i: float(f.noise_var) for i, f in sorted(img.chunks.items())}
        if sum(live.values()):
            mean_nv = float(sum(nv[i] * live[i] for i in nv) / sum(live.values()))
        else:  # every received symbol erased: the chunks' own estimates, not 0 (read as 100 dB)
            mean_nv = float(np.mean(list(nv.values())))
        erased = sum(sizes[i] - live[i] for i in live)
        missing = sorted(set(range(h0.chunk_count)) - set(img.chunks))
        complete = not missing and not erased
        self.counters["images_complete" if complete else "images_partial"] += 1
        if img.update:  # in place of the reception it completes, which was partial
            self.counters["images_partial"] -= 1
            self.counters["images_updated"] += 1
        self._partial.pop(done, None)
        if missing:  # a late chunk re-opens it
            self._partial[done] = (img.repeat, img.update, img.reception, img.chunks)
            while len(self._partial) > UPDATE_MEMORY:
                del self._partial[next(iter(self._partial))]
        if missing:
            shown = missing if len(missing) <= 12 else f"[{', '.join(map(str, missing[:12]))}, ... {len(missing) - 12} more]"
            log.warning("%simage %d finalised with %d of %d chunks (missing %s)", _who(at[0]), image_id,
                        len(img.chunks), h0.chunk_count, shown)
        return ReassembledImage(header=h0, symbols=symbols, mask=mask, snr_db=noise_var_to_snr_db(mean_nv),
                                noise_var=mean_nv, chunks_received=len(img.chunks), chunks_total=h0.chunk_count,
                                missing=missing, complete=complete, chunk_noise_var=nv, symbol_noise_var=sym_nv,
                                untracked=sorted(i for i, f in img.chunks.items() if not f.tracked),
                                erased_symbols=erased, repeat=img.repeat, update=img.update,
                                reception=img.reception)
