"""Narrowband interferers inside the signal's band: found and notched (receiver step 0, after the
channel filter; docs/frame-format.md section 6).

A tone in the band -- a spur of the radio, a carrier, a DC offset -- is noise to the payload (a
tone 10 dB under the signal caps its Es/N0 near 10 dB) and, several dB over the signal, takes the
detector's metrics, which are normalised by all the power in their window.  :class:`ToneNotch`
looks at the stream in blocks of ``BLOCK`` samples (absolute positions: any chunking gives the
same result), Hann-windowed: a bin more than ``CONTRAST_DB`` over the mean log-power of the 58
bins around it (its own 7 left out), a local maximum inside the band, is a candidate; one seen
(within 1.5 bins) in ``CONFIRM`` blocks in a row is a tone, and from the next
block on a first-order complex notch (zero on the unit circle at its frequency, pole at radius
``1 - RADIUS_SLOPE * edge``: 3 dB wide ~0.2 % of the band) removes it; the frequency is re-read every block it is
seen in, and the notch goes when it has not been for ``FORGET`` blocks.  At most ``MAX_NOTCHES``.

A **DC offset** (a zero-IF radio's LO leakage) is also measured where the stream is quietest --
its mean over the blocks whose power about their mean (the tones notched) is within ``DC_SILENT`` (3 dB)
of the lowest of the last ``DC_HISTORY``: the silence between transmissions, where there is any -- and,
once it is more than ``DC_GATE`` of the noise there (13 dB under it), subtracted from every sample from the next
block on, re-measured every block (off again under ``DC_GATE_OFF``).  Bursts are measured only
where the stream is never silent (bursts back to back from the start): their preambles have a DC
line of their own (each Frank segment sums to a quarter of its length), 21-36 dB under the
stream's power at zero carrier offset, which a mean over the bursts would subtract as an offset;
there the gate, 13 dB under the bursts' power, leaves it -- and a DC offset under that stays
(the notch takes it once it is ``CONTRAST_DB`` over the spectrum, about 10 dB under the signal).

What the bursts themselves look like never reaches the threshold: the same preamble, header pilots
and probes in every burst make lines at multiples of the burst period (short bursts at sps 1: up to
21 dB in 120 random streams, sps 1-8, 16-8192-symbol chunks, 0-45 dB; under 15 dB at sps >= 2).
"""

from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
from scipy import signal as sps_signal

log = logging.getLogger(__name__)

BLOCK = 8192
CONTRAST_DB = 24.0
CONFIRM = 3
FORGET = 8
KEEP_DB = 12.0
FOLLOW = 0.2  # share of a new frequency reading taken each block
#: the notch's pole radius is 1 - RADIUS_SLOPE * edge: its width a fixed share of the band (0.998 at
#: sps 2, 0.9995 at sps 8), so that it takes the same small share of the signal at any sps
RADIUS_SLOPE = 0.006
MAX_NOTCHES = 4
_AROUND, _OWN = 32, 3  # the mean log-power of bins k-32..k+32 but k-3..k+3
_MATCH = 1.5  # bins
#: DC offset: blocks remembered, a quiet block's power about its mean over the lowest of them, and
#: |DC|^2 over the quiet blocks' noise to subtract it (and to stop)
DC_HISTORY = 64
DC_SILENT = 2.0
DC_GATE, DC_GATE_OFF = 0.05, 0.02


