"""The ``gdmcom`` command line.

Subcommands: ``simulate`` (codec over a numpy channel), ``steps`` (the step
rule's N per SNR, no weights needed).  Every codec option comes from
:class:`gr_gdmcom.config.CodecConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from .config import STEP_RULES, CodecConfig, add_codec_args, codec_config_from_args

log = logging.getLogger("gdmcom")


def emit(row: dict) -> None:
    """Print one JSON object per line (inf PSNR as the string "inf")."""
    clean = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    print(json.dumps(clean, default=str), flush=True)


def cmd_simulate(args) -> int:
    from .codec import GenerativeCodec, ModelLoadError
    from .sim import simulate

    cfg = codec_config_from_args(args)
    try:
        codec = GenerativeCodec(cfg)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for row in simulate(codec, args.image, args.snr, channel=args.channel, out_dir=Path(args.out)):
        emit(row)
        if "error" in row:
            failed += 1
            print(f"error: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_steps(args) -> int:
    from .codec.schedule import select_steps

    if args.k + args.m > args.T:
        print(f"error: k + m must not exceed T: k={args.k}, m={args.m}, T={args.T}", file=sys.stderr)
        return 2
    table = {f"{s:g}": select_steps(s, k=args.k, m=args.m, T=args.T, rule=args.rule, power=args.power,
                                    rescale=True).n_steps for s in args.snr}
    print(json.dumps(table))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gdmcom", description="Training-free generative semantic communication "
                                "(DDIM-inversion codec on Stable Diffusion) over simulated and GNU Radio links.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("simulate", help="encode images, pass a numpy channel, decode, report metrics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--image", nargs="+", required=True, help="image files")
    s.add_argument("--snr", nargs="+", type=float, required=True, help="Es/N0 values in dB")
    s.add_argument("--channel", default="awgn", choices=("awgn", "rayleigh"),
                   help="awgn, or flat Rayleigh block fading with perfect-CSI equalisation")
    s.add_argument("--out", required=True, help="output folder for <stem>_snr<DB>.png")
    add_codec_args(s)
    s.set_defaults(func=cmd_simulate)

    d = CodecConfig()
    st = sub.add_parser("steps", help="print the denoising steps N chosen for each SNR (no weights needed)")
    st.add_argument("--snr", nargs="+", type=float, required=True, help="Es/N0 values in dB")
    st.add_argument("--rule", default=d.rule, choices=STEP_RULES, help="step rule [default=%(default)r]")
    st.add_argument("--k", type=int, default=d.k, help="transmitter inversion steps [default=%(default)r]")
    st.add_argument("--m", type=int, default=d.m, help="receiver inversion steps [default=%(default)r]")
    st.add_argument("--T", type=int, default=d.T, help="DDIM grid size [default=%(default)r]")
    st.add_argument("--power", type=float, default=1.0, help="latent power P = 1/alpha^2 [default=%(default)r]")
    st.set_defaults(func=cmd_steps)
    _register_optional(sub)
    return p


def _register_optional(sub) -> None:
    """Subcommands that live in other layers register themselves here."""
    import importlib

    for mod in ("gr_gdmcom.link_cli", "gr_gdmcom.eval.cli", "gr_gdmcom.bridge.cli", "gr_gdmcom.eval.validate_cli",
                "gr_gdmcom.eval.calibrate_cli"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("gr_gdmcom"):
                continue
            raise
        m.register(sub)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as exc:  # configuration errors: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
