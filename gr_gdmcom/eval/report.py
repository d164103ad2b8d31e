"""Results of a sweep: the row file, the summary (means with t-based 95 %
confidence intervals), markdown tables and matplotlib figures.

Everything here reads plain rows (dicts of strings, as in ``rows.csv``), so a
summary can be rebuilt from the CSV alone at any time.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..config import FULL_BCR
from .metrics import FULL_SCALES_SIDE

#: rows.csv columns, in order.  Empty cell = not applicable or not available (never 0 in its place).
ROW_FIELDS = [
    "image", "file", "image_sha256", "width", "height", "snr_db", "method", "setting", "channel", "snr_est_db",
    "n_steps", "rule", "symbols", "bcr", "bcr_nominal", "psnr", "ms_ssim", "ms_ssim_scales", "lpips", "dists", "pieapp",
    "decode_success", "seconds", "tx_seconds", "rx_seconds", "unet_calls", "detail", "fidelity", "error",
    "output",
]
#: per-image metrics, in the order of the tables
ROW_METRICS = ["psnr", "ms_ssim", "lpips", "dists", "pieapp"]
SET_METRICS = ["fid", "kid"]
METRIC_INFO = {  # label, unit, higher is better
    "psnr": ("PSNR", "dB", True),
    "ms_ssim": ("MS-SSIM", "", True),
    "lpips": ("LPIPS", "", False),
    "dists": ("DISTS", "", False),
    "pieapp": ("PieAPP", "", False),
    "fid": ("FID", "", False),
    "kid": ("KID", "", False),
}
#: Patches per set below which a set metric's value cannot be read as FID or KID (docs/evaluation.md).
#: FID fits a Gaussian to each set's 2048 Inception features: with fewer samples than features the
#: covariance estimate is singular (rank n - 1), and the value is biased by the sample count -- the FID
#: authors' code (TTUR) asks for more samples than 2048 and recommends 10 000; torchmetrics only
#: refuses fewer than 2.  KID is unbiased, but torch-fidelity's KID draws subsets of 1000 and refuses
#: fewer samples; learned.py takes subsets of min(1000, n), so below 1000 each subset is the whole set,
#: the reported std is 0 by construction and the value has no spread estimate.
SET_MIN_SAMPLES = {"fid": 2048, "kid": 1000}
METHOD_ORDER = ["proposed", "proposed_caption", "proposed_fixed_point", "proposed_clean_one", "proposed_calibrated",
                "random_noise", "sd_semcom", "digital"]
KEY_FIELDS = ("image", "snr_db", "method", "setting")


# --------------------------------------------------------------------------- rows.csv
def row_key(row: dict) -> Tuple[str, str, str, str]:
    """The resume key: image x SNR x method x setting (SNR normalised: '5' == '5.0')."""
    return (str(row["image"]), snr_text(row["snr_db"]), str(row["method"]), str(row["setting"]))


def snr_text(v) -> str:
    return f"{float(v):g}"


def read_rows(path: Path) -> List[dict]:
    """Rows of ``rows.csv``; a torn last line (interrupted write) is dropped and the
    file is rewritten clean, and a file with an older column set is rewritten with
    the current columns (missing cells empty)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    text = path.read_text(encoding="utf-8")
    torn = not text.endswith("\n")
    if torn:
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    rows = []
    for r in reader:
        if None in r or any(v is None for v in r.values()):  # a short or over-long row
            torn = True
            continue
        if not all(r.get(k) for k in ("image", "snr_db", "method")):
            torn = True
            continue
        rows.append({k: r.get(k, "") for k in ROW_FIELDS})
    if torn or header != ROW_FIELDS:
        write_rows(path, rows)
    return rows


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Write all rows atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: fmt_cell(r.get(k)) for k in ROW_FIELDS})
    os.replace(tmp, path)


class RowWriter:
    """Appends rows to ``rows.csv`` one at a time, flushed and fsynced, so an
    interrupted sweep loses at most the row being written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.f = open(self.path, "a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        if new:
            self.w.writeheader()
            self.f.flush()

    def write(self, row: dict) -> dict:
        cells = {k: fmt_cell(row.get(k)) for k in ROW_FIELDS}
        self.w.writerow(cells)
        self.f.flush()
        try:
            os.fsync(self.f.fileno())
        except OSError:
            pass
        return cells

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.7g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}={fmt_cell(x)}" for k, x in v.items() if x not in (None, ""))
    return str(v)


def num(v) -> Optional[float]:
    """A cell as float, None when empty or not a number."""
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], level: float = 0.95) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, half-width of the t-based ``level`` confidence interval, n).

    The half-width is ``t_{(1+level)/2, n-1} * s / sqrt(n)`` with the sample
    standard deviation ``s``; None when n < 2.  Empty input gives (None, None, 0).
    """
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(v))
    if n < 2 or not np.all(np.isfinite(v)):
        return mean, None, n
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1) * np.std(v, ddof=1) / math.sqrt(n))
    return mean, half, n


