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
import zlib

import numpy as np
import torch

from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.codec.analytic import build_analytic
from gr_gdmcom.codec.core import Encoded, LatentMeta, latent_to_symbols
from gr_gdmcom.codec.models import load_components
from gr_gdmcom.codec.rate import Reduction, mean_gain_db
from gr_gdmcom.config import REDUCE_METHODS, CodecConfig
from gr_gdmcom.phy.channel import awgn


def transmit(codec: GenerativeCodec, zk: np.ndarray, name: str) -> Encoded:
    """The codec's transmitter step 3 on a latent (C, h, w), as ``_encode_batch`` does."""
    cfg = codec.config
    sym, alpha, means, red = latent_to_symbols(zk, cfg)
    c, h, w = zk.shape
    meta = LatentMeta(alpha=alpha, latent_shape=(c, h, w), image_size=(8 * h, 8 * w), k=cfg.k, T=cfg.T,
                      guidance=cfg.guidance, prompt=cfg.prompt, name=name, means=means,
                      reduce=red.factor, reduce_method=red.method)
    return Encoded(sym, meta)


def latent_mse(codec: GenerativeCodec, z0: torch.Tensor, zk: torch.Tensor, snr_db: float, seed: int = 0) -> float:
    items = []
    for b in range(zk.shape[0]):
        enc = transmit(codec, zk[b].numpy(), f"z{b}")
        rng = np.random.default_rng([seed, b, zlib.crc32(f"{snr_db}".encode())])
        items.append((awgn(enc.symbols, snr_db, rng), enc.meta, snr_db))
    out = np.stack(codec.decode_latents(items))
    return float(np.mean((out - z0.numpy()) ** 2))


def oracle_floor(am, red: Reduction, prompt: str) -> float:
    """Latent MSE per value that no receiver beats when it measures ``y = A z_0`` exactly and also
    knows the mixture component: ``sum_k w_k trace(S_k - S_k A^T (A S_k A^T)^-1 A S_k) / D`` with
    ``S_k`` the component's covariance and ``w_k`` the prompt's weights (the Gaussian conditional
    error, a lower bound on the mixture's).  The codec's ``y`` is ``A z_k`` through the channel:
    higher still."""
    D = am.gmm.D
    a = red.apply(torch.eye(D, dtype=torch.float64).reshape(D, *red.shape))  # (D, rows): column j is row j of A
    w = torch.softmax(am.log_weights(prompt).double(), 0)
    out = 0.0
    for k in range(am.gmm.K):
        if w[k] < 1e-12:
            continue
        s = am.gmm.covariance(k).double()
        sa = s @ a
        out += float(w[k]) * float(torch.trace(s - sa @ torch.linalg.solve(a.T @ sa, sa.T))) / D
    return out


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
    comps = load_components(a.model, device="cpu", dtype="fp32")
    base = CodecConfig(model=a.model, device="cpu", dtype="fp32", seed=a.seed)
    am = build_analytic(a.model)
    z0 = am.sample_latents(a.samples, base.prompt, seed=a.seed).float()
    codec0 = GenerativeCodec(base, components=comps)
    zk = codec0.invert(z0, 0, base.k, base.prompt, base.guidance)[0]
    gains = [mean_gain_db(zk[b].numpy()) for b in range(zk.shape[0])]
    print(json.dumps(dict(what="mean_gain_db", model=a.model, mean=float(np.mean(gains)),
                          min=float(np.min(gains)), max=float(np.max(gains)))), flush=True)
    if a.gain_only:
        return
    floors = {}
    for r in a.reduce:
        for method in (["subset"] if r == 1 else a.methods):
            floors[(r, method)] = oracle_floor(am, Reduction.make(method, r, z0.shape[1:]), base.prompt)
            print(json.dumps(dict(bcr=f"1/{96 * r}", method="full" if r == 1 else method,
                                  oracle_floor=round(floors[(r, method)], 5))), flush=True)
    if a.floor_only:
        return
    rows = {}
    for r in a.reduce:
        for method in (["subset"] if r == 1 else a.methods):
            for rm in {"both": (False, True), "off": (False,), "on": (True,)}[a.remove_mean]:
                codec = GenerativeCodec(base.replace(reduce=r, reduce_method=method, remove_mean=rm), components=comps)
                for snr in a.snrs:
                    mse = latent_mse(codec, z0, zk, snr, a.seed)
                    label = ("full" if r == 1 else method) + ("+mean" if rm else "")
                    rows[(r, label, snr)] = mse
                    floors[(r, label)] = floors[(r, method)]
                    print(json.dumps(dict(bcr=f"1/{96 * r}", method=label, snr_db=snr, latent_mse=round(mse, 5))),
                          flush=True)
    labels = sorted({(r, lab) for r, lab, _ in rows}, key=lambda x: (x[0], x[1]))
    print("\n| BCR | method | " + " | ".join(f"{s:g} dB" for s in a.snrs) + " | floor |")
    print("|---|---|" + "---|" * (len(a.snrs) + 1))
    for r, lab in labels:
        print(f"| 1/{96 * r} | {lab} | " + " | ".join(f"{rows[(r, lab, s)]:.4f}" for s in a.snrs)
              + f" | {floors[(r, lab)]:.4f} |")


if __name__ == "__main__":
    main()
