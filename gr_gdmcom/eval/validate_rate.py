"""Latent rate-distortion on the analytic prior (``gdmcom validate --rate``; docs/rate.md).

Latent MSE of the decoded ``z_0'`` against the exact ``z_0`` for each BCR (reduction
factor ``r``, BCR ``1/(96 r)``) and reduction method (codec/rate.py) over SNR, through
the codec's own transmitter and receiver at the latent level
(:class:`gr_gdmcom.eval.validate.LatentLink`, numpy AWGN, receiver told the true SNR),
beside each reduction's **oracle floor** (:func:`oracle_floor`): the MSE that no receiver
beats even when it measures ``A z_0`` without noise and knows the mixture component.

Writes the section of docs/validation.md between :data:`BEGIN` and :data:`END` (replacing it
in place, as ``--real-images`` does its own; a full ``gdmcom validate`` keeps it) and the figure
:data:`FIGURE` beside the report: latent MSE against BCR, one panel per SNR.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

BEGIN = "<!-- rate:begin (gdmcom validate --rate) -->"
END = "<!-- rate:end -->"
#: the figure, written next to the report (``img/`` beside docs/validation.md)
FIGURE = Path("img") / "rate_latent_mse.png"
SNRS = (0.0, 5.0, 7.0, 10.0, 15.0, 20.0)
REDUCTIONS = (1, 2, 4, 8)
SAMPLES = 16
COMMAND = "gdmcom validate --rate --out docs/validation.md"


def oracle_floor(am, red, prompt: str) -> float:
    """Latent MSE per value that no receiver beats when it measures ``y = A z_0`` exactly and
    also knows the mixture component: ``sum_k w_k trace(S_k - S_k A^T (A S_k A^T)^-1 A S_k) / D``
    (``S_k`` the component's covariance, ``w_k`` the prompt's weights) -- the Gaussian conditional
    error given the component, a lower bound on the mixture's.  The codec's ``y`` is ``A z_k``
    through the channel: its MSE is higher still.

    Args:
        am: :class:`gr_gdmcom.codec.analytic.AnalyticModel` (one tile: ``red.shape`` its latent shape).
        red: :class:`gr_gdmcom.codec.rate.Reduction`.
        prompt: selects the mixture weights (the conditional model the test latents come from).
    """
    D = am.gmm.D
    at = red.apply(torch.eye(D, dtype=torch.float64).reshape(D, *red.shape))  # (D, rows): A^T
    w = torch.softmax(am.log_weights(prompt).double(), 0)
    out = 0.0
    for k in range(am.gmm.K):
        if float(w[k]) < 1e-12:
            continue
        s = am.gmm.covariance(k).double()
        sa = s @ at
        out += float(w[k]) * float(torch.trace(s - sa @ torch.linalg.solve(at.T @ sa, sa.T))) / D
    return out


def measure(model: str = "analytic", samples: int = SAMPLES, seed: int = 0, snrs: Sequence[float] = SNRS,
            reductions: Sequence[int] = REDUCTIONS, methods: Optional[Sequence[str]] = None,
            remove_mean: bool = False, progress=print) -> dict:
    """Latent MSE per (BCR, method, SNR) and each reduction's oracle floor.

    Returns:
        ``dict(rows=[{reduce, bcr, method, snr_db, mse, se, floor}], ...)``; ``method`` is
        ``full`` at BCR 1/96.
    """
    from ..codec import load_components
    from ..codec.analytic import build_analytic
    from ..codec.rate import Reduction
    from ..config import REDUCE_METHODS, CodecConfig, bcr_text
    from ..phy import awgn
    from ..sim import channel_rng
    from .validate import LatentLink, per_item_mse, summarize

    t0 = time.perf_counter()
    methods = list(methods or REDUCE_METHODS)
    am = build_analytic(model)
    comps = load_components(model, device="cpu", dtype="fp32")
    base = CodecConfig(model=model, device="cpu", dtype="fp32", seed=seed, remove_mean=remove_mean)
    z0 = am.sample_latents(samples, base.prompt, seed=seed)
    zk = LatentLink(comps, base).forward(z0, base.k)
    rows = []
    for r in reductions:
        for method in (["full"] if r == 1 else methods):
            link = LatentLink(comps, base.replace(reduce=r, reduce_method="subset" if r == 1 else method))
            txs = link.transmit(zk, base.k)
            floor = oracle_floor(am, Reduction.make(method, r, txs[0].meta.latent_shape), base.prompt) if r > 1 else 0.0
            for snr in snrs:
                items = [(awgn(tx.symbols, snr, channel_rng(seed, tx.meta.name, snr)), tx.meta, float(snr))
                         for tx in txs]
                out = torch.from_numpy(np.stack(link.codec.decode_latents(items)))
                s = summarize(per_item_mse(out, z0))
                rows.append(dict(reduce=int(r), bcr=bcr_text(r), method=method, snr_db=float(snr), mse=s["mean"],
                                 se=s["se"], floor=floor))
                progress(f"[rate] BCR {bcr_text(r)} {method} {snr:g} dB: latent MSE {s['mean']:.4f}")
    return dict(rows=rows, model=am.spec.label(), samples=int(samples), seed=int(seed), snrs=[float(s) for s in snrs],
                reductions=[int(r) for r in reductions], methods=methods, remove_mean=bool(remove_mean),
                seconds=time.perf_counter() - t0)


def _row(res: dict, r: int, method: str, snr: float) -> Optional[dict]:
    for row in res["rows"]:
        if (row["reduce"], row["method"], row["snr_db"]) == (r, method, snr):
            return row
    return None


def target(res: dict, snr: float = 10.0, reduce: int = 2, minus_db: float = 3.0) -> Optional[dict]:
    """Issue 12's target: the best method at BCR 1/(96 reduce) and ``snr`` against the whole
    latent at ``snr - minus_db`` (half the energy per image). None when not measured."""
    full = _row(res, 1, "full", snr - minus_db)
    cands = [row for row in res["rows"] if row["reduce"] == reduce and row["snr_db"] == snr]
    if full is None or not cands:
        return None
    best = min(cands, key=lambda row: row["mse"])
    return dict(best=best, full=full, met=best["mse"] < full["mse"], floor=min(c["floor"] for c in cands))


def plot(res: dict, path: Path) -> Path:
    """Latent MSE against BCR (log scale), one panel per SNR, one line per method (the whole
    latent starting each), the oracle floors dashed."""
    from .report import _save_figure, bcr_panels

    def draw(ax, snr):
        for i, method in enumerate(res["methods"]):
            pts = [row for row in (_row(res, r, "full" if r == 1 else method, snr) for r in res["reductions"]) if row]
            xs = [1 / (96 * row["reduce"]) for row in pts]
            ax.errorbar(xs, [row["mse"] for row in pts], yerr=[2 * row["se"] for row in pts], marker="o", capsize=3,
                        color=f"C{i}", label=method)
            ax.plot(xs, [row["floor"] for row in pts], ls="--", color=f"C{i}", alpha=0.6, label=f"{method} oracle floor")

    fig = bcr_panels(res["snrs"], [96 * r for r in res["reductions"]], "latent MSE ↓", draw, legend_size=6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_figure(fig, path.with_suffix(""))
    path.with_suffix(".pdf").unlink(missing_ok=True)  # the page shows the PNG
    return path


def section(res: dict, figure: Optional[str] = None) -> str:
    """The markdown section (between :data:`BEGIN` and :data:`END`)."""
    snrs, rs = res["snrs"], res["reductions"]
    L = [BEGIN, "", "## 7. Beyond the paper: latent rate–distortion below BCR 1/96", "",
         f"Regenerate this section with `{COMMAND}` (it replaces only this section and writes "
         f"`{FIGURE.as_posix()}`; it prints its run time). Model `{res['model']}`, {res['samples']} latents "
         f"(seed {res['seed']}), k = 5, T = 50, `snr` rule, numpy AWGN with the receiver told the true SNR, mean "
         f"removal {'on' if res['remove_mean'] else 'off'}. The transmitter sends `A z_k` for a reduction `A` with "
         "orthonormal rows (subset, pool, dct; docs/rate.md); the receiver samples the whole latent with the "
         "measurement re-imposed at each step. **floor**: the oracle floor of that reduction — the latent MSE no "
         "receiver beats even measuring `A z_0` without noise and knowing the mixture component. The figure's "
         "error bars are ±2 standard errors over the latents.", "",
         "| BCR | method | " + " | ".join(f"{s:g} dB" for s in snrs) + " | floor |",
         "|---|---|" + "---:|" * (len(snrs) + 1)]
    for r in rs:
        for method in (["full"] if r == 1 else res["methods"]):
            cells = []
            for s in snrs:
                row = _row(res, r, method, s)
                cells.append(f"{row['mse']:.4f}" if row else "–")
            floor = next((row["floor"] for row in res["rows"] if (row["reduce"], row["method"]) == (r, method)), 0.0)
            L.append(f"| 1/{96 * r} | {method} | " + " | ".join(cells) + f" | {floor:.4f} |")
    L.append("")
    t = target(res)
    if t is not None:
        b, f = t["best"], t["full"]
        L += [f"**Target (BCR 1/192 at 10 dB against the whole latent at 7 dB, half the energy per image): "
              f"{'met' if t['met'] else 'not met'}.** The best method at 1/192, {b['method']}, costs "
              f"{b['mse']:.4f} ± {b['se']:.4f}; the whole latent at 7 dB {f['mse']:.4f} ± {f['se']:.4f}. "
              + ("" if t["met"] else
                 f"No receiver could meet it with these reductions on this prior: their oracle floors at 1/192 "
                 f"(≥ {t['floor']:.4f}) already exceed {f['mse']:.4f}. Half the values unsent lose their share of "
                 "the prior's per-value (diagonal) variance whatever the SNR; the generative receiver, a sampler, "
                 "costs up to twice a floor (a posterior sample's error is twice the posterior variance)."), ""]
    if figure:
        L += [f"![latent MSE against BCR per SNR]({figure})", ""]
    L.append(END)
    return "\n".join(L) + "\n"


def write(res: dict, out: Path) -> Dict[str, Path]:
    """The section into ``out`` (replaced in place, appended when absent) and the figure beside it."""
    from .validate_images import write_section

    out = Path(out)
    fig = plot(res, out.parent / FIGURE)
    write_section(out, section(res, FIGURE.as_posix()), BEGIN, END)
    return dict(report=out, figure=fig)
