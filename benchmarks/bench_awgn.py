"""The receiver on a plain AWGN channel: detection and header decoding at 0 dB, false
bursts on noise alone, and the SNR estimate's bias and spread (the figures of
docs/frame-format.md section 6 that the channel tracker and the header copy must not
spoil).

    .venv/bin/python benchmarks/bench_awgn.py [--bursts 1000] [--noise 1e7] [--frames 120] [--seed 0]
        [--only detect noise snr]

* ``detect``: ``--bursts`` bursts of 256 latent symbols at Es/N0 = 0 dB (numpy AWGN, a
  random CFO within +-0.01 cycles/sample and a random fractional delay per burst),
  sps 1 and 2: bursts detected, headers decoded, frames out;
* ``noise``: ``--noise`` samples of unit-variance complex noise (sps 2): bursts detected
  (false alarms), candidates rejected;
* ``snr``: ``--frames`` bursts per point, 0-20 dB, sps 1 and 2, 1024 and 4096 symbols:
  the estimate minus the nominal Es/N0 (mean and standard deviation), the payload's
  actual Es/N0 against the sent symbols minus the nominal (mean, and the worst burst's)
  and the estimate minus the actual (mean, and the most optimistic burst's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, awgn, measure_snr_db
from gr_gdmcom.phy.channel import complex_noise, simulate_channel


def _receive(cfg: FrameConfig, y: np.ndarray):
    rx = FrameRx(cfg)
    return rx.push(y) + rx.flush(), rx.counters


def detection(n_bursts: int, sps: int, rng: np.random.Generator) -> str:
    cfg = FrameConfig(sps=sps, max_chunk_symbols=256)
    tx = FrameTx(cfg)
    gap = np.zeros(300 * sps, np.complex64)
    parts, sent = [gap], []
    for i in range(n_bursts):
        pay = complex_noise(256, 1.0, rng)
        b = tx.burst(Header(image_id=i % 65536, total_symbols=256, chunk_symbols=256), pay)
        b = simulate_channel(b, snr_db=None, cfo=float(rng.uniform(-0.01, 0.01)), delay=float(rng.uniform(0, 1)), phase=float(rng.uniform(0, 2 * np.pi)),
                             rng=rng)
        parts += [b, gap]
        sent.append(pay)
    frames, c = _receive(cfg, awgn(np.concatenate(parts), 0.0, rng))
    return (f"| detect, 0 dB, sps {sps} | {c['bursts_detected']}/{n_bursts} detected, {c['headers_ok']} headers, "
            f"{len(frames)} frames | header_copies={c['header_copies']} crc_fail={c['header_crc_fail']} "
            f"false/overlapping={c['overlapping']} |")


def noise_only(n: int, rng: np.random.Generator) -> str:
    cfg = FrameConfig(sps=2)
    rx = FrameRx(cfg)
    step = 1 << 20
    for k in range(0, n, step):
        rx.push(complex_noise(min(step, n - k), 1.0, rng))
    rx.flush()
    c = rx.counters
    return (f"| noise only, {n:.0e} samples, sps 2 | {c['bursts_detected']} false bursts | "
            f"candidates_rejected={c['candidates_rejected']} headers_ok={c['headers_ok']} |")


def snr_rows(n_frames: int, rng: np.random.Generator):
    for sps in (1, 2):
        for n_sym in (1024, 4096):
            cfg = FrameConfig(sps=sps, max_chunk_symbols=n_sym)
            tx = FrameTx(cfg)
            for snr in (0.0, 5.0, 10.0, 15.0, 20.0):
                sym = complex_noise(n_frames * n_sym, 1.0, rng)
                x = tx.stream(sym, Header(image_id=1))
                x = np.concatenate([np.zeros(500, np.complex64), x, np.zeros(500, np.complex64)])
                frames, _ = _receive(cfg, awgn(x, snr, rng))
                chunks = sym.reshape(n_frames, n_sym)
                est = np.array([f.snr_db for f in frames])
                act = np.array([measure_snr_db(chunks[f.header.chunk_index], f.symbols) for f in frames])
                yield (f"| {sps} | {n_sym} | {snr:g} | {len(frames)}/{n_frames} | {np.mean(est - snr):+.3f} | "
                       f"{np.std(est):.3f} | {np.mean(act - snr):+.3f} | {np.mean(est - act):+.3f} | "
                       f"{np.min(act) - snr:+.2f} | {np.max(est - act):+.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=1000, help="bursts per detection row [default=%(default)r]")
    ap.add_argument("--noise", type=float, default=1e7, help="noise samples [default=%(default)r]")
    ap.add_argument("--frames", type=int, default=120,
                    help="bursts per SNR point (120: the mean of a 0 dB point within +-0.02 dB) [default=%(default)r]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", default=["detect", "noise", "snr"], choices=["detect", "noise", "snr"])
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    if "detect" in args.only:
        for sps in (1, 2):
            print(detection(args.bursts, sps, rng), flush=True)
    if "noise" in args.only:
        print(noise_only(int(args.noise), rng), flush=True)
    if "snr" in args.only:
        print("| sps | symbols | Es/N0 | frames | est - nominal (mean) | est std | act - nominal | est - act | "
              "worst act - nominal | worst est - act |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in snr_rows(args.frames, rng):
            print(row, flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
