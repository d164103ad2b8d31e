"""The receiver's SNR estimate against what the payload actually got, through GNU
Radio's own channel blocks (fading, PA compression, ADC clipping, clock and carrier
drift): ``FrameTx`` -> ``channels.*`` -> ``FrameRx``.

    .venv/bin/python benchmarks/bench_channels.py [--bursts 20] [--snr 10 20] [--only rayleigh rician]
        [--burst-symbols 8192] [--seed 1] [--no-dispersive] [--no-track-timing] [--per-burst]

Each scenario sends ``--bursts`` bursts of ``--burst-symbols`` (8192) unit-power Gaussian symbols (one
stream, 1 Msps for the Hz settings of ``dynamic_channel_model``) and prints one row:
bursts complete (frames out of sent), the median of the receiver's estimate ``est``,
of the payload's actual post-equalisation Es/N0 ``act`` (mean |sent|^2 over mean
|received - sent|^2 of each burst, :func:`measure_snr_db`), the median of
|est - act|, the worst est - act (positive = optimistic), how many bursts were more
than 3 dB optimistic (those the receiver flagged as not followed, ``tracked`` False,
counted apart: "(+k flagged)"), and the receiver's counters that are not zero besides the
usual ones (``--per-burst``: then each burst's ``act``, their mean and the receiver's time per
burst).  For the clock-offset rows, the drift the receiver reported (median,
and how many bursts within 5 ppm of the true one).  The table in
docs/frame-format.md (section 8) comes from the defaults.

Scenarios (``name`` for ``--only``):

* ``awgn``: ``channel_model`` without impairments (reference);
* ``rayleigh-<fDTs>``: ``dynamic_channel_model`` flat Rayleigh (8 sinusoids), fD Ts = 1e-5,
  1e-4, 1e-3 (Ts = one sample);
* ``rician-<fDTs>``: the same with a LOS component, K = 4;
* ``cfo-walk``: ``dynamic_channel_model`` CFO random walk, 10 Hz/sample std, max 500 Hz at
  1 Msps (no fading: LOS, K = 1e4);
* ``sro-200ppm-sps<N>``: ``channel_model`` epsilon = 1.0002, at sps 2 and 4;
* ``selective-<fdts>``: ``selective_fading_model``, three near-equal paths over 1.3 samples
  (GNU Radio's example), fD Ts = 0 (still), 1e-5, 1e-4, 1e-3, then AWGN;
* ``pa-beta-0.2``: ``distortion_3_gen`` beta = -0.2 (third-order PA compression,
  y = x + beta x |x|^2) before the noise;
* ``adc-8bit``: after the noise, each rail clipped at 1.5 x its signal rms (``analog.rail_ff``)
  and quantised to 8 bits (``channels.quantizer``);
* ``iq-1dB-5deg``, ``phase-noise-0dB``, ``dc-20dBc-busy``: GNU Radio's ``channels.impairments`` (the
  front end of a radio) before the noise: IQ imbalance of 1 dB and 5 degrees (an image 22.5 dB
  under the signal), its phase noise at 0 dB (``phase_noise_gen(1, 0.01)``: about 4 degrees rms,
  correlated over ~100 samples), a DC offset (LO leakage) 20 dB under the signal's power with the
  bursts back to back from the stream's start; ``dc-20dBc``: the same offset with 40000 samples of
  silence first (the receiver running before the transmitter starts: the offset is measured there
  and subtracted, ``phy.notch``);
* ``step-up-20dB`` / ``step-down-20dB``: each burst 20 dB down before its body symbol 1400 (the
  preamble, the header and its first ~50 payload symbols: a receiver's AGC step, a
  transmitter's keying ramp), or from there on, then AWGN at the full level;
* ``stop-sps<N>``: each burst's transmitter stops at 30, 60 or 90 % of its payload (burst i at
  ``STOP_FRACS[i % 3]``: a TX underflow at the end of a transmission, nothing after it but the
  noise), then AWGN, at sps 2 and 4.  For these rows ``act`` is the Es/N0 of the symbols the
  receiver kept (not erased), and ``other`` adds ``cut`` (bursts cut of those received) and
  ``early`` (the range of payload symbols cut before the true stop: 0 .. a few is right, < 0
  leaves noise handed over as data).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, chunk_symbols, measure_snr_db, noise_voltage
from gr_gdmcom.phy.channel import complex_noise

SAMP_RATE = 1e6
#: ADC full scale relative to the per-rail rms of the received signal.
ADC_CREST = 1.5


def _run(x: np.ndarray, *blocks_) -> np.ndarray:
    from gnuradio import blocks, gr

    tb = gr.top_block()
    snk = blocks.vector_sink_c()
    tb.connect(blocks.vector_source_c(x, False), *blocks_, snk)
    tb.run()
    return np.asarray(snk.data(), np.complex64)


def _awgn_model(snr_db: float, seed: int, epsilon: float = 1.0):
    from gnuradio import channels

    return channels.channel_model(noise_voltage=noise_voltage(snr_db), frequency_offset=0.0, epsilon=epsilon,
                                  taps=[1.0 + 0j], noise_seed=seed, block_tags=False)


def _dynamic(snr_db: float, seed: int, fdts: float = 0.0, los: bool = False, k: float = 4.0,
            cfo_std: float = 0.0, cfo_max: float = 0.0):
    from gnuradio import channels

    return channels.dynamic_channel_model(SAMP_RATE, 0.0, 0.0, cfo_std, cfo_max, 8, fdts * SAMP_RATE, los, k,
                                          [0.0], [1.0], 1, noise_voltage(snr_db), seed)


def _selective(fdts: float, seed: int):
    """``selective_fading_model`` with its example's three paths (0, 0.1, 1.3 samples; powers 1,
    0.99, 0.97), 8 sinusoids, no LOS, fD Ts = ``fdts`` (0: a still channel)."""
    from gnuradio import channels

    return channels.selective_fading_model(8, fdts, False, 4.0, seed, [0.0, 0.1, 1.3], [1.0, 0.99, 0.97], 8)


def adc(x: np.ndarray, snr_db: float, seed: int, sps: int) -> np.ndarray:
    """AWGN, then per rail: clip at +-ADC_CREST x signal rms, 8-bit quantiser (``link.adc``)."""
    from gr_gdmcom.link import adc as adc_blocks

    return adc_blocks(_run(x, _awgn_model(snr_db, seed)), ADC_CREST * np.sqrt(0.5 / sps))


#: Samples of silence before the ``dc-20dBc`` rows' bursts.
SILENCE = 40000

#: Body symbol of each burst where the ``step-*`` rows' level steps.
STEP_AT = 1400


def level_step(x: np.ndarray, db: float, at: int = STEP_AT, sps: int = 2) -> np.ndarray:
    """Each burst of the stream ``x`` (the runs of samples between its zero gaps) ``-db`` dB down
    before its body symbol ``at`` (``db`` < 0: the level steps up there) or ``db`` dB down from
    there on (``db`` > 0: it steps down)."""
    live = np.abs(x) > 0
    zero_run = np.convolve(~live, np.ones(16), "same") >= 16  # inside a gap (a burst has no 16 zeros)
    edges = np.flatnonzero(np.diff(np.r_[0, (~zero_run).astype(np.int8), 0]))
    y = x.copy()
    scale = np.float32(10 ** (-abs(db) / 20))
    npre = len(FrameConfig(sps=sps).layout().preamble)
    for start, end in zip(edges[0::2], edges[1::2]):
        k = start + (npre + at) * sps
        if db < 0:
            y[start:k] *= scale
        else:
            y[k:end] *= scale
    return y


#: Where the ``stop-*`` rows' transmitter stops: burst i at this share of its payload symbols.
STOP_FRACS = (0.3, 0.6, 0.9)


def stop_at(i: int, n: int) -> int:
    """The payload symbol of burst ``i`` (of ``n``) from whose centre the ``stop-*`` rows zero it."""
    return int(STOP_FRACS[i % len(STOP_FRACS)] * n)


def tx_stop(x: np.ndarray, sps: int, n: int) -> np.ndarray:
    """Each burst of the stream ``x`` (bursts of ``n`` payload symbols between zero gaps) zeroed from
    the centre of its payload symbol :func:`stop_at` on."""
    live = np.abs(x) > 0
    zero_run = np.convolve(~live, np.ones(16), "same") >= 16  # inside a gap (a burst has no 16 zeros)
    edges = np.flatnonzero(np.diff(np.r_[0, (~zero_run).astype(np.int8), 0]))
    lay = FrameConfig(sps=sps, max_chunk_symbols=n).layout()
    payload = lay.burst_map(n).payload
    y = x.copy()
    i = 0
    for start, end in zip(edges[0::2], edges[1::2]):
        if not live[start:end].any():  # (the stream's ends: "same" sees no 16 zeros there)
            continue
        start += int(np.argmax(live[start:end]))  # the burst's first sample
        y[start + (len(lay.preamble) + int(payload[stop_at(i, n)])) * sps + lay.half: end] = 0
        i += 1
    return y


def scenarios(snrs, seed: int = 0, n: int = FrameConfig.max_chunk_symbols):
    """(name, snr, sps, channel function x -> y, true ppm or None); ``seed`` offsets
    every channel seed; ``n``: payload symbols per burst (the ``stop-*`` rows)."""
    from gnuradio import channels

    def awgn_model(s, k, epsilon=1.0):
        return _awgn_model(s, k + seed, epsilon)

    def dynamic(s, k, *a):
        return _dynamic(s, k + seed, *a)

    out = [(f"awgn", s, 2, lambda x, s=s: _run(x, awgn_model(s, 5)), None) for s in snrs]
    for fd in (1e-5, 1e-4, 1e-3):
        out += [(f"rayleigh-{fd:g}", s, 2, lambda x, s=s, fd=fd: _run(x, dynamic(s, 7, fd)), None) for s in snrs]
    for fd in (1e-4, 1e-3):
        out += [(f"rician-{fd:g}", s, 2, lambda x, s=s, fd=fd: _run(x, dynamic(s, 7, fd, True, 4.0)), None)
                for s in snrs]
    out += [("cfo-walk", s, 2, lambda x, s=s: _run(x, dynamic(s, 9, 0.0, True, 1e4, 10.0, 500.0)), None)
            for s in snrs]
    for sps in (2, 4):
        out += [(f"sro-200ppm-sps{sps}", s, sps, lambda x, s=s: _run(x, awgn_model(s, 11, 1.0002)), -200.0)
                for s in snrs]
    for fd in (0.0, 1e-5, 1e-4, 1e-3):
        out += [(f"selective-{fd:g}", s, 2, lambda x, s=s, fd=fd: _run(x, _selective(fd, 17 + seed), awgn_model(s, 19)),
                 None) for s in snrs]
    out += [("pa-beta-0.2", 20.0, 2, lambda x: _run(x, channels.distortion_3_gen(-0.2), awgn_model(20.0, 13)), None),
            ("adc-8bit", 20.0, 2, lambda x: adc(x, 20.0, 15 + seed, 2), None)]
    from gr_gdmcom.link import dc_rail

    dc = dc_rail(-20.0, 2)  # each rail: |dc|^2 20 dB under the sample power 1/sps
    for name, imp in (("iq-1dB-5deg", (-200.0, 1.0, 5.0, 0.0, 0.0)), ("phase-noise-0dB", (0.0, 0.0, 0.0, 0.0, 0.0)),
                      ("dc-20dBc-busy", (-200.0, 0.0, 0.0, dc, dc))):
        out += [(name, s, 2, lambda x, s=s, imp=imp: _run(x, channels.impairments(*imp, 0.0, 0.0, 0.0),
                                                          awgn_model(s, 25)), None) for s in snrs]
    out += [("dc-20dBc", s, 2, lambda x, s=s: _run(np.concatenate([np.zeros(SILENCE, np.complex64), x]),
                                                    channels.impairments(-200.0, 0.0, 0.0, dc, dc, 0.0, 0.0, 0.0),
                                                    awgn_model(s, 25)), None) for s in snrs]
    for name, db in (("step-up-20dB", -20.0), ("step-down-20dB", 20.0)):
        out += [(name, s, 2, lambda x, s=s, db=db: _run(level_step(x, db), awgn_model(s, 21)), None) for s in snrs]
    for sps in (2, 4):
        out += [(f"stop-sps{sps}", s, sps, lambda x, s=s, sps=sps: _run(tx_stop(x, sps, n), awgn_model(s, 23)), None)
                for s in snrs]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--burst-symbols", type=int, default=FrameConfig.max_chunk_symbols,
                    help="latent symbols per burst (FrameConfig.max_chunk_symbols)")
    ap.add_argument("--snr", type=float, nargs="+", default=[10.0, 20.0])
    ap.add_argument("--only", nargs="+", default=None, help="scenario name prefixes")
    ap.add_argument("--seed", type=int, default=1, help="symbols' seed; channel seeds are offset by seed - 1")
    ap.add_argument("--no-dispersive", action="store_true", help="receiver without its dispersive pass (dispersive_eq)")
    ap.add_argument("--no-track-timing", action="store_true", help="receiver without drift tracking (track_timing)")
    ap.add_argument("--per-burst", action="store_true",
                    help="after each row, its bursts' actual Es/N0 by chunk, their mean (dB) and the receiver's time")
    args = ap.parse_args()

    print(f"{args.bursts} bursts x {args.burst_symbols} symbols per row; est/act: medians (dB); "
          f"|d|: median |est - act|; worst: max est - act; >3: bursts > 3 dB optimistic")
    print(f"| scenario | SNR | complete | est | act | median abs(est-act) | worst est-act | >3 dB | other |")
    print("|---|---|---|---|---|---|---|---|---|")
    streams = {}
    n_sym = args.burst_symbols
    for name, snr, sps, chan, ppm in scenarios(args.snr, args.seed - 1, n_sym):
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        if sps not in streams:
            cfg = FrameConfig(sps=sps, max_chunk_symbols=args.burst_symbols)
            sym = complex_noise(args.bursts * cfg.max_chunk_symbols, 1.0, np.random.default_rng(args.seed))
            x = FrameTx(cfg).stream(sym, Header(image_id=3))
            x = np.concatenate([np.zeros(500, np.complex64), x, np.zeros(3000, np.complex64)])
            streams[sps] = (cfg, x, chunk_symbols(sym, cfg.max_chunk_symbols))
        cfg, x, chunks = streams[sps]
        t0 = time.perf_counter()
        y = chan(x)
        rx = FrameRx(dataclasses.replace(cfg, dispersive_eq=not args.no_dispersive,
                                         track_timing=not args.no_track_timing))
        t1 = time.perf_counter()
        frames = rx.push(y) + rx.flush()
        t_rx = time.perf_counter() - t1
        est = np.array([f.snr_db for f in frames])
        stopped = name.startswith("stop-")
        if stopped:  # the symbols kept (the rest was erased: cut where the transmitter stopped)
            kept = [np.ones(n_sym, bool) if f.erased is None else ~f.erased for f in frames]
            act = np.array([measure_snr_db(chunks[f.header.chunk_index][k], f.symbols[k])
                            for f, k in zip(frames, kept)])
        else:
            act = np.array([measure_snr_db(chunks[f.header.chunk_index], f.symbols) for f in frames])
        d = est - act
        lost = np.array([not f.tracked for f in frames], bool)
        # (bursts re-timed where the channel has no clock offset are shown: step 7 fooled)
        usual = ("bursts_detected", "headers_ok", "frames_out", "header_retries") + (("timing_tracked",) if ppm else ())
        other = {k: v for k, v in rx.counters.items() if v and k not in usual}
        if ppm is not None:
            rep = np.array([f.sro_ppm for f in frames])
            other["ppm"] = f"{np.median(rep):.0f}" if len(rep) else "-"
            other["within5"] = int(np.sum(np.abs(rep - ppm) <= 5))
        if rx.counters.get("header_retries"):
            other["retries"] = rx.counters["header_retries"]
        if stopped:
            early = [stop_at(f.header.chunk_index, n_sym) - f.cut for f in frames if f.cut is not None]
            other["cut"] = f"{len(early)}/{len(frames)}"
            other["early"] = f"{min(early)}..{max(early)}" if early else "-"
        med = (lambda a: f"{np.median(a):.2f}" if len(a) else "-")
        print(f"| {name} | {snr:g} | {len(frames)}/{args.bursts} | {med(est)} | {med(act)} | {med(np.abs(d))} | "
              f"{(f'{d.max():+.2f}' if len(d) else '-')} | {int(np.sum(d[~lost] > 3))}"
              f"{f' (+{int(np.sum(d[lost] > 3))} flagged)' if np.any(d[lost] > 3) else ''} | "
              f"{' '.join(f'{k}={v}' for k, v in other.items())} ({time.perf_counter() - t0:.1f} s) |", flush=True)
        if args.per_burst and len(act):
            each = " ".join(f"{f.header.chunk_index}:{a:.2f}" for f, a in zip(frames, act))
            print(f"    act by chunk: {each}; mean {np.mean(act):.2f}; "
                  f"receiver {t_rx / args.bursts * 1e3:.1f} ms per burst", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
