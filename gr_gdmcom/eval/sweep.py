"""The evaluation sweep: images x SNRs x methods (x settings) -> rows, summary, figures.

:func:`run_sweep` writes into one results folder::

    rows.csv         one row per image x SNR x method x setting (every metric)
    summary.csv      means and t-based 95 % confidence intervals per method x setting x SNR
    summary.md       the same as tables, with notes (unavailable metrics, skipped images, fidelity)
    table2.md        with --grid: the paper's Table II layout
    run.json         configuration, package versions, git commit, seed, device, model and revision
    set_metrics.json cache of FID / KID per method x setting x SNR
    images/<method>/<setting>/<image>_snr<DB>.png   every reconstruction
    plots/<metric>_vs_snr.{png,pdf}, plots/grid_snr<DB>.{png,pdf}
    plots/<metric>_vs_bcr.{png,pdf}  with --bcr (several): metric vs BCR, one panel per SNR
    .sweep.lock      held while a sweep writes the folder: a second sweep into it is refused

It is **resumable**: rows already in ``rows.csv`` (key image x SNR x method x
setting, without an error) are not recomputed, so an interrupted sweep goes on
where it stopped and a repeated one recomputes nothing (rows with an error are
retried).  Each row records its image's content hash (``image_sha256``); the
rows of an image whose file changed since are dropped and recomputed.  Each transmitter runs once per image and setting and is reused for
every SNR (its output does not depend on the channel); images of equal size
are batched.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..codec import Failed
from ..codec.images import ImageError, load_rgb
from ..config import CodecConfig, bcr_text, config_for_server
from ..pipeline import IMAGE_EXTENSIONS, distinct_files, image_names
from . import learned as learned_mod
from . import report
from .baselines import (METHODS, Context, Method, Rx, ServerCodecs, Tx, build_methods,
                        digital_unavailable, load_captions, parse_methods, remote_problem)
from .metrics import ms_ssim, psnr

log = logging.getLogger(__name__)

DEFAULT_SNRS = (0.0, 5.0, 10.0, 15.0, 20.0)
#: held (flock) by the sweep writing a results folder; a second one is refused
LOCK_FILE = ".sweep.lock"
DEFAULT_METHODS = ("proposed", "random_noise", "sd_semcom", "digital")
#: configuration that must match for rows to be mixed in one results folder: every codec
#: setting that changes a reconstruction and is not in the methods' setting labels (k, m, N,
#: rule, rescaling, BCR are).  ``dtype`` is the one the codec runs at (``auto`` resolved).
FINGERPRINT_FIELDS = ("model", "T", "guidance", "prompt", "seed", "remove_mean", "clean_end", "inversion",
                      "inversion_iters", "inversion_tol", "dtype")
#: what a folder whose run.json records neither the field (fingerprint) nor the option (config)
#: was computed with: the codec's behaviour before the option existed (means kept, a_0 = 1,
#: explicit DDIM inversion; iterations and tolerance are then unused, their defaults stand)
LEGACY_SETTINGS = dict(remove_mean=False, clean_end="one", inversion="ddim", inversion_iters=3, inversion_tol=1e-4)


class SweepError(ValueError):
    """A usage problem (no images, unknown method, mismatched results folder); one line."""


@dataclass
class SweepOptions:
    """What to sweep.  ``images``: folders and/or files; ``out``: the results folder."""

    images: Sequence[Union[str, Path]]
    out: Union[str, Path]
    snrs: Sequence[float] = DEFAULT_SNRS
    methods: Union[str, Sequence[str]] = DEFAULT_METHODS
    config: CodecConfig = field(default_factory=CodecConfig)
    grid: Sequence[Tuple[int, int, int]] = ()
    #: reduction factors r, one setting each (nominal BCR 1/(96 r), ``--bcr``); empty: ``config.reduce``
    reductions: Sequence[int] = ()
    captions: Optional[Union[str, Path]] = None
    semcom_t: Union[str, int] = "auto"
    digital_codec: str = "hevc"
    digital_mcs: str = "adaptive"
    jobs: int = 1
    calibration: Optional[Union[str, Path]] = None
    metrics: Sequence[str] = learned_mod.ALL
    plots: bool = True
    grid_images: int = 3
    progress: bool = True
    argv: Optional[List[str]] = None
    #: ``local`` (the model in this process) or the endpoint(s) of ``gdmcom serve``, whose
    #: codec settings then apply where ``given`` does not name them (docs/evaluation.md,
    #: "The codec on an inference server")
    server: str = "local"
    #: the codec options the command line gave (``gr_gdmcom.cli.given_options``): with
    #: ``server``, these of ``config`` hold and the rest are the server's
    given: Sequence[str] = ()


@dataclass
class SweepResult:
    out: Path
    rows_total: int
    rows_computed: int
    rows_reused: int
    rows_failed: int
    images: List[str]
    skipped: List[Tuple[str, str]]
    seconds: float
    summary: List[dict]
    files: List[Path]


# --------------------------------------------------------------------------- inputs
def find_images(paths: Sequence[Union[str, Path]]) -> List[Path]:
    """Image files named or found (not recursively) in folders, sorted; SweepError when none.
    ``package:NAME`` is an image bundled with gr_gdmcom (``package:`` alone: all of them),
    found whatever the working directory, as for ``gdmcom simulate`` and ``link``."""
    from ..pipeline import PACKAGE_PREFIX, image_arg, is_pattern, package_image

    files: List[Path] = []
    looked = []
    for given in map(str, paths):
        p = image_arg(given)
        if given.startswith(PACKAGE_PREFIX) and not p.exists():
            bundled = sorted(f.name for f in package_image("").iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            raise SweepError(f"no bundled image {given}; bundled: {', '.join(bundled)} ('package:' for all)")
        if p.is_dir():
            looked.append(str(p))
            # a broken symbolic link or a link loop is kept, to be skipped and named as unreadable
            files += sorted(f for f in p.iterdir() if (f.is_file() or (f.is_symlink() and not f.exists()))
                            and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            files.append(p)
        elif is_pattern(p):  # a glob the shell did not expand (quoted)
            looked.append(str(p))
            files += sorted(Path(f) for f in glob.glob(str(p)) if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
        else:
            raise SweepError(f"no such image file or folder: {p}")
    if not files:
        raise SweepError(f"no images found in {', '.join(looked) or 'the given paths'} "
                         f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return distinct_files(files)


def load_images(files: Sequence[Path], max_pixels: int):
    """``({name: uint8 (H, W, 3)}, {name: file}, [(file, reason)])``; unreadable files are skipped."""
    names = image_names(files)
    images, where, skipped = {}, {}, []
    for f in files:
        try:
            if f.is_symlink() and not f.exists():
                try:
                    target = os.readlink(f)
                except OSError:
                    target = "?"
                raise ImageError(f"cannot read image {f}: a broken symbolic link or a link loop (-> {target})")
            images[names[f]] = np.asarray(load_rgb(f, max_pixels), dtype=np.uint8)
            where[names[f]] = str(f)
        except ImageError as exc:
            why = re.sub(r":?\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
            skipped.append((str(f), why))
            log.info("skipping %s", why)
    return images, where, skipped


def keep_recorded_labels(images: dict, where: dict, rows: Sequence[dict]) -> Tuple[dict, dict]:
    """``(images, where)`` relabelled so that a file keeps the label its rows already have.

    A label is the file stem, or the whole name where two stems collide (``pipeline.image_names``),
    so it depends on the other files of the run: ``a.png`` is ``a`` alone and ``a.png`` beside
    ``a.jpg``, and its rows would be computed and counted twice.  A file whose rows in rows.csv
    (matched by the recorded ``file``, as the same real path) carry another label keeps that one,
    unless another image of this run has it."""
    recorded: Dict[str, List[str]] = {}
    for r in rows:
        if r.get("file") and r.get("image"):
            labels = recorded.setdefault(os.path.realpath(r["file"]), [])
            if r["image"] not in labels:
                labels.append(r["image"])
    if not recorded:
        return images, where
    rename = {}
    used = set(images)
    for n in sorted(images):
        had = recorded.get(os.path.realpath(where[n]), [])
        if had and n not in had and had[0] not in used:
            rename[n] = had[0]
            used.discard(n)
            used.add(had[0])
    for n, new in rename.items():
        log.info("image %s keeps the label %s its rows have (not %s)", where[n], new, n)
    return ({rename.get(n, n): a for n, a in images.items()}, {rename.get(n, n): f for n, f in where.items()})


def row_originals(rows: Sequence[dict], images: dict, max_pixels: int) -> dict:
    """``{label: uint8 image}`` for every image the rows cover: this run's, and those of earlier
    runs read again from their recorded ``file`` where it still holds the same content
    (``image_sha256``); images that cannot be read back are left out."""
    out = dict(images)
    tried = set()
    for r in rows:
        n, f, sha = r.get("image"), r.get("file"), r.get("image_sha256")
        if n in out or n in tried or not f or not sha:
            continue
        tried.add(n)
        if content_hash(f) != sha:
            continue
        try:
            out[n] = np.asarray(load_rgb(f, max_pixels), dtype=np.uint8)
        except (ImageError, OSError):
            continue
    return out


# --------------------------------------------------------------------------- provenance
def git_commit() -> Optional[str]:
    """``git rev-parse HEAD`` of the checkout this package runs from (None when unavailable)."""
    root = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = r.stdout.strip()
    return out if r.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out) else None


def package_versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for pkg in ("gr-gdmcom", "torch", "diffusers", "transformers", "numpy", "scipy", "torchmetrics", "pillow",
                "pillow-heif", "py3gpp", "matplotlib", "tqdm", "huggingface-hub", "pyiqa", "torchvision",
                "torch-fidelity"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def model_revision(model: str, components=None) -> Optional[str]:
    """Best offline description of the exact weights: the tiny model's version, the
    revision asked for, a local folder, or the hub cache's snapshot commit."""
    if model == "tiny":
        from ..codec.models import TINY_VERSION

        return f"tiny-v{TINY_VERSION} (random weights, seed 0)"
    from ..codec.patch_gmm import is_patch_gmm, revision

    if is_patch_gmm(model):
        return revision(model)
    if components is not None and getattr(components, "revision", None):
        return str(components.revision)
    p = Path(model)
    if p.exists():
        return f"local folder {p.resolve()}"
    try:
        from huggingface_hub import try_to_load_from_cache

        f = try_to_load_from_cache(model, "model_index.json")
        if isinstance(f, str):
            parts = Path(f).parts
            return parts[parts.index("snapshots") + 1]
    except Exception:  # noqa: BLE001 - provenance is best effort
        pass
    return None


