#!/usr/bin/env python3
"""Write (or check) the published test vector of the burst format, docs/frame-vector.json.

One short burst at the default FrameConfig (sps 2, RRC roll-off 0.35, span 8, pilots every
16, payload scrambled): its header's fields and 52 bytes, 40 payload symbols, the 1266
coded header symbols and every complex sample of the burst, so that an implementation of
docs/frame-format.md can be checked against this one without its code.

    python scripts/frame_vector.py            # check docs/frame-vector.json against FrameTx
    python scripts/frame_vector.py --write    # rewrite it (a deliberate format change only)
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VECTOR = ROOT / "docs" / "frame-vector.json"
#: payload symbols: the probes' generator on its own seed, rounded to 6 decimals, so the
#: vector gives them exactly
PAYLOAD_SYMBOLS, PAYLOAD_SEED = 40, 0x0BAD
DECIMALS = 6


def build() -> dict:
    from gr_gdmcom.phy import FrameConfig, FrameTx, Header
    from gr_gdmcom.phy import frame

    cfg = FrameConfig()
    header = Header(image_id=7, chunk_index=0, chunk_count=1, total_symbols=PAYLOAD_SYMBOLS,
                    chunk_symbols=PAYLOAD_SYMBOLS, latent_shape=(4, 4, 5), image_size=(40, 32), k=5, m_hint=0,
                    T=50, guidance=6.0, alpha=1.25, prompt_hash=0x1234, model_hash=0xBEEF, flags=0,
                    means=(0.5, -0.25, 0.125, 0.0), sender=3)
    payload = np.round(frame.gaussian_symbols(PAYLOAD_SYMBOLS, PAYLOAD_SEED).astype(np.complex128), DECIMALS)
    tx = FrameTx(cfg)
    burst = tx.burst(header, payload)
    lay = cfg.layout()
    pairs = lambda z: [[round(float(v.real), DECIMALS), round(float(v.imag), DECIMALS)] for v in z]  # noqa: E731
    return {
        "about": "gr_gdmcom burst test vector (docs/frame-format.md; scripts/frame_vector.py checks it). "
                 "Complex values are [re, im]; burst samples are complex64 rounded to 6 decimals: "
                 "compare within 2e-6.",
        "frame_config": {"sps": cfg.sps, "rolloff": cfg.rolloff, "rrc_span": cfg.rrc_span,
                         "pilot_spacing": cfg.pilot_spacing, "scramble": cfg.scramble,
                         "preamble_seg": cfg.preamble_seg, "preamble_reps": cfg.preamble_reps},
        "header": {"image_id": header.image_id, "chunk_index": header.chunk_index,
                   "chunk_count": header.chunk_count, "total_symbols": header.total_symbols,
                   "chunk_symbols": header.chunk_symbols, "latent_shape": list(header.latent_shape),
                   "image_size": list(header.image_size), "k": header.k, "m_hint": header.m_hint, "T": header.T,
                   "forward": header.forward, "sender": header.sender, "guidance": header.guidance, "alpha": header.alpha,
                   "model_hash": header.model_hash, "prompt_hash": header.prompt_hash, "flags": header.flags,
                   "means": list(header.means), "version": header.version},
        "header_hex": header.pack().hex(),
        "payload": pairs(payload),
        "header_symbols": pairs(_header_symbols(header, lay)),
        "burst_samples": len(burst),
        "burst": pairs(burst),
    }


def _header_symbols(header, lay):
    from gr_gdmcom.phy.header import encode_header

    return encode_header(header.pack(), lay.header_whitening)


def compare(got: dict, want: dict) -> list:
    """The differences between two vectors (burst within 2e-6, the rest exactly)."""
    problems = []
    for key in want:
        if key in ("burst", "about"):
            continue
        if got.get(key) != want[key]:
            problems.append(f"{key} differs")
    a, b = np.asarray(got["burst"]), np.asarray(want["burst"])
    if a.shape != b.shape:
        problems.append(f"burst has {len(a)} samples, the vector {len(b)}")
    elif np.abs(a - b).max() > 2e-6:
        problems.append(f"burst differs by up to {np.abs(a - b).max():.2e}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite docs/frame-vector.json")
    args = ap.parse_args(argv)
    vec = build()
    if args.write:
        VECTOR.write_text(json.dumps(vec, separators=(",", ":")) + "\n")
        print(f"wrote {VECTOR} ({vec['burst_samples']} samples)")
        return 0
    problems = compare(vec, json.loads(VECTOR.read_text()))
    for p in problems:
        print(f"frame vector: {p}", file=sys.stderr)
    print("frame vector: " + ("MISMATCH" if problems else f"matches ({vec['burst_samples']} samples)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
