"""Frame configuration and every fixed sequence of the burst format.

A burst, in symbols (see ``docs/frame-format.md``)::

    | preamble (reps x seg) | body: P0 d d ... d P1 d ... d ... Plast |
                             `-- data = coded header (BPSK) + payload --'

    long payload (header_copy): | preamble | P0 d .. (header, latent[:2048]) .. d |
        resync preamble | Pk d .. (header copy, latent[2048:]) .. Plast |

* preamble: a CAZAC (Frank) segment of ``preamble_seg`` symbols repeated
  ``preamble_reps`` times under a sign cover whose adjacent-segment products
  form a Barker code (sharp, CFO-proof autocorrelation metric);
* body: one known pilot before every ``pilot_spacing`` data symbols and one
  after the last (QPSK up to the end of the header, then complex-Gaussian
  "probes" shaped like the payload, so that what distorts the payload shows
  on them); the data are the convolutionally coded, whitened BPSK header
  followed by the (optionally scrambled) latent symbols, with a copy of the coded
  header after the first ``HEADER_COPY_AFTER`` latent symbols of a long payload.

Every pseudo-random sequence comes from the PRBS-15 LFSR below (never from
numpy's generators, whose streams may change between numpy versions).
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass
from typing import NamedTuple

import numpy as np

from .header import HEADER_CODED_BITS

#: Barker codes by length (the preamble cover uses the one of length reps - 1).
BARKER = {
    2: (1, -1), 3: (1, 1, -1), 4: (1, 1, -1, 1), 5: (1, 1, 1, -1, 1), 7: (1, 1, 1, -1, -1, 1, -1),
    11: (1, 1, 1, -1, -1, -1, 1, -1, -1, 1, -1), 13: (1, 1, 1, 1, 1, -1, -1, 1, 1, -1, 1, -1, 1),
}
#: PRBS-15 (x^15 + x^14 + 1) seeds of the sequences of the format.
SEED_PILOTS, SEED_HEADER, SEED_PAYLOAD, SEED_PROBES = 0x7FFF, 0x5A5A, 0x1D2B, 0x2C59
PRBS_ORDER, PRBS_TAP = 15, 14
#: Largest chunk a header can describe (``chunk_symbols`` is a uint16).
MAX_CHUNK_LIMIT = 0xFFFF
#: Largest image a receiver assembles, in symbols (``total_symbols``): 2^22, a 4-channel latent of
#: 1448 x 1448, an image of 11584 x 11584 pixels (SD-1.5 at 512 x 512 is 16384 symbols).  The
#: reassembler allocates the whole image when its first chunk arrives: one CRC-valid burst claiming
#: 65535 chunks of 2048 symbols made it allocate 1.7 GB, then 5 GB in the receiver's weighting.
MAX_IMAGE_SYMBOLS = 1 << 22
#: A payload of at least this many symbols carries a second copy of the coded header
#: after its first HEADER_COPY_AFTER symbols (time diversity: a fade that swallows the
#: header after the preamble rarely also swallows the copy ~3500 symbols later; the
#: receiver adds the two copies' maximum-ratio soft values when the first alone fails).
#: The copy's place does not depend on the payload's length, so the receiver finds it
#: before it has decoded the header.
HEADER_COPY_AFTER = 2048
#: The copy's symbols are the header's rotated by this many (FrameLayout.header_copy_symbols).
COPY_ROTATION = HEADER_CODED_BITS // 2
#: the largest pilot spacing with the header copy: the resync preamble goes before the pilot of the
#: block holding the copy's first symbol (data symbol 1266 + 2048), which must not be the first block
#: (the one holding the header; the receiver reads the header before it knows of a copy)
MAX_COPY_PILOT_SPACING = HEADER_CODED_BITS + HEADER_COPY_AFTER
#: Zadoff-Chu root of the resync preamble's segment (of all roots and the conjugate Frank
#: segment, the one whose verification score against the Frank template is lowest: at
#: most 0.15 of its own at any lag, sps 1, 2 and 4).
RESYNC_ZC_ROOT = 1


class BurstMap(NamedTuple):
    """Body positions of a burst's parts (:meth:`FrameLayout.burst_map`), int64 arrays."""

    header: np.ndarray   # the coded header after the preamble
    copy: np.ndarray     # its second copy (empty for payloads under HEADER_COPY_AFTER)
    payload: np.ndarray  # the latent symbols
    pilots: np.ndarray
    n_body: int
    resync: np.ndarray   # the resync preamble before the copy's block (empty with no copy)


