"""Flowgraphs as GNU Radio Companion shows and saves them.

- No overlapping blocks, ports or comments, nothing off the canvas, with every block's
  size computed by GRC's own GUI classes under a virtual X display (scripts/grc_layout.py).
- Opening and saving a flowgraph with GRC's own reader and writer changes no byte.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

gr = pytest.importorskip("gnuradio.gr")

ROOT = Path(__file__).resolve().parent.parent
FLOWGRAPHS = sorted((ROOT / "flowgraphs").glob("*.grc"))
pytestmark = pytest.mark.gnuradio


def _env(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), GRC_BLOCKS_PATH=str(ROOT / "grc"),
               GR_CONF_GRC_LOCAL_BLOCKS_PATH=str(ROOT / "grc"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_no_overlaps_as_grc_draws_the_flowgraphs(tmp_path):
    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run not installed (scripts/setup.sh installs it)")
    r = subprocess.run(["/usr/bin/python3", "-c", "import gi; gi.require_version('Gtk', '3.0')"])
    if r.returncode:
        pytest.skip("gir1.2-gtk-3.0 not installed (scripts/setup.sh installs it)")
    r = subprocess.run(["xvfb-run", "-a", sys.executable, str(ROOT / "scripts" / "grc_layout.py"), "check",
                        *map(str, FLOWGRAPHS)], env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    import json
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(d["flowgraph"] for d in reports) == sorted(f.name for f in FLOWGRAPHS), r.stderr[-3000:]
    for d in reports:
        assert d["overlaps"] == [] and d["off_canvas"] == [], d
    assert r.returncode == 0


def test_grc_load_and_save_changes_no_byte(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GRC_BLOCKS_PATH", str(ROOT / "grc"))
    monkeypatch.setenv("GR_CONF_GRC_LOCAL_BLOCKS_PATH", str(ROOT / "grc"))
    from gnuradio.grc.core.platform import Platform
    platform = Platform(version=gr.version(), version_parts=(gr.major_version(), gr.api_version(),
                                                             gr.minor_version()),
                        prefs=gr.prefs())
    platform.build_library()
    for path in FLOWGRAPHS:
        fg = platform.make_flow_graph(str(path))
        fg.rewrite()
        fg.validate()
        assert fg.is_valid(), (path.name, fg.get_error_messages())
        out = tmp_path / path.name
        platform.save_flow_graph(str(out), fg)
        assert out.read_bytes() == path.read_bytes(), f"{path.name}: save it with GRC (scripts/grc_layout.py layout)"