def dtype_name(dtype) -> Optional[str]:
    """``fp32``, ``fp16`` or ``bf16`` for a torch dtype or its name (``torch.float16``, ``float16``,
    ``fp16``); None for ``auto``, an empty or an unknown value."""
    t = str(dtype or "").replace("torch.", "").lower()
    return {"float32": "fp32", "fp32": "fp32", "float": "fp32", "float16": "fp16", "fp16": "fp16", "half": "fp16",
            "bfloat16": "bf16", "bf16": "bf16"}.get(t)


def _run_dtype(cfg: CodecConfig, ctx: Optional[Context] = None) -> str:
    """The dtype the codec runs at (:func:`_codec_dtype`: the server's, the loaded components', or
    ``cfg.dtype``), as :func:`dtype_name` gives it, ``auto`` resolved for ``cfg.device`` (fp16 on
    CUDA, fp32 on CPU)."""
    raw = _codec_dtype(cfg, ctx) if ctx is not None else cfg.dtype
    if raw == "auto":
        try:
            from ..codec.models import resolve_device, resolve_dtype

            raw = resolve_dtype(raw, resolve_device(cfg.device))
        except Exception:  # noqa: BLE001 - an unusable device is refused where the model loads
            pass
    return dtype_name(raw) or str(raw)


def _fingerprint(cfg: CodecConfig, ctx: Optional[Context] = None) -> dict:
    fp = {k: getattr(cfg, k) for k in FINGERPRINT_FIELDS if k != "dtype"}
    return fp | {"dtype": _run_dtype(cfg, ctx), "channel": "awgn"}