@dataclass
class FrameConfig:
    """Burst PHY settings shared by transmitter and receiver.

    Attributes:
        sps: samples per symbol (1 = no pulse shaping: symbol = sample).
        rolloff: RRC roll-off factor beta.
        rrc_span: RRC filter length in symbols (even); ``rrc_span * sps + 1`` taps.
        pilot_spacing: P, data symbols between two known pilots: 2..4096, at most 3314
            (MAX_COPY_PILOT_SPACING) with header_copy.
        scramble: multiply payload symbols by a PN QPSK phase sequence (the transmitter's
            choice: it travels in the header, flags bit 7, which the receiver follows).
        max_chunk_symbols: most latent symbols per burst (<= 65535).
        gap_symbols: zero symbols between bursts in :meth:`FrameTx.stream`.
        preamble_seg: symbols per preamble segment (a perfect square: 4, 9, 16, 25, ...);
            with ``cfo_search`` it sets the CFO capture range
            +-(cfo_search + 1/2) / (seg sps) cycles/sample.
        preamble_reps: preamble segments; ``preamble_reps - 1`` must be a Barker length.
        eq_taps: receiver: symbol-spaced LS equaliser taps (odd; 1 = one-tap).
        phase_window: receiver: the longest channel-tracker window, in pilot periods (the
            tracker chooses its window per burst by cross-validation, up to this;
            docs/frame-format.md section 6 step 4).
        detect_threshold: receiver: normalised preamble-metric threshold (0..1).
        verify_threshold: receiver: normalised preamble-correlation threshold (0..1) at
            sps <= 2; scaled by sqrt(2 / sps) above (docs/frame-format.md section 6).
        cfo_search: receiver: besides the CFO the detector reads (good to +-1/(2 seg sps)),
            try up to this many whole steps of 1/(seg sps) on either side
            (0 .. sqrt(seg) - 1); each widens the capture range by 1/(seg sps).
        header_copy: payloads of ``HEADER_COPY_AFTER`` (2048) symbols or more carry a
            resync preamble and a second copy of the coded header after their first 2048
            symbols (time diversity against fades: a burst whose preamble or header is lost
            in a fade is still found and read; docs/frame-format.md section 2); False saves
            their 1570 symbols (14 % of an 8192-symbol burst, 29 % of a 2048-symbol one) on
            links that do not fade.
        track_timing: receiver: follow a sampling-clock drift within bursts (sps >= 2;
            docs/frame-format.md section 6 step 7).  False where both ends share a clock
            (one device, a common 10 MHz reference): the receiver then spends about a fifth
            less time per burst and never re-times one.
        dispersive_eq: receiver: a second pass for dispersive channels -- a fractionally
            spaced equaliser fitted on all the burst's known symbols, over the burst and, where
            the error grows along it, re-fitted every 64 symbols -- kept only where its
            estimated noise is 10 % lower (docs/frame-format.md section 6 step 8): multipath
            longer than the 7 taps or changing during the burst.  False saves its ~2.5 ms
            per 8192-symbol burst.
        tx_clip: transmitter: clip every sample's amplitude at ``tx_clip`` times the
            burst's nominal rms amplitude sqrt(1/sps), phase kept (0 = off; >= 1): lowers
            the peak-to-average power ratio the power amplifier sees (the Gaussian latent
            payload has ~10 dB at 1e-4) at the cost of a distortion the receiver measures
            on its probe pilots (docs/over-the-air.md, back-off).
        image_timeout: receiver: an image still missing chunks is published once the stream
            has gone on this many of its bursts' durations (plus the receiver's own delay of
            four bursts' overhead) past its last chunk with none of the rest: the last image of a
            stream whose end never comes (a radio) is not held until the flowgraph stops.  At
            least 1; 0 = only at the end of the stream, when another image starts or after 64
            frames of others.
            Fewer than ``image_timeout`` of an image's bursts lost in a row never split it; after
            more, it is published without them and, when they come, again with them (an update,
            :class:`~gr_gdmcom.phy.Reassembler`).  Raise it where a transmitter pauses between the
            chunks of an image or a link drops several in a row.
        header_version: transmitter: the header version its bursts carry, 6 (this version: the
            sender id in byte 29) or 5 (the version before, which receivers from before
            2026-11-29 read -- no sender id, so ``sender`` must be 0; docs/frame-format.md
            section 4).  Receivers read both.
        notch: receiver (sps >= 2): find narrowband interferers inside the signal's band (a
            spur, a carrier) and notch each, and subtract a DC offset measured where the stream
            is quiet (``phy.notch``; counter ``tones_notched``).  Where none is found the stream
            passes unchanged.

    The receiver takes any chunk size and gap; ``sps``, ``rolloff``, ``rrc_span``,
    ``pilot_spacing``, ``header_copy`` and the preamble settings must match the
    transmitter's; the nine receiver settings are the receiver's own, ``tx_clip`` and
    ``header_version`` the transmitter's.
    """

    sps: int = 2
    rolloff: float = 0.35
    rrc_span: int = 8
    pilot_spacing: int = 16
    scramble: bool = True
    max_chunk_symbols: int = 8192
    gap_symbols: int = 64
    preamble_seg: int = 16
    preamble_reps: int = 14
    eq_taps: int = 7
    phase_window: int = 512
    detect_threshold: float = 0.05
    verify_threshold: float = 0.12
    cfo_search: int = 2
    header_copy: bool = True
    track_timing: bool = True
    dispersive_eq: bool = True
    tx_clip: float = 0.0
    image_timeout: float = 4.0
    notch: bool = True
    header_version: int = 6

    def __post_init__(self):
        self.validate()

    def validate(self) -> "FrameConfig":
        """Raise ``ValueError`` with a readable message for impossible settings."""
        checks = [
            (isinstance(self.sps, (int, np.integer)) and 1 <= self.sps <= 16, "sps must be an integer in 1..16"),
            (0.0 < float(self.rolloff) <= 1.0, "rolloff must be in (0, 1]"),
            (self.rrc_span >= 2 and self.rrc_span % 2 == 0, "rrc_span must be an even number >= 2"),
            (2 <= self.pilot_spacing <= (MAX_COPY_PILOT_SPACING if self.header_copy else 4096),
             f"pilot_spacing must be in 2..{MAX_COPY_PILOT_SPACING} with header_copy (2..4096 without)"),
            (1 <= self.max_chunk_symbols <= MAX_CHUNK_LIMIT, f"max_chunk_symbols must be in 1..{MAX_CHUNK_LIMIT}"),
            (self.gap_symbols >= 0, "gap_symbols must be >= 0"),
            (self.preamble_seg >= 4 and round(np.sqrt(self.preamble_seg)) ** 2 == self.preamble_seg,
             "preamble_seg must be a square >= 4 (Frank sequence length)"),
            (self.preamble_reps - 1 in BARKER,
             f"preamble_reps - 1 must be a Barker length {sorted(BARKER)}"),
            (self.eq_taps >= 1 and self.eq_taps % 2 == 1 and self.eq_taps <= 31, "eq_taps must be odd, 1..31"),
            (self.phase_window >= 1, "phase_window must be >= 1"),
            (0.0 < self.detect_threshold < 1.0, "detect_threshold must be in (0, 1)"),
            (0.0 < self.verify_threshold < 1.0, "verify_threshold must be in (0, 1)"),
            (self.tx_clip == 0 or self.tx_clip >= 1.0, "tx_clip must be 0 (off) or >= 1"),
            (float(self.image_timeout) == 0 or 1.0 <= float(self.image_timeout) <= 1e6,
             "image_timeout must be 0 (off) or in 1 .. 1e6 (bursts)"),
            (isinstance(self.header_copy, (bool, np.bool_)), "header_copy must be True or False"),
            (isinstance(self.notch, (bool, np.bool_)), "notch must be True or False"),
            (isinstance(self.header_version, (int, np.integer)) and not isinstance(self.header_version, bool)
             and self.header_version in (5, 6),
             "header_version must be 6 (this version) or 5 (for receivers from before 2026-11-29: no sender id)"),
            (isinstance(self.cfo_search, (int, np.integer))
             and 0 <= self.cfo_search < round(np.sqrt(self.preamble_seg)),
             "cfo_search must be an integer in 0 .. sqrt(preamble_seg) - 1"),
        ]
        for ok, msg in checks:
            if not ok:
                name = msg.split()[0]
                raise ValueError(f"FrameConfig: {msg} (got {name}={getattr(self, name, '?')!r}; "
                                 f"option --{name.replace('_', '-')})")
        return self

    @property
    def band_edge(self) -> float:
        """Edge of the signal's band, (1 + rolloff) / (2 sps) cycles/sample (above 0.5 at sps 1:
        the whole sampled band)."""
        return (1.0 + float(self.rolloff)) / (2.0 * int(self.sps))

    @property
    def cfo_range(self) -> float:
        """Largest |CFO| the receiver acquires, cycles/sample."""
        return (self.cfo_search + 0.5) / (self.preamble_seg * self.sps)

    def layout(self) -> "FrameLayout":
        """The (cached) sequences and index maps of this configuration."""
        return _layout(astuple(self))


