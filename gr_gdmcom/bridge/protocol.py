"""Wire protocol v1 between the radio host and the inference server (``docs/protocol.md``).

A message is a ZMQ multipart message.  After the routing envelope (for a
REQ client nothing, for a DEALER client one empty delimiter frame), frame 0
is a UTF-8 JSON object, the *header*; the following frames are binary
payloads whose byte lengths the header lists in ``sizes``::

    request  [header {"v": 1, "op": "decode", "id": "...", "sizes": [98304], ...}, symbols]
    reply    [header {"v": 1, "op": "decode", "id": "...", "ok": true, "sizes": [...], ...}, image]
    error    [header {"v": 1, "op": ..., "id": ..., "ok": false, "code": "busy", "message": "..."}]

Payload dtypes: symbols complex64 little-endian (``<c8``: float32 real, float32
imaginary), masks uint8 (one byte per symbol, 0 = erased), images PNG bytes
or raw uint8 RGB (H, W, 3) row-major.

This module has the builders and parsers of both sides and nothing else:
no sockets, no threads.  Every check that the server makes before a request
reaches the codec lives in :func:`parse_request`; the header's field types and
ranges are the strict pydantic models below (:class:`Common`,
:class:`EncodeFields`, :class:`DecodeFields`, :class:`MetaFields`): a JSON
``true`` is never an integer, ``5.9`` never becomes 5, ``"0.5"`` or ``null``
never a number or a string.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from dataclasses import dataclass, field, fields as dc_fields
from typing import Annotated, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..codec import Decoded, Encoded, LatentMeta
from ..codec.core import CodecError, symbol_problem
from ..codec.images import bomb_message, open_image
from ..config import ALPHA_RANGE, FORWARD_MODES, GUIDANCE_RANGE, MEAN_MAX, REDUCE_METHODS, SNR_DB_RANGE

VERSION = 1
OPS = ("encode", "decode", "status")
IMAGE_FORMATS = ("png", "raw")
SYMBOL_DTYPE = np.dtype("<c8")  # complex64, little-endian: float32 re, float32 im
MASK_DTYPE = np.dtype("u1")  # one byte per symbol, 0 = erased
MAX_ID_CHARS = 128
DEADLINE_MAX_MS = 86_400_000.0  # a request's deadline_ms: at most a day
MAX_NAME_CHARS = 256
MAX_PROMPT_CHARS = 1024
MAX_PAYLOADS = 2  # decode: symbols and mask
#: Valid ranges of the numeric header fields (docs/protocol.md lists them; alpha, guidance, means and
#: snr_db: config.py's, the same wherever a latent's metadata arrives).
ALPHA_MIN, ALPHA_MAX = ALPHA_RANGE
T_MAX = 1000  # DDPM's training grid
LATENT_DIM_MAX = 1 << 16  # each of C, h, w (max_pixels bounds h * w further)
REDUCE_MAX = 1024  # reduce factor (codec/rate.py)
IMAGE_DIM_MAX = 1 << 19  # each of H, W (they must also fit the latent: <= 8h, 8w)
LABEL_CHARS = 64  # longest item name echoed at the start of an error message

# Error codes (``docs/protocol.md`` has the table).
BAD_JSON = "bad_json"
BAD_VERSION = "bad_version"
BAD_OP = "bad_op"
BAD_REQUEST = "bad_request"
SIZE_MISMATCH = "size_mismatch"
NON_FINITE = "non_finite"
TOO_LARGE = "too_large"
MISSING_META = "missing_meta"
BAD_META = "bad_meta"
BAD_IMAGE = "bad_image"
REJECTED = "rejected"
BUSY = "busy"
UNAVAILABLE = "unavailable"
EXPIRED = "expired"
INTERNAL = "internal"

ERROR_CODES: Dict[str, str] = {
    BAD_JSON: "frame 0 is missing, not UTF-8, not JSON or not a JSON object",
    BAD_VERSION: "header field v is missing or not 1",
    BAD_OP: "header field op is not one of encode, decode, status",
    BAD_REQUEST: "a field is missing or has the wrong type, wrong number of frames, id reused for another request",
    SIZE_MISMATCH: "sizes disagree with the frames, or symbol / mask counts disagree with the metadata",
    NON_FINITE: "NaN or infinity in the (not erased) symbols, snr_db, alpha, guidance or means",
    TOO_LARGE: "message, header or image larger than the server accepts",
    MISSING_META: "decode request without meta",
    BAD_META: "meta present but unusable (missing field, wrong T, k + m > T, bad latent shape ...)",
    BAD_IMAGE: "encode payload is not a readable image",
    REJECTED: "the codec refused an input that passed the protocol checks",
    BUSY: "the server's queue is full; retry after retry_after_ms",
    UNAVAILABLE: "the server is shutting down; retry (another server, or this one after restart)",
    EXPIRED: "the request waited in the queue past its deadline_ms (its client stopped waiting): not run",
    INTERNAL: "unexpected server failure; the message has the exception",
}
RETRYABLE = (BUSY, UNAVAILABLE)


class ProtocolError(Exception):
    """A request that breaks the protocol; becomes an error reply with ``code``.

    ``rid`` and ``op`` are the request's id and op when they could be read
    (echoed in the reply), else None.
    """

    def __init__(self, code: str, message: str, rid: Optional[str] = None, op: Optional[str] = None):
        super().__init__(message)
        self.code, self.message, self.rid, self.op = code, message, rid, op


@dataclass
class Limits:
    """What a server accepts; built from its codec with :meth:`for_codec`.

    Attributes:
        max_request_bytes: all frames of one request together (bytes).
        max_header_bytes: frame 0 (bytes).
        max_pixels: largest image (encode) or latent-implied image (decode), pixels.
        T: the server's DDIM grid size; decode metadata must carry the same.
        m: the server's receiver inversion steps (``k + m <= T`` is checked).
        latent_channels: C of the model's latent (4 for SD 1.5).
        max_prompt_chars: longest prompt accepted in decode metadata.
    """

    max_request_bytes: int = 64 << 20
    max_header_bytes: int = 64 << 10
    max_pixels: int = 4096 * 4096
    T: int = 50
    m: int = 5
    latent_channels: int = 4
    max_prompt_chars: int = MAX_PROMPT_CHARS

    @classmethod
    def for_codec(cls, codec, **overrides) -> "Limits":
        cfg = codec.config
        channels = int(getattr(codec.c.unet.config, "in_channels", 4))
        return cls(max_pixels=cfg.max_pixels, T=cfg.T, m=cfg.m, latent_channels=channels, **overrides)


@dataclass
class Request:
    """A validated request.

    Attributes:
        op, id: operation and request id.
        image: encode only, the image file bytes.
        name: encode only, a label for logs and file names.
        symbols: decode only, complex64 (n,) (read-only view of the frame).
        meta: decode only, :class:`LatentMeta`.
        snr_db: decode only, Es/N0 estimate in dB (finite).
        mask: decode only, bool (n,) or None; False = erased symbol.
        image_format: decode only, ``png`` or ``raw`` (reply image encoding).
        settings: codec settings of this request that differ from the server's own
            (encode: ``k``; decode: ``m``, ``steps``, ``rescale``); empty: the server's.
        deadline_ms: how long, from its arrival, the client waits for the reply (None: no
            limit); a request still queued after that is not run (``expired``).
    """

    op: str
    id: str
    image: Optional[bytes] = None
    name: str = "image"
    symbols: Optional[np.ndarray] = None
    meta: Optional[LatentMeta] = None
    snr_db: Optional[float] = None
    mask: Optional[np.ndarray] = None
    image_format: str = "png"
    settings: Dict[str, object] = field(default_factory=dict)
    deadline_ms: Optional[float] = None


# ---------------------------------------------------------------------- header schema
# Strict models: no coercion at all (bool is not int, 5.9 is not 5, "0.5" is not a
# number, null is not a string); integers are accepted where a number is.
# ``allow_inf_nan`` lets NaN/Infinity reach the range check, whose error
# :func:`_schema_error` turns into ``non_finite`` rather than ``bad_request``.
_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=True, frozen=True)
_Number = Annotated[float, Field(strict=True)]


class Common(BaseModel):
    """Fields of every request: ``v`` (exactly the integer 1), ``op``, ``id``, ``sizes``."""

    model_config = _STRICT
    v: StrictInt = Field(ge=VERSION, le=VERSION)
    op: Literal["encode", "decode", "status"]
    id: StrictStr = Field(min_length=1, max_length=MAX_ID_CHARS)
    sizes: List[Annotated[StrictInt, Field(ge=0)]] = Field(default_factory=list, max_length=MAX_PAYLOADS)
    deadline_ms: Optional[_Number] = Field(None, gt=0, le=DEADLINE_MAX_MS)


#: unknown settings are refused, never ignored (a client asking for one must not get another)
_SETTINGS = ConfigDict(strict=True, extra="forbid", frozen=True)


class EncodeSettings(BaseModel):
    """``settings`` of an encode request: the transmitter's inversion steps ``k``."""

    model_config = _SETTINGS
    k: StrictInt = Field(None, ge=0, le=T_MAX)