def _recorded(prev: dict, key: str):
    """``(value, how)`` of a fingerprint field for the rows of a results folder: its
    fingerprint's, else (run.json written before the field was fingerprinted) the option in its
    ``config`` (the last run's) or, for dtype, its ``dtype``; else the codec's behaviour before
    the option existed (:data:`LEGACY_SETTINGS`).  ``(None, None)``: unknown, not compared."""
    old = prev.get("fingerprint") or {}
    if key in old:
        return old[key], ""
    if key == "dtype":
        d = dtype_name(prev.get("dtype"))
        return (d, " (run.json's dtype)") if d else (None, None)
    conf = prev.get("config") or {}
    if key in conf:
        return conf[key], " (run.json's config)"
    if key in LEGACY_SETTINGS:
        return LEGACY_SETTINGS[key], " (not recorded: the codec's behaviour before the option existed)"
    return None, None


def _check_folder(out: Path, cfg: CodecConfig, ctx: Optional[Context] = None) -> dict:
    """Previous run.json (or {}); SweepError if it was made with another configuration
    (:data:`FINGERPRINT_FIELDS`; a run.json from before a field was fingerprinted: see
    :func:`_recorded`)."""
    path, rows = out / "run.json", out / "rows.csv"
    try:
        prev = json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        prev = None
    if not isinstance(prev, dict):
        if rows.exists() and rows.stat().st_size:  # (a sweep writes run.json before its first row)
            raise SweepError(f"{rows} exists but {path.name} is {'unreadable' if path.exists() else 'missing'}: "
                             "which configuration made its rows is unknown; use another --out (or move "
                             f"{rows.name} away) so rows of different configurations are not mixed")
        if path.exists():
            log.warning("%s is unreadable; starting a new one", path)
        return {}
    new, diff = _fingerprint(cfg, ctx), []
    for k in new:
        was, how = _recorded(prev, k)
        if how is not None and was != new[k]:
            diff.append(f"{k}={was!r} there{how}, {new[k]!r} now")
    if diff:
        raise SweepError(f"{out} holds a sweep made with another configuration ({', '.join(diff)}); "
                         "use another --out so rows of different configurations are not mixed (or give "
                         "the folder's settings)")
    return prev


def _warn_reused_digital_budgets(methods: Sequence[Method], old_rows: List[dict], images: dict,
                                 cfg: CodecConfig) -> None:
    """The digital baseline's setting names its BCR, not the reduction method, so its rows are
    shared by every --reduce-method in one folder.  Where an image's symbol budget under this
    run's method differs (sides whose latent is not a whole number of blocks), say so."""
    for m in methods:
        if m.name != "digital" or m.reduction() <= 1:
            continue
        label, diffs = m.setting_label(), []
        for r in old_rows:
            n = r["image"]
            if r["setting"] != label or r["method"] != "digital" or n not in images or not r.get("symbols"):
                continue
            want = m.budget(*images[n].shape[:2])
            if int(float(r["symbols"])) != want:
                diffs.append(f"{n}: {int(float(r['symbols']))} there, {want} now")
        if diffs:
            diffs = sorted(set(diffs))
            log.warning("digital rows at BCR %s are reused from an earlier run whose symbol budget differs from "
                        "--reduce-method %s's for %d image(s) (%s%s); their `symbols` column has the budget they "
                        "had. Use another --out to compare at exactly this run's budget", bcr_text(m.reduction()),
                        cfg.reduce_method, len(diffs), "; ".join(diffs[:3]), " …" if len(diffs) > 3 else "")


def _check_calibration(methods: Sequence[Method], ctx: Context) -> None:
    """proposed_calibrated: load the model and the calibration file now and refuse a file
    measured for another model or setting (SweepError, exit 2), instead of one error row per
    image on every run."""
    from ..codec.calibration import CalibrationError

    for m in methods:
        if m.name != "proposed_calibrated":
            continue
        try:
            codec = m.codec  # GenerativeCodec checks the file against the model (k: per image)
            codec.calibration.check(codec.c.model_id, m.config, with_k=True)
        except CalibrationError as exc:
            ctx.close()
            raise SweepError(f"--calibration {ctx.calibration}: {exc}") from None
        return


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s.replace("=", "-").replace(",", "_")).strip("_") or "default"


def _device_name(cfg: CodecConfig, ctx: Context) -> str:
    if ctx.components is not None:
        return str(ctx.components.device)
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- the sweep
def run_sweep(opts: SweepOptions, components=None) -> SweepResult:
    """Run (or continue) a sweep; see the module docstring.

    Args:
        opts: what to run.
        components: already loaded model components (else loaded on first need).
    Raises:
        SweepError: usage problems, before anything is computed.
        KeyboardInterrupt: propagated after the rows so far are safely written.
    """
    with contextlib.ExitStack() as held:  # the results folder's lock, from when it is made
        return _run_sweep(opts, components, held)