def prbs_bits(n: int, seed: int) -> np.ndarray:
    """``n`` bits of the PRBS-15 LFSR b[k] = b[k-15] xor b[k-14], initial
    register b[0..14] = the 15 bits of ``seed`` (LSB first); the output starts at b[15]
    (the seed's own bits are not sent).  uint8 (n,)."""
    reg = [(seed >> i) & 1 for i in range(PRBS_ORDER)]
    if not any(reg):
        raise ValueError("PRBS seed must be non-zero")
    b = np.zeros(n + PRBS_ORDER, np.uint8)
    b[:PRBS_ORDER] = reg
    step = PRBS_TAP  # b[k..k+13] depend only on earlier bits: fill 14 at a time
    for k in range(PRBS_ORDER, n + PRBS_ORDER, step):
        m = min(step, n + PRBS_ORDER - k)
        b[k:k + m] = b[k - PRBS_ORDER:k - PRBS_ORDER + m] ^ b[k - PRBS_TAP:k - PRBS_TAP + m]
    return b[PRBS_ORDER:]


def qpsk(bits: np.ndarray) -> np.ndarray:
    """Bit pairs (b0, b1) -> ((1 - 2 b0) + j (1 - 2 b1)) / sqrt(2).  complex64 (len(bits) // 2,)."""
    b = 1.0 - 2.0 * np.asarray(bits, np.float64)[: len(bits) // 2 * 2].reshape(-1, 2)
    return ((b[:, 0] + 1j * b[:, 1]) / np.sqrt(2.0)).astype(np.complex64)


def gaussian_symbols(n: int, seed: int) -> np.ndarray:
    """``n`` known symbols distributed like CN(0, 1) (the latent payload's law): Box-Muller
    on pairs of 16-bit PRBS-15 words (LSB first), sqrt(-ln u) exp(j 2 pi v) with
    u, v = (word + 1/2) / 65536.  complex64 (n,), mean power ~1 (|s|^2 <= 11.8)."""
    words = prbs_bits(32 * n, seed).reshape(n, 2, 16).astype(np.float64) @ (2.0 ** np.arange(16))
    u, v = (words + 0.5).T / 65536.0
    return (np.sqrt(-np.log(u)) * np.exp(2j * np.pi * v)).astype(np.complex64)


def zadoff_chu(n: int, root: int = RESYNC_ZC_ROOT) -> np.ndarray:
    """Zadoff-Chu CAZAC sequence of even length n: exp(-j pi root k^2 / n).  complex64 (n,)."""
    k = np.arange(n)
    return np.exp(-1j * np.pi * root * (k * k % (2 * n)) / n).astype(np.complex64)


def frank(n: int) -> np.ndarray:
    """Frank CAZAC sequence of length n = q^2: exp(j 2 pi (k div q)(k mod q) / q).  complex64 (n,)."""
    q = int(round(np.sqrt(n)))
    k = np.arange(n)
    return np.exp(2j * np.pi * (k // q) * (k % q) / q).astype(np.complex64)


def rrc(t: np.ndarray, beta: float) -> np.ndarray:
    """Root-raised-cosine impulse response at times ``t`` (in symbols), peak 1 - beta + 4 beta / pi.  float64."""
    t = np.asarray(t, np.float64)
    out = np.empty_like(t)
    zero = np.abs(t) < 1e-9
    sing = np.abs(np.abs(4.0 * beta * t) - 1.0) < 1e-9
    reg = ~(zero | sing)
    tr = t[reg]
    out[reg] = (np.sin(np.pi * tr * (1 - beta)) + 4 * beta * tr * np.cos(np.pi * tr * (1 + beta))) / (
        np.pi * tr * (1 - (4 * beta * tr) ** 2))
    out[zero] = 1 - beta + 4 * beta / np.pi
    out[sing] = beta / np.sqrt(2) * ((1 + 2 / np.pi) * np.sin(np.pi / (4 * beta))
                                     + (1 - 2 / np.pi) * np.cos(np.pi / (4 * beta)))
    return out


class FrameLayout:
    """Sequences and index maps derived from a :class:`FrameConfig` (build with ``cfg.layout()``).

    Attributes:
        cfg: the configuration.
        half: RRC delay in samples (``rrc_span * sps / 2``; 0 at sps = 1).
        rrc_scale: factor making the sampled RRC unit-energy.
        taps: float64 (2 half + 1,), unit-energy TX pulse / matched filter.
        preamble: complex64 (reps * seg,), unit-modulus preamble symbols.
        resync: complex64 (reps * seg,), the resync preamble (the same cover over
            :func:`zadoff_chu` segments).
        cover: float64 (reps,), segment signs; ``barker``: float64 (reps - 1,),
            products of adjacent signs (the detection weights).
        header_whitening: complex64 (HEADER_CODED_BITS,), unit-modulus QPSK phases: coded
            bit c_k is sent as (1 - 2 c_k) w_k (BPSK on a PN-rotated axis, so that the
            header is a circular, white signal like the rest of the burst).
        pilots: complex64 (max pilots,): QPSK for the ``header_pilots`` pilots of the
            header region, then :func:`gaussian_symbols` (payload-shaped probes);
            ``scrambler``: complex64 (MAX_CHUNK_LIMIT,), unit-modulus QPSK phases.
        template: complex64, the shaped preamble waveform (TX samples of the
            preamble alone, ``reps * seg * sps + 2 half`` samples).
    """

    def __init__(self, cfg: FrameConfig):
        self.cfg = cfg
        sps, seg, reps = cfg.sps, cfg.preamble_seg, cfg.preamble_reps
        self.half = cfg.rrc_span * sps // 2 if sps > 1 else 0
        if sps > 1:
            raw = rrc(np.arange(-self.half, self.half + 1) / sps, cfg.rolloff)
            self.rrc_scale = 1.0 / np.sqrt(np.sum(raw ** 2))
            self.taps = raw * self.rrc_scale
        else:
            self.rrc_scale, self.taps = 1.0, np.ones(1)
        self.barker = np.asarray(BARKER[reps - 1], np.float64)
        self.cover = np.concatenate([[1.0], np.cumprod(self.barker)])
        self.preamble = (np.repeat(self.cover, seg) * np.tile(frank(seg), reps)).astype(np.complex64)
        self.resync = (np.repeat(self.cover, seg) * np.tile(zadoff_chu(seg), reps)).astype(np.complex64)
        self.header_whitening = qpsk(prbs_bits(2 * HEADER_CODED_BITS, SEED_HEADER))
        max_data = 2 * HEADER_CODED_BITS + MAX_CHUNK_LIMIT
        n_pilots = -(-max_data // cfg.pilot_spacing) + 1  # those of the largest burst
        self.header_pilots = -(-HEADER_CODED_BITS // cfg.pilot_spacing)
        self.pilots = np.concatenate([qpsk(prbs_bits(2 * self.header_pilots, SEED_PILOTS)),
                                      gaussian_symbols(n_pilots - self.header_pilots, SEED_PROBES)])
        self.scrambler = qpsk(prbs_bits(2 * MAX_CHUNK_LIMIT, SEED_PAYLOAD))
        self.template = self.shape(self.preamble)

    def shape(self, symbols: np.ndarray) -> np.ndarray:
        """Pulse-shape symbols at ``sps`` (full convolution, filter tails included).

        Args:
            symbols: complex (n,), unit-energy symbols.
        Returns:
            complex64 (n * sps + 2 half,) samples; unit energy per symbol.
        """
        sps = self.cfg.sps
        if sps == 1:
            return np.asarray(symbols, np.complex64)
        up = np.zeros(len(symbols) * sps, np.complex64)
        up[::sps] = symbols
        return np.convolve(up, self.taps.astype(np.float32)).astype(np.complex64)

    def body_map(self, n_data: int):
        """Body positions of ``n_data`` data symbols and of the pilots.

        Returns:
            (data_pos int64 (n_data,), pilot_pos int64 (n_pilots,), body_len int); the
            arrays are cached and read-only.
        """
        return _body_map(self.cfg.pilot_spacing, int(n_data))

    def body_symbols(self, data: np.ndarray) -> np.ndarray:
        """Insert the pilots into ``data`` (complex (n,)) -> complex64 body."""
        data_pos, pilot_pos, body_len = self.body_map(len(data))
        body = np.empty(body_len, np.complex64)
        body[data_pos] = data
        body[pilot_pos] = self.pilots[: len(pilot_pos)]
        return body

    def header_region(self):
        """Body positions of the header data and of the pilots before it (known before
        the payload length is).  Returns (data_pos, pilot_pos, n_body)."""
        data_pos, _, _ = self.body_map(HEADER_CODED_BITS)
        n_blocks = -(-HEADER_CODED_BITS // self.cfg.pilot_spacing)
        return data_pos, np.arange(n_blocks, dtype=np.int64) * (self.cfg.pilot_spacing + 1), int(data_pos[-1]) + 1

    def burst_map(self, n_payload: int) -> BurstMap:
        """Body positions of the header, its copy, the payload, the pilots and the resync
        preamble of a burst carrying ``n_payload`` latent symbols: data = header,
        payload[:HEADER_COPY_AFTER], header copy, payload[HEADER_COPY_AFTER:] on the pilot
        grid, the resync preamble inserted before the pilot of the block where the copy
        starts (no copy and no resync preamble under HEADER_COPY_AFTER symbols)."""
        return _burst_map(self.cfg.pilot_spacing, int(n_payload), bool(self.cfg.header_copy), len(self.resync))

    def burst_body(self, coded_header: np.ndarray, payload: np.ndarray) -> np.ndarray:
        """The body of a burst (see :meth:`burst_map`): header, payload, its copy,
        pilots and resync preamble in place.  complex64 (n_body,)."""
        m = self.burst_map(len(payload))
        body = np.empty(m.n_body, np.complex64)
        body[m.header] = coded_header
        body[m.copy] = self.header_copy_symbols(coded_header)[: len(m.copy)]
        body[m.payload] = payload
        body[m.pilots] = self.pilots[: len(m.pilots)]
        body[m.resync] = self.resync[: len(m.resync)]
        return body

    @staticmethod
    def header_copy_symbols(coded_header: np.ndarray) -> np.ndarray:
        """The copy's symbols: the coded header rotated by half its length (copy symbol j =
        header symbol (j + COPY_ROTATION) mod n), so that a fade at the same place of both
        copies (fades come back at about the copies' distance) hits different coded bits."""
        return np.roll(coded_header, -COPY_ROTATION)

    @staticmethod
    def combine_copies(first: np.ndarray, copy: np.ndarray) -> np.ndarray:
        """Soft values of the header (in its own symbol order) from both copies' (maximum-ratio
        weighted) values: their sum, the copy's rotated back."""
        return first + np.roll(copy, COPY_ROTATION)

    def copy_region(self):
        """Body positions of the header copy and of the pilots before its end (the same
        for every burst that has a copy).  Returns (copy_pos, pilot_pos, n_body through
        the copy's last symbol); copy_pos is empty without ``header_copy``."""
        m = self.burst_map(HEADER_COPY_AFTER)
        if not len(m.copy):
            return m.copy, m.pilots[:0], 0
        return m.copy, m.pilots[m.pilots < m.copy[-1]], int(m.copy[-1]) + 1

    def resync_start(self) -> int:
        """Body position of the resync preamble's first symbol (the same in every burst
        that has one); -1 without ``header_copy``."""
        m = self.burst_map(HEADER_COPY_AFTER)
        return int(m.resync[0]) if len(m.resync) else -1

    def burst_samples(self, n_payload: int) -> int:
        """Samples in a burst carrying ``n_payload`` latent symbols."""
        return (len(self.preamble) + self.burst_map(n_payload).n_body) * self.cfg.sps + 2 * self.half


@functools.lru_cache(maxsize=64)
def _body_map(p: int, n_data: int):
    d = np.arange(n_data)
    nblocks = -(-n_data // p)
    body_len = n_data + nblocks + 1
    pilot_pos = np.concatenate([np.arange(nblocks) * (p + 1), [body_len - 1]]).astype(np.int64)
    data_pos = d + d // p + 1
    data_pos.flags.writeable = pilot_pos.flags.writeable = False
    return data_pos, pilot_pos, body_len


@functools.lru_cache(maxsize=64)
def _burst_map(p: int, n_payload: int, header_copy: bool, n_resync: int) -> BurstMap:
    h, s = HEADER_CODED_BITS, HEADER_COPY_AFTER
    has_copy = header_copy and n_payload >= s
    data_pos, pilot_pos, body_len = _body_map(p, h + n_payload + (h if has_copy else 0))
    resync = np.zeros(0, np.int64)
    if has_copy:
        # the resync preamble goes before the pilot of the block holding data symbol h + s
        at = (h + s) // p * (p + 1)
        data_pos = np.where(data_pos >= at, data_pos + n_resync, data_pos)
        pilot_pos = np.where(pilot_pos >= at, pilot_pos + n_resync, pilot_pos)
        body_len += n_resync
        resync = np.arange(at, at + n_resync, dtype=np.int64)
        copy, payload = data_pos[h + s: 2 * h + s], np.concatenate([data_pos[h: h + s], data_pos[2 * h + s:]])
    else:
        copy, payload = data_pos[:0], data_pos[h:]
    for a in (data_pos, pilot_pos, payload, resync):
        a.flags.writeable = False
    return BurstMap(data_pos[:h], copy, payload, pilot_pos, body_len, resync)


@functools.lru_cache(maxsize=16)
def _layout(key: tuple) -> FrameLayout:
    return FrameLayout(FrameConfig(*key))
