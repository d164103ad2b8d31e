"""An analytic latent diffusion model: a Gaussian-mixture prior whose noise
prediction ``E[eps | x_t]`` is known in closed form.

``--model analytic`` (or ``analytic:<key>=<value>,...``) replaces Stable
Diffusion's VAE, UNet, text encoder and tokenizer with duck-typed stand-ins
that :class:`~gr_gdmcom.codec.GenerativeCodec` uses unchanged.  Without
downloadable weights this lets us measure the *method* (DDIM inversion,
Proposition 1, the step rules) exactly, on CPU.

The prior
---------
A latent tile ``x0`` of shape ``(C, h, w)`` (default ``4 x 8 x 8``, ``D = 256``)
is drawn from a mixture of ``K`` Gaussians (seeded)::

    x0 ~ sum_k pi_k N(mu_k, Sigma_k),   Sigma_k = U_k U_k^T + diag(d_k)

with rank-``r`` factors ``U_k`` (D x r).  Latents larger than one tile (images
larger than ``8h x 8w`` pixels) are independent tiles: the prior is a product
and everything below holds per tile.

The exact noise prediction
--------------------------
For ``x_t = sqrt(a) x0 + sqrt(1-a) eps`` (``a = abar(t)`` of the codec's
scheduler, continuous ``t`` by log-linear interpolation as
:meth:`Grid.abar_at`/:meth:`Grid.t_for_abar`), ``x_t`` is itself a mixture
with components ``N(sqrt(a) mu_k, C_k)``, ``C_k = a U_k U_k^T + diag(a d_k + 1 - a)``,
and Tweedie's formula gives::

    E[eps | x_t] = -sqrt(1-a) grad log p_t(x_t)
                 = sqrt(1-a) sum_k r_k(x_t) C_k^{-1} (x_t - sqrt(a) mu_k)

with responsibilities ``r_k ∝ pi_k N(x_t; sqrt(a) mu_k, C_k)``.  ``C_k^{-1}``
and ``log det C_k`` come from the Woodbury identity and the matrix
determinant lemma (an ``r x r`` Cholesky per component and noise level), so a
call costs ``O(B K D r)``.

Conditioning and guidance
-------------------------
The "text encoder" turns a prompt into mixture log-weights, carried in the
embedding's first token (``emb[:, 0, :K]``).  The empty prompt gives the
prior weights ``pi`` (the unconditional model); any other prompt selects a
seeded subset of ``ceil(cond * K)`` components (chosen from the CRC-32 of its
token ids), the others keeping weight ``leak * pi_k`` (default 0).  So
classifier-free guidance ``e_u + w (e_c - e_u)`` has its usual meaning, and
``w = 1`` is exactly the conditional model.  Test latents are drawn from the
conditional mixture of the prompt in use (:meth:`AnalyticModel.sample_latents`).

The "VAE"
---------
A fixed linear map per 8 x 8 pixel block: the ``C`` latent channels are the
projections of the block's 192 values (RGB in [-1, 1]) on ``C`` orthonormal
patterns -- the three colour means, a horizontal and a vertical grey ramp,
then seeded patterns orthogonalised against those.  The decoder is the
transpose (the pseudo-inverse), so ``E(D(z)) = z`` exactly before the
codec's 8-bit quantisation and clipping; with the default scaling factor 1
a decoded GMM sample stays well inside [-1, 1] and the uint8 round trip
adds a latent error of about 6e-3 rms (MSE ~4e-5; rounding is correlated
within a smooth block).  The honest measure with this model is **latent
MSE**, read before the decoder (``gr_gdmcom.eval.validate`` feeds latents
directly); decoded pictures are 8 x 8 blocks of colour with ramps, and
image metrics mean nothing.  (Fitting the mixture to real SD latents,
``analytic:vae=PATH``, is future work.)

Options (``analytic:key=value,...``)
-----------------------------------
``shape=4x8x8``, ``K=8`` (components), ``rank=8``, ``seed=0``, ``mean=0.25``
(variance of the component means), ``lowrank=0.5`` and ``diag=0.25`` (average
per-element variance of the factor and diagonal parts), ``cond=0.5``
(fraction of components a prompt selects), ``leak=0`` (weight left on the
others), ``tied=0`` (1: one shared covariance, components differ in their
means only -- with a small ``mean`` they overlap and guidance matters),
``scale=1`` (VAE scaling factor), ``precision=fp32|fp64`` (the
denoiser's arithmetic).  Scaled latents have unit variance per element on
average.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ANALYTIC_NAME = "analytic"
PATCH = 8  # pixels per latent position, as SD's VAE
MAX_LEN = 77
_NEG = -1.0e4  # log-weight of an excluded component (exp() underflows to 0; finite in fp16)


def is_analytic(model: str) -> bool:
    return model == ANALYTIC_NAME or str(model).startswith(ANALYTIC_NAME + ":")


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class AnalyticSpec:
    """Parameters of the analytic model (see the module docstring)."""

    shape: Tuple[int, int, int] = (4, 8, 8)
    K: int = 8
    rank: int = 8
    seed: int = 0
    mean: float = 0.25
    lowrank: float = 0.5
    diag: float = 0.25
    cond: float = 0.5
    leak: float = 0.0
    tied: int = 0
    scale: float = 1.0
    precision: str = "fp32"

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_cond(self) -> int:
        return max(1, int(math.ceil(self.cond * self.K)))

    def label(self) -> str:
        d = AnalyticSpec()
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != getattr(d, f.name):
                parts.append(f"{f.name}={'x'.join(map(str, v)) if f.name == 'shape' else v}")
        return ANALYTIC_NAME + (":" + ",".join(parts) if parts else "")

    def validate(self) -> "AnalyticSpec":
        c, h, w = self.shape
        if min(c, h, w) < 1 or c > 3 * PATCH * PATCH:
            raise ValueError(f"analytic: shape must be CxHxW with 1 <= C <= {3 * PATCH * PATCH}, got {self.shape}")
        if self.K < 1 or self.rank < 0 or self.rank > self.dim:
            raise ValueError(f"analytic: need K >= 1 and 0 <= rank <= D={self.dim}, got K={self.K}, rank={self.rank}")
        bad = [f.name for f in fields(self)
               if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        if bad:
            raise ValueError(f"analytic: {', '.join(bad)} must be finite, got "
                             + ", ".join(f"{n}={getattr(self, n)}" for n in bad))
        if self.tied not in (0, 1):
            raise ValueError(f"analytic: tied must be 0 or 1, got {self.tied}")
        if self.mean < 0 or self.lowrank < 0 or self.diag <= 0:
            raise ValueError("analytic: mean and lowrank must be >= 0 and diag > 0")
        if not (0 < self.cond <= 1) or not (0 <= self.leak <= 1):
            raise ValueError("analytic: need 0 < cond <= 1 and 0 <= leak <= 1")
        if self.scale <= 0:
            raise ValueError("analytic: scale must be positive")
        if self.precision not in ("fp32", "fp64"):
            raise ValueError("analytic: precision must be fp32 or fp64")
        return self


_ALIASES = {"components": "K", "k": "K", "r": "rank"}


def parse_spec(model: str = ANALYTIC_NAME) -> AnalyticSpec:
    """``"analytic"`` or ``"analytic:K=16,rank=4,shape=4x16x16"`` -> :class:`AnalyticSpec`."""
    if not is_analytic(model):
        raise ValueError(f"not an analytic model name: {model!r}")
    spec = AnalyticSpec()
    opts = model.split(":", 1)[1] if ":" in model else ""
    known = {f.name: f for f in fields(AnalyticSpec)}
    changes = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        if "=" not in item:
            raise ValueError(f"analytic: option {item!r} must be key=value")
        key, val = (s.strip() for s in item.split("=", 1))
        key = _ALIASES.get(key, key)
        if key in changes:
            raise ValueError(f"analytic: option {key} given twice")
        if key == "vae":
            raise ValueError("analytic: vae=PATH (fitting the mixture to real VAE latents) is not implemented yet; "
                             "see docs/validation.md")
        if key not in known:
            raise ValueError(f"analytic: unknown option {key!r}; valid: {', '.join(known)}")
        try:
            if key == "shape":
                changes[key] = tuple(int(v) for v in val.lower().split("x"))
                if len(changes[key]) != 3:
                    raise ValueError
            elif key == "precision":
                changes[key] = val
            elif key in ("K", "rank", "seed", "tied"):
                changes[key] = int(val)
            else:
                changes[key] = float(val)
        except ValueError:
            raise ValueError(f"analytic: bad value {val!r} for {key}") from None
    return replace(spec, **changes).validate()


# --------------------------------------------------------------------------- the mixture
class GaussianMixture:
    """``sum_k pi_k N(mu_k, U_k U_k^T + diag(d_k))`` in ``R^D`` with the exact
    posterior quantities of its forward-noised versions.

    Args:
        weights: (K,) mixture weights; means: (K, D); factors: (K, D, r); diag: (K, D) > 0.
        dtype: arithmetic of the denoiser (parameters are kept in float64).
    """

    def __init__(self, weights, means, factors, diag, dtype: torch.dtype = torch.float32):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.factors = torch.as_tensor(factors, dtype=torch.float64)
        self.diag = torch.as_tensor(diag, dtype=torch.float64)
        self.K, self.D = self.means.shape
        self.r = self.factors.shape[-1]
        self.dtype = dtype
        self._cache: dict = {}

    def to(self, dtype: torch.dtype) -> "GaussianMixture":
        self.dtype = dtype
        return self

    @classmethod
    def random(cls, spec: AnalyticSpec) -> "GaussianMixture":
        """The seeded mixture of ``spec`` (per-element variance ``mean + lowrank + diag`` on average)."""
        g = torch.Generator().manual_seed(int(spec.seed))
        K, D, r = spec.K, spec.dim, spec.rank
        weights = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
        means = math.sqrt(spec.mean) * torch.randn(K, D, generator=g, dtype=torch.float64)
        factors = (math.sqrt(spec.lowrank / max(r, 1)) * torch.randn(K, D, r, generator=g, dtype=torch.float64)
                   if r else torch.zeros(K, D, 0, dtype=torch.float64))
        # diagonal: log-normal spread around `diag`, normalised to mean `diag`
        d = torch.exp(0.5 * torch.randn(K, D, generator=g, dtype=torch.float64))
        d = spec.diag * d / d.mean()
        if spec.tied:  # one covariance for all components: they differ in their means only
            factors = factors[:1].expand_as(factors).clone()
            d = d[:1].expand_as(d).clone()
        dtype = torch.float64 if spec.precision == "fp64" else torch.float32
        return cls(weights, means, factors, d, dtype=dtype)

    # -------------------------------------------------------------- basics
    def log_weights(self, subset: Optional[Sequence[int]] = None, leak: float = 0.0) -> torch.Tensor:
        """(K,) log-weights: the prior, or restricted to ``subset`` (others ``leak * pi``)."""
        w = self.weights.clone()
        if subset is not None:
            keep = torch.zeros(self.K, dtype=torch.bool)
            keep[list(subset)] = True
            w = torch.where(keep, w, w * leak)
        w = w / w.sum()
        return torch.where(w > 0, torch.log(w.clamp_min(1e-300)), torch.full_like(w, _NEG))

    def covariance(self, k: int) -> torch.Tensor:
        """Dense (D, D) covariance of component ``k`` (tests, small D)."""
        return self.factors[k] @ self.factors[k].T + torch.diag(self.diag[k])

    def sample(self, n: int, log_weights: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws (float64, (n, D)) and their component labels."""
        lw = self.log_weights() if log_weights is None else torch.as_tensor(log_weights, dtype=torch.float64)
        p = torch.softmax(lw, 0)
        lab = torch.multinomial(p, n, replacement=True, generator=generator)
        z = torch.randn(n, self.r, generator=generator, dtype=torch.float64)
        e = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        x = self.means[lab] + torch.einsum("ndr,nr->nd", self.factors[lab], z) + self.diag[lab].sqrt() * e
        return x, lab

    # -------------------------------------------------------------- forward-noised posterior
    def _level(self, a: float) -> dict:
        """Terms that depend only on the noise level ``a`` (cached): with
        ``D_k = diag(a d_k + 1 - a)``, ``A_k = D_k^{-1} U_k`` and
        ``M_k = I + a U_k^T D_k^{-1} U_k``, Woodbury gives
        ``C_k^{-1} = D_k^{-1} - a A_k M_k^{-1} A_k^T`` and
        ``log det C_k = log det D_k + log det M_k``."""
        key = (float(a), self.dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        dt = torch.float64  # set-up in float64, used in self.dtype
        a64 = float(a)
        dvar = a64 * self.diag + (1.0 - a64)  # (K,D)
        dinv = 1.0 / dvar
        logdet = torch.log(dvar).sum(-1)
        dmu = dinv * self.means
        musq = (self.means * dmu).sum(-1)
        if self.r:
            A = dinv.unsqueeze(-1) * self.factors  # (K,D,r)
            M = torch.eye(self.r, dtype=dt) + a64 * torch.einsum("kdr,kds->krs", self.factors, A)
            L = torch.linalg.cholesky(M)
            logdet = logdet + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
            Minv = torch.cholesky_inverse(L)  # (K,r,r)
            Amu = torch.einsum("kdr,kd->kr", self.factors, dmu)  # U^T D^-1 mu (K,r)
            A = A.permute(1, 0, 2).reshape(self.D, self.K * self.r)  # (D, K r)
        else:
            A = torch.zeros(self.D, 0, dtype=dt)
            Minv = torch.zeros(self.K, 0, 0, dtype=dt)
            Amu = torch.zeros(self.K, 0, dtype=dt)
        s = math.sqrt(a64)
        out = dict(
            # x @ proj = [x.dmu_k | x^T A]  (B, K + K r)
            proj=torch.cat([dmu.T, A], 1),
            dinvT=dinv.T.contiguous(),  # (D,K)
            dinv=dinv,  # (K,D)
            # back-projection of [r_k | r_k w_k] onto sum_k r_k (s D^-1 mu_k + s A_k w_k)
            back=torch.cat([dmu, A.T], 0) * s,  # (K + K r, D)
            Amu=Amu, Minv=Minv,
            const=(a64 * musq + logdet + self.D * math.log(2 * math.pi)),  # (K,)
        )
        out = {k_: v.to(self.dtype).contiguous() for k_, v in out.items()}
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = out
        return out

    def _combine_level(self, x: torch.Tensor, a: float, log_weights: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``E[eps|x_t]`` for x (B,D) all at level ``a``, one output per weighting ((B,K) each).

        With ``y_k = x - s mu_k`` (``s = sqrt(a)``), ``v_k = s U_k^T D_k^-1 y_k`` and
        ``w_k = M_k^-1 v_k``: ``y^T C^-1 y = x^2.dinv - 2 s x.dmu + s^2 mu.dmu - v.w`` and
        ``sum_k r_k C_k^-1 y_k = (sum_k r_k dinv_k) x - s sum_k r_k (dmu_k + A_k w_k)``;
        every product is a (B, D) x (D, ~K r) matrix product.
        """
        lv = self._level(a)
        s = math.sqrt(a)
        K, r = self.K, self.r
        B = x.shape[0]
        p = x @ lv["proj"]  # (B, K + K r)
        xdmu = p[:, :K]
        quad = torch.addmm(lv["const"], x * x, lv["dinvT"]) - (2 * s) * xdmu  # + const folded in
        if r:
            v = s * p[:, K:].reshape(B, K, r) - (s * s) * lv["Amu"]
            w = torch.einsum("bkr,krs->bks", v, lv["Minv"])
            quad = quad - (v * w).sum(-1)
        loglik = -0.5 * quad
        c1 = math.sqrt(max(1.0 - a, 0.0))
        outs = []
        for lw in log_weights:
            resp = torch.softmax(lw + loglik, dim=-1)  # (B,K)
            coef = torch.cat([resp, (resp.unsqueeze(-1) * w).reshape(B, K * r)], 1) if r else resp
            acc = torch.addcmul(-(coef @ lv["back"]), resp @ lv["dinv"], x)
            outs.append(acc.mul_(c1))
        return outs

    def eps_multi(self, x: torch.Tensor, abar: torch.Tensor, log_weights: Sequence[torch.Tensor],
                  chunk: int = 8192) -> List[torch.Tensor]:
        """``E[eps | x_t]`` under several weightings of the same components (shares the
        per-component work: classifier-free guidance needs two).

        Args:
            x: (B, D); abar: (B,) noise levels in (0, 1]; log_weights: each (K,) or (B, K).
        Returns:
            one (B, D) tensor per weighting, in the mixture's dtype.
        """
        x = x.to(self.dtype)
        B = x.shape[0]
        abar = torch.as_tensor(abar, dtype=torch.float64).reshape(-1).expand(B)
        lws = []
        for lw in log_weights:
            lw = torch.as_tensor(lw, dtype=self.dtype)
            lws.append(lw.expand(B, self.K) if lw.dim() == 1 else lw)
        outs = [torch.empty(B, self.D, dtype=self.dtype) for _ in log_weights]
        levels, inv = torch.unique(abar, return_inverse=True)
        for u, a in enumerate(levels.tolist()):
            idx = (inv == u).nonzero().squeeze(1)
            whole = idx.numel() == B
            for s0 in range(0, idx.numel(), chunk):
                sel = idx[s0:s0 + chunk]
                if whole and sel.numel() == B:
                    res = self._combine_level(x, a, lws)
                    for o, r_ in zip(outs, res):
                        o.copy_(r_)
                else:
                    res = self._combine_level(x[sel], a, [lw[sel] for lw in lws])
                    for o, r_ in zip(outs, res):
                        o[sel] = r_
        return outs

    def eps(self, x: torch.Tensor, abar: torch.Tensor, log_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``E[eps | x_t]`` for x (B, D) at noise levels ``abar`` (B,) (prior weights by default)."""
        lw = self.log_weights() if log_weights is None else log_weights
        return self.eps_multi(x, torch.as_tensor(abar, dtype=torch.float64).expand(x.shape[0]), [lw])[0]

    def denoise(self, x: torch.Tensor, abar: torch.Tensor, log_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tweedie's posterior mean ``E[x0 | x_t] = (x_t - sqrt(1-a) E[eps|x_t]) / sqrt(a)``."""
        abar = torch.as_tensor(abar, dtype=torch.float64).expand(x.shape[0])
        e = self.eps(x, abar, log_weights)
        a = abar.to(self.dtype).view(-1, 1)
        return (x.to(self.dtype) - (1 - a).sqrt() * e) / a.sqrt()

    def log_prob(self, x: torch.Tensor, abar: torch.Tensor, log_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p_t(x_t)`` (B,) of the forward-noised mixture."""
        x = x.to(torch.float64)
        abar = torch.as_tensor(abar, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        lw = (self.log_weights() if log_weights is None else torch.as_tensor(log_weights)).to(torch.float64)
        out = torch.empty(x.shape[0], dtype=torch.float64)
        for i in range(x.shape[0]):  # dense reference-quality evaluation (tests)
            a = float(abar[i])
            terms = []
            for k in range(self.K):
                C = a * self.covariance(k) + (1 - a) * torch.eye(self.D, dtype=torch.float64)
                mvn = torch.distributions.MultivariateNormal(math.sqrt(a) * self.means[k], covariance_matrix=C)
                terms.append(lw[k] + mvn.log_prob(x[i]))
            out[i] = torch.logsumexp(torch.stack(terms), 0)
        return out


# --------------------------------------------------------------------------- SD-shaped stand-ins
class _Config(dict):
    """A dict whose keys are also attributes (like diffusers' FrozenDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _log_abar_at(t: torch.Tensor, log_abar: torch.Tensor) -> torch.Tensor:
    """``log abar`` at continuous timesteps, as :meth:`Grid.t_for_abar` inverts it: linear
    in ``log abar`` between integer timesteps, and between ``t = -1`` (clean, 0) and ``t = 0``."""
    t = t.to(torch.float64)
    n = log_abar.numel()
    tc = t.clamp(-1.0, n - 1.0)
    ext = torch.cat([torch.zeros(1, dtype=torch.float64), log_abar])  # index 0 <-> t = -1
    u = tc + 1.0
    lo = u.floor().long().clamp(0, n)
    hi = (lo + 1).clamp(max=n)
    w = u - lo.to(torch.float64)
    return (1 - w) * ext[lo] + w * ext[hi]


class _Frozen:
    """The ``nn.Module`` calls the codec's loader makes (``.to().eval().requires_grad_()``): no-ops here."""

    def to(self, *a, **k):
        return self

    def eval(self):
        return self

    def requires_grad_(self, flag: bool = True):
        return self


class AnalyticUNet(_Frozen):
    """``unet(x, t, encoder_hidden_states=emb).sample = E[eps | x_t]`` of the mixture whose
    log-weights are ``emb[:, 0, :K]``; latents larger than one tile are tiled."""

    def __init__(self, gmm: GaussianMixture, spec: AnalyticSpec, log_abar: torch.Tensor):
        self.gmm, self.spec = gmm, spec
        self.log_abar = log_abar.to(torch.float64)
        c, h, w = spec.shape
        self.config = _Config(in_channels=c, out_channels=c, sample_size=h, cross_attention_dim=_emb_dim(spec))
        self.calls = 0

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(_log_abar_at(torch.as_tensor(t), self.log_abar))

    def _tiles(self, x: torch.Tensor) -> Tuple[torch.Tensor, int]:
        c, h, w = self.spec.shape
        B, C, H, W = x.shape
        if C != c or H % h or W % w:
            raise ValueError(f"analytic model: latent {C}x{H}x{W} is not made of {c}x{h}x{w} tiles "
                             f"(image sides must be multiples of {h * PATCH}x{w * PATCH} pixels)")
        nt = (H // h) * (W // w)
        tiles = x.reshape(B, C, H // h, h, W // w, w).permute(0, 2, 4, 1, 3, 5).reshape(B * nt, c * h * w)
        return tiles, nt

    def _untile(self, tiles: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
        c, h, w = self.spec.shape
        return tiles.reshape(B, H // h, W // w, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(B, c, H, W)

    def _inputs(self, x: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        """The UNet call's arguments on the CPU: latents, per-item timesteps, log-weights, abar."""
        t = torch.as_tensor(timestep).detach().to("cpu", torch.float64).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        lw = encoder_hidden_states[:, 0, : self.spec.K].detach().to("cpu", torch.float64)
        return x.detach().to("cpu"), t, lw, self.abar(t)

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **_):
        x = sample
        B, _, H, W = x.shape
        xc, t, lw, abar = self._inputs(x, timestep, encoder_hidden_states)
        tiles, nt = self._tiles(xc)
        # Classifier-free guidance batches [x, x] with two embeddings: share the component work.
        half = B // 2
        if B % 2 == 0 and B > 0 and torch.equal(xc[:half], xc[half:]) and torch.equal(t[:half], t[half:]):
            rep = lambda v: v.repeat_interleave(nt, 0)  # noqa: E731
            e1, e2 = self.gmm.eps_multi(tiles[: half * nt], rep(abar[:half]), [rep(lw[:half]), rep(lw[half:])])
            eps = torch.cat([e1, e2])
        else:
            eps = self.gmm.eps_multi(tiles, abar.repeat_interleave(nt, 0), [lw.repeat_interleave(nt, 0)])[0]
        self.calls += 1
        out = self._untile(eps, B, H, W).to(device=x.device, dtype=x.dtype)
        return SimpleNamespace(sample=out)


def _emb_dim(spec: AnalyticSpec) -> int:
    return max(spec.K, 8)


class ByteTokenizer:
    """A CLIP-tokenizer stand-in: UTF-8 bytes + 3, between BOS (1) and EOS (2), padded with 0."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, model_max_length: int = MAX_LEN):
        self.model_max_length = model_max_length

    def __call__(self, text: Union[str, Sequence[str]], padding=None, truncation: bool = False,
                 max_length: Optional[int] = None, return_tensors=None, **_):
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        L = max_length or self.model_max_length
        rows = []
        for s in texts:
            ids = [self.bos_token_id] + [b + 3 for b in s.encode("utf-8")]
            if truncation:
                ids = ids[: L - 1]
            ids.append(self.eos_token_id)
            if padding == "max_length":
                ids = ids + [self.pad_token_id] * (L - len(ids))
            rows.append(ids)
        if return_tensors == "pt":
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)
        else:
            ids = rows[0] if single else rows
        return SimpleNamespace(input_ids=ids)


class PromptEncoder(_Frozen):
    """``text_encoder(ids)[0]``: (B, 1, E) embeddings (one token, E = max(K, 8)) carrying
    the mixture log-weights (prior for the empty prompt, a seeded subset otherwise);
    the codec passes them to the UNet whatever their length."""

    def __init__(self, gmm: GaussianMixture, spec: AnalyticSpec):
        self.gmm, self.spec = gmm, spec
        self.config = _Config(hidden_size=_emb_dim(spec), max_position_embeddings=MAX_LEN)

    def subset(self, ids: Sequence[int]) -> Optional[List[int]]:
        """Components a prompt selects (None for the empty prompt)."""
        content = bytes(int(i) - 3 for i in ids if int(i) >= 3)
        if not content:
            return None
        rng = np.random.default_rng([int(self.spec.seed), zlib.crc32(content)])
        return sorted(rng.permutation(self.spec.K)[: self.spec.n_cond].tolist())

    def log_weights_for(self, prompt: str) -> torch.Tensor:
        ids = ByteTokenizer()(prompt, truncation=True, max_length=MAX_LEN).input_ids
        return self.gmm.log_weights(self.subset(ids), self.spec.leak)

    def __call__(self, input_ids: torch.Tensor, **_):
        ids = torch.as_tensor(input_ids)
        B = ids.shape[0]
        # One token is all the UNet reads; SD's 77 would make the codec copy 77x more per call.
        emb = torch.zeros(B, 1, _emb_dim(self.spec), dtype=torch.float32)
        for b in range(B):
            emb[b, 0, : self.spec.K] = self.gmm.log_weights(self.subset(ids[b].tolist()), self.spec.leak).float()
        return (emb.to(ids.device),)


def block_patterns(channels: int, seed: int = 0) -> torch.Tensor:
    """(C, 3*8*8) orthonormal rows: colour means, grey ramps, then seeded patterns."""
    n = PATCH * PATCH
    rows = []
    for c in range(3):
        r = torch.zeros(3, n, dtype=torch.float64)
        r[c] = 1.0
        rows.append(r.reshape(-1))
    ramp = torch.arange(PATCH, dtype=torch.float64) - (PATCH - 1) / 2
    rows.append(ramp.view(1, PATCH).expand(PATCH, PATCH).reshape(1, n).expand(3, n).reshape(-1))
    rows.append(ramp.view(PATCH, 1).expand(PATCH, PATCH).reshape(1, n).expand(3, n).reshape(-1))
    g = torch.Generator().manual_seed(1000 + seed)
    while len(rows) < channels:
        rows.append(torch.randn(3 * n, generator=g, dtype=torch.float64))
    basis: List[torch.Tensor] = []
    for r in rows[:channels]:
        v = r.clone()
        for b in basis:
            v = v - (v @ b) * b
        basis.append(v / v.norm())
    return torch.stack(basis)


class LinearBlockVAE(_Frozen):
    """``encode``: orthonormal projection of each 8 x 8 RGB block onto C patterns;
    ``decode``: the transpose (``encode(decode(z)) = z``)."""

    def __init__(self, spec: AnalyticSpec):
        self.spec = spec
        self.W = block_patterns(spec.shape[0], spec.seed).float()  # (C, 192)
        self.config = _Config(scaling_factor=float(spec.scale), latent_channels=spec.shape[0],
                              in_channels=3, out_channels=3)

    def encode(self, x: torch.Tensor, **_):
        B, _, H, W = x.shape
        if H % PATCH or W % PATCH:
            raise ValueError(f"analytic VAE: image sides must be multiples of {PATCH}, got {H}x{W}")
        blocks = x.float().reshape(B, 3, H // PATCH, PATCH, W // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
        blocks = blocks.reshape(B, H // PATCH, W // PATCH, 3 * PATCH * PATCH)
        z = torch.einsum("bhwp,cp->bchw", blocks, self.W.to(x.device)).to(x.dtype)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: z, sample=lambda generator=None: z, mean=z))

    def decode(self, z: torch.Tensor, **_):
        B, C, h, w = z.shape
        blocks = torch.einsum("bchw,cp->bhwp", z.float(), self.W.to(z.device))
        x = blocks.reshape(B, h, w, 3, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, h * PATCH, w * PATCH)
        return SimpleNamespace(sample=x.to(z.dtype))


# --------------------------------------------------------------------------- the model
@dataclass
class AnalyticModel:
    """Everything about the analytic model that the validation harness needs."""

    spec: AnalyticSpec
    gmm: GaussianMixture
    unet: AnalyticUNet
    text_encoder: PromptEncoder
    tokenizer: ByteTokenizer
    vae: LinearBlockVAE

    def log_weights(self, prompt: str) -> torch.Tensor:
        """(K,) mixture log-weights the model uses for ``prompt`` ('' = unconditional)."""
        return self.text_encoder.log_weights_for(prompt)

    def sample_latents(self, n: int, prompt: str, seed: int = 0) -> torch.Tensor:
        """``n`` scaled latents (n, C, h, w) float32 drawn from the prompt's conditional mixture."""
        g = torch.Generator().manual_seed(int(seed))
        x, _ = self.gmm.sample(n, self.log_weights(prompt), generator=g)
        return x.float().reshape(n, *self.spec.shape)

    def guided_eps(self, x: torch.Tensor, abar: torch.Tensor, prompt: str, guidance: float) -> torch.Tensor:
        """``e_u + w (e_c - e_u)`` exactly, for x (B, C, h, w) one tile each."""
        flat = x.reshape(x.shape[0], -1)
        e_u, e_c = self.gmm.eps_multi(flat, abar, [self.log_weights(""), self.log_weights(prompt)])
        return (e_u + guidance * (e_c - e_u)).reshape(x.shape)


_CACHE: dict = {}


def build_analytic(model: str = ANALYTIC_NAME) -> AnalyticModel:
    """The analytic model for ``model`` (``analytic[:options]``), cached per spec."""
    from .schedule import SD_SCHEDULER, get_grid

    spec = parse_spec(model)
    if spec not in _CACHE:
        gmm = GaussianMixture.random(spec)
        log_abar = torch.from_numpy(np.log(get_grid(50, SD_SCHEDULER).abar))
        _CACHE[spec] = AnalyticModel(spec=spec, gmm=gmm, unet=AnalyticUNet(gmm, spec, log_abar),
                                     text_encoder=PromptEncoder(gmm, spec), tokenizer=ByteTokenizer(),
                                     vae=LinearBlockVAE(spec))
    return _CACHE[spec]


def analytic_components(model: str = ANALYTIC_NAME, device: str = "auto", dtype: str = "auto"):
    """:class:`~gr_gdmcom.codec.models.Components` of the analytic model (CPU arithmetic;
    tensors come back on the requested device/dtype).

    Raises:
        ModelLoadError: bad ``analytic:`` options.
    """
    from .models import ModelLoadError

    try:
        am = build_analytic(model)
    except ValueError as exc:
        raise ModelLoadError(f"Could not build the analytic model {model!r}: {exc}") from None
    return components_of(am, am.spec.label(), device, dtype)


def components_of(am: AnalyticModel, model_id: str, device: str = "auto", dtype: str = "auto"):
    """An :class:`AnalyticModel`'s parts as :class:`~gr_gdmcom.codec.models.Components`."""
    from .models import Components, resolve_device, resolve_dtype
    from .schedule import SD_SCHEDULER

    dev = resolve_device(device)
    return Components(vae=am.vae, unet=am.unet, text_encoder=am.text_encoder, tokenizer=am.tokenizer,
                      scheduler_config=dict(SD_SCHEDULER), device=dev, dtype=resolve_dtype(dtype, dev),
                      model_id=model_id)
