"""The ``gdmcom`` command line.

Subcommands: ``simulate`` (codec over a numpy channel), ``steps`` (the step
rule's N per SNR, no weights needed).  Every codec option comes from
:class:`gr_gdmcom.config.CodecConfig`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

from .config import CodecConfig, add_codec_args, codec_config_from_args, finite_float, snr_arg

log = logging.getLogger("gdmcom")


#: Where :func:`emit` writes: the process's real stdout while :func:`json_stdout` holds it.
_ROWS = None
#: Commands whose stdout is JSON lines only (everything else they print goes to stderr).
JSON_COMMANDS = ("simulate", "link", "sweep")


def json_safe(v):
    """``v`` with every NaN or infinite float, nested ones too, written as a string ("nan",
    "inf"): ``json.dumps`` writes them as the bare words ``NaN`` and ``Infinity``, which are not
    JSON (``jq`` and most parsers other than Python's refuse the line)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def emit(row: dict) -> None:
    """Print one JSON object per line (inf PSNR as the string "inf", :func:`json_safe`)."""
    print(json.dumps(json_safe(row), default=str, allow_nan=False), file=_ROWS or sys.stdout, flush=True)


def divert_stdout():
    """Point file descriptor 1 at stderr (where GNU Radio's C++ logger and printing libraries
    then write) and return ``(a line-buffered stream on the real stdout, a duplicate of the real
    fd 1 to restore it from)``; None when ``sys.stdout`` is not fd 1 (pytest's capsys, a
    redirected ``sys.stdout``), which is left alone."""
    try:
        if sys.stdout.fileno() != 1:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    sys.stdout.flush()
    saved = os.dup(1)
    stream = os.fdopen(os.dup(saved), "w", buffering=1)
    os.dup2(2, 1)
    return stream, saved


@contextlib.contextmanager
def json_stdout():
    """Keep file descriptor 1 for :func:`emit`'s JSON lines alone.

    GNU Radio's logger (C++, spdlog) and libraries that print write to fd 1
    behind Python's back; while this holds, fd 1 points at stderr and
    :func:`emit` writes to a duplicate of the real stdout.  A no-op when
    ``sys.stdout`` is not fd 1 (pytest's capsys, a redirected ``sys.stdout``).
    """
    global _ROWS
    diverted = divert_stdout() if _ROWS is None else None
    if diverted is None:
        yield
        return
    _ROWS, saved = diverted
    try:
        yield
    finally:
        sys.stdout.flush()
        _ROWS.close()
        _ROWS = None
        os.dup2(saved, 1)
        os.close(saved)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--threads``: where the model runs, for every command that runs one."""
    parser.add_argument("--server", default="local",
                        help="'local' (the model in this process) or the ZMQ endpoint(s) of `gdmcom serve`, "
                             "e.g. tcp://gpu-host:5555, which runs at its own codec settings but the codec options "
                             "given here (docs/server.md) [default=%(default)r]")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's choice; fewer is faster on a busy machine) "
                             "[default=%(default)r]")


def check_out(path, folder: bool = True, create: bool = True) -> Path:
    """Make sure ``--out`` can be written before any work: the folder (``folder``) or the
    file's folder is created (with ``create`` False only checked: the caller creates it once
    its other checks passed, so a usage error leaves no empty folder); ValueError (one line,
    exit 2) where it cannot be, where a folder is named by an existing file, or a file by an
    existing folder."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file; give a folder")
    if not folder and p.is_dir():
        raise ValueError(f"--out {p} is a folder; give a file name")
    d = p if folder else p.parent
    if not create:
        up = d
        while not up.exists() and up != up.parent:
            up = up.parent
        if not up.is_dir():
            raise ValueError(f"cannot create the output folder {d}: {up} is a file")
        if not _writable(up):
            raise ValueError(f"cannot write to the output folder {d}" + ("" if up == d else f" (in {up})"))
        return p
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {d}: {exc.strerror or exc}") from None
    if not _writable(d):
        raise ValueError(f"cannot write to the output folder {d}")
    return p


