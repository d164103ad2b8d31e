"""Reading images of any kind and size into the codec's tensors, and back.

Accepted inputs: a path, raw encoded bytes (PNG/JPEG/...), a ``PIL.Image`` or
a ``uint8`` numpy array (H, W) or (H, W, C).  Grayscale, palette and RGBA
images are converted to RGB (alpha is dropped: composited on white); a file
is turned upright by its EXIF Orientation, as viewers show it.  Sides
that are not multiples of 8 are reflect-padded for the VAE, and
:func:`crop_to` gives the reconstruction back at the input's exact size.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]
MULTIPLE = 8  # VAE downsampling factor


class CodecError(ValueError):
    """Bad input to the codec; the message names the item and the problem."""


class ImageError(CodecError):
    """An input image cannot be used; the message names the image and the problem.  A
    :class:`CodecError`, so ``except CodecError`` catches every bad input, local or remote."""


#: whether HEIC/HEIF files can be opened: pillow-heif (the ``eval`` extra) registers its
#: opener with Pillow at the first image opened; None until then
_HEIF = None


def heif_readable() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow where it is installed (phones'
    photos; Pillow reads AVIF itself); False where it is not."""
    global _HEIF
    if _HEIF is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _HEIF = True
        except Exception:  # (missing, or a build whose libheif does not load)
            _HEIF = False
    return _HEIF


def open_image(data: bytes) -> Image.Image:
    """``Image.open`` of encoded bytes (lazy: the header only) without Pillow's
    DecompressionBombWarning, raw on stderr for a header over ~89 M pixels: the caller's
    max_pixels check refuses such an image with its name and size, the one message."""
    heif_readable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def describe(src: ImageLike) -> str:
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.size[0]}x{src.size[1]} {src.mode}>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    return f"<{type(src).__name__}>"


