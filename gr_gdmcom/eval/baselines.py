"""The methods a sweep compares, behind one two-stage interface.

Every method is a :class:`Method` with

* ``transmit(images, names) -> [Tx | Failed]`` -- what the transmitter does,
  independent of the channel: run **once per image and setting** and reused
  for every SNR;
* ``receive(txs, snr_db) -> [Rx | Failed]`` -- channel and receiver at one SNR.

====================  ========================================================
name                  what
====================  ========================================================
``proposed``          the paper's codec as configured (:class:`GenerativeCodec`)
``proposed_caption``  the same with the image's caption (``--captions``,
                      lossless side information) as the prompt on both sides:
                      the paper's Table I "with caption" row
``random_noise``      the same with ``forward="random"``: k steps of random
                      forward noise instead of DDIM inversion (paper's ablation)
``received``          the proposed transmitter, and the received latent decoded
                      by the VAE as is (no inversion, no denoising): what the
                      diffusion receiver must beat
``sd_semcom``         SD_SemCom (Cicchetti et al., MLSP 2024), re-implemented
                      from the paper's description: the clean normalised VAE
                      latent ``z_0`` (k = 0, no inversion) is sent; the caption
                      is lossless side information; the receiver adds random
                      forward noise up to grid step ``N`` and denoises N DDIM
                      steps with the caption as prompt
``proposed_fixed_point``  the proposed method with ``inversion="fixed-point"``
                      (each inversion step solved implicitly, docs/codec.md)
``proposed_clean_one``  the proposed method with ``clean_end="one"`` (a_0 = 1;
                      SD 1.5's scheduler config says abar_0)
``proposed_calibrated``  the proposed method with ``rule="calibrated:FILE"``
                      (``--calibration FILE`` from ``gdmcom calibrate``)
``digital``           HEVC-intra (x265, standing in for BPG) + 5G NR LDPC + QAM
                      (:func:`gr_gdmcom.eval.digital.run_digital`) at the same
                      number of complex channel uses as the proposed method
====================  ========================================================

The numpy channel is AWGN with Es/N0 = SNR per complex symbol (unit symbol
energy), one realisation per (seed, image, SNR) from
:func:`gr_gdmcom.sim.channel_rng`.  There is no physical layer here: the
diffusion receivers are told the channel's SNR (the ``snr_est_db`` column
stays empty); the GNU Radio link is where the receiver estimates it.

Adding a method: subclass :class:`Method`, set ``name``, implement
``setting_label``, ``transmit`` and ``receive``, and add it to
:data:`METHODS` (see docs/evaluation.md).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..codec import Failed, GenerativeCodec, LatentMeta, latent_from_symbols, symbols_from_latent
from ..config import CodecConfig, bcr_text, server_mismatch
from ..sim import channel_rng, snr_tag

log = logging.getLogger(__name__)

CHANNEL = "awgn"


@dataclass
class Tx:
    """Transmitter output for one image (independent of the SNR).

    Attributes:
        name: image label.
        image: the original, uint8 (H, W, 3).
        n_symbols: complex channel uses the method occupies.
        symbols: complex64 (n,) for analog methods, None for the digital chain
            (it codes per SNR: link adaptation).
        meta: :class:`LatentMeta` for latent methods.
        seconds: transmitter wall time attributed to this image.
        unet_calls: UNet calls (CFG pairs) spent on this image by the transmitter.
        caption: the prompt the receiver will use (sd_semcom, proposed_caption).
    """

    name: str
    image: np.ndarray
    n_symbols: int
    symbols: Optional[np.ndarray] = None
    meta: Optional[LatentMeta] = None
    seconds: float = 0.0
    unet_calls: int = 0
    caption: str = ""
    caption_source: str = ""


@dataclass
class Rx:
    """Receiver output for one image at one SNR."""

    name: str
    image: np.ndarray
    decode_success: bool = True
    n_steps: Optional[int] = None
    rule: str = ""
    snr_est_db: Optional[float] = None
    seconds: float = 0.0
    unet_calls: Optional[int] = None
    fidelity: str = ""
    detail: Dict[str, object] = field(default_factory=dict)


class Method:
    """A method under test at one setting (see the module docstring)."""

    name = "method"
    #: True when the method needs the diffusion model
    needs_model = True
    #: True when the method can send fewer symbols than the whole latent (``--bcr`` below 1/96)
    reducible = False

    def __init__(self, ctx: "Context", **params):
        self.ctx = ctx
        self.params = params

    # a compact, deterministic description of everything that changes the output
    def setting_label(self) -> str:
        raise NotImplementedError

    def transmit_key(self) -> tuple:
        """Settings with equal keys share the transmitter's output (e.g. Table II's
        (10,0,10) and (10,0,15))."""
        return (self.name, self.setting_label())

    def fidelity(self) -> str:
        return ""

    def reduction(self) -> int:
        """The reduction factor r of the symbols sent (nominal BCR 1/(96 r); 1: the whole latent)."""
        return 1

    def transmit(self, images: Sequence[np.ndarray], names: Sequence[str]) -> List[Union[Tx, Failed]]:
        raise NotImplementedError

    def receive(self, txs: Sequence[Tx], snr_db: float) -> List[Union[Rx, Failed]]:
        raise NotImplementedError


@dataclass
class Context:
    """What every method shares: the configuration, the loaded model (lazily) and side information.

    Attributes:
        config: the codec configuration from the command line.
        components: loaded model components, or None until :meth:`codec` needs them.
        captions: ``{file name or stem: caption}`` for sd_semcom and proposed_caption.
        semcom_t: ``"auto"`` or a fixed grid index for sd_semcom's forward noise.
        digital_codec / digital_mcs: passed to :func:`run_digital`.
    """

    config: CodecConfig
    components: object = None
    captions: Dict[str, str] = field(default_factory=dict)
    image_files: Dict[str, str] = field(default_factory=dict)
    semcom_t: Union[str, int] = "auto"
    digital_codec: str = "hevc"
    digital_mcs: str = "adaptive"
    jobs: int = 1
    calibration: Optional[str] = None
    #: :class:`ServerCodecs` when the codec runs on ``gdmcom serve`` (``--server``), else None
    remote: Optional["ServerCodecs"] = None
    _codecs: Dict[tuple, GenerativeCodec] = field(default_factory=dict)
    _pool: object = None

    def pool(self):
        """Worker processes for the CPU-bound digital chain (None when ``jobs`` is 1)."""
        if self.jobs <= 1:
            return None
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the workers import only numpy/PIL/py3gpp, never touch the parent's torch/CUDA state
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self.remote is not None:
            self.remote.close()

    def load(self):
        if self.components is None:
            from ..codec import load_components

            self.components = load_components(self.config.model, self.config.device, self.config.dtype)
        return self.components

    def codec(self, config: CodecConfig) -> GenerativeCodec:
        """A codec for ``config`` sharing the loaded components (one per distinct config); with
        ``--server``, the server's codec (ValueError where ``config`` asks for other settings)."""
        if self.remote is not None:
            return self.remote.codec(config)
        key = tuple(sorted(vars(config).items()))
        if key not in self._codecs:
            self._codecs[key] = GenerativeCodec(config, components=self.load())
        return self._codecs[key]

    def latent_channels(self) -> int:
        if self.components is not None:
            return int(self.components.vae.config.latent_channels)
        if self.remote is not None and isinstance(self.remote.status.get("latent_channels"), int):
            return int(self.remote.status["latent_channels"])  # the server's model
        return 4  # Stable Diffusion's latent; used only when no model is loaded

    def caption_for(self, name: str) -> Tuple[str, str]:
        """(caption, source) for an image: from the captions file (by file name,
        then stem), else the fixed prompt."""
        file = self.image_files.get(name, "")
        for key in (Path(file).name if file else "", Path(file).stem if file else "", name):
            if key and key in self.captions:
                return self.captions[key], "captions file"
        return self.config.prompt, "fixed prompt"


