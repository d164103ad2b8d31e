"""``gdmcom calibrate``: write a calibrated step rule for ``--rule calibrated:FILE``.

Registered into the main ``gdmcom`` parser by :func:`register`.  Exit codes:
0 written, 1 written but some images could not be read (skipped, each named), 2 usage,
configuration or model error.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    """Add the ``calibrate`` subcommand to the ``gdmcom`` subparsers."""
    from ..codec.calibration import METRICS
    from ..config import add_codec_args, finite_float
    from .calibrate import DEFAULT_SNRS

    s = sub.add_parser(
        "calibrate", help="measure the best denoising steps N per SNR on your images; writes a file for "
                          "--rule calibrated:FILE",
        description="For every SNR of a grid, every N in k+m..T and both rescale settings, run the codec at the "
                    "latent level on the images (numpy AWGN channel), decode and score; fit a monotone N against "
                    "the latent SNR and write it with its provenance (model, k, m, T, guidance, prompt, clean end, "
                    "inversion, metric, images). The codec refuses the file for another model or setting. "
                    "It calibrates the whole latent (BCR 1/96): a reduced one (--bcr) is decoded by the snr rule. "
                    "See docs/codec.md.")
    s.add_argument("--images", "--image", dest="images", nargs="+", default=[], metavar="IMG",
                   help="image files, folders (not searched recursively) or globs such as 'photos/*.png'")
    s.add_argument("--samples", type=int, default=0,
                   help="with --model analytic and no --images: latents drawn from the prior (conditional on the "
                        "prompt) [default=%(default)r]")
    s.add_argument("--metric", default="mse", choices=METRICS, help="what N minimises (PSNR: maximises) [default=%(default)r]")
    s.add_argument("--snr", nargs="+", type=finite_float, default=list(DEFAULT_SNRS),
                   help="Es/N0 grid in dB [default=%(default)r]")
    s.add_argument("--out", required=True, help="calibration file to write (JSON)")
    s.add_argument("--chunk", type=int, default=None,
                   help="latents per batched sampling run [default: --batch-size; 4096 for analytic]")
    s.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's choice; fewer is faster on a busy machine) "
                        "[default=%(default)r]")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    # (no --reduce/--bcr: a reduced latent is decoded by the snr rule with m = 0 whatever the rule
    # says, so a calibration measured on one would be minutes spent on a file nothing uses)
    add_codec_args(s, skip=("rule", "steps", "reduce", "reduce_method"))
    s.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from ..codec import ModelLoadError
    from ..config import codec_config_from_args
    from .calibrate import CalibrateOptions, calibrate
    from .sweep import find_images, load_images

    from ..cli import check_out

    cfg = codec_config_from_args(args)
    if args.images and args.samples:
        raise ValueError("give --images or --samples, not both (the calibration runs on one of them)")
    if args.chunk is not None and args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    from .cli import check_threads, set_threads

    check_threads(args.threads)
    check_out(args.out, folder=False)  # before the calibration's minutes, not after
    images, skipped = [], []
    if args.images:  # unreadable files are skipped and listed, as gdmcom sweep's
        _, where, skipped = load_images(find_images(args.images), cfg.max_pixels)  # SweepError: a ValueError
        images = list(where.values())
    for f, why in skipped:  # as gdmcom sweep: the others are calibrated on, exit 1
        print(f"warning: skipped {f}: {why}", file=sys.stderr)
    if skipped and not images:
        raise ValueError(f"none of the {len(skipped)} images can be read")
    set_threads(args.threads)
    opts = CalibrateOptions(images=images, samples=args.samples, metric=args.metric, snrs=args.snr,
                            seed=cfg.seed, chunk=args.chunk, progress=not args.quiet)
    try:
        cal = calibrate(cfg, opts)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = cal.save(args.out)
    best = "n_opt" if cal.rescale else "n_opt_no_rescale"
    # the fitted rule's N (what --rule calibrated: uses) at these images' mean latent power,
    # each SNR's measured best in brackets
    print(f"wrote {path}: {cal.metric}, rescale {'on' if cal.rescale else 'off'}, N (measured best) = "
          + ", ".join(f"{p['snr_db']:g} dB: {cal.n_steps(p['snr_db'], 10 ** ((p['snr_db'] - p['x']) / 10))} "
                      f"({p[best]})" for p in cal.points))
    return 1 if skipped else 0

