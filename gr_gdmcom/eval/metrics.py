"""Full-reference image metrics that need no pretrained weights.

PSNR is computed here; MS-SSIM comes from torchmetrics.  MS-SSIM with its
standard 5 scales and 11-pixel Gaussian window needs a shorter side of at least
:data:`FULL_SCALES_SIDE` (176) pixels (11 px at the coarsest scale, 1/16);
for smaller images :func:`ms_ssim` uses as many scales as fit (weights
renormalised) and says how many in its second return value, and below 11
pixels it returns ``None``: the value is never invented.

torchmetrics clamps each scale's contrast-structure term at 0 (its default
``normalize="relu"``): an exact 0.0 is a real floor, not a missing value.  A
reconstruction with nothing of the original still scores above 0 (a flat grey
image 0.097 against the astronaut, noise 0.03-0.06).
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
    for x in (a, b):  # (a 0..1 float image scored against 255 gave 68 dB where it is 20)
        if np.asarray(x).dtype != np.uint8:
            raise ValueError(f"metrics take uint8 images (0..255), got {np.asarray(x).dtype}; a float image in "
                             f"0..1: (x * 255).round().astype(np.uint8)")
    if np.asarray(a).shape != np.asarray(b).shape:
        raise ValueError(f"images differ in shape: {np.asarray(a).shape} vs {np.asarray(b).shape}")


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (H, W, 3); ``inf`` when identical."""
    _check(ref, img)
    mse = float(np.mean((np.asarray(ref, np.float64) - np.asarray(img, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _fits(side: int, n: int) -> bool:
    """n scales fit a shorter side: the coarsest scale (side // 2^(n-1)) holds the window, and
    torchmetrics (1.x, ``_multiscale_ssim_update``) accepts it: side >= 2^n and
    side // max(1, n - 1)^2 > kernel - 1 (its divisor is (n-1)^2, not 2^(n-1): with 4 scales it
    wants a side of 99, not 88)."""
    return (side // 2 ** (n - 1) >= KERNEL and side >= 2 ** n
            and side // max(1, n - 1) ** 2 > KERNEL - 1)


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales that fit an image (0 when none does)."""
    side = min(height, width)
    return next((n for n in range(len(MS_SSIM_BETAS), 0, -1) if _fits(side, n)), 0)


#: the shortest side that gets all 5 standard scales (176 px)
FULL_SCALES_SIDE = next(s for s in range(1, 4096) if ms_ssim_scales(s, s) == len(MS_SSIM_BETAS))


def _msssim_function():
    """torchmetrics' MS-SSIM function.  A torchvision that is installed but fails to import
    with an error other than ImportError (the usual torch/torchvision mismatch,
    ``RuntimeError: operator torchvision::nms does not exist``) would break torchmetrics' own
    import, though MS-SSIM does not use torchvision: torchmetrics is then imported as if
    torchvision were absent, and torchvision is left to fail again for whoever needs it."""
    import sys

    try:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as f
        return f
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - only a broken torchvision is handled here
        try:
            import torchvision  # noqa: F401
        except ImportError:
            raise exc from None
        except Exception as tv_exc:  # noqa: BLE001
            import logging

            logging.getLogger(__name__).info(
                "torchvision does not import (%s: %s); MS-SSIM loads torchmetrics without it",
                type(tv_exc).__name__, tv_exc)
        else:
            raise
    had = "torchvision" in sys.modules
    saved = sys.modules.get("torchvision")
    sys.modules["torchvision"] = None  # import torchvision -> ImportError: "not installed"
    flags = sys.modules.get("torchmetrics.utilities.imports")
    cache = getattr(flags, "_TORCHVISION_AVAILABLE", None)
    if cache is not None:  # installed per its metadata, so torchmetrics would import it anyway
        cache.available = False
    try:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as f
    finally:
        if had:
            sys.modules["torchvision"] = saved
        else:
            sys.modules.pop("torchvision", None)
    return f


def ms_ssim(ref: np.ndarray, img: np.ndarray) -> Tuple[Optional[float], int]:
    """MS-SSIM of two uint8 images and the number of scales used (5 = standard)."""
    msssim = _msssim_function()
    _check(ref, img)
    h, w = np.asarray(ref).shape[:2]
    n = ms_ssim_scales(h, w)
    if n == 0:
        return None, 0
    betas = tuple(float(b) for b in np.asarray(MS_SSIM_BETAS[:n]) / np.sum(MS_SSIM_BETAS[:n]))
    val = msssim(_t(img), _t(ref), data_range=1.0, kernel_size=KERNEL, betas=betas)
    return float(val), n
