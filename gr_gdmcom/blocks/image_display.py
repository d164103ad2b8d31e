"""``image_display``: a Qt widget showing each original image beside its reconstruction.

PyQt5 is imported when a display is built, never when this module is
imported: ``import gr_gdmcom.blocks`` works on machines without a display
stack.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pmt
from gnuradio import gr

#: Message ports (module constants, as GNU Radio's own blocks).
PORT_IMAGES = pmt.intern("images")
PORT_INFO = pmt.intern("info")

_BRIDGE = None


def _bridge_class():
    """A QObject whose signal carries updates from GNU Radio threads to the GUI thread (built lazily)."""
    global _BRIDGE
    if _BRIDGE is None:
        from PyQt5 import QtCore

        class _Bridge(QtCore.QObject):
            update = QtCore.pyqtSignal(object)

        _BRIDGE = _Bridge
    return _BRIDGE


def _meta_dict(meta) -> dict:
    """PDU metadata (a pmt dict) -> Python dict; anything else -> {}."""
    if not pmt.is_dict(meta):
        return {}
    out = pmt.to_python(meta)
    return out if isinstance(out, dict) else {}


def _rgb_from_pdu(meta: dict, vec) -> np.ndarray | None:
    """The sink's decoded pixels (u8vector, height*width*3) or, when absent, its ``file``."""
    h, w = int(meta.get("height") or 0), int(meta.get("width") or 0)
    if pmt.is_u8vector(vec) and h > 0 and w > 0 and pmt.length(vec) == h * w * 3:
        return np.asarray(pmt.u8vector_elements(vec), np.uint8).reshape(h, w, 3)
    path = meta.get("file")
    return _read_rgb(path) if path else None


