"""The flowgraphs' preflight (gr_gdmcom/blocks/flowgraph.py) on the blocks' own settings, the live demo's
screenshot and the GRC assert on the sink's fixed N.

A Semantic Sink whose settings its constructor refuses (a calibration file that is missing or was measured
for another model, a file name pattern with an unknown field, a fixed N below m) compiled in GRC and died
with a traceback (status 1) once the source had loaded the model; the preflight now reads the sink's
arguments from the generated script and says so in one line, status 2, before any block is built.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

gr = pytest.importorskip("gnuradio.gr")
yaml = pytest.importorskip("yaml")

from gr_gdmcom.blocks import flowgraph, grc_yaml  # noqa: E402
from gr_gdmcom.codec.calibration import Calibration  # noqa: E402
from gr_gdmcom.config import DEFAULT_PROMPT, check_steps  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.gnuradio
SINK = "gr_gdmcom: sink (Semantic Sink): "


def _env(tmp_path):
    env = dict(os.environ)
    env["GRC_BLOCKS_PATH"] = env["GR_CONF_GRC_LOCAL_BLOCKS_PATH"] = str(ROOT / "grc")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _calibration(path, model):
    Calibration(model=model, k=5, m=5, T=50, guidance=6.0, prompt=DEFAULT_PROMPT, clean_end="model",
                inversion="ddim", inversion_iters=3, metric="mse", images=[], rescale=True,
                fit_x=[0.0, 20.0], fit_n=[40.0, 12.0]).save(path)


@pytest.mark.parametrize("old, new, line", [
    ("rule='snr'", "rule='calibrated:/nonexistent/cal.json'",
     SINK + "calibration file not found: /nonexistent/cal.json"),
    ("rule='snr'", "rule='calibrated:sd15.json'",
     SINK + "calibration sd15.json was measured for another setting: "
            "model='stable-diffusion-v1-5/stable-diffusion-v1-5' (here 'tiny'); run gdmcom calibrate with this "
            "model and these settings"),
    ("filename='img{image_id:05d}.png'", "filename='img{idx}.png'",
     SINK + "filename pattern 'img{idx}.png' cannot be filled (KeyError: 'idx'); its fields are {image_id}, "
            "{name} and {sender}, e.g. img{image_id:05d}.png"),
    ("steps=0,", "steps=3,", SINK + "steps N must satisfy k + m <= N <= T, got N=3, k=0, m=5, T=50"),
])
def test_sink_settings_are_checked_before_the_model_loads(grcc_build, tmp_path, old, new, line):
    """awgn_link with one of the sink's settings changed in its generated script (as GRC writes a
    block's parameters): one line, status 2, no traceback and no model loaded."""
    script = (grcc_build / "awgn_link.py").read_text()
    assert script.count(old) == 1, old
    (tmp_path / "fg.py").write_text(script.replace(old, new))
    _calibration(tmp_path / "sd15.json", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    r = subprocess.run([sys.executable, "fg.py", "--model", "tiny", "--out-dir", "out"], env=_env(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, line + "\n"), r.stderr[-3000:]
    assert r.stdout == "" and not list((tmp_path / "out").glob("*"))  # nothing ran, nothing was written


SOURCE = "gr_gdmcom: source (Semantic Source): "


@pytest.mark.parametrize("old, new, line", [
    ("reduce=1, reduce_method='subset'", "reduce=3, reduce_method='subset'",
     SOURCE + "reduce must be a power of two in 1..32768 (the frame header carries its log2), got 3"),
    ("tail_symbols=512", "tail_symbols=-1", SOURCE + "tail_symbols must be >= 0 (zero symbols after the last "
                                                     "burst), got -1"),
    ("k=5, forward='ddim'", "k=60, forward='ddim'", SOURCE + "k + m must not exceed T: k=60, m=0, T=50"),
    ("sender_id=0,", "sender_id=128,", SOURCE + "sender_id must be an integer in 0..127 (7 bits of the frame header), "
                                                "got 128"),
])
def test_source_settings_are_one_line_not_a_traceback(grcc_build, tmp_path, old, new, line):
    """The Semantic Source's constructor refused these with a traceback (before its model loaded, but a
    traceback); the preflight now says them as it says the sink's."""
    script = (grcc_build / "awgn_link.py").read_text()
    assert script.count(old) == 1, old
    (tmp_path / "fg.py").write_text(script.replace(old, new))
    r = subprocess.run([sys.executable, "fg.py", "--model", "tiny", "--out-dir", "out"], env=_env(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, line + "\n"), r.stderr[-3000:]


def test_a_sender_id_with_header_version_5_is_one_line(grcc_build, tmp_path):
    """Version 5 (for receivers from before 2026-11-29) has no sender id: the source with both is refused
    before any model loads, with one line."""
    script = (grcc_build / "awgn_link.py").read_text()
    assert script.count("sender_id=0,") == 1 and script.count("header_version=6,") == 1
    (tmp_path / "fg.py").write_text(script.replace("sender_id=0,", "sender_id=3,", 1)
                                    .replace("header_version=6,", "header_version=5,", 1))
    r = subprocess.run([sys.executable, "fg.py", "--model", "tiny", "--out-dir", "out"], env=_env(tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, SOURCE + "sender_id 3 needs header_version 6: a version-5 header has "
                                           "no sender id (0 only)\n"), r.stderr[-3000:]


def test_a_calibration_for_this_model_passes_and_decodes(grcc_build, tmp_path, small):
    from PIL import Image

    script = (grcc_build / "awgn_link.py").read_text().replace("rule='snr'", "rule='calibrated:tiny.json'")
    (tmp_path / "fg.py").write_text(script)
    _calibration(tmp_path / "tiny.json", "tiny")
    Image.fromarray(small).save(tmp_path / "astro.png")
    r = subprocess.run([sys.executable, "fg.py", "--model", "tiny", "--out-dir", "out", "--images", "astro.png"],
                       env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gr_gdmcom:" not in r.stderr and '"decoded": 1' in r.stdout, r.stderr[-3000:]


def _script_top_block(path: Path):
    """The top block class of a generated script, imported as a module (its source readable)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"fg_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return getattr(mod, path.stem), spec.name


@pytest.mark.parametrize("fg", ["awgn_link", "impaired_link", "rx_zmq", "file_rx", "usrp_rx", "pluto_rx", "live_demo"])
def test_block_settings_finds_every_flowgraphs_sink(grcc_build, fg):
    """block_settings() reads the sink of every shipped flowgraph from its generated script and evaluates
    the arguments with the script's parameters (set before the preflight snippet runs); the shipped
    settings pass check_sink."""
    import inspect

    if fg == "live_demo":
        pytest.importorskip("PyQt5.QtWidgets")
    cls, modname = _script_top_block(grcc_build / f"{fg}.py")
    try:
        params = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
        stub = type("Stub", (), dict(params, __init__=cls.__init__, __module__=modname))
        tb = object.__new__(stub)
        vars(tb).update(params, model="tiny", sps=3)
        (name, kw), = flowgraph.block_settings(tb, "semantic_sink")
    finally:
        del sys.modules[modname]
    assert name == "sink"
    assert (kw["model"], kw["sps"], kw["m"], kw["steps"], kw["filename"]) == ("tiny", 3, 5, 0, "img{image_id:05d}.png")
    assert kw["out_dir"] == params.get("out_dir", kw["out_dir"])
    assert flowgraph.check_sink(name, kw) == []
    assert flowgraph.check_sink(name, dict(kw, m=7, steps=6)) == [
        "sink (Semantic Sink): steps N must satisfy k + m <= N <= T, got N=6, k=0, m=7, T=50"]


def test_sinks_steps_assert_is_what_the_sink_accepts():
    """The GRC assert on Fixed N rejects exactly the N the sink refuses when it is built (after the model
    loaded): 0 or less is the rule, else m <= N <= T (k = 0: each image's k comes in its header)."""
    expr = grc_yaml.ASSERTS["steps"]
    for T in (1, 10, 50):
        for m in range(0, T + 1, max(1, T // 10)):
            for steps in range(-2, T + 3):
                try:
                    check_steps(0, m, T, steps if steps > 0 else None)
                    ok = True
                except ValueError:
                    ok = False
                assert eval(expr, {}, dict(steps=steps, m=m, T=T)) == ok, (steps, m, T)  # noqa: S307


def test_grcc_refuses_a_fixed_n_below_m(tmp_path):
    """What GRC draws red (and grcc refuses) instead of a traceback after the model loads."""
    import shutil
    if shutil.which("grcc") is None:
        pytest.skip("grcc not installed")
    doc = yaml.safe_load((ROOT / "flowgraphs" / "awgn_link.grc").read_text())
    sink, = [b for b in doc["blocks"] if b["name"] == "sink"]
    sink["parameters"]["steps"] = "3"
    (tmp_path / "awgn_link.grc").write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([sys.executable, shutil.which("grcc"), "-o", str(tmp_path), str(tmp_path / "awgn_link.grc")],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'Assertion "steps <= 0 or m <= steps <= T" failed' in r.stdout + r.stderr
    sink["parameters"]["steps"] = "10"  # m <= N <= T compiles
    (tmp_path / "awgn_link.grc").write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([sys.executable, shutil.which("grcc"), "-o", str(tmp_path), str(tmp_path / "awgn_link.grc")],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


# --------------------------------------------------------------------------- live demo's screenshot
class _Window:
    def __init__(self, saved):
        self.saved, self.closed, self.paths = saved, False, []
        self.display = type("D", (), {"shown": 2, "last": {"caption": "image 1 astro"}})()

    def grab(self):
        return self

    def save(self, path):
        self.paths.append(path)
        return self.saved

    def close(self):
        self.closed = True


def test_screenshot_that_qt_cannot_save_is_an_error(monkeypatch, capsys, tmp_path):
    """QWidget.grab().save() returns False where it cannot write: the demo printed 'screenshot PATH: 2
    image(s) shown' and exited 0 without a file; now an error line, the window closed, status 1."""
    def _exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", _exit)
    (tmp_path / "file").write_text("x")
    bad = str(tmp_path / "file" / "shot.png")
    w = _Window(saved=False)
    with pytest.raises(SystemExit) as exc:
        flowgraph.screenshot(w, bad)
    out = capsys.readouterr()
    assert exc.value.code == 1 and w.closed and w.paths == [bad]
    assert out.out == "" and out.err == (f"gr_gdmcom: error: could not save the screenshot {bad} (Qt could "
                                         "not write the file)\n")
    w = _Window(saved=True)
    good = str(tmp_path / "shots" / "a" / "shot.png")
    assert flowgraph.screenshot(w, good) and not w.closed
    assert (tmp_path / "shots" / "a").is_dir()  # (the preflight only checked it could be made)
    assert capsys.readouterr().out == f"screenshot {good}: 2 image(s) shown, last: image 1 astro\n"


class _Script:
    """A flowgraph script's top block as the preflight sees it (no blocks in its __init__)."""

    def __init__(self, **options):
        vars(self).update(options)


def test_preflight_checks_output_folders_without_creating_them(tmp_path, capsys, monkeypatch):
    """usrp_rx --capture d1/cap.c64 --out-dir d2 with no radio attached left the two folders behind:
    the preflight created them, then the radio could not be opened.  Now it checks that they can be
    made and leaves the making to what writes into them; a folder under a file is still refused."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # (the preflight installs its own)
    tb = _Script(sps=2, out_dir=str(tmp_path / "d2" / "out"), capture=str(tmp_path / "d1" / "cap.c64"),
                 screenshot=str(tmp_path / "d3" / "shot.png"))
    flowgraph.preflight(tb)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    tb = _Script(sps=2, out_dir=str(tmp_path / "f" / "out"), capture=str(tmp_path / "d1" / "cap.c64"))
    with pytest.raises(SystemExit) as exc:
        flowgraph.preflight(tb)
    assert exc.value.code == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert capsys.readouterr().err == (f"gr_gdmcom: cannot create the output folder {tmp_path}/f/out: "
                                       f"{tmp_path}/f is a file\n")


# --------------------------------------------------------------------------- channel settings
@pytest.mark.parametrize("name, value", [("epsilon", 0.0), ("epsilon", -1.0), ("epsilon", 2.5), ("fading", -0.1),
                                         ("fading", 0.2), ("cfo", 0.5), ("cfo", -0.7), ("delay", 5.0),
                                         ("dc_offset", 25.0), ("lead", -1)])
def test_channel_checks_say_what_gdmcom_link_says(name, value):
    """The flowgraph's line is ChannelConfig's message (gdmcom link's) with the option's name in front."""
    from gr_gdmcom.link import ChannelConfig
    with pytest.raises(ValueError) as exc:
        ChannelConfig(kind="model", **{name: value})
    tb = type("TB", (), {name: value})()
    assert flowgraph.check_channel(tb) == ["--" + name.replace("_", "-") + str(exc.value)[len(name):]], str(exc.value)


@pytest.mark.parametrize("mag, phase", [(7.0, 0.0), (-6.5, 1.0), (0.0, 50.0), (1.0, float("nan"))])
def test_the_iq_imbalance_check_names_both_options(mag, phase):
    """impaired_link's IQ magnitude and phase are ChannelConfig's one iq_imbalance: its message, both names."""
    from gr_gdmcom.link import ChannelConfig
    with pytest.raises(ValueError) as exc:
        ChannelConfig(kind="model", iq_imbalance=(mag, phase))
    assert str(exc.value).startswith("iq_imbalance (magnitude dB, phase degrees) must be within +-6 dB and +-45 ")
    tb = type("TB", (), dict(iq_mag=mag, iq_phase=phase))()
    assert flowgraph.check_channel(tb) == ["--iq-mag/--iq-phase" + str(exc.value)[len("iq_imbalance"):]]


def test_channel_checks_pass_the_defaults_and_skip_missing_ones():
    tb = type("TB", (), dict(snr_db=10.0, cfo=0.0, epsilon=1.0, delay=0.0, fading=0.0, dc_offset=-200.0, lead=0,
                             iq_mag=0.0, iq_phase=0.0))()
    assert flowgraph.check_channel(tb) == []
    assert flowgraph.check_channel(type("TB", (), dict(iq_mag=6.0, iq_phase=-45.0))()) == []
    assert flowgraph.check_channel(tb) == []
    assert flowgraph.check_channel(type("TB", (), {})()) == []


@pytest.mark.parametrize("options, warned", [
    (dict(sps=1, epsilon=1.00002, delay=0.37), "--epsilon 1.00002 or --delay 0.37"),
    (dict(sps=1, epsilon=1.0, delay=2.0), None),
    (dict(sps=2, epsilon=1.00002, delay=0.37), None),
    (dict(sps=1, epsilon=1.0, delay=0.5), "--delay 0.5"),
])
def test_impaired_link_at_one_sample_per_symbol_warns_of_timing_it_cannot_follow(options, warned, capsys,
                                                                                 monkeypatch):
    """impaired_link --sps 1 ran its default clock offset and fractional delay without a word (its
    description says sps >= 2) and read 7.9 dB of a nominal 10: a warning now, not a refusal."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    flowgraph.preflight(_Script(**options))
    err = capsys.readouterr().err
    if warned is None:
        assert err == ""
    else:
        assert err == (f"gr_gdmcom: warning: --sps 1 has no pulse shaping, so the receiver cannot follow {warned} "
                       "(a clock offset or a fractional delay) and the payload loses SNR; use --sps 2 or more\n")


# --------------------------------------------------------------------------- ZMQ addresses
class _ZmqTx:
    """tx_zmq's top block as the preflight reads it: the ZMQ block in its __init__ is never built."""

    def __init__(self, address):
        self.address = address
        return
        self.push = zeromq.push_sink(gr.sizeof_gr_complex, 1, address, 100, False, -1)  # noqa: F821


class _ZmqRx:
    def __init__(self, address):
        self.address = address
        return
        self.pull = zeromq.pull_source(gr.sizeof_gr_complex, 1, address, 100, False, (-1))  # noqa: F821


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zmq_addresses_are_read_from_the_script():
    assert flowgraph.zmq_endpoints(_ZmqTx("tcp://127.0.0.1:5556")) == [("--address", "tcp://127.0.0.1:5556", True)]
    assert flowgraph.zmq_endpoints(_ZmqRx("tcp://127.0.0.1:5556")) == [("--address", "tcp://127.0.0.1:5556", False)]
    assert flowgraph.zmq_endpoints(_Script(address="foo")) == []  # (no ZMQ block: nothing to check)


def test_zmq_addresses_that_the_blocks_would_refuse_are_one_line_each():
    """tx_zmq/rx_zmq --address foo (or an address of another machine, a host name, a port that another
    transmitter holds) was GNU Radio's 'RuntimeError: Invalid argument' traceback once the model had
    loaded; the preflight binds or connects the way the block will and says what is wrong."""
    zmq = pytest.importorskip("zmq")
    port = _free_port()
    assert flowgraph.check_zmq(_ZmqTx(f"tcp://127.0.0.1:{port}")) == []
    assert flowgraph.check_zmq(_ZmqTx(f"tcp://*:{port}")) == []
    assert flowgraph.check_zmq(_ZmqRx("tcp://192.0.2.1:5556")) == []  # (a peer that is not up yet: fine)
    bad = "is not a ZMQ endpoint (Invalid argument): write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556"
    assert flowgraph.check_zmq(_ZmqTx("foo")) == ["--address 'foo' " + bad]
    assert flowgraph.check_zmq(_ZmqRx("tcp://127.0.0.1")) == ["--address 'tcp://127.0.0.1' " + bad]
    [line] = flowgraph.check_zmq(_ZmqTx("tcp://192.0.2.1:5556"))  # (TEST-NET-1: not this machine's)
    assert line.startswith("--address tcp://192.0.2.1:5556: cannot bind (") and "tcp://*:5556" in line, line
    ctx = zmq.Context()
    held = ctx.socket(zmq.PULL)
    held.setsockopt(zmq.LINGER, 0)
    held.bind(f"tcp://127.0.0.1:{port}")
    try:
        [line] = flowgraph.check_zmq(_ZmqTx(f"tcp://127.0.0.1:{port}"))
        assert line.startswith(f"--address tcp://127.0.0.1:{port}: cannot bind, the address is in use"), line
    finally:
        held.close()
        ctx.term()


@pytest.mark.parametrize("fg, address", [("tx_zmq", "foo"), ("rx_zmq", "tcp://127.0.0.1")])
def test_zmq_flowgraph_with_a_bad_address_stops_before_the_model_loads(grcc_build, tmp_path, fg, address):
    r = subprocess.run([sys.executable, str(grcc_build / f"{fg}.py"), "--model", "tiny", "--address", address],
                       env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr[-3000:]
    assert r.stderr == (f"gr_gdmcom: --address {address!r} is not a ZMQ endpoint (Invalid argument): write "
                        "tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556\n"), r.stderr[-3000:]


# --------------------------------------------------------------------------- result lines, radio hints
def test_result_lines_are_json_without_bare_nan(capsys):
    """A transmitter's line for an image it could not send had "alpha": NaN, which is not JSON (jq
    refuses the line); non-finite floats are written as gdmcom link writes them, "nan" / "inf"."""
    import json

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    flowgraph._print({"image_id": 0, "alpha": float("nan"), "counters": {"x": float("inf")},
                      "list": [float("-inf"), 1.5]})
    line = capsys.readouterr().out
    assert json.loads(line, parse_constant=refuse) == {"image_id": 0, "alpha": "nan", "counters": {"x": "inf"},
                                                       "list": ["-inf", 1.5]}


def test_pluto_hint_names_the_uri_that_was_given(monkeypatch, capsys):
    """pluto_tx --uri usb:1.2.5 without the radio said 'check the address (ip:192.168.2.1)', an
    address the user had not given; the line names the --uri (and a USRP's --device-args)."""
    def _exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", _exit)
    monkeypatch.setattr(flowgraph, "_TB", _Script(uri="usb:1.2.5"))
    with pytest.raises(SystemExit) as exc:
        flowgraph.radio_error_hook(RuntimeError, RuntimeError("Unable to create context"), None)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("gr_gdmcom: the PlutoSDR at --uri usb:1.2.5 did not answer: "), err
    monkeypatch.setattr(flowgraph, "_TB", _Script(device_args="addr=192.168.10.2"))
    with pytest.raises(SystemExit):
        flowgraph.radio_error_hook(RuntimeError, RuntimeError("LookupError: KeyError: No devices found for"), None)
    assert "--device-args (here 'addr=192.168.10.2')" in capsys.readouterr().err


class _Sink:
    def __init__(self, **counters):
        self.results = []
        self._c = {**dict(bursts_detected=0, candidates_rejected=0, headers_ok=0), **counters}

    def counters(self):
        return dict(self._c)


@pytest.mark.parametrize("counters, why", [
    (dict(candidates_rejected=4), ": 4 preamble-like candidate(s) failed verification and no burst was found; "
                                  "--sps must be the transmitter's"),
    (dict(), ": nothing burst-like arrived (no preamble candidate): is the transmitter running"),
    (dict(bursts_detected=1, candidates_rejected=3), ""),
])
def test_a_receiver_that_found_no_burst_says_what_its_counters_say(counters, why, capsys):
    """file_rx --sps 4 on an sps-2 capture ended on a bare 'no image was decoded (exit status 2)';
    the counters behind it (over-the-air.md's troubleshooting table) are now said on that line."""
    with pytest.raises(SystemExit) as exc:
        flowgraph.finish(_Script(), sink=_Sink(**counters))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("gr_gdmcom: no image was decoded (exit status 2)" + why), err
    if not why:
        assert err == "gr_gdmcom: no image was decoded (exit status 2)\n"
    if "nothing burst-like" in why:  # (rx_zmq: no radio to tune)
        with pytest.raises(SystemExit):
            flowgraph.finish(_Script(address="tcp://127.0.0.1:5556"), sink=_Sink(**counters))
        assert capsys.readouterr().err.endswith("is the transmitter running, bound to --address "
                                                "tcp://127.0.0.1:5556?\n")


def test_pluto_settings_outside_the_ad9361_ranges_are_refused_first(capsys, monkeypatch):
    """pluto_rx --gain-mode foo --rx-gain 500, pluto_tx --tx-atten 100: the ranges their parameters'
    comments give were not checked, and the values went to the driver once the model had loaded."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(SystemExit) as exc:
        flowgraph.preflight(_Script(uri="", rx_gain=500.0, gain_mode="foo", tx_atten=100.0))
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "gr_gdmcom: --rx-gain must be in 0 .. 73 dB (the AD9361's manual RX gain), got 500\n"
        "gr_gdmcom: --tx-atten must be in 0 .. 89.75 dB (the AD9361's TX attenuation; more = weaker), got 100\n"
        "gr_gdmcom: --gain-mode must be one of manual, slow_attack, fast_attack, hybrid (manual for bursts), "
        "got 'foo'\n")
    flowgraph.preflight(_Script(uri="", rx_gain=73.0, gain_mode="slow_attack", tx_atten=0.0))
    flowgraph.preflight(_Script(rx_gain=500.0))  # (a USRP's gain range is its own: not checked here)
    assert capsys.readouterr().err == ""
