"""Streaming burst receiver.

``FrameRx.push(samples)`` may be called with any chunk sizes; samples are kept
in an internal buffer (bounded: at most one burst plus the detection look-ahead
beyond what has been processed, and inputs are processed in slices of
``max_slice`` samples).  The chain, per burst (``docs/frame-format.md``):

0. channel selection (sps >= 2, once, on the stream): a linear-phase low-pass FIR
   flat over the signal's band (1 + rolloff) / (2 sps) and 60 dB down 0.05 cycles/sample
   above it, its delay taken out (the buffer's indices stay the input's): what lies
   outside the band -- an adjacent channel, a spur -- no longer reaches detection,
   whose metrics are normalised by all the power they see; then the tones inside the
   band found and notched, and a DC offset measured where the stream is quiet subtracted
   (:mod:`.notch`, ``FrameConfig.notch``);
1. detection: Barker-weighted repeated-segment metric on integrate-and-dump
   samples (CFO-proof), threshold ``detect_threshold``, peak pick;
2. coarse CFO from the metric's phase; segment-wise correlation with the known
   preamble waveform gives the timing (parabolic fractional refinement), a
   verification score (``verify_threshold``) and the fine CFO;
3. CFO correction, RRC matched filter evaluated at the fractional timing (the
   truncated pulse pair's known interference removed from its outputs), unbiased
   LS equaliser trained on the preamble, pilot phase tracking;
4. header: exact ML decoding (hard decisions when they form a codeword, else
   soft Viterbi batched over the bursts of one call), CRC-32; on a CRC failure
   one retry with a decision-directed phase track, then (bursts long enough to
   carry one) the header read together with its copy later in the burst;
   a burst whose first preamble was missed (a fade) is found from its resync
   preamble before the copy and read from its start, its equaliser trained there;
5. payload: equaliser retrained on preamble + header region, phase tracked on
   all pilots and the decoded header, amplitude normalised on the header;
   pilots removed, descrambled; noise variance estimated on all those known
   symbols, each judged against a phase estimated without it;
6. sampling-clock drift (sps >= 2): where the known symbols' error grows over
   the burst, early/late timing discriminators on the pilots measure the drift
   and the burst is demodulated again on a drifting symbol clock;
7. dispersive channels: a fractionally spaced equaliser fitted on all the known symbols
   (over the burst; where the error grew, re-fitted every 64 symbols), its leave-one-out
   outputs tracked, kept where its estimated noise is 10 % lower and its pilots fit
   significantly better;
8. a burst cut short (a transmitter's underflow, samples dropped or inserted, a stronger
   burst colliding): where its known symbols stop fitting for good, the payload from there is
   erased, the rest demodulated again on the known symbols before it, and the burst ends there
   (a verified preamble after it is read, not dropped as overlapping).
"""

from __future__ import annotations

import cmath
import functools
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import numpy as np
from scipy import signal as sps_signal

from ..config import ALPHA_RANGE, GUIDANCE_RANGE
from . import sync
from .notch import ToneNotch
from .frame import HEADER_COPY_AFTER, MAX_CHUNK_LIMIT, MAX_IMAGE_SYMBOLS, BurstMap, FrameConfig
from .header import (FORWARD_DDIM, FORWARD_RANDOM, HEADER_CODED_BITS, PLAIN_FLAG, Header, HeaderError, decode_headers,
                     encode_header)
from .snr import MIN_NOISE_VAR, noise_var_to_snr_db

log = logging.getLogger(__name__)

#: environment variables by which a user chose numpy's BLAS threads: :func:`single_blas_thread` leaves
#: BLAS as they set it
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_blas_lock = threading.Lock()
_blas_done = False


def single_blas_thread() -> Optional[dict]:
    """Run numpy's BLAS (OpenBLAS, MKL, BLIS, as loaded) on one thread, once per process, unless
    one of ``BLAS_THREAD_VARS`` is set: the receiver's matrices are small (at most 31 columns), a
    second BLAS thread never made it faster, and OpenBLAS's idle workers spin between calls --
    they doubled the CPU time of a receiving flowgraph (docs/frame-format.md section 6, *BLAS threads*),
    CPU that a radio source, the channel or the decoder in the same process needs.  Process-wide
    (BLAS has one setting); torch's own threads are not touched.  Returns ``{library: threads
    before}`` of the call that set it, else None."""
    global _blas_done
    with _blas_lock:
        if _blas_done:
            return None
        _blas_done = True
        chosen = [v for v in BLAS_THREAD_VARS if os.environ.get(v)]
        if chosen:
            log.debug("BLAS threads left as %s sets them", chosen[0])
            return None
        try:
            from threadpoolctl import threadpool_info, threadpool_limits
        except ImportError:  # (a dependency; an install without it keeps BLAS's default)
            log.warning("threadpoolctl is not installed: numpy's BLAS keeps its threads, which spin between "
                        "the receiver's calls (set OPENBLAS_NUM_THREADS=1)")
            return None
        before = {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}
        threadpool_limits(1, user_api="blas")
        log.debug("BLAS set to one thread (was %s)", before)
        return before


#: channel filter: stopband attenuation (dB) and the widest transition band (cycles/sample)
CHANNEL_STOP_DB, CHANNEL_TRANSITION = 60.0, 0.05


@functools.lru_cache(maxsize=16)
def channel_taps(edge: float) -> Optional[np.ndarray]:
    """Taps of the receiver's channel-select filter (step 0): a Kaiser-window low-pass (scipy
    ``kaiserord``/``firwin``), passband to the signal's band edge (:attr:`FrameConfig.band_edge`,
    cycles/sample; ripple 0.01 dB), ``CHANNEL_STOP_DB`` down ``CHANNEL_TRANSITION`` cycles/sample
    above it (or at Nyquist); odd length, linear phase; complex64.  None where the band leaves no
    room (sps 1, or less than 0.03 cycles/sample below Nyquist)."""
    stop = min(edge + CHANNEL_TRANSITION, 0.5)
    if stop - edge < 0.03:
        return None
    n, beta = sps_signal.kaiserord(CHANNEL_STOP_DB, 2.0 * (stop - edge))
    taps = sps_signal.firwin(n | 1, (edge + stop) / 2.0, window=("kaiser", beta), fs=1.0).astype(np.complex64)
    taps.flags.writeable = False
    return taps

COUNTERS = ("bursts_detected", "bursts_resynced", "candidates_rejected", "headers_ok", "header_retries",
            "header_copies", "header_crc_fail",
            "header_invalid", "sync_fail", "truncated", "overlapping", "nonfinite_samples", "timing_tracked",
            "track_lost", "symbols_erased", "dispersive", "bursts_cut", "cut_dropped", "tones_notched", "frames_out")
