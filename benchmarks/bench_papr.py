"""Transmit clipping (``FrameConfig.tx_clip``): the peak-to-average power ratio the power
amplifier sees against the distortion the payload suffers, and what that buys with a
peak-limited amplifier.

    .venv/bin/python benchmarks/bench_papr.py [--clip 0 3 2.5 2 1.5] [--bursts 8] [--peak-snr 25]

For each clip level (x the nominal rms amplitude; 0 = off): the burst stream's PAPR
(the power exceeded by 1e-4 of the samples over the mean, dB), the payload's
signal-to-distortion ratio without noise (Es/N0 measured against the sent symbols
after ``FrameRx``, which also shows what the receiver's estimate says), and the
payload Es/N0 through AWGN when the amplifier's *peak* power is fixed: the mean power
is backed off by the PAPR, so Es/N0 = ``--peak-snr`` - PAPR before clipping noise;
each row is measured through ``FrameRx`` at that Es/N0.
"""

from __future__ import annotations

import argparse

import numpy as np

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, awgn, chunk_symbols, measure_snr_db
from gr_gdmcom.phy.channel import complex_noise


def papr_db(x: np.ndarray, q: float = 1e-4) -> float:
    p = np.abs(x[np.abs(x) > 0]) ** 2
    return float(10 * np.log10(np.quantile(p, 1 - q) / p.mean()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=float, nargs="+", default=[0.0, 3.0, 2.5, 2.0, 1.5])
    ap.add_argument("--bursts", type=int, default=8)
    ap.add_argument("--peak-snr", type=float, default=25.0)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    print("| tx_clip | PAPR (dB, 1e-4) | payload SDR, no noise: act / est (dB) | Es/N0 at the peak-limited PA (dB) "
          "| payload Es/N0 there: act / est (dB) |")
    print("|---|---|---|---|---|")
    for clip in args.clip:
        cfg = FrameConfig(tx_clip=clip)
        sym = complex_noise(args.bursts * cfg.max_chunk_symbols, 1.0, rng)
        x = FrameTx(cfg).stream(sym, Header(image_id=1))
        chunks = chunk_symbols(sym, cfg.max_chunk_symbols)
        papr = papr_db(x)
        out = []
        for snr in (60.0, args.peak_snr - papr):
            y = awgn(np.concatenate([np.zeros(500, np.complex64), x, np.zeros(3000, np.complex64)]), snr, rng)
            rx = FrameRx(cfg)
            frames = rx.push(y) + rx.flush()
            act = np.mean([measure_snr_db(chunks[f.header.chunk_index], f.symbols) for f in frames])
            out.append(f"{act:.2f} / {np.mean([f.snr_db for f in frames]):.2f}")
        print(f"| {clip:g} | {papr:.2f} | {out[0]} | {args.peak_snr - papr:.2f} | {out[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