def group_key(row: dict) -> Tuple[str, str, float]:
    return (row["method"], row["setting"], float(row["snr_db"]))


def _method_rank(m: str) -> int:
    return METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)


def summarize(rows: Sequence[dict], set_scores: Optional[Dict[tuple, dict]] = None) -> List[dict]:
    """One summary row per (method, setting, SNR).

    Per-image metrics: ``<m>_mean``, ``<m>_ci95`` (half-width), ``<m>_n``.
    Rows with an ``error`` are counted in ``n_errors`` and left out of the
    means.  ``set_scores[(method, setting, snr_text)]`` adds FID/KID.
    """
    groups: Dict[tuple, List[dict]] = {}
    first: Dict[tuple, int] = {}  # settings keep the order in which they were run
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
        first.setdefault((r["method"], r["setting"]), len(first))
    out = []
    for key in sorted(groups, key=lambda k: (_method_rank(k[0]), k[0], first[k[:2]], k[2])):
        rs = groups[key]
        ok = [r for r in rs if not r.get("error")]
        s = dict(method=key[0], setting=key[1], snr_db=key[2], n_images=len(ok), n_errors=len(rs) - len(ok))
        for m in ROW_METRICS:
            mean, half, n = mean_ci([num(r.get(m)) for r in ok])
            s[f"{m}_mean"], s[f"{m}_ci95"], s[f"{m}_n"] = mean, half, n
        infinite = [r for r in ok if num(r.get("psnr")) == math.inf]  # identical to the original (MSE 0)
        s["psnr_inf"] = len(infinite)
        s["psnr_inf_undecoded"] = sum(r.get("decode_success") == "false" for r in infinite)
        finite = [num(r.get("psnr")) for r in ok if num(r.get("psnr")) is not None and math.isfinite(num(r["psnr"]))]
        s["psnr_finite_mean"] = float(np.mean(finite)) if finite else None
        succ = [r.get("decode_success") == "true" for r in ok if r.get("decode_success") in ("true", "false")]
        s["success_rate"] = (sum(succ) / len(succ)) if succ else None
        for col in ("n_steps", "symbols", "bcr", "seconds", "unet_calls"):
            vals = [num(r.get(col)) for r in ok]
            vals = [v for v in vals if v is not None]
            s[f"{col}_mean"] = float(np.mean(vals)) if vals else None
        scales = [int(num(r.get("ms_ssim_scales"))) for r in ok if num(r.get("ms_ssim_scales")) is not None]
        s["ms_ssim_scales"] = (f"{min(scales)}" if min(scales) == max(scales) else f"{min(scales)}-{max(scales)}") \
            if scales else ""
        sc = (set_scores or {}).get((key[0], key[1], snr_text(key[2])), {})
        for m in SET_METRICS:
            e = sc.get(m, {})
            s[m] = e.get("value")
            s[f"{m}_patches"] = e.get("patches")
        s["kid_std"] = sc.get("kid", {}).get("std")
        s["kid_subset"] = sc.get("kid", {}).get("subset_size")
        s["images"] = sorted({r["image"] for r in ok})  # (not in summary.csv: what the cell averages)
        fid = [r.get("fidelity", "") for r in ok if r.get("fidelity")]
        s["fidelity"] = max(set(fid), key=fid.count) if fid else ""
        out.append(s)
    return out


SUMMARY_FIELDS = (["method", "setting", "snr_db", "n_images", "n_errors"]
                  + [f"{m}_{x}" for m in ROW_METRICS for x in ("mean", "ci95", "n")]
                  + ["ms_ssim_scales", "fid", "fid_patches", "kid", "kid_std", "kid_subset", "kid_patches",
                     "success_rate", "n_steps_mean", "symbols_mean", "bcr_mean", "seconds_mean", "unet_calls_mean",
                     "fidelity"])


def write_summary_csv(path: Path, summary: Sequence[dict]) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for s in summary:
            w.writerow({k: fmt_cell(s.get(k)) for k in SUMMARY_FIELDS})
    os.replace(tmp, path)


# --------------------------------------------------------------------------- markdown
def _fmt(v: Optional[float], metric: str) -> str:
    if v is None:
        return ""
    if math.isinf(v):
        return "inf"
    if metric in ("psnr", "fid", "n_steps", "seconds", "pieapp"):
        return f"{v:.2f}"
    if metric in ("kid",):
        return f"{v:.4f}"
    return f"{v:.3f}"


def few_samples(s: dict, m: str) -> Optional[int]:
    """The patch count of set metric ``m``'s value in summary row ``s`` when it is below
    :data:`SET_MIN_SAMPLES` (the value is then not an FID/KID to compare with others), else None."""
    n = s.get(f"{m}_patches")
    if s.get(m) is None or n is None:
        return None
    n = int(num(n)) if num(n) is not None else None
    return n if n is not None and n < SET_MIN_SAMPLES[m] else None


