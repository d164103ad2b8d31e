"""Where the model runs: in-process, or on an inference server over ZMQ.

* :mod:`.backend`  -- :class:`Backend`, :class:`LocalBackend`, :func:`make_backend`
* :mod:`.protocol` -- wire protocol v1 (``docs/protocol.md``)
* :mod:`.server`   -- :class:`InferenceServer` (``gdmcom serve``)
* :mod:`.client`   -- :class:`RemoteBackend` (Lazy Pirate client)
* :mod:`.broker`   -- :class:`Broker` (``gdmcom broker``)
"""

from .backend import Backend, BackendCodec, BackendError, LocalBackend, make_backend
from .broker import Broker
from .client import RemoteBackend
from .server import InferenceServer, ServerOptions

__all__ = ["Backend", "BackendCodec", "BackendError", "Broker", "InferenceServer", "LocalBackend", "RemoteBackend", "ServerOptions",
           "make_backend"]
