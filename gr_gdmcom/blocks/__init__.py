"""GNU Radio blocks of gr_gdmcom (thin wrappers over :mod:`gr_gdmcom.phy`,
:mod:`gr_gdmcom.pipeline` and the codec backends)."""

from .flowgraph import capture, finish, finish_on_quit, preflight, require_capture, watch_rx, watch_tx
from .frame_rx import frame_rx
from .frame_tx import frame_tx
from .image_display import image_display  # PyQt5 is imported only when a display is built
from .rx_level import rx_level
from .semantic_sink import semantic_sink
from .semantic_source import semantic_source

__all__ = ["capture", "finish", "finish_on_quit", "frame_rx", "frame_tx", "image_display", "preflight",
           "require_capture", "rx_level", "semantic_sink", "semantic_source", "watch_rx", "watch_tx"]
