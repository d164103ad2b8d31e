"""``gdmcom link``: run the real GNU Radio link headless and report per image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def register(sub) -> None:
    from .config import add_codec_args

    p = sub.add_parser("link", help="send images through a GNU Radio flowgraph (source -> channel -> sink)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image", nargs="+", required=True, help="image files, folders or globs")
    p.add_argument("--snr", nargs="+", type=float, required=True, help="Es/N0 values in dB (one run each)")
    p.add_argument("--out", required=True, help="output folder; images go to OUT/snr<DB>/<stem>.png")
    p.add_argument("--server", default="local", help="'local' or the ZMQ endpoint of `gdmcom serve`")
    ch = p.add_argument_group("channel")
    ch.add_argument("--channel", default=None, choices=("awgn", "model"),
                    help="awgn (sample-exact) or model (channels.channel_model); default: model when any "
                         "impairment is given, else awgn")
    ch.add_argument("--cfo", type=float, default=0.0, help="normalised frequency offset, cycles/sample")
    ch.add_argument("--epsilon", type=float, default=1.0, help="sample-clock ratio (channel_model epsilon)")
    ch.add_argument("--delay", type=float, default=0.0, help="fractional timing offset, samples")
    ch.add_argument("--taps", type=complex, nargs="+", default=[1.0],
                    help="multipath taps, e.g. --taps 1 0.3j -0.1 (normalised to unit energy)")
    ch.add_argument("--channel-seed", type=int, default=1, help="noise seed")
    ph = p.add_argument_group("phy")
    ph.add_argument("--sps", type=int, default=None, help="samples per symbol (1 = no pulse shaping)")
    ph.add_argument("--pilot-spacing", type=int, default=None, help="one pilot every P payload symbols")
    ph.add_argument("--tx-clip", type=float, default=None,
                    help="clip transmitted samples at this many times the rms amplitude (0 = off, >= 1)")
    add_codec_args(p)
    p.set_defaults(func=cmd_link)


def cmd_link(args) -> int:
    from .cli import emit
    from .codec import ModelLoadError, load_rgb
    from .codec.images import ImageError
    from .config import codec_config_from_args
    from .eval.metrics import ms_ssim, psnr
    from .link import ChannelConfig, run_link
    from .phy import FrameConfig
    from .pipeline import expand_images
    from .sim import snr_tag

    cfg = codec_config_from_args(args)
    fkw = {k: v for k, v in (("sps", args.sps), ("pilot_spacing", args.pilot_spacing), ("tx_clip", args.tx_clip))
           if v is not None}
    frame = FrameConfig(**fkw)
    impaired = args.cfo or args.epsilon != 1.0 or args.delay or list(args.taps) != [1.0]
    kind = args.channel or ("model" if impaired else "awgn")
    paths = expand_images(args.image)
    names = {i & 0xFFFF: p.stem for i, p in enumerate(paths)}
    originals = {}
    for i, p in enumerate(paths):
        try:
            originals[i] = np.asarray(load_rgb(p, cfg.max_pixels))
        except ImageError as exc:
            print(f"warning: {exc} (the source will report it too)", file=sys.stderr)
    failed = 0
    for snr in args.snr:
        ch = ChannelConfig(snr_db=snr, kind=kind, cfo=args.cfo, epsilon=args.epsilon, delay=args.delay,
                           taps=args.taps, seed=args.channel_seed)
        out_dir = Path(args.out) / f"snr{snr_tag(snr)}"
        try:
            run = run_link([str(p) for p in paths], str(out_dir), ch, cfg, cfg, frame, args.server, names)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        got = {r["image_id"]: r for r in run["results"]}
        for ev in run["tx_events"]:
            i = ev["image_id"]
            row = dict(image=ev["name"], snr_db=float(snr), channel=kind, sps=frame.sps)
            if "error" in ev:
                row["error"] = f"not sent: {ev['error']}"
            elif i not in got:
                row["error"] = "lost: no frame of this image was received"
            else:
                r = got[i]
                row.update({k: r[k] for k in ("snr_est_db", "chunks_received", "chunks_total", "complete")})
                if "error" in r:
                    row["error"] = r["error"]
                else:
                    row.update(n_steps=r["n_steps"], rule=r["rule"], k=r["k"], m=r["m"], T=r["T"],
                               unet_calls=cfg.k + r["unet_calls"], symbols=r["symbols"], output=r.get("file"),
                               seconds=r["seconds"])
                    if i in originals and r.get("file"):
                        dec = np.asarray(load_rgb(r["file"]))
                        ms, scales = ms_ssim(originals[i], dec)
                        row.update(psnr=round(psnr(originals[i], dec), 4),
                                   ms_ssim=None if ms is None else round(ms, 6), ms_ssim_scales=scales)
            row["counters"] = run["counters"]
            failed += "error" in row
            emit(row)
    return 1 if failed else 0