def _set_cell(s: dict, m: str) -> str:
    """A set metric's cell: its value, marked with its patch count where it rests on too few."""
    if s.get(m) is None:
        return "–"
    few = few_samples(s, m)
    return _fmt(s.get(m), m) + (f" (n={few}†)" if few is not None else "")


def set_samples_note(summary: Sequence[dict]) -> List[str]:
    """Notes for the set metrics whose values rest on fewer patches than :data:`SET_MIN_SAMPLES`."""
    out = []
    for m in SET_METRICS:
        ns = sorted({few_samples(s, m) for s in summary} - {None})
        if not ns:
            continue
        counts = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        if m == "fid":
            why = ("fewer samples than its 2048 Inception features, so each set's covariance is singular and the "
                   "value is biased by the patch count: compare cells of the same count only, never with FIDs "
                   "published over other counts (the FID authors ask for more than 2048 samples, 10 000 "
                   "recommended)")
        else:
            why = ("fewer than the 1000 samples of torch-fidelity's KID subsets: each of the subsets is the whole "
                   "set, so the KID std is 0 by construction and says nothing about the value's spread")
        out.append(f"**{METRIC_INFO[m][0]} rests on too few patches** (n={counts} per set, marked †): {why}.")
    return out


def _cell(s: dict, m: str) -> str:
    mean, half = s.get(f"{m}_mean"), s.get(f"{m}_ci95")
    if mean is None:
        return "–"
    return _fmt(mean, m) + (f" ± {_fmt(half, m)}" if half is not None else "")


def method_labels(summary: Sequence[dict]) -> Dict[Tuple[str, str], str]:
    """Display names: the method alone when it has one setting, else ``method (setting)``."""
    settings: Dict[str, set] = {}
    for s in summary:
        settings.setdefault(s["method"], set()).add(s["setting"])
    return {(s["method"], s["setting"]): (s["method"] if len(settings[s["method"]]) == 1
                                          else f"{s['method']} ({s['setting']})") for s in summary}


def _pivot(summary: Sequence[dict]) -> Tuple[List[tuple], List[float], Dict[tuple, dict]]:
    pairs, snrs, cells = [], [], {}
    for s in summary:
        p = (s["method"], s["setting"])
        if p not in pairs:
            pairs.append(p)
        if s["snr_db"] not in snrs:
            snrs.append(s["snr_db"])
        cells[(p, s["snr_db"])] = s
    return pairs, sorted(snrs), cells