class DecodeSettings(BaseModel):
    """``settings`` of a decode request: the receiver's ``m``, a fixed N ``steps`` (null: the
    server's rule picks N), ``rescale``."""

    model_config = _SETTINGS
    m: StrictInt = Field(None, ge=0, le=T_MAX)
    steps: Optional[StrictInt] = Field(None, ge=1, le=T_MAX)
    rescale: bool = Field(None)


#: Codec settings a request may set for itself, per operation (``status`` lists them).
REQUEST_SETTINGS = {"encode": tuple(EncodeSettings.model_fields), "decode": tuple(DecodeSettings.model_fields)}


class EncodeFields(BaseModel):
    model_config = _STRICT
    name: StrictStr = Field("image", min_length=1, max_length=MAX_NAME_CHARS)
    settings: Optional[EncodeSettings] = None


class MetaFields(BaseModel):
    """``meta`` of a decode request (:class:`LatentMeta` on the wire)."""

    model_config = _STRICT
    alpha: _Number = Field(ge=ALPHA_MIN, le=ALPHA_MAX)
    latent_shape: List[Annotated[StrictInt, Field(ge=1, le=LATENT_DIM_MAX)]] = Field(min_length=3, max_length=3)
    image_size: List[Annotated[StrictInt, Field(ge=1, le=IMAGE_DIM_MAX)]] = Field(min_length=2, max_length=2)
    k: StrictInt = Field(ge=0, le=T_MAX)
    T: StrictInt = Field(ge=1, le=T_MAX)
    guidance: _Number = Field(ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])
    prompt: StrictStr = Field(max_length=MAX_PROMPT_CHARS)
    forward: Literal[FORWARD_MODES] = "ddim"  # type: ignore[valid-type]
    name: StrictStr = Field("image", min_length=1, max_length=MAX_NAME_CHARS)
    #: codec/rate.py: removed channel means, reduction factor and method (defaults: the paper's signal)
    means: List[Annotated[_Number, Field(ge=-MEAN_MAX, le=MEAN_MAX)]] = Field(default_factory=list,
                                                                          max_length=LATENT_DIM_MAX)
    reduce: StrictInt = Field(1, ge=1, le=REDUCE_MAX)
    reduce_method: Literal[("full",) + REDUCE_METHODS] = "full"  # type: ignore[valid-type]
    #: the encoding model's fingerprint (0: not given); a foreign one is the record's model_mismatch
    model_hash: StrictInt = Field(0, ge=0, le=0xFFFF)

    def to_meta(self) -> LatentMeta:
        return LatentMeta(alpha=float(self.alpha), latent_shape=tuple(self.latent_shape),
                          image_size=tuple(self.image_size), k=self.k, T=self.T, guidance=float(self.guidance),
                          prompt=self.prompt, forward=self.forward, name=self.name,
                          means=tuple(float(v) for v in self.means), reduce=self.reduce,
                          reduce_method=self.reduce_method, model_hash=self.model_hash)