#: Input samples whose real or imaginary part exceeds this (a float read from another sample
#: format; no radio gives it) are treated like NaN: zeroed, counted in ``nonfinite_samples``.
#: Their float32 squares summed over the detector's windows would overflow.
MAX_SAMPLE = 1e12
#: Default most samples handled per processing pass (bounds memory for huge pushes).
MAX_SLICE = 1 << 18
#: The detection metric is first evaluated every DETECT_STRIDE symbols, then at every
#: symbol around threshold crossings.
DETECT_STRIDE = 2
#: Window lengths (symbols) the decision-directed channel track of a header retry
#: chooses from.
RETRACK_SPANS = (16, 32, 64, 128, 256, 512)
#: A candidate verified as the preamble at this score or more is not also verified against
#: the resync preamble: on a resync preamble the preamble's template scores at most 0.15 of
#: what the resync template does (docs/frame-format.md section 2), so at most 0.15.
RESYNC_GATE = 0.2
#: Whole CFO steps are tried when the preamble correlation is below this fraction of
#: the square root of the detection metric (on time, in range: ~0.95-1.0 at 10 dB and
#: above, ~0.5-0.85 lower; a wrong step: <= 0.77).
CFO_STEP_GATE = 0.9
#: Sampling-clock drift tracking (sps >= 2, docs/frame-format.md section 6 step 7):
#: timing windows per burst, their least number of pilots (shorter bursts are not
#: tracked), the smallest drift over a burst (samples) worth re-sampling, and how
#: many standard errors the drift estimate must exceed.
TIMING_WINDOWS = 8
TIMING_MIN_PILOTS = 8
TIMING_MIN_DRIFT = 0.05
TIMING_SIGMAS = 2.0
#: ... the timing spread (symbols) over which the fine and the coarse discriminator
#: are used, the fewest windows a fit uses, the most re-demodulations.
TIMING_FINE_RANGE = 0.2
TIMING_COARSE_RANGE = 0.4
TIMING_MIN_FIT = 4
TIMING_ROUNDS = 6
#: ... the error growth over the burst above which the drift estimate needs less
#: evidence (TIMING_SIGMAS, not TIMING_SIGMAS_QUIET), and the growth above which the
#: wide acquisition also runs.  Below TIMING_TRIGGER the drift is
#: still measured: at 10 dB a 10-20 ppm drift costs 0.5-1 dB but hardly grows the
#: error, which noise dominates, and with multipath at 20 dB the fine discriminator's
#: spread doubles (the channel's interference is not predicted), so 4 standard errors
#: missed 7 of 20 bursts at 10 ppm (up to 2.5 dB lost).  A drift is only kept where
#: the known symbols fit better with it: no burst without drift was re-timed in 240
#: (flat and 3-path, 5-20 dB) with these thresholds.
TIMING_TRIGGER = 1.5
TIMING_STRONG = 3.0
#: ... or where the error grew by more than this multiple of the tracked gain's power
#: at the burst's end (:meth:`FrameRx._lost_share`).  Below about 5 dB noise dominates
#: the error, so a drift that leaves nothing of the last symbols grows it by less than
#: 3x (by about 1 + Es/N0: 2x at 0 dB) and the acquisition did not run (3 dB, 300 ppm:
#: 1 of 8 bursts re-timed); measured against the gain there, which the drift shrinks
#: too, it is 9.8-1950 with 200-400 ppm over 8192 symbols at 0-10 dB (1.4-190 over
#: 2048) and -0.2..0.13 without drift (-0.4..1.0 over 1024 symbols at 0 dB).  (A grid
#: search of 40 drifts also ran where nothing was found; it never found a drift that was
#: there, and on selective fading it picked some that were not, one costing a burst 18 dB:
#: removed, docs/frame-format.md section 6 step 7.)
STRONG_SHARE = 1.0
TIMING_SIGMAS_QUIET = 2.5
#: ... and of the refinements after a first accepted drift.
TIMING_SIGMAS_REFINE = 1.0
#: ... the largest sample-rate offset corrected (ppm).
MAX_SRO_PPM = 1000.0
#: Wide-range drift acquisition (:meth:`FrameRx._acquire_drift`): windows, pilots summed
#: coherently, delay steps per symbol, the largest drift it searches (ppm) and the
#: smallest drift over the burst (symbols) it hands on.
ACQ_WINDOWS = 16
ACQ_COHERENT = 4
ACQ_STEPS = 4
ACQ_MAX_PPM = 400.0
ACQ_MIN_DRIFT = 0.1
#: ... and the step (ppm) of the final error-power search around the drift found, and
#: how many times that search moves on where its best lies at its edge (a wide
#: acquisition off by more than 2 steps, which the fine discriminator, far from its
#: linear range, did not correct).
POLISH_PPM = 3.0
POLISH_MOVES = 4
#: ... and its smallest step, in samples of timing at the burst's end.
POLISH_MIN_SPAN = 0.0375
#: Channel tracker (docs/frame-format.md section 6 step 4): the window lengths it
#: chooses from by cross-validation, in pilot periods (up to ``phase_window``).
TRACK_SPANS = (2, 3, 4, 6, 8, 16, 32, 64, 128, 512)
#: ... and the windows (pilot periods) whose gains it compares to find a level step
#: (:func:`sync.level_steps`: a receiver's AGC step, a transmitter's keying ramp).
STEP_WINDOW = 4
#: The payload's pilots replace the whole body's known symbols in the noise estimate
#: when their error exceeds it by this many standard errors (a channel the pilots
#: follow less well than the dense header, a distortion of the high-amplitude payload).
PAYLOAD_SIGMAS = 3.0
#: A burst whose channel the pilots cannot follow: the tracker's error on the payload's
#: pilots exceeds LOST_LOCK_RATIO x what the whole body's known symbols show (10 dB),
#: or the payload's effective Es/N0 is below MIN_TRACK_SNR_DB.  Reported (counter
#: ``track_lost``, ``RxFrame.tracked``) with its (low, honest) estimate.
LOST_LOCK_RATIO = 10.0
#: Local tracking error (:meth:`FrameRx._effective_noise`): payload pilots averaged, and
#: how far above the burst's error it must be to be used.
LOCAL_PILOTS = 5
LOCAL_RATIO = 3.0
#: Tracking error that grows with the gain (a fast fade: the tracker's error is a share of a
#: gain that moves): the payload pilots' errors are fitted as ``a + b |g|^2`` and the ``b``
#: part kept where it exceeds GAIN_ERROR_SIGMAS standard errors, over at least
#: GAIN_ERROR_PILOTS pilots (docs/frame-format.md, SNR estimator).
GAIN_ERROR_SIGMAS = 3.0
GAIN_ERROR_PILOTS = 32
MIN_TRACK_SNR_DB = -10.0
#: A payload symbol whose own Es/N0 after equalisation is below ERASE_SNR_DB carries no
#: information (the tracked gain there is ~0: a dropout of the radio, zeroed non-finite
#: samples, a fade's null): it is erased (``RxFrame.erased``, counter ``symbols_erased``)
#: instead of divided by that gain, and left out of the frame's estimate.
ERASE_SNR_DB = -30.0
#: ... and so is every payload symbol in a stretch with no signal at all (a dropout of the
#: radio's samples, non-finite samples zeroed): the equalised body's power averaged over
#: DEAD_SPAN symbols below DEAD_RATIO x its mean (40 dB down: a live stretch has at
#: least its noise there).  The tracked gain, smoothed over its window, only falls to ~0
#: in the middle of a long dropout; the known symbols of such a stretch are left out of
#: the track, which interpolates over it.
DEAD_SPAN = 8
DEAD_RATIO = 1e-4
#: Samples the receiver replaced (NaN, inf, out of range: ``nonfinite_samples``) take their
#: energy out of the matched-filter outputs near them: a known symbol that lost more than
#: this share of its pulse's energy is left out of the channel track and the noise estimate,
#: and each payload symbol gets what it lost as noise (erased where that is more than
#: REPLACED_ERASE of its signal's power: a loss is as large as the symbol, not as the average).
HIT_KNOWN = 1e-3
REPLACED_ERASE = 0.5
#: Second pass for dispersive channels (:meth:`FrameRx._dispersive`): half-widths (in
#: symbols) of the fractionally spaced equalisers -- 2 k + 1 symbol-spaced and 2 k + 2
#: half-symbol taps -- fitted over the whole burst and, where the error grows along it, every
#: 64 symbols over DISPERSIVE_WINDOW; kept where its noise is below DISPERSIVE_GATE x the first pass's.
DISPERSIVE_TAPS = 2
DISPERSIVE_TAPS_FAST = 1
DISPERSIVE_WINDOW = 384
DISPERSIVE_GATE = 0.9
DISPERSIVE_SIGMAS = 3.0
#: A burst cut short (docs/frame-format.md section 6, "A burst cut short"): a TX underflow, an
#: RX overflow (samples dropped: the rest of the burst arrives early), zeros inserted (late), a
#: stronger burst colliding.  Its known symbols fit up to a point and not after it.  Each block
#: of CUT_BLOCK pilot periods gives the share of its known symbols' power that fits one complex
#: gain (:func:`_fit_blocks`: about Es/N0 / (1 + Es/N0) where they fit, 0 where they have nothing
#: to do with the symbols sent); the split of the burst's blocks into a better-fitting prefix and
#: a worse suffix running to its end is found by a mean shift (:func:`_best_split`).  The burst is
#: cut there where the suffix (at least CUT_MIN_KNOWN known symbols) fits at most CUT_FIT and
#: CUT_DROP less than the prefix, and its power that does not fit is CUT_GROWTH times the prefix's
#: and CUT_SIGNAL of the prefix's signal: another signal, not a fade.  A fade keeps the noise the
#: known symbols do not fit where it was (the receiver's noise is stationary through it): measured
#: over Rayleigh, Rician and selective fading, drift and AWGN at 3-20 dB (three seeds of
#: bench_channels.py's rows, 3 196 bursts), no burst's suffix passes both the growth and the fit
#: tests (largest growth 2.4 where the fit is <= 0.25; the worst fit with growth >= 4 is 0.42),
#: while every slip (10-1000 samples dropped, 64-1000 zeros inserted) and +10 dB collision at 15
#: dB gave fit <= 0.10 and growth >= 8.7.
CUT_BLOCK = 4
CUT_MIN_KNOWN = 24
CUT_FIT = 0.25
CUT_DROP = 0.4
CUT_GROWTH = 4.0
CUT_SIGNAL = 0.25
#: ... and where a verified preamble lies inside the burst (a second burst: a transmitter that
#: started again after an underflow, a colliding one), the split at its start is tested with
#: less evidence asked: the burst's known symbols from there fit at most CUT_FIT_AT, CUT_DROP_AT
#: less than before, and the power they do not fit grew CUT_GROWTH_AT times and is CUT_SIGNAL of
#: the prefix's signal (an equal-power collision leaves the first burst's known symbols at about
#: 0 dB SINR: fit 0.5-0.75, growth 11-36 measured).  Without a preamble that is what a selective
#: fade the equaliser cannot follow looks like.
#: ... how many blocks before the split the cut is searched for (:meth:`FrameRx._refine_cut`),
CUT_REFINE = 8
#: ... and how many times the cut burst is demodulated again, the cut looked for again on each.
CUT_ROUNDS = 3
CUT_MIN_KNOWN_AT = 16
CUT_FIT_AT = 0.8
CUT_DROP_AT = 0.15
CUT_GROWTH_AT = 3.0
#: A transmitter that stops with nothing after it (a TX underflow at the end of a transmission, a
#: TX buffer ending early: the samples after some point are noise): the split's suffix fits as
#: above but holds no power beyond the noise, so the growth test cannot see it.  Where the prefix's
#: Es/N0 (its fitted power over the noise of neighbouring known symbols) is STOP_MIN_SNR or more, the
#: most likely drop of the equalised body's power, symbol by symbol, from the level before the
#: search (STOP_SEARCH x CUT_REFINE blocks before the split) to that noise is a stop where it is
#: abrupt -- the window of STOP_WINDOW pilot periods ending a window before it keeps STOP_EDGE of
#: the level's signal, the window starting a window after it holds at most STOP_AFTER of it -- and
#: the rest is silent: the median power of its windows at most STOP_SILENT x the noise, and its known
#: symbols (from a window after the drop) showing no signal coherently over blocks of STOP_SCALES
#: of them (sum over blocks of |sum z conj s|^2 / sum |z|^2 |s|^2, ~ the number of blocks on noise,
#: within STOP_SIGMAS (sqrt(blocks) + 1) of it: a 20 dB step down at 10 dB leaves a signal 10 dB
#: below the noise there, as abrupt as a stop), nor in phase with the gain before the drop: their sum
#: projected on the gain of the known symbols over STOP_PHASE_WINDOW windows before it (a step keeps
#: the phase) at most STOP_PHASE_SIGMAS standard deviations (N(0, 1) on noise: measured mean 0.1-0.3,
#: sd 1.0, largest 3.3 over 2 400 silent tails at 6-30 dB, sps 2/4/8; a signal r below the noise over
#: M known symbols is sqrt(2 M r) up, about twice the evidence the blocks' test asks at one scale: a
#: 20 dB step down at 8 dB on a 2048-symbol burst's last 70 % (168 pilots at -12 dB, sqrt(2 M r) = 4.6)
#: was cut as a stop 51 times in 60, now 20; at 10 dB 29 -> 7, 15 dB steps 12 -> 0 of 120).  Below that
#: a step down and a stop look alike, and either way costs the MMSE decoder <= 0.5 dB (cut: the
#: symbols at -12 dB erased; not cut: the noise after a stop handed over at its low reliability).
#: A fade (40 dB over 2000 symbols) falls a fraction of a dB per pilot period and is not cut.  The cut
#: is STOP_BACK symbols before the drop.
#: Inside a fade the level before the search is not the level the transmitter stopped at (nor above the noise at all):
#: where the window before the drop does not hold STOP_EDGE of it, the drop is looked for again from the level of the
#: STOP_LOCAL windows ending two windows before it (twice, each from the last drop found), that level's Es/N0 at least
#: STOP_MIN_SNR, and the window after the drop must hold at most STOP_AFTER x q^3 of its signal, q the share the window
#: before it kept (a fade falling steadily in dB keeps q^3 there; a stop keeps nothing): a stop 5-15 dB into a 40 dB
#: fade at 15-25 dB was cut 0 times in 72, now 53 (0-9 symbols early, estimates -0.9 .. +1.9 dB of the kept part's); one
#: at a random point of a flat Rayleigh fade (fD 1e-4 per sample) 17 -> 24 of 24 at 20 dB, 9 -> 13 of 24 at 10 dB.
#: Below STOP_MIN_SNR there (a stop deep in a fade) it is not cut: delivered whole, ``track_lost``, its estimate honest
#: for all its symbols but 15-30 dB under its part before the stop (the noise after it weighted ~0 by its own noise_var:
#: the MMSE decoder loses 0.03-0.25 dB against a cut there).  Fades that fall 30-40 dB within 100-500 symbols and stay
#: there were cut as stops before and are now (slightly more often); 1000-symbol ones are not.
STOP_LOCAL = 2
#: The split's suffix asked of a stop fits at most STOP_FIT (not CUT_FIT: its own tests above guard it; the
#: 23 blocks after a stop at 90 % of a 2048-symbol burst fit 0.25-0.30 by chance in 8 of 1 440 stops at 8-30
#: dB, which were delivered whole, most ``track_lost``).
STOP_FIT = 0.4
STOP_MIN_SNR = 4.0
STOP_SEARCH = 3
STOP_WINDOW = 2
STOP_EDGE = 0.5
STOP_AFTER = 0.25
STOP_SILENT = 1.5
STOP_SCALES = (8, 32, 128, 1 << 30)
STOP_SIGMAS = 5.0
STOP_PHASE_WINDOW = 8
STOP_PHASE_SIGMAS = 3.5
STOP_BACK = 2
#: ... after walking the drop back over up to STOP_WALK symbols whose power is below STOP_TAIL of the level
#: (the truncated pulses' leakage: at 30-40 dB, sps 2-8, the drop the power shows lay 1-4 symbols after the
#: stop, the cut 1 late in 2 of 360 bursts at 30 dB, 6 at 35 and 39 at 40 dB, which left the noise symbol at
#: the prefix's reliability and the estimate up to 13.8 dB over the kept part's actual).  A live symbol is
#: below it 6 % of the time (|s|^2 exponential), so the cut lands one more symbol early about that often.
STOP_WALK = 8
STOP_TAIL = 1.0 / 16


def _dead(z: np.ndarray) -> np.ndarray:
    """bool (len(z),): symbols of ``z`` (an equalised body) in a stretch with no signal at
    all: its power averaged over DEAD_SPAN symbols below DEAD_RATIO x its mean (the mean,
    not the median: a dropout over a fraction f of the body lowers it by at most f, and it
    is cheaper on the receiver's every demodulation)."""
    pz = z.real * z.real + z.imag * z.imag
    local = np.convolve(pz, np.full(DEAD_SPAN, 1.0 / DEAD_SPAN, pz.dtype), "same")
    return local < DEAD_RATIO * float(pz.mean(dtype=np.float64))


def _fit_errors(d) -> np.ndarray:
    """Each known symbol's error against the channel track predicted without it, scaled
    to the noise it would show inside a window of its own (the leave-one-out excess
    w / (W - w) divided out), in the equaliser's output units.  float64 (n_obs,).

    Noise after the (fixed) equaliser is stationary through a fade, so these stay flat
    over a tracked fading burst and grow where the timing drifts (ISI) or the tracker
    loses the channel."""
    w = d.ref.real ** 2 + d.ref.imag ** 2
    tr = d.track
    e = d.z[d.pos] - tr.g_loo * d.ref
    return (e.real ** 2 + e.imag ** 2) / (1.0 + w / np.maximum(tr.wsum - w, 1e-3 * tr.wsum))


def _gain_error(err: np.ndarray, g: np.ndarray):
    """``(a, b)`` of the fit ``err ~ a + b |g|^2`` of known symbols' errors against the tracked
    gain there, or None where ``b`` is not GAIN_ERROR_SIGMAS standard errors above zero (a
    still channel: the error does not depend on the gain) or ``a`` would be negative."""
    p = g.real ** 2 + g.imag ** 2
    A = np.stack([np.ones_like(p), p], 1)
    ata = A.T @ A
    try:
        inv = np.linalg.inv(ata)
    except np.linalg.LinAlgError:
        return None
    a, b = inv @ (A.T @ err)
    r = err - a - b * p
    var_b = inv[1, 1] * float(r @ r) / max(len(err) - 2, 1)
    if not (a > 0 and b > GAIN_ERROR_SIGMAS * math.sqrt(max(var_b, 0.0))):
        return None
    return float(a), float(b)


def _fit_blocks(zk: np.ndarray, ref: np.ndarray, blk: np.ndarray):
    """Per block of known symbols (``blk``: block number of each, non-decreasing): the share of
    their power that fits one complex gain, ``f = (T - 1) / (M_eff - 1)`` with
    ``T = |sum z conj(s)|^2 / sum |z|^2 |s|^2`` (1 on average where z has nothing to do with s)
    and ``M_eff = (sum |s|^2)^2 / sum |s|^4`` (the block's number of symbols, weighted): about
    Es/N0 / (1 + Es/N0) where z = g s + noise, 0 where z is unrelated to s (silence, another
    burst, the same burst a few symbols off); the blocks' summed power ``|z|^2`` and their
    number of known symbols.  Blocks of fewer than 2 are left out.  Returns (f, power, count,
    index of each block's first known symbol)."""
    z = np.asarray(zk, np.complex128)
    a = z * np.conj(ref)
    w = ref.real ** 2 + ref.imag ** 2
    p = z.real ** 2 + z.imag ** 2
    first = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1]])
    count = np.diff(np.r_[first, len(blk)])
    a_b, w_b, w2_b = np.add.reduceat(a, first), np.add.reduceat(w, first), np.add.reduceat(w * w, first)
    p_b, pw_b = np.add.reduceat(p, first), np.add.reduceat(p * w, first)
    m_eff = w_b * w_b / np.maximum(w2_b, 1e-300)
    ok = (count >= 2) & (m_eff > 1.0 + 1e-6) & (pw_b > 0)
    t = (a_b.real ** 2 + a_b.imag ** 2)[ok] / pw_b[ok]
    return (t - 1.0) / (m_eff[ok] - 1.0), p_b[ok], count[ok], first[ok]


def _split_stats(f: np.ndarray, p: np.ndarray, m: np.ndarray, k: int) -> dict:
    """The blocks before ``k`` against those from ``k`` on (:func:`_fit_blocks`): their fit (``fp``,
    ``fs``: weighted by the known symbols), the power that does not fit in the suffix over the
    prefix's (``growth``) and over the prefix's power that fits (``signal``), and the known symbols
    on each side."""
    pre, suf = slice(0, k), slice(k, None)
    n_pre, n_suf = float(m[pre].sum()), float(m[suf].sum())
    fp, fs = float((m[pre] * f[pre]).sum()) / n_pre, float((m[suf] * f[suf]).sum()) / n_suf
    c_p = float((p[pre] * f[pre]).sum()) / n_pre
    i_p, i_s = float((p[pre] * (1 - f[pre])).sum()) / n_pre, float((p[suf] * (1 - f[suf])).sum()) / n_suf
    return dict(fp=fp, fs=fs, growth=i_s / max(i_p, 1e-300), signal=i_s / max(c_p, 1e-300), n_pre=n_pre, n_suf=n_suf)


def _best_split(f: np.ndarray, m: np.ndarray) -> int:
    """The block k (1 .. len - 1) that best splits the blocks' fit ``f`` (weights ``m``) into a prefix
    and a worse suffix: the largest mean shift (mean before - mean after) sqrt(n_pre n_suf / n);
    0 where none is worse."""
    if len(f) < 2:
        return 0
    cw, cf = np.cumsum(m, dtype=np.float64), np.cumsum(m * f)
    wp, ws = cw[:-1], cw[-1] - cw[:-1]
    shift = (cf[:-1] / wp - (cf[-1] - cf[:-1]) / ws) * np.sqrt(wp * ws / cw[-1])
    k = int(np.argmax(shift))
    return k + 1 if shift[k] > 0 else 0


def _error_power(d: "_Demod") -> float:
    """Error power of a demodulation's known symbols (:func:`_fit_errors`) relative to
    the mean power of the tracked gain there."""
    g2 = float(np.mean(d.track.g_loo.real ** 2 + d.track.g_loo.imag ** 2))
    return float(d.err.mean()) / max(g2, 1e-30)