def metric_table(summary: Sequence[dict], metric: str, cell: Optional[Callable[[dict], str]] = None) -> str:
    """Markdown table: one row per method (and setting), one column per SNR."""
    pairs, snrs, cells = _pivot(summary)
    labels = method_labels(summary)
    cell = cell or (lambda s: _cell(s, metric))
    lines = ["| method | " + " | ".join(f"{x:g} dB" for x in snrs) + " |",
             "|---|" + "---|" * len(snrs)]
    for p in pairs:
        vals = [cell(cells[(p, x)]) if (p, x) in cells else "" for x in snrs]
        lines.append(f"| {labels[p]} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _n_differs(summary: Sequence[dict], metric: str) -> bool:
    """Whether the cells of ``metric``'s table average different numbers or sets of images."""
    ns = {s.get(f"{metric}_n") for s in summary if s.get(f"{metric}_n")}
    sets = {tuple(s.get("images") or ()) for s in summary if s.get(f"{metric}_n")}
    return len(ns) > 1 or len(sets) > 1


def summary_markdown(summary: Sequence[dict], info: dict) -> str:
    """The human summary.

    ``info`` keys: ``title``, ``header`` (list of lines), ``availability``
    (``{metric: {"available", "backend", "reason"}}``), ``skipped``
    (``[(file, reason)]``), ``set_note`` (FID/KID patching statement),
    ``notes`` (extra lines).
    """
    avail = info.get("availability", {})
    out = [f"# {info.get('title', 'Sweep summary')}", ""]
    out += list(info.get("header", [])) + [""]
    n_rows = sum(s["n_images"] + s["n_errors"] for s in summary)
    if not summary:
        out += ["No rows yet.", ""]
    out.append("Cells: mean ± half-width of the 95 % confidence interval (Student t, n-1 degrees of freedom) "
               "over images; no ± when n = 1. Empty cell (–): not measured; see the notes.")
    out.append("")
    for m in ROW_METRICS + SET_METRICS:
        label, unit, higher = METRIC_INFO[m]
        title = f"## {label}" + (f" ({unit})" if unit else "") + (" — higher is better" if higher else
                                                                      " — lower is better")
        has = any(s.get(f"{m}_mean") is not None or s.get(m) is not None for s in summary)
        a = avail.get(m)
        if not has:
            reason = (a or {}).get("reason") or "no value was measured"
            out += [title, "", f"**unavailable** — {reason}.", ""]
            continue
        out += [title, ""]
        if m in SET_METRICS:
            out.append(metric_table(summary, m, lambda s, m=m: _set_cell(s, m)))
        elif _n_differs(summary, m):  # cells over different images: each says how many
            out.append(metric_table(summary, m, lambda s, m=m: _cell(s, m) + (f" (n={s.get(f'{m}_n')})"
                                                                            if s.get(f"{m}_n") else "")))
        else:
            out.append(metric_table(summary, m))
        if a and not a.get("available") and a.get("reason"):
            out += ["", f"Not computed in the latest run: {a['reason']}; values shown come from earlier runs."]
        out.append("")
    out += ["## Denoising steps N (mean)", "", metric_table(summary, "n_steps", lambda s: _fmt(s.get("n_steps_mean"),
                                                                                            "n_steps") or "–"), ""]
    if any(s.get("success_rate") is not None for s in summary):
        out += ["## Decode success (fraction of images)", "",
                metric_table(summary, "success", lambda s: "–" if s.get("success_rate") is None
                             else f"{s['success_rate']:.2f}"), ""]
    out += ["## Channel uses and time", "", "| method | symbols (mean) | BCR | seconds / image (mean over SNRs) |",
            "|---|---|---|---|"]
    labels = method_labels(summary)
    seen = {}
    for s in summary:
        seen.setdefault((s["method"], s["setting"]), []).append(s)
    for p, ss in seen.items():
        sym = [s["symbols_mean"] for s in ss if s.get("symbols_mean") is not None]
        bcr = [s["bcr_mean"] for s in ss if s.get("bcr_mean") is not None]
        sec = [s["seconds_mean"] for s in ss if s.get("seconds_mean") is not None]
        out.append(f"| {labels[p]} | {np.mean(sym):.0f} | " if sym else f"| {labels[p]} | – | ")
        out[-1] += (f"1/{1 / np.mean(bcr):.1f} | " if bcr and np.mean(bcr) > 0 else "– | ")
        out[-1] += (f"{np.mean(sec):.3f} |" if sec else "– |")
    out.append("")
    out += ["## Notes", ""]
    out.append("- PSNR (numpy) and MS-SSIM (torchmetrics), gr_gdmcom.eval.metrics, on uint8 RGB at the "
               "original size. MS-SSIM clamps each scale's negative contrast-structure term at 0 "
               "(torchmetrics' normalize='relu'): an exact 0 is a real floor, not a missing value. A "
               "reconstruction with nothing of the original still scores above 0 (a flat grey image 0.097 "
               "against the astronaut, noise 0.03-0.06: the luminance term and coarse scales), so read a "
               "cliff from PSNR and the decoded count too.")
    unavailable: Dict[str, List[str]] = {}
    for m in ROW_METRICS[2:] + SET_METRICS:
        a = avail.get(m)
        if a and a.get("available"):
            out.append(f"- {METRIC_INFO[m][0]}: {a.get('backend', '')}.")
        elif a:
            unavailable.setdefault(a.get("reason", ""), []).append(METRIC_INFO[m][0])
    for reason, names in unavailable.items():
        out.append(f"- {', '.join(names)}: unavailable — {reason}; cells left empty (never zero).")
    scales = sorted({s["ms_ssim_scales"] for s in summary if s.get("ms_ssim_scales")})
    if scales:
        std = scales == ["5"]
        out.append("- MS-SSIM scales used: " + ", ".join(scales) + (" (standard)." if std else
                   f" — images with a side below {FULL_SCALES_SIDE} px use fewer than the standard 5 scales (weights "
                   "renormalised), so these values are not comparable with the paper's."))
    inf_cells = [s for s in summary if s.get("psnr_inf")]
    if inf_cells:
        parts = []
        for s in inf_cells:
            part = f"{labels[(s['method'], s['setting'])]} {s['snr_db']:g} dB: {s['psnr_inf']} of {s['psnr_n']} images"
            if s.get("psnr_inf_undecoded"):
                part += f" ({s['psnr_inf_undecoded']} of them a failed decode whose mid-grey output equals the original)"
            if s.get("psnr_finite_mean") is not None:
                part += f"; the others' mean {s['psnr_finite_mean']:.2f} dB"
            parts.append(part)
        out.append("- **PSNR = inf** where a reconstruction is identical to the original (MSE 0: a lossless decode, "
                   "e.g. of a flat image), so these cells' mean is inf: " + "; ".join(parts) + ". The PSNR plots "
                   "mark them with ▲ at their top edge; read them from the other metrics.")
    if info.get("set_note"):
        out.append("- " + info["set_note"])
    out += ["- " + line for line in set_samples_note(summary)]
    for line in info.get("notes", []):
        out.append("- " + line)
    fid_notes = {}
    for s in summary:
        if s.get("fidelity"):
            fid_notes.setdefault(labels[(s["method"], s["setting"])], s["fidelity"])
    if fid_notes:
        out.append("- Fidelity of each method:")
        for k, v in fid_notes.items():
            out.append(f"  - {k}: {v}")
    skipped = info.get("skipped", [])
    if skipped:
        out.append(f"- Skipped images ({len(skipped)}, unreadable):")
        for f, why in skipped:
            out.append(f"  - `{f}`: {why}")
    errs = sum(s["n_errors"] for s in summary)
    if errs:
        out.append(f"- {errs} rows carry an error (see the `error` column of rows.csv) and are left out of the means.")
    out.append(f"- {n_rows} rows in rows.csv.")
    return "\n".join(out) + "\n"


#: the paper's Table II (Kodak, SD 1.5, 5 dB): (k, m, N) -> PSNR, MS-SSIM, LPIPS, FID
PAPER_TABLE2 = {
    (10, 0, 10): (20.58, 0.327, 0.738, 106.79),
    (5, 5, 10): (18.58, 0.497, 0.607, 251.20),
    (10, 0, 15): (22.93, 0.830, 0.192, 54.04),
    (5, 5, 15): (22.19, 0.823, 0.187, 51.20),
    (0, 10, 15): (21.83, 0.793, 0.197, 53.07),
}


def parse_grid_label(setting: str) -> Optional[Tuple[int, int, int]]:
    """``"k10,m0,N15,norescale"`` -> (10, 0, 15); None for other settings."""
    parts = setting.split(",")
    if len(parts) < 3 or not (parts[0].startswith("k") and parts[1].startswith("m") and parts[2].startswith("N")):
        return None
    try:
        return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:])
    except ValueError:
        return None


