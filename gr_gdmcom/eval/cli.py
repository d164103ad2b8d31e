"""``gdmcom sweep``: the evaluation harness on the command line.

Registered into the main ``gdmcom`` parser by :func:`register`.  Exit codes:
0 done, 1 done but some rows carry an error, 2 usage error (nothing
computed), 130 interrupted by Ctrl-C or SIGTERM (rows so far are kept, run.json
records the end; run the same command again to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

from ..cli import check_threads  # noqa: F401 - (calibrate_cli takes it from here)
from ..config import add_codec_args, codec_config_from_args, snr_arg
from .learned import ALL as LEARNED

log = logging.getLogger(__name__)


def _semcom_t(v: str):
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--semcom-t must be 'auto' or a grid index, got {v!r}") from None


def _metrics(v: str):
    if v.strip().lower() in ("none", ""):
        return ()
    names = tuple(n.strip() for n in v.split(",") if n.strip())
    bad = [n for n in names if n not in LEARNED]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown learned metric(s) {', '.join(bad)}; choose from "
                                         f"{', '.join(LEARNED)} or 'none'")
    return names


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (a batch scheduler's stop, ``kill``) ends the sweep as Ctrl-C does: the rows
    so far stay and run.json gets its end record (``interrupted``)."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def register(sub) -> None:
    """Add the ``sweep`` subcommand to the ``gdmcom`` subparsers."""
    from .baselines import METHODS
    from .sweep import DEFAULT_METHODS, DEFAULT_SNRS

    s = sub.add_parser(
        "sweep", help="evaluate methods over images x SNRs: rows.csv, summary (95%% CI), tables, plots",
        description="Run every method on every image at every SNR (AWGN) and write RESULTS/rows.csv, "
                    "summary.csv/.md, run.json and plots. Resumable: rows already in rows.csv are not "
                    "recomputed. See docs/evaluation.md.")
    s.add_argument("--images", "--image", dest="images", nargs="+", required=True, metavar="IMG",
                   help="image files, folders (their images) or globs such as 'photos/*.png'")
    s.add_argument("--snr", nargs="+", type=snr_arg, default=list(DEFAULT_SNRS),
                   help="Es/N0 values in dB [default=%(default)r]")
    s.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods from {', '.join(METHODS)} [default=%(default)r]")
    s.add_argument("--out", required=True, metavar="RESULTS", help="results folder (created; reused to resume)")
    s.add_argument("--grid", nargs="+", default=[], metavar="k,m,N",
                   help="run the proposed method at these (k, m, N) settings instead of its configured one, "
                        "N fixed and no rescaling (the paper's Table II behaviour), and write table2.md; "
                        "e.g. --grid 10,0,10 5,5,10 10,0,15 5,5,15 0,10,15")
    s.add_argument("--captions", metavar="FILE",
                   help="captions for sd_semcom and proposed_caption: JSON {\"kodim01.png\": \"...\"} or CSV "
                        "file,caption "
                        "(from any captioner); default: the fixed prompt")
    s.add_argument("--calibration", metavar="FILE",
                   help="calibration file (gdmcom calibrate) for the method proposed_calibrated")
    s.add_argument("--semcom-t", type=_semcom_t, default="auto", metavar="auto|J",
                   help="sd_semcom: grid step J the receiver noises the latent to; 'auto' matches the "
                        "channel noise by the variance rule [default=%(default)r]")
    s.add_argument("--digital-codec", default="hevc", choices=("hevc", "jpeg", "webp"),
                   help="digital baseline's source codec [default=%(default)r]")
    s.add_argument("--digital-mcs", default="adaptive",
                   help="digital baseline's MCS: 'adaptive' or a name such as 16qam-3/4 [default=%(default)r]")
    s.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the CPU-bound digital chain (LDPC decoding) [default=%(default)r]")
    s.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's choice; fewer is faster on a busy machine) [default=%(default)r]")
    s.add_argument("--metrics", type=_metrics, default=LEARNED, metavar="LIST",
                   help=f"learned metrics to try ({','.join(LEARNED)}, or 'none'); those that cannot run "
                        "here stay empty [default: all]")
    s.add_argument("--grid-images", type=int, default=3, help="images in the per-SNR grids and per-image SNR strips [default=%(default)r]")
    s.add_argument("--no-plots", dest="plots", action="store_false", help="skip the figures")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    s.add_argument("--server", default="local",
                   help="'local' (the model in this process) or the ZMQ endpoint(s) of `gdmcom serve`: the "
                        "paper's method runs there at the server's codec settings but the codec options given "
                        "here, the digital baseline and the metrics here (docs/evaluation.md) "
                        "[default=%(default)r]")
    add_codec_args(s, many_bcr=True)
    s.set_defaults(func=cmd_sweep)


def set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _check_bcr(cfg, reductions) -> None:
    """Every --bcr factor must suit --reduce-method, said in the user's options."""
    from ..config import POOL_FACTORS, bcr_text

    for r in reductions:
        try:
            cfg.replace(reduce=r).validate()
        except ValueError:
            if cfg.reduce_method == "pool" and r not in POOL_FACTORS:
                raise ValueError(f"--bcr {bcr_text(r)} (--reduce {r}) cannot be made with --reduce-method pool, which "
                                 f"pools 2, 4, 8 or 16 values: --bcr "
                                 f"{', '.join(bcr_text(f) for f in POOL_FACTORS)}; or use --reduce-method dct "
                                 "or subset") from None
            raise


