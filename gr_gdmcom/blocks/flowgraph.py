"""What the flowgraphs' *Python Snippets* call: end a receiver's run, print a summary, exit status.

A generated script calls these from its snippets (``import gr_gdmcom.blocks as gdmcom``
is already among its imports)::

    init_before_blocks: gdmcom.preflight(self)   (every flowgraph; file_rx: replay=self.capture)
    main_after_init:   gdmcom.capture(self, self.usrp, self.capture)   (radio receivers)
    main_after_start:  gdmcom.watch_rx(self, self.sink, self.images_expected, self.timeout)
                       (every receiver: a line per image; file_rx: gdmcom.watch_rx(self, self.sink))
                       gdmcom.watch_tx(self, self.source)   (transmitters: a line per image sent)
                       gdmcom.flowgraph.screenshot(tb, tb.screenshot)   (live_demo's --screenshot)
    main_after_stop:   gdmcom.finish(self, source=..., sink=..., images_expected=...)

Exit status of :func:`finish`: 0 when images were sent / decoded, 3 when the
timeout came before the expected images, 2 when nothing was sent or decoded.
:func:`preflight` exits 2 with one line per bad setting before any block is built
(and a radio that cannot be opened ends the same way, not with a traceback).
"""

from __future__ import annotations

import json
import sys
import threading
import time

#: keys of the per-image JSON line printed by :func:`watch_rx`
RESULT_KEYS = ("image_id", "sender", "name", "snr_est_db", "n_steps", "complete", "chunks_received", "chunks_total",
               "height", "width", "file", "error", "model_mismatch", "repeat", "update", "reception", "seconds")
EXIT_NOTHING, EXIT_TIMEOUT = 2, 3


#: the real stdout once :func:`results_on_stdout` moved file descriptor 1 to stderr (None: sys.stdout)
_RESULTS = None


def results_on_stdout(tb) -> None:
    """Keep a flowgraph script's stdout for its result lines (:func:`_print`, the screenshot line)
    alone, as ``gdmcom link`` does (``cli.divert_stdout``): GNU Radio's logger (spdlog, C++) and
    libraries that print write to file descriptor 1 behind Python's back, so fd 1 is pointed at
    stderr and the results go to a duplicate of the real stdout.  Only in the script being run
    (``tb``'s class defined in ``__main__``) and only where ``sys.stdout`` is fd 1: a test that
    imports a generated module, or captures ``sys.stdout``, is left alone."""
    global _RESULTS
    if _RESULTS is not None or type(tb).__module__ != "__main__":
        return
    from ..cli import divert_stdout

    diverted = divert_stdout()
    if diverted is not None:  # (for the script's lifetime: the copy to restore from is not needed)
        import os

        _RESULTS, saved = diverted
        os.close(saved)


def _print(d) -> None:
    """One result line (a dict as JSON, NaN and inf as strings) on the script's stdout."""
    from ..cli import json_safe

    line = d if isinstance(d, str) else json.dumps(json_safe(d), default=str, allow_nan=False)
    print(line, file=_RESULTS or sys.stdout, flush=True)


def watch_rx(tb, sink, images_expected: int = 0, timeout: float = 0.0, poll: float = 0.2) -> threading.Thread:
    """End a receiver's run: a radio or ZMQ PULL source never ends its stream.

    A daemon thread prints one JSON line per image the ``sink`` reports and calls
    ``tb.stop()`` after ``images_expected`` images (decoded or failed; an ``update``, an image
    published again with chunks that came late, is not another image) or after
    ``timeout`` seconds (then ``tb.rx_timed_out`` is True); 0 means no limit (a
    receiver whose stream ends by itself, file_rx, calls it with neither).  :func:`finish`
    prints the lines of images decoded after its last look (at the end of the stream).
    """
    tb.rx_timed_out = False
    tb.rx_printed = tb.rx_images = 0

    def _watch():
        t0 = time.monotonic()
        while True:
            _print_rx(tb, sink)
            if images_expected > 0 and tb.rx_images >= images_expected:
                break
            if timeout > 0 and time.monotonic() - t0 > timeout:
                tb.rx_timed_out = True
                break
            time.sleep(poll)
        tb.stop()

    t = threading.Thread(target=_watch, name="rx-watch", daemon=True)
    t.start()
    return t


