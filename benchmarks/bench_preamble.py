"""False detections inside bursts against the preamble's length (``preamble_reps``).

    .venv/bin/python benchmarks/bench_preamble.py [--bursts 10] [--snr 37 10] [--reps 3 4 6 8 14]

One stream per (SNR, reps): ``--bursts`` bursts of 512 Gaussian symbols, 600 zero samples before each,
AWGN at Es/N0 ``--snr`` (``phy.channel.awgn``), through ``FrameRx``.  Each row: frames out of sent,
bursts detected (a verified preamble each), ``header_crc_fail`` (every detection beyond the bursts
sent is a look-alike inside a burst whose header then fails), and the median SNR estimate.
docs/frame-format.md (section 3) quotes the defaults' table.
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header  # noqa: E402
from gr_gdmcom.phy.channel import awgn  # noqa: E402

N = 512


def run(snr_db: float, reps: int, bursts: int, seed: int = 1) -> dict:
    cfg = FrameConfig(max_chunk_symbols=N, preamble_reps=reps)
    rng = np.random.default_rng(seed)
    header = Header(image_id=7, chunk_index=0, chunk_count=1, total_symbols=N, chunk_symbols=N,
                    latent_shape=(2, 16, 32), image_size=(128, 256), k=5, m_hint=0, T=50, guidance=6.0, alpha=1.0,
                    prompt_hash=0, model_hash=0, flags=0, means=(0, 0, 0, 0), sender=1)
    tx, parts = FrameTx(cfg), []
    for _ in range(bursts):
        payload = ((rng.standard_normal(N) + 1j * rng.standard_normal(N)) / np.sqrt(2)).astype(np.complex64)
        parts += [np.zeros(600, np.complex64), tx.burst(header, payload)]
    x = awgn(np.concatenate(parts + [np.zeros(8000, np.complex64)]), snr_db, rng)
    rx = FrameRx(cfg)
    frames = rx.push(x) + rx.flush()
    return dict(frames=len(frames), detected=rx.counters["bursts_detected"], crc_fail=rx.counters["header_crc_fail"],
                est=float(np.median([f.snr_db for f in frames])) if frames else float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=10)
    ap.add_argument("--snr", type=float, nargs="+", default=[37.0, 10.0])
    ap.add_argument("--reps", type=int, nargs="+", default=[3, 4, 6, 8, 14])
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the false detections' drops, one line each
    print("| Es/N0 | preamble_reps | frames | detected | header_crc_fail | median estimate |")
    print("|---|---|---|---|---|---|")
    for snr in a.snr:
        for reps in a.reps:
            r = run(snr, reps, a.bursts)
            print(f"| {snr:g} dB | {reps} | {r['frames']}/{a.bursts} | {r['detected']} | {r['crc_fail']} | "
                  f"{r['est']:.1f} dB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
