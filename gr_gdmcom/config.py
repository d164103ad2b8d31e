"""One typed configuration for the codec, shared by the CLI, the GRC blocks and
the inference server.

Every field has its default here and nowhere else; :func:`add_codec_args`
turns the dataclass into argparse options and :func:`codec_config_from_args`
back, so the command line, GRC parameters and server flags cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import numbers
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_PROMPT = "High quality, High res, 8K"
STEP_RULES = ("snr", "variance", "exact")
#: prefix of the calibrated step rule, ``calibrated:PATH`` (codec/calibration.py)
CALIBRATED = "calibrated:"
FORWARD_MODES = ("ddim", "random")
#: the clean end of the grid: the model's scheduler config, a_0 = 1, or a_0 = abar_0 (schedule.CLEAN_ENDS)
CLEAN_ENDS = ("model", "one", "step0")
#: how each DDIM-inversion step is solved: explicit (eq. 10) or the implicit step by fixed-point iteration
INVERSION_MODES = ("ddim", "fixed-point")
#: how the transmitter reduces the latent below BCR 1/96 (codec/rate.py; rate.REDUCE_METHODS)
REDUCE_METHODS = ("subset", "pool", "dct")
#: reduction factors the pool method supports (rate.POOL_BLOCKS); subset and dct take any factor
POOL_FACTORS = (1, 2, 4, 8, 16)
#: BCR of the whole SD-shaped latent: 4 channels at 1/8 of each side, two values per complex symbol
#: (4 (H/8)(W/8) / 2 symbols for 3 H W values); ``--bcr 1/(96 r)`` is ``--reduce r`` (docs/rate.md)
FULL_BCR = Fraction(1, 96)

#: Ranges of a latent's metadata wherever it arrives: a decode call, a protocol request
#: (docs/protocol.md), a frame header (docs/frame-format.md).  alpha = 1/sqrt(P): the models'
#: latents have P of order 1 (alpha 0.2..1200 measured over photographs and flat black, white
#: and grey pictures, the largest for flat black through patch-gmm with its means removed);
#: below 1e-3 the latent (RMS over 1000) overflows float16 and decodes to a black picture.
ALPHA_RANGE = (1e-3, 1e6)
#: |each removed channel mean| (a VAE latent's are of order 1)
MEAN_MAX = 1e6
GUIDANCE_RANGE = (0.0, 100.0)
#: Es/N0 handed to a decoder, dB
SNR_DB_RANGE = (-100.0, 100.0)


@dataclass
class CodecConfig:
    """Settings of the generative semantic codec (the paper's method, see docs/codec.md).

    Attributes:
        model: Hugging Face id, local diffusers folder, ``tiny`` (random-weight
            SD-shaped model built offline), ``analytic`` or ``patch-gmm``.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
        dtype: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        k: DDIM-inversion steps at the transmitter (paper: 5).
        m: DDIM-inversion steps continued at the receiver (paper: 5).
        T: DDIM grid size (paper: 50).
        rule: denoising-step rule, ``snr`` (default), ``variance`` (paper's
            text), ``exact`` (continuous start timestep) or ``calibrated:PATH``
            (N measured by ``gdmcom calibrate`` for this model and setting; its
            file also fixes the rescale setting).
        rescale: scale the received latent by sqrt(a_N / a_{k+m}) before
            denoising (rules ``snr``/``variance``); False is the paper's behaviour.
        guidance: classifier-free guidance scale w (paper: 6).
        prompt: fixed text prompt (paper: "High quality, High res, 8K").
        forward: ``ddim`` (DDIM inversion, the method) or ``random`` (random
            forward-noise ablation).
        steps: fixed number of denoising steps N (overrides the rule); None = rule.
        clean_end: ``a_0`` of the grid, where sampling ends and inversion starts:
            ``model`` (the model's scheduler config: ``set_alpha_to_one``; SD 1.5
            says False, ``a_0 = abar_0 = 0.99915``), ``one`` (``a_0 = 1``) or ``step0``.
        inversion: ``ddim`` (eq. 10, noise predicted at the step's start) or
            ``fixed-point`` (the implicit step, the exact inverse of a sampling
            step, solved by fixed-point iteration) for the k and m steps.
        inversion_iters: most fixed-point iterations per step (each one UNet call).
        inversion_tol: stop iterating when the update's relative norm falls below this.
        seed: seed of every random generator the codec uses.
        max_pixels: images with more pixels than this are refused.
        batch_size: images processed together in one UNet call per step.
        remove_mean: subtract each channel's mean of ``z_k`` before power normalisation
            and send the means (float16) in the metadata and the frame header (beyond the
            paper, on by default; False sends the paper's exact signal).  See docs/rate.md.
        reduce: send 1/reduce of the latent's values (BCR 1/(96 reduce) for SD's latent);
            1 sends the whole latent, as the paper.
        reduce_method: ``subset`` (a fixed pseudo-random subset, the rest filled in by the
            diffusion sampling), ``pool`` (orthonormal block pooling, generative upsampling) or
            ``dct`` (each channel's low-frequency orthonormal DCT coefficients, generative upsampling).
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    k: int = 5
    m: int = 5
    T: int = 50
    rule: str = "snr"
    rescale: bool = True
    guidance: float = 6.0
    prompt: str = DEFAULT_PROMPT
    forward: str = "ddim"
    steps: Optional[int] = None
    clean_end: str = "model"
    inversion: str = "ddim"
    inversion_iters: int = 3
    inversion_tol: float = 1e-4
    seed: int = 0
    max_pixels: int = 4096 * 4096
    batch_size: int = 8
    remove_mean: bool = True
    reduce: int = 1
    reduce_method: str = "subset"

    def validate(self) -> "CodecConfig":
        """Raise ``ValueError`` with a readable message for impossible settings."""
        check_types(self)
        if self.T < 1 or self.T > 1000:
            raise ValueError(f"T must be in 1..1000, got {self.T}")
        check_steps(self.k, self.m, self.T)
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= 100.0):
            raise ValueError(f"guidance must be a finite number in 0..100, got {self.guidance}")
        if not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed must be in 0..2**63-1, got {self.seed}")
        if self.rule not in STEP_RULES and not (self.rule.startswith(CALIBRATED) and len(self.rule) > len(CALIBRATED)):
            raise ValueError(f"unknown step rule {self.rule!r}; choose one of {', '.join(STEP_RULES)} "
                             f"or {CALIBRATED}PATH (a file made by gdmcom calibrate)")
        if self.forward not in FORWARD_MODES:
            raise ValueError(f"unknown forward mode {self.forward!r}; choose one of {', '.join(FORWARD_MODES)}")
        if self.clean_end not in CLEAN_ENDS:
            raise ValueError(f"unknown clean_end {self.clean_end!r}; choose one of {', '.join(CLEAN_ENDS)}")
        if self.inversion not in INVERSION_MODES:
            raise ValueError(f"unknown inversion {self.inversion!r}; choose one of {', '.join(INVERSION_MODES)}")
        if self.inversion_iters < 1:
            raise ValueError(f"inversion_iters must be >= 1, got {self.inversion_iters}")
        if not (math.isfinite(self.inversion_tol) and self.inversion_tol >= 0):
            raise ValueError(f"inversion_tol must be a finite number >= 0, got {self.inversion_tol}")
        check_steps(self.k, self.m, self.T, self.steps)
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.reduce < 1:
            raise ValueError(f"reduce must be >= 1, got {self.reduce}")
        if self.reduce_method not in REDUCE_METHODS:
            raise ValueError(f"unknown reduce_method {self.reduce_method!r}; choose one of {', '.join(REDUCE_METHODS)}")
        if self.reduce_method == "pool" and self.reduce not in POOL_FACTORS:
            raise ValueError(f"reduce_method pool (--reduce-method pool) pools {', '.join(map(str, POOL_FACTORS))} "
                             f"values: reduce (--reduce) must be one of them, got {self.reduce}; or use "
                             f"reduce_method dct or subset")
        return self

    def replace(self, **changes) -> "CodecConfig":
        return dataclasses.replace(self, **changes)


#: what each annotated type of a configuration field accepts, and how a refusal names it
_TYPE_RULES = {"int": ((numbers.Integral,), "an integer"), "float": ((numbers.Real,), "a number"),
               "bool": ((bool, np.bool_), "True or False"), "str": ((str,), "a string")}


def check_types(config) -> None:
    """ValueError naming the first field of the dataclass ``config`` whose value is not of its
    annotated type (``int``, ``float``, ``bool``, ``str``, optionally ``Optional[...]``): the range
    checks after it assume the type (``k=2.5`` passed and failed later as a TypeError, ``steps=12.5``
    ran 12 steps, ``remove_mean="no"`` removed the means).  A bool is not taken for a number."""
    for f in fields(config):
        ann = str(f.type)
        optional = ann.startswith("Optional[")
        base = ann[len("Optional["):-1] if optional else ann
        if base not in _TYPE_RULES:
            continue
        v = getattr(config, f.name)
        if v is None and optional:
            continue
        kinds, word = _TYPE_RULES[base]
        if not isinstance(v, kinds) or (base in ("int", "float") and isinstance(v, (bool, np.bool_))):
            raise ValueError(f"{f.name} must be {word}{' (or None)' if optional else ''}, got {v!r}")


#: codec settings that an inference server's own configuration decides for the requests sent to
#: it (device, dtype, batch size and image limits stay each side's own)
SERVER_FIELDS = ("model", "k", "m", "T", "rule", "rescale", "steps", "guidance", "prompt", "forward", "clean_end",
                 "inversion", "inversion_iters", "inversion_tol", "seed", "remove_mean", "reduce", "reduce_method")
#: command-line names whose option sets another field (``--bcr`` is ``--reduce``)
_OPTION_FIELDS = {"bcr": "reduce"}


def config_for_server(config: CodecConfig, server_config: dict, given=()) -> "tuple[CodecConfig, list]":
    """``config`` with the server's codec settings where the command did not give its own.

    ``server_config`` is the ``config`` of the server's ``status``; ``given`` the options the
    command line set (:func:`gr_gdmcom.cli.given_options`).  A setting of :data:`SERVER_FIELDS`
    the command did not give takes the server's value; one it gave stays (a request carries
    k, m, steps and rescale; what it cannot carry the caller refuses).  Returns the merged
    configuration and ``name=server's (here: this side's)`` for each setting taken from the
    server that differs from ``config``'s.  Raises ValueError when the server's values are not
    a configuration this version reads.
    """
    given = {_OPTION_FIELDS.get(g, g) for g in given}
    theirs = {k: server_config[k] for k in SERVER_FIELDS if k in server_config and k not in given}
    taken = [f"{k}={v!r} (here: {getattr(config, k)!r})" for k, v in theirs.items()
             if v != getattr(config, k)]
    try:
        merged = config.replace(**theirs).validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the server's codec configuration is not one this version reads: {exc}") from None
    return merged, taken


def server_mismatch(config: CodecConfig, server_config: dict, carried=()) -> list:
    """``name=this side's (server: server's)`` for each setting of :data:`SERVER_FIELDS` where
    ``config`` differs from the server's and no request can carry it (``carried``: the names
    in the server's ``status`` ``settings``).  The seed counts only for the random-forward
    ablation (elsewhere it seeds this side's channel, not the server's codec)."""
    return [f"{k}={getattr(config, k)!r} (server: {server_config[k]!r})" for k in SERVER_FIELDS
            if k in server_config and k not in carried and getattr(config, k) != server_config[k]
            and (k != "seed" or "random" in (config.forward, server_config.get("forward")))]


def check_steps(k: int, m: int, T: int, steps: Optional[int] = None) -> None:
    """The one check of the step counts: ``k, m >= 0``, ``k + m <= T`` and, for a fixed
    ``steps`` N, ``k + m <= N <= T`` (config, scheduler and decoder all call it).

    Raises:
        ValueError: naming the values, e.g. ``k + m must not exceed T: k=40, m=20, T=50``.
    """
    if k < 0 or m < 0:
        raise ValueError(f"k and m must be >= 0, got k={k}, m={m}")
    if k + m > T:
        raise ValueError(f"k + m must not exceed T: k={k}, m={m}, T={T}")
    if steps is not None and not (k + m <= steps <= T):
        raise ValueError(f"steps N must satisfy k + m <= N <= T, got N={steps}, k={k}, m={m}, T={T}")


_HELP = {
    "model": "Hugging Face id, local diffusers folder, 'tiny' (offline random-weight model), 'analytic' "
             "(exact Gaussian-mixture prior, see docs/validation.md) or 'patch-gmm' (offline natural-image "
             "prior fitted to bundled photographs, see docs/codec.md)",
    "device": "torch device: auto, cpu, cuda, cuda:N",
    "dtype": "auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32",
    "k": "DDIM-inversion steps at the transmitter",
    "m": "DDIM-inversion steps continued at the receiver",
    "T": "DDIM grid size (inference steps of the full schedule)",
    "rule": "denoising-step rule: " + ", ".join(STEP_RULES) + " or calibrated:PATH (from gdmcom calibrate)",
    "rescale": "rescale the received latent by sqrt(a_N/a_{k+m}) (--no-rescale: paper's behaviour)",
    "guidance": "classifier-free guidance scale",
    "prompt": "fixed text prompt for the guided noise prediction",
    "forward": "transmitter forward process: ddim (inversion) or random (ablation)",
    "steps": "fixed number of denoising steps N (overrides --rule)",
    "clean_end": "clean end of the DDIM grid: model (its scheduler config's set_alpha_to_one), "
                 "one (a_0 = 1) or step0 (a_0 = abar_0)",
    "inversion": "DDIM inversion: ddim (eq. 10) or fixed-point (implicit step solved by iteration)",
    "inversion_iters": "most fixed-point iterations per inversion step (one UNet call each)",
    "inversion_tol": "fixed-point inversion stops when an update moves the latent by less than this (relative)",
    "seed": "seed for every random generator",
    "max_pixels": "refuse images with more pixels than this",
    "batch_size": "images per batched UNet call",
    "remove_mean": "subtract the per-channel latent mean before power normalisation and send it in the "
                   "metadata (--no-remove-mean: the paper's exact signal)",
    "reduce": "send 1/reduce of the latent values: BCR 1/(96*reduce) (1: whole latent)",
    "reduce_method": "how the latent is reduced: subset (fixed pseudo-random values, the rest inpainted) "
                     "pool (orthonormal block pooling, generative upsampling) or dct (each channel's "
                     "low-frequency orthonormal DCT coefficients, generative upsampling)",
}


def reduce_for_bcr(value) -> int:
    """The reduction factor ``r`` for a bandwidth compression ratio ``1/(96 r)``:
    ``"1/384"`` -> 4 (docs/rate.md).

    Raises:
        ValueError: e.g. ``--bcr must be 1/(96 r) for a whole r >= 1 (1/96, 1/192, 1/384, ...), got '1/100'``.
    """
    try:
        r = FULL_BCR / Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        r = None
    if r is None or r.denominator != 1 or r < 1:
        raise ValueError(f"--bcr must be 1/(96 r) for a whole r >= 1 (1/96, 1/192, 1/384, ...), got {str(value)!r}")
    return int(r)


def bcr_text(reduce: int) -> str:
    """``4`` -> ``"1/384"``: the nominal BCR of reduction factor ``reduce`` (:func:`reduce_for_bcr`'s inverse)."""
    return str(FULL_BCR / int(reduce))


def bcr_arg(value: str) -> int:
    """argparse type of ``--bcr``: :func:`reduce_for_bcr` with argparse's error."""
    try:
        return reduce_for_bcr(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--bcr ")) from None


def _rule(value: str) -> str:
    if value in STEP_RULES or (value.startswith(CALIBRATED) and len(value) > len(CALIBRATED)):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(STEP_RULES)} "
                                     f"or {CALIBRATED}PATH)")


_CHOICES = dict(forward=FORWARD_MODES, clean_end=CLEAN_ENDS, inversion=INVERSION_MODES,
                reduce_method=REDUCE_METHODS)


def finite_float(text: str) -> float:
    """argparse type: a float that is finite (``nan``, ``inf`` refused with the option's name)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def snr_arg(text: str) -> float:
    """argparse type of ``--snr``: a finite Es/N0 in ``SNR_DB_RANGE`` (-100..100 dB, what the codec
    decodes at; -150 was taken and every diffusion row failed late, the digital chain already run)."""
    v = finite_float(text)
    if not SNR_DB_RANGE[0] <= v <= SNR_DB_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be within {SNR_DB_RANGE[0]:g}..{SNR_DB_RANGE[1]:g} dB, got {text}")
    return v


def finite_complex(text: str) -> complex:
    """argparse type: a finite complex number (``1``, ``0.3j``, ``-0.1+0.2j``)."""
    try:
        v = complex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a complex number: {text!r} (e.g. 1, 0.3j, -0.1+0.2j)") from None
    if not (math.isfinite(v.real) and math.isfinite(v.imag)):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def add_codec_args(parser: argparse.ArgumentParser, skip: tuple = (), only: Optional[tuple] = None,
                   many_bcr: bool = False) -> None:
    """Add one option per :class:`CodecConfig` field (``--k``, ``--rule`` ...);
    ``skip`` leaves fields out, ``only`` keeps just those.  With ``reduce`` comes ``--bcr``, the
    same knob as a bandwidth compression ratio (``--bcr 1/384`` is ``--reduce 4``); ``many_bcr``
    lets it take several values (``gdmcom sweep``: ``args.bcr`` is then a list of factors)."""
    defaults = CodecConfig()
    group = parser.add_argument_group("codec")
    for f in fields(CodecConfig):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        help_ = _HELP[f.name] + " [default=%(default)r]"
        if f.type in ("bool", bool):
            group.add_argument(flag, dest=f.name, default=default,
                               action=argparse.BooleanOptionalAction, help=help_)
        elif f.name == "rule":
            group.add_argument(flag, dest=f.name, default=default, type=_rule, metavar="{" + ",".join(STEP_RULES)
                               + ",calibrated:PATH}", help=help_)
        elif f.name in _CHOICES:
            group.add_argument(flag, dest=f.name, default=default, choices=_CHOICES[f.name], help=help_)
        else:
            typ = {"int": int, "float": finite_float, "str": str, "Optional[int]": int}[str(f.type)]
            group.add_argument(flag, dest=f.name, default=default, type=typ, help=help_)
        if f.name == "reduce":
            group.add_argument("--bcr", dest="bcr", type=bcr_arg, default=None, metavar="1/N",
                               nargs="+" if many_bcr else None,
                               help="bandwidth compression ratio 1/(96 r), the same as --reduce r: 1/96 (whole "
                                    "latent), 1/192, 1/384, 1/768 ..." + (" (several: one setting each)"
                                                                          if many_bcr else "") + " [default: --reduce]")


def codec_config_from_args(args: argparse.Namespace) -> CodecConfig:
    """Build a validated :class:`CodecConfig` from parsed arguments."""
    kw = {f.name: getattr(args, f.name) for f in fields(CodecConfig) if hasattr(args, f.name)}
    bcr = getattr(args, "bcr", None)
    if isinstance(bcr, int):  # --bcr 1/(96 r): one value (a list, gdmcom sweep's, is the caller's)
        if kw.get("reduce", 1) not in (1, bcr):
            raise ValueError(f"--bcr {bcr_text(bcr)} and --reduce {kw['reduce']} disagree; give one of them")
        kw["reduce"] = bcr
    cfg = CodecConfig(**kw).validate()
    if "reduce_method" in getattr(args, "given", ()) and cfg.reduce == 1 and not isinstance(bcr, list):
        log.warning("--reduce-method %s does nothing without --reduce (or --bcr) above 1: the whole latent is "
                    "sent", cfg.reduce_method)
    return cfg


def _attribute_docs(cls) -> dict:
    """``name: text`` entries of a dataclass docstring's ``Attributes:`` section (continuation
    lines joined), so that option help is written once, next to the field."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    out, name = {}, None
    for line in doc.splitlines():
        head, sep, text = line.strip().partition(": ")
        if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 9):
            name, out[head] = head, text.strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
        elif not line.strip() and name:
            name = None
    return out


def add_frame_args(parser: argparse.ArgumentParser, skip: tuple = ()) -> None:
    """Add one option per :class:`gr_gdmcom.phy.FrameConfig` field (``--sps``, ``--pilot-spacing`` ...),
    help text from its docstring, the same way :func:`add_codec_args` does for the codec."""
    from .phy import FrameConfig

    defaults, docs = FrameConfig(), _attribute_docs(FrameConfig)
    group = parser.add_argument_group("phy (burst format; see docs/frame-format.md)")
    for f in fields(FrameConfig):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        help_ = docs.get(f.name, f.name).replace("%", "%%") + " [default=%(default)r]"
        kw = (dict(action=argparse.BooleanOptionalAction) if isinstance(default, bool)
              else dict(type=type(default)))
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, help=help_, **kw)


def frame_config_from_args(args: argparse.Namespace):
    """Build a validated :class:`gr_gdmcom.phy.FrameConfig` from parsed arguments."""
    from .phy import FrameConfig

    return FrameConfig(**{f.name: getattr(args, f.name) for f in fields(FrameConfig) if hasattr(args, f.name)})