def watch_tx(tb, source, poll: float = 0.2) -> threading.Thread:
    """Print one JSON line per image the transmitter's ``source`` encoded and queued (its
    ``info``: image_id, name, bursts, symbols, alpha, seconds, or error) while the flowgraph
    runs -- a radio transmitter that loops until Ctrl-C says what it sends.  A daemon
    thread; :func:`finish` prints what it had not yet."""
    tb.tx_printed = 0

    def _watch():
        while True:
            _print_tx(tb, source)
            time.sleep(poll)

    t = threading.Thread(target=_watch, name="tx-watch", daemon=True)
    t.start()
    return t


_TX_LOCK = threading.Lock()
_RX_LOCK = threading.Lock()


def _print_rx(tb, sink) -> None:
    """The per-image lines (:data:`RESULT_KEYS`) of ``sink``'s results not printed yet."""
    with _RX_LOCK:
        results = sink.results
        while getattr(tb, "rx_printed", 0) < len(results):
            r = results[tb.rx_printed]
            _print({k: r[k] for k in RESULT_KEYS if k in r})
            tb.rx_printed += 1
            tb.rx_images = getattr(tb, "rx_images", 0) + (not r.get("update"))


def _print_tx(tb, source) -> None:
    with _TX_LOCK:
        events = source.events
        while getattr(tb, "tx_printed", 0) < len(events):
            _print(events[tb.tx_printed])
            tb.tx_printed += 1


