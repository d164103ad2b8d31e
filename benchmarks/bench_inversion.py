"""Noiseless round-trip error of DDIM inversion against fixed-point iterations (docs/codec.md).

k inversion steps from z_0 then k sampling steps back (m = 0, N = k), relative
error ||z_0' - z_0|| / ||z_0|| (mean over latents; median in brackets), for
``--inversion ddim`` and ``fixed-point`` with 1, 2, 3 iterations (tolerance 0),
both clean ends, guidance 1 and 6.  Also the UNet calls per inversion step.

    PYTHONPATH=. python benchmarks/bench_inversion.py --model tiny
    PYTHONPATH=. python benchmarks/bench_inversion.py --model analytic:tied=1,mean=0.02,lowrank=0.73
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from gr_gdmcom.codec import GenerativeCodec, load_components
from gr_gdmcom.codec.images import load_rgb, to_tensor
from gr_gdmcom.codec.schedule import sampling_path, select_steps
from gr_gdmcom.config import CodecConfig

VARIANTS = [("ddim", 0), ("fixed-point", 1), ("fixed-point", 2), ("fixed-point", 3)]


def latents(model: str, comp, n: int) -> torch.Tensor:
    if model.startswith("analytic"):
        from gr_gdmcom.codec.analytic import build_analytic
        return build_analytic(model).sample_latents(n, CodecConfig.prompt, seed=0)
    from PIL import Image
    imgs = [Image.open(f"gr_gdmcom/data/{f}.png").convert("RGB").resize((64, 64)) for f in ("astronaut", "coffee")]
    x = torch.cat([to_tensor(load_rgb(np.asarray(im))) for im in imgs])
    with torch.no_grad():
        return comp.vae.encode(x).latent_dist.mode().float() * float(comp.vae.config.scaling_factor)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--samples", type=int, default=64, help="analytic: latents")
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 6.0])
    ap.add_argument("--clean-end", nargs="+", default=["model", "one"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    comp = load_components(a.model, device="cpu", dtype="fp32")
    z0 = latents(a.model, comp, a.samples)
    print(f"model {a.model}, {z0.shape[0]} latents of {tuple(z0.shape[1:])}; relative error mean (median)")
    print("| clean end | w | k | " + " | ".join(f"{v}{' n=%d' % n if n else ''}" for v, n in VARIANTS) + " |")
    print("|---" * (3 + len(VARIANTS)) + "|")
    for ce in a.clean_end:
        for w in a.guidance:
            for k in a.k:
                cells = []
                for inv, n in VARIANTS:
                    c = GenerativeCodec(CodecConfig(model=a.model, device="cpu", dtype="fp32", guidance=w, k=k,
                                                    inversion=inv, inversion_iters=max(n, 1), inversion_tol=0.0,
                                                    clean_end=ce), components=comp)
                    zk, calls = c.invert(z0, 0, k, c.config.prompt, w)
                    ch = select_steps(100.0, k=k, m=0, T=50, steps=k, rescale=False, grid=c.grid)
                    back = c._ddim(zk, [sampling_path(ch, c.grid)] * z0.shape[0], c.config.prompt, w)
                    err = ((back - z0).flatten(1).norm(dim=1) / z0.flatten(1).norm(dim=1)).numpy()
                    cells.append(f"{err.mean():.1e} ({np.median(err):.0e}) [{np.mean(calls) / k:.2g}]")
                print(f"| {ce} (a_0 = {c.grid.alphas[0]:.5f}) | {w:g} | {k} | " + " | ".join(cells) + " |",
                      flush=True)
    print("[x] = UNet calls per inversion step")


if __name__ == "__main__":
    main()
