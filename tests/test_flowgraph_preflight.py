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


def test_screenshot_that_qt_cannot_save_is_an_error(monkeypatch, capsys):
    """QWidget.grab().save() returns False where it cannot write: the demo printed 'screenshot PATH: 2
    image(s) shown' and exited 0 without a file; now an error line, the window closed, status 1."""
    def _exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", _exit)
    w = _Window(saved=False)
    with pytest.raises(SystemExit) as exc:
        flowgraph.screenshot(w, "/x/shot.png")
    out = capsys.readouterr()
    assert exc.value.code == 1 and w.closed and w.paths == ["/x/shot.png"]
    assert out.out == "" and out.err == ("gr_gdmcom: error: could not save the screenshot /x/shot.png (Qt could "
                                         "not write the file)\n")
    w = _Window(saved=True)
    assert flowgraph.screenshot(w, "shot.png") and not w.closed
    assert capsys.readouterr().out == "screenshot shot.png: 2 image(s) shown, last: image 1 astro\n"


# --------------------------------------------------------------------------- channel settings
@pytest.mark.parametrize("name, value", [("epsilon", 0.0), ("epsilon", -1.0), ("epsilon", 2.5), ("fading", -0.1),
                                         ("fading", 0.2), ("cfo", 0.5), ("cfo", -0.7), ("delay", 5.0)])
def test_channel_checks_say_what_gdmcom_link_says(name, value):
    """The flowgraph's line is ChannelConfig's message (gdmcom link's) with the option's name in front."""
    from gr_gdmcom.link import ChannelConfig
    with pytest.raises(ValueError) as exc:
        ChannelConfig(kind="model", **{name: value})
    tb = type("TB", (), {name: value})()
    assert flowgraph.check_channel(tb) == ["--" + str(exc.value)], str(exc.value)


def test_channel_checks_pass_the_defaults_and_skip_missing_ones():
    tb = type("TB", (), dict(snr_db=10.0, cfo=0.0, epsilon=1.0, delay=0.0, fading=0.0))()
    assert flowgraph.check_channel(tb) == []
    assert flowgraph.check_channel(type("TB", (), {})()) == []
