"""Wall time of a small evaluation sweep, and of running it again (resume: nothing to do).

    .venv/bin/python benchmarks/bench_sweep.py [--model tiny] [--size 256] [--threads N] [--out DIR]

Three images (the repository's ``astronaut`` and ``coffee`` and scikit-image's
``chelsea``, resized and centre-cropped to ``--size`` x ``--size``, so they
batch together as a set of equal-size images such as Kodak does) x 5 SNRs (0, 5, 10, 15,
20 dB) x 4 methods (proposed, random_noise, sd_semcom, digital) = 60 rows,
with plots, on the device ``--device`` (default cpu).  Prints one JSON line:
the first run's seconds (model loading included), the second run's seconds
and the rows each computed.  Not a test: the machine may be shared, so
figures vary (``load`` in the output is the 1-minute load average before the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval.sweep import SweepOptions, run_sweep

DATA = Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data"


def make_images(folder: Path, size: int) -> None:
    srcs = {"astronaut": Image.open(DATA / "astronaut.png"), "coffee": Image.open(DATA / "coffee.png")}
    try:
        from skimage import data

        srcs["chelsea"] = Image.fromarray(data.chelsea())
    except ImportError:  # scikit-image is a test dependency only
        srcs["astronaut_flipped"] = srcs["astronaut"].transpose(Image.FLIP_LEFT_RIGHT)
    for name, im in srcs.items():
        im = im.convert("RGB")
        s = size / min(im.size)  # shorter side to `size`, then a centred square crop
        im = im.resize((max(size, round(im.size[0] * s)), max(size, round(im.size[1] * s))), Image.LANCZOS)
        x, y = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        im.crop((x, y, x + size, y + size)).save(folder / f"{name}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="model [default=%(default)r]")
    p.add_argument("--device", default="cpu", help="torch device [default=%(default)r]")
    p.add_argument("--size", type=int, default=256, help="longer image side in pixels [default=%(default)r]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is faster "
                   "on a machine shared with other jobs)")
    p.add_argument("--out", help="results folder (default: a temporary one, removed afterwards)")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="gdmcom_bench_") as tmp:
        imgs = Path(tmp) / "images"
        imgs.mkdir()
        make_images(imgs, a.size)
        out = Path(a.out) if a.out else Path(tmp) / "results"
        opts = SweepOptions(images=[imgs], out=out, snrs=[0, 5, 10, 15, 20],
                            methods="proposed,random_noise,sd_semcom,digital",
                            config=CodecConfig(model=a.model, device=a.device), progress=False, argv=["bench"])
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        first = run_sweep(opts)
        t1 = time.perf_counter()
        second = run_sweep(opts)
        t2 = time.perf_counter()
        sizes = sorted({f"{im.size[0]}x{im.size[1]}" for im in (Image.open(f) for f in imgs.iterdir())})
        print(json.dumps(dict(
            bench="sweep", model=a.model, device=a.device, images=3, image_sizes=sizes, snrs=5, methods=4,
            rows_first=first.rows_computed, seconds_first=round(t1 - t0, 1),
            rows_second=second.rows_computed, seconds_second=round(t2 - t1, 1),
            cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=_threads(),
            load=load)))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