def summary(tb, source=None, sink=None, images_expected: int = 0) -> dict:
    """The run in one dict: images sent / decoded, whether the watch timed out, counters."""
    d = dict(summary=True)
    if source is not None:
        d.update(images_sent=source.counters()["images_sent"], source_counters=source.counters())
    if sink is not None:
        images, where = [], {}  # each image once: an update replaces the reception it completes
        for r in sink.results:
            key = r.get("reception")
            if r.get("update") and key in where:
                images[where[key]] = r
            else:
                where[key] = len(images)
                images.append(r)
        d.update(images=len(images), decoded=sum("error" not in r for r in images),
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
    if source is not None and hasattr(tb, "tx_printed"):
        _print_tx(tb, source)  # the images sent that watch_tx had not printed yet
    if sink is not None and hasattr(tb, "rx_printed"):
        _print_rx(tb, sink)  # the images decoded after watch_rx's last look (file_rx: at the end of the file)
    d = summary(tb, source, sink, images_expected)
    _print(d)
    code = exit_status(d)
    if code:
        what = "no image was sent" if d.get("images_sent", 1) == 0 else (
            "the timeout came before the expected images" if code == EXIT_TIMEOUT else "no image was decoded")
        print(f"gr_gdmcom: {what} (exit status {code}){_why_nothing(d, tb)}", file=sys.stderr, flush=True)
        sys.exit(code)


def _why_nothing(d: dict, tb=None) -> str:
    """What the receiver's counters say when no burst was found (over-the-air.md's troubleshooting
    table): '' when a burst was found or nothing was received.  A receiver whose ``--sps`` is not
    the transmitter's rejects every candidate, and its run ended on a bare 'no image was
    decoded'."""
    c = d.get("counters") or {}
    if d.get("images_sent") == 0 or not c or c.get("bursts_detected", 0) or c.get("headers_ok", 0):
        return ""
    rejected = c.get("candidates_rejected", 0)
    if rejected:
        return (f": {rejected} preamble-like candidate(s) failed verification and no burst was found; "
                f"--sps must be the transmitter's (then interference, clipping or a carrier offset near the "
                f"capture edge: docs/over-the-air.md, troubleshooting)")
    address = getattr(tb, "address", None)
    if address:  # (rx_zmq: no radio between the two)
        return (f": nothing burst-like arrived (no preamble candidate): is the transmitter running, bound to "
                f"--address {address}?")
    return (": nothing burst-like arrived (no preamble candidate): is the transmitter running, on the same "
            "frequency, with enough level? (docs/over-the-air.md, troubleshooting)")


def finish_on_quit(tb, source=None, sink=None) -> None:
    """:func:`finish` for a Qt GUI flowgraph (live_demo's *main_after_start* snippet), when its
    application quits: the window closed by hand or by ``--run-seconds``/``--screenshot``, or
    Ctrl-C (GRC's Qt template runs no *main_after_stop* snippet when the window closes).  A Qt
    slot cannot end the process with ``sys.exit``, so a status other than 0 ends it with
    ``os._exit`` once the summary is written."""
    from PyQt5 import Qt

    def done():
        try:
            finish(tb, source, sink)
        except SystemExit as exc:
            import os

            for f in (sys.stdout, sys.stderr, _RESULTS):
                if f is not None:
                    f.flush()
            os._exit(int(exc.code or 0))

    Qt.QApplication.instance().aboutToQuit.connect(done)


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


#: Flowgraph parameters checked by :func:`preflight`: name -> (test, what it must be).  A flowgraph
#: has some of them; its command-line option is the name with dashes (``--level-period``).
NUMERIC_CHECKS = {
    "samp_rate": (lambda v: v > 0, "must be > 0 (samples/s)"),
    "freq": (lambda v: v > 0, "must be > 0 (Hz)"),
    "level_period": (lambda v: v > 0, "must be > 0 (seconds between RX level reports)"),
    "tx_scale": (lambda v: v > 0, "must be > 0 (the bursts' amplitude; about 0.2 keeps them below full scale)"),
    "guard": (lambda v: v >= 0, "must be >= 0 (zero samples after each burst)"),
    "repeat": (lambda v: v >= 0, "must be >= 0 (0: loop forever)"),
    "images_expected": (lambda v: v >= 0, "must be >= 0 (0: no limit)"),
    "timeout": (lambda v: v >= 0, "must be >= 0 seconds (0: none)"),
    "buffer_size": (lambda v: v > 0, "must be > 0 (samples)"),
    "run_seconds": (lambda v: v >= 0, "must be >= 0 seconds (0: until the window is closed)"),
}
#: The PlutoSDR flowgraphs' radio settings (a flowgraph with ``--uri``), by the AD9361's ranges that
#: their parameters' comments give: gr-iio passed a value outside them to the driver once the model had
#: loaded and the radio was open
PLUTO_CHECKS = {
    "rx_gain": (lambda v: 0 <= v <= 73, "must be in 0 .. 73 dB (the AD9361's manual RX gain)"),
    "tx_atten": (lambda v: 0 <= v <= 89.75, "must be in 0 .. 89.75 dB (the AD9361's TX attenuation; more = weaker)"),
}
PLUTO_GAIN_MODES = ("manual", "slow_attack", "fast_attack", "hybrid")
#: Channel parameters checked by :func:`preflight` with :class:`gr_gdmcom.link.ChannelConfig`'s own
#: rules (each alone, the others at their defaults), so that ``gdmcom link`` and a flowgraph refuse the
#: same values with the same words: ``--epsilon`` 0.5 .. 2, ``--fading`` 0 .. 0.1, ``|--cfo| < 0.5``
CHANNEL_CHECKS = ("snr_db", "cfo", "epsilon", "delay", "fading", "dc_offset", "lead")
#: ... and the two parameters that make ChannelConfig's ``iq_imbalance`` (impaired_link's IQ
#: magnitude and phase): ``--iq-mag/--iq-phase (magnitude dB, phase degrees) must be ...``
IQ_CHECK = ("iq_mag", "iq_phase")
#: above this ``--tx-scale`` a burst's peaks (about 3x its rms, 5x with the tiny test model) pass
#: full scale: a warning, not an error (docs/over-the-air.md, the gain procedure)
TX_SCALE_WARN = 0.25


def preflight(tb, replay: str = None) -> None:
    """Check a flowgraph script's settings before its blocks are built (its *init before
    blocks* snippet): the numbers of :data:`NUMERIC_CHECKS`, ``--sps``, ``--out-dir`` and a
    ``--capture`` to write, and ``--model`` (``--server local``: it must load, the command
    line's check) or ``--server`` (one status request within 3 s).  Every problem is one line
    on stderr and the script exits 2 -- before a model loads for minutes and instead of a
    traceback.  ``replay``: file_rx's capture, which must exist (:func:`require_capture`).
    Also installs :func:`radio_error_hook`, so that a radio that cannot be opened ends the
    script with one line too."""
    from ..cli import check_out, check_server
    from ..codec.models import ModelLoadError, check_model
    from ..phy import FrameConfig

    global _TB
    sys.excepthook = radio_error_hook
    _TB = tb
    results_on_stdout(tb)
    if replay is not None:
        require_capture(replay)
    problems = []
    for name, (ok, what) in NUMERIC_CHECKS.items():
        v = getattr(tb, name, None)
        if isinstance(v, (int, float)) and not ok(v):
            problems.append(f"--{name.replace('_', '-')} {what}, got {v:g}")
    if hasattr(tb, "uri"):  # (a PlutoSDR flowgraph)
        for name, (ok, what) in PLUTO_CHECKS.items():
            v = getattr(tb, name, None)
            if isinstance(v, (int, float)) and not ok(v):
                problems.append(f"--{name.replace('_', '-')} {what}, got {v:g}")
        mode = getattr(tb, "gain_mode", None)
        if isinstance(mode, str) and mode not in PLUTO_GAIN_MODES:
            problems.append(f"--gain-mode must be one of {', '.join(PLUTO_GAIN_MODES)} (manual for bursts), "
                            f"got {mode!r}")
    problems += check_channel(tb)
    scale = getattr(tb, "tx_scale", None)
    if isinstance(scale, (int, float)) and scale > TX_SCALE_WARN:
        print(f"gr_gdmcom: warning: --tx-scale {scale:g} is above {TX_SCALE_WARN:g}: the bursts' peaks may pass "
              f"full scale and clip in the DAC (the RX level meter shows it as clipped_pct)", file=sys.stderr,
              flush=True)
    warn_unshaped(tb)
    checks = []  # (option, check): check_out's messages name --out
    if hasattr(tb, "sps"):
        checks.append(("--sps", lambda: FrameConfig(sps=tb.sps)))
    # (checked, not created: the sink, gdmcom.capture and screenshot create their folders when
    # they write, so a script that stops before -- no radio, no server -- leaves none behind)
    if getattr(tb, "out_dir", None):
        checks.append(("--out-dir", lambda: check_out(tb.out_dir, create=False)))
    if replay is None and getattr(tb, "capture", None):
        checks.append(("--capture", lambda: check_out(tb.capture, folder=False, create=False)))
    if getattr(tb, "screenshot", None):
        checks.append(("--screenshot", lambda: check_screenshot(tb.screenshot)))
    for option, check in checks:
        try:
            check()
        except ValueError as exc:
            problems.append(str(exc).replace("--out ", option + " ", 1))
    problems += check_zmq(tb)
    if not problems:  # the blocks' settings, where the options they are made of are right
        for name, kw in block_settings(tb, "semantic_source"):
            problems += check_source(name, kw)
        for name, kw in block_settings(tb, "semantic_sink"):
            problems += check_sink(name, kw)
    if not problems and hasattr(tb, "model"):  # (the slower checks only when the rest is right)
        server = str(getattr(tb, "server", "local") or "local")
        try:
            check_model(tb.model) if server == "local" else check_server(server)
        except (ModelLoadError, ValueError) as exc:
            problems.append(str(exc))
    for p in problems:
        print(f"gr_gdmcom: {p}", file=sys.stderr, flush=True)
    if problems:
        sys.exit(EXIT_NOTHING)


def check_channel(tb) -> list:
    """The problems of the flowgraph's channel parameters (:data:`CHANNEL_CHECKS`), in
    :class:`~gr_gdmcom.link.ChannelConfig`'s words with the option's name: ``--epsilon
    (sample-clock ratio) must be in 0.5 .. 2 (1 = none), got 0.0`` (``gdmcom link``: ``epsilon
    (sample-clock ratio) ...``).  GNU Radio's channel blocks took ``--epsilon 0`` for a traceback
    (``resampling ratio must be > 0``) after the model loaded, and ``--fading -0.1`` silently."""
    from ..link import ChannelConfig

    problems = []
    for name in CHANNEL_CHECKS:
        v = getattr(tb, name, None)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        try:
            ChannelConfig(kind="model", **{name: v})
        except ValueError as exc:
            msg = str(exc)
            option = "--" + name.replace("_", "-")
            problems.append(option + msg[len(name):] if msg.startswith(name) else f"{option}: {msg}")
    iq = [getattr(tb, name, 0.0) for name in IQ_CHECK]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in iq):
        try:
            ChannelConfig(kind="model", iq_imbalance=tuple(iq))
        except ValueError as exc:
            problems.append("/".join("--" + n.replace("_", "-") for n in IQ_CHECK) + str(exc)[len("iq_imbalance"):])
    return problems


