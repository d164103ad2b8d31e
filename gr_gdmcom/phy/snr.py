"""The one SNR definition of gr_gdmcom.

SNR is Es/N0 per complex symbol with unit symbol energy (Es = 1):

    y = h s + w,   E|s|^2 = 1,   w ~ CN(0, sigma^2),   SNR = 1 / sigma^2.

``sigma^2`` is the complex noise variance E|w|^2 (sigma^2 / 2 per real
dimension).  :class:`~gr_gdmcom.phy.FrameTx` bursts carry unit energy per
symbol at any ``sps`` (the RRC pulse has unit energy, so the sample power is
1/sps) and the receiver's matched filter has unit energy, so complex white
noise of variance sigma^2 *per sample* gives Es/N0 = 1/sigma^2 at the
matched-filter output: GNU Radio's ``noise_source_c`` / ``channel_model``
``noise_voltage`` is :func:`noise_voltage` (snr_db) whatever ``sps`` is.
"""

from __future__ import annotations

import numpy as np

#: Floor applied to noise-variance estimates before converting to dB.
MIN_NOISE_VAR = 1e-10


def snr_db_to_noise_var(snr_db):
    """Es/N0 in dB -> complex noise variance sigma^2 = E|w|^2 = 10**(-snr_db/10).

    Args:
        snr_db: float or array, Es/N0 in dB (unit symbol energy).
    Returns:
        float or float64 array, sigma^2 (linear, same shape).
    """
    v = 10.0 ** (-np.asarray(snr_db, np.float64) / 10.0)
    return float(v) if v.ndim == 0 else v


def noise_var_to_snr_db(noise_var):
    """Complex noise variance sigma^2 -> Es/N0 in dB (inverse of :func:`snr_db_to_noise_var`).

    Args:
        noise_var: float or array, sigma^2 (floored at ``MIN_NOISE_VAR``; NaN stays NaN).
    Returns:
        float or float64 array, Es/N0 in dB.
    Raises:
        ValueError: a negative variance (it was floored into 100 dB, a bug upstream read as a
            perfect channel).
    """
    v = np.asarray(noise_var, np.float64)
    if np.any(v < 0):
        raise ValueError(f"noise variance must be >= 0, got {v[v < 0].flat[0]:g}")
    out = -10.0 * np.log10(np.maximum(v, MIN_NOISE_VAR))
    return out if np.ndim(out) else float(out)


def noise_voltage(snr_db: float, sps: int = 1) -> float:
    """GNU Radio ``noise_source_c`` amplitude (std of the complex noise, per sample)
    giving Es/N0 = ``snr_db`` for unit-energy symbols: 10**(-snr_db/20).

    Args:
        snr_db: Es/N0 in dB.
        sps: samples per symbol of the stream the noise is added to.  Accepted
            for callers that pass it, and validated; the value does not change
            the result because FrameTx bursts have unit *symbol* energy (sample
            power 1/sps) and the matched filter has unit energy.
    Returns:
        float, noise voltage (linear amplitude).
    """
    if int(sps) < 1:
        raise ValueError(f"sps must be >= 1, got {sps}")
    return 10.0 ** (-float(snr_db) / 20.0)


def measure_snr_db(tx: np.ndarray, rx: np.ndarray) -> float:
    """Es/N0 in dB measured as mean|tx|^2 / mean|rx - tx|^2 (for tests and sweeps).

    Args:
        tx: complex array, transmitted symbols.
        rx: complex array of the same shape, received (equalised) symbols.
    Returns:
        float, measured SNR in dB.
    """
    tx = np.asarray(tx, np.complex128)
    err = np.mean(np.abs(np.asarray(rx, np.complex128) - tx) ** 2)
    return float(10.0 * np.log10(np.mean(np.abs(tx) ** 2) / max(err, MIN_NOISE_VAR)))