def _read_rgb(path) -> np.ndarray | None:
    try:
        from PIL import Image

        with Image.open(Path(str(path))) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, ValueError):
        return None


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of two uint8 RGB images of the same shape (None when shapes differ)."""
    if a is None or b is None or a.shape != b.shape:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def caption(meta: dict, quality: float | None) -> str:
    """One line under the pictures: image (and its sender, where not 0), estimated SNR, chosen N,
    PSNR, chunks (and the update: the image again with chunks that came late)."""
    parts = [f"image {meta.get('image_id', '?')} {meta.get('name', '')}".strip()
             + (f" (sender {meta['sender']})" if meta.get("sender") else "")]
    if meta.get("error"):
        return parts[0] + f"  |  error: {meta['error']}"
    snr = meta.get("snr_est_db")
    if isinstance(snr, (int, float)) and math.isfinite(snr):
        parts.append(f"SNR est {snr:.1f} dB")
    if meta.get("n_steps") is not None:
        parts.append(f"N = {meta['n_steps']}")
    if quality is not None:
        parts.append("PSNR inf" if math.isinf(quality) else f"PSNR {quality:.1f} dB")
    if meta.get("chunks_total"):
        parts.append(f"chunks {meta.get('chunks_received', '?')}/{meta['chunks_total']}"
                     + ("" if meta.get("complete", True) else " (partial)")
                     + (f", update {meta['update']}" if meta.get("update") else ""))
    return "  |  ".join(parts)


class image_display(gr.basic_block):
    """Original image beside its reconstruction, updated per image (QT GUI flowgraphs).

    Message inputs:

    - ``images``: the Semantic Sink's PDUs; metadata ``image_id, name,
      snr_est_db, n_steps, chunks_received, chunks_total, complete, height,
      width, file`` (or ``error``); vector: the decoded RGB pixels (uint8,
      ``height*width*3``, row-major).  An empty vector falls back to ``file``.
    - ``info``: the Semantic Source's PDUs (``image_id, path``): the original
      is read from ``path`` and shown beside the reconstruction with the same
      ``image_id``.

    The widget shows the two pictures (``size`` pixels on their longest side)
    and a caption with the estimated SNR, the chosen N, the PSNR of the
    reconstruction against the original and the chunks received.  Updates are
    passed to the GUI thread through a Qt signal; message handlers never touch
    widgets.

    Parameters: ``label`` (title above the pictures), ``size``, ``grid``
    (``row, col, row_span, col_span`` in the flowgraph's grid; empty: below
    the other widgets) and ``top`` (the QT GUI top block whose layout receives
    the widget; GRC passes ``self``; ``None``: place ``widget()`` yourself).
    Needs a running ``QApplication`` (generate_options ``qt_gui``).
    """

    def __init__(self, label="Original | Reconstruction", size=256, grid=(), top=None):
        gr.basic_block.__init__(self, name="gdmcom_image_display", in_sig=None, out_sig=None)
        from PyQt5 import QtCore, QtWidgets

        if QtWidgets.QApplication.instance() is None:
            raise RuntimeError("image_display needs a QApplication: use it in a QT GUI flowgraph "
                               "(generate_options: qt_gui)")
        self._size = max(16, int(size))
        self._lock = threading.Lock()
        self._originals: dict = {}  # image_id -> (name, rgb)
        self.shown = 0  # reconstructions shown so far
        self.last: dict = {}  # metadata and caption of the last one shown

        self._widget = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(self._widget)
        title = QtWidgets.QLabel(str(label))
        title.setAlignment(QtCore.Qt.AlignCenter)
        layout.addWidget(title)
        row = QtWidgets.QHBoxLayout()
        self._orig_label, self._recon_label = QtWidgets.QLabel("original"), QtWidgets.QLabel("waiting for an image")
        for lab in (self._orig_label, self._recon_label):
            lab.setAlignment(QtCore.Qt.AlignCenter)
            lab.setMinimumSize(self._size, self._size)
            row.addWidget(lab)
        layout.addLayout(row)
        self._caption = QtWidgets.QLabel("")
        self._caption.setAlignment(QtCore.Qt.AlignCenter)
        font = self._caption.font()
        font.setPointSize(font.pointSize() + 3)
        font.setBold(True)
        self._caption.setFont(font)
        layout.addWidget(self._caption)
        self._bridge = _bridge_class()()
        self._bridge.update.connect(self._apply, QtCore.Qt.QueuedConnection)

        self.message_port_register_in(PORT_IMAGES)
        self.set_msg_handler(PORT_IMAGES, self._on_image)
        self.message_port_register_in(PORT_INFO)
        self.set_msg_handler(PORT_INFO, self._on_info)
        if top is not None:
            self._place(top, tuple(int(v) for v in grid))

    def widget(self):
        """The QWidget (add it to your own layout when ``top`` is None)."""
        return self._widget

    def _place(self, top, grid):
        grid_layout = getattr(top, "top_grid_layout", None)
        if grid_layout is not None and len(grid) == 4:
            grid_layout.addWidget(self._widget, *grid)
        elif getattr(top, "top_layout", None) is not None:
            top.top_layout.addWidget(self._widget)
        else:
            self.logger.warn("top block has no QT GUI layout: place widget() yourself")

    # ----------------------------------------------------------- GNU Radio threads
    def _on_info(self, msg):
        meta = _meta_dict(pmt.car(msg)) if pmt.is_pair(msg) else {}
        if "image_id" not in meta or not meta.get("path") or meta.get("error"):
            return
        rgb = _read_rgb(meta["path"])
        if rgb is None:
            self.logger.warn(f"cannot read original {meta['path']}")
            return
        with self._lock:
            self._originals[int(meta["image_id"])] = (str(meta.get("name", "")), rgb)
            while len(self._originals) > 64:  # keep the newest
                self._originals.pop(next(iter(self._originals)))

    def _on_image(self, msg):
        if not pmt.is_pair(msg):
            self.logger.warn("dropped a message that is not a PDU")
            return
        meta = _meta_dict(pmt.car(msg))
        recon = None if meta.get("error") else _rgb_from_pdu(meta, pmt.cdr(msg))
        with self._lock:
            name, orig = self._originals.get(int(meta.get("image_id", -1)), ("", None))
        if name:  # the transmitter's name for it (the sink only knows the id)
            meta["name"] = name
        self._bridge.update.emit(dict(meta=meta, original=orig, recon=recon,
                                      caption=caption(meta, psnr(orig, recon))))

    # ----------------------------------------------------------- GUI thread
    def _apply(self, upd):
        if upd["original"] is not None:
            self._orig_label.setPixmap(self._pixmap(upd["original"]))
        if upd["recon"] is not None:
            self._recon_label.setPixmap(self._pixmap(upd["recon"]))
        self._caption.setText(upd["caption"])
        self.last = dict(upd["meta"], caption=upd["caption"])
        self.shown += 1

    def _pixmap(self, rgb: np.ndarray):
        from PyQt5 import QtCore, QtGui

        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        img = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format_RGB888).copy()
        return QtGui.QPixmap.fromImage(img).scaled(self._size, self._size, QtCore.Qt.KeepAspectRatio,
                                                   QtCore.Qt.SmoothTransformation)
