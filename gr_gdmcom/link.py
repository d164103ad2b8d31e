"""Headless GNU Radio links: semantic_source -> channel -> semantic_sink.

:func:`build_link` makes the real top block; :func:`run_link` runs it to the
end of the stream and returns the sink's per-image results.  The ``.grc``
flowgraphs in ``flowgraphs/`` build the same graph in GNU Radio Companion.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from gnuradio import analog, blocks, channels, gr

from .blocks import semantic_sink, semantic_source
from .config import CodecConfig
from .phy import FrameConfig, noise_voltage

log = logging.getLogger(__name__)


#: The largest timing offset (samples) ``multipath_taps`` builds: its windowed sinc spans +-8.
MAX_DELAY = 4.0


@dataclass
class ChannelConfig:
    """The simulated channel.

    Attributes:
        snr_db: Es/N0 per complex symbol (unit symbol energy) in dB.
        kind: ``awgn`` (sample-exact: ``analog.noise_source_c`` + ``blocks.add_cc``)
            or ``model`` (``channels.channel_model``: CFO, clock offset, taps).
        cfo: normalised frequency offset, cycles/sample.
        epsilon: sample-clock ratio of ``channel_model`` (1.0 = none).
        delay: fractional timing offset in samples, built into the taps.
        taps: multipath taps (complex), normalised to unit energy.
        seed: noise seed (and, with ``fading``, the fading's).
        fading: flat fading before the channel, ``channels.fading_model`` (8 sinusoids):
            maximum Doppler over the sample rate, fD Ts (0 = none; e.g. 1e-4 at 1 Msps is
            100 Hz).  ``snr_db`` is then the average SNR.
        rician_k: with ``fading``: 0 = Rayleigh, else Rician with this K factor (LOS power
            over scattered power).
        selective: with ``fading`` and several ``taps``: each tap is a path that fades on its
            own (``channels.selective_fading_model``: path i at i + ``delay`` samples, its power
            |tap|^2, the Rician LOS on the first) -- frequency-selective fading; without it all
            paths fade together (flat fading times the static taps).
        iq_imbalance: the receiver's IQ imbalance after the noise, (magnitude dB, phase degrees)
            (``channels.iqbal_gen``'s receiver model; (0, 0) = none).
        dc_offset: the receiver's DC offset (LO leakage) after the noise, dB against the
            signal's power (``blocks.add_const_cc``, equal on both rails; None = none).
        lead: samples of the channel alone (noise, offset) before the transmitter's first sample
            (``blocks.delay``): the receiver started first, as a radio's is -- it measures a
            DC offset there (``phy.notch``).
    """

    snr_db: float = 10.0
    kind: str = "awgn"
    cfo: float = 0.0
    epsilon: float = 1.0
    delay: float = 0.0
    taps: Sequence[complex] = (1.0,)
    seed: int = 0
    fading: float = 0.0
    rician_k: float = 0.0
    selective: bool = False
    iq_imbalance: Tuple[float, float] = (0.0, 0.0)
    dc_offset: Optional[float] = None
    lead: int = 0

    def __post_init__(self):
        for name in ("snr_db", "cfo", "delay"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not abs(float(self.delay)) <= MAX_DELAY:  # beyond, the 17-tap sinc holds only its round-off
            raise ValueError(f"delay is a fractional timing offset: |delay| <= {MAX_DELAY:g} samples, got "
                             f"{self.delay!r} (a longer path: taps with leading zeros)")
        if not abs(float(self.cfo)) < 0.5:
            raise ValueError(f"cfo is normalised, cycles/sample: |cfo| < 0.5, got {self.cfo!r} (a frequency in Hz "
                             f"over the sample rate)")
        if self.kind not in ("awgn", "model"):
            raise ValueError(f"channel kind must be awgn or model, got {self.kind!r}")
        if not (math.isfinite(float(self.epsilon)) and 0.5 <= float(self.epsilon) <= 2.0):
            raise ValueError(f"epsilon (sample-clock ratio) must be in 0.5 .. 2 (1 = none), got {self.epsilon!r}")
        taps = np.asarray(self.taps, np.complex128)
        if taps.size == 0 or not np.all(np.isfinite(taps)) or not np.any(taps):
            raise ValueError(f"taps must be finite and not all zero, got {list(self.taps)!r}")
        if self.kind == "awgn" and self.impaired:
            raise ValueError("cfo, epsilon, delay and taps need the channel model (--channel model, kind "
                             "'model': channels.channel_model); the awgn channel adds noise only")
        if not 0.0 <= float(self.fading) <= 0.1:
            raise ValueError(f"fading (fD Ts) must be in 0 .. 0.1, got {self.fading!r}")
        if not (math.isfinite(float(self.rician_k)) and float(self.rician_k) >= 0.0):
            raise ValueError(f"rician_k must be finite and >= 0 (0 = Rayleigh), got {self.rician_k!r}")
        if self.rician_k and not self.fading:
            raise ValueError("rician_k (--rician-k) is the K factor of a fading channel: give fading (--fading) too")
        if self.selective and not (self.fading and taps.size > 1):
            raise ValueError("selective (--selective) makes each of several taps fade on its own: give fading "
                             "(--fading) and two or more taps (--taps)")
        iq = tuple(self.iq_imbalance)
        if len(iq) != 2 or not all(math.isfinite(float(v)) for v in iq) or not (abs(float(iq[0])) <= 6.0
                                                                                and abs(float(iq[1])) <= 45.0):
            raise ValueError(f"iq_imbalance (magnitude dB, phase degrees) must be within +-6 dB and +-45 degrees, got "
                             f"{self.iq_imbalance!r}")
        if self.dc_offset is not None and not (math.isfinite(float(self.dc_offset)) and float(self.dc_offset) <= 20.0):
            raise ValueError(f"dc_offset (dB against the signal's power) must be finite and at most 20, got "
                             f"{self.dc_offset!r}")
        if not (isinstance(self.lead, (int, np.integer)) and 0 <= int(self.lead) <= 100_000_000):
            raise ValueError(f"lead (samples before the first burst) must be an integer in 0 .. 1e8, got {self.lead!r}")

    @property
    def impaired(self) -> bool:
        """Whether it has what only the channel model makes: a CFO, a clock offset, a delay, taps."""
        return bool(self.cfo or self.epsilon != 1.0 or self.delay or list(np.asarray(self.taps, complex)) != [1.0])

    def channel_taps(self) -> np.ndarray:
        return np.asarray(multipath_taps(self.taps, self.delay), np.complex64)


def dc_rail(db: float, sps: int) -> float:
    """Each rail's value (I and Q alike) of a DC offset ``db`` dB against the power 1/``sps`` of
    unit-energy symbols sent at ``sps`` samples each."""
    return math.sqrt(10 ** (float(db) / 10) / int(sps) / 2)


def multipath_taps(taps: Sequence[complex], delay: float = 0.0) -> list:
    """Multipath ``taps`` convolved with a 17-tap windowed-sinc fractional delay
    of ``delay`` samples, normalised to unit energy (a list, for GRC)."""
    t = np.asarray(taps, np.complex128)
    if delay:
        n = np.arange(-8, 9)
        frac = np.sinc(n - delay) * np.hamming(len(n))
        t = np.convolve(t, frac / frac.sum())
    return (t / np.sqrt(np.sum(np.abs(t) ** 2))).tolist()


def adc(x: np.ndarray, full_scale: float, bits: int = 8) -> np.ndarray:
    """An ADC of GNU Radio blocks: each rail clipped at +-``full_scale`` (``analog.rail_ff``)
    and quantised to ``bits`` bits (``channels.quantizer``).  complex64 in and out."""
    tb = gr.top_block()
    c2f, f2c, snk = blocks.complex_to_float(), blocks.float_to_complex(), blocks.vector_sink_c()
    tb.connect(blocks.vector_source_c(np.asarray(x, np.complex64), False), c2f)
    for port in (0, 1):
        chain = [blocks.multiply_const_ff(1.0 / full_scale), analog.rail_ff(-1.0, 1.0), channels.quantizer(bits),
                 blocks.multiply_const_ff(full_scale)]
        tb.connect((c2f, port), chain[0])
        tb.connect(*chain)
        tb.connect(chain[-1], (f2c, port))
    tb.connect(f2c, snk)
    tb.run()
    return np.asarray(snk.data(), np.complex64)


def _codec_kwargs(block, config: CodecConfig) -> dict:
    """The fields of ``config`` that ``block``'s constructor takes, by name."""
    import inspect

    takes = inspect.signature(block.__init__).parameters
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in takes}


def build_link(images, out_dir: Optional[str], channel: ChannelConfig, tx: CodecConfig, rx: CodecConfig,
               frame: FrameConfig, server: str = "local"):
    """The top block and its source and sink (not started)."""
    tb = gr.top_block("gdmcom_link")
    fkw = {f: getattr(frame, f) for f in frame.__dataclass_fields__}
    # every codec setting the block takes, from its config (the source was given a hand-picked list
    # that lacked remove_mean: --no-remove-mean was ignored, as were clean_end and inversion)
    src = semantic_source(images=images, server=server, **_codec_kwargs(semantic_source, tx), **fkw)
    snk = semantic_sink(out_dir=out_dir or "", filename="{name}.png", server=server,
                        **dict(_codec_kwargs(semantic_sink, rx), steps=rx.steps or 0), **fkw)
    nv = noise_voltage(channel.snr_db, frame.sps)
    # GNU Radio seeds its generators from the clock when given 0: seed s runs as s + 1, so every
    # --seed is reproducible and distinct (--seed 0 and 1 used to share a channel)
    gr_seed = int(channel.seed) % (2 ** 31 - 1) + 1
    if channel.kind not in ("awgn", "model"):
        raise ValueError(f"unknown channel kind {channel.kind!r}; choose awgn or model")
    head = src
    taps = channel.channel_taps().tolist()
    if channel.lead:  # the receiver started first: the channel alone before the transmitter's first sample
        head = blocks.delay(gr.sizeof_gr_complex, int(channel.lead))
        tb.connect(src, head)
    if channel.fading:
        rician = float(channel.rician_k) > 0
        k_factor = float(channel.rician_k) if rician else 1.0
        if channel.selective:  # each path fades on its own; the taps' job is done here
            power = np.abs(np.asarray(channel.taps, np.complex128)) ** 2
            fade = channels.selective_fading_model(8, float(channel.fading), rician, k_factor, gr_seed,
                                                   [i + float(channel.delay) for i in range(len(power))],
                                                   np.sqrt(power / power.sum()).tolist(), 8)
            taps = [1.0 + 0j]
        else:
            fade = channels.fading_model(8, float(channel.fading), rician, k_factor, gr_seed)
        tb.connect(head, fade)
        head = fade
    # the receiver's front end after the noise: IQ imbalance, then the DC offset
    front = []
    if any(channel.iq_imbalance):
        # (mode 1: GNU Radio's receiver model -- the default, 0, is the transmitter's, which
        # channels.impairments uses)
        front.append(channels.iqbal_gen(float(channel.iq_imbalance[0]), float(channel.iq_imbalance[1]), 1))
    if channel.dc_offset is not None:
        dc = dc_rail(channel.dc_offset, frame.sps)
        front.append(blocks.add_const_cc(complex(dc, dc)))
    if channel.kind == "awgn":
        noise = analog.noise_source_c(analog.GR_GAUSSIAN, nv, gr_seed)
        add = blocks.add_cc()
        tb.connect(head, (add, 0))
        tb.connect(noise, (add, 1))
        tb.connect(add, *front, snk)
    else:
        ch = channels.channel_model(noise_voltage=nv, frequency_offset=float(channel.cfo),
                                    epsilon=float(channel.epsilon), taps=taps,
                                    noise_seed=gr_seed, block_tags=False)
        tb.connect(head, ch, *front, snk)
    return tb, src, snk


def run_link(images, out_dir, channel: ChannelConfig, tx: CodecConfig, rx: CodecConfig, frame: FrameConfig,
             server: str = "local", names: Optional[dict] = None) -> dict:
    """Run one link to the end; returns ``dict(results, tx_events, counters)``."""
    tb, src, snk = build_link(images, out_dir, channel, tx, rx, frame, server)
    if names:
        snk.set_names(names)
    tb.run()
    snk.stop()  # idempotent: make sure pending images are decoded before we read results
    return dict(results=list(snk.results), tx_events=list(src.events), counters=snk.counters(),
                tx_counters=src.counters())
