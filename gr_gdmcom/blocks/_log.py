"""Python ``logging`` of the package -> the GNU Radio logger of the block at work.

The PHY, the pipelines and the codec log through Python's :mod:`logging`
(``gr_gdmcom.*`` loggers) and know nothing of GNU Radio.  One handler on the
``gr_gdmcom`` logger hands each record to the GNU Radio logger of the block
whose thread logged it (its ``work()``, its worker thread or its constructor,
see :func:`bind`), so messages carry the block's name and follow GNU Radio's
log settings.  When the application configured Python logging itself (the
root logger has handlers, as ``gdmcom`` does), the handler stays silent: each
message is printed once, by one of the two.
"""

from __future__ import annotations

import logging
import threading

from gnuradio import gr

_current = threading.local()
_fallback = None


class GrLogHandler(logging.Handler):
    """Forward ``gr_gdmcom.*`` records to a GNU Radio logger."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # the application prints Python logging itself
        global _fallback
        logger = getattr(_current, "logger", None)
        if logger is None:
            if _fallback is None:
                _fallback = gr.logger("gr_gdmcom")
            logger = _fallback
        try:
            msg = self.format(record)
            if record.levelno >= logging.ERROR:
                logger.error(msg)
            elif record.levelno >= logging.WARNING:
                logger.warn(msg)
            elif record.levelno >= logging.INFO:
                logger.info(msg)
            else:
                logger.debug(msg)
        except Exception:  # noqa: BLE001 - logging must never take a flowgraph down
            self.handleError(record)


def install() -> GrLogHandler:
    """Attach the one handler to the ``gr_gdmcom`` logger (idempotent); returns it."""
    pkg = logging.getLogger("gr_gdmcom")
    for h in pkg.handlers:
        if isinstance(h, GrLogHandler):
            return h
    h = GrLogHandler()
    h.setFormatter(logging.Formatter("%(message)s"))
    pkg.addHandler(h)  # (the level stays the application's: WARNING unless configured)
    return h


def bind(block) -> None:
    """Records logged from the calling thread go to ``block.logger`` from now on."""
    install()
    _current.logger = block.logger