class DecodeFields(BaseModel):
    model_config = _STRICT
    meta: MetaFields
    snr_db: _Number = Field(ge=SNR_DB_RANGE[0], le=SNR_DB_RANGE[1])
    format: Literal[IMAGE_FORMATS] = "png"  # type: ignore[valid-type]
    settings: Optional[DecodeSettings] = None


def _given(settings: Optional[BaseModel]) -> dict:
    """The settings a request named (a decode's ``"steps": null`` included: back to the rule)."""
    return {k: getattr(settings, k) for k in settings.model_fields_set} if settings is not None else {}


#: Which error code a schema failure of a top-level field gives (first in this order wins).
_FIELD_CODES = {"v": BAD_VERSION, "op": BAD_OP, "id": BAD_REQUEST, "sizes": BAD_REQUEST, "deadline_ms": BAD_REQUEST,
                "name": BAD_REQUEST, "meta": BAD_META, "snr_db": BAD_REQUEST, "format": BAD_REQUEST,
                "settings": BAD_REQUEST}


def _schema_error(exc: ValidationError, prefix: str = "") -> Tuple[str, str]:
    """The first failing field of a :class:`ValidationError` -> (code, one-line message)."""
    errors = sorted(exc.errors(include_url=False), key=lambda e: list(_FIELD_CODES).index(str(e["loc"][0]))
                    if e["loc"] and e["loc"][0] in _FIELD_CODES else len(_FIELD_CODES))
    err = errors[0]
    where = ".".join(str(x) for x in err["loc"])
    value = err.get("input")
    code = _FIELD_CODES.get(str(err["loc"][0]) if err["loc"] else "", BAD_REQUEST)
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE, f"{prefix}'{where}' must be finite, got {value}"
    if code == BAD_VERSION:
        return code, f"this server speaks protocol version {VERSION}: header field 'v' must be {VERSION}, got " + \
            ("nothing" if err["type"] == "missing" else json.dumps(value, default=repr)[:80])
    if err["type"] == "missing":
        return code, f"{prefix}'{where}' is missing"
    if err["type"] == "model_type":
        return code, f"{prefix}'{where}' must be a JSON object, got {type(value).__name__}"
    return code, f"{prefix}'{where}': {err['msg']}, got {json.dumps(value, default=repr)[:80]}"


