"""A natural-image prior for CPU: a Gaussian mixture of latent patches fitted to photographs.

``--model patch-gmm`` is the analytic model (:mod:`gr_gdmcom.codec.analytic`)
with its two seeded parts replaced by parts *fitted to natural images*, so a
decoded picture means something without Stable Diffusion's weights:

* **VAE**: a linear map per 8 x 8 RGB pixel block onto its first ``C = 4``
  principal components (PCA of blocks of the training images, mean removed):
  ``z = W (x - m)``, decoded as ``x = W^T z + m``.  The latent stays
  ``4 x H/8 x W/8`` (BCR 1/96); ``scaling_factor`` is ``1/std`` of the
  training latents, so scaled latents have unit variance as SD's do.
* **Prior**: a ``K``-component Gaussian mixture of latent tiles (``4 x h x w``
  latent positions, i.e. ``8h x 8w`` pixels), the patch-GMM of natural images
  of Zoran & Weiss (EPLL, ICCV 2011) in the VAE's latent layout, fitted with
  scikit-learn's EM (full covariances), stored as rank-``r`` factors plus a
  diagonal so the noise prediction ``E[eps | x_t]`` is exact (Tweedie's
  formula, Woodbury identity; :class:`~gr_gdmcom.codec.analytic.GaussianMixture`).

Within one tiling the tiles do not overlap and the prior is their product,
so the denoiser is exact for that prior.  Latent sides that are not multiples of the tile are covered by
smaller tiles at the right and bottom edges whose prior is the *marginal* of
the mixture on the positions present (a Gaussian mixture's marginal is the
same mixture with the rows of its means and factors dropped): still exact, no
padding.  Images whose sides are not multiples of 8 are reflect-padded by the
codec (:func:`gr_gdmcom.codec.images.to_tensor`) and cropped back.

The model has no text conditioning: every prompt gives the fitted mixture
weights, so classifier-free guidance changes nothing (``e_c = e_u``).

The fitted parameters ship in ``assets/patch_gmm/`` (``patch_gmm.npz`` and
``provenance.json``: images used, held-out images, K, rank, tile, seed,
versions).  Refit them (scikit-learn needed: ``pip install .[fit]``) with::

    python -m gr_gdmcom.codec.patch_gmm fit --out gr_gdmcom/codec/assets/patch_gmm

which is bit-reproducible for a given seed and library versions (BLAS is
limited to one thread while fitting).  The held-out images (astronaut,
coffee, chelsea) are never used in fitting; docs/validation.md measures on them.

Options (``patch-gmm:key=value,...``): ``path=DIR`` loads parameters from
another folder (a refit); ``shifts=S`` (default 4) averages the exact
predictions of S tilings offset along the tile's diagonal (cycle spinning, as
EPLL averages overlapping patches): no 32-pixel seams and +0.2 to +0.4 dB PSNR,
but the average is not the exact prediction of one prior -- ``shifts=1`` is.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .analytic import (PATCH, AnalyticModel, AnalyticSpec, AnalyticUNet, ByteTokenizer, GaussianMixture, PromptEncoder,
                       _Config, _Frozen, components_of)

PATCH_GMM_NAME = "patch-gmm"
ASSET_DIR = Path(__file__).resolve().parent / "assets" / "patch_gmm"
PARAMS_FILE = "patch_gmm.npz"
PROVENANCE_FILE = "provenance.json"
DEFAULT_SHIFTS = 4

# Held out from fitting: the demo's astronaut and two more colour photographs.
HELD_OUT = ("astronaut", "coffee", "chelsea")
# Fitted on: every other photograph-like image bundled with scikit-image, matplotlib and
# scikit-learn (what is on disk offline; diagrams, text and binary images are left out).
TRAIN_SKIMAGE = ("rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
                 "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "color.png")
TRAIN_MATPLOTLIB = ("grace_hopper.jpg",)
TRAIN_SKLEARN = ("china.jpg", "flower.jpg")


def is_patch_gmm(model: str) -> bool:
    return model == PATCH_GMM_NAME or str(model).startswith(PATCH_GMM_NAME + ":")


# --------------------------------------------------------------------------- runtime parts
class PCABlockVAE(_Frozen):
    """``encode``: ``z = E (x - m)`` per 8 x 8 RGB block (E: (C, 192), the principal
    components); ``decode``: each block from the latents of its ``(2R+1) x (2R+1)``
    neighbourhood, ``x = sum_{dy,dx} G_{dy,dx} z(i+dy, j+dx) + m`` (a linear
    convolution, G: (192, C, 2R+1, 2R+1), edges replicated), fitted by least squares
    to reconstruct the training blocks -- sharper and less blocky than ``E^T z``.
    Input sides must be multiples of 8 (the codec pads)."""

    def __init__(self, encoder: np.ndarray, decoder: np.ndarray, mean: np.ndarray, scale: float):
        self.E = torch.as_tensor(encoder, dtype=torch.float32)
        self.G = torch.as_tensor(decoder, dtype=torch.float32)
        self.m = torch.as_tensor(mean, dtype=torch.float32)
        self.config = _Config(scaling_factor=float(scale), latent_channels=self.E.shape[0],
                              in_channels=3, out_channels=3)

    def encode(self, x: torch.Tensor, **_):
        B, _, H, W = x.shape
        if H % PATCH or W % PATCH:
            raise ValueError(f"patch-gmm VAE: image sides must be multiples of {PATCH}, got {H}x{W}")
        z = torch.einsum("bhwp,cp->bchw", blocks_of(x.float()) - self.m.to(x.device), self.E.to(x.device))
        z = z.to(x.dtype)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z, sample=lambda generator=None: z, mean=z))

    def decode(self, z: torch.Tensor, **_):
        B, C, h, w = z.shape
        R = self.G.shape[-1] // 2
        zp = torch.nn.functional.pad(z.float(), (R, R, R, R), mode="replicate")
        blocks = torch.nn.functional.conv2d(zp, self.G.to(z.device)) + self.m.to(z.device).view(1, -1, 1, 1)
        x = blocks.reshape(B, 3, PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, 3, h * PATCH, w * PATCH)
        return SimpleNamespace(sample=x.to(z.dtype))


def blocks_of(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/8, W/8, 192) non-overlapping 8 x 8 RGB blocks (channel-major)."""
    B, _, H, W = x.shape
    b = x.reshape(B, 3, H // PATCH, PATCH, W // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return b.reshape(B, H // PATCH, W // PATCH, 3 * PATCH * PATCH)


def _segments(n: int, t: int, offset: int) -> Dict[int, List[int]]:
    """Cut ``0..n`` into a head of ``offset`` (if any), whole tiles of ``t`` and a remainder:
    ``{length: [starts]}``."""
    cuts = ([0] if offset % t else []) + list(range(offset % t, n, t)) + [n]
    out: Dict[int, List[int]] = {}
    for a, b in zip(cuts, cuts[1:]):
        if b > a:
            out.setdefault(b - a, []).append(a)
    return out


class PatchGMMUNet(AnalyticUNet):
    """``E[eps | x_t]`` of the product of tile mixtures; edge tiles use the mixture's marginal."""

    def __init__(self, gmm: GaussianMixture, spec: AnalyticSpec, log_abar: torch.Tensor, shifts: int = 1):
        super().__init__(gmm, spec, log_abar)
        self.shifts = int(shifts)
        self._marginals: Dict[Tuple[int, int], GaussianMixture] = {spec.shape[1:]: gmm}

    def marginal(self, h: int, w: int) -> GaussianMixture:
        """The mixture of the top-left ``h x w`` positions of a tile (exact marginal)."""
        if (h, w) not in self._marginals:
            c, th, tw = self.spec.shape
            idx = torch.arange(c * th * tw).reshape(c, th, tw)[:, :h, :w].reshape(-1)
            g = self.gmm
            self._marginals[(h, w)] = GaussianMixture(g.weights, g.means[:, idx], g.factors[:, idx],
                                                      g.diag[:, idx], dtype=g.dtype)
        return self._marginals[(h, w)]

    def offsets(self) -> List[Tuple[int, int]]:
        """Tiling offsets averaged over: (0, 0) alone (exact), or ``shifts`` offsets along the
        diagonal of the tile (cycle spinning, as EPLL averages over overlapping patches)."""
        th = self.spec.shape[1]
        n = max(1, min(self.shifts, th))
        return [(i * th // n, i * self.spec.shape[2] // n) for i in range(n)]

    def _eps_tiling(self, x: torch.Tensor, abar: torch.Tensor, lw: torch.Tensor, oy: int, ox: int) -> torch.Tensor:
        """Exact ``E[eps | x_t]`` for the tiling whose tile grid starts at (oy, ox); the cut
        tiles at the borders use the mixture's marginal."""
        B, C, H, W = x.shape
        out = torch.empty(B, C, H, W, dtype=self.gmm.dtype)
        rows_by, cols_by = _segments(H, self.spec.shape[1], oy), _segments(W, self.spec.shape[2], ox)
        for hh, r0 in rows_by.items():
            ri = (torch.tensor(r0).view(-1, 1) + torch.arange(hh)).reshape(-1)
            for ww, c0 in cols_by.items():
                ci = (torch.tensor(c0).view(-1, 1) + torch.arange(ww)).reshape(-1)
                nh, nw = len(r0), len(c0)
                region = x[:, :, ri][:, :, :, ci]  # (B, C, nh*hh, nw*ww)
                tiles = region.reshape(B, C, nh, hh, nw, ww).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, -1)
                nt = nh * nw
                e = self.marginal(hh, ww).eps_multi(tiles, abar.repeat_interleave(nt, 0),
                                                    [lw.repeat_interleave(nt, 0)])[0]
                e = e.reshape(B, nh, nw, C, hh, ww).permute(0, 3, 1, 4, 2, 5).reshape(B, C, nh * hh, nw * ww)
                out[:, :, ri.view(-1, 1), ci.view(1, -1)] = e
        return out

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **_):
        x = sample
        B, C, H, W = x.shape
        c, th, tw = self.spec.shape
        if C != c:
            raise ValueError(f"patch-gmm model: latent has {C} channels, the model {c}")
        xc, t, lw, abar = self._inputs(x, timestep, encoder_hidden_states)
        # classifier-free guidance batches [x, x]: with equal weights both halves are the same
        rows = B
        if B % 2 == 0 and B and torch.equal(xc[: B // 2], xc[B // 2:]) and torch.equal(t[: B // 2], t[B // 2:]) \
                and torch.equal(lw[: B // 2], lw[B // 2:]):
            rows = B // 2
        offsets = self.offsets()
        eps = sum(self._eps_tiling(xc[:rows], abar[:rows], lw[:rows], oy, ox) for oy, ox in offsets) / len(offsets)
        if rows != B:
            eps = torch.cat([eps, eps])
        self.calls += 1
        return SimpleNamespace(sample=eps.to(device=x.device, dtype=x.dtype))


# --------------------------------------------------------------------------- loading
@dataclass
class PatchGMMParams:
    """The fitted parameters (what ``patch_gmm.npz`` holds)."""

    encoder: np.ndarray  # (C, 192) raw latent = encoder @ (block - block_mean)
    decoder: np.ndarray  # (192, C, 2R+1, 2R+1) on raw latents
    block_mean: np.ndarray  # (192,)
    scale: float
    tile: Tuple[int, int, int]
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D) scaled latents
    factors: np.ndarray  # (K, D, r)
    diag: np.ndarray  # (K, D)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, encoder=self.encoder.astype(np.float32),
                            decoder=self.decoder.astype(np.float32), block_mean=self.block_mean.astype(np.float32),
                            scale=np.float64(self.scale), tile=np.asarray(self.tile, np.int64),
                            weights=self.weights.astype(np.float64), means=self.means.astype(np.float32),
                            factors=self.factors.astype(np.float32), diag=self.diag.astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> "PatchGMMParams":
        with np.load(path) as f:
            return cls(encoder=f["encoder"], decoder=f["decoder"], block_mean=f["block_mean"], scale=float(f["scale"]),
                       tile=tuple(int(v) for v in f["tile"]), weights=f["weights"], means=f["means"],
                       factors=f["factors"], diag=f["diag"])


def parse_options(model: str) -> Tuple[Path, int]:
    """``patch-gmm[:path=DIR,shifts=S]`` -> (folder holding ``patch_gmm.npz``, shifts)."""
    if not is_patch_gmm(model):
        raise ValueError(f"not a patch-gmm model name: {model!r}")
    folder, shifts = ASSET_DIR, DEFAULT_SHIFTS
    opts = model.split(":", 1)[1] if ":" in model else ""
    seen = set()
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, _, val = (v.strip() for v in item.partition("="))
        if key in seen:  # (an unknown key is refused the first time)
            raise ValueError(f"patch-gmm: option {key} given twice")
        seen.add(key)
        if key == "path" and val:
            folder = Path(val)
        elif key == "shifts" and val.isdigit() and int(val) >= 1:
            shifts = int(val)
        else:
            raise ValueError(f"patch-gmm: bad option {item!r}; valid: path=DIR, shifts=S (S >= 1)")
    if not (folder / PARAMS_FILE).is_file():
        raise ValueError(f"patch-gmm: no {PARAMS_FILE} in {folder} (refit with "
                         f"`python -m gr_gdmcom.codec.patch_gmm fit --out {folder}`)")
    return folder, shifts


def revision(model: str) -> str:
    """Provenance of the parameters ``model`` loads: file, sha256 prefix and shifts."""
    import hashlib

    folder, shifts = parse_options(model)
    sha = hashlib.sha256((folder / PARAMS_FILE).read_bytes()).hexdigest()[:16]
    return f"{PARAMS_FILE} sha256:{sha} (shifts={shifts})"


_CACHE: dict = {}


def build_patch_gmm(model: str = PATCH_GMM_NAME) -> AnalyticModel:
    """The fitted model as an :class:`~gr_gdmcom.codec.analytic.AnalyticModel` (cached per file)."""
    from .schedule import SD_SCHEDULER, get_grid

    folder, shifts = parse_options(model)
    key = (str(folder.resolve()), (folder / PARAMS_FILE).stat().st_mtime_ns, shifts)
    if key not in _CACHE:
        p = PatchGMMParams.load(folder / PARAMS_FILE)
        K, _, r = p.factors.shape
        spec = AnalyticSpec(shape=p.tile, K=K, rank=r, cond=1.0, scale=p.scale)
        gmm = GaussianMixture(p.weights, p.means.astype(np.float64), p.factors.astype(np.float64),
                              p.diag.astype(np.float64), dtype=torch.float32)
        log_abar = torch.from_numpy(np.log(get_grid(50, SD_SCHEDULER).abar))
        _CACHE[key] = AnalyticModel(spec=spec, gmm=gmm, unet=PatchGMMUNet(gmm, spec, log_abar, shifts),
                                    text_encoder=PromptEncoder(gmm, spec), tokenizer=ByteTokenizer(),
                                    vae=PCABlockVAE(p.encoder, p.decoder, p.block_mean, p.scale))
    return _CACHE[key]


def patch_gmm_components(model: str = PATCH_GMM_NAME, device: str = "auto", dtype: str = "auto"):
    """:class:`~gr_gdmcom.codec.models.Components` of the fitted patch-GMM model.

    Raises:
        ModelLoadError: bad options or a missing parameter file.
    """
    from .models import ModelLoadError

    try:
        am = build_patch_gmm(model)
    except ValueError as exc:
        raise ModelLoadError(f"Could not load the patch-gmm model {model!r}: {exc}") from None
    return components_of(am, model, device, dtype)


# --------------------------------------------------------------------------- training data
def bundled_image(name: str) -> np.ndarray:
    """A bundled image as uint8 (H, W, 3): ``astronaut`` (or ``astronaut.png``) is the project's
    own 256 x 256 copy (gr_gdmcom/data); other names are files of scikit-image's, matplotlib's or
    scikit-learn's data folders."""
    from PIL import Image

    stem = name[:-4] if name.endswith(".png") else name  # "astronaut.png" missed the own copy (512 px, not held out)
    own = Path(__file__).resolve().parent.parent / "data" / f"{stem}.png"
    if own.is_file():
        path = own
    else:
        path = _find_bundled(name)
    img = Image.open(path)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _find_bundled(name: str) -> Path:
    folders = []
    try:
        import skimage
        folders.append(Path(skimage.__file__).parent / "data")
    except ImportError:
        pass
    try:
        import matplotlib
        folders.append(Path(matplotlib.get_data_path()) / "sample_data")
    except ImportError:
        pass
    try:
        import sklearn
        folders.append(Path(sklearn.__file__).parent / "datasets" / "images")
    except ImportError:
        pass
    for f in folders:
        for cand in ([f / name] if "." in name else sorted(f.glob(name + ".*"))):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"bundled image {name!r} not found in {', '.join(map(str, folders)) or 'no folder'} "
                            "(scikit-image, matplotlib and scikit-learn provide them: pip install .[fit])")


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 127.5 - 1.0


def _half(img: np.ndarray) -> np.ndarray:
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    return img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def _blocks_np(img: np.ndarray, oy: int = 0, ox: int = 0) -> np.ndarray:
    """(H, W, 3) float -> (h, w, 192) blocks starting at offset (oy, ox), channel-major like :func:`blocks_of`."""
    x = img[oy:, ox:]
    h, w = x.shape[0] // PATCH, x.shape[1] // PATCH
    x = x[: h * PATCH, : w * PATCH].transpose(2, 0, 1)  # (3, H, W)
    b = x.reshape(3, h, PATCH, w, PATCH).transpose(1, 3, 0, 2, 4)
    return b.reshape(h, w, 3 * PATCH * PATCH)


# --------------------------------------------------------------------------- fitting
def _views(images: Sequence[np.ndarray], augment: int) -> List[np.ndarray]:
    """Every image at full and half resolution, each under the first ``augment`` of the 8
    symmetries of the square (1: as is; 2: + its mirror image; 4: + both turned 90 degrees;
    8: + turned 180 and 270 degrees)."""
    out = []
    for im in images:
        for s in (_to_float(im), _half(_to_float(im))):
            for d in range(augment):
                v = np.rot90(s, k=d // 2) if d // 2 else s
                out.append(np.ascontiguousarray(v[:, ::-1] if d % 2 else v))
    return out


def _grids(views: Sequence[np.ndarray]):
    """The 8 x 8 blocks of every view on the grid and on the grid shifted by 4 pixels each way."""
    for s in views:
        for oy in (0, 4):
            for ox in (0, 4):
                yield _blocks_np(s, oy, ox)


def fit(images: Sequence[np.ndarray], K: int = 32, rank: int = 64, tile: Tuple[int, int] = (4, 4),
        channels: int = 4, n_patches: int = 40000, seed: int = 0, max_iter: int = 100, radius: int = 1,
        augment: int = 1, log=print) -> PatchGMMParams:
    """Fit the VAE basis and the tile mixture to ``images`` (uint8 (H, W, 3) each).

    Data: every image at full and half resolution (and ``augment`` flips/rotations of
    each, see :func:`_views`), 8 x 8 blocks on the grid
    and on the grid shifted by 4 pixels each way.  ``radius``: the decoder reads
    ``(2 radius + 1)^2`` latent positions per block (0: the transpose of the PCA).
    Deterministic for a seed (numpy's seeded generator, scikit-learn's ``random_state``, one BLAS thread).
    """
    from sklearn.mixture import GaussianMixture as SkGMM
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    with threadpool_limits(1):
        views = _views(images, augment)
        # 1. the "VAE": principal components of 8 x 8 RGB blocks (moments accumulated per grid)
        n, s1, s2 = 0, np.zeros(3 * PATCH * PATCH), np.zeros((3 * PATCH * PATCH,) * 2)
        for g in _grids(views):
            b = g.reshape(-1, g.shape[-1])
            n, s1, s2 = n + b.shape[0], s1 + b.sum(0), s2 + b.T @ b
        mean = s1 / n
        cov = (s2 - n * np.outer(mean, mean)) / (n - 1)
        evals, evecs = np.linalg.eigh(cov)
        basis = evecs[:, ::-1][:, :channels].T.copy()  # (C, 192), largest first
        basis *= np.sign(basis[np.arange(channels), np.abs(basis).argmax(1)])[:, None]  # fixed sign
        kept = evals[::-1][:channels].sum() / evals.sum()
        log(f"PCA: {n} blocks; {channels} components keep {100 * kept:.2f}% of the block variance")
        # 2. latent maps and their scaling factor
        lat = [np.einsum("hwp,cp->chw", g - mean, basis) for g in _grids(views)]
        scale = 1.0 / float(np.sqrt(np.mean(np.concatenate([z.reshape(-1) for z in lat]) ** 2)))
        # 3. the decoder: least squares from each block's latent neighbourhood to its pixels
        decoder = _fit_decoder(lat, _grids(views), mean, radius)
        # 4. all tiles at every latent position, then a seeded subset
        th, tw = tile
        counts = np.array([max(z.shape[1] - th + 1, 0) * max(z.shape[2] - tw + 1, 0) for z in lat])
        pick = np.sort(rng.choice(counts.sum(), size=min(n_patches, counts.sum()), replace=False))
        starts = np.concatenate([[0], np.cumsum(counts)])
        data = []
        for z, a, b in zip(lat, starts[:-1], starts[1:]):  # the picked tiles, in order, grid by grid
            v = np.lib.stride_tricks.sliding_window_view(z * scale, (th, tw), axis=(1, 2))  # (C, h', w', th, tw)
            data.append(v.transpose(1, 2, 0, 3, 4).reshape(-1, channels * th * tw)[pick[(pick >= a) & (pick < b)] - a])
        data = np.concatenate(data)
        log(f"GMM: {data.shape[0]} of {counts.sum()} tiles, D={data.shape[1]}, K={K}")
        # 5. EM with full covariances
        gm = SkGMM(n_components=K, covariance_type="full", reg_covar=1e-4, max_iter=max_iter,
                   random_state=int(seed), init_params="kmeans").fit(data)
        log(f"EM: converged={gm.converged_} after {gm.n_iter_} iterations; mean log-likelihood "
            f"{gm.score(data):.3f} per tile")
    factors, diag = _lowrank(gm.covariances_, rank)
    return PatchGMMParams(encoder=basis, decoder=decoder, block_mean=mean, scale=scale, tile=(channels, th, tw),
                          weights=gm.weights_, means=gm.means_, factors=factors, diag=diag)


def _neighbourhoods(z: np.ndarray, radius: int) -> np.ndarray:
    """(C, h, w) -> (h*w, C*(2R+1)^2): each position's neighbourhood (edges replicated),
    ordered as the weights of ``conv2d`` (channel, row, column)."""
    C, h, w = z.shape
    k = 2 * radius + 1
    zp = np.pad(z, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    v = np.lib.stride_tricks.sliding_window_view(zp, (k, k), axis=(1, 2))  # (C, h, w, k, k)
    return v.transpose(1, 2, 0, 3, 4).reshape(h * w, C * k * k)


def _fit_decoder(lat: Sequence[np.ndarray], grids: Iterable[np.ndarray], mean: np.ndarray, radius: int,
                 ridge: float = 1e-3) -> np.ndarray:
    """Least-squares (ridge) linear decoder (192, C, 2R+1, 2R+1) from latent neighbourhoods to blocks."""
    C = lat[0].shape[0]
    k = 2 * radius + 1
    xtx = np.zeros((C * k * k, C * k * k))
    xty = np.zeros((C * k * k, mean.size))
    for z, g in zip(lat, grids):
        X = _neighbourhoods(z, radius)
        xtx += X.T @ X
        xty += X.T @ (g.reshape(-1, mean.size) - mean)
    G = np.linalg.solve(xtx + ridge * np.eye(xtx.shape[0]), xty)  # (C k k, 192)
    return G.T.reshape(mean.size, C, k, k)


def _lowrank(covs: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each covariance as ``U U^T + diag(d)``: the top ``rank`` eigen-directions above the
    floor ``d`` = mean of the remaining eigenvalues (probabilistic PCA; exact when rank = D)."""
    K, D, _ = covs.shape
    rank = min(rank, D)
    U = np.zeros((K, D, rank))
    d = np.zeros((K, D))
    for k in range(K):
        ev, V = np.linalg.eigh(covs[k])
        ev, V = ev[::-1], V[:, ::-1]
        floor = ev[rank:].mean() if rank < D else ev[-1] * 0.5
        U[k] = V[:, :rank] * np.sqrt(np.maximum(ev[:rank] - floor, 0.0))
        d[k] = floor
    return U, d


def provenance(args, argv: Sequence[str], train: Sequence[str], params: PatchGMMParams) -> dict:
    import sklearn

    return dict(
        model=PATCH_GMM_NAME, command=" ".join(["python -m gr_gdmcom.codec.patch_gmm", *argv]),
        train_images=list(train), held_out=list(HELD_OUT), K=int(args.K), rank=int(args.rank),
        tile=list(params.tile), radius=int(args.radius), augment=int(args.augment),
        n_patches=int(args.patches), seed=int(args.seed), max_iter=int(args.max_iter),
        scale=params.scale,
        versions=dict(python=platform.python_version(), numpy=np.__version__, sklearn=sklearn.__version__,
                      torch=torch.__version__),
    )


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gr_gdmcom.codec.patch_gmm",
                                 description="Refit the patch-gmm model to the bundled images (held out: "
                                             + ", ".join(HELD_OUT) + ").")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--out", default=str(ASSET_DIR), help="folder for patch_gmm.npz and provenance.json")
    f.add_argument("--K", type=int, default=32, help="mixture components")
    f.add_argument("--rank", type=int, default=64, help="covariance rank kept (D = 4*tile*tile is exact)")
    f.add_argument("--tile", type=int, default=4, help="tile side in latent positions (8*tile pixels)")
    f.add_argument("--patches", type=int, default=40000, help="training tiles drawn (seeded)")
    f.add_argument("--max-iter", type=int, default=100, help="EM iterations at most")
    f.add_argument("--radius", type=int, default=1, help="decoder neighbourhood radius in latent positions")
    f.add_argument("--augment", type=int, default=4, choices=(1, 2, 4, 8),
                   help="flips/rotations of each image fitted (1: as is, 8: all eight)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--images", nargs="+", default=None,
                   help="training images (bundled names); default: the photographs of scikit-image, "
                        "matplotlib and scikit-learn minus the held-out set")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    train = list(args.images) if args.images else list(TRAIN_SKIMAGE + TRAIN_MATPLOTLIB + TRAIN_SKLEARN)
    bad = [n for n in train if Path(n).stem in HELD_OUT]
    if bad:
        print(f"error: {', '.join(bad)} is held out for testing and must not be fitted", file=sys.stderr)
        return 2
    imgs = [bundled_image(n) for n in train]
    params = fit(imgs, K=args.K, rank=args.rank, tile=(args.tile, args.tile), n_patches=args.patches,
                 seed=args.seed, max_iter=args.max_iter, radius=args.radius,
                 augment=args.augment)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params.save(out / PARAMS_FILE)
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance(args, argv, train, params), indent=2) + "\n")
    print(f"wrote {out / PARAMS_FILE} ({(out / PARAMS_FILE).stat().st_size / 1e6:.2f} MB) and {PROVENANCE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
