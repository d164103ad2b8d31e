"""Over-the-air, ZMQ IQ and live-demo flowgraphs: compiled with grcc and run headless with the tiny model.

- ``tx_zmq`` / ``rx_zmq`` run as two processes on loopback; ``rx_zmq`` ends by itself
  (``--images-expected``) or on ``--timeout`` (exit status 3).
- ``usrp_*`` / ``pluto_*`` run in one process with stand-in radio blocks in place of
  ``uhd.usrp_sink/source`` and ``iio.fmcomms2_sink/source_fc32`` (no hardware here):
  what the TX flowgraph hands the radio is checked (bursts, tags, levels) and played,
  with noise, into the RX flowgraph.
- ``live_demo`` (QT GUI) runs offscreen and saves a screenshot.
- The embedded Python blocks of the radio flowgraphs are unit-tested on their own.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gnuradio.gr")
yaml = pytest.importorskip("yaml")
pmt = pytest.importorskip("pmt")
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLOWGRAPHS = ["tx_zmq", "rx_zmq", "usrp_tx", "usrp_rx", "pluto_tx", "pluto_rx", "live_demo"]
pytestmark = pytest.mark.gnuradio


def _env(tmp_path):
    env = dict(os.environ)
    env["GRC_BLOCKS_PATH"] = env["GR_CONF_GRC_LOCAL_BLOCKS_PATH"] = str(ROOT / "grc")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # several processes share a small machine
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")  # QT GUI scripts save their geometry there
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")
    return env


@pytest.fixture(scope="module")
def compiled(grcc_build):
    return grcc_build


@pytest.fixture(scope="module")
def image(tmp_path_factory, small):
    """64 x 56 (W x H) test image: small enough for CPU, not square (size checks mean something)."""
    path = tmp_path_factory.mktemp("img") / "astro.png"
    Image.fromarray(small[:56]).save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_lines(text: str) -> list:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------- embedded blocks
def _epy(name: str, block: str):
    """The class ``blk`` of an embedded Python block, executed from the .grc file itself."""
    doc = yaml.safe_load((ROOT / "flowgraphs" / f"{name}.grc").read_text())
    src = next(b["parameters"]["_source_code"] for b in doc["blocks"] if b["name"] == block)
    ns = {}
    exec(compile(src, f"{name}.grc:{block}", "exec"), ns)  # noqa: S102 - our own flowgraph
    return ns["blk"]


def _tagged(bursts, gap):
    """Stream of bursts separated by ``gap`` zeros, packet_len tag at each burst start."""
    from gnuradio import gr as _gr
    x, tags = [], []
    for b in bursts:
        tags.append(_gr.tag_utils.python_to_tag((len(x), pmt.intern("packet_len"), pmt.from_long(len(b)),
                                                 pmt.PMT_NIL)))
        x += list(b) + [0j] * gap
    return np.array(x, np.complex64), tags


def test_uhd_bursts_block_frames_each_burst(rng):
    from gnuradio import blocks
    bursts = [rng.normal(size=n) + 1j * rng.normal(size=n) + 3 for n in (700, 40000, 5)]
    x, tags = _tagged(bursts, 128)
    tb = gr.top_block()
    src = blocks.vector_source_c(x.tolist(), False, 1, tags)
    blk = _epy("usrp_tx", "bursts")(scale=0.5, guard=64)
    snk = blocks.vector_sink_c()
    tb.connect(src, blk, snk)
    tb.run()
    y = np.array(snk.data())
    assert len(y) == sum(len(b) + 64 for b in bursts)  # the gaps are dropped, guard zeros added
    got = sorted((t.offset, pmt.symbol_to_string(t.key)) for t in snk.tags())
    want, o = [], 0
    for b in bursts:
        want += [(o, "packet_len"), (o, "tx_sob"), (o + len(b) + 63, "tx_eob")]
        np.testing.assert_allclose(y[o:o + len(b)], 0.5 * np.asarray(b, np.complex64), rtol=1e-6)
        assert not y[o + len(b):o + len(b) + 64].any()
        o += len(b) + 64
    assert got == sorted(want)


def test_idle_fill_block_writes_zeros_only_between_bursts(rng):
    from gnuradio import blocks

    class stalling_source(gr.sync_block):
        """Plays a tagged stream, stalling 0.2 s between bursts and inside the long one."""

        def __init__(self, x, tags, stalls):
            gr.sync_block.__init__(self, "stall", None, [np.complex64])
            self.x, self.tags, self.stalls, self.pos = x, tags, sorted(stalls), 0

        def work(self, input_items, output_items):
            if self.pos >= len(self.x):
                return -1
            if self.stalls and self.pos == self.stalls[0]:
                time.sleep(0.2)
                self.stalls.pop(0)
            stop = min(self.stalls[:1] + [len(self.x)])
            n = min(len(output_items[0]), stop - self.pos, 3000)
            output_items[0][:n] = self.x[self.pos:self.pos + n]
            for t in self.tags:
                if self.pos <= t.offset < self.pos + n:
                    self.add_item_tag(0, t.offset, t.key, t.value)
            self.pos += n
            return n

    bursts = [rng.normal(size=n) + 1j * rng.normal(size=n) + 3 for n in (1000, 30000)]
    x, tags = _tagged(bursts, 16)
    tb = gr.top_block()
    src = stalling_source(x, tags, [1016, 1016 + 5000])  # between the bursts, inside the second
    fill = _epy("pluto_tx", "fill")(scale=1.0, chunk=512)
    thr = blocks.throttle(gr.sizeof_gr_complex, 1e6)
    snk = blocks.vector_sink_c()
    tb.connect(src, fill, thr, snk)
    tb.start()
    time.sleep(1.5)
    tb.stop()
    tb.wait()
    y = np.array(snk.data())
    assert fill.zeros_written > 0
    for b in bursts:  # each burst arrives whole: no zeros were put inside it
        b = np.asarray(b, np.complex64)
        starts = np.flatnonzero(y == b[0])
        assert any(np.array_equal(y[k:k + len(b)], b) for k in starts)


def test_capture_writes_the_samples_or_says_why_not(tmp_path, capsys):
    """gdmcom.capture (the radio receivers' --capture): '' does nothing; a path gets every sample
    (its folder made); a path that cannot be written exits 2 with one line naming it."""
    from gnuradio import blocks, gr
    import gr_gdmcom.blocks as gdmcom
    x = (np.arange(1000) * (1 + 1j)).astype(np.complex64)
    for path in ("", str(tmp_path / "new" / "rx.c64")):
        tb = gr.top_block()
        src, sink = blocks.vector_source_c(x.tolist()), blocks.null_sink(gr.sizeof_gr_complex)
        tb.connect(src, sink)
        gdmcom.capture(tb, src, path)
        tb.run()
    np.testing.assert_array_equal(np.fromfile(tmp_path / "new" / "rx.c64", np.complex64), x)
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as e:
        gdmcom.capture(gr.top_block(), blocks.vector_source_c([0j]), str(tmp_path / "afile" / "rx.c64"))
    assert e.value.code == 2
    assert f"gr_gdmcom: cannot write the capture file {tmp_path / 'afile' / 'rx.c64'}:" in capsys.readouterr().err


def test_rx_level_block_reports_peak_rms_and_clipping():
    from gnuradio import blocks
    x = np.full(20000, 0.1, np.complex64)
    x[5] = 0.95  # one clipped sample in the first report
    from gr_gdmcom.blocks import rx_level
    meter = rx_level(samp_rate=1e4, period=1.0)
    tb = gr.top_block()
    tb.connect(blocks.vector_source_c(x.tolist()), meter)
    tb.run()
    assert len(meter.reports) == 2
    first, second = meter.reports
    assert first["clipped_pct"] > 0 and abs(first["peak_dbfs"] - 20 * np.log10(0.95)) < 0.01
    assert second["clipped_pct"] == 0 and abs(second["rms_dbfs"] + 20) < 0.01
    assert abs(second["dc_dbfs"] + 20) < 0.01  # a constant 0.1: all of it DC
    rng = np.random.default_rng(0)
    noise = ((rng.standard_normal(40000) + 1j * rng.standard_normal(40000)) * 0.1 / np.sqrt(2)).astype(np.complex64)
    meter = rx_level(samp_rate=1e4, period=4.0)
    tb = gr.top_block()
    tb.connect(blocks.vector_source_c((noise + np.complex64(0.012 - 0.016j)).tolist()), meter)
    tb.run()
    # a DC offset of |0.02| (-34 dBFS) in noise of RMS 0.1 (-20 dBFS): within 1 dB (5 standard errors)
    (only,) = meter.reports
    assert abs(only["rms_dbfs"] - 10 * np.log10(0.01 + 0.02 ** 2)) < 0.1, only
    assert abs(only["dc_dbfs"] - 20 * np.log10(0.02)) < 1.0, only
    with pytest.raises(ValueError, match=r"^rx_level: samp_rate and period must be > 0, got samp_rate=10000.0, "
                                         r"period=0 \(a report per sample would flood the log\)$"):
        rx_level(samp_rate=1e4, period=0)
    with pytest.raises(ValueError, match=r"^rx_level: clip must be in \(0, 1\] \(a fraction of full scale\), got -1$"):
        rx_level(clip=-1)
    # a NaN sample (a driver glitch) made the period's RMS nan, reported at info level
    x[12000] = np.nan
    meter = rx_level(samp_rate=1e4, period=1.0)
    tb = gr.top_block()
    tb.connect(blocks.vector_source_c(x.tolist()), meter)
    tb.run()
    assert meter.reports[1]["nonfinite"] == 1 and meter.reports[0]["nonfinite"] == 0
    assert abs(meter.reports[1]["rms_dbfs"] - 10 * np.log10(0.01 * 9999 / 10000)) < 0.01


# --------------------------------------------------------------------------- ZMQ IQ link
def test_zmq_link_two_processes(compiled, image, tmp_path):
    """rx_zmq and tx_zmq as two processes on loopback; a third rx_zmq with nobody sending times out."""
    env, port, idle_port = _env(tmp_path), _free_port(), _free_port()
    out = tmp_path / "rx"
    py = sys.executable
    logs = {n: (open(tmp_path / f"{n}.out", "w+"), open(tmp_path / f"{n}.err", "w+")) for n in ("rx", "idle")}
    rx = subprocess.Popen([py, str(compiled / "rx_zmq.py"), "--address", f"tcp://127.0.0.1:{port}",
                           "--images-expected", "1", "--timeout", "150", "--model", "tiny", "--out-dir", str(out)],
                          env=env, cwd=ROOT, stdout=logs["rx"][0], stderr=logs["rx"][1])
    # (a --server that does not answer would stop it at once: test_bad_settings_stop_the_script...)
    idle = subprocess.Popen([py, str(compiled / "rx_zmq.py"), "--address", f"tcp://127.0.0.1:{idle_port}",
                             "--images-expected", "1", "--timeout", "3", "--model", "tiny", "--out-dir", ""], env=env, cwd=ROOT, stdout=logs["idle"][0], stderr=logs["idle"][1])
    try:
        tx = subprocess.run([py, str(compiled / "tx_zmq.py"), "--address", f"tcp://127.0.0.1:{port}",
                             "--images", str(image), "--model", "tiny", "--snr-db", "12"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=170)
        rx.wait(timeout=170)
        idle.wait(timeout=120)
    finally:
        for p in (rx, idle):
            if p.poll() is None:
                p.kill()
                p.wait()
    (rx_out, rx_err), (idle_out, idle_err) = [[f.seek(0) or f.read() for f in logs[n]] for n in ("rx", "idle")]
    for f in (*logs["rx"], *logs["idle"]):
        f.close()
    assert tx.returncode == 0, tx.stderr[-3000:]
    assert rx.returncode == 0, rx_err[-3000:]
    lines = _json_lines(rx_out)
    images, summary = [d for d in lines if "image_id" in d], [d for d in lines if d.get("summary")]
    assert len(images) == 1 and len(summary) == 1, rx_out
    r = images[0]
    assert r["complete"] and "error" not in r
    assert abs(r["snr_est_db"] - 12.0) < 1.5  # estimated from the received samples
    assert (r["width"], r["height"]) == Image.open(image).size
    assert Image.open(r["file"]).size == Image.open(image).size
    assert summary[0]["images"] == 1 and not summary[0]["timed_out"]
    assert summary[0]["counters"]["headers_ok"] >= 1
    # nobody sending: the receiver stops itself at --timeout and says so
    assert idle.returncode == 3, idle_err[-3000:]
    idle_summary = [d for d in _json_lines(idle_out) if d.get("summary")]
    assert idle_summary and idle_summary[0]["timed_out"] and idle_summary[0]["images"] == 0


# --------------------------------------------------------------------------- radios (stand-ins)
STAND_INS = r'''
import json, sys, time
import numpy as np
import pmt
from gnuradio import gr, iio, uhd

sys.path.insert(0, sys.argv[1])
CALLS = []  # (radio, setter, args)


def _setters(cls, kind, names):
    for name in names:
        def setter(self, *args, _n=name):
            CALLS.append((kind, _n, [getattr(a, "target_freq", a) for a in args]))
        setattr(cls, name, setter)
    return cls


UHD_SETTERS = ["set_samp_rate", "set_center_freq", "set_antenna", "set_gain", "set_normalized_gain",
               "set_power_reference", "set_bandwidth", "set_rx_agc", "set_time_unknown_pps", "set_time_now",
               "set_auto_dc_offset", "set_dc_offset", "set_auto_iq_balance", "set_iq_balance", "set_clock_source",
               "set_time_source", "set_subdev_spec", "set_lo_source", "set_lo_export_enabled", "set_clock_rate"]
IIO_SETTERS = ["set_len_tag_key", "set_bandwidth", "set_frequency", "set_samplerate", "set_attenuation",
               "set_filter_params", "set_gain_mode", "set_gain", "set_quadrature", "set_rfdc", "set_bbdc"]


class Recorder(gr.sync_block):
    """A radio sink: keeps samples and tags, paced at `rate` samples/s, `multiple` samples at a time."""
    def __init__(self, kind, rate=4e6, multiple=1):
        gr.sync_block.__init__(self, f"stand-in {kind} sink", [np.complex64], None)
        self.kind, self.rate, self.x, self.tags = kind, rate, [], []
        if multiple > 1:
            self.set_output_multiple(multiple)
    def work(self, input_items, output_items):
        x = input_items[0]
        n0 = self.nitems_read(0)
        self.tags += [(t.offset, pmt.symbol_to_string(t.key)) for t in self.get_tags_in_window(0, 0, len(x))
                      if pmt.symbol_to_string(t.key) in ("tx_sob", "tx_eob")]
        self.x.append(np.array(x))
        time.sleep(len(x) / self.rate)
        return len(x)
    def samples(self):
        return np.concatenate(self.x) if self.x else np.zeros(0, np.complex64)


class Player(gr.sync_block):
    """A radio source: `x` then noise forever, paced at `rate` samples/s."""
    def __init__(self, kind, x=None, noise=0.0, rate=4e6):
        gr.sync_block.__init__(self, f"stand-in {kind} source", None, [np.complex64])
        self.kind, self.x, self.noise, self.rate, self.pos = kind, x, noise, rate, 0
        self.rng = np.random.default_rng(5)
    def work(self, input_items, output_items):
        out = output_items[0]
        n = min(len(out), 8192)
        y = np.zeros(n, np.complex64)
        if self.pos < len(self.x):
            k = min(n, len(self.x) - self.pos)
            y[:k] = self.x[self.pos:self.pos + k]
        self.pos += n
        y += (self.noise / np.sqrt(2)) * (self.rng.normal(size=n) + 1j * self.rng.normal(size=n))
        out[:n] = y
        time.sleep(n / self.rate)
        return n


PLAY = {}  # what the next stand-in source plays: x, noise
SINKS = []
_setters(Recorder, "sink", UHD_SETTERS + IIO_SETTERS)
_setters(Player, "source", UHD_SETTERS + IIO_SETTERS)
uhd.usrp_sink = lambda addr, stream_args, *a: SINKS.append(Recorder("usrp")) or SINKS[-1]
uhd.usrp_source = lambda addr, stream_args, *a: Player("usrp", **PLAY)
iio.get_pluto_uri = lambda: "ip:stand-in"
iio.fmcomms2_sink_fc32 = lambda uri, ch, bufsize, cyclic: SINKS.append(Recorder("pluto", multiple=bufsize)) or SINKS[-1]
iio.fmcomms2_source_fc32 = lambda uri, ch, bufsize: Player("pluto", **PLAY)

import usrp_tx, usrp_rx, pluto_tx, pluto_rx  # noqa: E402  (generated by grcc)
IMAGE, SNR, GAIN = sys.argv[2], float(sys.argv[3]), 0.5
report = {}


def bursts_of(x, tags):
    sob = [o for o, k in tags if k == "tx_sob"]
    eob = [o for o, k in tags if k == "tx_eob"]
    return sob, eob


def run_rx(mod, cls, x, scale, **kw):
    PLAY.update(x=GAIN * x, noise=GAIN * scale * 10 ** (-SNR / 20))
    tb = cls(model="tiny", out_dir=sys.argv[4] + "/" + cls.__name__, images_expected=1, timeout=90, level_period=0.02,
             **kw)
    if hasattr(mod, "snippets_main_after_init"):
        mod.snippets_main_after_init(tb)
    tb.start()
    mod.snippets_main_after_start(tb)
    tb.wait()
    try:
        mod.snippets_main_after_stop(tb)
    except SystemExit as e:
        report[cls.__name__ + "_exit"] = e.code
    return dict(results=tb.sink.results, levels=tb.rx_level.reports, calls=[c for c in CALLS if c[0] == "source"])


# USRP: TX runs to the end by itself (repeat 1), bursts go to the stand-in sink
tb = usrp_tx.usrp_tx(images=IMAGE, repeat=1, model="tiny", freq=915e6, tx_gain=40)
tb.start()  # as the script's main(): its snippets print a line per image sent and the summary
usrp_tx.snippets_main_after_start(tb)
tb.wait()
usrp_tx.snippets_main_after_stop(tb)  # (exits 2 when nothing was sent)
sink = SINKS.pop()
x = sink.samples()
sob, eob = bursts_of(x, sink.tags)
report["usrp_tx"] = dict(n=len(x), sob=sob, eob=eob, peak=float(np.abs(x).max()), bursts=tb.bursts.bursts,
                         calls=[c for c in CALLS if c[0] == "sink"])
CALLS.clear()
air = np.concatenate([np.zeros(20000, np.complex64), x, np.zeros(20000, np.complex64)])  # silence around bursts
report["usrp_rx"] = run_rx(usrp_rx, usrp_rx.usrp_rx, air, 0.2, rx_gain=20, capture=sys.argv[4] + "/usrp_rx.c64")
CALLS.clear()

# PlutoSDR: TX never ends (zeros between bursts keep the DAC fed): stop once the burst and some zeros are out
tb = pluto_tx.pluto_tx(images=IMAGE, repeat=1, model="tiny", buffer_size=8192)
tb.start()
t0 = time.time()
while time.time() - t0 < 60 and not (tb.source.events and tb.fill.zeros_written > 4 * 8192):
    time.sleep(0.1)
time.sleep(0.5)
tb.stop()
tb.wait()
sink = SINKS.pop()
x = sink.samples()
report["pluto_tx"] = dict(n=len(x), zeros=int(tb.fill.zeros_written), peak=float(np.abs(x).max()),
                          whole_buffers=len(x) % 8192 == 0, calls=[c for c in CALLS if c[0] == "sink"])
CALLS.clear()
report["pluto_rx"] = run_rx(pluto_rx, pluto_rx.pluto_rx, x, 0.2, rx_gain=20, buffer_size=8192)
print("REPORT " + json.dumps(report, default=str), flush=True)
'''


def test_radio_flowgraphs_with_stand_in_radios(compiled, image, tmp_path):
    driver = tmp_path / "stand_ins.py"
    driver.write_text(textwrap.dedent(STAND_INS))
    r = subprocess.run([sys.executable, str(driver), str(compiled), str(image), "15", str(tmp_path / "out")],
                       env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rep = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("REPORT "))[7:])
    size = Image.open(image).size

    tx = rep["usrp_tx"]
    assert tx["bursts"] >= 1 and len(tx["sob"]) == len(tx["eob"]) == tx["bursts"]
    assert tx["sob"][0] == 0 and tx["eob"][-1] == tx["n"] - 1  # nothing outside a burst reaches the radio
    assert all(s < e for s, e in zip(tx["sob"], tx["eob"]))
    assert 0.2 < tx["peak"] < 0.8  # default TX scale: peaks well inside full scale
    sent = [d for d in _json_lines(r.stdout) if "bursts" in d or "images_sent" in d]
    assert [d.get("image_id") for d in sent] == [0, None] and sent[0]["bursts"] == tx["bursts"], sent
    assert sent[0]["name"] == "astro" and "error" not in sent[0] and sent[1]["images_sent"] == 1, sent
    calls = {c[1]: c[2] for c in tx["calls"]}
    assert calls["set_center_freq"][0] == 915e6 and calls["set_gain"][0] == 40 and calls["set_antenna"][0] == "TX/RX"

    ptx = rep["pluto_tx"]
    assert ptx["zeros"] > 0 and ptx["whole_buffers"] and 0.2 < ptx["peak"] < 0.8
    pcalls = {c[1]: c[2] for c in ptx["calls"]}
    assert pcalls["set_len_tag_key"] == [""] and pcalls["set_attenuation"] == [0, 10]

    for name in ("usrp_rx", "pluto_rx"):
        rx = rep[name]
        assert len(rx["results"]) == 1, (name, rx)
        res = rx["results"][0]
        assert res["complete"] and "error" not in res, (name, res)
        assert abs(res["snr_est_db"] - 15.0) < 2.0, (name, res["snr_est_db"])
        assert Image.open(res["file"]).size == size
        assert rx["levels"] and all(lv["clipped_pct"] == 0 for lv in rx["levels"])
        assert f"{name}_exit" not in rep  # ended on --images-expected, not on --timeout
    assert any(c[1] == "set_gain_mode" and c[2] == [0, "manual"] for c in rep["pluto_rx"]["calls"])

    # usrp_rx --capture recorded what it received; file_rx.py replays it offline to the same image
    cap = tmp_path / "out" / "usrp_rx.c64"
    assert cap.stat().st_size % 8 == 0 and cap.stat().st_size > 8 * 20000
    r = subprocess.run([sys.executable, str(compiled / "file_rx.py"), "--capture", str(cap), "--model", "tiny",
                        "--out-dir", str(tmp_path / "replay")], env=_env(tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(next(line for line in r.stdout.splitlines() if line.startswith('{"summary"')))
    assert summary["decoded"] == 1 and summary["counters"]["images_complete"] == 1, summary
    live, = rep["usrp_rx"]["results"]
    replayed, = (tmp_path / "replay").glob("*.png")
    # like every receiver, file_rx prints one JSON line per image before its summary (it printed only the summary)
    lines = _json_lines(r.stdout)
    assert [d.get("image_id") for d in lines] == [0, None] and lines[1]["summary"], lines
    line = lines[0]
    for key in ("image_id", "snr_est_db", "n_steps", "complete", "chunks_received", "chunks_total", "height",
                "width", "file", "repeat"):
        assert key in line, (key, line)
    assert (line["image_id"], line["complete"], line["chunks_received"], line["chunks_total"], line["repeat"]) == (
        live["image_id"], True, 1, 1, 0), line
    assert (line["width"], line["height"]) == size and line["n_steps"] == live["n_steps"], line
    assert abs(line["snr_est_db"] - live["snr_est_db"]) < 0.01 and Path(line["file"]) == replayed, line
    np.testing.assert_array_equal(np.asarray(Image.open(replayed)), np.asarray(Image.open(live["file"])))

    # a missing or empty capture stops file_rx.py with a message before the model loads, not with
    # GNU Radio's file_source traceback
    (tmp_path / "empty.c64").write_bytes(b"")
    for cap_arg, message in (("nope.c64", f"gr_gdmcom: no capture file 'nope.c64' (looked in {tmp_path}): "),
                             ("empty.c64", "gr_gdmcom: the capture file empty.c64 is empty (0 bytes): ")):
        r = subprocess.run([sys.executable, str(compiled / "file_rx.py"), "--capture", cap_arg, "--model", "tiny"],
                           env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (cap_arg, r.stderr[-2000:])
        assert message + "record one with usrp_rx.py or pluto_rx.py --capture FILE" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "RuntimeError" not in r.stderr, r.stderr[-2000:]


# --------------------------------------------------------------------------- settings checked first
@pytest.mark.parametrize("script, args, lines", [
    ("usrp_rx", ["--level-period", "0", "--samp-rate", "0", "--model", "tiny"],
     ["gr_gdmcom: --samp-rate must be > 0 (samples/s), got 0",
      "gr_gdmcom: --level-period must be > 0 (seconds between RX level reports), got 0"]),
    ("usrp_tx", ["--guard", "-1", "--repeat", "-1", "--model", "tiny"],
     ["gr_gdmcom: --guard must be >= 0 (zero samples after each burst), got -1",
      "gr_gdmcom: --repeat must be >= 0 (0: loop forever), got -1"]),
    ("rx_zmq", ["--images-expected", "-1", "--timeout", "-5"],
     ["gr_gdmcom: --images-expected must be >= 0 (0: no limit), got -1",
      "gr_gdmcom: --timeout must be >= 0 seconds (0: none), got -5"]),
    ("file_rx", ["--capture", "cap.c64", "--sps", "0"],
     ["gr_gdmcom: FrameConfig: sps must be an integer in 1..16 (got sps=0; option --sps)"]),
    ("file_rx", ["--capture", "cap.c64", "--model", "nosuchmodel"],
     ["gr_gdmcom: --model 'nosuchmodel': not a built-in model name"]),
    ("awgn_link", ["--out-dir", "cap.c64"], ["gr_gdmcom: --out-dir cap.c64 is a file; give a folder"]),
    ("rx_zmq", ["--server", "tcp://127.0.0.1:9"],
     ["gr_gdmcom: no inference server answers at tcp://127.0.0.1:9 (status request, 3000 ms)"]),
    ("pluto_tx", ["--model", "tiny"], ["gr_gdmcom: no PlutoSDR found: check its USB link"]),
    # the channel's settings, in gdmcom link's words (ChannelConfig): --epsilon 0 was GNU Radio's traceback
    # (resampling ratio must be > 0) after the model loaded, --fading -0.1 and --cfo 0.7 were taken
    ("impaired_link", ["--epsilon", "0", "--model", "tiny"],
     ["gr_gdmcom: --epsilon (sample-clock ratio) must be in 0.5 .. 2 (1 = none), got 0.0"]),
    ("impaired_link", ["--epsilon=-1", "--fading=-0.1", "--cfo", "0.7", "--model", "tiny"],
     ["gr_gdmcom: --cfo is normalised, cycles/sample: |cfo| < 0.5, got 0.7 (a frequency in Hz over the sample rate)",
      "gr_gdmcom: --epsilon (sample-clock ratio) must be in 0.5 .. 2 (1 = none), got -1.0",
      "gr_gdmcom: --fading (fD Ts) must be in 0 .. 0.1, got -0.1"]),
    ("tx_zmq", ["--cfo=-0.5", "--model", "tiny"], ["gr_gdmcom: --cfo is normalised, cycles/sample: |cfo| < 0.5"]),
    # a --screenshot that cannot be written was reported as saved (exit 0, no file)
    ("live_demo", ["--screenshot", "cap.c64/shot.png", "--model", "tiny"],
     ["gr_gdmcom: --screenshot cap.c64/shot.png: cannot create the output folder cap.c64: "]),
    ("live_demo", ["--screenshot", "shot.xyz", "--model", "tiny"],
     ["gr_gdmcom: --screenshot shot.xyz: Qt cannot write .xyz; give a name ending in .png (or .bmp, "]),
])
def test_bad_settings_stop_the_script_with_one_line_each(compiled, tmp_path, script, args, lines):
    """A flowgraph script checks its settings before building its blocks (its preflight snippet):
    each problem one line, exit 2 -- not a traceback after the model loaded for minutes, a log
    flood (--level-period 0), a run that never ends (--timeout -5) or a silent clamp (--guard -1).
    A radio that cannot be opened (no PlutoSDR here) ends the same way, with what to check."""
    (tmp_path / "cap.c64").write_bytes(np.zeros(16, np.complex64).tobytes())
    r = subprocess.run([sys.executable, str(compiled / f"{script}.py"), *args], env=_env(tmp_path), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    mine = [line for line in r.stderr.splitlines() if line.startswith("gr_gdmcom:")]
    assert len(mine) == len(lines) and all(m.startswith(w) for m, w in zip(mine, lines)), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_ctrl_c_while_a_flowgraph_builds_is_one_line_and_status_130(tmp_path):
    """The preflight's excepthook: Ctrl-C while the model loads (before GNU Radio's own SIGINT
    handler runs the flowgraph down) was a traceback through torch's or diffusers' loading code."""
    code = ("import sys\nfrom gr_gdmcom.blocks.flowgraph import radio_error_hook\n"
            "sys.excepthook = radio_error_hook\nprint('building', flush=True)\nraise KeyboardInterrupt\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, "building\n", "gr_gdmcom: interrupted\n")


def test_a_tx_scale_that_clips_is_a_warning(compiled, tmp_path):
    r = subprocess.run([sys.executable, str(compiled / "pluto_tx.py"), "--model", "tiny", "--tx-scale", "0.5"],
                       env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ("gr_gdmcom: warning: --tx-scale 0.5 is above 0.25: the bursts' peaks may pass full scale and clip "
            "in the DAC") in r.stderr, r.stderr[-3000:]


# --------------------------------------------------------------------------- live demo
def test_live_demo_offscreen_screenshot(compiled, image, tmp_path):
    pytest.importorskip("PyQt5.QtWidgets")
    pytest.importorskip("gnuradio.qtgui")
    shot = tmp_path / "live_demo.png"
    r = subprocess.run([sys.executable, str(compiled / "live_demo.py"), "--model", "tiny", "--images", str(image),
                        "--out-dir", "", "--screenshot", str(shot), "--run-seconds", "120"],
                       env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert shot.exists(), r.stdout + r.stderr[-2000:]
    line = next(line for line in r.stdout.splitlines() if line.startswith("screenshot"))
    assert "image(s) shown" in line and "SNR est" in line and "N = " in line and "astro" in line
    # the summary line when the window closes, as every shipped flowgraph prints (it printed none)
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["summary"] and summary["images_sent"] >= 1 and summary["decoded"] >= 1, summary
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 600 and img.shape[1] >= 600
    # pictures and plots, not a blank window
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 1000


def test_live_demo_with_a_missing_image_reports_it_once_and_waits(compiled, tmp_path):
    """Repeat 0 and a missing image: one warning and one error, the source ends its stream and the
    window stays up (closed here by --run-seconds), instead of an endless stream of errors; on
    closing, the summary and exit status 2 (no image sent) as every shipped flowgraph (it exited 0)."""
    pytest.importorskip("PyQt5.QtWidgets")
    pytest.importorskip("gnuradio.qtgui")
    r = subprocess.run([sys.executable, str(compiled / "live_demo.py"), "--images", "missing.png", "--out-dir", "",
                        "--run-seconds", "6"], env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                       timeout=200)
    assert r.returncode == 2, r.stderr[-3000:]
    assert json.loads(r.stdout)["images_sent"] == 0 and "gr_gdmcom: no image was sent (exit status 2)" in r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    problems = [line for line in lines if ":warning:" in line or ":error:" in line or "Traceback" in line]
    assert len(problems) < 10, problems
    assert sum("image not found: missing.png" in line for line in lines) == 1, lines
    assert sum("could be sent; the source stops" in line for line in lines) == 1, lines


def test_live_demo_without_a_display_says_what_to_do(compiled, tmp_path):
    env = _env(tmp_path)
    for k in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, str(compiled / "live_demo.py")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "no display is set" in r.stderr and "xvfb-run" in r.stderr and "QT_QPA_PLATFORM=offscreen" in r.stderr
    # --help needs no display (the docs say it lists the options)
    r = subprocess.run([sys.executable, str(compiled / "live_demo.py"), "--help"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--run-seconds" in r.stdout and "--screenshot" in r.stdout, r.stderr[-2000:]
