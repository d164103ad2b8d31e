"""The transmit and receive pipelines behind the GNU Radio blocks, free of GNU Radio.

``TxPipeline``: image files -> backend encode -> PHY bursts.
``RxPipeline``: samples -> PHY frames -> reassembled latents -> backend decode -> PNG files.

The blocks in :mod:`gr_gdmcom.blocks` only move samples, tags and messages
around these classes, so everything here is testable with plain numpy.
"""

from __future__ import annotations

import glob
import importlib.resources
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .codec import LatentMeta, prompt_hash
from .codec.core import weight_by_reliability
from .config import CodecConfig
from .phy import FrameConfig, FrameRx, FrameTx, Header, Reassembler
from .phy.header import (MEAN_SLOTS, MEANS_FLAG, REDUCE_DCT_FLAG, REDUCE_LOG2_MASK, REDUCE_POOL_FLAG, SENDERS,
                         fits_float16)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif",
                    ".heic", ".heif", ".avif")
FORWARD_CODES = {"ddim": 0, "random": 1}
FORWARD_NAMES = {v: k for k, v in FORWARD_CODES.items()}


PACKAGE_PREFIX = "package:"


def package_image(name: str) -> Path:
    """``astronaut.png`` -> the image of that name bundled in ``gr_gdmcom/data`` (found through
    the installed package, whatever the working directory)."""
    return Path(str(importlib.resources.files("gr_gdmcom") / "data" / name))


def image_arg(item: str) -> Path:
    """One image argument as a path: ``package:NAME`` the bundled image (``package:`` alone:
    the folder of them), anything else a path (``~`` expanded)."""
    return package_image(item[len(PACKAGE_PREFIX):]) if item.startswith(PACKAGE_PREFIX) else Path(item).expanduser()


def expand_images(spec: Union[str, Sequence[str]]) -> List[Path]:
    """Paths, folders (their image files, sorted) and globs -> list of paths.

    ``spec`` may be a list or one string with entries separated by commas or
    semicolons.  ``package:NAME`` names an image bundled with the package
    (``package:astronaut.png``, ``package:coffee.png``; ``package:`` alone: all
    of them).  Relative paths are relative to the working directory, which is
    the flowgraph's folder when GNU Radio Companion runs a flowgraph.  A name,
    folder or glob that matches nothing is kept as given, so that the source
    reports it (:func:`unmatched_reason`) instead of silently skipping it.
    """
    if isinstance(spec, (str, Path)):
        items = [s.strip() for s in str(spec).replace(";", ",").split(",")]
    else:
        items = [str(s).strip() for s in spec]
    out: List[Path] = []
    for item in filter(None, items):
        p = image_arg(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS) or [p]
        elif is_pattern(item) and not p.exists():
            out += sorted(Path(q) for q in glob.glob(str(p))) or [p]
        else:
            out.append(p)
    return out


def is_pattern(item) -> bool:
    """Whether an image argument is a glob (``*``, ``?``, ``[``)."""
    return any(ch in str(item) for ch in "*?[")


def unmatched_reason(path) -> str:
    """Why an entry of :func:`expand_images` is not an image file: a folder without images, a
    glob that matches nothing, or a name that does not exist."""
    p = Path(path)
    if p.is_dir():
        return f"no images in folder {p} (looked for {', '.join(IMAGE_EXTENSIONS)})"
    where = (f"relative paths start from the working directory {Path.cwd()}, the flowgraph's folder when "
             f"GNU Radio Companion runs it")
    if is_pattern(p) and not p.exists():
        return f"no image matches {p} ({where})"
    return (f"image not found: {p} ({where}; bundled images: {PACKAGE_PREFIX}astronaut.png, "
            f"{PACKAGE_PREFIX}coffee.png)")


@dataclass
class Burst:
    """One burst of complex baseband samples and what to tag it with."""

    samples: np.ndarray
    image_id: int
    chunk_index: int
    chunk_count: int
    name: str


@dataclass
class TxEvent:
    """What the source reports per image (published as a PDU by the block)."""

    image_id: int
    name: str
    path: str
    bursts: List[Burst] = field(default_factory=list)
    error: Optional[str] = None
    symbols: int = 0
    #: the power normalisation's alpha; None for an image that was not encoded (no key in ``info``)
    alpha: Optional[float] = None
    seconds: float = 0.0

    def info(self) -> dict:
        d = dict(image_id=self.image_id, name=self.name, path=self.path, bursts=len(self.bursts),
                 symbols=self.symbols, alpha=self.alpha, seconds=round(self.seconds, 4))
        if self.alpha is None:
            del d["alpha"]
        if self.error:
            d["error"] = self.error
        return d


