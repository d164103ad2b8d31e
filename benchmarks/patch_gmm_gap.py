"""The patch-gmm prior's quality in one minute: decoded PSNR against the received latent decoded as is.

For the three held-out photographs (astronaut 256 x 256, coffee, chelsea), through
:class:`~gr_gdmcom.codec.GenerativeCodec` on the numpy AWGN channel (receiver told the
true SNR), channel seeds 0 and 1, prints per SNR: the decoded PSNR, the PSNR of the
received latent decoded as is, their difference (the issue's target: >= 3 dB for the
astronaut at 10 dB), and the rule's N; first the VAE's own reconstruction (the ceiling)
and the latent power P per image.  Any CodecConfig field can be given as JSON, which is
how the demo's (k, m) was chosen (docs/codec.md, patch-gmm: what limits it).

Usage::

    python benchmarks/patch_gmm_gap.py                                  # shipped prior, k = m = 5
    python benchmarks/patch_gmm_gap.py patch-gmm '{"k": 10, "m": 0}'     # the demo's setting
    python benchmarks/patch_gmm_gap.py patch-gmm:path=DIR '{}' 10       # a refit, 10 dB only
"""

import json
import sys
import time

import numpy as np
import torch

from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.codec import patch_gmm as pg
from gr_gdmcom.codec.images import to_tensor, to_uint8
from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval.metrics import psnr
from gr_gdmcom.phy import awgn


def main(argv):
    torch.set_num_threads(1)
    model = argv[0] if argv else "patch-gmm"
    extra = json.loads(argv[1]) if len(argv) > 1 else {}
    snrs = [float(s) for s in argv[2].split(",")] if len(argv) > 2 else [5.0, 10.0, 20.0]
    t0 = time.perf_counter()
    codec = GenerativeCodec(CodecConfig(model=model, device="cpu", **extra))
    names = list(pg.HELD_OUT)
    imgs = [pg.bundled_image(n) for n in names]
    vae = codec.c.vae
    with torch.no_grad():
        ceil = [psnr(im, to_uint8(vae.decode(vae.encode(to_tensor(im)).latent_dist.mode()).sample[0], im.shape[:2]))
                for im in imgs]
    encs = codec.encode_many(imgs, names)
    print("images", " ".join(names))
    print("ceiling", " ".join(f"{c:.2f}" for c in ceil), " P", " ".join(f"{e.meta.power:.2f}" for e in encs))
    for snr in snrs:
        dec, asis, n = [], [], set()
        for seed in (0, 1):
            ys = [awgn(e.symbols, snr, np.random.default_rng([seed, i])) for i, e in enumerate(encs)]
            ds = codec.decode_many([(y, e.meta, snr) for y, e in zip(ys, encs)])
            dec.append([psnr(im, d.image) for im, d in zip(imgs, ds)])
            asis.append([psnr(im, codec.decode_as_is(y, e.meta)) for im, y, e in zip(imgs, ys, encs)])
            n |= {d.record["n_steps"] for d in ds}
        dec, asis = np.mean(dec, 0), np.mean(asis, 0)
        f = lambda v, s="": " ".join(f"{x:{s}.2f}" for x in v)  # noqa: E731
        print(f"{snr:4.0f} dB  decoded {f(dec)}  as is {f(asis)}  gap {f(dec - asis, '+')}  N {sorted(n)}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
