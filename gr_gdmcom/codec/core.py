"""The training-free generative semantic codec (paper Sections III-B, III-C).

Transmitter (:meth:`GenerativeCodec.encode`)::

    z_0 = s_vae * mode(E(x))                 # 1. posterior-mode VAE latent
    z_k = k DDIM-inversion steps of z_0      # 2. eq. (10), guided noise prediction
    alpha = 1/sqrt(mean(z_k^2))              # 3. unit-power normalisation
    s_i = alpha (z[2i] + j z[2i+1]) / sqrt(2)

Receiver (:meth:`GenerativeCodec.decode`)::

    z~_k = sqrt(2) [Re s, Im s] / alpha      # 1. de-normalise
    z_{k+m} = m more inversion steps         # 2. eq. (10)
    N = rule(SNR estimate)                   # 3.-4. Proposition 1, eq. (17)
    z_0' = N DDIM-sampling steps             # 5. eq. (9)
    x' = D(z_0' / s_vae)

Timestep convention: see :mod:`gr_gdmcom.codec.schedule` (the step between
grid points j and j+1 evaluates the UNet at ``tau_{j+1}`` both ways).
The clean end ``a_0`` follows the model's scheduler config (``clean_end``).
``inversion="fixed-point"`` solves each inversion step implicitly, so that it
is the exact inverse of the sampling step (:meth:`GenerativeCodec.invert`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..config import (ALPHA_RANGE, FORWARD_MODES, GUIDANCE_RANGE, MEAN_MAX, SNR_DB_RANGE, CodecConfig,
                      check_steps)
from .images import CodecError, ImageError, ImageLike, load_rgb, to_tensor, to_uint8
from .calibration import Calibration, calibration_path, load_calibration
from .models import Components, check_prediction_type, load_components, model_fingerprint
from .rate import Reduction, RateError, channel_means, impose
from .schedule import Grid, StepChoice, get_grid, sampling_path, scheduler_settings, select_steps

log = logging.getLogger(__name__)

MAX_CACHED_PROMPTS = 16


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on ``device`` without blocking the host.  A copy to CUDA from pageable memory
    waits for every kernel already queued there (PyTorch's ``non_blocking`` has no effect unless
    the source is pinned), so a step loop that sends each step's timesteps would never run ahead
    of the GPU; the copy goes through pinned memory instead (PyTorch's caching host allocator keeps
    it until the copy is done).  Other devices: a plain ``to``."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


#: Largest real or imaginary part of a received symbol a decode takes: the symbols are
#: unit-power (at an Es/N0 of -100 dB the noise alone is of order 1e5); beyond it a receiver's
#: gain was left unset and float32 arithmetic overflows into a black image.
SYMBOL_MAX = 1e6


def symbol_problem(symbols: np.ndarray, kept: Optional[np.ndarray] = None) -> Optional[Tuple[str, str]]:
    """What makes received symbols undecodable, or None: ``("non_finite", message)`` for NaN or
    infinity, ``("too_large", message)`` beyond SYMBOL_MAX; ``kept`` (bool) limits the check to
    the symbols not erased (those are replaced by 0 whatever they hold)."""
    s = np.asarray(symbols)
    with np.errstate(over="ignore", invalid="ignore"):
        size = np.maximum(np.abs(s.real), np.abs(s.imag))
    kept = np.ones(size.shape, bool) if kept is None else kept
    bad = int(np.count_nonzero(~np.isfinite(size) & kept))
    if bad:
        return "non_finite", f"received symbols contain {bad} non-finite values (NaN/inf)"
    huge = int(np.count_nonzero((size > SYMBOL_MAX) & kept))
    if huge:
        return "too_large", (f"{huge} received symbols exceed {SYMBOL_MAX:g} in magnitude (the symbols are "
                             f"unit-power; is the receiver's gain set?)")
    return None


def prompt_hash(prompt: str) -> int:
    """The CRC-32 of the UTF-8 prompt's low 16 bits: what the frame header carries instead of
    the text (beside the model's fingerprint, :func:`~gr_gdmcom.codec.models.model_fingerprint`)."""
    return zlib.crc32(prompt.encode("utf-8")) & 0xFFFF


@dataclass
class LatentMeta:
    """What the receiver needs besides the symbols (carried in the frame header).

    Attributes:
        alpha: power-normalisation factor, ``1/sqrt(P)``.
        latent_shape: (C, h, w) of the latent (padded image size / 8).
        image_size: (H, W) of the original image, for cropping back.
        k: transmitter inversion steps; T: grid size.
        guidance: CFG scale used by the transmitter; prompt: its prompt.
        forward: ``ddim`` or ``random``.
        name: a label for logs and file names (e.g. the file stem).
        means: per-channel means of ``z_k`` removed before normalisation (empty: none
            removed, the paper's signal); the receiver adds them back (codec/rate.py).
        reduce, reduce_method: the symbols carry ``A (z_k - mu)`` for the reduction
            ``Reduction.make(reduce_method, reduce, latent_shape)`` (1: the whole latent).
        model_hash: the encoding model's fingerprint (16 bits, :func:`model_fingerprint`;
            0: not given), which the receiver compares with its own.
    """

    alpha: float
    latent_shape: Tuple[int, int, int]
    image_size: Tuple[int, int]
    k: int
    T: int
    guidance: float
    prompt: str
    forward: str = "ddim"
    name: str = "image"
    means: Tuple[float, ...] = ()
    reduce: int = 1
    reduce_method: str = "full"
    model_hash: int = 0

    @property
    def power(self) -> float:
        return 1.0 / (self.alpha * self.alpha)

    @property
    def reduction(self) -> Reduction:
        try:
            return Reduction.make(self.reduce_method, self.reduce, self.latent_shape)
        except RateError as exc:
            raise CodecError(f"{self.name}: {exc}") from None

    @property
    def n_symbols(self) -> int:
        return self.reduction.n_values // 2

    def symbols_text(self) -> str:
        """``latent shape (4, 8, 8) = 128 symbols`` (with ``, reduced 4x (pool)`` where reduced):
        what a symbol count is checked against, in a message."""
        reduced = f", reduced {self.reduce}x ({self.reduce_method})," if self.reduce != 1 else ""
        return f"latent shape {tuple(self.latent_shape)}{reduced} = {self.n_symbols} symbols"

    def mean_latent(self) -> np.ndarray:
        """The removed means broadcast to ``latent_shape`` (zeros when none were removed)."""
        c, h, w = self.latent_shape
        if not self.means:
            return np.zeros((c, h, w), np.float64)
        if len(self.means) != c:
            raise CodecError(f"{self.name}: metadata has {len(self.means)} channel means for {c} channels")
        if not all(math.isfinite(v) for v in self.means):
            raise CodecError(f"{self.name}: metadata has non-finite channel means {list(self.means)}")
        return np.broadcast_to(np.asarray(self.means, np.float64).reshape(c, 1, 1), (c, h, w))

    @property
    def prompt_hash(self) -> int:
        return prompt_hash(self.prompt)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        d["image_size"] = list(self.image_size)
        d["means"] = [float(v) for v in self.means]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LatentMeta":
        try:
            return cls(alpha=float(d["alpha"]), latent_shape=tuple(int(v) for v in d["latent_shape"]),
                       image_size=tuple(int(v) for v in d["image_size"]), k=int(d["k"]), T=int(d["T"]),
                       guidance=float(d["guidance"]), prompt=str(d["prompt"]),
                       forward=str(d.get("forward", "ddim")), name=str(d.get("name", "image")),
                       means=tuple(float(v) for v in d.get("means", ())), reduce=int(d.get("reduce", 1)),
                       reduce_method=str(d.get("reduce_method", "full")),
                       model_hash=int(d.get("model_hash", 0)) & 0xFFFF)
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"bad latent metadata: {exc!r}") from None