@functools.lru_cache(maxsize=16)
def _discriminators(half: int, sps: int, beta: float, scale: float, span: int) -> dict:
    """What :meth:`FrameRx._timing_drift` needs of the pulse: neighbour offsets m, their
    responses half a symbol early and late, the two discriminators' slopes."""
    m = np.concatenate([np.arange(-span, 0), np.arange(1, span + 1)])
    return dict(m=m, early=sync.pulse_response((m - 0.5) * sps, half, sps, beta, scale).astype(np.complex64),
                late=sync.pulse_response((m + 0.5) * sps, half, sps, beta, scale).astype(np.complex64),
                gain_fine=sync.timing_gain(half, sps, beta, scale, span),
                gain_coarse=sync.timing_gain(half, sps, beta, scale, 0))


@dataclass
class RxFrame:
    """One received burst.

    Attributes:
        header: the decoded :class:`Header`.
        symbols: complex64 (header.chunk_symbols,), equalised latent symbols at unit
            power scale (not de-normalised by alpha).
        snr_db: Es/N0 estimate of the equalised payload, dB.
        noise_var: complex noise variance estimate of the equalised payload (= 10**(-snr_db/10)).
        cfo: carrier frequency offset estimate, cycles/sample.
        gain: complex one-tap channel gain on the preamble (matched-filter output /
            transmitted symbol, after CFO correction), before equalisation; its phase
            is the carrier phase at the burst's first sample.
        start: absolute index (in the pushed stream) of the burst's first sample.
        sro_ppm: sample-rate offset tracked within the burst (ppm, > 0: the receiver's
            sample clock is faster than the transmitter's, so each symbol arrives a
            little later than the last), 0 where no drift was significant (and always
            at sps = 1).
        symbol_noise_var: float32 (header.chunk_symbols,), each payload symbol's noise
            variance after equalisation (the noise over the tracked channel gain there);
            0 where ``erased``; its mean over the others is ``noise_var``.  None where not
            computed.
        tracked: False when the pilots could not follow the channel (deep fade, lost
            lock; counter ``track_lost``): the estimate is honest but low.
        track_span: the channel tracker's window, symbols (chosen per burst).
        erased: bool (header.chunk_symbols,), True where a payload symbol had no signal
            (Es/N0 below ``ERASE_SNR_DB`` there: a dropout, a fade's null) or came after the
            burst was cut: its symbol is 0; None when none was.
        cut: where the burst was cut short (a TX underflow, an RX overflow, a collision: its
            known symbols stop fitting there, counter ``bursts_cut``), the index of the first
            payload symbol after it: every one from there on is erased.  None where not cut.
    """

    header: Header
    symbols: np.ndarray
    snr_db: float
    noise_var: float
    cfo: float
    gain: complex
    start: int
    sro_ppm: float = 0.0
    symbol_noise_var: Optional[np.ndarray] = None
    tracked: bool = True
    track_span: int = 0
    erased: Optional[np.ndarray] = None
    cut: Optional[int] = None


class _Demod(NamedTuple):
    """One demodulation of a burst body (see :meth:`FrameRx._equalise_track`)."""

    y: np.ndarray          # matched-filter outputs, symbols -h ..
    eq: np.ndarray         # equaliser taps
    z: np.ndarray          # equalised body
    pos: np.ndarray        # positions of the known symbols used
    omega: float           # residual frequency, rad/symbol
    track: sync.GainTrack  # complex gain along the body
    ref: np.ndarray        # the known symbols' values at pos
    err: Optional[np.ndarray] = None  # their scaled leave-one-out errors (_fit_errors)
    loo: bool = False      # z at the known symbols is the equaliser's own leave-one-out output


@dataclass
class _Burst:
    """A verified detection in progress."""

    tau: float                       # absolute sample index of the burst's sample 0 (fractional)
    cfo: float                       # cycles/sample, from the preamble
    stage: str = "sync"              # sync -> soft (-> copy) -> decoded; "dead" once dropped
    eq: Optional[np.ndarray] = None  # equaliser taps
    gain: complex = 0j
    y: Optional[np.ndarray] = None   # raw matched-filter outputs so far (FrameRx._mf)
    yc: Optional[np.ndarray] = None  # the same, the pulse pair's interference removed
    z: Optional[np.ndarray] = None    # equalised header region (before phase correction)
    soft: Optional[np.ndarray] = None  # phase-corrected header symbols
    g: Optional[np.ndarray] = None    # tracked complex gain over the header region
    header: Optional[Header] = None
    header_bytes: bytes = b""
    resync: bool = False              # found from its resync preamble (equaliser trained there)
    hit: Optional[np.ndarray] = None  # body symbols near replaced samples (FrameRx._lost_energy), or None
    cut: Optional[int] = None         # body position from which the burst was cut short (FrameRx._find_cut)