def _run_sweep(opts: SweepOptions, components, held: contextlib.ExitStack) -> SweepResult:
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cfg = opts.config.validate()
    out = Path(opts.out)

    # 1. Check inputs (everything that can be refused is refused before any work)
    methods_names = parse_methods(opts.methods)
    snrs = list(dict.fromkeys(float(s) for s in opts.snrs))  # (--snr 5 5.0 computed one row twice)
    if not snrs:
        raise SweepError("no SNR given (--snr)")
    bad = [s for s in snrs if not math.isfinite(s)]
    if bad:
        raise SweepError(f"SNR values must be finite, got {bad}")
    if "digital" in methods_names:
        why = digital_unavailable(opts.digital_codec)
        if why:
            raise SweepError(f"the digital baseline cannot run here: {why}; drop 'digital' from --methods")
    if opts.digital_mcs != "adaptive":  # a misspelt MCS is refused with or without 'digital' in --methods
        from .digital import get_mcs

        get_mcs(opts.digital_mcs)  # ValueError listing the choices
    if int(opts.jobs) < 1:
        raise SweepError(f"--jobs must be >= 1 (worker processes for the digital chain), got {opts.jobs}")
    files = find_images(opts.images)
    captions = load_captions(opts.captions) if opts.captions else {}
    remote = None
    if opts.server not in ("", "local"):
        cfg, remote = connect_server(opts.server, cfg, opts.given)
    ctx = Context(config=cfg, components=components, captions=captions, semcom_t=opts.semcom_t,
                  digital_codec=opts.digital_codec, digital_mcs=opts.digital_mcs, jobs=max(1, int(opts.jobs)),
                  calibration=str(opts.calibration) if opts.calibration else None, remote=remote)
    try:
        methods = build_methods(methods_names, ctx, list(opts.grid) or None, opts.reductions)
        problems = [p for p in (remote_problem(m, remote) for m in methods) if p] if remote else []
    except Exception:
        ctx.close()
        raise
    if problems:
        ctx.close()
        raise SweepError(f"--server {remote.endpoints}: " + "; ".join(problems)
                         + "; drop them from --methods/--grid or run without --server")
    factors = list(opts.reductions) or [cfg.reduce]
    whole_only = [n for n in methods_names if not METHODS[n].reducible]
    if whole_only and any(r > 1 for r in factors):
        log.warning("%s send%s the whole latent: run at BCR %s only", ", ".join(whole_only),
                    "s" if len(whole_only) == 1 else "", bcr_text(1) if 1 in factors else "1/96 (not asked for)")
    if not methods:
        raise SweepError(f"no method can run at BCR {', '.join(bcr_text(r) for r in factors)}: "
                         f"{', '.join(methods_names)} send{'s' if len(methods_names) == 1 else ''} the whole latent")
    if remote is None:
        _check_calibration(methods, ctx)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file; give a folder")
    prev = _check_folder(out, cfg, ctx)

    # 2. Images
    images, where, skipped = load_images(files, cfg.max_pixels)
    images, where = keep_recorded_labels(images, where, report.read_rows(out / "rows.csv"))
    if not images:
        raise SweepError(f"none of the {len(files)} image files could be read: "
                         + "; ".join(r for _, r in skipped[:3]))
    try:  # only now: a usage error leaves no empty results folder behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"cannot create the results folder {out}: {exc.strerror or exc}") from None
    held.enter_context(_folder_lock(out, started))
    prev = _check_folder(out, cfg, ctx)  # again, now that no other sweep can be writing it
    ctx.image_files = where
    if captions:
        hits = [n for n in images if ctx.caption_for(n)[1] == "captions file"]
        if len(hits) < len(images):
            log.warning("captions file %s has no entry for %d of %d images (they use the fixed prompt)",
                        opts.captions, len(images) - len(hits), len(images))
    names = sorted(images)

    # 3. Resume: what is already done (for an image whose content changed: nothing)
    rows_path = out / "rows.csv"
    digests = {n: content_hash(where[n]) for n in names}
    old_rows = _drop_stale_rows(rows_path, report.read_rows(rows_path), images, digests)
    done = {report.row_key(r) for r in old_rows if not r.get("error")}
    plan: List[Tuple[Method, Dict[str, List[float]]]] = []
    for m in methods:
        label = m.setting_label()
        need = {}
        for n in names:
            miss = [s for s in snrs if (n, report.snr_text(s), m.name, label) not in done]
            if miss:
                need[n] = miss
        plan.append((m, need))
    _warn_reused_digital_budgets(methods, old_rows, images, cfg)
    total = sum(len(v) for _, need in plan for v in need.values())
    reused = len(names) * len(snrs) * len(methods) - total

    # 4. Learned metrics: probed once; unavailable ones stay empty
    metrics = learned_mod.LearnedMetrics(opts.metrics, device=_device_name(cfg, ctx))
    avail = metrics.availability()
    by_reason: Dict[str, List[str]] = {}
    for name, a in avail.items():
        if name in opts.metrics and not a.available:
            by_reason.setdefault(a.reason, []).append(learned_mod.LABELS[name])
    for reason, labels in by_reason.items():
        log.warning("%s unavailable: %s; left empty (see summary.md)", ", ".join(labels), reason)

    run_info = _run_json(prev, opts, cfg, ctx, methods, images, where, skipped, avail, started)
    _write_json(out / "run.json", run_info)

    # 5. Compute the missing rows
    computed = failed = 0
    fresh_keys: set = set()  # keys of the rows computed in this run
    interrupted = False
    bar = _progress(total, opts.progress)
    writer = report.RowWriter(rows_path)
    tx_cache: Dict[tuple, Union[Tx, Failed]] = {}
    try:
        for i, (m, need) in enumerate(plan):
            if not need:
                continue
            label = m.setting_label()
            key = m.transmit_key()
            bar.set_description(f"{m.name}")
            by_size: Dict[tuple, List[str]] = {}
            for n in need:
                by_size.setdefault(images[n].shape, []).append(n)
            for _shape, members in by_size.items():
                for s in range(0, len(members), cfg.batch_size):
                    batch = members[s:s + cfg.batch_size]
                    fresh = [n for n in batch if (key, n) not in tx_cache]
                    if fresh:
                        try:
                            txs = m.transmit([images[n] for n in fresh], fresh)
                        except Exception as exc:  # noqa: BLE001 - record, go on with the rest
                            log.warning("%s transmitter failed: %s", m.name, exc)
                            log.debug("traceback", exc_info=True)
                            txs = [Failed(f"{m.name} transmitter: {type(exc).__name__}: {exc}", n) for n in fresh]
                        for n, t in zip(fresh, txs):
                            tx_cache[(key, n)] = t
                    for snr in snrs:
                        items = [n for n in batch if snr in need[n]]
                        if not items:
                            continue
                        good = [n for n in items if isinstance(tx_cache[(key, n)], Tx)]
                        results: Dict[str, Union[Rx, Failed]] = {n: tx_cache[(key, n)] for n in items
                                                                 if n not in good}
                        if good:
                            try:
                                rxs = m.receive([tx_cache[(key, n)] for n in good], snr)
                            except Exception as exc:  # noqa: BLE001
                                log.warning("%s receiver failed at %g dB: %s", m.name, snr, exc)
                                log.debug("traceback", exc_info=True)
                                rxs = [Failed(f"{m.name} receiver: {type(exc).__name__}: {exc}", n) for n in good]
                            results.update(zip(good, rxs))
                        for n in items:
                            tx = tx_cache[(key, n)]
                            row = _row(m, label, n, where[n], images[n], snr, tx, results[n], out, metrics)
                            row["image_sha256"] = digests[n]
                            writer.write(row)
                            computed += 1
                            fresh_keys.add(report.row_key(row))
                            failed += bool(row.get("error"))
                            bar.update(1)
                            bar.set_postfix_str(f"{n} {snr:g} dB", refresh=False)
            # free transmitter outputs no later method shares
            later = {mm.transmit_key() for mm, _ in plan[i + 1:]}
            for k in [k for k in tx_cache if k[0] not in later]:
                del tx_cache[k]
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        writer.close()
        bar.close()
        ctx.close()
        rows = _dedupe(rows_path)
        run_info["runs"][-1].update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    rows_computed=computed, rows_failed=failed, interrupted=interrupted,
                                    seconds=round(time.perf_counter() - t_start, 2))
        if ctx.remote is None:
            run_info["model"]["revision"] = model_revision(cfg.model, ctx.components) or run_info["model"]["revision"]
        run_info["device"], run_info["dtype"] = _codec_device(cfg, ctx), _codec_dtype(cfg, ctx)
        _write_json(out / "run.json", run_info)

    # 6. Learned metrics that earlier runs lacked, from their saved reconstructions
    originals = row_originals(rows, images, cfg.max_pixels)
    rows, unfilled = rescore_learned(out, rows, originals, metrics, fresh_keys)

    # 7. Summary, tables, figures
    files_written = _report(out, rows, originals, opts, cfg, run_info, metrics, skipped, this_run=names,
                            unfilled=unfilled)
    return SweepResult(out=out, rows_total=len(rows), rows_computed=computed, rows_reused=reused,
                       rows_failed=failed, images=names, skipped=skipped,
                       seconds=time.perf_counter() - t_start, summary=files_written.pop("summary"),
                       files=list(files_written.values()))


