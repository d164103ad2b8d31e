"""What the flowgraphs' *Python Snippets* call: end a receiver's run, print a summary, exit status.

A generated script calls these from its snippets (``import gr_gdmcom.blocks as gdmcom``
is already among its imports)::

    main_after_init:   gdmcom.capture(self, self.usrp, self.capture)   (radio receivers)
    main_after_start:  gdmcom.watch_rx(self, self.sink, self.images_expected, self.timeout)
    main_after_stop:   gdmcom.finish(self, source=..., sink=..., images_expected=...)

Exit status of :func:`finish`: 0 when images were sent / decoded, 3 when the
timeout came before the expected images, 2 when nothing was sent or decoded.
"""

from __future__ import annotations

import json
import sys
import threading
import time

#: keys of the per-image JSON line printed by :func:`watch_rx`
RESULT_KEYS = ("image_id", "name", "snr_est_db", "n_steps", "complete", "chunks_received", "chunks_total",
               "height", "width", "file", "error", "seconds")
EXIT_NOTHING, EXIT_TIMEOUT = 2, 3


def _print(d: dict) -> None:
    print(json.dumps(d, default=str), flush=True)


def watch_rx(tb, sink, images_expected: int = 0, timeout: float = 0.0, poll: float = 0.2) -> threading.Thread:
    """End a receiver's run: a radio or ZMQ PULL source never ends its stream.

    A daemon thread prints one JSON line per image the ``sink`` reports and calls
    ``tb.stop()`` after ``images_expected`` images (decoded or failed) or after
    ``timeout`` seconds (then ``tb.rx_timed_out`` is True); 0 means no limit.
    """
    tb.rx_timed_out = False

    def _watch():
        t0, seen = time.monotonic(), 0
        while True:
            results = sink.results
            while seen < len(results):
                _print({k: results[seen][k] for k in RESULT_KEYS if k in results[seen]})
                seen += 1
            if images_expected > 0 and seen >= images_expected:
                break
            if timeout > 0 and time.monotonic() - t0 > timeout:
                tb.rx_timed_out = True
                break
            time.sleep(poll)
        tb.stop()

    t = threading.Thread(target=_watch, name="rx-watch", daemon=True)
    t.start()
    return t


def summary(tb, source=None, sink=None, images_expected: int = 0) -> dict:
    """The run in one dict: images sent / decoded, whether the watch timed out, counters."""
    d = dict(summary=True)
    if source is not None:
        d.update(images_sent=source.counters()["images_sent"], source_counters=source.counters())
    if sink is not None:
        d.update(images=len(sink.results), decoded=sum("error" not in r for r in sink.results),
                 images_expected=int(images_expected), timed_out=bool(getattr(tb, "rx_timed_out", False)),
                 counters=sink.counters())
    return d


def exit_status(d: dict) -> int:
    """0, or :data:`EXIT_TIMEOUT` / :data:`EXIT_NOTHING` for a :func:`summary`."""
    if d.get("timed_out") and d.get("images", 0) < d.get("images_expected", 0):
        return EXIT_TIMEOUT
    if d.get("images_sent", 1) == 0 or d.get("decoded", 1) == 0:
        return EXIT_NOTHING
    return 0


def finish(tb, source=None, sink=None, images_expected: int = 0) -> None:
    """Print the :func:`summary` as one JSON line; exit with :func:`exit_status` when it is not 0."""
    d = summary(tb, source, sink, images_expected)
    _print(d)
    code = exit_status(d)
    if code:
        what = "no image was sent" if d.get("images_sent", 1) == 0 else (
            "the timeout came before the expected images" if code == EXIT_TIMEOUT else "no image was decoded")
        print(f"gr_gdmcom: {what} (exit status {code})", file=sys.stderr, flush=True)
        sys.exit(code)


def capture(tb, source, path: str) -> None:
    """Also write ``source``'s samples to ``path`` when it is set (the radio receivers'
    ``--capture``): complex64 interleaved I/Q, GNU Radio's ``file_sink`` of gr_complex,
    which ``file_rx.grc`` (or ``FrameRx``) replays.  Called from a *main_after_init*
    snippet, before the flowgraph starts."""
    if not path:
        return
    from pathlib import Path

    from gnuradio import blocks, gr

    try:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        tb.capture_sink = blocks.file_sink(gr.sizeof_gr_complex, str(Path(path).expanduser()), False)
    except (OSError, RuntimeError) as exc:
        print(f"gr_gdmcom: cannot write the capture file {path}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    tb.connect(source, tb.capture_sink)
    print(f"gr_gdmcom: capturing the received samples to {path} (complex64; replay: file_rx.py --capture {path})",
          file=sys.stderr, flush=True)


def require_capture(path: str) -> None:
    """Exit with a message (status 2) when ``path``, the capture ``file_rx.py`` replays, is
    missing, not a file, unreadable or empty -- instead of GNU Radio's ``RuntimeError: can't
    open file`` traceback after the model has loaded.  Called from file_rx's *init before
    blocks* snippet.  (A size that is not a whole number of complex64 samples is GNU Radio's
    file_source's warning.)"""
    import os
    from pathlib import Path

    hint = "record one with usrp_rx.py or pluto_rx.py --capture FILE, or name it with --capture PATH"
    file = Path(path).expanduser() if path else None
    if file is None or not file.exists():
        where = f" (looked in {os.getcwd()})" if path and not file.is_absolute() else ""
        print(f"gr_gdmcom: no capture file {path!r}{where}: {hint}", file=sys.stderr, flush=True)
        sys.exit(2)
    if not file.is_file():
        print(f"gr_gdmcom: the capture {path} is not a file: {hint}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        with open(file, "rb"):
            pass
        size = file.stat().st_size
    except OSError as exc:
        print(f"gr_gdmcom: cannot read the capture file {path}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    if size == 0:
        print(f"gr_gdmcom: the capture file {path} is empty (0 bytes): {hint}", file=sys.stderr, flush=True)
        sys.exit(2)


def require_display(script: str) -> None:
    """Exit with a message instead of Qt's abort (core dump) when the QT GUI script ``script``
    (e.g. ``live_demo.py``) runs without a display.  Called from the flowgraph's *Import*
    block, so only when that script itself runs (not when GRC or grcc reads the flowgraph)."""
    import os
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if name == script and sys.platform.startswith("linux") and not platform and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(f"gr_gdmcom: {script} is a QT GUI flowgraph and no display is set (DISPLAY is empty). Run it in a "
              "desktop session, under xvfb-run, or with QT_QPA_PLATFORM=offscreen (e.g. with --screenshot FILE "
              "--run-seconds 60).", file=sys.stderr, flush=True)
        sys.exit(1)
