"""Full-reference image metrics that need no pretrained weights.

PSNR and MS-SSIM come from torchmetrics.  MS-SSIM with its standard 5 scales
and 11-pixel Gaussian window needs a shorter side of at least 176 pixels
(11 px at the coarsest scale, 1/16);
for smaller images :func:`ms_ssim` uses as many scales as fit (weights
renormalised) and says how many in its second return value, and below 11
pixels it returns ``None``: the value is never invented.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL = 11


def _t(img: np.ndarray) -> torch.Tensor:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None].repeat(3, axis=2)
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if np.asarray(a).shape != np.asarray(b).shape:
        raise ValueError(f"images differ in shape: {np.asarray(a).shape} vs {np.asarray(b).shape}")


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (H, W, 3); ``inf`` when identical."""
    _check(ref, img)
    mse = float(np.mean((np.asarray(ref, np.float64) - np.asarray(img, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales that fit an image (0 when none does)."""
    side, n = min(height, width), 0
    while n < len(MS_SSIM_BETAS) and side // (2 ** n) >= KERNEL:
        n += 1
    # torchmetrics needs side > (kernel - 1) * 2^(n-1)
    while n > 0 and min(height, width) <= (KERNEL - 1) * 2 ** (n - 1):
        n -= 1
    return n


def ms_ssim(ref: np.ndarray, img: np.ndarray) -> Tuple[Optional[float], int]:
    """MS-SSIM of two uint8 images and the number of scales used (5 = standard)."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    _check(ref, img)
    h, w = np.asarray(ref).shape[:2]
    n = ms_ssim_scales(h, w)
    if n == 0:
        return None, 0
    betas = tuple(float(b) for b in np.asarray(MS_SSIM_BETAS[:n]) / np.sum(MS_SSIM_BETAS[:n]))
    val = msssim(_t(img), _t(ref), data_range=1.0, kernel_size=KERNEL, betas=betas)
    return float(val), n
