"""Cost of the analytic denoiser and of one SNR of ``gdmcom validate``.

    .venv/bin/python benchmarks/bench_validate.py [--batch 256 4096] [--threads 1 2] [--samples 64]

For each thread count: microseconds per item of one classifier-free-guided
analytic noise prediction (both halves, D = 256, K = 8, rank 8; one noise
level, the common case inside a DDIM step) at each batch size, and the wall
time of one SNR of section 3 (every N with and without rescaling, the rules,
the baselines' N search) at ``--samples`` latents.  Wall and CPU time are
printed; on a busy shared machine one thread is usually fastest (the
operations are small and threads wait for each other).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def timed(fn, repeat: int = 3):
    """Best (wall, CPU) seconds of ``repeat`` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", nargs="+", type=int, default=[256, 4096])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--samples", type=int, default=64, help="latents for the one-SNR sweep (0: skip it)")
    p.add_argument("--snr", type=float, default=5.0)
    args = p.parse_args()

    from gr_gdmcom.codec.analytic import build_analytic
    from gr_gdmcom.eval.validate import ValidateOptions, Validator

    am = build_analytic("analytic")
    lw_u, lw_c = am.log_weights(""), am.log_weights("High quality, High res, 8K")
    for th in args.threads:
        torch.set_num_threads(th)
        for b in args.batch:
            x = torch.randn(b, am.spec.dim)
            a = torch.full((b,), 0.5, dtype=torch.float64)
            am.gmm.eps_multi(x, a, [lw_u, lw_c])  # warm the level cache
            wall, cpu = timed(lambda: am.gmm.eps_multi(x, a, [lw_u, lw_c]))
            print(f"threads={th} batch={b:6d}: guided eps {1e6 * wall / b:7.2f} us/item wall, "
                  f"{1e6 * cpu / b:7.2f} us/item CPU")
        if args.samples:
            v = Validator(ValidateOptions(out=Path("/dev/null"), samples=args.samples, progress=False))
            v._t0 = time.perf_counter()
            wall, cpu = timed(lambda: v.sweep([args.snr]), repeat=1)
            print(f"threads={th}: one SNR of section 3 at {args.samples} latents: {wall:.1f} s wall, "
                  f"{cpu:.1f} s CPU ({v.link.unet_calls} batched denoiser calls so far)")


if __name__ == "__main__":
    main()