def validate_fields(model, header: dict, fail: Callable[[str, str], "ProtocolError"], prefix: str = ""):
    """``model.model_validate(header)`` or the :class:`ProtocolError` its first failure maps to."""
    try:
        return model.model_validate(header)
    except ValidationError as exc:
        raise fail(*_schema_error(exc, prefix)) from None


# ---------------------------------------------------------------------- JSON
def _clean(obj):
    """Python/numpy values -> strict JSON values (non-finite floats -> None)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return str(obj)


def dumps_header(header: dict) -> bytes:
    """Header dict -> frame 0 bytes (strict JSON, UTF-8, no NaN/Infinity)."""
    return json.dumps(_clean(header), allow_nan=False, separators=(",", ":")).encode("utf-8")


def loads_header(frame: bytes) -> dict:
    """Frame 0 -> header dict; :class:`ProtocolError` ``bad_json`` if it is not a JSON object.
    NaN/Infinity literals are read (so that such numbers get ``non_finite``, not ``bad_json``)."""
    try:
        header = json.loads(bytes(frame).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(BAD_JSON, f"frame 0 is not a UTF-8 JSON header: {exc}") from None
    except RecursionError:
        raise ProtocolError(BAD_JSON, "frame 0 is nested too deeply to be a protocol header") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_JSON, f"frame 0 must be a JSON object, got {type(header).__name__}")
    return header


def fingerprint(body: Sequence[bytes]) -> int:
    """CRC-32 over all frames of a request body: a retry must repeat the same bytes."""
    crc = 0
    for frame in body:
        crc = zlib.crc32(frame, crc)
    return crc


# ---------------------------------------------------------------------- envelopes
def split_envelope(frames: Sequence[bytes]) -> Tuple[List[bytes], List[bytes]]:
    """ROUTER-received frames -> (envelope, body).

    The envelope is every frame up to and including the first empty frame
    (routing identities, then the delimiter, as REQ sends and brokers keep);
    a DEALER that sent no delimiter gets an envelope of just its identity.
    """
    frames = list(frames)
    for i in range(1, len(frames)):
        if len(frames[i]) == 0:
            return frames[:i + 1], frames[i + 1:]
    return frames[:1], frames[1:]


# ---------------------------------------------------------------------- images
def _contiguous_hwc(image: np.ndarray) -> np.ndarray:
    """C-contiguous uint8 (H, W, C).  The codec's images are HWC views of CHW tensors;
    copying them channel by channel is about 5x faster than numpy's strided 3-D copy
    (512 x 768: 1.4 ms instead of 7 ms)."""
    img = np.asarray(image)
    if img.dtype == np.uint8 and img.flags.c_contiguous:
        return img
    out = np.empty(img.shape, dtype=np.uint8)
    for c in range(img.shape[2]):
        out[:, :, c] = img[:, :, c]
    return out


def image_to_bytes(image: np.ndarray, fmt: str = "png", png_level: int = 1) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (zlib level ``png_level``) or raw row-major RGB bytes."""
    img = _contiguous_hwc(image)
    if fmt == "raw":
        return img.tobytes()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=int(png_level))
    return buf.getvalue()


