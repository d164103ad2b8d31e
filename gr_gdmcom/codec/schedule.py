"""The DDIM grid and the SNR-adaptive step rules (the paper's eq. 17; docs/codec.md).

Everything here is scheduler arithmetic: it needs no weights and runs in
microseconds, so ``gdmcom steps`` and the physical layer can use it freely.

Notation (as in docs/codec.md): the grid ``tau_1 < ... < tau_T`` uses diffusers'
"leading" spacing with ``steps_offset = 1``; ``a_j = abar_{tau_j}`` and
``a_0 = 1``.  Grid index ``j`` counts DDIM steps from the clean latent.

Clean end: the last sampling step lands on (and inversion starts from)
``a_0 = final_alpha_cumprod`` of diffusers' ``DDIMScheduler`` -- 1 when the
scheduler config says ``set_alpha_to_one=True``, ``abar_0`` (0.99915 for SD
1.5, whose shipped config says ``False``) otherwise.  The model's config
decides unless the codec's ``clean_end`` option overrides it
(:func:`scheduler_settings`).

Noise-prediction timestep convention (kept identical in encoder and decoder):
the step between grid points ``j`` and ``j+1`` always evaluates the UNet at
timestep ``tau_{j+1}`` -- inversion ``j -> j+1`` at ``e(x_j, tau_{j+1})``,
sampling ``j+1 -> j`` at ``e(x_{j+1}, tau_{j+1})`` -- so a noiseless
inversion followed by sampling returns (almost) to its start.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from ..config import check_steps

log = logging.getLogger(__name__)

#: Stable Diffusion 1.5's scheduler settings (its scheduler_config.json).
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    clip_sample=False,
    set_alpha_to_one=False,
    prediction_type="epsilon",
)

from ..config import CLEAN_ENDS  # noqa: E402  (model, one, step0)
#: model outputs the codec converts to noise (diffusers' ``prediction_type``)
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: settings the codec fixes whatever the model's config says, and why
_FORCED = dict(timestep_spacing=("leading", "the method's grid uses leading spacing"),
               clip_sample=(False, "the codec never clips the predicted clean latent"),
               thresholding=(False, "the codec never thresholds the predicted clean latent"),
               rescale_betas_zero_snr=(False, "the codec uses the training schedule's betas as they are"))
_warned: set = set()


def _warn_once(msg: str, level: int = logging.WARNING) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.log(level, "%s", msg)


def scheduler_settings(model_config: Optional[dict] = None, clean_end: str = "model") -> dict:
    """The scheduler settings the codec uses for a model: SD 1.5's defaults
    updated by the model's scheduler config, with the settings the codec fixes
    and the ``clean_end`` choice applied.  Every setting of the model's config
    that is overridden is logged (once), as diffusers' pipelines do.

    Args:
        model_config: the model's ``scheduler/scheduler_config.json`` as a dict.
        clean_end: ``model`` (the config's ``set_alpha_to_one``), ``one``
            (``a_0 = 1``) or ``step0`` (``a_0 = abar_0``).
    Returns:
        dict with the keys of ``SD_SCHEDULER``.
    """
    if clean_end not in CLEAN_ENDS:
        raise ValueError(f"unknown clean_end {clean_end!r}; choose one of {', '.join(CLEAN_ENDS)}")
    model_config = dict(model_config or {})
    cfg = dict(SD_SCHEDULER)
    cfg.update({k: v for k, v in model_config.items() if k in SD_SCHEDULER})
    for key, (value, why) in _FORCED.items():
        if key in model_config and model_config[key] != value:
            _warn_once(f"scheduler config says {key}={model_config[key]!r}; using {key}={value!r} ({why})")
        if key in cfg:
            cfg[key] = value
    if clean_end != "model":
        forced = clean_end == "one"
        if bool(cfg["set_alpha_to_one"]) != forced:
            # asked for by name (--clean-end): said, not warned (validate's comparison printed it)
            _warn_once(f"scheduler config says set_alpha_to_one={cfg['set_alpha_to_one']!r}; "
                       f"clean_end={clean_end} uses set_alpha_to_one={forced!r}", logging.INFO)
        cfg["set_alpha_to_one"] = forced
    return cfg


def make_scheduler(config: Optional[dict] = None):
    """A diffusers ``DDIMScheduler`` with SD 1.5's settings updated by ``config``
    (:func:`scheduler_settings` with the model's own clean end)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_settings(config))


@dataclass(frozen=True)
class Grid:
    """The DDIM grid of ``T`` steps.

    Attributes:
        T: number of grid steps.
        timesteps: int array, shape (T+1,): ``timesteps[j] = tau_j``;
            ``timesteps[0] = -1`` stands for the clean latent.
        alphas: float64 array, shape (T+1,): ``alphas[j] = a_j``; ``alphas[0]`` is the
            clean end, diffusers' ``final_alpha_cumprod`` (1, or ``abar[0]`` when the
            scheduler config says ``set_alpha_to_one=False``).
        abar: float64 array (num_train_timesteps,): the training schedule.
    """

    T: int
    timesteps: np.ndarray
    alphas: np.ndarray
    abar: np.ndarray

    def abar_at(self, t: float) -> float:
        """``abar`` at a continuous timestep, interpolating ``log abar`` linearly.
        ``t < 0`` is the clean latent (``abar = 1``)."""
        if t < 0:
            return 1.0
        n = len(self.abar)
        t = min(float(t), n - 1.0)
        lo = int(math.floor(t))
        hi = min(lo + 1, n - 1)
        w = t - lo
        return float(np.exp((1 - w) * np.log(self.abar[lo]) + w * np.log(self.abar[hi])))

    def t_for_abar(self, a: float) -> float:
        """Continuous timestep whose ``abar`` equals ``a`` (inverse of :meth:`abar_at`)."""
        if a >= 1.0:
            return -1.0
        la = np.log(self.abar)  # decreasing
        target = math.log(max(a, float(self.abar[-1])))
        if target >= la[0]:
            # between the clean latent (t = -1, log abar = 0) and t = 0
            return -1.0 + (0.0 - target) / (0.0 - la[0])
        i = int(np.searchsorted(-la, -target))  # first index with la <= target
        i = min(max(i, 1), len(la) - 1)
        w = (la[i - 1] - target) / (la[i - 1] - la[i])
        return float(i - 1 + w)


@lru_cache(maxsize=64)
def _grid(T: int, key: tuple) -> Grid:
    sched = make_scheduler(dict(key))
    sched.set_timesteps(T)
    taus = np.sort(sched.timesteps.numpy().astype(np.int64))  # ascending: tau_1..tau_T
    abar = sched.alphas_cumprod.numpy().astype(np.float64)
    if taus[-1] >= len(abar):  # (diffusers' own step() would index past the schedule too)
        offset = int(sched.config.get("steps_offset", 0))
        raise ValueError(f"T={T} steps reach timestep {int(taus[-1])}, beyond the model's {len(abar)} training "
                         f"steps (its scheduler's steps_offset is {offset}): T must be at most {len(abar) - offset}")
    timesteps = np.concatenate([[-1], taus])
    a0 = float(sched.final_alpha_cumprod)  # 1.0 or abar[0], exactly as DDIMScheduler.step uses it
    alphas = np.concatenate([[a0], abar[taus]])
    return Grid(T=T, timesteps=timesteps, alphas=alphas, abar=abar)


def get_grid(T: int = 50, scheduler_config: Optional[dict] = None) -> Grid:
    """The grid for ``T`` steps (cached); ``scheduler_config`` as :func:`scheduler_settings`
    takes it (SD 1.5's when None, whose clean end is ``abar_0``)."""
    cfg = scheduler_settings(scheduler_config)
    key = tuple(sorted((k, v) for k, v in cfg.items()))
    return _grid(int(T), key)


def channel_noise_var(snr_db: float, power: float = 1.0) -> float:
    """Per-real-element noise variance of the de-normalised latent,
    ``sigma_c^2 = P * sigma^2`` with ``sigma^2 = 10^(-SNR/10)`` (Es/N0, unit Es)."""
    return float(power) * 10.0 ** (-float(snr_db) / 10.0)


def total_noise_var(grid: Grid, k: int, m: int, snr_db: float, power: float = 1.0) -> float:
    """Proposition 1: ``s_tot^2 = (1 - a_{k+m}) + (a_{k+m}/a_k) sigma_c^2``."""
    a_k, a_km = grid.alphas[k], grid.alphas[k + m]
    return float((1.0 - a_km) + (a_km / a_k) * channel_noise_var(snr_db, power))


@dataclass(frozen=True)
class StepChoice:
    """How the receiver starts denoising.

    Attributes:
        n_steps: number of DDIM sampling steps N (UNet calls of the decoder's sampling).
        rule: the rule that chose it (``fixed`` when N was given).
        start_t: timestep of the first sampling step (``tau_N`` or continuous ``t*``).
        start_abar: ``abar`` at ``start_t``.
        scale: factor applied to the received latent ``z_{k+m}`` before sampling.
        s_tot2: Proposition 1's total noise variance.
    """

    n_steps: int
    rule: str
    start_t: float
    start_abar: float
    scale: float
    s_tot2: float

    def to_dict(self) -> dict:
        return dict(n_steps=self.n_steps, rule=self.rule, start_t=self.start_t,
                    start_abar=self.start_abar, scale=self.scale, s_tot2=self.s_tot2)


def select_steps(snr_db: float, k: int = 5, m: int = 5, T: int = 50, rule: str = "snr",
                 power: float = 1.0, rescale: bool = True, steps: Optional[int] = None,
                 grid: Optional[Grid] = None) -> StepChoice:
    """Choose the number of denoising steps N from the (estimated) SNR (eq. 17).

    Args:
        snr_db: Es/N0 of the received symbols in dB (an estimate in practice).
        k, m, T: transmitter / receiver inversion steps and grid size.
        rule: ``variance``: ``argmin_N |(1-a_N) - s_tot^2|``; ``snr``: match
            ``log(a/(1-a))``; ``exact``: continuous ``t*`` with
            ``abar(t*) = a_{k+m} / (a_{k+m} + s_tot^2)``.
        power: latent power ``P = 1/alpha^2`` before normalisation.
        rescale: apply ``sqrt(a_N/a_{k+m})`` for rules ``snr``/``variance``.
        steps: fixed N (rule reported as ``fixed``).
    """
    check_steps(k, m, T, steps)
    grid = grid or get_grid(T)
    if not math.isfinite(snr_db):
        raise ValueError(f"SNR must be finite, got {snr_db}")
    a = grid.alphas
    a_km = a[k + m]
    s2 = total_noise_var(grid, k, m, snr_db, power)
    cand = np.arange(k + m, T + 1)
    if steps is not None:
        n, used = int(steps), "fixed"
    elif rule == "variance":
        n, used = int(cand[np.argmin(np.abs((1.0 - a[cand]) - s2))]), rule
    elif rule == "snr":
        # Candidate 0 (k+m=0) with a_0 = 1 has log-SNR +inf, never the argmin unless s2 = 0.
        with np.errstate(divide="ignore"):
            lsnr = np.log(a[cand]) - np.log1p(-a[cand])
        n, used = int(cand[np.argmin(np.abs(lsnr - math.log(a_km / s2)))]), rule
    elif rule == "exact":
        abar_star = a_km / (a_km + s2)
        t_star = grid.t_for_abar(abar_star)
        # N: the step from t* onto the grid, plus one step per grid point below t*.
        n = int(np.sum(grid.timesteps[1:] < t_star)) + 1
        return StepChoice(n_steps=n, rule="exact", start_t=t_star, start_abar=abar_star,
                          scale=1.0 / math.sqrt(a_km + s2), s_tot2=s2)
    else:
        raise ValueError(f"unknown step rule {rule!r}")
    scale = math.sqrt(a[n] / a_km) if rescale else 1.0
    return StepChoice(n_steps=n, rule=used, start_t=float(grid.timesteps[n]),
                      start_abar=float(a[n]), scale=scale, s_tot2=s2)


def sampling_path(choice: StepChoice, grid: Grid) -> list:
    """The sampling steps as ``(t_eval, abar_from, abar_to)`` tuples, first to last.

    For grid rules the path is ``tau_N -> tau_{N-1} -> ... -> clean``; for the
    ``exact`` rule it starts at the continuous ``t*`` and joins the grid at the
    largest ``tau_j < t*``.
    """
    if choice.rule == "exact":
        below = [j for j in range(grid.T, 0, -1) if grid.timesteps[j] < choice.start_t]
        path = []
        t_from, a_from = choice.start_t, choice.start_abar
        for j in below:
            path.append((t_from, a_from, float(grid.alphas[j])))
            t_from, a_from = float(grid.timesteps[j]), float(grid.alphas[j])
        path.append((t_from, a_from, float(grid.alphas[0])))
        return path
    n = choice.n_steps
    return [(float(grid.timesteps[j]), float(grid.alphas[j]), float(grid.alphas[j - 1]))
            for j in range(n, 0, -1)]


def steps_table(snrs: Sequence[float], **kw) -> dict:
    """``{snr_db: N}`` for ``gdmcom steps``."""
    return {float(s): select_steps(float(s), **kw).n_steps for s in snrs}