#: methods whose setting takes the codec's --steps (proposed too, unless --grid replaces it)
STEP_METHODS = ("proposed_caption", "proposed_fixed_point", "proposed_clean_one", "random_noise")


def _check_grid(args, cfg, grid, methods) -> None:
    """--grid replaces the proposed method's setting only: refuse it without proposed, and
    --steps/--rescale where nothing else would use them."""
    if not grid:
        return
    if "proposed" not in methods:
        raise ValueError(f"--grid sets the proposed method's k,m,N, but --methods {','.join(methods)} has no "
                         "proposed; add proposed to --methods or drop --grid")
    given = set(getattr(args, "given", ()))
    if "steps" in given:
        users = [m for m in methods if m in STEP_METHODS]
        if not users:
            raise ValueError(f"--steps {cfg.steps} would be ignored: each --grid setting k,m,N fixes its own N; "
                             "drop --steps (or put N in the --grid entries)")
        log.warning("--steps %s applies to %s only: each --grid setting k,m,N fixes its own N", cfg.steps,
                    ", ".join(users))
    if "rescale" in given and cfg.rescale and not [m for m in methods if m in STEP_METHODS]:
        raise ValueError("--rescale would be ignored: the --grid settings run without rescaling (the paper's "
                         "Table II); drop --rescale")


def cmd_sweep(args) -> int:
    from ..codec import ModelLoadError
    from .baselines import METHODS, parse_grid, parse_methods
    from ..cli import check_out
    from ..config import bcr_text
    from .sweep import SweepError, SweepOptions, run_sweep

    try:
        check_threads(args.threads)
        cfg = codec_config_from_args(args)
        check_out(args.out, create=False)  # the sweep creates it once every check has passed
        reductions = list(args.bcr or ())
        if reductions and cfg.reduce != 1:
            raise ValueError(f"--bcr {' '.join(bcr_text(r) for r in reductions)} and --reduce {cfg.reduce} disagree; "
                             "give one of them")
        _check_bcr(cfg, reductions)
        grid = parse_grid(args.grid)
        for k, m, n in grid:
            cfg.replace(k=k, m=m, steps=n).validate()
        methods = parse_methods(args.methods)
        _check_grid(args, cfg, grid, methods)
        if str(args.server or "local") == "local" and any(METHODS[m].needs_model for m in methods):
            from ..codec.models import check_model, resolve_device

            check_model(cfg.model)  # (as simulate and link: a mistyped --model is one line, exit 2,
            resolve_device(cfg.device)  # before the results folder exists)
        set_threads(args.threads)
        opts = SweepOptions(images=args.images, out=args.out, snrs=args.snr, methods=args.methods, config=cfg,
                            grid=grid, reductions=reductions, captions=args.captions, semcom_t=args.semcom_t,
                            digital_codec=args.digital_codec, digital_mcs=args.digital_mcs, jobs=args.jobs,
                            calibration=args.calibration, metrics=args.metrics,
                            plots=args.plots, grid_images=args.grid_images, progress=args.progress,
                            argv=["gdmcom"] + sys.argv[1:], server=args.server,
                            given=tuple(sorted(getattr(args, "given", ()))))
        with _sigterm_interrupts():
            res = run_sweep(opts)
    except (SweepError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the rows computed so far are in {args.out}/rows.csv; "
              "run the same command again to continue", file=sys.stderr)
        return 130
    from ..cli import emit

    for f, why in res.skipped:
        print(f"warning: skipped {f}: {why}", file=sys.stderr)
    print(f"{res.rows_computed} rows computed, {res.rows_reused} already present, {res.rows_failed} with errors; "
          f"{res.rows_total} rows in {res.out / 'rows.csv'}; summary: {res.out / 'summary.md'} "
          f"({res.seconds:.1f} s)", file=sys.stderr)
    emit(dict(event="done", rows_computed=res.rows_computed, rows_reused=res.rows_reused,
              rows_failed=res.rows_failed, images_skipped=len(res.skipped), rows_total=res.rows_total,
              rows=str(res.out / "rows.csv"),
              summary=str(res.out / "summary.md"), seconds=round(res.seconds, 1)))
    return 1 if res.rows_failed or res.skipped else 0  # as simulate and link: some images failed