def image_from_bytes(data: bytes, fmt: str, height: int, width: int) -> np.ndarray:
    """PNG or raw bytes -> writable uint8 (height, width, 3); ``ValueError`` if they disagree."""
    if fmt == "raw":
        if len(data) != height * width * 3:
            raise ValueError(f"raw image of {len(data)} bytes is not {height}x{width}x3")
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # a writable copy, as the codec returns
    if img.shape[:2] != (height, width):
        raise ValueError(f"PNG image is {img.shape[1]}x{img.shape[0]}, header says {width}x{height}")
    return img


# ---------------------------------------------------------------------- requests (client side)
def make_message(header: dict, payloads: Sequence[bytes] = ()) -> List[bytes]:
    """[header, *payloads] with ``v`` and ``sizes`` filled in."""
    payloads = [bytes(p) for p in payloads]
    return [dumps_header({"v": VERSION, **header, "sizes": [len(p) for p in payloads]}), *payloads]


def encode_request(rid: str, image: bytes, name: str, settings: Optional[dict] = None,
                   deadline_ms: Optional[float] = None) -> List[bytes]:
    """Encode request: one payload, the image file bytes (PNG, JPEG ... anything PIL reads);
    ``settings``: e.g. ``{"k": 10}`` (REQUEST_SETTINGS), None: the server's; ``deadline_ms``:
    how long the client waits for the reply (None: not said)."""
    header = {"op": "encode", "id": rid, "name": name}
    if settings:
        header["settings"] = dict(settings)
    if deadline_ms is not None:
        header["deadline_ms"] = float(deadline_ms)
    return make_message(header, [image])


def decode_request(rid: str, symbols: np.ndarray, meta: LatentMeta, snr_db: float,
                   mask: Optional[np.ndarray] = None, image_format: str = "png",
                   settings: Optional[dict] = None, deadline_ms: Optional[float] = None) -> List[bytes]:
    """Decode request: symbols complex (n,) as ``<c8``; optional mask bool (n,) as uint8;
    ``settings``: e.g. ``{"m": 0, "steps": 15, "rescale": false}`` (REQUEST_SETTINGS);
    ``deadline_ms`` as :func:`encode_request`'s."""
    payloads = [np.ascontiguousarray(symbols, dtype=SYMBOL_DTYPE).tobytes()]
    if mask is not None:
        payloads.append(np.ascontiguousarray(mask, dtype=bool).astype(MASK_DTYPE).tobytes())
    header = {"op": "decode", "id": rid, "meta": meta.to_dict(), "snr_db": float(snr_db), "format": image_format}
    if settings:
        header["settings"] = dict(settings)
    if deadline_ms is not None:
        header["deadline_ms"] = float(deadline_ms)
    return make_message(header, payloads)


def status_request(rid: str) -> List[bytes]:
    return make_message({"op": "status", "id": rid})