def table2_markdown(summary: Sequence[dict], grid: Sequence[Tuple[int, int, int]]) -> str:
    """The paper's Table II layout: one row per (k, m, N), one table per SNR, and the
    paper's own numbers (5 dB) beside them."""
    wanted = {tuple(g) for g in grid}
    rows = [s for s in summary if s["method"] == "proposed" and parse_grid_label(s["setting"]) in wanted
            and "norescale" in s["setting"]]
    out = ["# Table II: transmitter / receiver inversion split (k, m) and denoising steps N", "",
           "Proposed method with N fixed and no latent rescaling (`--steps N --no-rescale`: the paper's "
           "behaviour). Cells: mean ± 95 % t-interval over images; FID over 256×256 patches.", ""]
    snrs = sorted({s["snr_db"] for s in rows})
    for x in snrs:
        out += [f"## {x:g} dB", "", "| k | m | N | PSNR↑ | MS-SSIM↑ | LPIPS↓ | FID↓ | n |", "|---|---|---|---|---|---|---|---|"]
        for g in grid:
            s = next((s for s in rows if s["snr_db"] == x and parse_grid_label(s["setting"]) == tuple(g)), None)
            if s is None:
                continue
            fid = _set_cell(s, "fid")
            out.append(f"| {g[0]} | {g[1]} | {g[2]} | {_cell(s, 'psnr')} | {_cell(s, 'ms_ssim')} | "
                       f"{_cell(s, 'lpips')} | {fid} | {s['n_images']} |")
        out.append("")
    out += ["## The paper's values (Kodak, Stable Diffusion 1.5, 5 dB)", "",
            "| k | m | N | PSNR↑ | MS-SSIM↑ | LPIPS↓ | FID↓ |", "|---|---|---|---|---|---|---|"]
    for g, v in PAPER_TABLE2.items():
        out.append(f"| {g[0]} | {g[1]} | {g[2]} | {v[0]:.2f} | {v[1]:.3f} | {v[2]:.3f} | {v[3]:.2f} |")
    notes = set_samples_note(rows)
    if notes:
        out += [""] + ["- " + n for n in notes if n.startswith("**FID")]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


#: Fewest images for which a plot draws a confidence interval (with n = 2 the Student t
#: factor is 12.7 and the interval says nothing).
MIN_CI_N = 3
#: Where each metric's values can lie; intervals are clipped to it.
METRIC_RANGE = {"psnr": (0.0, math.inf), "ms_ssim": (0.0, 1.0), "lpips": (0.0, math.inf),
                "dists": (0.0, 1.0), "pieapp": (-math.inf, math.inf), "n_steps": (0.0, math.inf)}


def error_bar(mean: float, half: Optional[float], n: Optional[int], metric: str
              ) -> Optional[Tuple[float, float]]:
    """(below, above) lengths of the error bar at ``mean``: the confidence half-width
    clipped to the metric's range, or None with fewer than :data:`MIN_CI_N` values."""
    if half is None or not n or n < MIN_CI_N or not math.isfinite(half):
        return None
    low, high = METRIC_RANGE.get(metric, (-math.inf, math.inf))
    return max(0.0, mean - max(low, mean - half)), max(0.0, min(high, mean + half) - mean)