def connect_server(server: str, cfg: CodecConfig, given=()) -> Tuple[CodecConfig, ServerCodecs]:
    """The sweep's configuration against a server, and the server's codecs.

    The server's codec settings apply where ``given`` (the options the command line set) does
    not name them; device, dtype, batch size and image limits stay this side's (the learned
    metrics run here).  A given setting that differs travels with each request where a request
    can carry it (k, m, steps, rescale); otherwise the methods that need it are refused
    (:func:`remote_problem`).  Raises SweepError when no server answers or its status has no
    configuration.
    """
    from ..cli import check_server, warn_server_settings
    from ..codec import ModelLoadError

    try:
        status = check_server(server)
    except ModelLoadError as exc:
        raise SweepError(str(exc)) from None
    theirs = status.get("config")
    if not isinstance(theirs, dict):
        raise SweepError(f"the server at {server.partition('?')[0]} does not report its codec configuration "
                         f"(status has no 'config'); is it gdmcom serve?")
    try:
        merged, taken = config_for_server(cfg, theirs, given)
        servers = config_for_server(cfg, theirs)[0]
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    warn_server_settings(server.partition("?")[0], taken)
    log.info("codec on %s: %s on %s (%s), gdmcom %s", server.partition("?")[0], status.get("model"),
             status.get("device"), status.get("dtype"), status.get("version"))
    return merged, ServerCodecs(server, status, servers, concurrency=max(1, cfg.batch_size))


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", file=sys.stderr, disable=not enabled or total == 0, dynamic_ncols=True,
                smoothing=0.1)