class ToneNotch:
    """Streaming tone finder and notch (see the module's docstring).

    Args:
        edge: the signal's band edge, cycles/sample (tones beyond it are the channel filter's).

    Attributes:
        tones: [frequency, cycles/sample] of the tones notched now.
        found: tones notched so far (a tone lost and found again counts again), and DC offsets
            subtracted (each time subtraction starts).
        dc: the DC offset subtracted now (0 when none).
    """

    def __init__(self, edge: float):
        self.edge = float(edge)
        self.radius = 1.0 - RADIUS_SLOPE * self.edge
        self._win = np.hanning(BLOCK).astype(np.float32)
        self._inband = np.abs(np.fft.fftfreq(BLOCK)) <= self.edge
        self.found = 0
        self._dc_found = False  # (the first DC offset a warning, later ones debug lines)
        self.reset()

    def reset(self):
        """A new stream: no tones, no history."""
        self.tones: List[float] = []
        self._last: List[int] = []  # the block each tone was last seen in
        self._zi: List[np.ndarray] = []
        self._history: List[np.ndarray] = []  # candidate frequencies (bins, fractional) of recent blocks
        self._buf = np.zeros(BLOCK, np.complex64)
        self._raw = np.zeros(BLOCK, np.complex64)  # the block as received (the DC measured on it)
        self._out = np.zeros(BLOCK, np.complex64)  # as passed on (the noise measured on it: no tones)
        self._fill = 0
        self._block = 0
        self.dc = np.complex64(0)
        self._blocks: List[tuple] = []  # (power about the mean, mean) of the last DC_HISTORY blocks

    def process(self, x: np.ndarray) -> np.ndarray:
        """``x`` (complex64) with the tones notched; the blocks it completes analysed."""
        out, k = [x[:0]], 0
        while k < len(x):
            n = min(len(x) - k, BLOCK - self._fill)
            part = x[k: k + n]
            self._raw[self._fill: self._fill + n] = part
            if self.dc:
                part = part - self.dc
            self._buf[self._fill: self._fill + n] = part
            out.append(self._notch(part))
            self._out[self._fill: self._fill + n] = out[-1]
            self._fill += n
            k += n
            if self._fill == BLOCK:
                self._analyse()
                self._track_dc()
                self._fill = 0
                self._block += 1
        return np.concatenate(out) if len(out) > 2 else out[-1]

    def _track_dc(self):
        """Measure the DC offset on the quiet blocks of the last DC_HISTORY (see the module's
        docstring); subtract it while it is over DC_GATE of their noise."""
        mean = self._raw.astype(np.complex128).mean()
        out = self._out.astype(np.complex128)
        out -= out.mean()
        var = float(np.mean(out.real ** 2 + out.imag ** 2))  # (the power about the mean, tones notched)
        self._blocks = (self._blocks + [(var, complex(mean))])[-DC_HISTORY:]
        floor = min(v for v, _ in self._blocks)
        if not floor > 1e-30:  # digital silence
            return
        quiet = [(v, m) for v, m in self._blocks if v <= DC_SILENT * floor]
        dc = complex(np.mean([m for _, m in quiet]))
        noise = float(np.mean([v for v, _ in quiet]))
        ratio = abs(dc) ** 2 / noise
        if ratio > (DC_GATE_OFF if self.dc else DC_GATE):
            if not self.dc:
                (log.debug if self._dc_found else log.warning)(
                    "DC offset %+.1f dB against the noise where the stream is quietest: subtracted (counted in "
                    "tones_notched)", 10 * np.log10(ratio))
                self.found += 1
                self._dc_found = True
            self.dc = np.complex64(dc)
        elif self.dc:
            log.info("DC offset gone (%+.1f dB against the noise): no longer subtracted",
                     10 * np.log10(max(ratio, 1e-30)))
            self.dc = np.complex64(0)

    def _notch(self, x: np.ndarray) -> np.ndarray:
        for i, f in enumerate(self.tones):
            z = np.exp(2j * np.pi * f)
            y, self._zi[i] = sps_signal.lfilter([1.0, -z], [1.0, -self.radius * z], x, zi=self._zi[i])
            x = y.astype(np.complex64)
        return x

    def _candidates(self, threshold_db: float = CONTRAST_DB):
        """(candidate bins above ``threshold_db``, fractional; their contrasts, dB)."""
        p = np.abs(np.fft.fft(self._buf * self._win)) ** 2
        if not p.max() > 1e-30:  # silence
            return np.zeros(0), np.zeros(0)
        lp = 10.0 * np.log10(np.maximum(p, p.max() * 1e-15))
        ext = np.concatenate([lp[-_AROUND:], lp, lp[:_AROUND]])
        c = np.concatenate([[0.0], np.cumsum(ext)])
        n = np.arange(BLOCK) + _AROUND
        around = ((c[n + _AROUND + 1] - c[n - _AROUND]) - (c[n + _OWN + 1] - c[n - _OWN])) \
            / (2 * (_AROUND - _OWN))
        peak = (lp - around > threshold_db) & (lp >= np.roll(lp, 1)) & (lp >= np.roll(lp, -1)) & self._inband
        ks = np.flatnonzero(peak)
        if not len(ks):
            return np.zeros(0), np.zeros(0)
        a, b, d = lp[ks - 1], lp[ks], lp[(ks + 1) % BLOCK]
        den = a - 2 * b + d
        frac = np.where(den < 0, 0.5 * (a - d) / np.where(den < 0, den, -1.0), 0.0)
        return ks + np.clip(frac, -0.5, 0.5), (lp - around)[ks]

    def _analyse(self):
        # (the weaker peaks keep a tone already notched: under the signal it stands lower than
        # between bursts, e.g. 10 dB under the signal at sps 8 about 20 dB over the spectrum)
        cand, contrast = self._candidates(KEEP_DB if self.tones else CONTRAST_DB)
        b = self._block

        def near(f_bins, g_bins):
            return abs((f_bins - g_bins + BLOCK / 2) % BLOCK - BLOCK / 2) <= _MATCH

        left = []
        for k, cdb in zip(cand, contrast):
            f = ((k + BLOCK / 2) % BLOCK - BLOCK / 2) / BLOCK
            hit = [i for i, t in enumerate(self.tones) if near(t * BLOCK, k)]
            if hit:  # its frequency averaged: re-read at once, it jittered the notch under a burst
                i = hit[0]
                self.tones[i] += FOLLOW * ((f - self.tones[i] + 0.5) % 1.0 - 0.5)
                self._last[i] = b
            elif cdb > CONTRAST_DB:
                left.append((k, f, cdb))
        strong = cand[contrast > CONTRAST_DB]
        for k, f, cdb in left:
            before = self._history[-(CONFIRM - 1):]
            if len(before) == CONFIRM - 1 and all(any(near(k, j) for j in h) for h in before) \
                    and len(self.tones) < MAX_NOTCHES:
                self.tones.append(f)
                self._last.append(b)
                self._zi.append(np.zeros(1, np.complex128))
                (log.debug if self.found else log.warning)(
                    "narrowband interferer at %.5f cycles/sample (%.0f dB over the spectrum around it) in the "
                    "signal's band: notched (counted in tones_notched)", f, cdb)
                self.found += 1
        keep = [i for i in range(len(self.tones)) if b - self._last[i] < FORGET]
        if len(keep) != len(self.tones):
            for i in sorted(set(range(len(self.tones))) - set(keep)):
                log.info("interferer at %.5f cycles/sample gone: its notch removed", self.tones[i])
            self.tones = [self.tones[i] for i in keep]
            self._last = [self._last[i] for i in keep]
            self._zi = [self._zi[i] for i in keep]
        self._history = (self._history + [strong])[-CONFIRM:]