# ---------------------------------------------------------------------- requests (server side)
def parse_request(body: Sequence[bytes], limits: Limits) -> Request:
    """Validate a request body (frames after the envelope) completely.

    Raises :class:`ProtocolError` with the error code; what comes back is safe
    to hand to the codec (finite values in range, consistent sizes, known shapes).
    """
    if not body or len(body[0]) == 0:
        raise ProtocolError(BAD_JSON, "empty message: frame 0 must be the JSON header")
    if len(body[0]) > limits.max_header_bytes:
        raise ProtocolError(TOO_LARGE, f"header of {len(body[0])} bytes exceeds the limit of "
                                       f"{limits.max_header_bytes} bytes")
    header = loads_header(body[0])
    rid = header.get("id") if isinstance(header.get("id"), str) and 0 < len(header["id"]) <= MAX_ID_CHARS else None
    op = header.get("op") if header.get("op") in OPS else None

    def fail(code: str, message: str) -> ProtocolError:
        return ProtocolError(code, message, rid, op)

    common = validate_fields(Common, header, fail)
    total = sum(len(f) for f in body)
    if total > limits.max_request_bytes:
        raise fail(TOO_LARGE, f"request of {total} bytes exceeds the limit of {limits.max_request_bytes} bytes")
    payloads = list(body[1:])
    actual = [len(p) for p in payloads]
    if common.sizes != actual:
        raise fail(SIZE_MISMATCH, f"header says payload sizes {common.sizes} but the frames have {actual} bytes")
    req = _PARSERS[common.op](header, payloads, limits, common.id, fail)
    req.deadline_ms = common.deadline_ms
    return req


def _parse_status(header, payloads, limits, rid, fail) -> Request:
    if payloads:
        raise fail(BAD_REQUEST, f"status takes no payload frames, got {len(payloads)}")
    return Request(op="status", id=rid)


def _parse_encode(header, payloads, limits, rid, fail) -> Request:
    if len(payloads) != 1:
        raise fail(BAD_REQUEST, f"encode takes exactly one payload frame (the image file), got {len(payloads)}")
    raw_name = header.get("name")
    fields = validate_fields(EncodeFields, header, fail, prefix=f"{_label(raw_name)}: " if raw_name else "")
    name = _label(fields.name)
    data = payloads[0]
    if not data:
        raise fail(BAD_IMAGE, f"the image{'' if name == 'image' else ' ' + name} is empty (0 bytes)")
    try:  # reads the file header only: format and size, no pixels
        with open_image(data) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        raise fail(TOO_LARGE, bomb_message(name, exc, limits.max_pixels)) from None
    except UnidentifiedImageError:  # Pillow's message names its BytesIO object
        raise fail(BAD_IMAGE, f"cannot read image {name}: not an image format Pillow can read") from None
    except Exception as exc:  # PIL raises many kinds on garbage
        raise fail(BAD_IMAGE, f"cannot read image {name}: {exc}") from None
    if w * h == 0:
        raise fail(BAD_IMAGE, f"image {name} has zero size ({w}x{h})")
    if w * h > limits.max_pixels:
        raise fail(TOO_LARGE, f"image {name} has {w}x{h} = {w * h} pixels, more than the limit "
                              f"max_pixels={limits.max_pixels}")
    return Request(op="encode", id=rid, image=bytes(data), name=name, settings=_given(fields.settings))