def warn_unshaped(tb) -> None:
    """impaired_link at ``--sps 1`` with a clock offset or a fractional delay: a warning. At one
    sample per symbol there is no pulse shaping, so the receiver cannot follow either (it
    follows timing at sps >= 2): the defaults (--epsilon 1.00002, --delay 0.37) read 7.9 dB
    of a nominal 10.  Not an error: sps 1 over the other impairments is a fair test."""
    sps, eps, delay = (getattr(tb, name, None) for name in ("sps", "epsilon", "delay"))
    if not isinstance(sps, int) or sps >= 2:
        return
    what = []
    if isinstance(eps, (int, float)) and eps != 1:
        what.append(f"--epsilon {eps:g}")
    if isinstance(delay, (int, float)) and delay != round(delay):
        what.append(f"--delay {delay:g}")
    if what:
        print(f"gr_gdmcom: warning: --sps {sps} has no pulse shaping, so the receiver cannot follow "
              f"{' or '.join(what)} (a clock offset or a fractional delay) and the payload loses SNR; "
              f"use --sps 2 or more", file=sys.stderr, flush=True)


def check_screenshot(path: str) -> None:
    """``--screenshot``: its folder can be written (created by :func:`screenshot`, as
    ``--capture``'s by :func:`capture`) and Qt can write an image of its suffix; ValueError
    otherwise.  (A path in a missing folder was reported as saved and the script exited 0
    without a file.)"""
    from pathlib import Path

    from ..cli import check_out

    try:
        check_out(path, folder=False, create=False)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("--out ") else f"--out {path}: {msg}") from None
    suffix = Path(path).suffix.lower().lstrip(".")
    try:
        from PyQt5.QtGui import QImageWriter
        formats = sorted({bytes(f).decode().lower() for f in QImageWriter.supportedImageFormats()})
    except ImportError:  # (no Qt: the QT GUI flowgraph cannot run anyway)
        return
    if suffix not in formats:
        raise ValueError(f"--out {path}: Qt cannot write {'.' + suffix if suffix else 'a file without a suffix'}"
                         f"; give a name ending in .png (or .{', .'.join(f for f in formats if f != 'png')})")