def _row(m: Method, label: str, name: str, file: str, ref: np.ndarray, snr: float,
         tx: Union[Tx, Failed], rx: Union[Rx, Failed], out: Path, metrics: learned_mod.LearnedMetrics) -> dict:
    h, w = ref.shape[:2]
    row = dict(image=name, file=file, width=w, height=h, snr_db=snr, method=m.name, setting=label, channel="awgn",
               fidelity=m.fidelity())
    if isinstance(tx, Tx):
        row.update(symbols=tx.n_symbols, bcr=tx.n_symbols / (3 * h * w), tx_seconds=tx.seconds)
    row["bcr_nominal"] = bcr_text(m.reduction())
    if isinstance(rx, Failed):
        row["error"] = rx.error
        return row
    img = rx.image
    try:
        ms, scales = ms_ssim(ref, img)
        row.update(n_steps=rx.n_steps, rule=rx.rule, snr_est_db=rx.snr_est_db, psnr=psnr(ref, img), ms_ssim=ms,
                   ms_ssim_scales=scales, decode_success=rx.decode_success, rx_seconds=rx.seconds,
                   seconds=tx.seconds + rx.seconds,
                   unet_calls=None if rx.unet_calls is None else tx.unet_calls + rx.unet_calls,
                   detail=rx.detail, fidelity=rx.fidelity or m.fidelity())
        row.update(metrics.score(ref, img))
        rel = Path("images") / m.name / _slug(label) / f"{_slug(name)}_snr{report.snr_text(snr)}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(img).save(out / rel)
        row["output"] = rel.as_posix()
    except Exception as exc:  # noqa: BLE001 - one error row; the rest of the sweep goes on
        log.warning("%s on %s (%d×%d) at %g dB: scoring failed: %s: %s", m.name, name, w, h, snr,
                    type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        keep = {k: row[k] for k in ("image", "file", "width", "height", "snr_db", "method", "setting", "channel",
                                    "fidelity", "symbols", "bcr", "tx_seconds", "bcr_nominal") if k in row}
        row = dict(keep, error=f"{m.name} scoring {name} ({w}×{h}): {type(exc).__name__}: {exc}")
    return row


def rescore_learned(out: Path, rows: List[dict], originals: dict, metrics: learned_mod.LearnedMetrics,
                    fresh: set) -> Tuple[List[dict], Dict[str, int]]:
    """Fill the per-image learned metrics that are available now into the rows of earlier runs
    that lack them (computed while a metric was unavailable or not asked for), from the
    reconstruction each row saved (``output``) and its original.  Rewrites rows.csv when a
    cell was filled.  Returns the rows and ``{metric: rows still without it}`` (no saved
    reconstruction or readable original; failures are counted in ``metrics.errors``)."""
    from PIL import Image

    todo = [n for n in learned_mod.PER_IMAGE if n in metrics.names and metrics.available(n)]
    unfilled: Dict[str, int] = {}
    filled = 0
    for r in rows:
        want = [n for n in todo if not r.get(n)]
        if not want or r.get("error") or report.row_key(r) in fresh:
            continue
        ref, img = originals.get(r["image"]), None
        if ref is not None and r.get("output"):
            try:
                img = np.asarray(Image.open(out / r["output"]).convert("RGB"))
            except OSError:
                img = None
        if img is None or img.shape != ref.shape:
            for n in want:
                unfilled[n] = unfilled.get(n, 0) + 1
            continue
        got = metrics.score(ref, img, want)
        r.update({k: report.fmt_cell(v) for k, v in got.items()})
        filled += len(got)
    if filled:
        report.write_rows(out / "rows.csv", rows)
        log.info("filled %d learned-metric cells of earlier rows from their saved reconstructions", filled)
    for n, k in unfilled.items():
        log.warning("%s: %d row(s) of earlier runs have no value and cannot be rescored (no saved reconstruction "
                    "in %s or no readable original); see summary.md", learned_mod.LABELS[n], k, out / "images")
    return rows, unfilled


def content_hash(path) -> Optional[str]:
    """The first 16 hex digits of the file's SHA-256 (rows.csv ``image_sha256``; None if unreadable)."""
    full = _sha256(path)
    return full[:16] if full else None


def _drop_stale_rows(rows_path: Path, rows: List[dict], images: dict, digests: dict) -> List[dict]:
    """Remove the rows of images whose file changed since they were computed, so they are
    recomputed: the content hash differs (or, for rows written before the hash was recorded,
    the size does).  Logs one line per changed image; returns the rows kept."""
    stale: Dict[str, List[dict]] = {}
    for r in rows:
        n = r["image"]
        if n not in images:
            continue
        h, w = images[n].shape[:2]
        old = r.get("image_sha256") or ""
        if (old and digests.get(n) and old != digests[n]) or \
                (not old and (str(r.get("width")), str(r.get("height"))) != (str(w), str(h))):
            stale.setdefault(n, []).append(r)
    if not stale:
        return rows
    for n, rs in stale.items():
        h, w = images[n].shape[:2]
        olds = sorted({r.get("image_sha256") or f"{r.get('width')}×{r.get('height')}" for r in rs})
        log.warning("image %s changed since its %d rows in %s were computed (%s there, %s %d×%d now): "
                    "they are dropped and recomputed", n, len(rs), rows_path.name, ", ".join(olds),
                    digests.get(n), w, h)
    gone = {id(r) for rs in stale.values() for r in rs}
    kept = [r for r in rows if id(r) not in gone]
    report.write_rows(rows_path, kept)
    return kept


def _dedupe(rows_path: Path) -> List[dict]:
    """All rows, keeping the last one per key (a retried error row is replaced)."""
    rows = report.read_rows(rows_path)
    last = {}
    for r in rows:
        last[report.row_key(r)] = r
    if len(last) != len(rows):
        rows = list(last.values())
        report.write_rows(rows_path, rows)
    return rows


@contextlib.contextmanager
def _folder_lock(out: Path, started: str):
    """Hold ``out/.sweep.lock`` (an advisory ``flock``, released when the process ends however
    it ends) while a sweep writes the folder.  Two sweeps writing one folder at once lost rows:
    the first to finish rewrites rows.csv (dropping superseded rows) under the other's appends,
    and each wrote run.json over the other's record of its run."""
    import fcntl

    f = open(out / LOCK_FILE, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            raise SweepError(f"another gdmcom sweep ({who}) is writing {out}; wait for it to finish or give "
                             f"another --out") from None
        except OSError as exc:  # a file system without locks (some network mounts): run unguarded
            log.warning("cannot lock %s (%s): a second sweep into this folder at the same time would not be "
                        "refused", out / LOCK_FILE, exc.strerror or exc)
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {platform.node()}, started {started}\n")
        f.flush()
        yield
    finally:
        f.close()


def _sha256(path) -> Optional[str]:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _run_json(prev: dict, opts: SweepOptions, cfg: CodecConfig, ctx: Context, methods: Sequence[Method],
              images: dict, where: dict, skipped: list, avail: dict, started: str) -> dict:
    info = dict(prev) if prev else {}
    info.setdefault("created", started)
    info.update(
        tool="gdmcom sweep",
        updated=started,
        argv=opts.argv if opts.argv is not None else sys.argv,
        fingerprint=_fingerprint(cfg, ctx),
        config=asdict(cfg),
        sweep=dict(snrs=[float(s) for s in opts.snrs],
                   bcr=[bcr_text(r) for r in (list(opts.reductions) or [cfg.reduce])],
                   reduce_method=cfg.reduce_method, methods=list(dict.fromkeys(m.name for m in methods)),
                   settings={f"{m.name}/{m.setting_label()}": m.fidelity() for m in methods},
                   grid=[list(g) for g in opts.grid], captions=str(opts.captions) if opts.captions else None,
                   captions_sha256=_sha256(opts.captions) if opts.captions else None,
                   semcom_t=opts.semcom_t, digital_codec=opts.digital_codec, digital_mcs=opts.digital_mcs,
                   jobs=opts.jobs, calibration=str(opts.calibration) if opts.calibration else None,
                   metrics=list(opts.metrics), channel="awgn (numpy), Es/N0 per complex symbol, unit Es",
                   snr_given_to_receiver="the channel's true SNR (no PHY estimate; snr_est_db empty)"),
        seed=cfg.seed,
        device=_codec_device(cfg, ctx),
        dtype=_codec_dtype(cfg, ctx),
        model=dict(id=cfg.model, revision=None if ctx.remote else model_revision(cfg.model, ctx.components)),
        server=_server_info(ctx),
        versions=package_versions(),
        git_commit=git_commit(),
        platform=platform.platform(),
        images={n: where[n] for n in sorted(images)},
        skipped_images=[dict(file=f, reason=r) for f, r in skipped],
        learned_metrics={k: v.to_dict() for k, v in avail.items()},
    )
    # what made this run's rows (the top-level argv/config/git_commit are the latest run's)
    info.setdefault("runs", []).append(dict(
        started=started, argv=info["argv"], git_commit=info["git_commit"], config=info["config"],
        dtype=info["fingerprint"]["dtype"], device=info["device"], methods=sorted(info["sweep"]["settings"]),
        snrs=info["sweep"]["snrs"], images=sorted(images), metrics=list(opts.metrics)))
    return info


def _codec_device(cfg: CodecConfig, ctx: Context) -> str:
    """Where the codec ran: this process's device, or the server's."""
    if ctx.remote is not None:
        return f"{ctx.remote.status.get('device')} (inference server {ctx.remote.endpoints})"
    return _device_name(cfg, ctx)


def _codec_dtype(cfg: CodecConfig, ctx: Context) -> str:
    if ctx.remote is not None:
        return str(ctx.remote.status.get("dtype"))
    return str(ctx.components.dtype) if ctx.components is not None else cfg.dtype


def _server_info(ctx: Context) -> Optional[dict]:
    """Where the codec ran when it was a server's (run.json ``server``; None: in this process)."""
    if ctx.remote is None:
        return None
    st = ctx.remote.status
    return dict(endpoint=ctx.remote.endpoints, host=st.get("host"), model=st.get("model"), device=st.get("device"),
                dtype=st.get("dtype"), version=st.get("version"), engine=st.get("engine", "local"),
                speed=st.get("speed"), scheduling=st.get("scheduling"))


def _set_scores(out: Path, rows: Sequence[dict], images: dict, metrics: learned_mod.LearnedMetrics) -> dict:
    """FID / KID per (method, setting, SNR) over the saved reconstructions, cached in set_metrics.json."""
    from PIL import Image

    avail = metrics.availability()
    backends = {k: avail[k].backend for k in learned_mod.SET_LEVEL if avail[k].available}
    cache_path = out / "set_metrics.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        if not r.get("error") and r.get("output") and r["image"] in images:
            groups.setdefault((r["method"], r["setting"], report.snr_text(r["snr_db"])), []).append(r)
    result, changed = {}, False
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["image"])
        ck = "|".join(key)
        ident = dict(images=[r["image"] for r in rs], backends=backends,
                     sha256=[r.get("image_sha256") or "" for r in rs])
        hit = cache.get(ck)
        if hit and hit.get("ident") == ident:
            result[key] = hit["scores"]
            continue
        if backends:
            refs, imgs = [], []
            for r in rs:
                try:
                    imgs.append(np.asarray(Image.open(out / r["output"]).convert("RGB")))
                    refs.append(images[r["image"]])
                except OSError:
                    continue
            scores = metrics.set_scores(refs, imgs)
        else:
            n_p = sum(len(learned_mod.patches(images[r["image"]])) for r in rs)
            scores = {k: dict(reason=avail[k].reason, patches=n_p) for k in learned_mod.SET_LEVEL}
        result[key] = scores
        cache[ck] = dict(ident=ident, scores=scores)
        changed = True
    if changed:
        _write_json(cache_path, cache)
    return result


def _names(names: Sequence[str], most: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (" …" if len(names) > most else "")


def coverage_lines(rows: Sequence[dict], this_run: Sequence[str]) -> Tuple[str, List[str]]:
    """What the summary averages: ``(the header's Images line, notes)``.  The summary covers
    every row of rows.csv, which may hold images this run did not name (earlier runs), and its
    cells may cover different image sets (an SNR or method added for some images only)."""
    ok = [r for r in rows if not r.get("error")]
    covered = sorted({r["image"] for r in rows})
    sizes = sorted({f"{r['width']}×{r['height']}" for r in rows if r.get("width") and r.get("height")})
    line = f"- Images: {len(covered)} in rows.csv ({_names(covered)})" + (f"; sizes {', '.join(sizes)}" if sizes else "")
    others = sorted(set(covered) - set(this_run))
    if others:
        line += (f". This run named {len(this_run)} ({_names(this_run)}); the tables also average the rows of "
                 f"{len(others)} image(s) from earlier runs ({_names(others)}).")
    else:
        line += "."
    cells: Dict[tuple, set] = {}
    for r in rows:
        cells.setdefault((r["method"], r["setting"], report.snr_text(r["snr_db"])), set())
    for r in ok:
        cells[(r["method"], r["setting"], report.snr_text(r["snr_db"]))].add(r["image"])
    notes = []
    sets: Dict[frozenset, List[str]] = {}
    for (m, st, snr), ims in cells.items():
        sets.setdefault(frozenset(ims), []).append(f"{m} ({st}) {snr} dB")
    if len(sets) > 1:
        groups = sorted(sets.items(), key=lambda kv: (-len(kv[0]), sorted(kv[0])))
        parts = [f"{len(ims)} image(s) ({_names(ims, 5) or 'none'}) in {'; '.join(where[:4])}"
                 + (f" and {len(where) - 4} more cells" if len(where) > 4 else "") for ims, where in groups[:5]]
        notes.append("**The cells cover different image sets** (each table cell shows its n): " + " — ".join(parts)
                     + (" — …" if len(groups) > 5 else "") + ". Compare methods and SNRs over the same images "
                     "only (run the missing combinations, or use another --out).")
    return line, notes


def learned_coverage(rows: Sequence[dict], metrics: learned_mod.LearnedMetrics, unfilled: Dict[str, int]
                     ) -> List[str]:
    """summary.md notes for the per-image learned metrics that only some rows have."""
    ok = [r for r in rows if not r.get("error")]
    notes = []
    for name in learned_mod.PER_IMAGE:
        have = sum(1 for r in ok if r.get(name))
        if not ok or have in (0, len(ok)):
            continue
        label = learned_mod.LABELS[name]
        if metrics.available(name):
            why = (f"{unfilled[name]} row(s) of earlier runs could not be rescored (their reconstruction in images/ "
                   "or their original is missing); rerun them in another --out" if unfilled.get(name) else
                   "the rest failed (see the note below)")
        else:
            why = (f"the rest were computed while {label} was unavailable or not asked for (--metrics); rerun with "
                   f"it available and they are filled from the reconstructions saved in images/")
        notes.append(f"**{label} covers {have} of {len(ok)} rows**: its means are over those only; {why}.")
    return notes


def _report(out: Path, rows: List[dict], images: dict, opts: SweepOptions, cfg: CodecConfig, run_info: dict,
            metrics: learned_mod.LearnedMetrics, skipped: list, this_run: Sequence[str] = (),
            unfilled: Optional[Dict[str, int]] = None) -> dict:
    """summary.csv/md, table2.md and the figures from ``rows`` (all of rows.csv); ``images``:
    the originals the rows cover that could be read (:func:`row_originals`), ``this_run``:
    the labels of this run's images."""
    set_scores = _set_scores(out, rows, images, metrics)
    summary = report.summarize(rows, set_scores)
    report.write_summary_csv(out / "summary.csv", summary)
    avail = {k: v.to_dict() for k, v in metrics.availability().items()}
    # a set metric that ran nowhere: say why (the first reason found)
    for k in learned_mod.SET_LEVEL:
        if avail[k]["available"] and not any(s.get(k) is not None for s in summary):
            reasons = [v[k]["reason"] for v in set_scores.values() if k in v and v[k].get("reason")]
            if reasons:
                avail[k] = dict(available=False, backend=avail[k]["backend"], reason=reasons[0])
    n_patches = {sum(len(learned_mod.patches(images[r["image"]])) for r in rows
                     if r["image"] in images and not r.get("error")
                     and (r["method"], r["setting"], report.snr_text(r["snr_db"])) == key)
                 for key in set_scores}
    scored = sorted({r["image"] for r in rows if r["image"] in images and not r.get("error")})
    sizes = sorted({f"{images[n].shape[1]}×{images[n].shape[0]}" for n in scored})
    p = learned_mod.PATCH
    if not any(k in opts.metrics for k in learned_mod.SET_LEVEL):
        set_note = None  # FID/KID not asked for (--metrics none or a list without them)
    elif not any(n_patches):
        set_note = (f"FID/KID: not computed on these images — they are smaller than {p}×{p} "
                    f"({', '.join(sizes)}), so they give no {p}×{p} patches.")
    elif not any(avail[k]["available"] for k in learned_mod.SET_LEVEL):
        set_note = None  # unavailable: their sections say why, and no patch was scored
    else:
        set_note = (f"FID/KID: over non-overlapping {p}×{p} patches (top-left aligned, remainders dropped) of the "
                    f"originals and the reconstructions, per method and SNR: "
                    f"{', '.join(map(str, sorted(n_patches)))} "
                    f"{'patch' if sorted(n_patches) == [1] else 'patches'} per set from {len(scored)} "
                    f"image{'' if len(scored) == 1 else 's'} "
                    f"({', '.join(sizes)}); KID: "
                    f"{learned_mod.KID_SUBSETS} subsets of size min({learned_mod.KID_MAX_SUBSET}, patches). "
                    "With few patches both are noisy; compare methods on the same images only.")
    model = run_info.get("model", {})
    images_line, coverage_notes = coverage_lines(rows, list(this_run) or sorted(images))
    header = [
        images_line,
        f"- Model: `{model.get('id')}` (revision: {model.get('revision') or 'unknown'}); device "
        f"{run_info.get('device')}; seed {cfg.seed}; T = {cfg.T}, guidance {cfg.guidance:g}, "
        f"prompt \"{cfg.prompt}\".",
        "- Channel: numpy AWGN, SNR = Es/N0 per complex symbol (unit symbol energy); the diffusion receivers "
        "are told the true SNR (no PHY, so the `snr_est_db` column is empty).",
        f"- Git commit: {run_info.get('git_commit') or 'unknown'}; generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} from rows.csv.",
    ]
    if cfg.model == "tiny":
        header.append("- **`--model tiny` is a random-weight model: these numbers test the plumbing, not the method.**")
    notes = list(coverage_notes) + learned_coverage(rows, metrics, unfilled or {})
    for name, (n, why) in metrics.errors.items():
        notes.append(f"{learned_mod.LABELS[name]} failed on {n} rows of the latest run (cells left empty): {why}.")
    if any(r["method"] == "proposed" and "norescale" in r["setting"] for r in rows):
        notes.append("Proposed-method settings marked `norescale` (from --grid) fix N and skip latent rescaling: "
                     "the paper's behaviour (`--steps N --no-rescale`).")
    md = report.summary_markdown(summary, dict(title="Sweep summary", header=header, availability=avail,
                                               skipped=skipped, set_note=set_note, notes=notes))
    (out / "summary.md").write_text(md, encoding="utf-8")
    written = dict(summary=summary, summary_csv=out / "summary.csv", summary_md=out / "summary.md")
    if opts.grid:
        (out / "table2.md").write_text(report.table2_markdown(summary, list(opts.grid)), encoding="utf-8")
        written["table2"] = out / "table2.md"
    if opts.plots and rows:
        snrs = sorted({report.snr_text(s["snr_db"]) for s in summary}, key=float)
        if len(snrs) >= 2:
            figs = report.plot_metrics(summary, out / "plots")
        else:
            figs = []
            log.warning("one SNR only (%s dB): no plots/<metric>_vs_snr figures (a curve needs two SNRs); "
                        "summary.md has the values", ", ".join(snrs) or "none")
        figs += report.plot_metrics_vs_bcr(summary, out / "plots")
        figs += report.plot_image_grids(rows, images, out / "plots", out, opts.grid_images)
        figs += report.plot_snr_strips(rows, images, out / "plots", out, opts.grid_images)
        for i, f in enumerate(figs):
            written[f"fig{i}"] = f
    return written
