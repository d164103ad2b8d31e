"""Soak the codec with random settings and random images: what a user's command line and photos hand it.

    .venv/bin/python benchmarks/soak_codec.py [--configs 1000] [--runs 100] [--big] [--seed 0] [--verbose]

Part 1 (``--configs``): random ``CodecConfig`` combinations, each a default configuration with one to
three fields set to a valid or a just-invalid value (k, m, T, steps, rule, rescale, guidance, prompt,
forward, clean_end, inversion, inversion_iters/tol, remove_mean, reduce/bcr, reduce_method, seed,
batch_size, max_pixels; wrong types too).  Each goes through the Python API (``validate()`` and a
``GenerativeCodec`` on the tiny model's components) and, when refused or once in a while when not,
through the CLI (``gdmcom simulate ... --k 60 --T 50``, in-process).  A refusal must be one line
naming the field; the CLI must refuse what the API refuses (exit 2, one ``error:`` line or argparse's
``argument --x:``) and accept what it accepts; where the CLI's refusal is the configuration's own
(not argparse's type check) its text must be the API's.

Part 2 (``--runs``): random valid configurations on the ``tiny`` and ``analytic`` models with random
images (1x1 .. 600x400, odd sides, grey, RGBA, palette, 16-bit grey, huge aspect ratios, float arrays)
and random SNRs (-30..60 dB, and inf/nan, which must be refused): encode -> numpy AWGN -> decode,
single and batched (``encode_many``/``decode_many`` with a second image of the same padded size).
Checks: no exception other than a one-line ``CodecError``; symbols finite and of unit power; the
decoded image uint8 of the input's size; batched symbols within 1e-4 of single ones and batched images
within 2 grey levels (most pixels equal); an infinite/NaN SNR refused naming the SNR.

Last line: ``configs C (refused R, accepted A, ...), runs N (passed P, refused Q, ...), findings F``; a
finding (each printed with its seed: ``--seed S --configs 1 --runs 0`` repeats it) exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from gr_gdmcom.config import CodecConfig  # noqa: E402

# ------------------------------------------------------------------ part 1: configurations

#: field -> (valid values, just-invalid values); the CLI spelling is derived from the value
FIELDS = {
    "k": ([0, 1, 5, 10, 25], [-1, 51, 2.5, True, "5"]),
    "m": ([0, 1, 5, 20], [-1, 46, 1.5]),
    "T": ([1, 10, 20, 50, 100, 999], [0, -5, 1000, 1001, 50.0]),
    "steps": ([None, 10, 12, 30, 50], [0, 9, 51, 2000, 12.5, -1]),
    "rule": (["snr", "variance", "exact"], ["SNR", "", "calibrated:", "fixed", "calibrated:/nonexistent.json"]),
    "rescale": ([True, False], ["no", 0]),
    "guidance": ([0.0, 1.0, 6.0, 7.5, 100.0], [-0.1, 100.1, float("nan"), float("inf"), "6"]),
    "prompt": (["", "High quality, High res, 8K", "ünïcødé ✓ " * 3, "x" * 500], [None, 5]),
    "forward": (["ddim", "random"], ["DDIM", "noise", ""]),
    "clean_end": (["model", "one", "step0"], ["zero", ""]),
    "inversion": (["ddim", "fixed-point"], ["fixed_point", "exact"]),
    "inversion_iters": ([1, 3, 10], [0, -1, 2.0]),
    "inversion_tol": ([0.0, 1e-4, 0.5], [-1e-4, float("nan"), float("inf")]),
    "remove_mean": ([True, False], ["yes", 1]),
    "reduce": ([1, 2, 3, 4, 16], [0, -2, 1.5]),
    "reduce_method": (["subset", "pool", "dct"], ["full", "POOL", ""]),
    "seed": ([0, 1, 2 ** 63 - 1], [-1, 2 ** 63, 1.0]),
    "batch_size": ([1, 8], [0, -1]),
    "max_pixels": ([1, 4096 * 4096], [0, -1]),
}


def draw_config(rng) -> dict:
    """1-3 fields changed from the defaults; each invalid with probability 0.3."""
    kw = {}
    for name in rng.choice(list(FIELDS), size=int(rng.integers(1, 4)), replace=False):
        good, bad = FIELDS[name]
        pool = bad if rng.random() < 0.3 else good
        kw[str(name)] = pool[int(rng.integers(0, len(pool)))]
    if "steps" in kw and kw["steps"] is not None and "T" in kw and rng.random() < 0.5:
        kw["T"] = max(kw["steps"], 1) if isinstance(kw["steps"], int) else kw["T"]
    if "reduce" in kw and rng.random() < 0.3:  # --bcr instead of --reduce
        kw["_bcr"] = True
    return kw


def cli_args(kw: dict):
    """The command-line options for ``kw``, or None where a value has no command-line spelling
    (None for a string, a non-string for a choice...: argparse gives every option a string)."""
    out = []
    for name, v in kw.items():
        if name == "_bcr":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool) or name in ("rescale", "remove_mean"):
            if not isinstance(v, bool):
                return None
            out.append(flag if v else "--no-" + flag[2:])
        elif v is None:
            if name == "steps":
                continue
            return None
        elif name == "reduce" and kw.get("_bcr"):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                return None
            out += ["--bcr", f"1/{96 * v}"]
        else:
            if isinstance(v, str) != isinstance(getattr(CodecConfig, name, ""), str):
                return None  # a string for a number or a number for a string: a type only the API can be given
            out += [flag, str(v)]
    return out


def api_outcome(kw: dict, comp) -> "tuple[str, str]":
    """("ok", "") or ("refused", message) or ("crash", traceback) from the Python API."""
    from gr_gdmcom.codec import GenerativeCodec
    from gr_gdmcom.codec.images import CodecError

    clean = {k: v for k, v in kw.items() if not k.startswith("_")}
    try:
        cfg = CodecConfig(model="tiny", device="cpu", **clean)
        GenerativeCodec(cfg, components=comp)  # validate() and the grid (T beyond the schedule)
    except (ValueError, CodecError) as exc:
        return "refused", str(exc)
    except Exception:  # noqa: BLE001 - what the soak is looking for
        return "crash", traceback.format_exc()
    return "ok", ""


def cli_outcome(opts, image: str, out: str, run: bool) -> "tuple[str, str]":
    """("ok"|"refused"|"crash", stderr) of ``gdmcom simulate`` with ``opts``; with run False the
    command is only parsed and its configuration built (what the CLI checks before loading)."""
    from gr_gdmcom import cli

    argv = ["simulate", "--images", image, "--snr", "10", "--out", out, "--model", "tiny", "--device", "cpu", *opts]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if run:
                rc = cli.main(argv)
            else:
                parser = cli.build_parser()
                args = parser.parse_args(argv)
                try:
                    cli.codec_config_from_args(args)
                    rc = 0
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    rc = 2
    except SystemExit as exc:  # argparse
        rc = exc.code
    except Exception:  # noqa: BLE001
        return "crash", traceback.format_exc()
    text = err.getvalue()
    if rc == 0:
        return "ok", text
    if rc == 2:
        return "refused", text
    return "crash", f"exit {rc}: {text}"


def names_field(msg: str, kw: dict) -> bool:
    """Whether a refusal names one of the fields changed (or its option)."""
    low = msg.lower()
    for name in kw:
        if name.startswith("_"):
            continue
        words = {name.lower(), name.replace("_", "-").lower(), "--" + name.replace("_", "-").lower()}
        if name in ("k", "m", "T"):  # a short name: as a word (k=, T=, 'k and m', 'k + m', 'T must')
            words = {f"{name}=", f"{name} must", f"{name} +", f"+ {name}", f"--{name}", f"and {name}",
                     f"{name} and", f"<= {name}", f"{name} steps"}
            if any(w in msg for w in words):
                return True
            continue
        if name == "steps" and ("steps n" in low or "n=" in low):
            return True
        if name == "reduce" and "--bcr" in low:
            return True
        if name == "rule" and ("step rule" in low or "calibration" in low):
            return True
        if any(w in low for w in words):
            return True
    return False


def soak_configs(n, seed0, comp, image, verbose, findings):
    counts = dict(configs=0, refused=0, accepted=0, cli_checked=0)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seed0, seed0 + n):
            rng = np.random.default_rng([1, seed])
            kw = draw_config(rng)
            counts["configs"] += 1
            state, msg = api_outcome(kw, comp)
            where = f"config seed {seed} {dict((k, v) for k, v in kw.items() if not k.startswith('_'))}"
            if state == "crash":
                findings.append(f"{where}: API raised a non-ValueError:\n{msg}")
                continue
            counts["refused" if state == "refused" else "accepted"] += 1
            if state == "refused":
                if "\n" in msg.strip():
                    findings.append(f"{where}: refusal is not one line: {msg!r}")
                if not names_field(msg, kw):
                    findings.append(f"{where}: refusal does not name the field: {msg!r}")
            if verbose:
                print(f"{where}: {state} {msg}")
            opts = cli_args(kw)
            if opts is None:
                continue
            # the CLI: full run for refusals (checked before any model call), parse + configure for the others
            cstate, ctext = cli_outcome(opts, image, str(Path(tmp) / f"o{seed}"), run=state == "refused")
            counts["cli_checked"] += 1
            if cstate == "crash":
                findings.append(f"{where}: CLI {' '.join(opts)} crashed:\n{ctext}")
                continue
            if cstate != state:
                findings.append(f"{where}: API {state} ({msg!r}) but CLI {' '.join(opts)} {cstate} ({ctext.strip()!r})")
                continue
            if state == "refused":
                lines = [ln for ln in ctext.strip().splitlines() if ln.strip()]
                last = lines[-1] if lines else ""
                if "Traceback" in ctext:
                    findings.append(f"{where}: CLI printed a traceback: {ctext!r}")
                elif last.startswith("error: ") and last[len("error: "):] != msg and "argument --" not in last:
                    findings.append(f"{where}: CLI refusal {last!r} differs from the API's {msg!r}")
                elif not names_field(last, kw):
                    findings.append(f"{where}: CLI refusal does not name the field: {last!r}")
    return counts


# ------------------------------------------------------------------ part 2: encode -> AWGN -> decode

def draw_image(rng, model: str, big: bool):
    """(image, (h, w), kind): a random size and kind of image (600x400 only with ``big``)."""
    shape_kind = int(rng.integers(0, 6 if big else 5))
    if shape_kind == 4 and not big:
        shape_kind = 5
    if shape_kind == 0:
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))  # tiny
    elif shape_kind == 1:
        h, w = int(rng.integers(1, 4)), int(rng.integers(100, 601 if big else 300))  # huge aspect ratio
        if rng.random() < 0.5:
            h, w = w, h
    elif shape_kind == 2:
        h, w = 2 * int(rng.integers(4, 60)) + 1, 2 * int(rng.integers(4, 60)) + 1  # odd sides
    elif shape_kind == 3:
        h, w = 8 * int(rng.integers(1, 12)), 8 * int(rng.integers(1, 12))
    elif shape_kind == 4:
        h, w = (400, 600) if rng.random() < 0.5 else (600, 400)
    else:
        h, w = int(rng.integers(9, 200 if big else 120)), int(rng.integers(9, 200 if big else 120))
    if model == "analytic":  # its UNet takes sides of multiples of 64 (others: its one-line refusal, also checked)
        if rng.random() < 0.8:
            h, w = 64 * max(1, min(-(-h // 64), 3)), 64 * max(1, min(-(-w // 64), 3))
    yy, xx = np.mgrid[0:h, 0:w]
    base = (127 + 100 * np.sin(xx / 7.0 + rng.uniform(0, 6)) * np.cos(yy / 5.0)).astype(np.float64)
    rgb = np.stack([base, np.roll(base, 3, axis=1) if w > 3 else base, 255 - base], -1)
    rgb = np.clip(rgb + rng.normal(0, 10, rgb.shape), 0, 255)
    kinds = ["rgb", "grey", "rgba", "palette", "grey16", "float01", "pil-L", "png-bytes", "flat", "pil-mode"]
    kind = kinds[int(rng.integers(0, len(kinds)))]
    if kind == "rgb":
        img = rgb.astype(np.uint8)
    elif kind == "grey":
        img = rgb[..., 0].astype(np.uint8)
    elif kind == "rgba":
        a = rng.integers(0, 256, (h, w, 1)).astype(np.uint8)
        img = np.concatenate([rgb.astype(np.uint8), a], -1)
    elif kind == "palette":
        img = Image.fromarray(rgb.astype(np.uint8)).convert("P", palette=Image.ADAPTIVE, colors=16)
    elif kind == "grey16":
        b = io.BytesIO()
        Image.fromarray((rgb[..., 0] * 257).astype(np.uint16)).save(b, format="PNG")
        img = b.getvalue()
    elif kind == "float01":
        img = (rgb / 255.0).astype(np.float32)
    elif kind == "pil-L":
        img = Image.fromarray(rgb[..., 1].astype(np.uint8), "L")
    elif kind == "png-bytes":
        b = io.BytesIO()
        Image.fromarray(rgb.astype(np.uint8)).save(b, format="PNG")
        img = b.getvalue()
    elif kind == "pil-mode":  # Pillow's other modes (La, premultiplied alpha, raised out of encode_many before fb54b8d)
        mode = str(rng.choice(["La", "LA", "RGBa", "CMYK", "YCbCr", "HSV", "LAB", "1", "I", "F", "I;16", "PA"]))
        kind = f"pil-{mode}"
        src = Image.fromarray(rgb.astype(np.uint8))
        img = src.convert("L").convert(mode) if mode.startswith("I;16") else src.convert(mode)
    else:
        img = np.full((h, w, 3), int(rng.integers(0, 256)), np.uint8)
    return img, (h, w), kind


def draw_run_config(rng, model: str) -> CodecConfig:
    T = int(rng.choice([10, 20, 50, 50, 50]))
    k = int(rng.integers(0, min(T, 8) + 1))
    m = int(rng.integers(0, min(T - k, 6) + 1))
    steps = None
    if rng.random() < 0.25:
        steps = int(rng.integers(k + m, T + 1))
    if rng.random() < 0.1:
        steps = k + m if k + m >= 0 else None
    reduce, method = 1, "subset"
    if rng.random() < 0.3:
        method = str(rng.choice(["subset", "pool", "dct"]))
        reduce = int(rng.choice([2, 4, 16] if method == "pool" else [2, 3, 4, 7]))
    inversion = "fixed-point" if rng.random() < 0.2 else "ddim"
    return CodecConfig(model=model, device="cpu", k=k, m=m, T=T, steps=steps,
                       rule=str(rng.choice(["snr", "variance", "exact"])), rescale=bool(rng.random() < 0.7),
                       guidance=float(rng.choice([0.0, 1.0, 6.0, 30.0])), prompt=str(rng.choice(["", "a photo", "x" * 300])),
                       forward=str(rng.choice(["ddim", "ddim", "random"])),
                       clean_end=str(rng.choice(["model", "one", "step0"])), inversion=inversion,
                       inversion_iters=int(rng.integers(1, 4)), inversion_tol=float(rng.choice([0.0, 1e-4, 1e-2])),
                       remove_mean=bool(rng.random() < 0.7), reduce=reduce, reduce_method=method,
                       seed=int(rng.integers(0, 2 ** 63 - 1)), batch_size=int(rng.choice([1, 2, 8])))


def awgn(symbols, snr_db, rng):
    if not math.isfinite(snr_db):
        return symbols.copy()
    s2 = 10 ** (-snr_db / 10)
    n = (rng.normal(size=symbols.shape) + 1j * rng.normal(size=symbols.shape)) * math.sqrt(s2 / 2)
    return (symbols + n).astype(np.complex64)


def one_line_codec_error(exc) -> bool:
    from gr_gdmcom.codec.images import CodecError

    return isinstance(exc, (CodecError, ValueError)) and "\n" not in str(exc).strip()


def expected_refusal(msg: str, model: str) -> bool:
    """Refusals of a valid configuration that are the image's, one line naming why: a latent too small
    for the reduction (``reduce=7 leaves fewer than 2 ...``, ``dct reduce=3 keeps no coefficient ...``),
    the analytic model's sides of 64 px (at the encoder's UNet, or at the decoder's when the
    random-forward encoder ran none), and an image over ``max_pixels``."""
    return "reduce=" in msg or (model == "analytic" and "tiles" in msg) or "more than the limit max_pixels" in msg


def soak_runs(n, seed0, comps, verbose, findings, big=False):
    from gr_gdmcom.codec import GenerativeCodec
    from gr_gdmcom.codec.core import Failed, latent_from_symbols

    counts = dict(runs=0, passed=0, refused=0, refused_snr=0, unet_calls=0, one_pixel_latent=0)
    for seed in range(seed0, seed0 + n):
        rng = np.random.default_rng([2, seed])
        model = "tiny" if rng.random() < 0.6 else "analytic"
        cfg = draw_run_config(rng, model)
        img, (h, w), kind = draw_image(rng, model, big)
        if rng.random() < 0.1:  # the pixel limit at the image's size: h*w passes, h*w - 1 is refused
            cfg = cfg.replace(max_pixels=max(1, h * w - int(rng.integers(0, 2))))
        snr = float(rng.choice([rng.uniform(-30, 60)] * 8 + [float("inf"), float("nan")]))
        where = (f"run seed {seed} ({model}, {kind} {w}x{h}, {snr:.1f} dB, k={cfg.k} m={cfg.m} T={cfg.T} "
                 f"steps={cfg.steps} rule={cfg.rule} w={cfg.guidance} fwd={cfg.forward} inv={cfg.inversion} "
                 f"rm={cfg.remove_mean} reduce={cfg.reduce}/{cfg.reduce_method} clean={cfg.clean_end})")
        counts["runs"] += 1
        t0 = time.perf_counter()
        try:
            codec = GenerativeCodec(cfg, components=comps[model])
            calls0 = codec.stats["unet_calls"]
            # single encode, then a batch with a second image of the same padded size (a flipped copy)
            try:
                enc = codec.encode(img, name="a")
            except Exception as exc:  # noqa: BLE001
                if one_line_codec_error(exc):
                    counts["refused"] += 1
                    if verbose:
                        print(f"{where}: encode refused: {exc}")
                    if not expected_refusal(str(exc), model):
                        findings.append(f"{where}: refused a valid image: {exc}")
                    continue
                raise
            other = img[::-1].copy() if isinstance(img, np.ndarray) else img
            batch = codec.encode_many([other, img], names=["b", "a"])
            if isinstance(batch[1], Failed):
                findings.append(f"{where}: batched encode failed where single passed: {batch[1].error}")
                continue
            bad = [f for f in batch if isinstance(f, Failed)]
            if bad:
                findings.append(f"{where}: batched encode of the flipped copy failed: {bad[0].error}")
                continue
            s1, s2 = enc.symbols, batch[1].symbols
            if not np.isfinite(s1).all():
                findings.append(f"{where}: non-finite symbols")
                continue
            p = float(np.mean(np.abs(s1) ** 2))
            if abs(p - 1) > 1e-3:
                findings.append(f"{where}: symbol power {p}")
            # compared as the latents they stand for: the channel means travel rounded to float16, and a
            # 1e-7 difference of z_k can move one by a float16 step, which the symbols carry with the opposite sign
            if s1.shape != s2.shape:
                findings.append(f"{where}: batched symbols {s2.shape}, single {s1.shape}")
                continue
            l1, l2 = latent_from_symbols(s1, enc.meta), latent_from_symbols(s2, batch[1].meta)
            diff = float(np.max(np.abs(l1 - l2)) / max(np.sqrt(np.mean(l1.astype(np.float64) ** 2)), 1e-12))
            # (analytic: its exact mixture prior's inversion amplifies the VAE's batch-size rounding, ~2e-6,
            # up to 6000-fold near a boundary between modes -- a flat grey picture, seed 20194: 0.4 % of the rms)
            if diff > (1e-2 if model == "analytic" else 1e-3):
                findings.append(f"{where}: batched latent differs from single by {diff:.3g} of its rms")
            if enc.meta.image_size != (h, w):
                findings.append(f"{where}: meta image_size {enc.meta.image_size} != {(h, w)}")
            y = awgn(s1, snr, rng)
            y2 = awgn(batch[0].symbols, snr, rng)
            try:
                dec = codec.decode(y, enc.meta, snr)
            except Exception as exc:  # noqa: BLE001
                if math.isfinite(snr):
                    if one_line_codec_error(exc) and expected_refusal(str(exc), model):
                        try:  # the batch: each item its own Failed, naming it (before 79f30c7 the model's error
                            many = codec.decode_many([(y2, batch[0].meta, snr), (y, enc.meta, snr)])  # left it)
                        except Exception as exc2:  # noqa: BLE001
                            findings.append(f"{where}: batched decode of a latent the model refuses raised "
                                            f"{type(exc2).__name__}: {exc2}")
                            continue
                        if not all(isinstance(d, Failed) and d.error.startswith(n + ": ")
                                   for d, n in zip(many, "ba")):
                            findings.append(f"{where}: batched decode of a refused latent: {many}")
                    raise
                if not one_line_codec_error(exc) or "snr" not in str(exc).lower():
                    findings.append(f"{where}: SNR {snr} refused without naming the SNR: {exc!r}")
                counts["refused"] += 1
                counts["refused_snr"] += 1
                if verbose:
                    print(f"{where}: decode refused: {exc}")
                continue
            if not math.isfinite(snr):
                findings.append(f"{where}: decoded at SNR {snr} without a refusal")
                continue
            many = codec.decode_many([(y2, batch[0].meta, snr), (y, enc.meta, snr)])
            if any(isinstance(d, Failed) for d in many):
                findings.append(f"{where}: batched decode failed: {[d.error for d in many if isinstance(d, Failed)]}")
                continue
            a, b = dec.image, many[1].image
            if a.dtype != np.uint8 or a.shape != (h, w, 3):
                findings.append(f"{where}: decoded image {a.dtype} {a.shape}, input {h}x{w}")
                continue
            d = np.abs(a.astype(int) - b.astype(int))
            if enc.meta.latent_shape[1] * enc.meta.latent_shape[2] == 1:
                # a 1x1 latent (an image of at most 8x8 px): the UNet's GroupNorm normalises one position, so
                # float differences of batch 1 vs 2 (~1e-7) grow to tens of grey levels; the model's, not the codec's
                counts["one_pixel_latent"] += 1
            elif d.max() > 2 or (d.size >= 300 and (d > 0).mean() > 0.05):
                findings.append(f"{where}: batched decode differs from single: max {d.max()} grey levels, "
                                f"{(d > 0).mean():.1%} of values")
            rec = dec.record
            if not (cfg.k + cfg.m <= rec["n_steps"] <= cfg.T + 1 or cfg.reduce > 1):
                findings.append(f"{where}: N = {rec['n_steps']} outside k+m..T+1")
            if not all(math.isfinite(float(rec[x])) for x in ("scale", "s_tot2", "start_t")):
                findings.append(f"{where}: non-finite record {rec}")
            counts["passed"] += 1
            counts["unet_calls"] += codec.stats["unet_calls"] - calls0
            if verbose:
                print(f"{where}: ok N={rec['n_steps']} {time.perf_counter() - t0:.2f} s")
        except Exception as exc:  # noqa: BLE001 - what the soak is looking for
            if one_line_codec_error(exc):
                counts["refused"] += 1
                if not expected_refusal(str(exc), model):
                    findings.append(f"{where}: refused a valid setting: {exc}")
                elif verbose:
                    print(f"{where}: decode refused: {exc}")
            else:
                findings.append(f"{where}: EXCEPTION\n{traceback.format_exc()}")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--big", action="store_true", help="images up to 600x400 (a minute each on a loaded CPU)")
    ap.add_argument("--seed", type=int, default=0, help="first seed of each part (item i: seed + i)")
    ap.add_argument("--verbose", action="store_true", help="a line per configuration and run")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the codec's warnings (prompt mismatch, ...) are expected here
    try:
        return _soak(args)
    finally:
        logging.disable(logging.NOTSET)  # (run in-process by the smoke test)


def _soak(args) -> int:
    import torch

    from gr_gdmcom.codec import load_components

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    comps = {"tiny": load_components("tiny", device="cpu"), "analytic": load_components("analytic", device="cpu")}
    findings: list = []
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "img.png")
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
        c = soak_configs(args.configs, args.seed, comps["tiny"], image, args.verbose, findings)
    t1 = time.perf_counter()
    r = soak_runs(args.runs, args.seed, comps, args.verbose, findings, args.big)
    t2 = time.perf_counter()
    for f in findings:
        print("FINDING " + f, file=sys.stderr)
    print(f"configs {c['configs']} (refused {c['refused']}, accepted {c['accepted']}, through the CLI "
          f"{c['cli_checked']}) in {t1 - t0:.1f} s; runs {r['runs']} (passed {r['passed']}, refused {r['refused']}, "
          f"{r['refused_snr']} of them an infinite or NaN SNR; batched == single not checked on "
          f"{r['one_pixel_latent']} 1x1 latents; {r['unet_calls']} UNet calls) in {t2 - t1:.1f} s; findings {len(findings)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