def _parse_decode(header, payloads, limits, rid, fail) -> Request:
    if len(payloads) not in (1, 2):
        raise fail(BAD_REQUEST, f"decode takes one or two payload frames (symbols[, mask]), got {len(payloads)}")
    # 1. metadata, then the scalars (schema: types and ranges)
    raw_meta = header.get("meta")
    if raw_meta is None:
        raise fail(MISSING_META, "decode needs 'meta' (the transmitter's latent metadata: alpha, "
                                 "latent_shape, image_size, k, T, guidance, prompt)")
    name = _label(raw_meta.get("name") if isinstance(raw_meta, dict) else None)
    fields = validate_fields(DecodeFields, header, fail, prefix=f"{name}: ")
    meta = fields.meta.to_meta()
    settings = _given(fields.settings)
    m = settings.get("m")
    if m is not None and meta.T == limits.T and meta.k + m > limits.T:  # the request's own m: its settings
        raise fail(REJECTED, f"settings: k + m must not exceed T: k={meta.k} (the transmitter's), m={m}, "
                             f"T={limits.T}")
    _check_meta(meta, limits, fail, limits.m if m is None else m)
    # 2. payloads
    frame = payloads[0]
    if len(frame) % SYMBOL_DTYPE.itemsize:
        raise fail(SIZE_MISMATCH, f"{name}: symbol frame of {len(frame)} bytes is not a whole number of "
                                  f"{SYMBOL_DTYPE.itemsize}-byte complex64 values")
    n = len(frame) // SYMBOL_DTYPE.itemsize
    if n != meta.n_symbols:
        raise fail(SIZE_MISMATCH, f"{name}: metadata says {meta.symbols_text()} but {n} symbols were received")
    symbols = np.frombuffer(frame, dtype=SYMBOL_DTYPE)
    mask = None
    if len(payloads) == 2:
        if len(payloads[1]) != n:
            raise fail(SIZE_MISMATCH, f"{name}: mask has {len(payloads[1])} bytes but there are {n} symbols")
        mask = np.frombuffer(payloads[1], dtype=MASK_DTYPE) != 0
    # erased symbols are replaced by 0 (whatever a receiver wrote there: NaN, say); the
    # others must be finite and of a size float32 arithmetic can take
    problem = symbol_problem(symbols, mask)
    if problem is not None:
        raise fail(NON_FINITE if problem[0] == "non_finite" else BAD_REQUEST, f"{name}: {problem[1]}")
    if mask is not None and symbol_problem(symbols) is not None:  # some erased ones
        symbols = np.where(mask, symbols, 0).astype(SYMBOL_DTYPE)
    return Request(op="decode", id=rid, symbols=symbols.astype(np.complex64, copy=False), meta=meta,
                   snr_db=float(fields.snr_db), mask=mask, image_format=fields.format, name=name,
                   settings=settings)


def _label(name) -> str:
    """An item's name as error messages start with it: ``image`` when there is none, long
    ones cut to LABEL_CHARS characters."""
    if not isinstance(name, str) or not name:
        return "image"
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 3] + "..."


def _check_meta(meta: LatentMeta, limits: Limits, fail: Callable[[str, str], ProtocolError], m: int) -> None:
    """Checks of decode metadata against this server (the schema has checked types and
    ranges); ``m``: the receiver's inversion steps (the request's own, else the server's)."""
    name = _label(meta.name)
    shape, size = tuple(meta.latent_shape), tuple(meta.image_size)
    c, h, w = shape
    if c != limits.latent_channels:
        raise fail(BAD_META, f"{name}: latent has {c} channels but this model's latent has {limits.latent_channels}")
    if 64 * h * w > limits.max_pixels:
        raise fail(TOO_LARGE, f"{name}: latent {list(shape)} means a {8 * w}x{8 * h} image, more than "
                              f"max_pixels={limits.max_pixels}")
    if (c * h * w) % 2:
        raise fail(BAD_META, f"{name}: latent shape {list(shape)} has an odd number of values")
    if not (size[0] <= 8 * h and size[1] <= 8 * w):
        raise fail(BAD_META, f"{name}: image_size {list(size)} does not fit latent {list(shape)} (at most 8h x 8w)")
    if meta.T != limits.T:
        raise fail(BAD_META, f"{name}: transmitter used T={meta.T} but this server is set to T={limits.T}")
    if not meta.k <= limits.T - m:
        raise fail(BAD_META, f"{name}: k + m must not exceed T: k={meta.k}, m={m}, T={limits.T}")
    try:
        meta.reduction, meta.mean_latent()  # noqa: B018  (raises CodecError for a bad reduction or means)
    except CodecError as exc:
        raise fail(BAD_META, str(exc)) from None
    if len(meta.prompt) > limits.max_prompt_chars:
        raise fail(BAD_META, f"{name}: prompt of {len(meta.prompt)} characters is longer than "
                             f"{limits.max_prompt_chars}")


