"""Where the model runs: in this process (``local``) or behind a ZMQ endpoint.

The GNU Radio blocks and the CLI talk to a :class:`Backend`; they never know
which one.  :func:`make_backend` turns a block's ``server`` parameter into one.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ..codec import CodecError, Decoded, Encoded, Failed, LatentMeta
from ..config import CodecConfig
from .protocol import REQUEST_SETTINGS


class BackendError(RuntimeError):
    """The backend could not serve a request (server unreachable, retries exhausted, busy...)."""


class Backend:
    """Interface: encode an image, decode received symbols.

    ``encode(image, name)``: ``image`` is a path or encoded image bytes -> :class:`Encoded`.
    ``decode(symbols, meta, snr_db, mask=None)`` -> :class:`Decoded`.
    Both take ``settings``: this request's codec settings where they differ from the
    backend's configuration (encode: ``k``; decode: ``m``, ``steps``, ``rescale``;
    :func:`request_config`).
    Bad input raises :class:`CodecError`/``ImageError`` (``ValueError``); a failure
    of the backend itself raises :class:`BackendError`.
    """

    def encode(self, image, name: Optional[str] = None,
               settings: Optional[dict] = None) -> Encoded:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, symbols: np.ndarray, meta: LatentMeta, snr_db: float, mask: Optional[np.ndarray] = None,
               settings: Optional[dict] = None) -> Decoded:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):  # ``with make_backend(server, config) as backend:``, whichever kind it returns
        return self

    def __exit__(self, *exc) -> None:
        self.close()


MAX_VARIANTS = 32  # codecs kept for distinct request settings (each shares the loaded model)


def request_config(base: CodecConfig, op: str, settings: Optional[dict], k: Optional[int] = None) -> CodecConfig:
    """The codec configuration of one request: ``base`` with the request's ``settings``
    (:data:`REQUEST_SETTINGS` of ``op``); ``base`` itself when there are none.

    An encode's ``m`` and ``steps`` play no part (set to 0 and None), nor a decode's ``k``
    (the transmitter's travels in the metadata: set to 0), so only what the request does
    is checked; a decode's ``m`` and ``steps`` are checked against ``k``, the transmitter's
    (its ``meta.k``) where given.  Raises ValueError, one line, for unknown or impossible
    settings.  Settings that all equal ``base``'s are ``base`` itself (a client carries its
    own with every request, mostly the server's: such requests share codec calls with those
    that carry none).
    """
    if not settings:
        return base
    check_setting_names(op, settings)
    if op == "decode" and k is not None:
        base.replace(**{**settings, "k": int(k)}).validate()  # k + m <= N <= T with the image's k
    if all(getattr(base, name) == value for name, value in settings.items()):
        return base
    fixed = dict(m=0, steps=None) if op == "encode" else dict(k=0)
    return base.replace(**{**fixed, **settings}).validate()


def check_setting_names(op: str, settings: dict) -> None:
    """ValueError for a setting a request of ``op`` cannot carry (:data:`REQUEST_SETTINGS`)."""
    unknown = sorted(set(settings) - set(REQUEST_SETTINGS[op]))
    if unknown:
        raise ValueError(f"{op} requests cannot set {', '.join(unknown)} (only {', '.join(REQUEST_SETTINGS[op])})")


def _config_key(config: CodecConfig) -> tuple:
    return tuple(sorted(dataclasses.asdict(config).items()))


class CodecVariants:
    """Codecs for requests' own settings over one loaded model: ``get(config)`` is ``base``
    for its own configuration, else a codec sharing its components (speed options
    included), prompt embeddings and ``stats`` (a server's counters see every model call);
    the last MAX_VARIANTS are kept."""

    def __init__(self, base):
        self.base = base
        self._made: "collections.OrderedDict" = collections.OrderedDict()

    def config(self, op: str, settings: Optional[dict], k: Optional[int] = None) -> CodecConfig:
        return request_config(self.base.config, op, settings, k)

    def get(self, config: Optional[CodecConfig]):
        if config is None or config == self.base.config:
            return self.base
        key = _config_key(config)
        codec = self._made.pop(key, None)
        if codec is None:
            from ..codec import GenerativeCodec

            codec = GenerativeCodec(config, components=self.base.c)
            codec.stats = self.base.stats
            codec._embeddings = self.base._embeddings
        self._made[key] = codec
        while len(self._made) > MAX_VARIANTS:
            self._made.popitem(last=False)
        return codec


class BackendCodec:
    """A :class:`Backend` (e.g. ``gdmcom serve`` behind ``--server``) seen through the codec's
    batch interface (``encode_many``/``decode_many``, as :func:`gr_gdmcom.sim.simulate` and the
    evaluation sweep use it): one request per item, up to ``concurrency`` of them in flight at
    once so that a server can batch them.

    Bad input fails its item (:class:`~gr_gdmcom.codec.Failed`, the others go on); a failure
    of the backend itself (:class:`BackendError`: no server, retries exhausted) is raised, and
    every later call raises it again at once instead of waiting out the timeouts once more.
    """

    def __init__(self, backend: Backend, config: CodecConfig, concurrency: int = 1,
                 settings: Optional[dict] = None):
        self.backend, self.config = backend, config
        self.concurrency = max(1, int(concurrency))
        #: per operation, the settings every request carries (``{"decode": {"m": 0}}``); {}: none
        self.settings = {op: dict(v) for op, v in (settings or {}).items() if v}
        self._pool: Optional[ThreadPoolExecutor] = None
        self._dead: Optional[BackendError] = None

    def encode_many(self, images, names=None):
        names = list(names) if names is not None else [None] * len(images)
        kw = {"settings": self.settings["encode"]} if "encode" in self.settings else {}
        return self._map(lambda *a: self.backend.encode(*a, **kw), [(img, name) for img, name in zip(images, names)],
                         names)

    def decode_many(self, items):
        kw = {"settings": self.settings["decode"]} if "decode" in self.settings else {}
        items = [tuple(i) for i in items]  # (symbols, meta, snr_db[, mask])
        return self._map(lambda *a: self.backend.decode(*a, **kw), items, [getattr(i[1], "name", None) for i in items])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _map(self, call, arglists, names):
        if self._dead is not None:
            raise BackendError(f"{self._dead} (no request sent since)")
        one = (lambda a, n: self._one(call, a, n))
        if self.concurrency == 1 or len(arglists) <= 1:
            return [one(a, n) for a, n in zip(arglists, names)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="gdmcom-backend")
        return list(self._pool.map(one, arglists, names))

    def _one(self, call, args, name):
        try:
            return call(*args)
        except BackendError as exc:
            self._dead = exc
            raise
        except ValueError as exc:  # CodecError / ImageError: this item fails, the others go on
            return Failed(str(exc), name or "image")


_CODEC_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CODEC_LOCKS_GUARD = threading.Lock()


def codec_lock(codec) -> threading.Lock:
    """The one lock that serialises calls into ``codec`` (a codec is not thread-safe:
    its stats and prompt cache are shared).  Every :class:`LocalBackend` and
    inference server using the same codec object takes this lock."""
    with _CODEC_LOCKS_GUARD:
        lock = _CODEC_LOCKS.get(codec)
        if lock is None:
            lock = _CODEC_LOCKS[codec] = threading.Lock()
        return lock


class LocalBackend(Backend):
    """The model in this process.

    Backends with the same ``(model, device, dtype)`` share one loaded model
    (a transmitter and a receiver block in one flowgraph load it once) and
    one lock, so model calls are serialised.
    """

    def __init__(self, config: CodecConfig, codec=None):
        from ..codec import GenerativeCodec

        if codec is None:
            components, self._lock = _shared_components(config)
            codec = GenerativeCodec(config, components=components)
        else:
            self._lock = threading.Lock()
        self.codec = codec
        self._variants = CodecVariants(codec)

    def _codec(self, op: str, settings: Optional[dict], k: Optional[int] = None):
        try:
            return self._variants.get(self._variants.config(op, settings, k))
        except ValueError as exc:
            raise CodecError(f"settings: {exc}") from None

    def encode(self, image, name=None, settings=None) -> Encoded:
        with self._lock:
            out = self._codec("encode", settings).encode_many([image], [name] if name else None)[0]
        if isinstance(out, Failed):
            raise out.exception()
        return out

    def decode(self, symbols, meta, snr_db, mask=None, settings=None) -> Decoded:
        with self._lock:
            codec = self._codec("decode", settings, getattr(meta, "k", None))
            out = codec.decode_many([(symbols, meta, snr_db, mask)])[0]
        if isinstance(out, Failed):
            raise out.exception()
        return out


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()  # diffusers' lazy imports are not thread-safe either


def _shared_components(config: CodecConfig):
    from ..codec import load_components

    key = (config.model, config.device, config.dtype)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = (load_components(config.model, config.device, config.dtype), threading.Lock())
        return _SHARED[key]


def make_backend(server: str, config: CodecConfig) -> Backend:
    """``local`` -> the model in this process (loaded once per model/device/dtype);
    anything else is a ZMQ endpoint (or comma-separated endpoints) of ``gdmcom serve``,
    optionally followed by client settings: ``tcp://gpu:5555?timeout_ms=5000&retries=2``,
    and for a CURVE server its public key (``server_key=`` 64 hex digits, or
    ``server_key_file=``) and this client's ``client_key_file=`` (``docs/server.md``)."""
    if server in ("", "local"):
        return LocalBackend(config)
    return remote_backend(server, config)


def remote_backend(server: str, config: Optional[CodecConfig] = None, **defaults) -> Backend:
    """A :class:`~.client.RemoteBackend` from a ``server`` string (endpoints ``?`` options);
    ``defaults`` are RemoteBackend arguments that the string's options override."""
    from collections import Counter
    from urllib.parse import parse_qsl

    from .client import RemoteBackend  # noqa: WPS433 - optional layer
    from .security import client_from_options

    endpoints, _, query = server.partition("?")
    allowed = {"timeout_ms": int, "retries": int, "image_format": str}
    keys = ("server_key", "server_key_file", "client_key_file")
    try:  # strict: a field without '=' was dropped, and with it a Z85 key cut at its '&' (no CURVE at all)
        fields = "&".join(f for f in query.split("&") if f)  # (a stray '&' is harmless)
        pairs = parse_qsl(fields, keep_blank_values=True, strict_parsing=True) if fields else []
    except ValueError:
        raise ValueError(f"server options must be name=value pairs joined by '&', got {query!r} (a Z85 key "
                         f"holds '&', '+' and '=': give server_key as the 64 hex digits gdmcom keys prints)") from None
    opts = dict(pairs)
    twice = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if twice:
        raise ValueError(f"server option(s) {', '.join(twice)} given more than once")
    unknown = set(opts) - set(allowed) - set(keys)
    if unknown:
        raise ValueError(f"unknown server option(s) {', '.join(sorted(unknown))}; use "
                         f"{', '.join([*allowed, *keys])}")
    curve = client_from_options(**{k: opts.pop(k) for k in keys if k in opts})
    kw = dict(defaults)
    for k, v in opts.items():
        try:
            kw[k] = allowed[k](v)
        except ValueError:
            raise ValueError(f"server option {k}={v!r} must be an integer") from None
    return RemoteBackend(endpoints, config, curve=curve, **kw)
