#!/usr/bin/env python3
"""Regenerate tests/data/capture_awgn_cfo.c64 (+ .json): two FrameTx bursts through GNU Radio's
channels.channel_model (AWGN at 12 dB Es/N0, CFO, clock offset, two taps), as a regression
input for the receiver (tests/test_phy_sync_stages.py).

    PYTHONPATH=$PWD .venv/bin/python scripts/make_capture.py

The symbols are seeded (``symbol_seed`` in the .json), so a test regenerates what was sent;
the .json also lists the headers expected back and the nominal SNR.  complex64 samples,
little-endian interleaved I/Q (GNU Radio's file_sink of gr_complex).
"""

import json
import sys
from pathlib import Path

import numpy as np
from gnuradio import blocks, channels, gr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gr_gdmcom.phy import FrameConfig, FrameTx, Header, noise_voltage  # noqa: E402
from gr_gdmcom.phy.header import HEADER_VERSION  # noqa: E402

OUT = ROOT / "tests" / "data" / "capture_awgn_cfo.c64"
FRAME = dict(sps=2, max_chunk_symbols=64)
SNR_DB, CFO, EPSILON, TAPS, SEED = 12.0, 0.003, 1.00002, [1.0, 0.25j], 7
HEADER = dict(image_id=41, latent_shape=(4, 8, 8), image_size=(64, 64), k=5, T=50, forward=0, guidance=6.0,
              alpha=0.731, prompt_hash=0xABCD)  # the stored capture: version 4, whose 32-bit CRC was 0x1234ABCD


def main():
    n = int(np.prod(HEADER["latent_shape"])) // 2
    r = np.random.default_rng(SEED)
    sym = ((r.standard_normal(n) + 1j * r.standard_normal(n)) / np.sqrt(2)).astype(np.complex64)
    cfg = FrameConfig(**FRAME)
    tx = FrameTx(cfg)
    bursts = tx.stream(sym, Header(total_symbols=n, **HEADER))
    x = np.concatenate([np.zeros(300, np.complex64), bursts, np.zeros(300, np.complex64)])
    tb = gr.top_block()
    src = blocks.vector_source_c(x.tolist())
    ch = channels.channel_model(noise_voltage=noise_voltage(SNR_DB, cfg.sps), frequency_offset=CFO, epsilon=EPSILON,
                                taps=[complex(t) / np.sqrt(sum(abs(v) ** 2 for v in TAPS)) for t in TAPS],
                                noise_seed=SEED, block_tags=False)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    snk = blocks.file_sink(gr.sizeof_gr_complex, str(OUT), False)
    snk.set_unbuffered(False)
    tb.connect(src, ch, snk)
    tb.run()
    snk.close()
    chunks = -(-n // FRAME["max_chunk_symbols"])
    headers = [dict(image_id=HEADER["image_id"], chunk_index=i, chunk_count=chunks, latent_shape=list(HEADER["latent_shape"]),
                    image_size=list(HEADER["image_size"]), k=HEADER["k"], T=HEADER["T"], total_symbols=n,
                    prompt_hash=HEADER["prompt_hash"]) for i in range(chunks)]
    info = dict(frame=FRAME, snr_db=SNR_DB, alpha=HEADER["alpha"], guidance=HEADER["guidance"], cfo=CFO, epsilon=EPSILON, taps=[str(t) for t in TAPS], symbol_seed=SEED,
                total_symbols=n, chunk=FRAME["max_chunk_symbols"], headers=headers, header_version=HEADER_VERSION,
                made_by="scripts/make_capture.py (GNU Radio %s)" % gr.version())
    OUT.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{OUT}: {OUT.stat().st_size} bytes, {len(headers)} bursts")


if __name__ == "__main__":
    main()