#: the header ``flags`` bit of each reduction method (phy/header.py; neither: subset)
_METHOD_FLAGS = {"pool": REDUCE_POOL_FLAG, "dct": REDUCE_DCT_FLAG}


class LinkMetaError(ValueError):
    """Latent metadata that the frame header cannot carry, or a header that gives no usable metadata."""


def distinct_files(files: Sequence[Path]) -> List[Path]:
    """``files`` with repeats dropped, the first kept: the same file named twice (a folder and
    a file in it, ``a.png`` and ``./a.png``) is one image, scored once under one label."""
    seen, out = set(), []
    for f in map(Path, files):
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def image_names(files: Sequence[Path]) -> dict:
    """Labels: the file stem, or the whole file name where two stems collide."""
    stems = [f.stem for f in files]
    names = {f: (f.stem if stems.count(f.stem) == 1 else f.name) for f in files}
    seen: dict = {}
    for f in files:  # same file name in two folders: number the later ones
        n = names[f]
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[f] = f"{n}~{seen[n]}"
    return names


def check_filename(pattern: str) -> str:
    """A receiver's output file name pattern, checked once (an unknown field such as ``{idx}``
    made every image decode and then fail on its file name): its fields are ``image_id``,
    ``name`` and ``sender`` (``img{image_id:05d}.png``, ``{name}.png``,
    ``tx{sender}-{image_id}.png``).  Raises ValueError."""
    try:
        name = str(pattern).format(image_id=0, name="image", sender=0)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"filename pattern {pattern!r} cannot be filled ({type(exc).__name__}: {exc}); "
                         "its fields are {image_id}, {name} and {sender}, e.g. img{image_id:05d}.png") from None
    if not name or name.endswith(("/", "\\")):
        raise ValueError(f"filename pattern {pattern!r} gives no file name")
    return pattern


def check_sender(sender, header_version: int = 6) -> int:
    """A transmitter's sender id (:attr:`Header.sender`) as an int in 0..127, and 0 where its bursts carry a
    version-5 header (``FrameConfig.header_version``), which has none.  Raises ValueError."""
    try:
        ok = not isinstance(sender, bool) and float(sender) == int(sender) and 0 <= int(sender) < SENDERS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"sender_id must be an integer in 0..{SENDERS - 1} (7 bits of the frame header), got "
                         f"{sender!r}")
    if int(sender) and int(header_version) < 6:
        raise ValueError(f"sender_id {int(sender)} needs header_version 6: a version-{int(header_version)} header "
                         f"has no sender id (0 only)")
    return int(sender)


def header_reduce_ok(reduce: int) -> bool:
    """Whether the frame header can carry ``reduce``: a power of two up to 2^15 (its log2 in
    the flags' low four bits)."""
    r = int(reduce)
    return 1 <= r <= 1 << REDUCE_LOG2_MASK and not r & (r - 1)


def header_flags(meta: LatentMeta) -> int:
    """The header ``flags`` byte for ``meta``: its reduction (codec/rate.py) and whether
    channel means were removed (0 for the paper's signal).

    Raises:
        LinkMetaError: the reduction is not a power of two up to 2^15, or there are more
            channel means than the header's ``MEAN_SLOTS``.
    """
    if len(meta.means) > MEAN_SLOTS:
        raise LinkMetaError(f"{meta.name}: the frame header carries at most {MEAN_SLOTS} channel means, "
                            f"got {len(meta.means)}; send with remove_mean off (--no-remove-mean)")
    r = int(meta.reduce)
    if not header_reduce_ok(r):
        raise LinkMetaError(f"{meta.name}: the frame header carries reduce as a power of two up to "
                            f"{1 << REDUCE_LOG2_MASK}, got {r}")
    return (r.bit_length() - 1) | _METHOD_FLAGS.get(meta.reduce_method, 0) | (MEANS_FLAG if meta.means else 0)


