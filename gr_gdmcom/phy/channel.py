"""Channel models in numpy: AWGN, block Rayleigh fading and the impairments of
GNU Radio's ``channels.channel_model`` (CFO, fractional delay, multipath).

All noise follows :mod:`gr_gdmcom.phy.snr` (Es/N0, unit symbol energy) and
comes from a caller-supplied ``numpy.random.Generator``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .snr import snr_db_to_noise_var


def complex_noise(n: int, noise_var: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of CN(0, noise_var) (complex64)."""
    scale = np.sqrt(noise_var / 2.0)
    return (scale * rng.standard_normal(n) + 1j * scale * rng.standard_normal(n)).astype(np.complex64)


def awgn(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add complex white Gaussian noise for Es/N0 = ``snr_db`` (unit symbol energy).

    Args:
        x: complex array (any shape), symbols (or samples of a FrameTx stream).
        snr_db: Es/N0 in dB; noise is CN(0, 10**(-snr_db/10)) per element.
        rng: numpy Generator.
    Returns:
        complex64 array of ``x``'s shape.
    """
    x = np.asarray(x)
    return (x + complex_noise(x.size, snr_db_to_noise_var(snr_db), rng).reshape(x.shape)).astype(np.complex64)


def rayleigh_block(x: np.ndarray, snr_db: float, rng: np.random.Generator,
                   block_len: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Flat block-Rayleigh fading, AWGN and perfect-CSI zero-forcing equalisation.

    ``y = h s + w`` with ``h ~ CN(0, 1)`` constant over ``block_len`` symbols,
    then ``y / h``.

    Args:
        x: 1-D complex array (n,), unit-energy symbols.
        snr_db: average Es/N0 in dB.
        rng: numpy Generator.
        block_len: symbols per fading block; None = one block for all of ``x``.
    Returns:
        (y_eq complex64 (n,), noise_var float64 (n,)): equalised symbols and
        the per-symbol effective noise variance sigma^2 / |h|^2.
    """
    x = np.asarray(x).ravel()
    n = x.size
    blen = n if not block_len else int(block_len)
    if blen < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    nblocks = max(1, -(-n // blen))
    h = np.repeat(complex_noise(nblocks, 1.0, rng), blen)[:n]
    nv = snr_db_to_noise_var(snr_db)
    y = h * x + complex_noise(n, nv, rng)
    return (y / h).astype(np.complex64), (nv / np.abs(h) ** 2).astype(np.float64)


def apply_cfo(x: np.ndarray, cfo: float, phase: float = 0.0) -> np.ndarray:
    """Rotate samples by a carrier frequency offset.

    Args:
        x: 1-D complex array (n,).
        cfo: normalised frequency offset, cycles/sample.
        phase: initial phase, radians.
    Returns:
        complex64 (n,), ``x[n] * exp(j (2 pi cfo n + phase))``.
    """
    n = np.arange(len(x))
    return (np.asarray(x) * np.exp(1j * (2 * np.pi * cfo * n + phase))).astype(np.complex64)


def fractional_delay(x: np.ndarray, delay: float) -> np.ndarray:
    """Delay a band-limited signal by ``delay`` samples (FFT phase ramp, exact for
    band-limited periodic signals; ``x`` is zero-padded against wrap-around).

    Args:
        x: 1-D complex array (n,).
        delay: delay in samples (may be fractional or negative).
    Returns:
        complex64 (n,): the delayed signal, same length (samples shifted past
        the end are dropped).
    """
    x = np.asarray(x, np.complex128)
    pad = int(np.ceil(abs(delay))) + 64
    nfft = 1 << int(np.ceil(np.log2(len(x) + 2 * pad)))
    f = np.fft.fftfreq(nfft)
    buf = np.zeros(nfft, np.complex128)
    buf[pad:pad + len(x)] = x
    out = np.fft.ifft(np.fft.fft(buf) * np.exp(-2j * np.pi * f * delay))
    return out[pad:pad + len(x)].astype(np.complex64)


def normalise_taps(taps: Sequence[complex]) -> np.ndarray:
    """Multipath taps scaled to unit energy (complex128)."""
    t = np.asarray(taps, np.complex128).ravel()
    e = np.sum(np.abs(t) ** 2)
    if t.size == 0 or not np.isfinite(e) or e <= 0:
        raise ValueError("taps must be a non-empty finite, non-zero sequence")
    return t / np.sqrt(e)


def simulate_channel(x: np.ndarray, snr_db: Optional[float], rng: np.random.Generator, cfo: float = 0.0,
                     delay: float = 0.0, taps: Optional[Sequence[complex]] = None, phase: float = 0.0) -> np.ndarray:
    """numpy stand-in for GNU Radio's ``channel_model``: multipath (taps normalised
    to unit energy, sample-spaced), fractional delay, CFO, then AWGN.

    Args:
        x: 1-D complex array (n,), samples (FrameTx stream).
        snr_db: Es/N0 in dB (noise per sample, see :mod:`.snr`); None = no noise.
        rng: numpy Generator.
        cfo: cycles/sample.  delay: samples.  taps: complex taps or None.
        phase: carrier phase, radians.
    Returns:
        complex64 (n,).
    """
    y = np.asarray(x, np.complex64)
    if taps is not None:
        y = np.convolve(y, normalise_taps(taps))[:len(y)]
    if delay:
        y = fractional_delay(y, delay)
    if cfo or phase:
        y = apply_cfo(y, cfo, phase)
    return awgn(y, snr_db, rng) if snr_db is not None else y.astype(np.complex64)