_PARSERS = {"status": _parse_status, "encode": _parse_encode, "decode": _parse_decode}


# ---------------------------------------------------------------------- replies (server side)
def reply(rid: Optional[str], op: Optional[str], payloads: Sequence[bytes] = (), **fields) -> List[bytes]:
    """A success reply: ``{"v", "id", "op", "ok": true, **fields, "sizes"}`` + payloads."""
    return make_message({"id": rid, "op": op, "ok": True, **fields}, payloads)


def error_reply(rid: Optional[str], op: Optional[str], code: str, message: str, **fields) -> List[bytes]:
    """An error reply: ``{"v", "id", "op", "ok": false, "code", "message", "retry", **fields}``."""
    return make_message({"id": rid, "op": op, "ok": False, "code": code, "message": message,
                         "retry": code in RETRYABLE, **fields})


def encoded_reply(rid: str, enc: Encoded, **fields) -> List[bytes]:
    """Encode result: header ``meta``, ``record``, ``n_symbols`` (+ ``fields``, e.g. the
    server's ``config_id``); payload symbols ``<c8`` (n,)."""
    sym = np.ascontiguousarray(enc.symbols, dtype=SYMBOL_DTYPE)
    return reply(rid, "encode", [sym.tobytes()], meta=enc.meta.to_dict(), record=enc.record, n_symbols=int(sym.size),
                 **fields)


def decoded_reply(rid: str, dec: Decoded, image_format: str = "png", png_level: int = 1, **fields) -> List[bytes]:
    """Decode result: header ``record`` (``n_steps`` ...) and ``image`` {format, height, width,
    channels} (+ ``fields``); payload the image (PNG, or raw uint8 RGB (H, W, 3) row-major)."""
    h, w = dec.image.shape[:2]
    data = image_to_bytes(dec.image, image_format, png_level)
    return reply(rid, "decode", [data], record=dec.record,
                 image={"format": image_format, "height": int(h), "width": int(w), "channels": 3}, **fields)


def config_id(status: dict) -> str:
    """A server's settings as 12 hex digits: its model (name and weights fingerprint), codec
    settings and request limit (fields of its ``status``).  Every encode/decode reply carries
    it: a client that sees it change (a server restarted with other settings) reads them again."""
    ident = {key: status.get(key) for key in ("model", "model_hash", "config", "max_request_bytes")}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------- replies (client side)
def parse_reply(frames: Sequence[bytes]) -> Tuple[dict, List[bytes]]:
    """Reply frames (envelope removed; bytes or memoryviews) -> (header, payloads);
    :class:`ProtocolError` if malformed."""
    if not frames:
        raise ProtocolError(BAD_JSON, "empty reply")
    header = loads_header(frames[0])
    if header.get("v") != VERSION:
        raise ProtocolError(BAD_VERSION, f"reply has protocol version {header.get('v')!r}, expected {VERSION}")
    payloads = list(frames[1:])
    if header.get("sizes", []) != [len(p) for p in payloads]:
        raise ProtocolError(SIZE_MISMATCH, f"reply says sizes {header.get('sizes')} but frames have "
                                           f"{[len(p) for p in payloads]} bytes")
    return header, payloads


def encoded_from_reply(header: dict, payloads: Sequence[bytes]) -> Encoded:
    """Encode reply -> :class:`Encoded` (symbols complex64 (n,), native byte order)."""
    symbols = np.frombuffer(payloads[0], dtype=SYMBOL_DTYPE).astype(np.complex64)
    return Encoded(symbols, LatentMeta.from_dict(header["meta"]), dict(header.get("record") or {}))


def decoded_from_reply(header: dict, payloads: Sequence[bytes]) -> Decoded:
    """Decode reply -> :class:`Decoded` (image uint8 (H, W, 3))."""
    im = header["image"]
    image = image_from_bytes(payloads[0], im["format"], int(im["height"]), int(im["width"]))
    return Decoded(image, dict(header.get("record") or {}))


def meta_fields() -> List[str]:
    """Names of the :class:`LatentMeta` fields carried in ``meta`` (for docs and tests)."""
    return [f.name for f in dc_fields(LatentMeta)]