def plot_metrics(summary: Sequence[dict], out_dir: Path) -> List[Path]:
    """``<metric>_vs_snr.{png,pdf}``: each metric against SNR, one line per method
    (error bars: 95 % CI within the metric's range, none with fewer than 3 images),
    as the paper's Fig. 2.  Metrics without values are skipped."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = method_labels(summary)
    pairs, snrs, cells = _pivot(summary)
    written = []
    for m in ROW_METRICS + SET_METRICS + ["n_steps"]:
        label = METRIC_INFO.get(m, ("denoising steps N", "", True))
        key = m if m in SET_METRICS else f"{m}_mean"
        if not any(s.get(key) is not None for s in summary):
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        marks = []
        for p in pairs:
            xs, ys, lo, hi, ns, infs = [], [], [], [], [], []
            for x in snrs:
                s = cells.get((p, x))
                if s is None or s.get(key) is None:
                    continue
                if not math.isfinite(s[key]):
                    infs.append((x, s[key]))
                    continue
                xs.append(x)
                ys.append(s[key])
                bar = error_bar(s[key], s.get(f"{m}_ci95"), s.get(f"{m}_n"), m)
                lo.append(bar[0] if bar else 0.0)
                hi.append(bar[1] if bar else 0.0)
                ns.append(s.get(f"{m}_n"))
            few = sorted({n for n in ns if n is not None and n < MIN_CI_N})
            label_p = labels[p] + (f" (n={','.join(map(str, few))}: no interval)" if few else "")
            if infs:
                label_p += f" (▲ {'inf' if infs[0][1] > 0 else '-inf'} at {', '.join(f'{x:g}' for x, _ in infs)} dB)"
            _draw_line(ax, xs, ys, lo, hi, infs, label_p, marks)
        _mark_infinite(ax, marks)
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel(label[0] + (f" ({label[1]})" if label[1] else "") +
                      ("" if m == "n_steps" else (" ↑" if label[2] else " ↓")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written += _save_figure(fig, out_dir / f"{m}_vs_snr")
    return written


def _draw_line(ax, xs, ys, lo, hi, infs, label: str, marks: list) -> None:
    """One line of a metric plot: its finite points with error bars (``lo``/``hi``: none where
    all 0), and its infinite points ``infs`` ((x, value)) added to ``marks`` in the line's colour
    for :func:`_mark_infinite` (a line with only such points gets a legend entry of its own)."""
    color = None
    if xs:
        color = ax.errorbar(xs, ys, yerr=[lo, hi] if any(lo) or any(hi) else None, marker="o", capsize=3,
                            label=label).lines[0].get_color()
    elif infs:
        color = ax.plot([], [], marker="^", linestyle="none", label=label)[0].get_color()
    if infs:
        marks.append((color, infs))


def _mark_infinite(ax, marks) -> None:
    """Points whose mean is infinite (PSNR of a reconstruction identical to its original) as ▲
    (▼ for -inf) on the axes' top (bottom) edge, in their line's colour, instead of leaving them out."""
    if not marks:
        return
    low, high = ax.get_ylim()
    left, right = ax.get_xlim()
    for color, pts in marks:
        for x, v in pts:
            ax.plot([x], [high if v > 0 else low], marker="^" if v > 0 else "v", markersize=9, color=color,
                    linestyle="none", clip_on=False, zorder=5)
            # the label inside the panel: right of the mark in its left half, left of it in its right half
            # (at the last SNR it ran past the figure's edge)
            flip = (x - left) / (right - left) > 0.5 if right != left else False
            ax.annotate("inf" if v > 0 else "-inf", (x, high if v > 0 else low), textcoords="offset points",
                        xytext=(-6 if flip else 6, -10 if v > 0 else 4), fontsize=7, color=color,
                        ha="right" if flip else "left")
    ax.set_ylim(low, high)


#: the part of a setting label naming a reduced BCR (``eval.baselines.bcr_suffix``): ``,bcr=1/384[:pool]``
BCR_IN_SETTING = re.compile(r",bcr=1/(\d+)(?::(\w+))?")


def split_bcr(setting: str) -> Tuple[str, int, str]:
    """``(setting without its BCR part, BCR denominator, reduce method)``; a setting without
    one is the whole latent: ``(setting, 96, "")``."""
    m = BCR_IN_SETTING.search(setting)
    if not m:
        return setting, FULL_BCR.denominator, ""
    return setting[:m.start()] + setting[m.end():], int(m.group(1)), m.group(2) or ""


def bcr_lines(summary: Sequence[dict]) -> Dict[Tuple[str, str, str], Dict[Tuple[int, float], dict]]:
    """Summary rows as lines over BCR: ``{(method, setting without BCR, reduce method):
    {(BCR denominator, SNR): summary row}}``; a method's whole-latent rows start each of its
    reduced lines (and make a line of their own only where it has none)."""
    lines: Dict[Tuple[str, str, str], Dict[Tuple[int, float], dict]] = {}
    for s in summary:
        fam, den, how = split_bcr(s["setting"])
        lines.setdefault((s["method"], fam, how), {})[(den, s["snr_db"])] = s
    for key in [k for k in lines if k[2] == ""]:
        reduced = [k for k in lines if k[:2] == key[:2] and k[2]]
        for k in reduced:
            lines[k] = {**lines[key], **lines[k]}
        if reduced:
            del lines[key]
    return lines


def bcr_panels(snrs: Sequence[float], dens: Sequence[int], ylabel: str, draw: Callable, legend_size: int = 7):
    """A figure with one panel per SNR, BCR (``1/den``, log scale) on x: ``draw(ax, snr)`` draws
    each panel's lines; axes, titles and the legend (first panel) are set here."""
    plt = _plt()
    cols = min(len(snrs), 3)
    rows = -(-len(snrs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, snr in zip(axes.flat, snrs):
        draw(ax, snr)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1.0 / d for d in dens], [f"1/{d}" for d in dens])
        ax.minorticks_off()
        ax.set_title(f"SNR {snr:g} dB", fontsize=9)
        ax.set_xlabel("BCR (channel uses / source values)")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(snrs):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=legend_size)
    fig.tight_layout()
    return fig


