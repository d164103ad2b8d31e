"""Where the model runs: in this process (``local``) or behind a ZMQ endpoint.

The GNU Radio blocks and the CLI talk to a :class:`Backend`; they never know
which one.  :func:`make_backend` turns a block's ``server`` parameter into one.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ..codec import CodecError, Decoded, Encoded, Failed, LatentMeta
from ..config import CodecConfig


class BackendError(RuntimeError):
    """The backend could not serve a request (server unreachable, retries exhausted, busy...)."""


class Backend:
    """Interface: encode an image, decode received symbols.

    ``encode(image, name)``: ``image`` is a path or encoded image bytes -> :class:`Encoded`.
    ``decode(symbols, meta, snr_db, mask=None)`` -> :class:`Decoded`.
    Bad input raises :class:`CodecError`/``ImageError`` (``ValueError``); a failure
    of the backend itself raises :class:`BackendError`.
    """

    def encode(self, image, name: Optional[str] = None) -> Encoded:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, symbols: np.ndarray, meta: LatentMeta, snr_db: float,
               mask: Optional[np.ndarray] = None) -> Decoded:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class BackendCodec:
    """A :class:`Backend` (e.g. ``gdmcom serve`` behind ``--server``) seen through the codec's
    batch interface (``encode_many``/``decode_many``, as :func:`gr_gdmcom.sim.simulate` and the
    evaluation sweep use it): one request per item, up to ``concurrency`` of them in flight at
    once so that a server can batch them.

    Bad input fails its item (:class:`~gr_gdmcom.codec.Failed`, the others go on); a failure
    of the backend itself (:class:`BackendError`: no server, retries exhausted) is raised, and
    every later call raises it again at once instead of waiting out the timeouts once more.
    """

    def __init__(self, backend: Backend, config: CodecConfig, concurrency: int = 1):
        self.backend, self.config = backend, config
        self.concurrency = max(1, int(concurrency))
        self._pool: Optional[ThreadPoolExecutor] = None
        self._dead: Optional[BackendError] = None

    def encode_many(self, images, names=None):
        names = list(names) if names is not None else [None] * len(images)
        return self._map(self.backend.encode, [(img, name) for img, name in zip(images, names)], names)

    def decode_many(self, items):
        return self._map(self.backend.decode, [tuple(i) for i in items],
                         [getattr(i[1], "name", None) for i in items])

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

    def encode(self, image, name=None) -> Encoded:
        with self._lock:
            out = self.codec.encode_many([image], [name] if name else None)[0]
        if isinstance(out, Failed):
            raise CodecError(out.error)
        return out

    def decode(self, symbols, meta, snr_db, mask=None) -> Decoded:
        with self._lock:
            out = self.codec.decode_many([(symbols, meta, snr_db, mask)])[0]
        if isinstance(out, Failed):
            raise CodecError(out.error)
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
    from urllib.parse import parse_qsl

    from .client import RemoteBackend  # noqa: WPS433 - optional layer
    from .security import client_from_options

    endpoints, _, query = server.partition("?")
    opts = dict(parse_qsl(query))
    allowed = {"timeout_ms": int, "retries": int, "image_format": str}
    keys = ("server_key", "server_key_file", "client_key_file")
    unknown = set(opts) - set(allowed) - set(keys)
    if unknown:
        raise ValueError(f"unknown server option(s) {', '.join(sorted(unknown))}; use "
                         f"{', '.join([*allowed, *keys])}")
    curve = client_from_options(**{k: opts.pop(k) for k in keys if k in opts})
    kw = {**defaults, **{k: allowed[k](v) for k, v in opts.items()}}
    return RemoteBackend(endpoints, config, curve=curve, **kw)
