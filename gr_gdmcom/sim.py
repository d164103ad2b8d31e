"""Link simulation without GNU Radio: codec -> numpy channel -> codec.

The decoder is given the channel's SNR (``snr_source = "nominal"``); the
GNU Radio link (``gdmcom link``) instead hands it the PHY's estimate.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image

from .codec import Encoded, Failed, GenerativeCodec, load_rgb
from .bridge.backend import BackendCodec  # noqa: F401 - its home was here
from .codec.images import ImageError
from .eval.metrics import ms_ssim, psnr

log = logging.getLogger(__name__)
CHANNELS = ("awgn", "rayleigh")


def snr_tag(snr_db: float) -> str:
    """File-name form of an SNR: 5 -> '5', 2.5 -> '2.5', -3 -> '-3'."""
    return f"{float(snr_db):g}"


def channel_rng(seed: int, name: str, snr_db: float) -> np.random.Generator:
    """A generator that depends only on (seed, image, SNR): results do not
    change with batch composition or order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(snr_tag(snr_db).encode())])


def pass_channel(symbols: np.ndarray, snr_db: float, channel: str, rng: np.random.Generator):
    """Return (received equalised symbols, effective SNR in dB given to the decoder)."""
    from .phy import awgn, rayleigh_block

    if channel == "awgn":
        return awgn(symbols, snr_db, rng), float(snr_db)
    if channel == "rayleigh":
        y, nvar = rayleigh_block(symbols, snr_db, rng)
        return y, float(-10 * math.log10(float(np.mean(nvar))))
    raise ValueError(f"unknown channel {channel!r}; choose one of {', '.join(CHANNELS)}")


def row_names(images: Sequence) -> List[str]:
    """The ``image`` of :func:`simulate`'s rows: file stems, two files of one name (in two folders)
    told apart (``pipeline.image_names``); ``image{i}`` for an array."""
    from .pipeline import image_names

    labels = image_names([Path(str(p)) for p in images if isinstance(p, (str, Path))])
    return [labels[Path(str(p))] if isinstance(p, (str, Path)) else f"image{i}" for i, p in enumerate(images)]


def simulate(codec: GenerativeCodec, images: Sequence, snrs: Sequence[float], channel: str = "awgn",
             out_dir: Optional[Path] = None, names: Optional[Sequence[str]] = None) -> Iterator[dict]:
    """Yield one row per (image, SNR): metrics, N, timings.  Images that cannot
    be read give a row with ``error`` and the others still complete."""
    cfg = codec.config
    names = list(names) if names else row_names(images)
    originals = {}
    for i, src in enumerate(images):
        try:
            originals[i] = np.asarray(load_rgb(src, cfg.max_pixels))
        except ImageError as exc:
            yield dict(image=names[i], error=str(exc))
    idx = sorted(originals)
    t0 = time.perf_counter()
    encoded = codec.encode_many([originals[i] for i in idx], [names[i] for i in idx])
    t_enc = (time.perf_counter() - t0) / max(len(idx), 1)
    good = [(i, e) for i, e in zip(idx, encoded) if isinstance(e, Encoded)]
    for i, e in zip(idx, encoded):
        if isinstance(e, Failed):
            yield dict(image=names[i], error=e.error)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    sheets = {i: [] for i, _ in good}  # (label, decoded image) per SNR, for each image's contact sheet
    for snr in snrs:
        items, snr_eff_of = [], {}
        for i, e in good:
            y, snr_eff_of[i] = pass_channel(e.symbols, snr, channel, channel_rng(cfg.seed, names[i], snr))
            items.append((y, e.meta, snr_eff_of[i]))
        t1 = time.perf_counter()
        decoded = codec.decode_many(items)
        t_dec = (time.perf_counter() - t1) / max(len(items), 1)
        for (i, e), d in zip(good, decoded):
            if isinstance(d, Failed):
                sheets[i].append((sheet_label(snr, {}), None))
                yield dict(image=names[i], snr_db=float(snr), error=d.error)
                continue
            ref = originals[i]
            ms, scales = ms_ssim(ref, d.image)
            row = dict(image=names[i], snr_db=float(snr), channel=channel, snr_source="nominal",
                       n_steps=d.record["n_steps"], k=e.meta.k, m=cfg.m, T=cfg.T, rule=d.record["rule"],
                       forward=e.meta.forward, guidance=e.meta.guidance, symbols=int(e.symbols.size),
                       bcr=e.record["bcr"], **latent_power(e.meta.alpha, d.record),
                       psnr=round(psnr(ref, d.image), 4),
                       ms_ssim=None if ms is None else round(ms, 6), ms_ssim_scales=scales,
                       unet_calls=e.record["unet_calls"] + d.record["unet_calls"],
                       seconds=round(t_enc + t_dec, 4),
                       stages={**_stages("tx", e.record), **_stages("rx", d.record)})
            if channel != "awgn":
                row["snr_applied_db"] = round(snr_eff_of[i], 4)
            if out_dir is not None:
                path = out_dir / f"{names[i]}_snr{snr_tag(snr)}.png"
                Image.fromarray(d.image).save(path)
                row["output"] = str(path)
                row["sheet"] = str(out_dir / f"{names[i]}_snrs.png")  # written when every SNR is done
                sheets[i].append((sheet_label(snr, row), path))  # (a path: a long run keeps no pixels)
            yield row
    if out_dir is not None:
        for i, tiles in sheets.items():
            contact_sheet(originals[i], tiles, out_dir / f"{names[i]}_snrs.png")