def plot_metrics_vs_bcr(summary: Sequence[dict], out_dir: Path) -> List[Path]:
    """``<metric>_vs_bcr.{png,pdf}``: each metric against the nominal BCR (log scale), one panel
    per SNR, one line per method (and setting, and reduction method); error bars as in
    :func:`plot_metrics`.  Nothing when the summary holds a single BCR."""
    lines = bcr_lines(summary)
    dens = sorted({den for pts in lines.values() for den, _ in pts})
    if len(dens) < 2:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snrs = sorted({s["snr_db"] for s in summary})
    fams: Dict[str, set] = {}
    for method, fam, _ in lines:
        fams.setdefault(method, set()).add(fam)
    names = {k: k[0] + (f" {k[2]}" if k[2] else "") + (f" ({k[1]})" if len(fams[k[0]]) > 1 else "") for k in lines}
    written = []
    for m in ROW_METRICS + SET_METRICS:
        label = METRIC_INFO[m]
        key = m if m in SET_METRICS else f"{m}_mean"
        if not any(s.get(key) is not None for s in summary):
            continue

        marks_at = {}  # axes -> infinite points, marked once every panel is drawn (their y axis is shared)

        def draw(ax, snr):
            marks = marks_at.setdefault(ax, [])
            for k, pts in lines.items():
                xs, ys, lo, hi, infs = [], [], [], [], []
                for den in dens:
                    s = pts.get((den, snr))
                    if s is None or s.get(key) is None:
                        continue
                    if not math.isfinite(s[key]):  # (PSNR of identical images: marked, as in plot_metrics)
                        infs.append((1.0 / den, s[key]))
                        continue
                    bar = error_bar(s[key], s.get(f"{m}_ci95"), s.get(f"{m}_n"), m)
                    xs.append(1.0 / den)
                    ys.append(s[key])
                    lo.append(bar[0] if bar else 0.0)
                    hi.append(bar[1] if bar else 0.0)
                label_k = names[k] + (f" (▲ {'inf' if infs[0][1] > 0 else '-inf'})" if infs else "")
                _draw_line(ax, xs, ys, lo, hi, infs, label_k, marks)

        fig = bcr_panels(snrs, dens, label[0] + (f" ({label[1]})" if label[1] else "") + (" ↑" if label[2] else " ↓"),
                         draw)
        for ax, marks in marks_at.items():
            _mark_infinite(ax, marks)
        written += _save_figure(fig, out_dir / f"{m}_vs_bcr")
    return written


