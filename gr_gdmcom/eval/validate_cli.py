"""``gdmcom validate``: regenerate docs/validation.md with the analytic diffusion prior.

Registered into the main ``gdmcom`` parser by :func:`register`.  Exit codes:
0 done, 2 usage error, 130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import bcr_arg, finite_float


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {n}")
    return n


def register(sub) -> None:
    """Add the ``validate`` subcommand to the ``gdmcom`` subparsers."""
    from .validate import ValidateOptions

    d = ValidateOptions()
    s = sub.add_parser(
        "validate", help="measure the method with an exact analytic denoiser (CPU, no weights); "
                         "writes docs/validation.md",
        description="Run the codec with the analytic Gaussian-mixture prior (exact noise prediction) and write a "
                    "report: Proposition 1 against Monte Carlo, DDIM round-trip error, latent MSE per SNR for "
                    "every step rule against an exhaustive search over N and against the baselines, and the "
                    "paper's Table II settings. See docs/validation.md.",
        formatter_class=_DefaultsHelp)
    s.add_argument("--out", default=str(d.out), help="report path (markdown)")
    s.add_argument("--json", default=None, metavar="PATH", help="also write the raw numbers as JSON")
    s.add_argument("--samples", type=_positive, default=d.samples, help="latents per point (sections 2-4)")
    s.add_argument("--prop1-samples", type=_positive, default=d.prop1_samples,
                   help="latents for Proposition 1's Monte Carlo")
    s.add_argument("--seed", type=int, default=d.seed, help="seed of latents, channel and forward noise")
    s.add_argument("--quick", action="store_true", help="5 SNRs, 10^4 Monte-Carlo latents: a smoke run")
    s.add_argument("--snr", nargs="+", type=finite_float, default=None,
                   help="SNRs of section 3 in dB [default: 0..20 step 1; 0 5 10 15 20 with --quick]")
    s.add_argument("--model", default=d.model, help="analytic or analytic:key=value,... (see codec/analytic.py)")
    s.add_argument("--guidance", type=finite_float, default=d.guidance, help="classifier-free guidance scale")
    s.add_argument("--no-baseline-search", dest="baseline_search", action="store_false",
                   help="skip the exhaustive N search for the random-noise and SD_SemCom baselines")
    s.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest for these small operations on a shared 2-core machine)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s.add_argument("--real-images", action="store_true",
                   help="instead: run held-out photographs through the patch-gmm prior and rewrite only the "
                        "real-images section of --out (PSNR / MS-SSIM per method and SNR)")
    s.add_argument("--rate", action="store_true",
                   help="instead: latent MSE against BCR (--bcr) and SNR for each reduction method, with each "
                        "reduction's oracle floor; rewrites only the rate section of --out and writes its figure "
                        "beside it (docs/rate.md)")
    s.add_argument("--bcr", nargs="+", type=bcr_arg, default=None, metavar="1/N",
                   help="with --rate: BCRs 1/(96 r) [default: 1/96 1/192 1/384 1/768]")
    s.add_argument("--rate-samples", type=_positive, default=None,
                   help="with --rate: latents per point [default: 16]")
    s.set_defaults(func=cmd_validate)


class _DefaultsHelp(argparse.HelpFormatter):
    """Each option's default as every gdmcom help shows it, ``[default=...]``; none for flags
    (``--no-baseline-search (default: True)`` read backwards) and options without one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "[default" in text or not action.option_strings or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return text + " [default=%(default)r]"


def _command(args) -> str:
    from .validate import ValidateOptions

    parts = ["gdmcom", "validate", "--out", args.out]
    d = ValidateOptions()
    for name in ("samples", "prop1_samples", "seed"):
        if getattr(args, name) != getattr(d, name):
            parts += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.quick:
        parts.append("--quick")
    if args.snr:
        parts += ["--snr"] + [f"{s:g}" for s in args.snr]
    if args.model != "analytic":
        parts += ["--model", args.model]
    if args.guidance != 6.0:
        parts += ["--guidance", f"{args.guidance:g}"]
    if not args.baseline_search:
        parts.append("--no-baseline-search")
    return " ".join(shlex.quote(p) for p in parts)


def cmd_validate(args) -> int:
    from ..codec.analytic import is_analytic
    from . import validate_images, validate_rate
    from ..cli import check_out
    from .validate import ValidateOptions, analyse, run_validation, timings

    check_out(args.out, folder=False)  # before the run, not after
    if args.json:
        check_out(args.json, folder=False)
    if args.real_images and args.rate:
        raise ValueError("--real-images and --rate are two separate runs: give one of them")
    if args.bcr and not args.rate:
        raise ValueError("--bcr is an option of --rate (latent MSE against BCR); add --rate or drop --bcr")

    if args.real_images:
        import torch

        torch.set_num_threads(max(1, args.threads))
        res = validate_images.measure(progress=(lambda *_: None) if args.quiet else print)
        validate_images.write_section(Path(args.out), validate_images.section(res),
                                      before=[validate_rate.BEGIN])  # 6 before 7
        print(f"wrote the real-images section of {args.out} in {res['seconds']:.1f} s")
        return 0
    if not is_analytic(args.model):
        print(f"error: gdmcom validate needs --model analytic[:options], got {args.model!r}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.rate:
        import torch

        torch.set_num_threads(args.threads)
        res = validate_rate.measure(args.model, args.rate_samples or validate_rate.SAMPLES, args.seed,
                                    args.snr or validate_rate.SNRS, args.bcr or validate_rate.REDUCTIONS,
                                    progress=(lambda *_: None) if args.quiet else print)
        files = validate_rate.write(res, Path(args.out))
        print(f"wrote the rate section of {files['report']} and {files['figure']} in {res['seconds']:.1f} s")
        t = validate_rate.target(res)
        if t is not None:
            print(f"BCR 1/192 at 10 dB, best ({t['best']['method']}): {t['best']['mse']:.4f}; whole latent at 7 dB: "
                  f"{t['full']['mse']:.4f}: target {'met' if t['met'] else 'not met'}")
        return 0
    opts = ValidateOptions(out=Path(args.out), samples=args.samples, prop1_samples=args.prop1_samples,
                           seed=args.seed, quick=args.quick, model=args.model, snrs=args.snr,
                           guidance=args.guidance, baseline_search=args.baseline_search,
                           command=_command(args), progress=not args.quiet, threads=args.threads,
                           json_out=Path(args.json) if args.json else None)
    kept = validate_images.kept_section(opts.out)
    kept_rate = validate_images.kept_section(opts.out, validate_rate.BEGIN, validate_rate.END)
    try:
        res = run_validation(opts)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    if kept:  # the real-images section is written by --real-images; a full run keeps it
        validate_images.write_section(opts.out, kept)
    if kept_rate:  # and the rate section, by --rate
        validate_images.write_section(opts.out, kept_rate, validate_rate.BEGIN, validate_rate.END)
    a = analyse(res)
    rules = a["rules"]
    print(f"wrote {opts.out}" + (f" and {opts.json_out}" if opts.json_out else "") + f" in {timings(res)}")
    print(f"Proposition 1: max |rel. error| {100 * a['prop1_max_err']:.2f} %")
    print(f"snr rule within one step of the optimum at {rules['snr']['within_one']}/{len(res['sweep']['rows'])} "
          f"SNRs; best rule on average: {a['best_rule']}")
    return 0
