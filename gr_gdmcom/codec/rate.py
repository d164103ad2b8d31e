"""Rate adaptation: fewer channel symbols than latent values, and no power spent on the mean.

Beyond the paper, which always sends the whole ``4 x H/8 x W/8`` latent (BCR 1/96)
with its mean.  See docs/rate.md for the method and the measured figures.

**Mean removal** (``CodecConfig.remove_mean``): the transmitter subtracts each
channel's mean ``mu_c`` from ``z_k`` before power normalisation and sends the
``C`` means in the metadata (a few bytes, like ``alpha``); the receiver adds them
back.  The normalisation then spends the symbol energy on ``z_k - mu`` only, so
the channel noise on the de-normalised latent falls from ``P sigma^2`` to
``(P - mean(mu^2)) sigma^2`` -- an effective SNR gain of ``P / (P - mean(mu^2))``.

**Reduction** (``CodecConfig.reduce = r``, ``reduce_method``): the transmitter
sends ``y = A z_k`` with a fixed linear map ``A`` of orthonormal rows
(``A A^T = I``) and about ``1/r`` as many rows as latent values, known to both
sides:

- ``subset``: a fixed pseudo-random subset of the latent's values (the same
  for every image of a latent shape; ``A`` selects them);
- ``pool``: per-channel block sums over ``ph x pw`` blocks divided by the
  square root of the block's size (``r = 2, 4, 8, 16``: blocks 1x2, 2x2, 2x4,
  4x4; blocks at the bottom/right edge of a latent whose sides are not multiples
  are smaller) -- average pooling scaled to keep white noise white;
- ``dct``: per-channel truncation of the orthonormal 2-D DCT-II (``scipy.fft.dctn``
  with ``norm="ortho"``): the ``h w // r`` lowest-frequency coefficients of each
  channel (ordered by the normalised radial frequency ``(i/h)^2 + (j/w)^2``), any ``r``.

Because the rows are orthonormal, ``A z_k = sqrt(a_k) A z_0 + sqrt(1-a_k) A eps``
with ``A eps`` white: the received ``y`` is a latent at the same noise level as
the whole one, and Proposition 1's accounting holds on it unchanged (with
``m = 0``: the receiver cannot run the UNet's inversion on a latent with holes).
The receiver runs DDIM sampling over the whole latent from the top of the grid,
starting at zero, and re-imposes ``y`` at each step's level until it reaches
``y``'s own level (the start the step rule picks for it), then runs the usual
DDIM steps to the clean end (:func:`impose`).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

#: how a reduced latent is formed (``CodecConfig.reduce_method``)
from ..config import REDUCE_METHODS  # noqa: E402  (subset, pool, dct)
#: pooling block (ph, pw) per reduction factor
POOL_BLOCKS = {2: (1, 2), 4: (2, 2), 8: (2, 4), 16: (4, 4)}
#: seeds the subset pattern (fixed: both sides derive it from the latent shape alone)
SUBSET_SEED = zlib.crc32(b"gr_gdmcom subset pattern")


class RateError(ValueError):
    """A reduction that cannot be applied to this latent; the message says why."""


@dataclass(frozen=True)
class Reduction:
    """The map ``A`` for one latent shape.

    Attributes:
        method: ``full``, ``subset``, ``pool`` or ``dct``.
        factor: the reduction factor ``r`` (1 for ``full``).
        shape: (C, h, w) of the whole latent.
    """

    method: str
    factor: int
    shape: Tuple[int, int, int]

    @staticmethod
    def make(method: str, factor: int, shape: Sequence[int]) -> "Reduction":
        shape = tuple(int(v) for v in shape)
        factor = int(factor)
        if factor == 1:
            return Reduction("full", 1, shape)
        if method not in REDUCE_METHODS:
            if method == "full":  # the default of a metadata that names no method
                raise RateError(f"reduce {factor} needs a reduce method: one of {', '.join(REDUCE_METHODS)} "
                                f"('full' is reduce 1)")
            raise RateError(f"unknown reduce method {method!r}; choose one of {', '.join(REDUCE_METHODS)}")
        if factor < 1:
            raise RateError(f"reduce must be >= 1, got {factor}")
        if method == "pool":
            if factor not in POOL_BLOCKS:
                raise RateError(f"pool reduces by {', '.join(map(str, POOL_BLOCKS))}, got {factor}")
        elif method == "dct":
            if shape[1] * shape[2] // factor < 1:
                raise RateError(f"dct reduce={factor} keeps no coefficient of a {shape[1]}x{shape[2]} latent channel")
        elif int(np.prod(shape)) // factor < 2:
            raise RateError(f"reduce={factor} leaves fewer than 2 of the latent's {int(np.prod(shape))} values")
        red = Reduction(method, factor, shape)
        if red.n_values % 2:
            raise RateError(f"{method} reduce={factor} of latent {list(shape)} leaves an odd number of values "
                            f"({red.n_values}); complex symbols carry pairs")
        return red

    @property
    def n_values(self) -> int:
        """Real values sent: rows of ``A``."""
        c, h, w = self.shape
        if self.method == "pool":
            ph, pw = POOL_BLOCKS[self.factor]
            return c * -(-h // ph) * -(-w // pw)
        if self.method == "dct":
            return c * (h * w // self.factor)
        n = c * h * w
        return n if self.method == "full" else 2 * (n // (2 * self.factor))

    def _subset(self) -> np.ndarray:
        n = int(np.prod(self.shape))
        rng = np.random.default_rng([SUBSET_SEED, *self.shape, self.factor])
        return np.sort(rng.permutation(n)[: self.n_values])

    def _dct_kept(self) -> np.ndarray:
        """Flat (h*w) indices of the DCT coefficients kept in each channel, lowest frequency first."""
        h, w = self.shape[1:]
        i, j = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
        return np.argsort((i * i + j * j).ravel(), kind="stable")[: h * w // self.factor]

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """``A z``: (B, C, h, w) -> (B, n_values)."""
        B = z.shape[0]
        if self.method == "full":
            return z.reshape(B, -1)
        if self.method == "subset":
            return z.reshape(B, -1)[:, torch.from_numpy(self._subset()).to(z.device)]
        if self.method == "dct":
            dh, dw = self._dct_matrices(z)
            coef = (dh @ z @ dw.T).reshape(B, self.shape[0], -1)  # dctn(z, axes=(-2, -1), norm="ortho")
            return coef[:, :, torch.from_numpy(self._dct_kept()).to(z.device)].reshape(B, -1)
        sums, counts = self._block_sums(z), self._counts(z)
        return (sums / counts.sqrt()).reshape(B, -1)

    def _dct_matrices(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The DCT-II matrices of the latent's height and width on ``like``'s device, in its dtype."""
        return tuple(_dct_matrix(n).to(like.device, like.dtype) for n in self.shape[1:])

    def _pad(self, z: torch.Tensor) -> torch.Tensor:
        ph, pw = POOL_BLOCKS[self.factor]
        h, w = self.shape[1:]
        return torch.nn.functional.pad(z, (0, -w % pw, 0, -h % ph))

    def _block_sums(self, z: torch.Tensor) -> torch.Tensor:
        ph, pw = POOL_BLOCKS[self.factor]
        return torch.nn.functional.avg_pool2d(self._pad(z), (ph, pw)) * (ph * pw)

    def _counts(self, like: torch.Tensor) -> torch.Tensor:
        """Latent values in each block (fewer at the bottom and right edges of odd-sized latents)."""
        return self._block_sums(torch.ones((1, 1, *self.shape[1:]), dtype=like.dtype, device=like.device))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: (B, n_values) -> (B, C, h, w); ``A A^T = I``, so ``A (A^T y) = y``."""
        B = y.shape[0]
        c, h, w = self.shape
        if self.method == "full":
            return y.reshape(B, c, h, w)
        if self.method == "subset":
            out = torch.zeros(B, c * h * w, dtype=y.dtype, device=y.device)
            out[:, torch.from_numpy(self._subset()).to(y.device)] = y
            return out.reshape(B, c, h, w)
        if self.method == "dct":
            coef = torch.zeros(B, c, h * w, dtype=y.dtype, device=y.device)
            coef[:, :, torch.from_numpy(self._dct_kept()).to(y.device)] = y.reshape(B, c, -1)
            dh, dw = self._dct_matrices(y)
            return dh.T @ coef.reshape(B, c, h, w) @ dw  # idctn of the zero-filled coefficients
        ph, pw = POOL_BLOCKS[self.factor]
        counts = self._counts(y)
        small = y.reshape(B, c, *counts.shape[2:]) / counts.sqrt()
        return small.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)[:, :, :h, :w]


@functools.lru_cache(maxsize=32)
def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n, n), float64: ``D @ x == scipy.fft.dct(x, norm="ortho")``."""
    from scipy.fft import dct

    return torch.from_numpy(dct(np.eye(n), norm="ortho", axis=0))