def contact_sheet(original: np.ndarray, tiles: Sequence[tuple], path: Path, tile_width: int = 256) -> Path:
    """One picture to look at: ``original`` and each ``(label, image, its file or None)`` of ``tiles``
    side by side, each scaled to ``tile_width`` pixels wide, its label (lines split on
    ``\\n``) under it; a tile without an image is grey, "not decoded".  Pillow only (no
    matplotlib: ``gdmcom link`` and ``simulate`` need no extra).  Returns ``path``."""
    from PIL import ImageDraw, ImageFont

    h0, w0 = original.shape[:2]
    w = int(tile_width)
    h = max(1, round(h0 * w / w0))
    try:
        font = ImageFont.load_default(size=max(11, w // 19))
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    entries = [("original", original)] + list(tiles)
    lines = max(len(label.split("\n")) for label, _ in entries)
    line_h = int(font.getbbox("Ag")[3]) + 4
    band, gap = lines * line_h + 6, 6
    sheet = Image.new("RGB", (len(entries) * (w + gap) + gap, h + band + 2 * gap), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (label, img) in enumerate(entries):
        x = gap + j * (w + gap)
        if img is None:
            draw.rectangle([x, gap, x + w - 1, gap + h - 1], fill=(128, 128, 128))
            draw.text((x + w // 2, gap + h // 2), "not decoded", fill="white", font=font, anchor="mm")
        else:
            resample = Image.NEAREST if w >= w0 else Image.LANCZOS  # small images: pixels kept visible
            tile = Image.open(img).convert("RGB") if isinstance(img, (str, Path)) else Image.fromarray(
                np.asarray(img, np.uint8))
            sheet.paste(tile.resize((w, h), resample), (x, gap))
        for n, text in enumerate(label.split("\n")):
            draw.text((x + w // 2, gap + h + 4 + n * line_h), text, fill="black", font=font, anchor="ma")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def sheet_label(snr_db: float, row: dict) -> str:
    """A contact-sheet tile's label for one result row: SNR (and the receiver's estimate), N,
    PSNR / MS-SSIM, or the row's error."""
    head = f"{snr_db:g} dB" + (f" (est. {row['snr_est_db']:.1f})" if row.get("snr_est_db") is not None else "")
    if row.get("error") or row.get("psnr") is None:
        return head + "\nnot decoded"
    ms = f"\nMS-SSIM {row['ms_ssim']:.3f}" if row.get("ms_ssim") is not None else ""
    return head + f", N = {row['n_steps']}\nPSNR {row['psnr']:.2f} dB{ms}"


def latent_power(alpha: float, record: dict) -> dict:
    """The columns that explain N: the latent's power ``P = 1/alpha^2`` before the
    transmitter normalised it, ``alpha``, and the rule's total noise variance
    ``s_tot2`` (Proposition 1; it grows with P, so N differs from the P = 1
    table of ``gdmcom steps``: ``gdmcom steps --power P`` reproduces it)."""
    alpha = float(alpha)
    out = dict(power=round(1.0 / alpha ** 2, 6) if alpha else None, alpha=round(alpha, 6))
    if record.get("s_tot2") is not None:
        out["s_tot2"] = round(float(record["s_tot2"]), 6)
    return out


def _stages(side: str, record: dict) -> dict:
    """Seconds per stage of one side, keys prefixed ``tx_``/``rx_`` (both sides invert)."""
    return {f"{side}_{k}": round(v, 4) for k, v in record.get("seconds", {}).items() if k != "other"}