@dataclass
class Encoded:
    """Transmitter output: complex64 symbols (n,) with unit mean energy, and metadata."""

    symbols: np.ndarray
    meta: LatentMeta
    record: dict = field(default_factory=dict)


@dataclass
class Decoded:
    """Receiver output: the image (H, W, 3) uint8 and a record of what was done."""

    image: np.ndarray
    record: dict


@dataclass
class Failed:
    """One item of a batch that could not be processed."""

    error: str
    name: str = "image"
    #: ``image`` where the image itself could not be read (:class:`ImageError`), else ``codec``
    kind: str = "codec"

    def exception(self) -> CodecError:
        """The exception a single-item call raises for it: :class:`ImageError` or :class:`CodecError`."""
        return (ImageError if self.kind == "image" else CodecError)(self.error)


def symbols_from_latent(z: np.ndarray) -> Tuple[np.ndarray, float]:
    """Real latent (any shape, 2n values) -> (n complex64 unit-energy symbols, alpha)."""
    flat = np.asarray(z, dtype=np.float64).reshape(-1)
    p = float(np.mean(flat * flat))
    if not (math.isfinite(p) and ALPHA_RANGE[0] <= 1.0 / math.sqrt(max(p, 1e-300)) <= ALPHA_RANGE[1]):
        raise CodecError(f"the latent's power P = {p:.3g} gives alpha = 1/sqrt(P) outside "
                         f"{ALPHA_RANGE[0]:g}..{ALPHA_RANGE[1]:g}: nothing a receiver could scale back")
    alpha = 1.0 / math.sqrt(p)
    s = alpha * (flat[0::2] + 1j * flat[1::2]) / math.sqrt(2.0)
    return s.astype(np.complex64), alpha


def weight_by_reliability(symbols: np.ndarray, noise_var: np.ndarray,
                          mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float]:
    """Per-symbol reliabilities -> symbols for one effective noise level.

    After equalisation through a fade each symbol ``y_i = s_i + n_i`` has its own noise
    variance ``v_i``.  With unit-energy symbols the per-symbol linear MMSE estimate is
    ``y_i / (1 + v_i)`` (error ``v_i / (1 + v_i)``).  A uniform channel of noise ``v`` with
    the same mean MMSE error has ``v / (1 + v) = mean_i v_i / (1 + v_i)``: that ``v`` is the
    effective noise level handed to the step rule, and each symbol is rescaled to what
    that channel's observation would be, ``(1 + v) y_i / (1 + v_i)``: unreliable symbols
    are pulled towards the prior mean, reliable ones kept.  Equal ``v_i`` change nothing.

    Args:
        symbols: complex (n,), equalised symbols at unit-energy scale.
        noise_var: float (n,), each symbol's complex noise variance (finite, >= 0 where received).
        mask: bool (n,) received symbols (erased ones stay out of the mean and come out 0, the
            prior mean), or None.
    Returns:
        (complex64 (n,) weighted symbols, effective Es/N0 in dB).
    Raises:
        CodecError: shapes disagree, or a variance is negative or not finite.
    """
    s = np.asarray(symbols)
    v = np.asarray(noise_var, np.float64)
    if v.shape != s.shape:
        raise CodecError(f"noise_var shape {v.shape} does not match symbols {s.shape}")
    keep = np.ones(v.shape, bool) if mask is None else np.asarray(mask, bool)
    if not keep.any():
        raise CodecError("noise_var given but no symbol was received")
    if not np.all(np.isfinite(v[keep])) or np.any(v[keep] < 0):  # (an erased symbol's may be inf)
        raise CodecError("noise_var must be finite and >= 0 for every received symbol")
    mse = float(np.mean(v[keep] / (1.0 + v[keep])))
    # bounded to SNR_DB_RANGE: variances of 1e17 (nothing received, in effect) made mse 1.0
    v_lo, v_hi = 10.0 ** (-SNR_DB_RANGE[1] / 10.0), 10.0 ** (-SNR_DB_RANGE[0] / 10.0)
    v_eff = v_hi if mse >= 1.0 - v_lo else min(max(mse / (1.0 - mse), v_lo), v_hi)
    out = np.where(keep, s * ((1.0 + v_eff) / (1.0 + np.where(keep, v, 0.0))), 0)
    return out.astype(np.complex64), float(-10.0 * math.log10(v_eff))