def channel_means(z: np.ndarray) -> np.ndarray:
    """Per-channel mean of a latent (C, h, w), float64 (C,)."""
    return np.asarray(z, dtype=np.float64).reshape(z.shape[0], -1).mean(axis=1)


def mean_gain_db(z: np.ndarray) -> float:
    """Effective SNR gain of mean removal for one latent: ``10 log10(P / (P - mean(mu^2)))``
    with ``mu`` broadcast over each channel (docs/rate.md)."""
    z = np.asarray(z, dtype=np.float64)
    p = float(np.mean(z * z))
    centred = z - channel_means(z).reshape(-1, *([1] * (z.ndim - 1)))
    return 10.0 * math.log10(p / float(np.mean(centred * centred)))


def impose(x: torch.Tensor, red: Reduction, y_s: torch.Tensor, a: float, a_s: float) -> torch.Tensor:
    """Re-impose the received measurement at noise level ``a`` (``abar``) before a sampling step.

    ``y_s`` is the measurement scaled to level ``a_s`` (``sqrt(a_s) A z_0 + sqrt(1-a_s) e``);
    for ``a <= a_s`` (a noisier step) the known part becomes ``sqrt(a/a_s) y_s`` -- its signal at
    the step's level, carrying its own noise and no fresh noise (a deterministic path; a fresh
    noise top-up to ``1 - a`` measured worse, docs/rate.md) -- and the rest of ``x`` is kept:
    ``x + A^T(sqrt(a/a_s) y_s - A x)``.
    """
    return x + red.adjoint(math.sqrt(a / a_s) * y_s - red.apply(x))