def header_for(meta: LatentMeta, image_id: int, sender: int = 0) -> Header:
    """Frame header template (chunk fields are filled in by the PHY); ``sender``: the
    transmitter's id, 0-127 (:attr:`Header.sender`).

    Raises:
        LinkMetaError: see :func:`header_flags`; or a mean that float16 cannot hold.
    """
    flags = header_flags(meta)
    means = tuple(float(v) for v in meta.means)
    if not fits_float16(means):
        raise LinkMetaError(f"{meta.name}: channel means {means} do not fit the header's float16")
    return Header(image_id=image_id & 0xFFFF, latent_shape=tuple(meta.latent_shape),
                  image_size=tuple(meta.image_size), k=meta.k, T=meta.T,
                  forward=FORWARD_CODES[meta.forward], guidance=float(meta.guidance), alpha=float(meta.alpha),
                  prompt_hash=meta.prompt_hash, model_hash=int(meta.model_hash), total_symbols=meta.n_symbols,
                  flags=flags, means=means, sender=int(sender))


def meta_from_header(h: Header, prompt: str, name: str) -> LatentMeta:
    """The codec's metadata from a received header; the prompt is the receiver's
    (the header carries only its hash, checked by :class:`RxPipeline`); ``model_hash`` is the
    transmitter's model fingerprint, which the codec compares with its own.

    Raises:
        LinkMetaError: the header says means were removed from a latent with more
            channels than it has mean slots.
    """
    flags, c = int(h.flags), int(h.latent_shape[0])
    means = ()
    if flags & MEANS_FLAG:
        if c > len(h.means):
            raise LinkMetaError(f"{name}: header flags channel means for a {c}-channel latent; "
                                f"it carries {len(h.means)}")
        means = tuple(float(v) for v in h.means[:c])
    return LatentMeta(alpha=float(h.alpha), latent_shape=tuple(int(v) for v in h.latent_shape),
                      image_size=tuple(int(v) for v in h.image_size), k=int(h.k), T=int(h.T),
                      guidance=float(h.guidance), prompt=prompt, forward=FORWARD_NAMES.get(int(h.forward), "ddim"),
                      name=name, means=means, reduce=1 << (flags & REDUCE_LOG2_MASK),
                      reduce_method=next((m for m, f in _METHOD_FLAGS.items() if flags & f), "subset")
                      if flags & REDUCE_LOG2_MASK else "full", model_hash=int(getattr(h, "model_hash", 0)))


class TxPipeline:
    """Encode images and frame them into bursts.

    Args:
        backend: a :class:`gr_gdmcom.bridge.backend.Backend`.
        images: paths, folders and globs (see :func:`expand_images`), expanded again
            at every pass over the list, so a folder's new files are found.
        frame: PHY settings.
        repeat: times to send the list (0 = forever).
        image_id_start: id of the first image (ids wrap at 65536).
        sender: the transmitter's id in every header, 0-127 (:attr:`Header.sender`): receivers
            reassemble each sender's images apart.
        wait: a pass that sends nothing is retried every second instead of ending the stream.
    """

    def __init__(self, backend, images: Union[str, Sequence], frame: FrameConfig, repeat: int = 1,
                 image_id_start: int = 0, wait: bool = False, sender: int = 0):
        self.backend, self.repeat = backend, int(repeat)
        self.sender = check_sender(sender, frame.header_version)
        self.spec = images if isinstance(images, (str, Path)) else [str(i) for i in images]
        self.images = expand_images(self.spec)
        self.wait = bool(wait)
        self.tx = FrameTx(frame)
        self.next_id = int(image_id_start)
        self.counters = dict(images_sent=0, images_failed=0, bursts=0)
        self._reported: set = set()  # paths whose failure was already logged
        self._failed: set = set()  # (path, error) of failures already reported (a waiting pass repeats none)

    def events(self, stop=None) -> Iterator[TxEvent]:
        """One :class:`TxEvent` per image, in order (encoding errors included).

        The list is expanded again at every pass (a folder's new files, a glob's
        new matches).  A pass that sends nothing ends the events (logged once),
        so a missing image never turns ``repeat = 0`` into an endless loop of
        errors; with ``wait`` the pass is instead retried every second until an
        image can be sent or ``stop`` (a :class:`threading.Event`) is set: one
        warning, each failure reported once (an event, a count, an image id), a
        retry that fails the same way again reported by nothing.
        """
        n, waiting = 0, False
        while self.repeat == 0 or n < self.repeat:
            n += 1
            self.images = expand_images(self.spec)
            if not self.images:
                return
            sent = 0
            for path in self.images:
                ev = self.encode_one(path, quiet=waiting)
                if ev is None:  # the same failure as before, while waiting
                    continue
                sent += ev.error is None
                yield ev
            if sent:
                waiting = False
                continue
            if not self.wait:
                log.error("source: none of the %d image(s) could be sent; the source stops (images: %s)",
                          len(self.images), ", ".join(map(str, self.images)))
                return
            if not waiting:
                log.warning("source: nothing to send yet (images: %s); retrying every second until an image can "
                            "be read", ", ".join(map(str, self.images)))
                waiting = True
            n -= 1  # a waiting pass does not count towards repeat
            if stop is not None and stop.wait(1.0):
                return
            if stop is None:
                time.sleep(1.0)

    def encode_one(self, path: Path, quiet: bool = False) -> Optional[TxEvent]:
        """Encode and frame one image: its :class:`TxEvent` (``error`` set where it failed).
        ``quiet``: a failure already reported for this path with the same message gives None
        and takes no image id and no count (a waiting source's retries)."""
        image_id, self.next_id = self.next_id & 0xFFFF, self.next_id + 1
        ev = TxEvent(image_id=image_id, name=Path(path).stem, path=str(path))
        t0 = time.perf_counter()
        try:
            if not Path(path).is_file():
                raise FileNotFoundError(unmatched_reason(path))
            enc = self.backend.encode(str(path), name=ev.name)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the stream goes on
            if quiet and (str(path), str(exc)) in self._failed:
                self.next_id -= 1
                return None
            self._failed.add((str(path), str(exc)))
            ev.error = str(exc)
            self.counters["images_failed"] += 1
            (log.debug if str(path) in self._reported else log.warning)("source: image %s not sent: %s", path, exc)
            self._reported.add(str(path))
            return ev
        try:
            header = header_for(enc.meta, image_id, self.sender)
        except LinkMetaError as exc:
            ev.error = str(exc)
            self.counters["images_failed"] += 1
            log.warning("source: image %s not sent: %s", path, exc)
            return ev
        bursts = self.tx.frames(enc.symbols, header)
        ev.bursts = [Burst(b, image_id, i, len(bursts), ev.name) for i, b in enumerate(bursts)]
        ev.symbols, ev.alpha, ev.seconds = int(enc.symbols.size), float(enc.meta.alpha), time.perf_counter() - t0
        self.counters["images_sent"] += 1
        self.counters["bursts"] += len(bursts)
        return ev