def _save_figure(fig, stem: Path) -> List[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf`` and close it."""
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    _plt().close(fig)
    return paths


def _grid_inputs(rows: Sequence[dict], originals: Dict[str, np.ndarray], max_images: int):
    """What both image figures draw: the rows with an image, the first ``max_images``
    images (sorted), the (method, setting) pairs in method order, each pair's label
    (the setting shown only where a method has several) and the rows by
    (image, SNR text, method, setting)."""
    ok = [r for r in rows if not r.get("error") and r.get("output")]
    images = sorted({r["image"] for r in ok if r["image"] in originals})[:max_images]
    pairs = []
    for r in sorted(ok, key=lambda r: _method_rank(r["method"])):  # stable: settings in run order
        if (r["method"], r["setting"]) not in pairs:
            pairs.append((r["method"], r["setting"]))
    settings: Dict[str, set] = {}
    for m, s in pairs:
        settings.setdefault(m, set()).add(s)
    names = {p: p[0] if len(settings[p[0]]) == 1 else f"{p[0]}\n{p[1]}" for p in pairs}
    by = {(r["image"], snr_text(r["snr_db"]), r["method"], r["setting"]): r for r in ok}
    return ok, images, pairs, names, by


def _draw_tile(ax, r: Optional[dict], results_dir: Path, second: str = "lpips") -> None:
    """One reconstruction in ``ax`` with "PSNR / <second metric>" under it ("n/a" for a
    value the row lacks; "not decoded" where the digital chain failed and sent its
    mid-grey image), or "not run" / "image missing"."""
    from PIL import Image

    if r is None:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        return
    path = Path(r["output"])
    path = path if path.is_absolute() else Path(results_dir) / path
    try:
        ax.imshow(np.asarray(Image.open(path).convert("RGB")))
    except OSError:
        ax.text(0.5, 0.5, "image missing", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ps, v = num(r.get("psnr")), num(r.get(second))
    label = {"lpips": "LPIPS", "ms_ssim": "MS-SSIM"}[second]
    if str(r.get("decode_success")).lower() in ("false", "0"):
        ax.text(0.5, 0.5, "not decoded\n(mid-grey)", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_xlabel((f"{ps:.2f} dB / " if ps is not None else "n/a / ")
                  + (f"{label} {v:.{4 if second == 'lpips' else 3}f}" if v is not None else f"{label} n/a"),
                  fontsize=7)


def _no_ticks(axes) -> None:
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])


def plot_image_grids(rows: Sequence[dict], originals: Dict[str, np.ndarray], out_dir: Path,
                     results_dir: Path, max_images: int = 3) -> List[Path]:
    """``grid_snr<DB>.{png,pdf}``: per SNR, one row per image (at most ``max_images``),
    columns original + each method, PSNR and LPIPS (or "n/a") under each tile (Fig. 3)."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok, images, pairs, names, by = _grid_inputs(rows, originals, max_images)
    written = []
    for snr in sorted({float(r["snr_db"]) for r in ok}):
        st = snr_text(snr)
        if not images or not any((im, st) + p in by for im in images for p in pairs):
            continue
        nc, nr = 1 + len(pairs), len(images)
        fig, axes = plt.subplots(nr, nc, figsize=(2.1 * nc, 2.4 * nr), squeeze=False)
        for i, im in enumerate(images):
            ax = axes[i][0]
            ax.imshow(originals[im])
            ax.set_title("original" if i == 0 else "", fontsize=8)
            ax.set_xlabel(im, fontsize=7)
            for j, p in enumerate(pairs, start=1):
                if i == 0:
                    axes[i][j].set_title(names[p], fontsize=7)
                _draw_tile(axes[i][j], by.get((im, st) + p), results_dir)
        _no_ticks(axes)
        fig.suptitle(f"SNR {st} dB (PSNR / LPIPS under each tile)", fontsize=9)
        fig.tight_layout()
        written += _save_figure(fig, out_dir / f"grid_snr{st}")
    return written


def strip_name(image: str) -> str:
    """File stem of :func:`plot_snr_strips`' figure for the image labelled ``image`` (a
    file stem, or the whole file name where two stems collide: ``pipeline.image_names``):
    ``snr_<label>``, every run of characters outside ``A-Z a-z 0-9 _ -`` (the dot
    included) as one ``_``: ``snr_kodim01``, ``snr_a_jpg``."""
    return "snr_" + (re.sub(r"[^A-Za-z0-9_-]+", "_", image).strip("_") or "image")


def plot_snr_strips(rows: Sequence[dict], originals: Dict[str, np.ndarray], out_dir: Path,
                    results_dir: Path, max_images: int = 3) -> List[Path]:
    """``snr_<image>.{png,pdf}``: for each of the first ``max_images`` images, one row per
    method (and setting) and one column per SNR, the original at the left of the first
    row: how each method degrades as the SNR falls (graceful against the digital
    baseline's cliff).  PSNR and MS-SSIM (LPIPS where measured) under each tile.
    Nothing with a single SNR (the per-SNR grid shows it)."""
    plt = _plt()
    out_dir = Path(out_dir)
    ok, images, pairs, names, by = _grid_inputs(rows, originals, max_images)
    snrs = sorted({float(r["snr_db"]) for r in ok})
    if len(snrs) < 2:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    second = "lpips" if any(num(r.get("lpips")) is not None for r in ok) else "ms_ssim"
    written, stems = [], set()
    for im in images:
        stem = base = strip_name(im)
        n = 2
        while stem in stems:  # labels "a b" and "a_b" (a counter: a fixed suffix could be taken too, forever)
            stem, n = f"{base}_{n}", n + 1
        stems.add(stem)
        nr, nc = len(pairs), 1 + len(snrs)
        fig, axes = plt.subplots(nr, nc, figsize=(2.0 * nc, 2.25 * nr + 0.4), squeeze=False)
        for i, p in enumerate(pairs):
            ax = axes[i][0]
            if i == 0:
                ax.imshow(originals[im])
                ax.set_title("original", fontsize=8)
                ax.set_xlabel(im, fontsize=7)
            else:
                ax.axis("off")
            ax.text(-0.08, 0.5, names[p], ha="right", va="center", rotation=90, fontsize=8,
                    transform=axes[i][1].transAxes)
            for j, snr in enumerate(snrs, start=1):
                if i == 0:
                    axes[i][j].set_title(f"{snr_text(snr)} dB", fontsize=8)
                _draw_tile(axes[i][j], by.get((im, snr_text(snr)) + p), results_dir, second)
        _no_ticks(axes)
        label = "LPIPS" if second == "lpips" else "MS-SSIM"
        fig.suptitle(f"{im}: each method against SNR (PSNR / {label} under each tile)", fontsize=9)
        fig.tight_layout()
        written += _save_figure(fig, out_dir / stem)
    return written
