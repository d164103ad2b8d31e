"""Burst physical layer of gr_gdmcom (numpy + scipy only; never imports torch or gnuradio).

* :mod:`.snr` -- the one SNR definition (Es/N0, unit symbol energy);
* :mod:`.channel` -- AWGN, block Rayleigh, CFO / delay / multipath emulation;
* :mod:`.header` -- the 52-byte CRC-32 header and its rate-1/3 K=7 coding;
* :mod:`.frame` -- :class:`FrameConfig`, preamble, pilots, scrambling, RRC;
* :mod:`.tx` / :mod:`.rx` -- burst transmitter and streaming receiver;
* :mod:`.reassembly` -- chunks back into images, with erasure masks.

The burst format is described in ``docs/frame-format.md``.
"""

from .channel import apply_cfo, awgn, fractional_delay, normalise_taps, rayleigh_block, simulate_channel
from .frame import FrameConfig, FrameLayout
from .header import HEADER_BYTES, HEADER_CODED_BITS, HEADER_VERSION, Header, HeaderError
from .reassembly import ReassembledImage, Reassembler
from .rx import FrameRx, RxFrame
from .snr import measure_snr_db, noise_var_to_snr_db, noise_voltage, snr_db_to_noise_var
from .tx import FrameTx, chunk_sizes, chunk_symbols

__all__ = [
    "snr_db_to_noise_var", "noise_var_to_snr_db", "noise_voltage", "measure_snr_db",
    "awgn", "rayleigh_block", "apply_cfo", "fractional_delay", "normalise_taps", "simulate_channel",
    "Header", "HeaderError", "HEADER_BYTES", "HEADER_CODED_BITS", "HEADER_VERSION",
    "FrameConfig", "FrameLayout", "FrameTx", "FrameRx", "RxFrame", "chunk_symbols", "chunk_sizes",
    "Reassembler", "ReassembledImage",
]