def screenshot(tb, path: str) -> bool:
    """Save the QT GUI window ``tb`` to ``path`` (live_demo's ``--screenshot``) and print
    ``screenshot PATH: N image(s) shown, last: CAPTION``; when Qt cannot write it, one line on
    stderr, the window is closed (the flowgraph stops) and the script exits with status 1
    instead of reporting a file it did not write.  Returns True when saved."""
    from pathlib import Path

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # (Qt's save fails below and says so)
    if tb.grab().save(path):
        display = getattr(tb, "display", None)
        shown = getattr(display, "shown", 0)
        caption = (getattr(display, "last", None) or {}).get("caption", "")
        _print(f"screenshot {path}: {shown} image(s) shown, last: {caption}")
        return True
    print(f"gr_gdmcom: error: could not save the screenshot {path} (Qt could not write the file)",
          file=sys.stderr, flush=True)
    tb.close()
    sys.stdout.flush()
    if _RESULTS is not None:
        _RESULTS.flush()
    import os
    os._exit(1)  # (from a Qt timer: sys.exit would not end qapp.exec_())
    return False


def _init_source(tb):
    """``(syntax tree of the flowgraph script's generated __init__, the names its expressions
    see: the script's module, its parameters and variables, self)``; ``(None, None)`` without
    source (``python -c``)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(tb).__init__)))
    except (OSError, TypeError, SyntaxError):
        return None, None
    module = sys.modules.get(type(tb).__module__)
    ns = dict(vars(module)) if module is not None else {}
    ns.update(vars(tb), self=tb)
    return tree, ns


def block_settings(tb, factory: str) -> list:
    """``[(name, arguments)]`` of each ``gdmcom.<factory>(...)`` block the flowgraph script
    ``tb`` is about to build: read from the generated ``__init__`` (GRC writes every block as
    ``self.NAME = gdmcom.FACTORY(arg=expression, ...)``) and each argument evaluated with the
    script's parameters and variables, which are set before the *init before blocks* snippet.
    An argument that cannot be evaluated yet is left out; no source (``python -c``): ``[]``.
    Lets :func:`preflight` check a block's settings before any block loads a model."""
    import ast

    tree, ns = _init_source(tb)
    if tree is None:
        return []
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        f, target = node.value.func, node.targets[0]
        if not (isinstance(f, ast.Attribute) and f.attr == factory and isinstance(f.value, ast.Name)
                and f.value.id == "gdmcom"):
            continue
        kw = {}
        for k in node.value.keywords:
            if k.arg is None:
                continue
            try:
                kw[k.arg] = eval(compile(ast.Expression(k.value), "<flowgraph>", "eval"), ns)  # noqa: S307
            except Exception:  # noqa: BLE001 - left to the block's own check
                pass
        found.append((target.attr if isinstance(target, ast.Attribute) else factory, kw))
    return found


