"""Latent rate-distortion on the analytic prior (docs/rate.md): latent MSE of the decoded
``z_0'`` against the exact ``z_0`` for BCR 1/96 .. 1/768 (reduce 1, 2, 4, 8), the reduction
methods (subset, pool, dct), with and without mean removal, over SNR; and the effective SNR gain
of mean removal.

    PYTHONPATH=. python benchmarks/rate_distortion.py [--samples 16] [--snrs 0 5 7 10 15 20]
    PYTHONPATH=. python benchmarks/rate_distortion.py --samples 16 --snrs 7 10 --remove-mean off  # the target
    PYTHONPATH=. python benchmarks/rate_distortion.py --gain-only --model tiny   # mean-removal gain, bundled images

Prints one JSON object per line and a Markdown table.  No timed assertions: a figure generator.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.codec.analytic import build_analytic
from gr_gdmcom.codec.models import load_components
from gr_gdmcom.codec.rate import Reduction, mean_gain_db
from gr_gdmcom.config import REDUCE_METHODS, CodecConfig
from gr_gdmcom.eval.validate import LatentLink
from gr_gdmcom.eval.validate_rate import measure, oracle_floor


def image_gains(model: str) -> None:
    """Mean-removal gain ``10 log10(P / (P - mean(mu^2)))`` of ``z_k`` for the bundled images."""
    from pathlib import Path

    codec = GenerativeCodec(CodecConfig(model=model, remove_mean=True))
    for path in sorted((Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data").glob("*.png")):
        meta = codec.encode(str(path)).meta
        p_full = meta.power + float(np.mean(np.square(meta.means)))
        print(json.dumps(dict(what="mean_gain_db", model=model, image=path.stem, means=[round(m, 3) for m in meta.means],
                              power=round(p_full, 4), power_centred=round(meta.power, 4),
                              gain_db=round(10 * np.log10(p_full / meta.power), 3))), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="analytic")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.0, 5.0, 7.0, 10.0, 15.0, 20.0])
    ap.add_argument("--reduce", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--methods", nargs="+", default=list(REDUCE_METHODS), choices=REDUCE_METHODS)
    ap.add_argument("--remove-mean", choices=("both", "off", "on"), default="both",
                    help="rows without (off), with (on) or both ways of mean removal [default=%(default)r]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--floor-only", action="store_true",
                    help="only the oracle floor of each reduction (oracle_floor), no decoding")
    ap.add_argument("--gain-only", action="store_true",
                    help="only the mean-removal gain: on the bundled images for an image model (tiny, SD)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.gain_only and a.model != "analytic" and not a.model.startswith("analytic:"):
        return image_gains(a.model)
    am = build_analytic(a.model)
    z0 = am.sample_latents(a.samples, CodecConfig.prompt, seed=a.seed)
    base = CodecConfig(model=a.model, device="cpu", dtype="fp32", seed=a.seed)
    zk = LatentLink(load_components(a.model, device="cpu", dtype="fp32"), base).forward(z0, base.k)
    gains = [mean_gain_db(zk[b].numpy()) for b in range(zk.shape[0])]
    print(json.dumps(dict(what="mean_gain_db", model=a.model, mean=float(np.mean(gains)),
                          min=float(np.min(gains)), max=float(np.max(gains)))), flush=True)
    if a.gain_only:
        return
    if a.floor_only:
        for r in a.reduce:
            for method in a.methods if r > 1 else ():
                red = Reduction.make(method, r, z0.shape[1:])
                print(json.dumps(dict(bcr=f"1/{96 * r}", method=method,
                                      oracle_floor=round(oracle_floor(am, red, base.prompt), 5))), flush=True)
        return
    rows, floors = {}, {}
    for rm in {"both": (False, True), "off": (False,), "on": (True,)}[a.remove_mean]:
        res = measure(a.model, a.samples, a.seed, a.snrs, a.reduce, a.methods, remove_mean=rm,
                      progress=lambda *_: None)
        for row in res["rows"]:
            label = row["method"] + ("+mean" if rm else "")
            rows[(row["reduce"], label, row["snr_db"])] = row["mse"]
            floors[(row["reduce"], label)] = row["floor"]
            print(json.dumps(dict(bcr=row["bcr"], method=label, snr_db=row["snr_db"], latent_mse=round(row["mse"], 5),
                                  oracle_floor=round(row["floor"], 5))), flush=True)
    labels = sorted({(r, lab) for r, lab, _ in rows}, key=lambda x: (x[0], x[1]))
    print("\n| BCR | method | " + " | ".join(f"{s:g} dB" for s in a.snrs) + " | floor |")
    print("|---|---|" + "---|" * (len(a.snrs) + 1))
    for r, lab in labels:
        print(f"| 1/{96 * r} | {lab} | " + " | ".join(f"{rows[(r, lab, s)]:.4f}" for s in a.snrs)
              + f" | {floors[(r, lab)]:.4f} |")


if __name__ == "__main__":
    main()
