"""A calibrated step rule: the number of denoising steps N measured, not derived.

``gdmcom calibrate`` (:mod:`gr_gdmcom.eval.calibrate`) finds, at each SNR of a
grid, the N (and the rescale setting) that minimises a metric on the user's
images with this model, and fits a monotone N against the *latent* SNR

    x = SNR_dB - 10 log10(P)      (P = 1/alpha^2, the latent power; sigma_c^2 = 10^(-x/10))

so that a receiver with another image power uses the same noise level.  The fit
is an isotonic (non-increasing) regression of the optimal N on x, linearly
interpolated between the grid points and held constant beyond them; N is its
rounding, clipped to ``k + m <= N <= T``.

``--rule calibrated:cal.json`` loads the file (:func:`load_calibration`); the
codec refuses it for another model or setting (:meth:`Calibration.check`),
because the optimum depends on the denoiser, k, m, T, the guidance scale, the
prompt, the clean end and the inversion mode.

File format (JSON, ``format = "gdmcom-calibration"``, ``version = 1``): the
provenance fields below, ``points`` (the measured grid: SNR, latent SNR, optimal
N per rescale family and the metric per N), and ``fit`` (``x``, ``n``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

FORMAT = "gdmcom-calibration"
VERSION = 1
PREFIX = "calibrated:"
METRICS = ("mse", "psnr", "lpips")
#: settings a calibration is only valid for (CodecConfig field names)
SETTINGS = ("k", "m", "T", "guidance", "prompt", "clean_end", "inversion", "inversion_iters")


class CalibrationError(ValueError):
    """A calibration file that cannot be read or does not fit this codec."""


def calibration_path(rule: str) -> Optional[str]:
    """``PATH`` of a ``calibrated:PATH`` rule, else None."""
    return rule[len(PREFIX):] if isinstance(rule, str) and rule.startswith(PREFIX) else None


def isotonic_decreasing(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Least-squares non-increasing fit of ``y`` against ``x`` (scikit-learn's isotonic regression)."""
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(increasing=False).fit_transform(np.asarray(x, float), np.asarray(y, float))


@dataclass
class Calibration:
    """A measured step rule and where it comes from.

    Attributes:
        model: model id the codec reported (``Components.model_id``).
        k, m, T, guidance, prompt, clean_end, inversion, inversion_iters: the codec settings.
        metric: ``mse``, ``psnr`` or ``lpips`` (what was minimised; PSNR maximised).
        images: names of the calibration images (or ``analytic prior: n latents, seed s``).
        rescale: the rescale setting used with the fitted N (the family with the better metric).
        points: per SNR ``{snr_db, x, n_opt, n_opt_no_rescale, metric, metric_no_rescale}``
            (``metric[i]`` is the mean metric at ``N = k + m + i``).
        fit_x, fit_n: the monotone fit, latent SNR (dB) -> N (float).
    """

    model: str
    k: int
    m: int
    T: int
    guidance: float
    prompt: str
    clean_end: str
    inversion: str
    inversion_iters: int
    metric: str
    images: List[str]
    rescale: bool
    points: List[dict] = field(default_factory=list)
    fit_x: List[float] = field(default_factory=list)
    fit_n: List[float] = field(default_factory=list)
    seed: int = 0
    source: str = ""

    # -------------------------------------------------------------- use
    def n_float(self, snr_db: float, power: float = 1.0) -> float:
        """The fitted (continuous) N at Es/N0 ``snr_db`` for a latent of power ``power``."""
        x = float(snr_db) - 10.0 * math.log10(power)
        return float(np.interp(x, self.fit_x, self.fit_n))

    def n_steps(self, snr_db: float, power: float = 1.0, k: Optional[int] = None) -> int:
        """N for this SNR and latent power, clipped to ``k + m <= N <= T``."""
        lo = (self.k if k is None else k) + self.m
        return int(min(max(int(round(self.n_float(snr_db, power))), lo), self.T))

    def check(self, model: str, config, with_k: bool = True) -> "Calibration":
        """Refuse this calibration for another model or setting (``config``: a CodecConfig;
        ``with_k=False`` leaves k out, for a receiver that learns k from each image's header)."""
        names = [s for s in SETTINGS if (with_k or s != "k")
                 and (s != "inversion_iters" or "fixed-point" in (self.inversion, config.inversion))]
        mine = dict(model=self.model, **{s: getattr(self, s) for s in names})
        theirs = dict(model=model, **{s: getattr(config, s) for s in names})
        diff = [f"{key}={mine[key]!r} (here {theirs[key]!r})" for key in mine if mine[key] != theirs[key]]
        if diff:
            raise CalibrationError(f"calibration {self.source or 'file'} was measured for another setting: "
                                   + ", ".join(diff) + "; run gdmcom calibrate with this model and these settings")
        return self

    # -------------------------------------------------------------- file
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return dict(format=FORMAT, version=VERSION, **d)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path


def fit_points(points: Sequence[dict], key: str = "n_opt") -> tuple:
    """Monotone fit of ``points[i][key]`` against ``points[i]['x']``: (x, N) sorted by x."""
    pts = sorted(points, key=lambda p: p["x"])
    x = [float(p["x"]) for p in pts]
    return x, [float(v) for v in isotonic_decreasing(x, [p[key] for p in pts])]


def load_calibration(path) -> Calibration:
    """Read a calibration file; :class:`CalibrationError` with the reason when it cannot be used."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file not found: {p}") from None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read calibration file {p}: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CalibrationError(f"{p} is not a gdmcom calibration file (made by gdmcom calibrate)")
    if d.get("version") != VERSION:
        raise CalibrationError(f"{p}: calibration format version {d.get('version')!r}; this gdmcom reads {VERSION}")
    d = {key: v for key, v in d.items() if key not in ("format", "version")}
    try:
        cal = Calibration(**d, source=str(p))
    except TypeError as exc:
        raise CalibrationError(f"{p}: bad calibration file: {exc}") from None
    for name, want in _FIELD_TYPES.items():  # (a wrong type was a TypeError deep in the codec)
        value = getattr(cal, name)
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise CalibrationError(f"{p}: bad calibration file: {name} must be {_TYPE_WORDS[want]}, got {value!r}")
    if any(not _is_number(v) for v in [*cal.fit_x, *cal.fit_n]):
        raise CalibrationError(f"{p}: bad calibration file: the fit's x and n must be finite numbers")
    if len(cal.fit_x) < 1 or len(cal.fit_x) != len(cal.fit_n) or np.any(np.diff(cal.fit_x) < 0):
        raise CalibrationError(f"{p}: bad calibration file: the fit needs ascending x values with one N each")
    return cal


#: the type each field of a calibration file must have (bool is not taken for a number)
_FIELD_TYPES = dict(model=str, k=int, m=int, T=int, guidance=(int, float), prompt=str, clean_end=str, inversion=str,
                    inversion_iters=int, metric=str, images=list, rescale=bool, points=list, fit_x=list, fit_n=list,
                    seed=int)
_TYPE_WORDS = {str: "a string", int: "an integer", (int, float): "a number", list: "a list", bool: "true or false"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
