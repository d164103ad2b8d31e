"""Soak the reassembler with random frame sequences: what a bad channel and careless senders hand it.

    .venv/bin/python benchmarks/soak_reassembly.py [--streams 150] [--seed 0]

Each stream is one of six kinds (by seed): ``simple`` (one transmitter, consecutive ids),
``restart`` (the transmitter restarts: its id jumps back or anywhere, sometimes mid-image),
``retransmit`` (images sent again, same header and content), ``contradict`` (a CRC-valid frame of
an image's id whose chunk_count, total_symbols or latent_shape differ), ``interleave`` (2-3
transmitters' frames interleaved) and ``many_open`` (4-11 transmitters, short runs, many images
open); in half the streams of several transmitters each has its own sender id.  Images have
random latent shapes and 1-200 chunks; frames carry random noise variances, per-symbol variances, tracked flags and (in half the streams) erased runs, some of a whole chunk.
Then frames are lost (up to 40 %), duplicated (20 %), swapped with their neighbour (20 %) or sent
with one symbol short of their header's size (1 %, to be dropped as inconsistent), and
fed to a ``Reassembler`` with random ``timeout_frames``, ``max_pending``,
``finalise_on_new_id`` and deadlines (none, or 1-50 frames after a frame, each frame at its place in
the stream; ``idle`` called after each frame with the stream position a little past it).  Every symbol is ``uid + 1j * position`` (uid: one per transmitted image),
so an image out that mixes two images' symbols, or puts one at the wrong place, is seen.

Checks: ``add``/``flush`` never raise; never more than ``max_pending`` open images of a sender, the repeat
memory bounded; each image out has symbols/mask/symbol_noise_var of ``total_symbols``, zeros
outside the mask, consistent chunk counts, ``complete`` and ``erased_symbols``, a finite SNR that
is not 100 dB when nothing was received, one transmitted image's symbols at their positions;
images_complete + images_partial = images out - updates, images_repeated = images with ``repeat``
(updates aside), images_updated = images with ``update``, each update missing fewer chunks than its
earlier version (the one with its ``reception`` number; a new reception, a new number),
images_idle <= images_partial + updates (an image complete is never waited out); every accepted
chunk is in some image out.  One row per kind, the summed counters, then the last line
``exceptions X, failing streams Y; ...``: all zero is a pass (exit 0; else 1).  Found this way
(10e69a6): an image whose received symbols were all erased reported 100 dB.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gr_gdmcom.phy import Header, Reassembler, RxFrame  # noqa: E402
from gr_gdmcom.phy.reassembly import REPEAT_MEMORY, _image_key  # noqa: E402
from gr_gdmcom.phy.snr import noise_var_to_snr_db  # noqa: E402
from gr_gdmcom.phy.tx import chunk_sizes  # noqa: E402

UID = [1]


def new_uid():
    UID[0] += 1
    return UID[0]


def make_image(rng, image_id, small=False):
    c = int(rng.integers(1, 5)); h = int(rng.integers(1, 9)); w = int(rng.integers(1, 40 if small else 400))
    total = c * h * w // 2 * 2 or 2
    maxc = int(rng.choice([1, 3, 16, 64, 200, 1000]))
    count = max(1, -(-total // maxc))
    count = min(count, 200)
    hdr = dict(image_id=image_id, chunk_count=count, total_symbols=total, latent_shape=(c, h, w),
               image_size=(8 * h, 8 * w), alpha=float(np.float32(rng.uniform(0.5, 3))))
    return hdr


def frames_of(rng, hdr, uid, p_erase):
    sizes = chunk_sizes(hdr["total_symbols"], hdr["chunk_count"])
    offs = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for i, n in enumerate(sizes):
        h = Header(chunk_index=i, chunk_symbols=int(n), **hdr)
        pos = np.arange(offs[i], offs[i + 1])
        sym = (uid + 1j * pos).astype(np.complex64)
        nv = float(10 ** rng.uniform(-4, 0.5))
        snv = np.full(n, nv, np.float32) * rng.uniform(0.5, 1.5, n).astype(np.float32)
        erased = None
        if rng.random() < p_erase and n:
            erased = np.zeros(n, bool)
            a = int(rng.integers(0, n)); b = int(rng.integers(a, n + 1)) if rng.random() < 0.8 else n
            if rng.random() < 0.2:
                a, b = 0, n  # all erased
            erased[a:b] = True
            if not erased.any():
                erased = None
            else:
                sym[erased] = 0; snv[erased] = 0
        out.append(RxFrame(header=h, symbols=sym, snr_db=noise_var_to_snr_db(nv), noise_var=nv, cfo=0.0,
                           gain=1 + 0j, start=0, symbol_noise_var=snv, tracked=bool(rng.random() < 0.9),
                           erased=erased))
    return out


def scenario(rng, kind):
    """The frames of one stream of ``kind``, in arrival order."""
    n_tx = 1 if kind in ("simple", "restart", "retransmit", "contradict") else int(rng.integers(2, 4))
    if kind == "many_open":
        n_tx = int(rng.integers(4, 12))
    p_erase = 0.3 if rng.random() < 0.5 else 0.0
    # half the streams of several transmitters give each its own sender id (the header's, version 6)
    senders = [0] * n_tx
    if n_tx > 1 and rng.random() < 0.5:
        senders = [int(v) for v in rng.choice(np.arange(1, 128), n_tx, replace=False)]
    streams = []
    for t in range(n_tx):
        nid = int(rng.integers(0, 65536)) if rng.random() < 0.7 else 65530
        frames = []
        for k in range(int(rng.integers(1, 25))):
            if kind == "restart" and rng.random() < 0.15:
                nid = int(rng.choice([0, nid - 3, int(rng.integers(0, 65536))])) % 65536
                cut = int(rng.integers(0, len(frames) + 1))
                frames = frames[:cut] if rng.random() < 0.5 else frames
            hdr = dict(make_image(rng, nid & 0xFFFF, small=kind == "many_open"), sender=senders[t])
            uid = new_uid()
            fr = frames_of(rng, hdr, uid, p_erase)
            if kind == "restart" and rng.random() < 0.3:  # transmitter restarted mid image: only a prefix
                fr = fr[: int(rng.integers(0, len(fr) + 1))]
            frames += fr
            if kind == "retransmit" and rng.random() < 0.4:
                frames += frames_of(rng, hdr, uid, p_erase)  # same content again
            if kind == "contradict" and rng.random() < 0.5 and fr:
                # a CRC-valid header with contradicting fields for the same id
                h2 = dict(hdr)
                what = rng.integers(0, 3)
                if what == 0:
                    h2["chunk_count"] = max(1, hdr["chunk_count"] + int(rng.choice([-1, 1])))
                    h2["chunk_count"] = min(h2["chunk_count"], h2["total_symbols"])
                elif what == 1:
                    h2["total_symbols"] = max(h2["chunk_count"], hdr["total_symbols"] + int(rng.choice([-2, 2])))
                else:
                    c, hh, w = hdr["latent_shape"]; h2["latent_shape"] = (c, hh, w + 1)
                if h2 == hdr:  # no contradiction drawn (an identical header is the same image)
                    h2["latent_shape"] = (hdr["latent_shape"][0] + 1,) + tuple(hdr["latent_shape"][1:])
                bad = frames_of(rng, h2, new_uid(), p_erase)
                j = int(rng.integers(0, len(bad)))
                frames.insert(len(frames) - int(rng.integers(0, len(fr) + 1)), bad[j])
            if rng.random() < 0.9:
                nid += 1
            elif rng.random() < 0.5:
                nid += int(rng.integers(2, 300))
        streams.append(frames)
    # interleave the transmitters
    out = []
    idx = [0] * n_tx
    while any(idx[t] < len(streams[t]) for t in range(n_tx)):
        t = int(rng.integers(0, n_tx))
        if idx[t] < len(streams[t]):
            run = int(rng.integers(1, 4 if kind == "many_open" else 20))
            out += streams[t][idx[t]: idx[t] + run]
            idx[t] += run
    # faults: loss, duplicate, reorder
    p_loss, p_dup, p_swap = rng.uniform(0, 0.4), rng.uniform(0, 0.2), rng.uniform(0, 0.2)
    faulty = []
    for f in out:
        if rng.random() < p_loss:
            continue
        faulty.append(f)
        if rng.random() < p_dup:
            faulty.append(f)
        if rng.random() < 0.01 and len(f.symbols) > 1:  # a frame whose size does not fit its header
            faulty.append(RxFrame(header=f.header, symbols=f.symbols[:-1], snr_db=f.snr_db, noise_var=f.noise_var,
                                  cfo=0.0, gain=1 + 0j, start=0))
    for i in range(len(faulty) - 1):
        if rng.random() < p_swap:
            faulty[i], faulty[i + 1] = faulty[i + 1], faulty[i]
    return faulty


KINDS = ("simple", "restart", "retransmit", "contradict", "interleave", "many_open")


def check_image(img, problems, where):
    """Append what is wrong with one image out to ``problems``."""
    h = img.header
    n = h.total_symbols
    if img.symbols.shape != (n,) or img.mask.shape != (n,) or img.symbol_noise_var.shape != (n,):
        problems.append(f"{where}: shapes {img.symbols.shape} {img.mask.shape} vs total {n}")
        return
    if img.symbols.dtype != np.complex64 or img.mask.dtype != bool:
        problems.append(f"{where}: dtypes")
    if img.chunks_total != h.chunk_count or img.chunks_received + len(img.missing) != img.chunks_total:
        problems.append(f"{where}: chunk counts {img.chunks_received}+{len(img.missing)} != {img.chunks_total}")
    if img.complete != (not img.missing and img.erased_symbols == 0):
        problems.append(f"{where}: complete flag")
    if np.any(img.symbols[~img.mask] != 0):
        problems.append(f"{where}: nonzero symbols outside the mask")
    if np.any(img.symbol_noise_var[~img.mask] != 0):
        problems.append(f"{where}: nonzero symbol_noise_var outside the mask")
    if not (np.isfinite(img.snr_db) and np.isfinite(img.noise_var)):
        problems.append(f"{where}: non-finite snr {img.snr_db}")
    if not img.mask.any() and img.snr_db > 60:
        problems.append(f"{where}: no symbol received but snr_db {img.snr_db:.1f} (noise_var {img.noise_var})")
    sizes = chunk_sizes(n, h.chunk_count)
    got = sum(int(sizes[i]) for i in range(h.chunk_count) if i not in img.missing)
    if int(img.mask.sum()) != got - img.erased_symbols:
        problems.append(f"{where}: mask count {img.mask.sum()} != {got} - {img.erased_symbols}")
    s = img.symbols[img.mask]
    uids = set(np.unique(s.real.astype(np.int64)).tolist())
    if len(uids) > 1:
        problems.append(f"{where}: symbols of {len(uids)} transmitted images mixed (uids {sorted(uids)[:4]})")
    if np.any(s.imag.astype(np.int64) != np.flatnonzero(img.mask)):
        problems.append(f"{where}: symbols at the wrong positions")
    return uids


def run_one(seed):
    """One stream: (kind, frames in, images out, counters, problems, reassembler settings)."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    frames = scenario(rng, kind)
    tf = int(rng.choice([1, 2, 5, 64, 1000])); mp = int(rng.choice([1, 2, 4, 8, 64]))
    fnew = bool(rng.random() < 0.6) if kind != "many_open" else bool(rng.random() < 0.2)
    wait = None if rng.random() < 0.3 else int(rng.choice([1, 2, 5, 50])) * 1000
    r = Reassembler(timeout_frames=tf, max_pending=mp, finalise_on_new_id=fnew,
                    deadline=None if wait is None else (lambda f: f.start + wait))
    problems, images = [], []
    for k, f in enumerate(frames):
        images += r.add(dataclasses.replace(f, start=1000 * k))  # (frame k of the stream at 1000 k)
        images += r.idle(1000 * k + int(rng.integers(0, 3000)))
        most = max((sum(1 for s, _ in r._open if s == t) for t, _ in r._open), default=0)
        if most > mp:
            problems.append(f"frame {k}: {most} open of one sender > max_pending {mp}")
        if len(r._done) > REPEAT_MEMORY:
            problems.append(f"frame {k}: repeat memory {len(r._done)}")
    images += r.flush()
    if r._open:
        problems.append("open images after flush")
    c = r.counters
    updates = sum(1 for i in images if i.update)
    if c["images_complete"] + c["images_partial"] != len(images) - updates:
        problems.append(f"counters complete {c['images_complete']} + partial {c['images_partial']} != "
                        f"{len(images)} images out - {updates} updates")
    if c["images_idle"] > c["images_partial"] + updates:
        problems.append(f"images_idle {c['images_idle']} > images_partial {c['images_partial']} + {updates} updates")
    if c["images_repeated"] != sum(1 for i in images if i.repeat and not i.update):
        problems.append(f"images_repeated {c['images_repeated']} != "
                        f"{sum(1 for i in images if i.repeat and not i.update)} with repeat>0 (not updates)")
    if c["images_updated"] != updates:
        problems.append(f"images_updated {c['images_updated']} != {updates} with update>0")
    latest = {}  # an update has its earlier version's reception number, every chunk it had, and more
    for j, img in enumerate(images):
        prev = latest.get(img.reception)
        if img.update and (prev is None or prev.update != img.update - 1 or not set(img.missing) < set(prev.missing)
                           or (prev.header.image_id, _image_key(prev.header), prev.repeat) !=
                           (img.header.image_id, _image_key(img.header), img.repeat)):
            problems.append(f"image {j} (id {img.header.image_id}): update {img.update} does not add to its "
                            "earlier version")
        elif not img.update and prev is not None:
            problems.append(f"image {j} (id {img.header.image_id}): reception number {img.reception} used twice")
        latest[img.reception] = img
    for j, img in enumerate(images):
        check_image(img, problems, f"image {j} (id {img.header.image_id})")
    # every accepted chunk (uid, index) is in some image out
    out_chunks = set()
    for img in images:
        for i in range(img.chunks_total):
            if i not in img.missing:
                out_chunks.add((img.header.image_id, _image_key(img.header), i))
    for f in frames:
        key = (f.header.image_id, _image_key(f.header), f.header.chunk_index)
        sizes = chunk_sizes(f.header.total_symbols, f.header.chunk_count)
        if f.header.chunk_index < len(sizes) and len(f.symbols) == sizes[f.header.chunk_index] and key not in out_chunks:
            problems.append(f"chunk {key[2]} of image {key[0]} accepted but in no image out")
            break
    return kind, len(frames), len(images), c, problems, (tf, mp, fnew, wait)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    rows = defaultdict(lambda: [0, 0, 0, 0]); nfail = 0; exc = 0; tot = defaultdict(int)
    for s in range(a.seed, a.seed + a.streams):
        try:
            kind, nf, ni, c, problems, par = run_one(s)
        except Exception:
            exc += 1
            print(f"seed {s}: exception")
            traceback.print_exc()
            continue
        r = rows[kind]
        r[0] += 1
        r[1] += nf
        r[2] += ni
        for k, v in c.items():
            tot[k] += v
        if problems:
            r[3] += 1
            nfail += 1
            if nfail <= 15:
                print(f"seed {s} ({kind}, timeout/max_pending/new_id/deadline {par}): {problems[:3]}")
    for k, r in rows.items():
        print(f"{k:11s} streams {r[0]:4d} frames {r[1]:6d} images out {r[2]:5d} failing {r[3]}")
    print("counters", dict(tot))
    print(f"exceptions {exc}, failing streams {nfail}; {time.time() - t0:.1f} s")
    return 1 if exc or nfail else 0


if __name__ == "__main__":
    sys.exit(main())
