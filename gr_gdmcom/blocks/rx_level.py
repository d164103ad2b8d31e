"""``rx_level``: peak / RMS level of received samples in dBFS, logged per period."""

from __future__ import annotations

import numpy as np
from gnuradio import gr


class rx_level(gr.sync_block):
    """RX level meter.

    Every ``period`` seconds of samples (at ``samp_rate``) it logs the peak,
    RMS and DC (|mean|: the radio's DC offset, LO leakage) of the received
    samples in dBFS (full scale: |x| = 1) and the share of samples above
    ``clip``.  It warns when the input clips (lower the RX gain or the TX
    level) and when even the peak stays below ``low_dbfs`` (no burst in that
    period, or too little gain): bursts should peak between about -20 and
    -6 dBFS.  ``reports`` keeps the last 100 reports (``peak_dbfs``,
    ``rms_dbfs``, ``dc_dbfs``, ``clipped_pct``, ``nonfinite``).

    Input: complex64 samples.
    """

    def __init__(self, samp_rate=1e6, period=2.0, clip=0.9, low_dbfs=-40.0):
        if not float(samp_rate) > 0 or not float(period) > 0:
            raise ValueError(f"rx_level: samp_rate and period must be > 0, got samp_rate={samp_rate!r}, "
                             f"period={period!r} (a report per sample would flood the log)")
        if not 0 < float(clip) <= 1:
            raise ValueError(f"rx_level: clip must be in (0, 1] (a fraction of full scale), got {clip!r}")
        gr.sync_block.__init__(self, name="gdmcom_rx_level", in_sig=[np.complex64], out_sig=None)
        self.block_len = max(1, int(float(samp_rate) * float(period)))
        self.clip, self.low_dbfs = float(clip), float(low_dbfs)
        self._reset()
        self.reports = []

    def _reset(self):
        self._n, self._energy, self._peak, self._clipped, self._nonfinite = 0, 0.0, 0.0, 0, 0
        self._sum = 0j

    def work(self, input_items, output_items):
        x = input_items[0]
        i = 0
        while i < len(x):  # one report per block_len samples, whatever the buffer sizes
            seg = x[i:i + self.block_len - self._n]
            mag = np.abs(seg)
            bad = ~np.isfinite(mag)
            if bad.any():  # NaN/inf samples (a driver glitch) are counted, not summed: one made the RMS nan
                self._nonfinite += int(np.count_nonzero(bad))
                mag = np.where(bad, 0.0, mag)
                seg = np.where(bad, 0, seg)
            self._sum += complex(seg.sum(dtype=np.complex128))
            self._n += len(seg)
            self._energy += float(np.dot(mag, mag))
            self._peak = max(self._peak, float(mag.max()))
            self._clipped += int(np.count_nonzero(mag > self.clip))
            i += len(seg)
            if self._n >= self.block_len:
                self._report()
        return len(x)

    def _report(self):
        peak = 20 * np.log10(max(self._peak, 1e-12))
        rms = 10 * np.log10(max(self._energy / self._n, 1e-24))
        clipped = 100.0 * self._clipped / self._n
        dc = 20 * np.log10(max(abs(self._sum) / self._n, 1e-12))
        self.reports.append(dict(peak_dbfs=peak, rms_dbfs=rms, dc_dbfs=dc, clipped_pct=clipped,
                                 nonfinite=self._nonfinite))
        del self.reports[:-100]
        msg = (f"RX level: peak {peak:.1f} dBFS, RMS {rms:.1f} dBFS, DC {dc:.1f} dBFS, {clipped:.3f} % of samples "
               f"above {self.clip}")
        if self._nonfinite:
            self.logger.warn(msg + f" - {self._nonfinite} NaN/inf samples (left out): check the radio's driver")
        elif self._clipped:
            self.logger.warn(msg + " - clipping: lower the RX gain (or the TX level)")
        elif peak < self.low_dbfs:
            self.logger.warn(msg + " - nothing strong: no burst in this period, or raise the RX gain (or the TX level)")
        else:
            self.logger.info(msg)
        self._reset()