class ServerCodecs:
    """The codec of a ``gdmcom serve`` process for the sweep (``gdmcom sweep --server``).

    ``config`` is the server's codec configuration (from its ``status``); :meth:`codec`
    gives the batch interface (:class:`~gr_gdmcom.bridge.backend.BackendCodec`, up to
    ``concurrency`` requests in flight so that the server batches them) for a method's
    configuration: what differs from the server's in the settings a request may carry
    (``k``; ``m``, ``steps``, ``rescale``: protocol ``settings``, where the server lists
    them in its status) travels with each request; anything else is refused.
    """

    def __init__(self, server: str, status: dict, config: CodecConfig, concurrency: int = 8):
        from ..bridge.backend import remote_backend

        self.server, self.status, self.config = server, status, config
        self.endpoints = server.partition("?")[0]
        self.concurrency = concurrency
        #: per operation, the settings this server takes per request (none from an older server)
        self.per_request = {op: tuple(v) for op, v in (status.get("settings") or {}).items()}
        self._backend = remote_backend(server, None)
        self._codecs: Dict[tuple, object] = {}

    def settings(self, config: CodecConfig) -> Dict[str, dict]:
        """Per operation, the request settings that give ``config`` on this server."""
        out = {}
        for op, names in self.per_request.items():
            diff = {k: getattr(config, k) for k in names  # (a name this version does not know: never set)
                    if hasattr(config, k) and getattr(config, k) != getattr(self.config, k)}
            if diff:
                out[op] = diff
        return out

    def mismatch(self, config: CodecConfig) -> List[str]:
        """``field=value (server: value)`` for each setting of ``config`` that neither the server
        runs nor a request can set."""
        carried = {k for names in self.per_request.values() for k in names}
        return server_mismatch(config, vars(self.config), carried)

    def codec(self, config: CodecConfig):
        from ..bridge.backend import BackendCodec

        diff = self.mismatch(config)
        if diff:
            raise ValueError(f"the server at {self.endpoints} runs other codec settings: {', '.join(diff)}")
        settings = self.settings(config)
        key = tuple(sorted((op, tuple(sorted(v.items()))) for op, v in settings.items()))
        if key not in self._codecs:
            self._codecs[key] = BackendCodec(self._backend, config, self.concurrency, settings)
        return self._codecs[key]

    def close(self) -> None:
        for c in self._codecs.values():
            c.close()
        self._backend.close()


