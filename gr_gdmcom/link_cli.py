"""``gdmcom link``: run the real GNU Radio link headless and report per image."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np


OFFLINE_DEFAULT_MODEL = "patch-gmm"


def register(sub) -> None:
    from .cli import add_images_arg, add_run_args
    from .config import add_codec_args, add_frame_args, finite_complex, finite_float, snr_arg

    p = sub.add_parser("link", help="send images through a GNU Radio flowgraph (source -> channel -> sink)")
    add_images_arg(p)
    p.add_argument("--snr", nargs="+", type=snr_arg, required=True, help="Es/N0 values in dB (one run each)")
    p.add_argument("--out", required=True, help="output folder; images go to OUT/snr<DB>/<stem>.png")
    add_run_args(p)
    ch = p.add_argument_group("channel (noise seeded by --seed)")
    ch.add_argument("--channel", default=None, choices=("awgn", "model"),
                    help="awgn (sample-exact) or model (channels.channel_model) [default: model when any "
                         "impairment is given, else awgn]")
    ch.add_argument("--cfo", type=finite_float, default=0.0,
                    help="normalised frequency offset, cycles/sample [default=%(default)r]")
    ch.add_argument("--epsilon", type=finite_float, default=1.0,
                    help="sample-clock ratio (channel_model epsilon) [default=%(default)r]")
    ch.add_argument("--delay", type=finite_float, default=0.0,
                    help="fractional timing offset, samples, |delay| <= 4 [default=%(default)r]")
    ch.add_argument("--taps", type=finite_complex, nargs="+", default=[1.0],
                    help="multipath taps, e.g. --taps 1 0.3j -0.1 (normalised to unit energy) [default: 1]")
    ch.add_argument("--fading", type=finite_float, default=0.0, metavar="FDTS",
                    help="flat fading before the noise (channels.fading_model, 8 sinusoids): maximum Doppler "
                         "over the sample rate, e.g. 1e-4; --snr is then the average SNR [default: none]")
    ch.add_argument("--rician-k", type=finite_float, default=0.0, metavar="K",
                    help="with --fading: Rician K factor (0 = Rayleigh) [default=%(default)r]")
    ch.add_argument("--selective", action="store_true",
                    help="with --fading and several --taps: each tap a path 1 sample apart that fades on its own "
                         "(channels.selective_fading_model): frequency-selective fading [default: all paths fade "
                         "together]")
    ch.add_argument("--iq-imbalance", type=finite_float, nargs=2, default=[0.0, 0.0], metavar=("DB", "DEG"),
                    help="the receiver's IQ imbalance after the noise (channels.iqbal_gen): magnitude dB, phase "
                         "degrees, e.g. --iq-imbalance 1 5 [default: none]")
    ch.add_argument("--dc-offset", type=finite_float, default=None, metavar="DB",
                    help="the receiver's DC offset (LO leakage) after the noise, dB against the signal's power, "
                         "e.g. -20; measured and subtracted where the channel is quiet: see --lead [default: none]")
    ch.add_argument("--lead", type=int, default=0, metavar="SAMPLES",
                    help="samples of the channel alone (noise, offset) before the first burst: the receiver "
                         "started before the transmitter, as a radio's is [default=%(default)r]")
    add_frame_args(p)
    add_codec_args(p)
    # The link's default is the best prior that runs offline on a CPU (real quality needs SD-1.5 on a GPU).
    p.set_defaults(func=cmd_link, model=OFFLINE_DEFAULT_MODEL)


def cmd_link(args) -> int:
    from .cli import emit, prepare_run
    from .codec import ModelLoadError, load_rgb
    from .codec.images import ImageError
    from .config import frame_config_from_args
    from .eval.metrics import ms_ssim, psnr
    from .link import ChannelConfig, run_link
    from .pipeline import image_names
    from .cli import say_sheets
    from .sim import contact_sheet, latent_power, sheet_label, snr_tag

    frame = frame_config_from_args(args)
    channels = {}
    for snr in args.snr:  # every channel checked before the model loads (ValueError: one line, exit 2)
        ch = ChannelConfig(snr_db=snr, kind="model", cfo=args.cfo, epsilon=args.epsilon, delay=args.delay,
                           taps=args.taps, seed=args.seed, fading=args.fading, rician_k=args.rician_k,
                           selective=args.selective, iq_imbalance=tuple(args.iq_imbalance),
                           dc_offset=args.dc_offset, lead=args.lead)
        kind = args.channel or ("model" if ch.impaired else "awgn")  # sample-exact AWGN unless impaired
        channels[snr] = dataclasses.replace(ch, kind=kind)
    try:
        cfg, paths = prepare_run(args, args.images)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # output files are named by the stem: two images of one name (in two folders) get distinct
    # names, or the second's decode would overwrite the first's and be scored against it
    labels = image_names(paths)
    names = {i & 0xFFFF: labels[p] for i, p in enumerate(paths)}
    originals = {}
    for i, p in enumerate(paths):
        try:
            originals[i] = np.asarray(load_rgb(p, cfg.max_pixels))
        except ImageError:
            pass  # the source refuses it too: reported once, as the row's error
    failed = 0
    tiles = {i: [] for i in originals}  # (label, decoded image or None) per SNR: each image's contact sheet
    for snr in args.snr:
        ch = dataclasses.replace(channels[snr], seed=cfg.seed)  # the server's seed where it gave one
        out_dir = Path(args.out) / f"snr{snr_tag(snr)}"
        try:
            run = run_link([str(p) for p in paths], str(out_dir), ch, cfg, cfg, frame, args.server, names)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        got = {r["image_id"]: r for r in run["results"]}
        for ev in run["tx_events"]:
            i = ev["image_id"]
            row = dict(image=names.get(i, ev["name"]), snr_db=float(snr), channel=ch.kind, sps=frame.sps)
            if args.fading:
                row.update(fading=args.fading, rician_k=args.rician_k, selective=args.selective)
            if any(args.iq_imbalance):
                row["iq_imbalance"] = list(args.iq_imbalance)
            if args.dc_offset is not None:
                row["dc_offset"] = args.dc_offset
            if args.lead:
                row["lead"] = args.lead
            if "error" in ev:
                row["error"] = f"not sent: {ev['error']}"
            elif i not in got:
                row["error"] = "lost: no frame of this image was received"
            else:
                r = got[i]
                row.update({k: r.get(k) for k in ("snr_est_db", "chunks_received", "chunks_total", "complete")})
                if "error" in r:
                    row["error"] = r["error"]
                else:
                    row.update(n_steps=r["n_steps"], rule=r["rule"], k=r["k"], m=r["m"], T=r["T"],
                               **latent_power(r["alpha"], r),
                               unet_calls=cfg.k + r["unet_calls"], symbols=r["symbols"], output=r.get("file"),
                               seconds=r["seconds"])
                    if i in originals and r.get("file"):
                        dec = np.asarray(load_rgb(r["file"]))
                        ms, scales = ms_ssim(originals[i], dec)
                        row.update(psnr=round(psnr(originals[i], dec), 4),
                                   ms_ssim=None if ms is None else round(ms, 6), ms_ssim_scales=scales)
                        ref = received_as_is(cfg, args.server, originals[i], r["snr_est_db"], cfg.seed)
                        if ref is not None:
                            row["psnr_received_as_is"] = round(psnr(originals[i], ref), 4)
            if i in tiles:
                dec = None  # the decoded file's path: a long run keeps no pixels
                if "error" not in row and row.get("output"):
                    dec = row["output"]
                    row["sheet"] = str(Path(args.out) / f"{row['image']}_snrs.png")  # written after the last SNR
                tiles[i].append((sheet_label(snr, row), dec))
            row["counters"] = run["counters"]
            failed += "error" in row
            emit(row)
    sheets = [contact_sheet(originals[i], t, Path(args.out) / f"{names[i & 0xFFFF]}_snrs.png")
              for i, t in tiles.items() if any(img is not None for _, img in t)]
    say_sheets(str(p) for p in sheets)
    return 1 if failed else 0


_OFFLINE_CODECS: dict = {}


def received_as_is(cfg, server: str, image: np.ndarray, snr_db: float, seed: int):
    """The reference the receiver must beat: ``image`` through the transmitter, AWGN at the
    receiver's SNR estimate (numpy, another noise draw than the link's), and the received
    latent decoded by the VAE as is (no denoising).  Only for a local server and the
    offline models (``tiny``, ``analytic``, ``patch-gmm``), which load in-process at no cost;
    None otherwise."""
    from .codec import GenerativeCodec
    from .codec.models import is_in_process
    from .phy import awgn

    if server != "local" or not is_in_process(cfg.model) or snr_db is None:
        return None
    key = repr(cfg)
    if key not in _OFFLINE_CODECS:
        _OFFLINE_CODECS.clear()
        _OFFLINE_CODECS[key] = GenerativeCodec(cfg)
    codec = _OFFLINE_CODECS[key]
    enc = codec.encode(image, "reference")
    y = awgn(enc.symbols, float(snr_db), np.random.default_rng(seed)).astype(np.complex64)
    return codec.decode_as_is(y, enc.meta)