class FrameRx:
    """Streaming receiver of :class:`~gr_gdmcom.phy.FrameTx` bursts.

    Args:
        cfg: :class:`FrameConfig` (must match the transmitter's; default if None).
        max_slice: most samples processed per pass.
        track_timing: follow a sampling-clock drift within bursts (sps >= 2); False
            demodulates every burst on the clock found on its preamble; None: as
            ``cfg.track_timing``.

    Attributes:
        counters: dict of int, see ``COUNTERS``.

    The first receiver of a process sets numpy's BLAS to one thread (:func:`single_blas_thread`;
    not where ``OPENBLAS_NUM_THREADS`` or the like is set).
    """

    def __init__(self, cfg: Optional[FrameConfig] = None, max_slice: int = MAX_SLICE,
                 track_timing: Optional[bool] = None):
        single_blas_thread()
        self.cfg = cfg or FrameConfig()
        self.layout = lay = self.cfg.layout()
        c = self.cfg
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.max_slice = int(max_slice)
        self.track_timing = self.cfg.track_timing if track_timing is None else bool(track_timing)
        self.dispersive = bool(self.cfg.dispersive_eq)
        self._sps, self._seg, self._reps = c.sps, c.preamble_seg, c.preamble_reps
        self._seglen = c.preamble_seg * c.sps
        # the verification score works on raw samples: it goes as the per-sample SNR
        # (Es/N0 / sps) on a preamble and as 1/sqrt(samples) on noise, both falling as
        # 1/sqrt(sps) relative to sps 2, where verify_threshold is set (0 dB: 0.33 against
        # 0.12; at sps 8 a fixed 0.12 rejected 21 bursts of 24 there): scaled above sps 2
        self._verify_threshold = c.verify_threshold * min(1.0, math.sqrt(2.0 / c.sps))
        self._npre = len(lay.preamble)
        self._h = c.eq_taps // 2
        # the truncated pulse pair's known interference, removed from the matched filter's
        # outputs (sync.isi_taps), and how many symbols it reaches
        self._isi = sync.isi_taps(lay.half, c.sps, c.rolloff, lay.rrc_scale)
        self._reach = self._h + (int(np.abs(self._isi[0]).max()) if len(self._isi[0]) else 0)
        self._delta = self._seglen // 2 + c.sps  # fine-timing search, +- samples
        cut = slice(lay.half, lay.half + self._reps * self._seglen)
        self._tseg = lay.template[cut].reshape(self._reps, -1)
        # verification templates: the preamble [, the resync preamble before the header copy]
        self._resync_at = lay.resync_start()
        kinds = [self._tseg]
        if self._resync_at >= 0:
            kinds.append(lay.shape(lay.resync)[cut].reshape(self._reps, -1))
        self._tkinds = np.stack(kinds)
        # samples from a burst's sample 0 to its resync preamble's, as seen by the detector
        self._resync_off = (self._npre + self._resync_at) * c.sps if self._resync_at >= 0 else 0
        # the templates as received with a CFO of n whole steps (1/seglen) more: n = +-1 .. +-cfo_search,
        # kind-major ((kind, step) -> kind * len(steps) + step)
        self._steps = [sgn * n for n in range(1, c.cfo_search + 1) for sgn in (1, -1)]
        ramp = np.exp(2j * np.pi * np.arange(self._seglen) / self._seglen)
        self._tsteps = np.stack([t * ramp ** n for t in kinds for n in self._steps]) if self._steps else None
        self._hdr_pos, self._hdr_pilots, self._hdr_body = lay.header_region()
        self._copy_pos, self._copy_pilots, self._copy_body = lay.copy_region()
        # channel-tracker windows, symbols (the longest: phase_window pilot periods)
        self._spans = [k * (c.pilot_spacing + 1) for k in TRACK_SPANS if k <= max(c.phase_window, TRACK_SPANS[0])]
        self._step_window = STEP_WINDOW * (c.pilot_spacing + 1)
        # a preamble closer than this (samples) to a burst's end leaves too few of its known symbols
        # after it to cut it (CUT_MIN_KNOWN_AT): detection need not have passed it when the burst is read
        self._late = CUT_MIN_KNOWN_AT * (c.pilot_spacing + 1) * c.sps
        self._chan = channel_taps(c.band_edge)
        self._lag = 0 if self._chan is None else (len(self._chan) - 1) // 2
        # (not at sps 1: there the bursts' own lines -- the same preamble and pilots in every burst
        # -- reached the notch's threshold, with 16-symbol chunks at 41 dB)
        self._notch = ToneNotch(c.band_edge) if c.notch and c.sps > 1 else None
        self._ted = _discriminators(lay.half, c.sps, c.rolloff, lay.rrc_scale, c.rrc_span) if c.sps > 1 else None
        # samples kept before the scan position (sync window; a resync preamble's burst start)
        # and padded at the stream edges
        self._history = self._sps * (-(-(lay.half + self._delta + 4 * c.sps) // c.sps))
        if self._resync_at >= 0:
            self._history += self._resync_off + (self._reach + 4) * c.sps + 2 * lay.half + self._seglen
        self._tail_pad = (self._reach + 2) * c.sps + 2 * lay.half + self._reps * self._seglen + self._delta \
            + self._drift_margin(MAX_CHUNK_LIMIT + 2 * HEADER_CODED_BITS)
        self._reset(0)

    # ------------------------------------------------------------------ public
    def push(self, samples) -> List[RxFrame]:
        """Feed samples; return the frames completed by them.

        Args:
            samples: 1-D complex array-like (complex64 preferred; any real or complex
                numeric dtype is converted).  NaN/inf samples are counted in
                ``nonfinite_samples`` and replaced by 0.
        Returns:
            list of :class:`RxFrame`, in stream order.
        Raises:
            TypeError: non-numeric input.  ValueError: not one-dimensional.
        """
        x = self._sanitize(samples)
        frames: List[RxFrame] = []
        for k in range(0, len(x), self.max_slice):
            part = self._select(x[k: k + self.max_slice])
            self._pushed += min(self.max_slice, len(x) - k)
            self._append(part)
            self._end += len(part)
            frames += self._process(final=False)
        return frames

    def flush(self) -> List[RxFrame]:
        """End of stream: decode what is complete; bursts cut off by the end count as
        ``truncated``.  The receiver is then ready for a new stream (indices go on)."""
        # the channel filter's last outputs (its delay) and the padding, through it
        tail = self._select(np.zeros(self._lag + self._tail_pad, np.complex64))
        self._append(tail)
        self._end = self._pushed  # (the padding is not counted)
        frames = self._process(final=True)
        for b in self._pending:
            if b.stage != "dead":
                self._drop("truncated", f"{self._what(b)} cut off by the end of the stream")
        self._reset(self._end)
        return frames

    @property
    def position(self) -> int:
        """Absolute index up to which pushed samples have been buffered (the samples pushed so
        far less the channel filter's delay; any flush's padding not counted)."""
        return self._end

    def image_deadline(self, frame: RxFrame) -> Optional[int]:
        """Stream position by which the next chunk of ``frame``'s image has been received, if
        it was sent: ``cfg.image_timeout`` durations of the image's largest burst after this
        burst's end, plus this receiver's own delay (up to about two bursts' overhead: the
        detector waits for a preamble's worth past a peak) taken twice.  None with
        ``image_timeout`` 0.  :meth:`Reassembler.idle <gr_gdmcom.phy.Reassembler.idle>`
        publishes an image still missing chunks there."""
        if not self.cfg.image_timeout:
            return None
        h, lay = frame.header, self.layout
        largest = -(-int(h.total_symbols) // max(int(h.chunk_count), 1))
        end = int(frame.start) + lay.burst_samples(len(frame.symbols))
        return end + int(math.ceil(self.cfg.image_timeout * lay.burst_samples(largest))) + 4 * lay.burst_samples(0)

    # --------------------------------------------------------------- internals
    def reset(self):
        """Drop the buffered samples and the bursts in progress (after an error in the
        caller's processing); the next pushed sample continues the stream's indices."""
        self._reset(self._pushed)

    def _reset(self, at: int):
        """Fresh stream state; the next pushed sample gets absolute index ``at``."""
        start = (at - self._history - self._delta - self.layout.half) // self._sps * self._sps
        self._store = np.zeros(max(at - start, 1 << 16), np.complex64)  # zeros before the stream start
        self._lo, self._hi = 0, at - start  # self._store[_lo:_hi] holds samples _buf_start..
        self._buf_start = start
        self._end = self._stream_start = self._pushed = at
        # the channel filter: its state, and its first outputs still to drop (its delay)
        self._zi = None if self._chan is None else np.zeros(len(self._chan) - 1, np.complex64)
        self._skip = self._lag
        if self._notch is not None:
            self._notch.reset()
        self._scan = start // self._sps  # next detection-metric index (symbol-rate)
        self._pending: List[_Burst] = []
        self._last_end = -math.inf
        self._bad = np.zeros(0, np.int64)  # absolute indices of buffered samples _sanitize replaced

    def _sanitize(self, samples) -> np.ndarray:
        a = np.asarray(samples)
        if a.dtype == object or a.dtype == bool or not np.issubdtype(a.dtype, np.number):
            raise TypeError(f"FrameRx.push needs complex samples, got dtype {a.dtype}")
        if a.ndim != 1:
            raise ValueError(f"FrameRx.push needs a 1-D array, got shape {a.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            x = a.astype(np.complex64, copy=True)
        with np.errstate(invalid="ignore"):  # (NaN compares False)
            bad = ~(np.abs(x.real) <= MAX_SAMPLE) | ~(np.abs(x.imag) <= MAX_SAMPLE)
        nbad = int(np.count_nonzero(bad))
        if nbad:
            x[bad] = 0
            # warn on the first occurrence only (a GNU Radio block pushes many times)
            (log.debug if self.counters["nonfinite_samples"] else log.warning)(
                "non-finite or out-of-range (beyond +-%g) input samples replaced by 0: %d in this block of samples "
                "(all are counted in nonfinite_samples; later ones are logged at debug level)", MAX_SAMPLE, nbad)
            self.counters["nonfinite_samples"] += nbad
            # remembered: the symbols they touch get the energy they lost as noise (_lost_energy)
            self._bad = np.concatenate([self._bad, self._pushed + np.flatnonzero(bad)])
        return x

    def _select(self, x: np.ndarray) -> np.ndarray:
        """Step 0: ``x`` through the channel filter (state kept across calls), its delay
        dropped at the stream's start, so that buffer index = input index."""
        if self._chan is not None:
            z = np.concatenate([self._zi, x])
            self._zi = z[len(x):]  # the filter's memory: the last len(taps) - 1 inputs
            x = np.convolve(z, self._chan, "valid")  # (each output a direct sum: the same in any chunking)
            k = min(self._skip, len(x))
            self._skip -= k
            x = x[k:]
        if self._notch is None:
            return x
        x = self._notch.process(x)  # and the tones inside the band
        self.counters["tones_notched"] = self._notch.found
        return x

    @property
    def _buf(self) -> np.ndarray:
        """The buffered samples (a view), absolute indices _buf_start ..."""
        return self._store[self._lo: self._hi]

    def _append(self, x: np.ndarray):
        """Append samples, growing (doubling) or compacting the store: amortised O(1)."""
        n = self._hi - self._lo
        if self._hi + len(x) > len(self._store):
            store = self._store if n + len(x) <= len(self._store) // 2 else \
                np.empty(2 * (n + len(x)), np.complex64)
            store[:n] = self._store[self._lo: self._hi]
            self._store, self._lo, self._hi = store, 0, n
        self._store[self._hi: self._hi + len(x)] = x
        self._hi += len(x)

    def _samples(self, lo: int, hi: int) -> np.ndarray:
        """Buffer samples with absolute indices lo..hi-1 (must be buffered)."""
        return self._store[self._lo + lo - self._buf_start: self._lo + hi - self._buf_start]

    def _available(self, hi: int) -> bool:
        return hi <= self._buf_start + self._hi - self._lo

    def _process(self, final: bool) -> List[RxFrame]:
        self._detect(final)
        ready = [b for b in self._pending if b.stage == "sync" and self._header_soft(b, final)]
        if ready:
            self._decode(ready)
        ready = [b for b in self._pending if b.stage == "copy" and self._copy_soft(b, final)]
        if ready:
            self._decode(ready, combined=True)
        frames = self._finish(final)
        self._trim()
        return frames

    # detection ---------------------------------------------------------------
    def _detect(self, final: bool):
        """Scan the metric from ``_scan``; verify and synchronise each peak."""
        cfg, sps, seg = self.cfg, self._sps, self._seg
        lo = self._scan * sps
        n_sym = max(0, (self._buf_start + self._hi - self._lo - lo) // sps)
        y = sync.integrate_dump(self._samples(lo, lo + n_sym * sps), sps)
        grid = -self._scan % DETECT_STRIDE  # stride grid on absolute indices: any chunking, same crossings
        metric, _ = sync.preamble_metric(y[grid:], seg, self.layout.barker, DETECT_STRIDE)
        above = grid + np.flatnonzero(metric > cfg.detect_threshold) * DETECT_STRIDE
        # the peak may follow the first crossing by a whole preamble: partial overlaps
        # with silence before a burst also score high.  And by more: at 25 dB the metric
        # crosses the threshold where the window overlaps the preamble by a segment or two, and
        # the partial overlap's own peak (0.47, 192 symbols early at sps 4) was taken, verified
        # (0.085) and the scan resumed a preamble after it, past the true peak: the burst was
        # read from the wrong place, its header failed, and it was lost when nothing after it
        # (its resync preamble) was received.  So the window reaches one preamble further.
        span = (2 * self._reps + 2) * seg + DETECT_STRIDE
        n_metric = len(y) - self._reps * seg + 1
        pos = 0
        while True:
            k = np.searchsorted(above, pos)
            if k >= len(above):
                pos = max(pos, n_metric)
                break
            first = max(int(above[k]) - DETECT_STRIDE + 1, pos)
            if first + span >= n_metric and not final:
                pos = first
                break
            local, p = sync.preamble_metric(y[first: first + span + self._reps * seg], seg, self.layout.barker)
            if not len(local):  # end of a flushed stream
                pos = n_metric
                break
            best = int(np.argmax(local))
            # The true peak follows a partial overlap's peak by up to a preamble, so the window
            # must reach a preamble past the peak it takes.  Where the first crossing was noise
            # well before the burst (the threshold is low, for 0 dB), the window ended between
            # the partial peak and the true one: at sps 8, 20-40 dB, 13-17 of 40 bursts after a
            # silent lead were read from the partial peak, their headers failed and they were
            # lost.  So the window moves up to just before its peak until a preamble follows
            # it (from the same crossing in any chunking: a window not buffered yet waits).
            start, wait = first, False
            while best + (self._reps + 1) * seg >= len(local) and best > seg:
                if first + best - seg + span >= n_metric and not final:
                    wait = True
                    break
                first += best - seg
                local, p = sync.preamble_metric(y[first: first + span + self._reps * seg], seg, self.layout.barker)
                best = int(np.argmax(local))
            if wait:
                pos = start
                break
            pk = first + best
            f0 = -cmath.phase(p[best]) / (2 * np.pi * self._seglen)
            coarse = int(round((self._scan + pk) * sps + (sps - 1) / 2 - self.layout.half))
            verdict = self._synchronise(coarse, f0, final, float(local[best]))
            if verdict is None:  # sync window not buffered yet
                pos = start
                break
            if verdict:
                pos = pk + self._reps * seg
            else:  # skip the rest of this excursion above the threshold
                below = np.flatnonzero(local[best:] <= cfg.detect_threshold)
                pos = pk + (int(below[0]) if len(below) else len(local) - best)
                # and at least this crossing: the every-symbol metric may stay at or below
                # the threshold where the strided one crossed it (float rounding of the two
                # prefix sums, e.g. a noiseless burst ending in the flush's zeros); without
                # this the same crossing was found again forever
                pos = max(pos, int(above[k]) + 1)
        self._scan += pos

    def _synchronise(self, coarse: int, f0: float, final: bool, metric: float = 0.0) -> Optional[bool]:
        """Fine timing, CFO and verification of a detection at ``coarse`` (absolute
        sample, ``metric``: the detection metric there).  Appends a :class:`_Burst`
        and returns True, False if rejected, None if the samples are not buffered yet."""
        lo = coarse - self._delta + self.layout.half
        hi = lo + 2 * self._delta + self._reps * self._seglen
        if not self._available(hi):
            return None
        raw = self._samples(lo, hi)
        rot = self._derotate(raw, f0, lo - coarse)
        best_v, kind, n_verify = -1.0, 0, 0
        for k in range(len(self._tkinds)):  # the preamble, or the resync preamble (the better verified)
            if k and best_v >= RESYNC_GATE:
                break  # verified as the preamble beyond what a resync preamble can score on it
            c, score, verify = sync.preamble_correlation(rot, self._tkinds[k])
            lag_k, f1, best_k = sync.fine_timing_cfo(c, score, self._seglen, self._sps > 1)
            n_verify = len(verify)
            if verify[best_k] > best_v:
                best_v, kind, lag, f_hat, best = float(verify[best_k]), k, lag_k, f0 + f1, best_k
        if self._tsteps is not None and best_v < CFO_STEP_GATE * math.sqrt(metric):
            # The detector reads the CFO modulo 1/seglen.  Off by n such steps, a Frank
            # segment still matches about 0.75 about n symbols away: the correlation is
            # then well below what the detection metric promises (on time: about its
            # square root, at 10 dB and above), and every step is tried near that lag,
            # the best-verifying kept.  A step of 1/seglen rotates each segment by whole
            # turns, so it is a modulation of the template (one call for all steps).
            w = (self.cfg.cfo_search + 2) * self._sps
            l_lo, l_hi = max(best - w, 0), min(best + w, n_verify - 1)
            part = self._derotate(raw[l_lo: l_hi + self._reps * self._seglen], f0, lo + l_lo - coarse)
            c_n, score_n, v_n = sync.preamble_correlation(part, self._tsteps)
            b = np.argmax(score_n, axis=1)
            h = int(np.argmax(v_n[np.arange(len(b)), b]))
            if v_n[h, b[h]] > best_v:
                lag_n, f1, _ = sync.fine_timing_cfo(c_n[h], score_n[h], self._seglen, self._sps > 1)
                kind, step = divmod(h, len(self._steps))
                best_v, lag, f_hat = float(v_n[h, b[h]]), l_lo + lag_n, f0 + self._steps[step] / self._seglen + f1
        if best_v < self._verify_threshold:
            self.counters["candidates_rejected"] += 1
            log.debug("candidate at %d rejected (verify %.3f)", coarse, best_v)
            return False
        tau = coarse - self._delta + lag
        if kind:
            return self._resynced(tau - self._resync_off, f_hat, best_v)
        if tau < self._last_end - self._sps:
            self._drop("overlapping", f"a preamble at sample {tau:.0f} inside the burst before it (an echo, or "
                                      "two transmitters)")
            return False
        self._pending.insert(sum(p.tau < tau for p in self._pending), _Burst(tau=tau, cfo=f_hat))
        self.counters["bursts_detected"] += 1
        log.debug("burst at %.2f: cfo %.5f, verify %.3f", tau, f_hat, best_v)
        return True

    def _resynced(self, tau: float, f_hat: float, verify: float) -> bool:
        """A verified resync preamble of a burst starting at ``tau``: nothing to do if that
        burst is already being read (or was read); else the burst is read from its start
        (buffered: ``_history``), its header through both copies (stage ``copy``)."""
        near = [b for b in self._pending if b.stage != "dead" and abs(b.tau - tau) <= self._seglen]
        if near or tau < self._last_end - self._sps:
            return True
        at = tau + self._resync_off
        for b in self._pending:  # inside a burst being read that began after the start it gives:
            # that burst's own resync preamble, early (samples were dropped before it: the burst
            # is cut there, _find_cut), not a burst that began before it
            span = self.layout.burst_samples(b.header.chunk_symbols) if b.header is not None \
                else self._resync_off + 2 * self._npre * self._sps
            if b.stage != "dead" and tau < b.tau < at < b.tau + span:
                log.debug("resync preamble at %.0f inside the burst at %.0f, early: not a burst", at, b.tau)
                return True
        if tau < self._stream_start:
            self._drop("truncated", f"a burst that began at sample {tau:.0f}, before the stream did "
                                    "(found from its resync preamble)")
            return True
        b = _Burst(tau=tau, cfo=f_hat, stage="copy", resync=True)
        self._pending.insert(sum(p.tau < tau for p in self._pending), b)
        self.counters["bursts_detected"] += 1
        self.counters["bursts_resynced"] += 1
        log.debug("burst at %.2f from its resync preamble: cfo %.5f, verify %.3f", tau, f_hat, verify)
        return True

    @staticmethod
    def _derotate(r: np.ndarray, f: float, n0: int) -> np.ndarray:
        """r[n] * exp(-j 2 pi f (n + n0))."""
        return r * sync.phasor(f, len(r), n0)

    # demodulation ------------------------------------------------------------
    def _need(self, b: _Burst, n_body: int) -> int:
        """One past the last absolute sample used to demodulate ``n_body`` body symbols."""
        return int(math.floor(b.tau + self.layout.half)) + (self._npre + n_body + self._reach - 1) * self._sps \
            + self.layout.half + 2 + self._drift_margin(n_body)

    def _drift_margin(self, n_body: int) -> int:
        """Samples beyond the nominal end a drift-tracked burst of ``n_body`` symbols may read."""
        return 0 if self._sps < 2 else self._sps * (2 + int(n_body * MAX_SRO_PPM * 1e-6))

    def _mf(self, b: _Burst, n_sym: int) -> np.ndarray:
        """CFO-corrected matched-filter outputs of symbols -h .. n_sym + h - 1 (symbol 0 =
        first preamble symbol), the pulse pair's interference removed
        (:func:`sync.cancel_isi`).  The burst caches the raw outputs (symbols from
        h + its reach before symbol 0 on) and the cleaned ones, and extends both (an
        output depends only on raw ones already there).  complex64 (n_sym + 2 h,)."""
        lay, sps, h = self.layout, self._sps, self._reach
        have = 0 if b.y is None else len(b.y)
        if have < n_sym + 2 * h:
            base = b.tau + lay.half
            n0 = int(math.floor(base))
            lo = n0 + (have - h) * sps - lay.half
            hi = n0 + (n_sym + h - 1) * sps + lay.half + 2
            r = self._derotate(self._samples(lo, hi), b.cfo, lo - int(math.floor(b.tau)))
            taps = sync.mf_taps(base - n0, lay.half, sps, self.cfg.rolloff, lay.rrc_scale) if sps > 1 \
                else np.ones(1, np.float32)
            new = sync.matched_filter(r, taps, sps, n_sym + 2 * h - have)
            b.y = new if b.y is None else np.concatenate([b.y, new])
        want, done = n_sym + 2 * self._h, 0 if b.yc is None else len(b.yc)
        if done < want:
            new = sync.cancel_isi(b.y[done: n_sym + 2 * h], *self._isi)
            b.yc = new if b.yc is None else np.concatenate([b.yc, new])
        return b.yc[:want]

    def _mf_at(self, b: _Burst, t: np.ndarray) -> np.ndarray:
        """CFO-corrected matched-filter outputs at absolute fractional instants ``t``
        (increasing), with :meth:`_mf`'s carrier phase reference.  complex64.

        The carrier is removed per output (its phase at the window's first sample) and
        per tap (folded into the taps), not over every sample between the instants."""
        half = self.layout.half
        table = sync.mf_table(half, self._sps, self.cfg.rolloff, self.layout.rrc_scale)
        n = np.floor(t).astype(np.int64)
        lo, hi = int(n[0]) - half, int(n[-1]) + half + 2
        r = self._samples(lo, hi)
        f = b.cfo
        ramp = np.exp(-2j * np.pi * f * np.arange(table.shape[1])).astype(np.complex64)
        y = sync.matched_filter_at(r, t - lo, half, table, ramp)
        return y * np.exp(-2j * np.pi * f * (n - half - int(math.floor(b.tau)))).astype(np.complex64)

    def _instants(self, b: _Burst, sym: np.ndarray, drift: float) -> np.ndarray:
        """Absolute sample instants of symbols ``sym`` (0 = first preamble symbol) on a
        symbol clock drifting by ``drift`` samples per symbol, exact at the middle of the
        preamble that gave ``b.tau`` (its timing is the preamble's average).  Anchored
        elsewhere -- it was the middle of the preamble + header region -- every instant
        carried a constant offset of drift x the distance between the two (0.24 samples
        at 200 ppm), which the short equaliser only partly absorbs: a 35 dB floor on a
        noiseless 200 ppm burst, 51 dB anchored here."""
        s_ref = (self._npre + self._resync_at + len(self.layout.resync) / 2.0) if b.resync \
            else self._npre / 2.0
        return b.tau + self.layout.half + sym * self._sps + drift * (sym - s_ref)

    def _timing_drift(self, b: _Burst, d: _Demod, pilot_pos: np.ndarray, drift: float,
                      sigmas: float = TIMING_SIGMAS) -> float:
        """Residual sampling-clock drift of a demodulation ``d`` done with ``drift``,
        samples per symbol, from the pilots; 0.0 where it is not significant.

        At each pilot, matched-filter outputs half a symbol early and late against the
        on-time output ``d.y`` give a timing discriminator, summed over each of
        TIMING_WINDOWS windows (:func:`sync.timing_q`); a line through the
        windows' offsets gives the drift.  Two discriminators: the plain one (the
        neighbouring symbols' interference is noise: coarse, but good to half a
        symbol) and one with that interference predicted from the demodulation
        (equalised, phase-corrected body) and removed (about ten
        times finer at high SNR, good to about 0.2 symbol).  Each is fitted on the
        windows within its range from the first on; the fine one where at least
        TIMING_MIN_FIT windows are (the last windows of a 20 ppm burst at 10 dB
        can leave its range: the coarse fit of all 8 then fell short of the evidence
        asked in about 1 burst of 3), else the coarse one."""
        lay, sps, h, npre = self.layout, self._sps, self._h, self._npre
        n_win, per = TIMING_WINDOWS, len(pilot_pos) // TIMING_WINDOWS
        if sps < 2 or per < TIMING_MIN_PILOTS:
            return 0.0
        use = n_win * per
        pos, pil = pilot_pos[:use], lay.pilots[:use]
        rot = np.conj(d.track.g) / np.maximum(np.abs(d.track.g), 1e-30)  # the tracked phase
        body = (d.z * rot).astype(np.complex64)
        g = complex((np.conj(lay.pilots[: len(pilot_pos)]) * body[pilot_pos]).mean())
        if not np.isfinite(g) or abs(g) < 1e-9:
            return 0.0
        span, ted = self.cfg.rrc_span, self._ted
        s = npre + pos
        t = self._instants(b, s, drift)
        half_sym = self._mf_at(b, np.concatenate([t - sps / 2, t + sps / 2]))
        rp = rot[pos]
        early, y0, late = half_sym[:use] * rp, d.y[h + s] * rp, half_sym[use:] * rp
        gy = complex((y0 * np.conj(pil)).mean())  # the pilots' gain on the matched filter's side
        est = np.concatenate([lay.preamble, body / g, np.zeros(span + 1, np.complex64)])  # symbol estimates
        est[npre + pilot_pos] = lay.pilots[: len(pilot_pos)]
        near = est[np.clip(s[:, None] - ted["m"][None, :], 0, len(est) - 1)]  # the neighbours' estimates

        def win(v):
            return (v * np.conj(pil)).reshape(n_win, per).sum(1)

        x = s.reshape(n_win, per).mean(1)
        for kind, e_out, l_out, cancelled in (
                ("fine", early - gy * (near @ ted["early"]), late - gy * (near @ ted["late"]), True),
                ("coarse", early, late, False)):
            gain = ted["gain_fine"] if cancelled else ted["gain_coarse"]
            eps = sync.timing_q(win(e_out), win(y0), win(l_out)) / gain  # offsets for small errors, samples
            # the windows from the training region on while the offset stays in range
            out = np.abs(eps - eps[0]) > (TIMING_FINE_RANGE if cancelled else TIMING_COARSE_RANGE) * sps
            n_fit = int(np.argmax(out)) if out.any() else n_win
            log.debug("%s timing offsets %s, %d in range", kind, np.round(eps, 3), n_fit)
            if n_fit >= TIMING_MIN_FIT:
                break
        else:
            return 0.0
        xf, ef = x[:n_fit] - x[:n_fit].mean(), eps[:n_fit]
        slope = float((xf * ef).sum() / (xf * xf).sum())
        resid = ef - ef.mean() - slope * xf
        se = math.sqrt(float((resid ** 2).sum()) / (n_fit - 2) / float((xf * xf).sum()))
        log.debug("%s fit over %d windows: drift %.3g samples/symbol (se %.2g)", kind, n_fit, slope, se)
        if abs(slope) * float(s[-1] - s[0]) < TIMING_MIN_DRIFT or abs(slope) < sigmas * se:
            return 0.0
        return slope

    def _polish_drift(self, b: _Burst, best, known, head, pilot_pos, n_body: int):
        """Final drift: the known symbols' error power at the drift found and POLISH_PPM
        either side, 2 POLISH_PPM either side, a parabola through the five, the
        demodulation at its vertex if that fits better.  ``best``: (error power, drift,
        demodulation); returns the same for the best found."""
        step = max(POLISH_PPM * 1e-6 * self._sps, POLISH_MIN_SPAN / max(n_body, 1))
        drifts = best[1] + step * np.arange(-2, 3)
        demods = {0: best[2]}
        powers = np.empty(5)
        for i, dr in enumerate(drifts):
            if i != 2:
                demods[i - 2] = self._demodulate(b, self._mf_drift(b, self._npre + n_body, float(dr)), known, head,
                                                 pilot_pos, n_body)
            powers[i] = _error_power(demods[i - 2])
        a2, a1, _ = np.polyfit(np.arange(-2, 3), powers, 2)
        i = int(np.argmin(powers))
        cand = (float(powers[i]), float(drifts[i]), demods[i - 2])
        if a2 > 0 and abs(a1 / (2 * a2)) < 2:
            dr = best[1] - step * a1 / (2 * a2)
            dm = self._demodulate(b, self._mf_drift(b, self._npre + n_body, dr), known, head, pilot_pos, n_body)
            if _error_power(dm) < cand[0]:
                cand = (_error_power(dm), dr, dm)
        return cand if cand[0] < best[0] else best

    def _acquire_drift(self, b: _Burst, pilot_pos: np.ndarray) -> float:
        """Wide-range sampling-clock drift (samples per symbol), 0.0 if not significant.

        The early/late discriminators of :meth:`_timing_drift` see half a symbol; a
        drift of a few hundred ppm moves the last pilots by several samples.  Here the
        pilots of each of up to ACQ_WINDOWS windows (of at least TIMING_MIN_PILOTS) are correlated with the matched filter
        output at a grid of delays (ACQ_STEPS per symbol) spanning the largest offset
        ACQ_MAX_PPM can make (coherently over ACQ_COHERENT pilots, then in power, so a
        residual carrier does not matter), the peak refined by a parabola, and a line
        fitted through the windows' delays (outliers beyond 3 median deviations dropped)."""
        sps, lay, npre = self._sps, self.layout, self._npre
        n_win = min(ACQ_WINDOWS, len(pilot_pos) // TIMING_MIN_PILOTS)
        per = len(pilot_pos) // max(n_win, 1) // ACQ_COHERENT * ACQ_COHERENT
        if sps < 2 or n_win < TIMING_MIN_FIT + 2 or per < ACQ_COHERENT:
            return 0.0
        use = n_win * per
        s = npre + pilot_pos[:use]
        t0 = self._instants(b, s, 0.0)
        reach = ACQ_MAX_PPM * 1e-6 * sps * float(max(s[-1] - (npre + self._hdr_body) / 2.0, 1.0)) + sps
        step = sps / ACQ_STEPS
        delays = np.arange(-math.ceil(reach / step), math.ceil(reach / step) + 1) * step
        pil = np.conj(lay.pilots[:use])
        power = np.empty((len(delays), n_win))
        for i, dl in enumerate(delays):
            c = (self._mf_at(b, t0 + dl) * pil).reshape(-1, ACQ_COHERENT).sum(1)
            power[i] = (c.real ** 2 + c.imag ** 2).reshape(n_win, -1).sum(1)
        k = np.clip(np.argmax(power, axis=0), 1, len(delays) - 2)
        cols = np.arange(n_win)
        a, m, c = power[k - 1, cols], power[k, cols], power[k + 1, cols]
        den = a - 2 * m + c
        frac = np.where(den < 0, np.clip(0.5 * (a - c) / np.where(den < 0, den, -1.0), -0.5, 0.5), 0.0)
        eps = delays[k] + frac * step
        x = s.reshape(n_win, per).mean(1)
        keep = np.ones(n_win, bool)
        for _ in range(2):
            xf = x[keep] - x[keep].mean()
            slope = float((xf * (eps[keep] - eps[keep].mean())).sum() / (xf * xf).sum())
            resid = eps - eps[keep].mean() - slope * (x - x[keep].mean())
            mad = float(np.median(np.abs(resid[keep]))) + 1e-3 * sps
            keep = np.abs(resid) <= 3 * 1.4826 * mad
            if keep.sum() < TIMING_MIN_FIT:
                return 0.0
        xf, r = x[keep] - x[keep].mean(), resid[keep]
        se = math.sqrt(float((r ** 2).sum()) / max(int(keep.sum()) - 2, 1) / float((xf * xf).sum()))
        log.debug("wide timing offsets %s: drift %.3g samples/symbol (se %.2g)", np.round(eps, 2), slope, se)
        if abs(slope) * float(s[-1] - s[0]) < ACQ_MIN_DRIFT * sps or abs(slope) < TIMING_SIGMAS * se:
            return 0.0
        return slope

    def _error_growth(self, d: _Demod) -> float:
        """Cheap test before :meth:`_timing_drift`: the known symbols' error power
        (:func:`_fit_errors`) in the last quarter of the burst's pilots over the header
        region's (next to the equaliser's training); a sampling clock drift makes it grow.  0.0 where not
        applicable (sps = 1, short bursts)."""
        e, n_tail = d.err, self._n_tail(d)
        if not n_tail:
            return 0.0
        return float(e[-n_tail:].mean()) / max(float(e[: self._hdr_body].mean()), 1e-30)

    def _lost_share(self, d: _Demod) -> float:
        """The known symbols' error growth (:meth:`_error_growth`'s last quarter of the pilots
        against the header region) over the tracked gain's power in that quarter: whatever the
        SNR, large where a drift leaves nothing of the last symbols (the error grows by about
        the signal's power and the gain the tracker finds there shrinks), near 0 without one."""
        e, n_tail = d.err, self._n_tail(d)
        if not n_tail:
            return 0.0
        g = d.track.g[d.pos[-n_tail:]]
        p = float(np.mean(g.real ** 2 + g.imag ** 2))
        return (float(e[-n_tail:].mean()) - float(e[: self._hdr_body].mean())) / p if p > 0 else 0.0

    def _n_tail(self, d: _Demod) -> int:
        """How many of the last known symbols (a quarter of the pilots after the header
        region) the drift tests compare with the header region; 0 where not applicable."""
        n_tail = (len(d.err) - self._hdr_body) // 4
        return n_tail if self._sps >= 2 and n_tail >= TIMING_MIN_PILOTS else 0

    def _mf_drift(self, b: _Burst, n_sym: int, drift: float) -> np.ndarray:
        """:meth:`_mf` on a symbol clock drifting by ``drift`` (:meth:`_instants`)."""
        return sync.cancel_isi(self._mf_at(b, self._instants(b, np.arange(-self._reach, n_sym + self._reach), drift)),
                               *self._isi)

    def _equalise_track(self, b: _Burst, y: np.ndarray, n_body: int, pilot_pos: np.ndarray, known_head=None):
        """Equalise the body and track its complex gain on the pilots, or, with
        ``known_head`` (the known symbols of the whole header region: decoded header and
        pilots), on those and the pilots after them.

        Returns:
            (z complex64 (n_body,) equalised body, pos int (n_obs,) positions of the
             known symbols used, omega rad/symbol, the :class:`sync.GainTrack` (its
             window chosen on the pilots after the header region where there are any),
             ref complex (n_obs,) the known symbols' values).
        """
        return self._track(b, sync.equalise(y, b.eq, self._npre + n_body)[self._npre:], n_body, pilot_pos, known_head)

    def _track(self, b: _Burst, z: np.ndarray, n_body: int, pilot_pos: np.ndarray, known_head=None):
        """:meth:`_equalise_track` of an equalised body ``z``."""
        lay = self.layout
        pilots = lay.pilots[: len(pilot_pos)]
        omega = sync.residual_frequency(z[pilot_pos] * np.conj(pilots), pilot_pos)
        pos, ref = (pilot_pos, pilots) if known_head is None else self._known(known_head, pilot_pos)
        if b.cut is not None:  # cut short: nothing from there on is this burst's (FrameRx._find_cut)
            keep = pos < b.cut
            pos, ref = pos[keep], ref[keep]
        dead = _dead(z)[pos]
        if b.hit is not None:  # near samples replaced by 0: not the channel either
            dead |= b.hit[pos]
        if dead.any() and np.count_nonzero(~dead) >= max(8, len(pos) // 8):
            # a dropout: its known symbols say nothing of the channel (the track interpolates
            # over it; the payload symbols there are erased in _effective_noise)
            pos, ref = pos[~dead], ref[~dead]
        zk = z[pos] * np.conj(ref)
        track = sync.track_gain(zk, pos, n_body, omega, self._spans, pos >= self._hdr_body,
                                ref.real ** 2 + ref.imag ** 2, self._step_window, z.real ** 2 + z.imag ** 2)
        return z, pos, track.omega, track, ref

    def _known(self, known_head: np.ndarray, pilot_pos: np.ndarray):
        """The known symbols of a burst body: the header region's (``known_head``) and the
        payload pilots after it: (pos, ref)."""
        n_hp = len(self._hdr_pilots)
        return (np.concatenate([np.arange(self._hdr_body), pilot_pos[n_hp:]]),
                np.concatenate([known_head, self.layout.pilots[: len(pilot_pos)][n_hp:]]))

    def _known_all(self, b: _Burst, known_head: np.ndarray, pilot_pos: np.ndarray):
        """The known symbols :meth:`_track` starts from (header region and payload pilots), less
        those near replaced samples, before its cut and dead-stretch rules: (pos, ref)."""
        pos, ref = self._known(known_head, pilot_pos)
        if b.hit is not None:
            keep = ~b.hit[pos]
            pos, ref = pos[keep], ref[keep]
        return pos, ref

    def _header_soft(self, b: _Burst, final: bool) -> bool:
        """Stage A: header soft values once the header region is buffered."""
        if not self._available(self._need(b, self._hdr_body)):
            return False
        if final and int(math.floor(b.tau)) + (self._npre + self._hdr_body) * self._sps > self._end:
            b.stage = "dead"
            self._drop("truncated", f"{self._what(b)}: its header cut off by the end of the stream")
            return False
        lay, npre = self.layout, self._npre
        y = self._mf(b, npre + self._hdr_body)
        b.eq = sync.train_equaliser(y, lay.preamble, self.cfg.eq_taps)
        if not b.eq.any():
            return self._fail(b, "sync_fail", "degenerate equaliser")
        b.gain = complex((np.conj(lay.preamble) * y[self._h: self._h + npre]).sum() / npre)
        b.z, _, _, track, _ = self._equalise_track(b, y, self._hdr_body, self._hdr_pilots)
        b.g = track.g
        # weighted by the tracked gain (maximum-ratio): a symbol in a fade counts less
        b.soft = b.z[self._hdr_pos] * np.conj(b.g[self._hdr_pos])
        b.stage = "soft"
        return True

    def _decode(self, bursts: List[_Burst], combined: bool = False):
        """Batched decoding + CRC of the headers of ``bursts``; a header failing its CRC
        gets one decision-directed retry (:meth:`_retrack`), then waits for its copy
        (stage ``copy``, :meth:`_copy_soft`).  ``combined``: the soft values are the two
        copies' sum; a failure is final, and a header of a payload too short to have a
        copy is refused."""
        whitening = self.layout.header_whitening
        datas = decode_headers(np.stack([b.soft for b in bursts]), whitening)
        results = [self._parse(d) for d in datas]
        retry = [i for i, r in enumerate(results) if isinstance(r, HeaderError) and r.reason in ("crc", "magic")]
        if retry and not combined:
            again = decode_headers(np.stack([self._retrack(bursts[i], datas[i]) for i in retry]), whitening)
            for i, d in zip(retry, again):
                datas[i], results[i] = d, self._parse(d)
        for b, data, hdr in zip(bursts, datas, results):
            if combined and not isinstance(hdr, HeaderError) and hdr.chunk_symbols < HEADER_COPY_AFTER:
                hdr = HeaderError(f"a header read with its copy describes {hdr.chunk_symbols} symbols, "
                                  f"too few to have a copy")
            if isinstance(hdr, HeaderError):
                if hdr.reason in ("crc", "magic") and not combined and len(self._copy_pos):
                    b.stage = "copy"  # the header's copy may not have been in the same fade
                    continue
                self._fail(b, "header_crc_fail" if hdr.reason in ("crc", "magic") else "header_invalid", str(hdr))
                continue
            if combined:
                self.counters["header_copies"] += 1
            b.header, b.header_bytes, b.stage = hdr, data, "decoded"
            self.counters["headers_ok"] += 1
            # (detection goes on inside the burst: a burst cut short -- a transmitter's underflow --
            # may be followed by the next one within its nominal length, and a collision's preamble
            # is found there: _find_cut; it used to resume near the burst's end)

    def _copy_soft(self, b: _Burst, final: bool) -> bool:
        """Stage A': where the header alone failed, its soft values plus its copy's
        (frame.HEADER_COPY_AFTER), once buffered: the burst demodulated through the copy,
        the complex gain tracked on the pilots up to there, each copy weighted by it
        (maximum-ratio combining of the two).  A stream that ends first drops the burst."""
        if final and int(math.floor(b.tau)) + (self._npre + self._copy_body) * self._sps > self._end:
            return self._fail(b, "header_crc_fail", "header failed, stream ended before its copy")
        if not self._available(self._need(b, self._copy_body)):
            return False
        y = self._mf(b, self._npre + self._copy_body)
        if b.resync and b.eq is None:  # found from its resync preamble: trained there
            lay, at = self.layout, self._npre + self._resync_at
            b.eq = sync.train_equaliser(y[at:], lay.resync, self.cfg.eq_taps)
            if not b.eq.any():
                return self._fail(b, "sync_fail", "degenerate equaliser")
            b.gain = complex((np.conj(lay.resync) * y[self._h + at: self._h + at + self._npre]).sum() / self._npre)
        z, _, _, track, _ = self._equalise_track(b, y, self._copy_body, self._copy_pilots)
        g = track.g
        if b.g is None:
            b.g = g[: self._hdr_body]
        b.soft = self.layout.combine_copies(z[self._hdr_pos] * np.conj(g[self._hdr_pos]),
                                            z[self._copy_pos] * np.conj(g[self._copy_pos]))
        return True

    @staticmethod
    def _parse(data: bytes):
        """The header in ``data``, or the :class:`HeaderError` that rejects it."""
        try:
            hdr = Header.unpack(data)
        except HeaderError as exc:
            return exc
        if not 1 <= hdr.chunk_symbols <= MAX_CHUNK_LIMIT:
            return HeaderError(f"chunk_symbols {hdr.chunk_symbols} outside 1..{MAX_CHUNK_LIMIT}")
        if not hdr.chunk_index < hdr.chunk_count or hdr.chunk_symbols > hdr.total_symbols:
            return HeaderError(f"inconsistent chunking: chunk {hdr.chunk_index}/{hdr.chunk_count}, "
                               f"{hdr.chunk_symbols} of {hdr.total_symbols} symbols")
        return FrameRx._image_problem(hdr) or hdr

    @staticmethod
    def _image_problem(hdr: Header) -> Optional[HeaderError]:
        """What no transmitter sends in a CRC-valid header (a bit pattern that passed the CRC by
        chance, or another transmitter's bug): an empty latent or image, an image the receiver
        would allocate gigabytes for, an unknown forward process, an alpha
        or a guidance outside ``config.ALPHA_RANGE`` / ``GUIDANCE_RANGE`` (decoded, an alpha of 1e-30
        gave a black picture reported as good)."""
        (c, h, w), (ih, iw) = hdr.latent_shape, hdr.image_size
        if min(c, h, w, ih, iw) < 1:
            return HeaderError(f"empty latent {list(hdr.latent_shape)} or image {list(hdr.image_size)}")
        if hdr.total_symbols > MAX_IMAGE_SYMBOLS:  # (whether it fits the latent is the codec's check)
            return HeaderError(f"total_symbols {hdr.total_symbols} is more than a receiver assembles "
                               f"({MAX_IMAGE_SYMBOLS}, frame.MAX_IMAGE_SYMBOLS)")
        if hdr.forward not in (FORWARD_DDIM, FORWARD_RANDOM):
            return HeaderError(f"unknown forward process {hdr.forward} (0 ddim, 1 random)")
        if not ALPHA_RANGE[0] <= hdr.alpha <= ALPHA_RANGE[1]:
            return HeaderError(f"alpha {hdr.alpha:g} outside {ALPHA_RANGE[0]:g}..{ALPHA_RANGE[1]:g}")
        if not GUIDANCE_RANGE[0] <= hdr.guidance <= GUIDANCE_RANGE[1]:
            return HeaderError(f"guidance {hdr.guidance:g} outside {GUIDANCE_RANGE[0]:g}..{GUIDANCE_RANGE[1]:g}")
        return None

    def _retrack(self, b: _Burst, data: bytes) -> np.ndarray:
        """Header symbols re-derived with a phase track that also uses the failed
        decoding's re-encoded symbols as (mostly right) pilots.  At low SNR the pilots
        alone leave the phase at the ends of the header region uncertain; the 1266
        decided symbols pin it down.  complex (HEADER_CODED_BITS,)."""
        lay = self.layout
        decided = lay.body_symbols(encode_header(data, lay.header_whitening))[: self._hdr_body]
        pos = np.arange(self._hdr_body)
        zk = b.z * np.conj(decided)
        track = sync.track_gain(zk, pos, self._hdr_body, sync.residual_frequency(zk, pos), RETRACK_SPANS)
        self.counters["header_retries"] += 1
        return b.z[self._hdr_pos] * np.conj(track.g[self._hdr_pos])

    def _drop(self, counter: str, what: str):
        """Count a dropped burst in ``counter``: a warning the first time, then debug lines
        (a flowgraph may see many)."""
        (log.debug if self.counters[counter] else log.warning)("%s; dropped (counted in %s)", what, counter)
        self.counters[counter] += 1

    @staticmethod
    def _what(b: _Burst) -> str:
        h = b.header
        return (f"the burst of image {h.image_id} chunk {h.chunk_index} at sample {b.tau:.0f}" if h is not None
                else f"a burst at sample {b.tau:.0f}")

    def _fail(self, b: _Burst, counter: str, why: str) -> bool:
        b.stage = "dead"
        self.counters[counter] += 1
        log.debug("burst at %.1f dropped: %s", b.tau, why)
        return False

    def _finish(self, final: bool) -> List[RxFrame]:
        """Stage B for decoded bursts, in stream order."""
        frames = []
        while self._pending:
            b = self._pending[0]
            if b.stage == "dead":
                self._pending.pop(0)
                continue
            if b.stage != "decoded":
                break
            m = self.layout.burst_map(b.header.chunk_symbols)
            end = int(math.floor(b.tau)) + self.layout.burst_samples(b.header.chunk_symbols)
            if not self._available(self._need(b, m.n_body)) or \
                    (not final and self._scan * self._sps < end - self._late):
                break  # (every preamble inside the burst that can cut it is detected first: _find_cut)
            self._pending.pop(0)
            if b.tau < self._last_end - self._sps:
                self._drop("overlapping", f"{self._what(b)} overlaps the burst before it (an echo, or two "
                                          "transmitters)")
            elif final and end > self._end:
                self._drop("truncated", f"{self._what(b)} cut off by the end of the stream")
            else:
                frame = self._payload(b, m)
                if frame is not None:
                    frames.append(frame)
                if b.cut is not None:  # a burst cut short ends there: one after it is read
                    self._last_end = self._cut_end(b)
                elif frame is not None:
                    self._last_end = end
        return frames

    def _demodulate(self, b: _Burst, y: np.ndarray, known: np.ndarray, head: np.ndarray, pilot_pos: np.ndarray,
                    n_body: int) -> _Demod:
        """Equaliser trained on ``known`` (preamble + header region), body equalised and
        phase-tracked on the pilots and the decoded header ``head``; a burst found from
        its resync preamble is trained on that (``known``) instead."""
        at = self._npre + self._resync_at if b.resync else 0
        b.eq = sync.train_equaliser(y[at:], known, self.cfg.eq_taps)
        d = _Demod(y, b.eq, *self._equalise_track(b, y, n_body, pilot_pos, head), None)
        return d._replace(err=_fit_errors(d))

    def _follow_drift(self, b: _Burst, d: _Demod, known, head, pilot_pos, n_body: int):
        """Sample-rate offset: where the error grows over the burst, demodulate again on
        a drifting symbol clock (:meth:`_timing_drift`, up to TIMING_ROUNDS times; where
        the error grew a lot a drift is likely and weaker evidence is accepted).  The
        result is kept only if its known symbols fit better.  Returns (drift in samples
        per symbol, the demodulation to use)."""
        growth = self._error_growth(d) if self.track_timing else 0.0
        if not growth:
            return 0.0, d
        sigmas = TIMING_SIGMAS_QUIET if growth <= TIMING_TRIGGER else TIMING_SIGMAS
        limit = MAX_SRO_PPM * 1e-6 * self._sps
        drift, cur = 0.0, d
        best = (_error_power(d), 0.0, d)
        strong = growth >= TIMING_STRONG or self._lost_share(d) >= STRONG_SHARE
        wide = self._acquire_drift(b, pilot_pos) if strong else 0.0
        if wide and abs(wide) <= limit:
            drift = wide
            cur = self._demodulate(b, self._mf_drift(b, self._npre + n_body, drift), known, head, pilot_pos, n_body)
            if _error_power(cur) < best[0]:
                best = (_error_power(cur), drift, cur)
                sigmas = TIMING_SIGMAS_REFINE
            else:
                drift, cur = 0.0, d
        for k in range(TIMING_ROUNDS):
            # once a drift is found, refinements need less evidence (the first round
            # guards against re-timing without a drift); the best-fitting round is kept
            more = self._timing_drift(b, cur, pilot_pos, drift, sigmas if k == 0 else TIMING_SIGMAS_REFINE)
            if not more or abs(drift + more) > limit:
                break
            drift += more
            cur = self._demodulate(b, self._mf_drift(b, self._npre + n_body, drift), known, head, pilot_pos, n_body)
            p = _error_power(cur)
            if p < best[0]:
                best = (p, drift, cur)
        for _ in range(POLISH_MOVES if best[1] else 0):
            start = best[1]
            best = self._polish_drift(b, best, known, head, pilot_pos, n_body)
            if abs(best[1] - start) < 1.5 * POLISH_PPM * 1e-6 * self._sps:
                break
        _, drift, cur = best
        if not drift and cur is not d:
            log.debug("drift did not help; dropped")
        if drift:
            self.counters["timing_tracked"] += 1
        return drift, cur

    def _payload(self, b: _Burst, m: BurstMap) -> Optional[RxFrame]:
        """Stage B: equaliser retrained on the preamble, the re-encoded header and the
        header-region pilots; full-burst demodulation, phase track on the pilots and the
        header, amplitude normalisation, noise estimate."""
        lay, npre = self.layout, self._npre
        pilot_pos, n_body = m.pilots, m.n_body
        hdr_sym = encode_header(b.header_bytes, lay.header_whitening)
        # training: preamble + header region (its data and pilots) times its tracked gain
        # (the equaliser is to undo the dispersion, not the fading the tracker follows)
        head = lay.body_symbols(hdr_sym)[: self._hdr_body]
        known = lay.resync if b.resync else np.concatenate([lay.preamble, head * b.g])
        lost = self._lost_energy(b, n_body, 0.0)
        if lost is not None:  # (the clock's drift moves a symbol by at most its margin: widened)
            reach = self._h + 2 + self._drift_margin(n_body) // self._sps
            b.hit = np.convolve(lost, np.ones(2 * reach + 1), "same") > HIT_KNOWN
        counted = {k: self.counters[k] for k in ("timing_tracked", "dispersive")}
        d, est, drift = self._body(b, m, known, head, pilot_pos, hdr_sym)
        starts = self._starts_inside(b, m) if est is not None else ()
        # the cut judged on every known symbol the track could have used, those in a dead stretch
        # included: a transmitter stopping at 40 dB or more leaves noise 40 dB under the body, which
        # the dead-stretch rule (_dead) takes out of the track, and the stop's rest out of sight
        judge = self._known_all(b, head, pilot_pos) if est is not None else None
        if judge is not None and len(judge[0]) == len(d.pos):
            judge = None
        cut = self._find_cut(d, starts, *(judge or ())) if est is not None else None
        if cut is not None:
            # cut short (a TX underflow, an RX overflow, a collision): the burst again, from the
            # known symbols before the cut alone (its drift, equaliser, channel and noise), every
            # payload symbol from the cut on erased; none before it: dropped.  The cut is looked
            # for again on that demodulation, over all the known symbols: the first one may have
            # been fooled by what came after the cut (a drift fitted to a slip left the blocks
            # before it half-fitting, and the cut 230 symbols late)
            everything = judge or (d.pos, d.ref)
            for _ in range(CUT_ROUNDS):
                if b.cut is not None and cut >= b.cut:
                    break
                b.cut = cut
                if not np.count_nonzero(m.payload < cut):
                    break
                self.counters.update(counted)
                train = known if b.resync or cut >= self._hdr_body else known[: npre + cut]
                d, est, drift = self._body(b, m, train, head, pilot_pos[pilot_pos < cut], hdr_sym)
                if est is None:
                    break
                cut = self._find_cut(d, starts, *everything)
                if cut is None:
                    break
            cut = b.cut
            self.counters["bursts_cut"] += 1
            n_before = int(np.count_nonzero(m.payload < cut))
            (log.debug if self.counters["bursts_cut"] > 1 else log.warning)(
                "%s cut short at body symbol %d (its known symbols stop fitting there: a transmitter underflow, "
                "samples dropped or inserted, a collision): %d of %d payload symbols before it (counted in "
                "bursts_cut)", self._what(b), cut, n_before, len(m.payload))
            if not n_before:
                self._drop("cut_dropped", f"{self._what(b)}: cut before its payload")
                return None
        if est is None:
            self._fail(b, "sync_fail", "no signal on the known symbols")
            return None
        g_pay, sym_nv, nv, tracked, erased = est
        sym = np.zeros(len(g_pay), np.complex128)
        live = ~erased
        sym[live] = d.z[m.payload][live] / g_pay[live]
        if not b.header.flags & PLAIN_FLAG:  # the burst says whether it was scrambled
            sym = sym * np.conj(lay.scrambler[: len(sym)])
        n_erased = int(np.count_nonzero(erased))
        if n_erased:  # a warning the first time, then debug lines (a fading channel may erase often)
            (log.debug if self.counters["symbols_erased"] else log.warning)(
                "image %d chunk %d: %d of %d payload symbols erased (no signal there: a dropout of the samples or "
                "a fade's null; counted in symbols_erased)", b.header.image_id, b.header.chunk_index, n_erased,
                len(sym))
            self.counters["symbols_erased"] += n_erased
        if not tracked:
            self.counters["track_lost"] += 1
            log.debug("burst at %.1f: channel not followed (Es/N0 %.1f dB)", b.tau, noise_var_to_snr_db(nv))
        self.counters["frames_out"] += 1
        return RxFrame(header=b.header, symbols=sym.astype(np.complex64), snr_db=noise_var_to_snr_db(nv),
                       noise_var=nv, cfo=b.cfo + d.omega / (2 * np.pi * self._sps), gain=b.gain,
                       start=int(round(b.tau)), sro_ppm=drift / self._sps * 1e6,
                       symbol_noise_var=sym_nv.astype(np.float32), tracked=tracked, track_span=d.track.span,
                       erased=erased if n_erased else None,
                       cut=None if b.cut is None else int(np.count_nonzero(m.payload < b.cut)))

    def _body(self, b: _Burst, m: BurstMap, known: np.ndarray, head: np.ndarray, pilot_pos: np.ndarray,
              hdr_sym: np.ndarray):
        """The payload stage's demodulation: equaliser trained on ``known``, tracked on ``head`` and
        ``pilot_pos``, the clock's drift followed, the noise estimated, the dispersive pass.  Returns
        (demodulation, its :meth:`_effective_noise` or None, drift)."""
        n_body = m.n_body
        d = self._demodulate(b, self._mf(b, self._npre + n_body), known, head, pilot_pos, n_body)
        drift, d = self._follow_drift(b, d, known, head, pilot_pos, n_body)
        b.eq = d.eq
        est = self._effective_noise(d, m.payload, self._replaced_noise(b, d, n_body, drift, m.payload), b.cut)
        if est is not None and self.dispersive:
            d, est = self._dispersive(b, d, est, m, hdr_sym, drift)
        return d, est, drift

    def _starts_inside(self, b: _Burst, m: BurstMap) -> List[int]:
        """Body positions of ``b`` where a verified preamble of another burst begins (its first
        sample, the pulse's ramp included)."""
        lo = math.floor(b.tau)
        hi = lo + self.layout.burst_samples(b.header.chunk_symbols)
        return [int((p.tau - lo - self.layout.half) // self._sps) - self._npre for p in self._pending
                if p is not b and lo < p.tau < hi and (p.tau - lo - self.layout.half) // self._sps > self._npre]

    def _cut_end(self, b: _Burst) -> int:
        """Where a burst cut short ends for the overlap test: a block (CUT_BLOCK pilot periods) before
        its cut, the resolution at which the cut is found."""
        back = (self.cfg.pilot_spacing + 1) * CUT_BLOCK
        return int(math.floor(b.tau)) + (self._npre + max(b.cut - back, 0)) * self._sps

    def _dispersive(self, b: _Burst, d: _Demod, est, m: BurstMap, hdr_sym: np.ndarray, drift: float):
        """Second pass for dispersive channels (docs/frame-format.md section 6, step 8): a
        fractionally spaced least-squares equaliser fitted on every known symbol of the
        burst (preamble, header, its copy, pilots, resync preamble) -- over the whole burst,
        to the known symbols times the first pass's tracked gain (a channel longer than the
        7 taps); and, where the first pass's error grew along the burst, re-fitted every 64
        symbols over 384 to the known symbols as sent (multipath that changes during the
        burst).  The tracker and the noise estimate see each fit's leave-one-out outputs at
        the known symbols.  The pass whose estimated noise is lowest is kept if it is below
        DISPERSIVE_GATE x the first pass's and its payload pilots fit better
        (:meth:`_pilots_better`).  Returns (demodulation, its _effective_noise)."""
        lay, npre, h = self.layout, self._npre, self._h
        n_body = m.n_body
        n = npre + n_body
        t = self._instants(b, np.arange(-h - 1, n + h) + 0.5, drift)
        y_half = self._mf_at(b, t)
        known = np.ones(n, bool)
        known[npre + m.payload] = False
        known[npre:] &= ~_dead(d.z)
        if b.hit is not None:
            known[npre:] &= ~b.hit
        if b.cut is not None:
            known[npre + b.cut:] = False
        if b.resync:  # its first preamble was not found (a fade or the stream's start)
            known[:npre] = False
        kp = np.flatnonzero(known)
        val = np.concatenate([lay.preamble, lay.burst_body(hdr_sym, np.zeros(len(m.payload), np.complex64))])[kp]
        g = np.concatenate([np.full(npre, d.track.g[0]), d.track.g])
        g[npre + d.pos] = d.track.g_loo  # (no target carries its own symbol's noise)
        plans = [(DISPERSIVE_TAPS, n, g[kp] * val)]
        head = lay.body_symbols(hdr_sym)[: self._hdr_body]
        if self._error_growth(d) >= TIMING_TRIGGER:
            plans.append((DISPERSIVE_TAPS_FAST, DISPERSIVE_WINDOW, val))
        best, best_est = d, est
        for k, window, target in plans:
            x = sync.fse_regressors(d.y, y_half, h, min(k, h), n)  # (the outputs reach h symbols out: eq_taps)
            z, z_loo = sync.windowed_equaliser(x, kp, target, window)
            z[kp] = z_loo
            cand = _Demod(d.y, None, *self._track(b, z[npre:].astype(np.complex64), n_body, m.pilots, head),
                          None, True)
            cand = cand._replace(err=_fit_errors(cand))
            c_est = self._effective_noise(cand, m.payload, self._replaced_noise(b, cand, n_body, drift, m.payload),
                                          b.cut)
            # its estimate better, and its payload pilots' errors lower by DISPERSIVE_SIGMAS standard
            # errors (choosing the lowest of estimates favours an optimistic one: with TX clipping
            # the pilots' errors are heavy-tailed, and a pass 0.6 dB worse had looked 1.3 dB better)
            if c_est is not None and c_est[2] < DISPERSIVE_GATE * best_est[2] and self._pilots_better(cand, best):
                best, best_est = cand, c_est
        if best is not d:
            self.counters["dispersive"] += 1
        return best, best_est

    def _pilots_better(self, new: _Demod, old: _Demod) -> bool:
        """Whether ``new``'s payload pilots' errors (:func:`_fit_errors` over the tracked gain's
        power) are below ``old``'s at the same pilots by DISPERSIVE_SIGMAS standard errors of the
        mean difference."""
        both, i, j = np.intersect1d(new.pos, old.pos, return_indices=True)
        on = both >= self._hdr_body
        if np.count_nonzero(on) < 8:
            return False

        def rel(d, k):
            g = d.track.g_loo[k]
            return d.err[k] / np.maximum(g.real ** 2 + g.imag ** 2, 1e-30)

        diff = rel(old, j[on]) - rel(new, i[on])
        return float(diff.mean()) > DISPERSIVE_SIGMAS * float(diff.std()) / math.sqrt(len(diff))

    def _find_cut(self, d: _Demod, starts=(), pos: Optional[np.ndarray] = None,
                  ref: Optional[np.ndarray] = None) -> Optional[int]:
        """Where a burst's known symbols stop fitting for good (a burst cut short: docs/frame-format.md
        section 6): the body position from which its symbols are not to be trusted, or None.

        The known symbols are grouped in blocks of CUT_BLOCK pilot periods and each block's fit
        measured (:func:`_fit_blocks`); the best split into a prefix and a worse suffix running to
        the burst's end (:func:`_best_split`) is a cut where the suffix fits at most CUT_FIT, CUT_DROP
        less than the prefix, and the power it does not fit is CUT_GROWTH times the prefix's and
        CUT_SIGNAL of the prefix's signal (:func:`_split_stats`); the cut is then placed between the
        last known symbol that still fits the prefix's gain and the next.  A suffix that fits as badly
        but whose power does not grow (a transmitter that stopped with nothing after it) is left to
        :meth:`_find_stop` (STOP_*: an abrupt fall to a silent rest).  ``starts``: body positions
        where a verified preamble begins inside the burst; the split there is tested with less
        evidence asked (CUT_*_AT) and is the cut if it passes (the earliest of those, and of the
        blind one).  ``pos``, ``ref``: the known symbols to judge (default: those ``d`` tracked)."""
        if pos is None:
            pos, ref = d.pos, d.ref
        if len(pos) < 2 * CUT_MIN_KNOWN_AT:
            return None
        zk = d.z[pos]
        span = (self.cfg.pilot_spacing + 1) * CUT_BLOCK
        cuts = []
        for c in sorted(starts):
            f, p, m, first = _fit_blocks(zk, ref, (pos - int(c)) // span)
            k = int(np.count_nonzero(pos[first] < c))
            if not 0 < k < len(f):
                continue
            t = _split_stats(f, p, m, k)
            if t["n_suf"] >= CUT_MIN_KNOWN_AT and t["n_pre"] >= CUT_MIN_KNOWN_AT and t["fs"] <= CUT_FIT_AT \
                    and t["fp"] - t["fs"] >= CUT_DROP_AT and t["growth"] >= CUT_GROWTH_AT and t["signal"] >= CUT_SIGNAL:
                log.debug("cut at a preamble inside the burst, body %d: %s", c, {a: round(v, 2) for a, v in t.items()})
                cuts.append(int(c))
                break
        f, p, m, first = _fit_blocks(zk, ref, pos // span)
        k = _best_split(f, m)
        if k:
            t = _split_stats(f, p, m, k)
            log.debug("best split at body %d: %s", pos[first[k]], {a: round(v, 2) for a, v in t.items()})
            if t["n_suf"] >= CUT_MIN_KNOWN and t["n_pre"] >= CUT_MIN_KNOWN and t["fp"] - t["fs"] >= CUT_DROP:
                grown = t["growth"] >= CUT_GROWTH and t["signal"] >= CUT_SIGNAL
                if grown and t["fs"] <= CUT_FIT:
                    cuts.append(self._refine_cut(zk, ref, pos, first, k))
                elif not grown and t["fs"] <= STOP_FIT:
                    stop = self._find_stop(d, zk, ref, pos, f, p, m, first, k)
                    if stop is not None:
                        cuts.append(stop)
        return min(cuts) if cuts else None

    def _find_stop(self, d: _Demod, zk: np.ndarray, ref: np.ndarray, pos: np.ndarray, f: np.ndarray,
                   p: np.ndarray, m: np.ndarray, first: np.ndarray, k: int) -> Optional[int]:
        """The body position where the transmitter stopped (nothing but noise after it: STOP_*), for a
        split at block ``k`` of :meth:`_find_cut`'s blocks whose suffix fits badly but whose power
        does not grow as another signal's would; None where the power does not fall abruptly to the
        noise and stay there (a fade, a step down)."""
        pre = slice(0, k)
        n_pre = float(m[pre].sum())
        # the noise before the split, from neighbouring known symbols (the gain the same at both):
        # |a_i+1 - a_i|^2 / 2 with a = z / s is exponential with the noise as its mean (median / ln 2;
        # the blocks' unfitted power is half the noise at 25 dB, the tracker's errors near a stop are not noise)
        j = int(first[k])
        nb_ok = np.diff(pos[:j]) <= self.cfg.pilot_spacing + 1
        a = zk[:j] * np.conj(ref[:j]) / np.maximum(np.abs(ref[:j]) ** 2, 1e-30)
        e = np.abs(np.diff(a)[nb_ok]) ** 2 / 2
        noise = float(np.median(e)) / math.log(2.0) if len(e) >= CUT_MIN_KNOWN else 0.0
        if not noise > 0 or float((p[pre] * f[pre]).sum()) / n_pre < STOP_MIN_SNR * noise:
            return None
        # the most likely drop, per body symbol, from the level of the blocks before the search to the noise
        pz = d.z.real.astype(np.float64) ** 2 + d.z.imag.astype(np.float64) ** 2
        n_b, n = len(first), len(pz)
        edge = lambda i: int(pos[first[i]]) if i < n_b else n  # noqa: E731
        back = STOP_SEARCH * CUT_REFINE  # (the split of noisy blocks' fits can be 8 blocks late at 8 dB)
        lo, hi, base = edge(max(k - back, 1)), edge(min(k + 3, n_b)), edge(max(k - back - 2, 0))
        lvl = float(pz[base: lo].mean()) if lo > base else 0.0
        w = STOP_WINDOW * (self.cfg.pilot_spacing + 1)
        c = None
        if lvl > (1.0 + STOP_MIN_SNR / 2) * noise:
            llr = math.log(noise / lvl) + pz[lo:hi] * (1.0 / noise - 1.0 / lvl)
            c = lo + int(np.argmax(np.r_[0.0, np.cumsum(llr)]))
            if c < 2 * w or n - c < 3 * w:
                return None
            # abrupt: the signal's level held up to a window before the drop, the noise from a window after it
            before, after = float(pz[c - 2 * w: c - w].mean()), float(pz[c + w: c + 2 * w].mean())
        local = c is None or before - noise < STOP_EDGE * (lvl - noise)
        if local:
            # the level before the search at the noise, or not held up to the drop: a stop inside a fade?  The
            # drop looked for again from the level just before it (STOP_LOCAL windows ending two windows
            # before it; at first, where there is no drop yet, the searched symbols' mean), twice over
            lvl = float(pz[lo: edge(k)].mean()) if c is None and edge(k) > lo else lvl
            for _ in range(2):
                if c is not None:
                    b0 = max(c - (2 + STOP_LOCAL) * w, 0)
                    if c - 2 * w <= b0:
                        return None
                    lvl = float(pz[b0: c - 2 * w].mean())
                if not lvl > (1.0 + STOP_MIN_SNR) * noise:
                    return None
                llr = math.log(noise / lvl) + pz[lo:hi] * (1.0 / noise - 1.0 / lvl)
                c = lo + int(np.argmax(np.r_[0.0, np.cumsum(llr)]))
                if c < (2 + STOP_LOCAL) * w or n - c < 3 * w:
                    return None
            lvl = float(pz[c - (2 + STOP_LOCAL) * w: c - 2 * w].mean())
            if not lvl > (1.0 + STOP_MIN_SNR) * noise:
                return None
            before, after = float(pz[c - 2 * w: c - w].mean()), float(pz[c + w: c + 2 * w].mean())
            # a fade falling at a steady rate (in dB) loses twice as much from the window before the drop to
            # the one after it as from the level to the window before (its signal there a fraction q of the
            # level's, q^3 after): the signal after is measured against the level times that q^3
            fall = min(max(before - noise, 0.0) / (lvl - noise), 1.0)
            after = noise + (after - noise) / max(fall ** 3, 1e-12)
        # silent from there on: each block's power at the noise (median), no signal in the known symbols
        tail = pz[c + w:]
        nb = len(tail) // w
        silent = float(np.median(tail[: nb * w].reshape(nb, w).mean(1)))
        after_k = pos >= c + w
        a = (zk[after_k] * np.conj(ref[after_k]) * np.exp(-1j * d.omega * pos[after_k])).astype(np.complex128)
        zw = (np.abs(zk[after_k]) ** 2 * np.abs(ref[after_k]) ** 2).astype(np.float64)
        coherent = []
        for s in STOP_SCALES:
            nb = max(len(a) // s, 1)
            idx = np.minimum(np.arange(len(a)) * nb // max(len(a), 1), nb - 1)
            num = np.abs(np.bincount(idx, a.real, nb) + 1j * np.bincount(idx, a.imag, nb)) ** 2
            t = float((num / np.maximum(np.bincount(idx, zw, nb), 1e-300)).sum())
            coherent.append((t - nb) / (math.sqrt(nb) + 1.0))  # ~ sigmas above noise's
        # ... nor in phase with the gain before the drop (a step down keeps its phase: the rest's known
        # symbols projected on it are N(0, 1) on noise, sqrt(2 M Es/N0) sigmas up on a weak signal)
        ref_k = (pos >= c - STOP_PHASE_WINDOW * w) & (pos < c - w)
        g0 = complex(np.sum(zk[ref_k] * np.conj(ref[ref_k]) * np.exp(-1j * d.omega * pos[ref_k])))
        phased = 0.0
        if abs(g0) > 0 and zw.sum() > 0:
            phased = (complex(a.sum()) * g0.conjugate()).real / abs(g0) / math.sqrt(float(zw.sum()) / 2)
        ok = len(a) >= CUT_MIN_KNOWN_AT and before - noise >= STOP_EDGE * (lvl - noise) \
            and after - noise <= STOP_AFTER * (lvl - noise) and silent <= STOP_SILENT * noise \
            and max(coherent) <= STOP_SIGMAS and phased <= STOP_PHASE_SIGMAS
        log.debug("stop candidate at body %d: %slevel %.3g, noise %.3g, before %.3g, after %.3g, silent %.3g, "
                  "coherent %s, in phase %.1f over %d known: %s", c, "local " if local else "", lvl, noise, before,
                  after, silent, np.round(coherent, 1), phased, len(a), "cut" if ok else "not cut")
        if not ok:
            return None
        # at high SNR the truncated pulses of the last symbols sent leak over the noise for a few symbols
        # after the stop (at 30-40 dB, 1-2 % of the level 1-4 symbols on): the drop is walked back over
        # symbols that low, at most STOP_WALK of them
        top = float(lvl) * STOP_TAIL
        for _ in range(STOP_WALK):
            if c <= 1 or pz[c - 1] >= top:
                break
            c -= 1
        return max(c - STOP_BACK, 0)

    @staticmethod
    def _refine_cut(zk: np.ndarray, ref: np.ndarray, pos: np.ndarray, first: np.ndarray, k: int) -> int:
        """The cut found between blocks k - 1 and k (:meth:`_find_cut`) to a known symbol, searched
        from CUT_REFINE blocks before (4 pilots' fit is a noisy measure: a few blocks right after a
        slip may fit half by chance, and the split then came 230 symbols late).  Against the gain g
        fitted on the (up to 3) blocks before the search, each known symbol's error e = |z - g s|^2 is
        about exponential with the mean mu0 it has there where it fits and with the mean mu1 it has
        over the (up to 3) blocks after the split where it does not; the split of the searched
        known symbols that is most likely under that model (the largest sum of the log-likelihood
        ratios log p0(e) / p1(e) before it) gives the last known symbol that fits.  The cut is the
        body position after the known symbol before that one: a known symbol after the true cut
        may still look as if it fitted (a Gaussian probe there received a symbol that happened to
        be close to it: about 1 in 10), and erasing one pilot period too many (17 of some thousand
        symbols) costs less than handing the decoder 16 symbols of garbage at the prefix's
        reliability (0.5 dB on the prefix's actual Es/N0 where it happened)."""
        n_b = len(first)
        edge = lambda i: first[i] if i < n_b else len(pos)  # noqa: E731
        lo, hi = edge(max(k - CUT_REFINE, 1)), edge(k + 1)
        g_lo = edge(max(k - CUT_REFINE - 3, 0))
        if lo - g_lo < 4:  # too little before the search: the gain of the blocks before it, all
            g_lo = 0
        a = zk * np.conj(ref)
        g_hi = max(lo, g_lo + 1)
        g = complex(a[g_lo:g_hi].sum() / max(float((np.abs(ref[g_lo:g_hi]) ** 2).sum()), 1e-300))
        e = np.abs(zk - g * ref) ** 2
        mu0 = float(e[g_lo:g_hi].mean())
        after = e[edge(k): edge(k + 3)]
        mu1 = float(after.mean()) if len(after) else 0.0
        if not mu1 > mu0 > 0:
            return int(pos[edge(k)])
        llr = np.log(mu1 / mu0) - e[lo:hi] * (1.0 / mu0 - 1.0 / mu1)  # log p0(e) / p1(e)
        j = lo + int(np.argmax(np.r_[0.0, np.cumsum(llr)]))  # known symbols .. j - 1 fit
        return int(pos[j - 2]) + 1 if j > 1 else 0

    def _lost_energy(self, b: _Burst, n_body: int, drift: float) -> Optional[np.ndarray]:
        """Share of each body symbol's matched-filter energy that fell on samples
        :meth:`_sanitize` replaced by 0 (on a clock drifting by ``drift``).  float64
        (n_body,), or None where there are none near the burst."""
        if not len(self._bad):
            return None
        half = self.layout.half
        t = self._instants(b, np.arange(self._npre, self._npre + n_body), drift)
        base, top = int(math.floor(t[0])) - half - 1, int(math.floor(t[-1])) + half + 3
        bad = self._bad[(self._bad >= base) & (self._bad < top)]
        if not len(bad):
            return None
        table = sync.mf_table(half, self._sps, self.cfg.rolloff, self.layout.rrc_scale) ** 2
        ind = np.zeros(top - base, np.complex64)
        ind[bad - base] = 1.0
        return sync.matched_filter_at(ind, t - base, half, table / table.sum(1, keepdims=True)).real.astype(np.float64)

    def _replaced_noise(self, b: _Burst, d: _Demod, n_body: int, drift: float, pay_pos: np.ndarray):
        """The noise variance each payload symbol gets from replaced samples
        (:meth:`_lost_energy`): the energy its matched-filter outputs lost (their local
        power times the share), through the equaliser, over the tracked gain's power.
        float64 (n_pay,), or None."""
        lost = self._lost_energy(b, n_body, drift) if b.hit is not None else None
        if lost is None:
            return None
        y = d.y[self._h + self._npre: self._h + self._npre + n_body]
        # the outputs' local power, from those the replaced samples did not reach
        keep, box = np.clip(1.0 - lost, 0.0, 1.0), np.ones(4 * DEAD_SPAN + 1)
        power = np.convolve((y.real ** 2 + y.imag ** 2) * keep, box, "same") / \
            np.maximum(np.convolve(keep, box, "same"), 1.0)
        eq = np.ones(1) if d.eq is None else d.eq
        out = np.correlate(lost * power, eq.real ** 2 + eq.imag ** 2, "same")
        g = d.track.g[pay_pos]
        with np.errstate(divide="ignore", invalid="ignore"):
            return out[pay_pos] / (g.real ** 2 + g.imag ** 2)

    def _effective_noise(self, d: _Demod, pay_pos: np.ndarray, replaced: Optional[np.ndarray] = None,
                         cut: Optional[int] = None):
        """The payload's post-equalisation noise (docs/frame-format.md, SNR estimator).

        The tracker's leave-one-out prediction errors at the known symbols measure
        noise, tracking error and distortion together, in the equaliser's output
        units; the payload's pilots replace the whole body's known symbols when they
        fare significantly worse.  Divided by the tracked gain's power at each payload
        symbol, they give its noise variance after the division by the gain.

        ``replaced``: each payload symbol's noise from samples the receiver replaced
        (:meth:`_replaced_noise`), added to its variance.  ``cut``: the body position from which
        the burst was cut short (:meth:`_find_cut`): every payload symbol from there on is erased.

        A payload symbol whose noise variance exceeds 10^(-ERASE_SNR_DB/10), that lies in
        a stretch with no signal (DEAD_SPAN, DEAD_RATIO) or whose noise from replaced samples
        exceeds REPLACED_ERASE (half its signal's power), is erased: its variance is set to
        0 (as the reassembled image's at erased positions) and the mean is over the others.

        Returns:
            (gain complex (n_pay,) at the payload symbols, noise variance float64
             (n_pay,) of each, their mean, tracked bool, erased bool (n_pay,)), or None if
            there is no signal.
        """
        tr = d.track
        g_pay = tr.g[pay_pos]
        p_pay = g_pay.real ** 2 + g_pay.imag ** 2
        if not np.all(np.isfinite(p_pay)) or p_pay.mean() < 1e-12:
            return None
        # each known symbol against the gain predicted without it: noise x (1 + w / (W - w))
        # with window weight W (itself, weight w, included), divided out (_fit_errors); a
        # payload symbol between the observations gets noise x (1 + 1 / W)
        err = d.err
        noise_all = float(err.mean())
        on_pay = d.pos >= self._hdr_body
        n_pay = int(np.count_nonzero(on_pay))
        raw, noise_pay = noise_all, 0.0
        if n_pay >= 8:
            excess = 1.0 + float(np.mean(1.0 / tr.wsum[on_pay]))
            noise_pay = float(err[on_pay].mean())
            raw = noise_all * excess
            if noise_pay > noise_all * (1.0 + PAYLOAD_SIGMAS * math.sqrt(2.0 / n_pay)):
                raw = noise_pay * excess
        raw_t = np.full(len(pay_pos), raw)
        split = _gain_error(err[on_pay], tr.g[d.pos[on_pay]]) if n_pay >= GAIN_ERROR_PILOTS else None
        if len(tr.steps) and n_pay >= GAIN_ERROR_PILOTS:
            # across a level step (sync.level_steps) the payload's pilots may all lie on one level:
            # the fit on every known symbol sees both (a step up after the header: the header's
            # errors are the noise, the pilots' the noise and a share of the gain 20 dB up)
            split = _gain_error(err, tr.g[d.pos])
        if split is not None and raw == noise_pay * excess:
            # in a fast fade the error scales with the gain's power: noise a (divided by the
            # gain's power like any noise) plus b |g|^2 (the same share of every symbol)
            a, b = split
            raw, raw_t = a * excess, a * excess + b * p_pay
        if n_pay >= LOCAL_PILOTS:
            # where the tracker does much worse locally (a fade's null, where the phase
            # turns fastest), its local error: a moving average over LOCAL_PILOTS payload
            # pilots, used where it exceeds LOCAL_RATIO x the burst's
            k = np.ones(LOCAL_PILOTS) / LOCAL_PILOTS
            local = np.convolve(err[on_pay], k, "same") * (1.0 + 1.0 / tr.wsum[on_pay])
            local_t = np.interp(pay_pos, d.pos[on_pay], local)
            raw_t = np.where(local_t > LOCAL_RATIO * raw_t, local_t, raw_t)
        if not d.loo:  # the equaliser was fitted to npre + hdr_body symbols: undo its residual shrinkage
            n_fit = self._npre + self._hdr_body
            raw_t *= n_fit / (n_fit - self.cfg.eq_taps)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sym_nv = np.maximum(raw_t / p_pay, MIN_NOISE_VAR)
        if tr.step_var is not None:  # the symbols whose side of a level step is uncertain
            sym_nv = sym_nv + tr.step_var[pay_pos]
        erased = ~(sym_nv <= 10.0 ** (-ERASE_SNR_DB / 10.0)) | _dead(d.z)[pay_pos]  # NaN (0 / 0) included
        if replaced is not None:
            sym_nv = sym_nv + replaced
            erased |= ~(replaced < REPLACED_ERASE)
        if cut is not None:
            erased |= pay_pos >= cut
        if erased.all():
            return None
        sym_nv[erased] = 0.0
        nv = float(sym_nv[~erased].mean())
        if not np.isfinite(nv):
            return None
        tracked = noise_var_to_snr_db(nv) >= MIN_TRACK_SNR_DB and noise_pay <= LOST_LOCK_RATIO * noise_all
        return g_pay, sym_nv, nv, tracked, erased

    def _trim(self):
        """Drop samples no pending burst or the detector needs any more."""
        keep = self._scan * self._sps - self._history
        for b in self._pending:
            keep = min(keep, int(math.floor(b.tau)) - (self._reach + 2) * self._sps - self.layout.half)
        keep = keep // self._sps * self._sps
        moved = min(keep - self._buf_start, self._hi - self._lo)
        if moved > 0:
            self._lo += moved
            self._buf_start += moved
            if len(self._bad):
                self._bad = self._bad[self._bad >= self._buf_start]