def upright(img: Image.Image) -> Image.Image:
    """A file's picture as viewers show it: turned by its EXIF Orientation (phones store the
    sensor's pixels and say how to turn them), the tag then dropped.  A picture without the
    tag, or with an EXIF block Pillow cannot read, is returned as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose the image
        return img


def load_rgb(src: ImageLike, max_pixels: int = 4096 * 4096, name: Optional[str] = None) -> Image.Image:
    """Open ``src`` as an RGB ``PIL.Image``; raise :class:`ImageError` on any problem.
    ``name``: what error messages call an image given as bytes or an array (a path names
    itself)."""
    name = describe(src) if isinstance(src, (str, Path)) or not name else name
    if isinstance(src, (str, Path)):
        p = Path(src)
        if not p.exists():
            raise ImageError(f"image not found: {p}")
        if p.is_dir():
            raise ImageError(f"image path is a folder, not a file: {p}")
        if p.stat().st_size == 0:
            raise ImageError(f"image file is empty (0 bytes): {p}")
        src = p.read_bytes()
    if isinstance(src, bytes):
        if not src:
            raise ImageError(f"image {name} is empty (0 bytes)")
        try:
            img = open_image(src)
            _check_size(img.size, name, max_pixels)  # before decoding the pixels
            img.load()
            img = upright(img)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:  # raised by Image.open itself, before _check_size
            raise ImageError(bomb_message(name, exc, max_pixels)) from None
        except UnidentifiedImageError:  # Pillow's message names its BytesIO object
            hint = ("" if heif_readable() or Path(name).suffix.lower() not in (".heic", ".heif")
                    else " (HEIC/HEIF needs pillow-heif: pip install 'gr_gdmcom[eval]')")
            raise ImageError(f"cannot read image {name}: not an image format Pillow can read{hint}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot read image {name}: {exc}") from None
    elif isinstance(src, np.ndarray):
        arr = src
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {arr.shape}")
        if arr.size == 0:
            raise ImageError(f"image {name} has zero size")
        img = Image.fromarray(to_uint8_range(arr, name))
    elif isinstance(src, Image.Image):
        img = src
    else:
        raise ImageError(f"unsupported image input {name}; give a path, bytes, a PIL image or a uint8 array")
    _check_size(img.size, name, max_pixels)
    if img.mode in WIDE_MODES:  # 16-bit or 32-bit grey (a 16-bit grey PNG), float: scaled, not clipped
        arr = np.asarray(img)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.min() >= 0 and arr.max() > 255):
            arr = arr.astype(np.uint16)
        img = Image.fromarray(to_uint8_range(arr, name))
    try:
        if img.mode == "La":  # premultiplied grey + alpha: Pillow converts it to LA only (else a ValueError)
            img = img.convert("LA")
        # alpha, or a tRNS colour key (palette, RGB or grey PNGs): transparent pixels are white, as
        # viewers show them on a white page (an RGB key colour was kept as the colour it stands for)
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, rgba)
        return img.convert("RGB")
    except (ValueError, OSError) as exc:  # a mode Pillow cannot take to RGB: this image's error, not the batch's
        raise ImageError(f"cannot convert image {name} (Pillow mode {img.mode}) to RGB: {exc}") from None


#: PIL modes of more than 8 bits a channel (all grey): converted by :func:`to_uint8_range`
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_uint8_range(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """An image array of any common type -> uint8 0..255, scaled as its type means it: uint8 as it is,
    bool 0/255, uint16 0..65535 (16-bit sensors and PNGs), other integers 0..255, float 0..1 or 0..255
    (whichever its largest value says).  What has no such meaning -- negative floats (a [-1, 1] tensor),
    values beyond the range -- is an :class:`ImageError`, never clipped into a wrong picture."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise ImageError(f"image {name} has values of type {arr.dtype}; give uint8, uint16, bool or float")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageError(f"image {name} contains non-finite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        hint = " (a [-1, 1] tensor: give (x + 1) / 2)" if arr.dtype.kind == "f" and lo >= -1 else ""
        raise ImageError(f"image {name} has negative values (min {lo:g}); give 0..1 or 0..255{hint}")
    if arr.dtype.kind == "f" and hi <= 1:
        arr = arr * 255.0
    elif hi > 255:
        raise ImageError(f"image {name} has values up to {hi:g}, beyond 255; give uint8 0..255, uint16 0..65535 "
                         f"or float 0..1")
    return np.rint(arr).astype(np.uint8)


def bomb_message(name: str, exc: Exception, max_pixels: int) -> str:
    """The message for Pillow's DecompressionBombError (a header over 2 x PIL.Image.MAX_IMAGE_PIXELS,
    ~179 M pixels): the max_pixels refusal's words where the image is over max_pixels too, else
    that Pillow's own limit must be raised as well."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    n = int(m.group(1)) if m else None
    if n is not None and n > max_pixels:
        return f"image {name} has {n} pixels, more than the limit max_pixels={max_pixels}"
    return (f"image {name}: {exc} (Pillow's own limit, below max_pixels={max_pixels}: raise "
            f"PIL.Image.MAX_IMAGE_PIXELS too)")


def _check_size(size, name: str, max_pixels: int) -> None:
    w, h = size
    if w == 0 or h == 0:
        raise ImageError(f"image {name} has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"image {name} has {w}x{h} = {w * h} pixels, more than the limit max_pixels={max_pixels}")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (1, 3, H', W') in [-1, 1], H', W' padded up
    to multiples of 8 by reflection (edge replication where reflection cannot reach)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float()
    x = x / 127.5 - 1.0
    h, w = x.shape[-2:]
    ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def to_uint8(x: torch.Tensor, size) -> np.ndarray:
    """Tensor (3, H', W') in [-1, 1] -> uint8 array (H, W, 3) cropped to ``size = (H, W)``."""
    h, w = size
    x = x[:, :h, :w].float().clamp(-1, 1)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