def remote_problem(m: "Method", remote: ServerCodecs) -> Optional[str]:
    """Why method ``m`` cannot run with its codec on ``remote`` (None: it can).  A server runs
    encode and decode at its own settings, so only the paper's method at those settings goes
    there (and methods that need no model stay here)."""
    if not m.needs_model:
        return None
    label = f"{m.name} ({m.setting_label()})"
    if not (isinstance(m, Proposed) and type(m).transmit is Proposed.transmit
            and type(m).receive is Proposed.receive):
        return f"{label} needs the model in this process (it uses more than a server's encode and decode)"
    diff = remote.mismatch(m.config)
    if diff:
        return (f"{label} needs codec settings the server at {remote.endpoints} does not run and a request "
                f"cannot set: {', '.join(diff)}; start a server with them (gdmcom serve takes the same codec flags)")
    return None


def load_captions(path: Union[str, Path]) -> Dict[str, str]:
    """Read a captions file: JSON ``{"kodim01.png": "a ...", ...}`` or CSV with
    two columns (file name, caption; a header row ``file,caption`` is optional).

    Raises ValueError with a one-line message on unreadable or malformed files.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # (a spreadsheet's "UTF-8 with BOM" CSV: BOM dropped)
    except OSError as exc:
        raise ValueError(f"cannot read captions file {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"captions file {p} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"captions file {p} must map image file names to caption strings")
        return {str(k): v for k, v in data.items()}
    out, line_of = {}, {}
    for i, row in enumerate(csv.reader(text.splitlines())):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ValueError(f"captions file {p}, line {i + 1}: expected 'file,caption'")
        if i == 0 and row[0].strip().lower() in ("file", "filename", "image", "name"):
            continue
        name = row[0].strip()
        if name in out:
            raise ValueError(f"captions file {p}, line {i + 1}: {name} already has a caption (line {line_of[name]})")
        out[name], line_of[name] = ",".join(row[1:]).strip(), i + 1
    return out


def latent_symbols(height: int, width: int, channels: int = 4) -> int:
    """Complex symbols of the full latent of an H x W image (sides padded to multiples of 8)."""
    return channels * math.ceil(height / 8) * math.ceil(width / 8) // 2


def bcr_suffix(reduce: int, method: str = "") -> str:
    """The part of a setting label that names a reduced BCR: ``,bcr=1/384`` (``:pool`` for a
    latent method's reduction); empty for the whole latent, so full-BCR labels are the paper's."""
    if reduce <= 1:
        return ""
    return f",bcr={bcr_text(reduce)}" + (f":{method}" if method else "")


def reduce_key(config: CodecConfig) -> tuple:
    """What a latent transmitter's output depends on beyond k: the reduction (codec/rate.py)."""
    return (config.reduce, config.reduce_method, config.remove_mean) if config.reduce > 1 else ()


def _received(tx: Tx, snr_db: float, seed: int) -> np.ndarray:
    """Equalised received symbols: AWGN at Es/N0 = ``snr_db`` (:func:`gr_gdmcom.phy.awgn`)."""
    from ..phy import awgn

    return np.asarray(awgn(tx.symbols, snr_db, channel_rng(seed, tx.name, snr_db)), dtype=np.complex64)


# --------------------------------------------------------------------------- proposed / random_noise
class Proposed(Method):
    """The paper's codec as configured; ``k, m, steps, rescale`` may override the configuration."""

    name = "proposed"
    forward = "ddim"
    reducible = True

    def __init__(self, ctx: Context, **params):
        super().__init__(ctx, **params)
        over = {k: v for k, v in params.items() if k in ("k", "m", "steps", "rescale", "reduce")}
        self.config = ctx.config.replace(forward=self.forward, **over).validate()
        self.grid_setting = "steps" in params

    def setting_label(self) -> str:
        c = self.config
        n = f"N{c.steps}" if c.steps is not None else c.rule
        return f"k{c.k},m{c.m},{n},{'rescale' if c.rescale else 'norescale'}" + bcr_suffix(c.reduce, c.reduce_method)

    def transmit_key(self) -> tuple:
        return ("codec", self.config.forward, self.config.k) + reduce_key(self.config)

    def reduction(self) -> int:
        return self.config.reduce

    def fidelity(self) -> str:
        note = "paper's method (gr_gdmcom.codec)"
        if self.grid_setting:
            note += "; Table II setting: N fixed, no rescaling (paper behaviour)"
        if self.ctx.remote is not None:
            note += f"; codec on the inference server at {self.ctx.remote.endpoints}"
        return note + "; numpy AWGN, decoder told the true SNR (no PHY estimate)"

    @property
    def codec(self) -> GenerativeCodec:
        return self.ctx.codec(self.config)

    def transmit(self, images, names):
        return self._transmit_with(self.codec, images, names)

    def _transmit_with(self, codec: GenerativeCodec, images, names):
        t0 = time.perf_counter()
        encs = codec.encode_many(list(images), list(names))
        dt = (time.perf_counter() - t0) / max(len(images), 1)
        out = []
        for img, e in zip(images, encs):
            if isinstance(e, Failed):
                out.append(e)
                continue
            out.append(Tx(name=e.meta.name, image=img, n_symbols=int(e.symbols.size), symbols=e.symbols,
                          meta=e.meta, seconds=dt, unet_calls=int(e.record.get("unet_calls", 0))))
        return out

    def receive(self, txs, snr_db):
        return self._receive_with(self.codec, txs, snr_db)

    def _receive_with(self, codec: GenerativeCodec, txs, snr_db, fidelity: str = ""):
        items = [(_received(tx, snr_db, self.config.seed), tx.meta, float(snr_db)) for tx in txs]
        t0 = time.perf_counter()
        decs = codec.decode_many(items)
        dt = (time.perf_counter() - t0) / max(len(txs), 1)
        out = []
        for tx, d in zip(txs, decs):
            if isinstance(d, Failed):
                out.append(d)
                continue
            r = d.record
            out.append(Rx(name=tx.name, image=d.image, n_steps=r["n_steps"], rule=r["rule"], seconds=dt,
                          unet_calls=int(r["unet_calls"]), fidelity=fidelity or self.fidelity()))
        return out


class ProposedVariant(Proposed):
    """The proposed method with codec settings changed (:attr:`changes`); beyond the paper."""

    changes: Dict[str, object] = {}
    what = ""

    def __init__(self, ctx: Context, **params):
        super().__init__(ctx, **params)
        self.config = self.config.replace(**self.variant_changes()).validate()

    def variant_changes(self) -> dict:
        return dict(self.changes)

    def setting_label(self) -> str:
        c = self.config
        return f"{super().setting_label()},{c.inversion},clean={c.clean_end}"

    def transmit_key(self) -> tuple:
        c = self.config
        return ("codec", c.forward, c.k, c.inversion, c.inversion_iters, c.clean_end) + reduce_key(c)

    def fidelity(self) -> str:
        return f"{super().fidelity()}; beyond the paper: {self.what}"


class ProposedFixedPoint(ProposedVariant):
    name = "proposed_fixed_point"
    changes = dict(inversion="fixed-point")
    what = "each DDIM-inversion step solved by fixed-point iteration (inversion=fixed-point)"


class ProposedCleanOne(ProposedVariant):
    name = "proposed_clean_one"
    changes = dict(clean_end="one")
    what = "a_0 = 1 at the clean end (clean_end=one; SD 1.5's scheduler config says abar_0)"


class ProposedCalibrated(ProposedVariant):
    name = "proposed_calibrated"
    what = "N from a calibration file (rule=calibrated:FILE, gdmcom calibrate)"

    def variant_changes(self) -> dict:
        if not self.ctx.calibration:
            raise ValueError("method proposed_calibrated needs --calibration FILE (made by gdmcom calibrate)")
        return dict(rule=f"calibrated:{self.ctx.calibration}", steps=None)

    def setting_label(self) -> str:
        return super().setting_label().replace(self.config.rule, "calibrated")


class RandomNoise(Proposed):
    """The paper's random-noise ablation: k steps of random forward noise at the transmitter."""

    name = "random_noise"
    forward = "random"

    def fidelity(self) -> str:
        return ("paper's random-noise ablation: k steps of random forward noise instead of DDIM inversion "
                "(gr_gdmcom.codec, forward=random); numpy AWGN, decoder told the true SNR")


class Received(Proposed):
    """The received latent ``z~_k`` decoded by the VAE as is: the proposed transmitter, no denoising."""

    name = "received"

    def fidelity(self) -> str:
        return "received latent z~_k decoded by the VAE as is (no denoising); numpy AWGN"

    def receive(self, txs, snr_db):
        out = []
        t0 = time.perf_counter()
        for tx in txs:
            image = self.codec.decode_as_is(_received(tx, snr_db, self.config.seed), tx.meta)
            out.append(Rx(name=tx.name, image=image, n_steps=0, rule="none",
                          seconds=time.perf_counter() - t0, unet_calls=0, fidelity=self.fidelity()))
            t0 = time.perf_counter()
        return out


class ProposedCaption(Proposed):
    """The paper's "proposed with caption" row (Table I): the image's caption, sent as
    lossless side information beside the symbols (outside the symbol budget), is the
    prompt of the transmitter's DDIM inversion and of the receiver's inversion and
    sampling.  Captions come from ``--captions``; an image without one uses the fixed
    prompt (so without a captions file this equals ``proposed``)."""

    name = "proposed_caption"

    def setting_label(self) -> str:
        return f"{super().setting_label()},caption={_caption_label(self.ctx)}"

    def transmit_key(self) -> tuple:
        return ("codec-caption", self.config.forward, self.config.k, _caption_label(self.ctx)) + reduce_key(self.config)

    def fidelity(self, caption_source: str = "") -> str:
        src = caption_source or ("captions file" if self.ctx.captions else "fixed prompt")
        return (f"paper's method with the image's caption as the prompt on both sides (Table I 'with caption'); "
                f"caption: {src}, lossless side information outside the symbol budget; numpy AWGN, decoder told "
                f"the true SNR")

    def transmit(self, images, names):
        out: List[Union[Tx, Failed, None]] = [None] * len(images)
        for (caption, source), members in _indices_by([self.ctx.caption_for(n) for n in names]).items():
            codec = self.ctx.codec(self.config.replace(prompt=caption))
            for i, tx in zip(members, self._transmit_with(codec, [images[i] for i in members],
                                                          [names[i] for i in members])):
                if isinstance(tx, Tx):
                    tx.caption, tx.caption_source = caption, source
                out[i] = tx
        return out  # type: ignore[return-value]

    def receive(self, txs, snr_db):
        out: List[Union[Rx, Failed, None]] = [None] * len(txs)
        for (caption, source), members in _indices_by([(tx.caption, tx.caption_source) for tx in txs]).items():
            codec = self.ctx.codec(self.config.replace(prompt=caption))
            for i, rx in zip(members, self._receive_with(codec, [txs[i] for i in members], snr_db,
                                                         self.fidelity(source))):
                if isinstance(rx, Rx):
                    rx.detail = dict(caption=caption[:80])
                out[i] = rx
        return out  # type: ignore[return-value]


def _indices_by(keys: Sequence[tuple]) -> Dict[tuple, List[int]]:
    """``{key: [positions of that key]}`` in first-seen order."""
    groups: Dict[tuple, List[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def _caption_label(ctx: "Context") -> str:
    """``file-<crc32 of the captions>`` or ``fixed``: part of a captioned method's setting,
    so a changed captions file gives new rows instead of reusing old ones."""
    if not ctx.captions:
        return "fixed"
    digest = zlib.crc32(json.dumps(ctx.captions, sort_keys=True).encode("utf-8")) & 0xFFFFFFFF
    return f"file-{digest:08x}"


# --------------------------------------------------------------------------- SD_SemCom
class SDSemCom(Method):
    """SD_SemCom (Cicchetti et al., MLSP 2024), re-implemented from the paper's description.

    Transmitter: ``z_0 = s_vae * mode(E(x))``, normalised to unit power like
    the proposed method (same symbol count); the caption travels losslessly
    beside it (not counted in the symbol budget).  Receiver: ``z~_0`` from the
    equalised symbols, random forward noise to grid step ``N``
    (``z_N = sqrt(a_N) z~_0 + sqrt(1 - a_N) eps``), then N guided DDIM
    sampling steps with the caption as prompt.  ``N`` is ``t`` when fixed
    (``--semcom-t``), else (``auto``) the grid step whose noise variance
    ``1 - a_N`` is closest to the channel's ``P sigma^2`` (the variance rule of
    eq. 17 with k = m = 0).
    """

    name = "sd_semcom"

    def __init__(self, ctx: Context, **params):
        super().__init__(ctx, **params)
        self.t = params.get("t", ctx.semcom_t)
        if self.t != "auto":
            self.t = int(self.t)
            if not 0 <= self.t <= ctx.config.T:
                raise ValueError(f"--semcom-t must be 'auto' or a grid index in 0..{ctx.config.T}, got {self.t}")
        self.config = ctx.config.replace(k=0, m=0, steps=None, forward="ddim")

    def setting_label(self) -> str:
        return f"t={self.t},caption={_caption_label(self.ctx)}"

    def transmit_key(self) -> tuple:
        return ("semcom",)

    def fidelity(self, caption_source: str = "") -> str:
        src = caption_source or ("captions file" if self.ctx.captions else "fixed prompt")
        how = "variance rule at the true SNR" if self.t == "auto" else f"fixed grid step {self.t}"
        return (f"SD_SemCom re-implemented from the paper's description (no reference code); caption: {src}, "
                f"lossless side information outside the symbol budget; forward noise to N by {how}")

    @property
    def codec(self) -> GenerativeCodec:
        return self.ctx.codec(self.config)

    def transmit(self, images, names):
        import torch

        from ..codec.images import to_tensor

        codec = self.codec
        c = codec.c
        t0 = time.perf_counter()
        out: List[Union[Tx, Failed]] = []
        with torch.no_grad():
            for img, name in zip(images, names):  # the sweep batches equal sizes; the VAE is cheap
                try:
                    x = to_tensor(_pil(img)).to(c.device, c.dtype)
                    z0 = (c.vae.encode(x).latent_dist.mode().float() * c.vae_scale)[0].cpu().numpy()
                except Exception as exc:  # noqa: BLE001 - report and continue with the others
                    out.append(Failed(f"{name}: VAE encoding failed: {exc}", name))
                    continue
                sym, alpha = symbols_from_latent(z0)
                caption, source = self.ctx.caption_for(name)
                meta = LatentMeta(alpha=alpha, latent_shape=tuple(z0.shape), image_size=tuple(img.shape[:2]),
                                  k=0, T=codec.config.T, guidance=codec.config.guidance, prompt=caption,
                                  forward="none", name=name)
                out.append(Tx(name=name, image=img, n_symbols=int(sym.size), symbols=sym, meta=meta,
                              caption=caption, caption_source=source))
        dt = (time.perf_counter() - t0) / max(len(images), 1)
        for tx in out:
            if isinstance(tx, Tx):
                tx.seconds = dt
        return out

    def n_steps(self, snr_db: float, meta: LatentMeta) -> int:
        if self.t != "auto":
            return int(self.t)
        from ..codec.schedule import select_steps

        return select_steps(snr_db, k=0, m=0, T=self.codec.config.T, rule="variance", power=meta.power,
                            rescale=False, grid=self.codec.grid).n_steps

    def receive(self, txs, snr_db):
        import torch

        from ..codec.images import to_uint8

        codec = self.codec
        c, g = codec.c, codec.grid
        t0 = time.perf_counter()
        results: Dict[int, Union[Rx, Failed]] = {}
        prepared = {}
        for i, tx in enumerate(txs):
            try:
                z = latent_from_symbols(_received(tx, snr_db, self.config.seed), tx.meta)
            except ValueError as exc:
                results[i] = Failed(str(exc), tx.name)
                continue
            n = self.n_steps(snr_db, tx.meta)
            a_n = float(g.alphas[n])
            rng = np.random.default_rng([self.config.seed, zlib.crc32(tx.name.encode()),
                                         zlib.crc32(snr_tag(snr_db).encode()), 1])
            eps = rng.standard_normal(z.shape).astype(np.float32)
            prepared[i] = (math.sqrt(a_n) * z + math.sqrt(1.0 - a_n) * eps, n)
        # one batched DDIM run per (latent shape, caption); paths of different N align at the clean end
        groups: Dict[tuple, List[int]] = {}
        for i, (z, n) in prepared.items():
            groups.setdefault((z.shape, txs[i].caption), []).append(i)
        calls = {}
        with torch.no_grad():
            for (shape, caption), members in groups.items():
                for s in range(0, len(members), self.config.batch_size):
                    batch = members[s:s + self.config.batch_size]
                    z = torch.from_numpy(np.stack([prepared[i][0] for i in batch])).to(c.device)
                    paths = [[(float(g.timesteps[j]), float(g.alphas[j]), float(g.alphas[j - 1]))
                              for j in range(prepared[i][1], 0, -1)] for i in batch]
                    z0 = codec._ddim(z, paths, caption, self.config.guidance)
                    x = c.vae.decode((z0 / c.vae_scale).to(c.dtype)).sample.float()
                    for b, i in enumerate(batch):
                        results[i] = to_uint8(x[b], txs[i].meta.image_size)
                        calls[i] = prepared[i][1]
        dt = (time.perf_counter() - t0) / max(len(txs), 1)
        out = []
        for i, tx in enumerate(txs):
            r = results[i]
            if isinstance(r, Failed):
                out.append(r)
                continue
            out.append(Rx(name=tx.name, image=r, n_steps=prepared[i][1],
                          rule="variance" if self.t == "auto" else "fixed", seconds=dt, unet_calls=calls[i],
                          fidelity=self.fidelity(tx.caption_source), detail=dict(caption=tx.caption[:80])))
        return out


# --------------------------------------------------------------------------- digital
def digital_unavailable(codec: str = "hevc") -> str:
    """'' when the digital chain can run here, else the one-line reason."""
    try:
        from . import digital  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("gr_gdmcom"):
            return "gr_gdmcom.eval.digital is not present in this checkout"
        return f"{exc.name} is not installed (pip install '.[eval]')"
    try:
        import py3gpp  # noqa: F401
    except ImportError:
        return "py3gpp is not installed (pip install '.[eval]')"
    try:
        from . import source_codecs

        source_codecs.check_available(codec)
    except Exception as exc:  # CodecUnavailableError, unknown name
        return str(exc)
    return ""


class Digital(Method):
    """HEVC-intra + 5G LDPC + QAM at the proposed method's channel-use budget for the same image
    (at a reduced BCR, ``reduce`` param: the proposed method's symbol count for that reduction;
    the chain's rate adaptation picks the source quality that fits)."""

    name = "digital"
    needs_model = False
    reducible = True

    def __init__(self, ctx: Context, **params):
        super().__init__(ctx, **params)
        self.reduce = int(params.get("reduce", ctx.config.reduce))

    def setting_label(self) -> str:
        return f"{self.ctx.digital_codec},{self.ctx.digital_mcs}" + bcr_suffix(self.reduce)

    def transmit_key(self) -> tuple:
        return ("digital", self.ctx.latent_channels(), self.reduce)

    def reduction(self) -> int:
        return self.reduce

    def fidelity(self) -> str:
        return "digital chain (gr_gdmcom.eval.digital)"

    def budget(self, height: int, width: int) -> int:
        """Complex channel uses for an H x W image: the proposed method's at this reduction."""
        ch = self.ctx.latent_channels()
        if self.reduce <= 1:
            return latent_symbols(height, width, ch)
        from ..codec.rate import Reduction

        shape = (ch, math.ceil(height / 8), math.ceil(width / 8))
        return Reduction.make(self.ctx.config.reduce_method, self.reduce, shape).n_values // 2

    def transmit(self, images, names):
        from ..codec.rate import RateError

        out: List[Union[Tx, Failed]] = []
        for img, n in zip(images, names):
            try:
                out.append(Tx(name=n, image=img, n_symbols=self.budget(img.shape[0], img.shape[1])))
            except RateError as exc:  # too small an image for the reduction: as the proposed method fails
                out.append(Failed(f"{n}: {exc}", n))
        return out

    def receive(self, txs, snr_db):
        from . import digital

        def args(tx):
            return (tx.image, tx.n_symbols, float(snr_db), channel_rng(self.ctx.config.seed, tx.name, snr_db),
                    self.ctx.digital_codec, self.ctx.digital_mcs)

        pool = self.ctx.pool() if len(txs) > 1 else None
        t0 = time.perf_counter()
        # CPU-bound: with --jobs, one image per worker process; same results (per-image rng)
        futures = [pool.submit(digital.run_digital, *args(tx)) for tx in txs] if pool is not None else None
        out = []
        for i, tx in enumerate(txs):
            try:
                res = futures[i].result() if futures else digital.run_digital(*args(tx))
            except ValueError as exc:
                out.append(Failed(f"{tx.name}: digital chain: {exc}", tx.name))
                continue
            if futures:
                res.seconds = (time.perf_counter() - t0) / len(txs)  # wall time per image
            img = np.asarray(res.image.convert("RGB"), dtype=np.uint8)
            detail = dict(mcs=getattr(res, "mcs", ""), modulation=res.modulation,
                          code_rate=round(float(res.code_rate), 4), quality=res.quality,
                          payload_bytes=res.payload_bytes, bpp=round(float(res.bits_per_pixel), 4),
                          symbols_used=res.symbols_used)
            if res.reason:
                detail["reason"] = res.reason
            out.append(Rx(name=tx.name, image=img, decode_success=bool(res.decode_success),
                          seconds=float(getattr(res, "seconds", 0.0)), fidelity=res.fidelity_note, detail=detail))
        return out


def _pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(img, dtype=np.uint8))


#: registry: method name -> class
METHODS: Dict[str, type] = {
    "proposed": Proposed,
    "proposed_caption": ProposedCaption,
    "proposed_fixed_point": ProposedFixedPoint,
    "proposed_clean_one": ProposedCleanOne,
    "proposed_calibrated": ProposedCalibrated,
    "random_noise": RandomNoise,
    "received": Received,
    "sd_semcom": SDSemCom,
    "digital": Digital,
}


def parse_methods(spec: Union[str, Sequence[str]]) -> List[str]:
    """``"proposed,digital"`` (or a list of such) -> names; ValueError listing the valid ones."""
    items = [spec] if isinstance(spec, str) else list(spec)
    names = [n.strip() for s in items for n in str(s).split(",") if n.strip()]
    if not names:
        raise ValueError(f"no method given; valid methods: {', '.join(METHODS)}")
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ValueError(f"unknown method {', '.join(map(repr, bad))}; valid methods: {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def parse_grid(specs: Sequence[str]) -> List[Tuple[int, int, int]]:
    """``["10,0,10", "5,5,15"]`` -> [(k, m, N), ...] (an entry given twice counts once, as repeated
    methods and ``--bcr`` factors do); ValueError on malformed entries."""
    out = []
    for s in specs:
        parts = str(s).replace(" ", "").split(",")
        try:
            k, m, n = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"--grid entries are k,m,N (three integers), got {s!r}") from None
        if min(k, m, n) < 0:
            raise ValueError(f"--grid entries must be non-negative, got {s!r}")
        out.append((k, m, n))
    return list(dict.fromkeys(out))


def build_methods(names: Sequence[str], ctx: Context, grid: Optional[Sequence[Tuple[int, int, int]]] = None,
                  reductions: Sequence[int] = ()) -> List[Method]:
    """Instantiate the methods; ``grid`` replaces the proposed method's single setting
    by one setting per (k, m, N), N fixed and no rescaling (the paper's Table II).
    ``reductions`` (factors r, BCR 1/(96 r); default the configuration's ``reduce``): one
    setting per factor for the methods that can reduce; the others (sd_semcom) run at the
    whole latent only, where 1 is among the factors."""
    out: List[Method] = []
    factors = list(dict.fromkeys(int(r) for r in reductions)) or [ctx.config.reduce]
    for r in factors:
        for n in names:
            if r > 1 and not METHODS[n].reducible:
                continue
            extra = dict(reduce=r) if METHODS[n].reducible else {}
            if n == "proposed" and grid:
                for k, m, steps in grid:
                    out.append(Proposed(ctx, k=k, m=m, steps=steps, rescale=False, **extra))
            else:
                out.append(METHODS[n](ctx, **extra))
    return out