class RxPipeline:
    """Find frames in samples, reassemble images, decode and write them.

    Args:
        backend: a :class:`Backend` whose codec settings (m, rule, ...) the receiver uses.
        config: the receiver's :class:`CodecConfig` (prompt, for the hash check).
        frame: PHY settings (must match the transmitter's).
        out_dir: folder for decoded images (None: do not write).
        filename: pattern with ``{image_id}``, ``{name}`` and ``{sender}`` fields; the images of a
            sender other than 0 go into a sub-folder ``tx<sender>`` unless it names ``{sender}``.
        names: optional ``{image_id: name}`` (e.g. the source's file stems).
    """

    def __init__(self, backend, config: CodecConfig, frame: FrameConfig, out_dir: Optional[str] = None,
                 filename: str = "img{image_id:05d}.png", names: Optional[dict] = None,
                 reassembler: Optional[Reassembler] = None):
        self.backend, self.config = backend, config
        self.rx = FrameRx(frame)
        self.reasm = reassembler or Reassembler(deadline=self.rx.image_deadline)
        self.out_dir = Path(out_dir) if out_dir else None
        self.filename = filename
        self.names = dict(names or {})
        self.counters = dict(images_decoded=0, images_failed=0, prompt_mismatch=0, model_mismatch=0, ids_reused=0)
        self._written: set = set()  # files this receiver wrote: an image id received again keeps both
        self._files: dict = {}  # reception number -> its file: an update goes over it

    def push(self, samples: np.ndarray) -> list:
        """Samples in; reassembled images (ready to decode) out."""
        images = []
        for frame in self.rx.push(samples):
            images += self.reasm.add(frame)
        return images + self.reasm.idle(self.rx.position)

    def flush(self) -> list:
        images = []
        for frame in self.rx.flush():
            images += self.reasm.add(frame)
        return images + self.reasm.flush()

    def all_counters(self) -> dict:
        return {**self.rx.counters, **self.reasm.counters, **self.counters}

    def decode(self, img) -> dict:
        """Decode one reassembled image; returns the result record (never raises)."""
        h = img.header
        image_id, sender = int(h.image_id), int(h.sender)
        name = self.names.get(image_id, f"img{image_id:05d}")
        res = dict(image_id=image_id, sender=sender, name=name, snr_est_db=round(float(img.snr_db), 3),
                   chunks_received=int(img.chunks_received), chunks_total=int(img.chunks_total),
                   complete=bool(img.complete), missing_chunks=list(map(int, img.missing)),
                   untracked_chunks=list(map(int, img.untracked)), erased_symbols=int(img.erased_symbols),
                   repeat=int(img.repeat), update=int(img.update), reception=int(img.reception))
        if int(h.prompt_hash) != prompt_hash(self.config.prompt):
            self.counters["prompt_mismatch"] += 1
            log.warning("sink: image %d was encoded with another prompt (hash %04x); decoding with %r",
                        image_id, int(h.prompt_hash), self.config.prompt)
        t0 = time.perf_counter()
        try:
            meta = meta_from_header(h, self.config.prompt, name)
            mask = None if img.complete else img.mask
            symbols, snr = img.symbols, float(img.snr_db)
            if img.symbol_noise_var is not None:
                # per-symbol reliabilities: MMSE weighting and the effective SNR for the
                # step rule, done here so that a remote backend gets them unchanged
                symbols, snr = weight_by_reliability(symbols, img.symbol_noise_var, img.mask)
                res["snr_eff_db"] = round(snr, 3)
            dec = self.backend.decode(symbols, meta, snr, mask=mask)
        except Exception as exc:  # noqa: BLE001 - reported as a failed image, the flowgraph goes on
            self.counters["images_failed"] += 1
            log.warning("sink: image %d not decoded: %s", image_id, exc)
            res.update(error=str(exc), seconds=round(time.perf_counter() - t0, 4))
            return res
        rec = dec.record
        res.update(n_steps=int(rec["n_steps"]), rule=rec["rule"], k=int(h.k), m=int(rec["m"]), T=int(h.T),
                   alpha=float(meta.alpha), s_tot2=rec.get("s_tot2"),
                   unet_calls=int(rec["unet_calls"]), symbols=int(img.symbols.size),
                   height=int(dec.image.shape[0]), width=int(dec.image.shape[1]),
                   seconds=round(time.perf_counter() - t0, 4), model_mismatch=bool(rec.get("model_mismatch")))
        if res["model_mismatch"]:
            self.counters["model_mismatch"] += 1
            log.warning("sink: image %d was encoded by another model (fingerprint %04x): decoded with this "
                        "receiver's model, it is not the transmitted image; use the transmitter's model (--model, "
                        "or the gdmcom serve it used)", image_id, int(h.model_hash))
        res["image"] = dec.image
        if self.out_dir is not None:
            try:
                res["file"] = str(self._write(dec.image, image_id, name, int(img.repeat), int(img.update), sender,
                                              int(img.reception)))
            except OSError as exc:  # a full disk, a folder removed or made read-only during the run
                self.counters["images_failed"] += 1
                res["error"] = f"decoded, but cannot write it to {self.out_dir}: {exc.strerror or exc}"
                log.warning("sink: image %d %s", image_id, res["error"])
                return res
        self.counters["images_decoded"] += 1
        return res

    def _write(self, image: np.ndarray, image_id: int, name: str, repeat: int = 0, update: int = 0,
               sender: int = 0, reception: int = 0) -> Path:
        """Write a decoded image into ``out_dir`` (a sender other than 0: its sub-folder
        ``tx<sender>``, unless the pattern names ``{sender}``); an id received again keeps both files
        (``repeat``: the reassembler recognised the same image sent again); an ``update`` (the
        same reception with chunks that came late) goes over its earlier file."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rel = self.filename.format(image_id=image_id, name=name, sender=sender)
        if sender and "{sender" not in self.filename:
            rel = f"tx{sender}/{rel}"
        path = first = self.out_dir / rel
        n = 1
        earlier = self._files.get(reception) if update else None
        if earlier is not None:
            path = earlier
            log.info("sink: image %d again with chunks that came late (update %d); written over %s", image_id,
                     update, path.name)
        while earlier is None and path in self._written:  # the same id again: a restarted transmitter, or two
            n += 1
            path = first.with_name(f"{first.stem}~{n}{first.suffix}")
        if n > 1:
            self.counters["ids_reused"] += 1
            if repeat:
                log.info("sink: image %d received again (a repeated transmission); written as %s beside %s",
                         image_id, path.name, first.name)
            else:
                log.warning("sink: image id %d received again after its image was decoded (a restarted "
                            "transmitter, or two with one sender id?); written as %s, not over %s", image_id,
                            path.name, first.name)
        path.parent.mkdir(parents=True, exist_ok=True)  # a pattern with a folder: {name}/img{image_id}.png
        Image.fromarray(image).save(path)
        self._written.add(path)
        if reception:
            self._files[reception] = path
        return path