def _real(v) -> Optional[float]:
    """``v`` as a float, or None when it is not a real number (a string, None, a bool)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    return float(v)


def check_meta(meta: LatentMeta) -> None:
    """Refuse metadata no transmitter of this codec makes: its numbers out of the ranges a
    frame header and the protocol take (``config.ALPHA_RANGE``, ``GUIDANCE_RANGE``,
    ``MEAN_MAX``), a shape that is not (C, h, w) / (H, W) of positive integers, an unknown
    ``forward``.  Decoded, such metadata gave a black picture reported as a success
    (alpha 1e-30, guidance NaN, means 1e30) or an arithmetic error that failed a whole batch.

    Raises:
        CodecError: naming the item and the field.
    """
    name = meta.name
    shape, size = meta.latent_shape, meta.image_size
    for field_, value, n, low in (("latent_shape", shape, 3, 1), ("image_size", size, 2, -math.inf)):
        if (not isinstance(value, (tuple, list)) or len(value) != n
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low for v in value)):
            what = "positive integers" if low > 0 else "integers"
            raise CodecError(f"{name}: {field_} must be {n} {what}, got {value!r}")
    alpha, guidance = _real(meta.alpha), _real(meta.guidance)
    if alpha is None or not (math.isfinite(alpha) and ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]):
        raise CodecError(f"{name}: alpha must be a number in {ALPHA_RANGE[0]:g}..{ALPHA_RANGE[1]:g} "
                         f"(1/sqrt of the latent's power), got {meta.alpha!r}")
    if guidance is None or not (math.isfinite(guidance) and GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]):
        raise CodecError(f"{name}: guidance must be a number in {GUIDANCE_RANGE[0]:g}..{GUIDANCE_RANGE[1]:g}, "
                         f"got {meta.guidance!r}")
    means = [_real(v) for v in meta.means]
    if any(v is None for v in means):
        raise CodecError(f"{name}: channel means must be numbers, got {list(meta.means)}")
    if not all(math.isfinite(v) for v in means):
        raise CodecError(f"{name}: metadata has non-finite channel means {list(meta.means)}")
    if not all(abs(v) <= MEAN_MAX for v in means):
        raise CodecError(f"{name}: channel means must lie within +-{MEAN_MAX:g}, got {list(meta.means)}")
    if meta.forward not in FORWARD_MODES and not (meta.forward == "none" and meta.k == 0):  # none: z_0 itself sent
        raise CodecError(f"{name}: forward must be one of {', '.join(FORWARD_MODES)}, got {meta.forward!r}")
    if not isinstance(meta.prompt, str):
        raise CodecError(f"{name}: prompt must be a string, got {type(meta.prompt).__name__}")


def latent_from_symbols(symbols: np.ndarray, meta: LatentMeta) -> np.ndarray:
    """Inverse of :func:`symbols_from_latent`: (n,) complex -> float32 latent ``meta.latent_shape``."""
    check_meta(meta)
    s = np.asarray(symbols)
    if s.ndim != 1 or not np.iscomplexobj(s):
        raise CodecError(f"{meta.name}: received symbols must be a 1-D complex array, got {s.dtype} {s.shape}")
    if s.size != meta.n_symbols:
        raise CodecError(f"{meta.name}: metadata says {meta.symbols_text()} but {s.size} symbols were received")
    problem = symbol_problem(s)
    if problem is not None:
        raise CodecError(f"{meta.name}: {problem[1]}")
    y = np.empty(2 * s.size, dtype=np.float64)
    y[0::2], y[1::2] = s.real, s.imag
    y *= math.sqrt(2.0) / meta.alpha
    # A^T y + mu: values the reduction did not send (and erased ones) come back as the channel mean
    z = meta.reduction.adjoint(torch.from_numpy(y)[None])[0].numpy() + meta.mean_latent()
    return z.astype(np.float32)


def latent_to_symbols(zk: np.ndarray, config: CodecConfig) -> Tuple[np.ndarray, float, tuple, Reduction]:
    """Transmitter step 3 for one latent (C, h, w): mean removal (``remove_mean``), the
    reduction ``A`` (``reduce``), unit-power normalisation.  Returns (symbols, alpha, means, reduction)."""
    zk = np.asarray(zk, dtype=np.float64)
    red = Reduction.make(config.reduce_method, config.reduce, zk.shape)
    # the means are rounded to float16, as the frame header carries them (docs/frame-format.md),
    # so that a radio link and an in-process decode restore exactly what was removed
    # (a latent of one value per channel -- an image of at most 8 x 8 pixels -- keeps its means: removing
    # them left only their float16 rounding, which the power normalisation blew up 6000-fold)
    keep = config.remove_mean and zk.shape[1] * zk.shape[2] > 1
    means = tuple(float(v) for v in channel_means(zk).astype(np.float16)) if keep else ()
    if means:
        zk = zk - np.asarray(means).reshape(-1, 1, 1)
    sym, alpha = symbols_from_latent(red.apply(torch.from_numpy(zk)[None])[0].numpy())
    return sym, alpha, means, red


def check_snr_db(name: str, snr_db) -> float:
    """A receiver's SNR estimate as a float, or CodecError naming the item (not a number, not
    finite, outside SNR_DB_RANGE); the codec's check, and the remote client's before it sends."""
    snr = _real(snr_db)
    if snr is None:
        raise CodecError(f"{name}: SNR estimate must be a number (dB), got {snr_db!r}")
    if not math.isfinite(snr):
        raise CodecError(f"{name}: SNR estimate must be finite, got {snr_db}")
    if not SNR_DB_RANGE[0] <= snr <= SNR_DB_RANGE[1]:
        shown = f"{snr:g}" if float(f"{snr:g}") == snr else repr(snr)  # (100.0001 is not '100')
        raise CodecError(f"{name}: SNR estimate {shown} dB is outside {SNR_DB_RANGE[0]:g}..{SNR_DB_RANGE[1]:g} dB")
    return snr


class GenerativeCodec:
    """Encoder and decoder sharing one loaded model.

    Args:
        config: :class:`CodecConfig` (validated here).
        components: already loaded model components (else loaded from ``config.model``).
    """

    def __init__(self, config: Optional[CodecConfig] = None, components: Optional[Components] = None):
        self.config = (config or CodecConfig()).validate()
        self.c = components or load_components(self.config.model, self.config.device, self.config.dtype)
        self.prediction_type = check_prediction_type(self.c.scheduler_config, self.c.model_id)
        self.grid: Grid = get_grid(self.config.T, scheduler_settings(self.c.scheduler_config, self.config.clean_end))
        self.calibration: Optional[Calibration] = None
        cal_path = calibration_path(self.config.rule)
        if cal_path is not None:  # k is checked per image (the transmitter's k)
            self.calibration = load_calibration(cal_path).check(self.c.model_id, self.config, with_k=False)
        self._embeddings: Dict[str, torch.Tensor] = {}
        self.stats = dict(unet_calls=0, images_encoded=0, images_decoded=0, failures=0)
        self._latents_only = False
        #: the model's fingerprint, carried in every image's metadata and frame header
        self.model_hash = model_fingerprint(self.c)
        self._foreign_warned: set = set()

    # ------------------------------------------------------------------ model calls
    def _text_embedding(self, prompt: str) -> torch.Tensor:
        """(2, 77, D): unconditional and conditional CLIP embeddings, computed once per prompt."""
        if prompt not in self._embeddings:
            if len(self._embeddings) >= MAX_CACHED_PROMPTS:  # bounded: a server sees arbitrary prompts
                self._embeddings.pop(next(iter(self._embeddings)))
            tok = self.c.tokenizer([ "", prompt], padding="max_length", truncation=True,
                                   max_length=self.c.tokenizer.model_max_length, return_tensors="pt")
            with torch.no_grad():
                emb = self.c.text_encoder(tok.input_ids.to(self.c.device))[0]
            self._embeddings[prompt] = emb.to(self.c.dtype)
        return self._embeddings[prompt]

    def _eps(self, x: torch.Tensor, t: torch.Tensor, prompt: str, guidance: float) -> torch.Tensor:
        """Guided noise prediction ``e(x, t)``: one batched UNet call for both CFG halves."""
        emb = self._text_embedding(prompt)
        b = x.shape[0]
        xin = x.to(self.c.dtype)
        if guidance == 1.0:  # plain conditional prediction: the unconditional half is not needed
            out = self.c.unet(xin, t, encoder_hidden_states=emb[1:].expand(b, -1, -1)).sample.float()
        else:
            cond = torch.cat([emb[:1].expand(b, -1, -1), emb[1:].expand(b, -1, -1)])
            out = self.c.unet(torch.cat([xin, xin]), torch.cat([t, t]), encoder_hidden_states=cond).sample.float()
            e_u, e_c = out.chunk(2)
            out = e_u + guidance * (e_c - e_u)
        self.stats["unet_calls"] += 1
        if self.prediction_type == "v_prediction":
            out = self._noise_from_v(x.float(), out, t)
        return out

    def _noise_from_v(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A v-prediction model's output as noise: ``eps = sqrt(a_t) v + sqrt(1-a_t) x`` with
        ``a_t = abar`` at the timestep the UNet saw (what DDIMScheduler does when it samples;
        for inversion steps this is the model's own noise estimate at ``tau_{j+1}``)."""
        a = self._abar_on_device(t.to(x.device)).view(-1, 1, 1, 1)
        return a ** 0.5 * v + (1 - a) ** 0.5 * x

    def _abar_on_device(self, t: torch.Tensor) -> torch.Tensor:
        """float32 ``abar`` at each timestep of ``t``, computed where ``t`` is: the training
        schedule's value at an integer timestep, :meth:`Grid.abar_at`'s log-linear
        interpolation between two, 1 for ``t < 0``.  Reading the timesteps back to the host
        would wait for the device at every UNet call of a v-prediction model."""
        dev = t.device
        if getattr(self, "_abar_tables", (None,))[0] != dev:
            wide = torch.float32 if dev.type == "mps" else torch.float64  # MPS has no float64
            self._abar_tables = (dev, torch.as_tensor(self.grid.abar, dtype=torch.float32).to(dev),
                                 torch.as_tensor(np.log(self.grid.abar), dtype=wide).to(dev))
        _, abar, log_abar = self._abar_tables
        n = abar.shape[0]
        tc = t.to(log_abar.dtype).clamp(0.0, n - 1.0)
        lo = tc.floor()
        w = tc - lo
        lo_i = lo.long()
        hi_i = (lo_i + 1).clamp(max=n - 1)
        between = torch.exp((1 - w) * log_abar[lo_i] + w * log_abar[hi_i]).float()
        a = torch.where(w == 0, abar[lo_i], between)
        return torch.where(t < 0, torch.ones_like(a), a)

    @staticmethod
    def _ddim_update(x: torch.Tensor, e: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
        """One DDIM step (eq. 9 / eq. 10) from level ``a_from`` to ``a_to`` with noise estimate ``e``."""
        x0 = (x - (1 - a_from).sqrt() * e) / a_from.sqrt()
        return a_to.sqrt() * x0 + (1 - a_to).sqrt() * e

    def _ddim(self, x: torch.Tensor, paths: Sequence[list], prompt: str, guidance: float) -> torch.Tensor:
        """Run DDIM steps (eq. 9 and eq. 10 are the same update) on a batch.

        ``paths[b]`` lists ``(t_eval, a_from, a_to)`` for item ``b``; paths of
        different lengths are aligned at their ends, and each iteration is one
        UNet call for all items that are active in it (per-item timesteps).
        Arithmetic is float32 whatever the UNet's dtype.
        """
        x = x.float().clone()
        B, L = len(paths), max((len(p) for p in paths), default=0)
        if L == 0:
            return x
        # Every step's (t, a_from, a_to) and the active items' indices go to the device once,
        # without waiting for it (to_device): a tensor built from a list per step would block the
        # host until the GPU has drained its queue, so kernel launches could never run ahead of it.
        table = torch.zeros((L, B, 3), dtype=torch.float32)
        for b, p in enumerate(paths):
            if p:
                table[L - len(p):, b] = torch.tensor(p, dtype=torch.float32)
        table = to_device(table, x.device)
        index: dict = {}
        for i in range(L):
            idx = tuple(b for b, p in enumerate(paths) if i >= L - len(p))
            rows = table[i]
            if len(idx) < B:
                if idx not in index:
                    index[idx] = to_device(torch.tensor(idx, dtype=torch.long), x.device)
                rows = rows.index_select(0, index[idx])
            t, a_from, a_to = rows[:, 0], rows[:, 1].view(-1, 1, 1, 1), rows[:, 2].view(-1, 1, 1, 1)
            if len(idx) == B:
                x = self._ddim_update(x, self._eps(x, t, prompt, guidance), a_from, a_to)
            else:
                xb = x.index_select(0, index[idx])
                x = x.index_copy(0, index[idx], self._ddim_update(xb, self._eps(xb, t, prompt, guidance),
                                                                   a_from, a_to))
        return x

    def invert(self, x: torch.Tensor, j0: int, j1: int, prompt: str, guidance: float
               ) -> Tuple[torch.Tensor, List[int]]:
        """Inversion from grid index ``j0`` to ``j1`` as ``config.inversion`` says.

        ``ddim``: eq. 10, the noise predicted at the step's start ``e(x_j, tau_{j+1})``,
        one UNet call per step.  ``fixed-point``: the implicit step
        ``x_{j+1} = F(x_j, e(x_{j+1}, tau_{j+1}))`` -- exactly what the sampling step
        ``j+1 -> j`` undoes -- solved by iterating from the eq. 10 point: each
        iteration re-evaluates the noise at the current end point (one UNet call)
        until an update moves the item by less than ``inversion_tol`` (relative
        norm) or ``inversion_iters`` iterations are spent.  An update is the
        residual of the point it starts from, and that residual is exactly the
        point's round-trip error (scaled by ``sqrt(a_{j+1}/a_j)``); where an
        update is larger than the one before (the iteration does not contract:
        strong guidance near a boundary between modes) the item stops at the
        point of least residual.  Items stop on their own, so an item's
        result does not depend on its batch.

        Args:
            x: (B, C, h, w) latents at grid index ``j0``.
        Returns:
            (latents at ``j1`` float32, UNet calls spent on each item).
        """
        B = x.shape[0]
        cfg = self.config
        if cfg.inversion == "ddim" or j1 <= j0:
            return self._ddim(x, [self.inversion_path(j0, j1)] * B, prompt, guidance), [j1 - j0] * B
        calls = [0] * B
        x = x.float().clone()
        for t_eval, a_f, a_t in self.inversion_path(j0, j1):
            a_from = torch.tensor(a_f, dtype=torch.float32, device=x.device)
            a_to = torch.tensor(a_t, dtype=torch.float32, device=x.device)
            t = torch.full((B,), t_eval, dtype=torch.float32, device=x.device)
            y = self._ddim_update(x, self._eps(x, t, prompt, guidance), a_from, a_to)
            # the residual |F(x, e(y)) - y| of a point y is exactly its round-trip error times
            # sqrt(a_to / a_from): keep the best point seen, trust a new one while residuals shrink
            best, best_res = y.clone(), [math.inf] * B
            for b in range(B):
                calls[b] += 1
            active = list(range(B))
            for _ in range(cfg.inversion_iters):
                if not active:
                    break
                y_act = y[active]
                y_new = self._ddim_update(x[active], self._eps(y_act, t[active], prompt, guidance), a_from, a_to)
                res = ((y_new - y_act).flatten(1).norm(dim=1) / y_act.flatten(1).norm(dim=1)).tolist()
                still = []
                for i, (b, r) in enumerate(zip(active, res)):
                    calls[b] += 1
                    if r <= best_res[b]:  # contracting: y is the best so far, move on to y_new
                        best[b], best_res[b], y[b] = y_act[i], r, y_new[i]
                        if r > cfg.inversion_tol:
                            still.append(b)
                    else:  # the update grew (strong guidance near a mode boundary): back to the best point
                        y[b] = best[b]
                active = still
            x = y
        return x, calls

    def inversion_path(self, j0: int, j1: int) -> list:
        """Inversion steps from grid index ``j0`` to ``j1`` (eq. 10), each at ``tau_{j+1}``."""
        g = self.grid
        return [(float(g.timesteps[j + 1]), float(g.alphas[j]), float(g.alphas[j + 1])) for j in range(j0, j1)]

    def _sync(self):
        if self.c.device.type == "cuda":
            torch.cuda.synchronize(self.c.device)

    # ------------------------------------------------------------------ transmitter
    def encode(self, image: ImageLike, name: Optional[str] = None) -> Encoded:
        """Encode one image; raises :class:`ImageError`/:class:`CodecError` on bad input."""
        out = self.encode_many([image], [name] if name else None)[0]
        if isinstance(out, Failed):
            raise out.exception()
        return out

    def encode_many(self, images: Sequence[ImageLike], names: Optional[Sequence[str]] = None
                    ) -> List[Union[Encoded, Failed]]:
        """Encode a batch; images of the same padded size share every model call.
        Items that fail are returned as :class:`Failed`; the others complete."""
        cfg = self.config
        if isinstance(images, (str, bytes, Path, np.ndarray, Image.Image)):  # one image, not a batch of them
            raise TypeError(f"encode_many takes a list of images, got one {type(images).__name__}: "
                            f"encode(image) or encode_many([image])")
        if names and len(names) != len(images):
            raise ValueError(f"encode_many got {len(images)} images but {len(names)} names: give one name per image "
                             "(or none)")
        given = list(names) if names else [None] * len(images)  # errors name bytes/arrays by the caller's name
        names = [n or _default_name(im, i) for i, (n, im) in enumerate(zip(given, images))]
        results: List[Union[Encoded, Failed, None]] = [None] * len(images)
        loaded = {}
        for i, im in enumerate(images):
            try:
                loaded[i] = load_rgb(im, cfg.max_pixels, given[i])
            except ImageError as exc:
                results[i] = Failed(str(exc), names[i], "image")
                self.stats["failures"] += 1
                log.debug("%s", exc)  # reported once, by the caller that receives the Failed item
        groups: Dict[tuple, list] = {}
        for i, img in loaded.items():
            groups.setdefault(to_tensor(img).shape, []).append(i)
        for shape, members in groups.items():
            for start in range(0, len(members), cfg.batch_size):
                batch = members[start:start + cfg.batch_size]
                try:
                    encs = self._encode_batch([loaded[i] for i in batch], [names[i] for i in batch])
                except ValueError as exc:  # the model refuses this size (analytic: sides multiples of 64)
                    encs = [Failed(str(exc), names[i]) for i in batch]
                    self.stats["failures"] += len(batch)
                    log.debug("%s", exc)
                for i, enc in zip(batch, encs):
                    results[i] = enc
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _encode_batch(self, imgs, names) -> List[Union[Encoded, Failed]]:
        cfg, c = self.config, self.c
        t_start = time.perf_counter()
        calls0 = self.stats["unet_calls"]
        # 1. posterior-mode VAE latent
        x = torch.cat([to_tensor(im) for im in imgs]).to(c.device, c.dtype)
        z0 = c.vae.encode(x).latent_dist.mode().float() * c.vae_scale
        self._sync()
        t_vae = time.perf_counter()
        # 2. k forward steps: DDIM inversion (eq. 10) or the random-noise ablation (eq. 5)
        item_calls = [0] * len(imgs)
        if cfg.forward == "ddim":
            zk, item_calls = self.invert(z0, 0, cfg.k, cfg.prompt, cfg.guidance)
        else:
            a_k = float(self.grid.alphas[cfg.k])
            # one generator per image, seeded by (seed, name): independent noise per image,
            # and the same noise for an image whatever batch it is in
            noise = torch.stack([torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(
                int(np.random.SeedSequence([cfg.seed, zlib.crc32(n.encode())]).generate_state(1)[0])))
                for n in names]).to(c.device)
            zk = math.sqrt(a_k) * z0 + math.sqrt(1 - a_k) * noise
        self._sync()
        t_inv = time.perf_counter()
        # 3. unit-power normalisation and real -> complex mapping
        out = []
        zk_np = zk.cpu().numpy()
        for b, (im, name) in enumerate(zip(imgs, names)):
            try:
                out.append(self._encoded(zk_np[b], im, name))
            except (RateError, CodecError) as exc:  # this item only (too few latent values to reduce, no power)
                out.append(Failed(f"{name}: {exc}", name))
                self.stats["failures"] += 1
                log.warning("%s: %s", name, exc)
        t_end = time.perf_counter()
        seconds = dict(vae_encode=t_vae - t_start, inversion=t_inv - t_vae, other=t_end - t_inv)
        calls = self.stats["unet_calls"] - calls0
        for e, n_calls in zip(out, item_calls):
            if isinstance(e, Failed):
                continue
            e.record = dict(unet_calls=n_calls, batch=len(imgs), batch_unet_calls=calls, seconds=seconds,
                            symbols=int(e.symbols.size), bcr=e.symbols.size / (3 * e.meta.image_size[0] * e.meta.image_size[1]))
        self.stats["images_encoded"] += sum(isinstance(e, Encoded) for e in out)
        return out

    def _encoded(self, zk: np.ndarray, im, name: str) -> Encoded:
        """Symbols and metadata of one image's inverted latent ``zk`` (C, h, w) (step 3)."""
        cfg = self.config
        sym, alpha, means, red = latent_to_symbols(zk, cfg)  # raises RateError for a latent too small to reduce
        meta = LatentMeta(alpha=alpha, latent_shape=tuple(zk.shape), image_size=(im.size[1], im.size[0]),
                          k=cfg.k, T=cfg.T, guidance=cfg.guidance, prompt=cfg.prompt, forward=cfg.forward,
                          name=name, means=means, reduce=red.factor, reduce_method=red.method,
                          model_hash=self.model_hash)
        return Encoded(sym, meta)

    # ------------------------------------------------------------------ receiver
    @torch.no_grad()
    def decode_as_is(self, symbols: np.ndarray, meta: LatentMeta) -> np.ndarray:
        """The received latent ``z~_k`` decoded by the VAE with no denoising: the reference a
        receiver must beat.  Returns uint8 (H, W, 3) at ``meta.image_size``."""
        c = self.c
        check_meta(meta)
        self._check_channels(meta)
        z = torch.from_numpy(latent_from_symbols(symbols, meta))[None].to(c.device)
        x = c.vae.decode((z / c.vae_scale).to(c.dtype)).sample.float()
        return to_uint8(x[0], meta.image_size)

    def _check_channels(self, meta: LatentMeta) -> None:
        """CodecError for a latent of another channel count than this model's (the UNet's or the
        VAE's own error otherwise, failing every item of a batch)."""
        channels = int(self.c.vae.config.latent_channels)
        if meta.latent_shape[0] != channels:
            raise CodecError(f"{meta.name}: latent has {meta.latent_shape[0]} channels but this model's latent "
                             f"has {channels}")

    def decode(self, symbols: np.ndarray, meta: LatentMeta, snr_db: float,
               mask: Optional[np.ndarray] = None, noise_var: Optional[np.ndarray] = None) -> Decoded:
        """Decode one image; raises :class:`CodecError` on bad input.  ``noise_var``: see
        :meth:`decode_many`."""
        out = self.decode_many([(symbols, meta, snr_db, mask, noise_var)])[0]
        if isinstance(out, Failed):
            raise out.exception()
        return out

    def step_choice(self, snr_db: float, meta: LatentMeta) -> StepChoice:
        """The receiver's denoising-step decision for this SNR and this image's latent power."""
        cfg = self.config
        cal = self.calibration
        if meta.reduce > 1:  # no receiver inversion on a latent with holes: Proposition 1 with m = 0
            rule = "snr" if cal is not None else cfg.rule
            steps = cfg.steps if cfg.steps is not None and cfg.steps >= meta.k else None
            return select_steps(snr_db, k=meta.k, m=0, T=cfg.T, rule=rule, power=meta.power,
                                rescale=cal.rescale if cal is not None else cfg.rescale, steps=steps, grid=self.grid)
        if cal is not None and cfg.steps is None:
            if meta.k != cal.k:
                raise CodecError(f"{meta.name}: the transmitter used k={meta.k} but calibration {cal.source} was "
                                 f"measured for k={cal.k}")
            n = cal.n_steps(snr_db, meta.power, k=meta.k)
            choice = select_steps(snr_db, k=meta.k, m=cfg.m, T=cfg.T, power=meta.power, rescale=cal.rescale,
                                  steps=n, grid=self.grid)
            return dataclasses.replace(choice, rule="calibrated")
        return select_steps(snr_db, k=meta.k, m=cfg.m, T=cfg.T, rule=cfg.rule, power=meta.power,
                            rescale=cfg.rescale, steps=cfg.steps, grid=self.grid)

    def decode_many(self, items: Sequence[tuple]) -> List[Union[Decoded, Failed]]:
        """Decode a batch of ``(symbols, meta, snr_db[, mask[, noise_var]])``.

        ``mask`` (bool, (n,)) marks received symbols; erased ones are set to the
        latent's mean (zero).  ``noise_var`` (float, (n,)): each symbol's noise
        variance after equalisation (e.g. ``RxFrame.symbol_noise_var``); each symbol
        is then MMSE-weighted and the step rule uses the effective SNR of
        :func:`weight_by_reliability` instead of ``snr_db`` (both are in the record:
        ``snr_db``, ``snr_in_db``).  Items whose latent shape, k and guidance agree
        share every model call; bad items come back as :class:`Failed`.
        """
        cfg = self.config
        results: List[Union[Decoded, Failed, None]] = [None] * len(items)
        ready = {}
        for i, item in enumerate(items):
            try:
                ready[i] = self._prepare_decode(item)
            except CodecError as exc:
                results[i] = Failed(str(exc), getattr(item[1], "name", "image"))
                self.stats["failures"] += 1
                log.debug("%s", exc)  # reported once, by the caller that receives the Failed item
            except (ArithmeticError, TypeError, ValueError, IndexError) as exc:  # a last guard: this item only
                name = getattr(item[1], "name", "image") if isinstance(item, (tuple, list)) and len(item) > 1 else "image"
                results[i] = Failed(f"{name}: unusable decode input ({type(exc).__name__}: {exc})", name)
                self.stats["failures"] += 1
                log.debug("%s", results[i].error)
        groups: Dict[tuple, list] = {}
        for i, (z, meta, *_rest) in ready.items():
            groups.setdefault((z.shape, meta.k, meta.guidance, meta.prompt, meta.reduce > 1), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), cfg.batch_size):
                batch = members[start:start + cfg.batch_size]
                try:
                    decs = self._decode_batch([ready[i] for i in batch])
                except ValueError as exc:  # the model refuses this latent (analytic: sides of 64 px), as in
                    decs = []              # encode_many: this group's items fail, the others complete
                    for i in batch:
                        name = ready[i][1].name
                        decs.append(Failed(str(exc) if isinstance(exc, CodecError) else f"{name}: {exc}", name))
                    self.stats["failures"] += len(batch)
                    log.debug("%s", exc)
                for i, dec in zip(batch, decs):
                    results[i] = dec
        return results  # type: ignore[return-value]

    def _prepare_decode(self, item: tuple) -> tuple:
        """Check one ``(symbols, meta, snr_db[, mask[, noise_var]])`` item and return
        ``(latent, meta, snr, step choice, mask, snr_in)``; raises :class:`CodecError`."""
        cfg = self.config
        symbols, meta, snr_db = item[:3]
        mask = item[3] if len(item) > 3 else None
        noise_var = item[4] if len(item) > 4 else None
        name = getattr(meta, "name", "image")
        if not isinstance(meta, LatentMeta):
            raise CodecError(f"{name}: decode needs LatentMeta metadata, got {type(meta).__name__}")
        check_meta(meta)
        self._check_channels(meta)
        if meta.T != cfg.T:
            raise CodecError(f"{name}: transmitter used T={meta.T} but this receiver is set to T={cfg.T}")
        try:
            check_steps(meta.k, cfg.m, cfg.T)
        except ValueError as exc:
            raise CodecError(f"{name}: {exc}") from None
        if meta.prompt != cfg.prompt:
            log.warning("%s: transmitter prompt %r differs from receiver prompt %r; using the transmitter's",
                        name, meta.prompt, cfg.prompt)
        if self.foreign_model(meta) and meta.model_hash not in self._foreign_warned:
            self._foreign_warned.add(meta.model_hash)  # (once per foreign model: the record flags each image)
            log.warning("%s: encoded by another model (fingerprint %04x; this model %r is %04x): the decoded "
                        "image will not be the transmitted one", name, meta.model_hash, self.c.model_id,
                        self.model_hash)
        snr = check_snr_db(name, snr_db)
        s = np.asarray(symbols)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != s.shape:
                raise CodecError(f"{name}: mask shape {mask.shape} does not match symbols {s.shape}")
            if not mask.any():
                raise CodecError(f"{name}: nothing to decode: the mask erases every symbol")
            s = np.where(mask, s, 0).astype(np.complex64)
        (height, width), (_, lh, lw) = tuple(meta.image_size), tuple(meta.latent_shape)
        if not (1 <= height <= 8 * lh and 1 <= width <= 8 * lw):
            raise CodecError(f"{name}: image_size {list(meta.image_size)} does not fit latent "
                             f"{list(meta.latent_shape)} (1..8h x 1..8w)")
        snr_in = snr
        if noise_var is not None:
            try:
                s, snr = weight_by_reliability(s, noise_var, mask)
            except CodecError as exc:
                raise CodecError(f"{name}: {exc}") from None
        z = latent_from_symbols(s, meta)
        try:
            choice = self.step_choice(snr, meta)
        except CodecError:
            raise
        except ValueError as exc:  # a fixed N this image's k cannot take (steps N must satisfy k + m <= N ...)
            raise CodecError(f"{name}: {exc}") from None
        return z, meta, snr, choice, mask, snr_in

    @torch.no_grad()
    def _decode_batch(self, batch) -> List[Decoded]:
        cfg, c = self.config, self.c
        meta0 = batch[0][1]
        t_start = time.perf_counter()
        calls0 = self.stats["unet_calls"]
        # 1. de-normalised received latent z~_k
        z = torch.from_numpy(np.stack([b[0] for b in batch])).to(c.device)
        if meta0.reduce > 1:  # a reduced latent (codec/rate.py): sampled item by item, no inversion
            t_inv = time.perf_counter()
            calls_inv, inv_calls = 0, [0] * len(batch)
            z0 = torch.cat([self._sample_reduced(z[i:i + 1], b[1], b[3]) for i, b in enumerate(batch)])
        else:
            # 2. m more inversion steps: z_{k+m}
            z, inv_calls = self.invert(z, meta0.k, meta0.k + cfg.m, meta0.prompt, meta0.guidance)
            self._sync()
            t_inv = time.perf_counter()
            calls_inv = self.stats["unet_calls"] - calls0
            # 3.-4. step choice per item (done in decode_many) and rescaling
            scale = torch.tensor([b[3].scale for b in batch], device=c.device).view(-1, 1, 1, 1)
            # 5. N DDIM-sampling steps (eq. 9), per-item paths aligned at the clean end
            z0 = self._ddim(z * scale, [sampling_path(b[3], self.grid) for b in batch], meta0.prompt, meta0.guidance)
        self._sync()
        if self._latents_only:
            return [Decoded(z0[b].cpu().numpy(), dict(name=b_[1].name)) for b, b_ in enumerate(batch)]
        t_smp = time.perf_counter()
        calls_smp = self.stats["unet_calls"] - calls0 - calls_inv
        x = c.vae.decode((z0 / c.vae_scale).to(c.dtype)).sample.float()
        self._sync()
        t_dec = time.perf_counter()
        out = []
        for b, (zk, meta, snr, choice, mask, snr_in) in enumerate(batch):
            img = to_uint8(x[b], meta.image_size)
            out.append((img, meta, snr, choice, mask, snr_in))
        t_end = time.perf_counter()
        seconds = dict(inversion=t_inv - t_start, sampling=t_smp - t_inv, vae_decode=t_dec - t_smp,
                       other=t_end - t_dec)
        results = []
        for (img, meta, snr, choice, mask, snr_in), n_inv in zip(out, inv_calls):
            if meta.reduce > 1:  # the free steps from the top of the grid down to the measurement's level
                n_inv = len(self._free_path(choice))
            results.append(Decoded(img, self._decode_record(meta, snr, snr_in, choice, mask, n_inv, len(batch),
                                                            calls_inv + calls_smp, seconds)))
        self.stats["images_decoded"] += len(results)
        return results

    def _decode_record(self, meta: LatentMeta, snr: float, snr_in: float, choice: StepChoice, mask, n_inv: int,
                       batch, batch_unet_calls: int, seconds: dict) -> dict:
        """What :class:`Decoded` records of one image's decoding (``n_inv``: its inversion UNet calls)."""
        cfg = self.config
        return dict(name=meta.name, snr_db=snr, snr_in_db=snr_in, n_steps=choice.n_steps, rule=choice.rule,
                    k=meta.k, m=cfg.m, T=cfg.T, start_t=choice.start_t, scale=choice.scale, s_tot2=choice.s_tot2,
                    inversion=cfg.inversion, unet_calls=n_inv + choice.n_steps, batch=batch,
                    batch_unet_calls=batch_unet_calls, erased=int((~mask).sum()) if mask is not None else 0,
                    seconds=seconds, reduce=meta.reduce, reduce_method=meta.reduce_method,
                    mean_removed=bool(meta.means), model_mismatch=self.foreign_model(meta))

    def foreign_model(self, meta: LatentMeta) -> bool:
        """Whether ``meta`` says another model encoded the image (its ``model_hash`` is given and
        is not this model's fingerprint): its latent means something else here, and the
        reconstruction will not be the image."""
        return bool(getattr(meta, "model_hash", 0)) and int(meta.model_hash) != self.model_hash


    def _free_path(self, choice: StepChoice) -> list:
        """Sampling steps from the top of the grid down to the start level of ``choice``
        (``(t_eval, a_from, a_to)``; the last lands on ``choice.start_abar``)."""
        g = self.grid
        path = []
        for j in range(g.T, 0, -1):
            if g.timesteps[j] <= choice.start_t:
                break
            lands = g.timesteps[j - 1] <= choice.start_t
            path.append((float(g.timesteps[j]), float(g.alphas[j]),
                         choice.start_abar if lands else float(g.alphas[j - 1])))
        return path

    def _sample_reduced(self, z: torch.Tensor, meta: LatentMeta, choice: StepChoice) -> torch.Tensor:
        """Receiver for a reduced latent (codec/rate.py): the measurement ``y = A z~_k`` scaled to
        the start level ``a_s``; the whole latent sampled from the top of the grid, starting at
        zero (the prior's centre), with ``y`` re-imposed at each step's level (:func:`impose`)
        down to ``a_s``, then the usual sampling path.  Deterministic, as the rest of the codec."""
        red = meta.reduction
        a_s = choice.start_abar
        y = red.apply(z.float()) * choice.scale
        x = torch.zeros_like(z, dtype=torch.float32)
        for step in self._free_path(choice):
            x = self._ddim(impose(x, red, y, step[1], a_s), [[step]], meta.prompt, meta.guidance)
        x = impose(x, red, y, a_s, a_s)
        return self._ddim(x, [sampling_path(choice, self.grid)], meta.prompt, meta.guidance)

    def decode_latents(self, items: Sequence[tuple]) -> List[Union[np.ndarray, Failed]]:
        """As :meth:`decode_many` but stop at the sampled clean latent ``z_0'`` (C, h, w) float32,
        without the VAE decoder (for latent-level measurements, ``benchmarks/rate_distortion.py``)."""
        self._latents_only = True
        try:
            out = self.decode_many(items)
        finally:
            self._latents_only = False
        return [o.image if isinstance(o, Decoded) else o for o in out]


def _default_name(src, i: int) -> str:
    from pathlib import Path as _P
    if isinstance(src, (str, _P)):
        return _P(src).stem
    return f"image{i}"