#: GNU Radio 3.10's ZMQ blocks: factory -> (index of ``address`` among the positional arguments,
#: whether the block binds (else connects); the message blocks take a ``bind`` argument)
ZMQ_BLOCKS = {"push_sink": (2, True), "pub_sink": (2, True), "rep_sink": (2, True),
              "pull_source": (2, False), "sub_source": (2, False), "req_source": (2, False),
              "push_msg_sink": (0, True), "pub_msg_sink": (0, True), "rep_msg_sink": (0, True),
              "pull_msg_source": (0, False), "sub_msg_source": (0, False), "req_msg_source": (0, False)}


def zmq_endpoints(tb) -> list:
    """``[(option, address, binds)]`` of each GNU Radio ZMQ block the flowgraph script ``tb`` is
    about to build (``self.NAME = zeromq.push_sink(..., address, ...)`` in the generated
    ``__init__``, its address evaluated as :func:`block_settings` does); ``option`` is the
    command-line option when the address is a flowgraph parameter (``--address``), else the
    block's name.  An address that cannot be evaluated yet is left out."""
    import ast

    tree, ns = _init_source(tb)
    if tree is None:
        return []

    def value(node):
        return eval(compile(ast.Expression(node), "<flowgraph>", "eval"), ns)  # noqa: S307

    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        call, target = node.value, node.targets[0]
        f = call.func
        if not (isinstance(f, ast.Attribute) and f.attr in ZMQ_BLOCKS and isinstance(f.value, ast.Name)
                and f.value.id == "zeromq"):
            continue
        index, binds = ZMQ_BLOCKS[f.attr]
        kws = {k.arg: k.value for k in call.keywords if k.arg}
        expr = call.args[index] if len(call.args) > index else kws.get("address")
        if f.attr.endswith(("_msg_sink", "_msg_source")):
            bind_expr = call.args[2] if len(call.args) > 2 else kws.get("bind")
            try:
                binds = bool(value(bind_expr)) if bind_expr is not None else binds
            except Exception:  # noqa: BLE001 - left to the block
                continue
        if expr is None:
            continue
        try:
            address = value(expr)
        except Exception:  # noqa: BLE001 - left to the block
            continue
        if isinstance(expr, ast.Name) and hasattr(tb, expr.id):
            option = "--" + expr.id.replace("_", "-")
        else:
            option = f"{target.attr if isinstance(target, ast.Attribute) else f.attr} ({f.attr}) address"
        found.append((option, str(address), binds))
    return found