def _writable(folder: Path) -> bool:
    """Whether a file can be made in ``folder``, by making one (``os.access`` says yes to root
    everywhere, /proc and read-only mounts included: the run failed after its work)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(prefix=".gdmcom-check-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_threads(threads: int) -> None:
    """``--threads``: 0 (torch's choice) or a positive count; ValueError (exit 2) otherwise."""
    if threads < 0:
        raise ValueError(f"--threads must be 0 (torch's choice) or a positive number of threads, got {threads}")


def prepare_run(args, images=None):
    """Check what a command was given before any model is loaded; returns ``(config, image paths)``.

    Raises ``ValueError`` (configuration, images that match nothing) and
    :class:`gr_gdmcom.codec.ModelLoadError` (unknown model, no server answering),
    each a one-line message naming what was given.
    """
    from .pipeline import distinct_files, expand_images, is_pattern

    cfg = codec_config_from_args(args)
    if getattr(args, "out", None):
        check_out(args.out, create=False)  # created once every check below passed
    paths = None
    if images is not None:
        paths = distinct_files(expand_images(images))
        if not any(p.is_file() for p in paths):  # (folders and globs that match nothing are kept as given)
            if not paths or any(p.is_dir() or is_pattern(p) for p in paths):
                raise ValueError(f"no images found in {' '.join(map(str, images))}")
            raise ValueError(f"no such image file: {', '.join(str(p) for p in paths)}")
    check_threads(getattr(args, "threads", 0))
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(max(1, args.threads))
    server = getattr(args, "server", "local")
    if server in ("", "local"):
        from .codec.models import check_model, resolve_device

        check_model(cfg.model)
        resolve_device(cfg.device)
    else:
        cfg = server_settings(cfg, check_server(server), getattr(args, "given", ()), server)
    if getattr(args, "out", None):
        check_out(args.out)
    return cfg, paths


def server_settings(cfg, status: dict, given, server: str):
    """The configuration a command runs against ``gdmcom serve``: the server's codec settings
    where the command line gave none, its own where it did (k, m, steps and rescale travel with
    each request).  An option given here that differs from the server's and that no request can
    carry raises ValueError (one line naming it) rather than running with the server's value.
    A status without ``config`` (not gdmcom serve) leaves ``cfg`` as it is."""
    from .config import config_for_server, server_mismatch

    theirs = status.get("config")
    if not isinstance(theirs, dict):
        return cfg
    merged, taken = config_for_server(cfg, theirs, given)
    where = server.partition("?")[0]
    warn_server_settings(where, taken)
    carried = {n for names in (status.get("settings") or {}).values() for n in names}
    fixed = server_mismatch(merged, theirs, carried)
    if fixed:
        raise ValueError(f"the server at {where} runs other codec settings and a request cannot change them: "
                         f"{', '.join(fixed)}; drop those options or start a server with them "
                         f"(gdmcom serve takes the same codec flags)")
    return merged


def warn_server_settings(where: str, taken) -> None:
    """One warning listing the server's codec settings a command runs with instead of its own
    defaults (``taken``: :func:`gr_gdmcom.config.config_for_server`'s list)."""
    if taken:
        log.warning("codec settings of the server at %s (not given here): %s", where, ", ".join(taken))


def given_options(parser: argparse.ArgumentParser, argv=None) -> frozenset:
    """The ``dest`` names that ``argv`` sets itself, not through a default (abbreviations and
    ``--opt=value`` included): the same parse with every default suppressed."""
    parsers, stack = {}, [parser]
    while stack:
        p = stack.pop()
        if id(p) in parsers:
            continue
        parsers[id(p)] = p
        for a in p._actions:  # noqa: SLF001 - argparse has no public walk of its actions
            if isinstance(a, argparse._SubParsersAction):  # noqa: SLF001
                stack.extend(a.choices.values())
    saved = [(a, a.default) for p in parsers.values() for a in p._actions]  # noqa: SLF001
    saved_defaults = [(p, dict(p._defaults)) for p in parsers.values()]  # noqa: SLF001
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        for p, _ in saved_defaults:
            p._defaults.clear()  # noqa: SLF001
        return frozenset(vars(parser.parse_args(argv)))
    finally:
        for a, d in saved:
            a.default = d
        for p, d in saved_defaults:
            p._defaults.update(d)  # noqa: SLF001


def check_server(server: str, timeout_ms: int = 3000) -> dict:
    """One ``status`` round trip to ``server`` (endpoints[?options], CURVE keys included); its
    status, or :class:`gr_gdmcom.codec.ModelLoadError` naming the endpoint within ``timeout_ms``
    (whatever ``timeout_ms``/``retries`` the string gives: those are for the requests later).
    Raises ValueError for a malformed option or key."""
    from .bridge import BackendError
    from .bridge.backend import remote_backend
    from .codec import ModelLoadError

    endpoints = server.partition("?")[0]
    quiet = logging.getLogger("gr_gdmcom.bridge.client")
    level, quiet.level = quiet.level, logging.ERROR  # the one message below says it all
    try:
        with remote_backend(server, None) as client:
            client.timeout_ms, client.retries = timeout_ms, 0
            return client.status()
    except BackendError:
        from .bridge.client import split_endpoints, unresolved_hosts

        keys = " with these CURVE keys" if "key" in server.partition("?")[2] else ""
        bad = unresolved_hosts(split_endpoints(endpoints))
        raise ModelLoadError(f"no inference server answers at {endpoints}{keys} (status request, {timeout_ms} ms"
                             + (f"; host name does not resolve: {', '.join(bad)}" if bad else "")
                             + f"): start one with `gdmcom serve --bind {endpoints}` or use --server local") from None
    finally:
        quiet.setLevel(level)


def cmd_simulate(args) -> int:
    from .codec import GenerativeCodec, ModelLoadError
    from .sim import BackendCodec, simulate

    backend = None
    try:
        cfg, paths = prepare_run(args, args.images)
        if args.server in ("", "local"):
            codec = GenerativeCodec(cfg)
        else:
            from .bridge import make_backend

            backend = make_backend(args.server, cfg)
            codec = BackendCodec(backend, cfg, concurrency=cfg.batch_size)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .bridge import BackendError

    failed, sheets, done = 0, {}, set()
    try:
        for row in simulate(codec, paths, args.snr, channel=args.channel, out_dir=Path(args.out)):
            emit(row)
            sheets.setdefault(row.get("sheet"))
            done.add((row["image"], row.get("snr_db")))
            if "error" in row:
                failed += 1
                print(f"error: {row['error']}", file=sys.stderr)
    except BackendError as exc:  # the server stopped answering: the rows so far stand, and every
        print(f"error: {exc}", file=sys.stderr)  # image x SNR not run is a row saying so
        from .sim import row_names

        for name in dict.fromkeys(row_names(paths)):
            if (name, None) in done:  # (unreadable: its row is out)
                continue
            for snr in dict.fromkeys(float(s) for s in args.snr):
                if (name, snr) not in done:
                    emit(dict(image=name, snr_db=snr, error=f"not run: {exc}"))
                    failed += 1
    finally:
        if backend is not None:  # its worker threads and sockets (left open, a caller's process hung at exit)
            codec.close()
            backend.close()
    say_sheets(sheets)
    return 1 if failed else 0


def say_sheets(paths) -> None:
    """One stderr line naming the contact sheets written (``sim.contact_sheet``): the
    picture to open first."""
    paths = [p for p in paths if p]
    if paths:
        print(f"pictures (original, then each SNR): {', '.join(paths)}", file=sys.stderr)


def cmd_steps(args) -> int:
    from .codec.schedule import select_steps

    from .codec.calibration import calibration_path, load_calibration

    CodecConfig(k=args.k, m=args.m, T=args.T, rule=args.rule).validate()  # ValueError: one line, exit 2
    if not args.power > 0:
        raise ValueError(f"--power (the latent power P = 1/alpha^2) must be > 0, got {args.power:g}")
    path = calibration_path(args.rule)
    if path is not None:  # a fitted rule: N from the file, for the setting it was measured at
        cal = load_calibration(path)
        if (cal.k, cal.m, cal.T) != (args.k, args.m, args.T):
            raise ValueError(f"calibration {path} was measured for k={cal.k}, m={cal.m}, T={cal.T}; give "
                             f"--k {cal.k} --m {cal.m} --T {cal.T} (here: k={args.k}, m={args.m}, T={args.T})")
        table = {f"{s:g}": cal.n_steps(s, args.power) for s in args.snr}
    else:
        table = {f"{s:g}": select_steps(s, k=args.k, m=args.m, T=args.T, rule=args.rule, power=args.power,
                                        rescale=True).n_steps for s in args.snr}
    print(json.dumps(table))
    return 0


#: commands that run until stopped: their log lines carry the time
LONG_RUNNING = ("serve", "broker")


class Parser(argparse.ArgumentParser):
    """argparse, reading ``-1e1`` and ``-2.5E-1`` as negative numbers as it reads ``-10`` and
    ``-0.25`` (its own pattern has no exponent: ``--snr -1e1`` was taken for an unknown option).
    Subcommand parsers are of the same class."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="gdmcom", description="Training-free generative semantic communication "
                                "(DDIM-inversion codec on Stable Diffusion) over simulated and GNU Radio links.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = sub.add_parser("simulate", help="encode images, pass a numpy channel, decode, report metrics")
    add_images_arg(s)
    s.add_argument("--snr", nargs="+", type=snr_arg, required=True, help="Es/N0 values in dB")
    s.add_argument("--channel", default="awgn", choices=("awgn", "rayleigh"),
                   help="awgn, or flat Rayleigh block fading with perfect-CSI equalisation [default=%(default)r]")
    s.add_argument("--out", required=True, help="output folder for <stem>_snr<DB>.png")
    add_run_args(s)
    add_codec_args(s)
    s.set_defaults(func=cmd_simulate)

    st = sub.add_parser("steps", help="print the denoising steps N chosen for each SNR (no weights needed)")
    st.add_argument("--snr", nargs="+", type=snr_arg, required=True, help="Es/N0 values in dB")
    add_codec_args(st, only=("k", "m", "T", "rule"))
    st.add_argument("--power", type=finite_float, default=1.0,
                    help="latent power P = 1/alpha^2 (every result row reports it) [default=%(default)r]")
    st.set_defaults(func=cmd_steps)
    _register_optional(sub)
    for name, sp in sub.choices.items():  # `gdmcom serve -v` as well as `gdmcom -v serve`
        if not any("-v" in a.option_strings for a in sp._actions):
            sp.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                            help="more logging (-vv for debug); also before the command")
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


def add_images_arg(parser: argparse.ArgumentParser) -> None:
    """``--images`` (alias ``--image``): files, folders and globs, the same for every command."""
    parser.add_argument("--images", "--image", dest="images", nargs="+", required=True, metavar="IMG",
                        help="image files, folders (their images) or globs such as 'photos/*.png'")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gr_gdmcom")
    except Exception:  # noqa: BLE001 - not installed: the source tree's version
        from . import __version__

        return __version__


def main(argv=None, parser: Optional[argparse.ArgumentParser] = None) -> int:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    args.given = given_options(parser, argv)
    if not getattr(args, "func", None):  # `gdmcom` alone
        parser.print_help()
        return 0
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    stamp = "%(asctime)s " if args.cmd in LONG_RUNNING else ""  # a server's log lines are matched to incidents
    logging.basicConfig(level=level, format=stamp + "%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with json_stdout() if args.cmd in JSON_COMMANDS else contextlib.nullcontext():
        try:
            return args.func(args)
        except ValueError as exc:  # configuration errors: one line, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C where a command does not handle it (model loading, Ray start-up)
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (`gdmcom steps | head -c 5`): quietly, as a shell tool
            _stdout_to_devnull()
            return EXIT_PIPE


#: exit status when stdout's reader went away (128 + SIGPIPE, what a shell tool killed by it gives)
EXIT_PIPE = 141


def _stdout_to_devnull() -> None:
    """Point stdout (and :func:`json_stdout`'s copy of it) at /dev/null, so that what is still
    buffered for a reader that went away is dropped at exit, not a second BrokenPipeError."""
    null = os.open(os.devnull, os.O_WRONLY)
    for f in (sys.stdout, _ROWS):
        try:
            os.dup2(null, f.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    os.close(null)


if __name__ == "__main__":
    sys.exit(main())