def check_zmq(tb) -> list:
    """The problems of the flowgraph's ZMQ addresses (:func:`zmq_endpoints`), found by binding or
    connecting a socket of pyzmq (the same libzmq) the way the block will, then closing it:
    ``--address foo``, a host name or an address of another machine to bind, a port another
    transmitter holds.  GNU Radio's blocks raised them as ``RuntimeError: Invalid argument``
    tracebacks once the model had loaded.  (A connecting block's peer need not be up: ZMQ
    connects when it appears.)"""
    try:
        import zmq
    except ImportError:  # (python3-zmq missing: the block says it)
        return []
    problems = []
    for option, address, binds in zmq_endpoints(tb):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            (sock.bind if binds else sock.connect)(address)
        except zmq.ZMQError as exc:
            what = exc.strerror
            if exc.errno == zmq.EINVAL or exc.errno == zmq.EPROTONOSUPPORT:
                problems.append(f"{option} {address!r} is not a ZMQ endpoint ({what}): write "
                                f"tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556")
            elif not binds:
                problems.append(f"{option} {address}: cannot connect ({what})")
            elif exc.errno == zmq.EADDRINUSE:
                problems.append(f"{option} {address}: cannot bind, the address is in use (another transmitter "
                                f"still running? `ss -ltnp` names what holds the port)")
            else:
                problems.append(f"{option} {address}: cannot bind ({what}): this side binds, so give an IP "
                                f"address of this machine, or * for all of them (tcp://*:5556 lets other "
                                f"machines connect); the other side connects to this machine's address")
        finally:
            sock.close()
            ctx.term()
    return problems


def check_source(name: str, kw: dict) -> list:
    """The problems of a Semantic Source's settings ``kw`` (:func:`block_settings`) that its
    constructor would raise (a traceback), each ``NAME (Semantic Source): reason``: its own
    settings (repeat, tail, stop timeout, a reduce and sender id the frame header can carry) and the codec and
    PHY settings as the block makes them."""
    from .semantic_source import OWN, check_own_settings, source_config

    say = f"{name} (Semantic Source): "
    own = {k: kw[k] for k in ("repeat", "tail_symbols", "stop_timeout", "sender_id") if k in kw}
    try:
        check_own_settings(reduce=kw.get("reduce", 1), header_version=kw.get("header_version", 6), **own)
        source_config(**{k: v for k, v in kw.items() if k not in OWN})
    except (ValueError, TypeError) as exc:
        return [say + str(exc)]
    return []


def check_sink(name: str, kw: dict) -> list:
    """The problems of a Semantic Sink's settings ``kw`` (:func:`block_settings`) that its
    constructor would raise once the model had loaded, each ``NAME (Semantic Sink): reason``:
    the file name pattern (:func:`gr_gdmcom.pipeline.check_filename`), the codec and PHY
    settings as the block makes them (k = 0: a fixed N needs ``m <= N <= T``) and, with the
    model in this process, a ``calibrated:FILE`` rule's file: it must load and have been
    measured for this model and these settings (:meth:`Calibration.check`)."""
    from ..codec.calibration import calibration_path, load_calibration
    from ..config import DEFAULT_MODEL
    from ..pipeline import check_filename
    from .semantic_sink import OWN, sink_config

    problems = []
    say = f"{name} (Semantic Sink): "
    if "filename" in kw:
        try:
            check_filename(kw["filename"])
        except ValueError as exc:
            problems.append(say + str(exc))
    try:
        codec, _ = sink_config(**{k: v for k, v in kw.items() if k not in OWN})
    except (ValueError, TypeError) as exc:
        return problems + [say + str(exc)]
    path = calibration_path(codec.rule)
    if path is not None and str(kw.get("server", "local") or "local") == "local":
        try:
            load_calibration(path).check(_model_id(kw.get("model", DEFAULT_MODEL)), codec, with_k=False)
        except ValueError as exc:
            problems.append(say + str(exc))
    return problems


def _model_id(model: str) -> str:
    """The id a loaded ``model`` reports (``Components.model_id``, what a calibration names):
    the name itself, or an analytic model's canonical label."""
    from ..codec.analytic import is_analytic, parse_spec

    try:
        return parse_spec(model).label() if is_analytic(model) else model
    except ValueError:
        return model


#: a radio driver's error (a RuntimeError from the block's constructor) -> what to check
RADIO_HINTS = (
    ("No devices found", "no USRP answered: check its power and USB/Ethernet link (uhd_find_devices lists what "
                         "UHD sees) and --device-args, e.g. 'serial=31XXXXX' or 'addr=192.168.10.2'"),
    ("No Pluto device found", "no PlutoSDR found: check its USB link (iio_info -s lists what libiio sees) or "
                              "give --uri, e.g. ip:192.168.2.1 or usb:1.2.5"),
    ("Unable to create context", "the PlutoSDR at --uri {uri} did not answer: check that address (e.g. "
                                 "ip:192.168.2.1 or usb:1.2.5) and the link (iio_info -s lists what libiio sees), "
                                 "or leave --uri empty to take the first one found"),
)
#: the flowgraph script's top block, set by :func:`preflight`, whose options the hints name
_TB = None


def radio_error_hook(kind, exc, tb) -> None:
    """``sys.excepthook`` of a flowgraph script (installed by :func:`preflight`): an error
    opening a radio (:data:`RADIO_HINTS`) is one line with what to check, exit status 2; any
    other error keeps Python's traceback.  Ctrl-C before the flowgraph runs (while its model
    loads; GNU Radio's own handler takes over once it runs) is one line and status 130."""
    if issubclass(kind, KeyboardInterrupt):
        print("gr_gdmcom: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        import os
        os._exit(130)
    text = str(exc)
    for needle, hint in RADIO_HINTS:
        if needle in text:
            first = text.strip().splitlines()[0][:200]
            hint = hint.replace("{uri}", str(getattr(_TB, "uri", "") or "")).replace("  ", " ")
            args = getattr(_TB, "device_args", None)
            if args and "--device-args" in hint:
                hint = hint.replace("--device-args", f"--device-args (here {args!r})", 1)
            print(f"gr_gdmcom: {hint} ({kind.__name__}: {first})", file=sys.stderr, flush=True)
            sys.stdout.flush()
            import os
            os._exit(EXIT_NOTHING)  # (an excepthook cannot set the exit status otherwise)
    sys.__excepthook__(kind, exc, tb)


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
    block, so only when that script itself runs (not when GRC or grcc reads the flowgraph).
    ``--help`` needs no display: the script prints its options before any window is made."""
    import os
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    asks_help = any(a in ("-h", "--help") for a in sys.argv[1:])
    if name == script and not asks_help and sys.platform.startswith("linux") and not platform and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(f"gr_gdmcom: {script} is a QT GUI flowgraph and no display is set (DISPLAY is empty). Run it in a "
              "desktop session, under xvfb-run, or with QT_QPA_PLATFORM=offscreen (e.g. with --screenshot FILE "
              "--run-seconds 60).", file=sys.stderr, flush=True)
        sys.exit(1)
