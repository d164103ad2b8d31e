"""GRC integration: block YAML matches the Python classes; every flowgraph compiles with grcc and runs."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

gr = pytest.importorskip("gnuradio.gr")
yaml = pytest.importorskip("yaml")

from gr_gdmcom.blocks import grc_yaml  # noqa: E402
from gr_gdmcom.phy import FrameConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GRC = ROOT / "grc"
FLOWGRAPHS = sorted((ROOT / "flowgraphs").glob("*.grc"))
pytestmark = pytest.mark.gnuradio


def _env():
    env = dict(os.environ)
    env["GRC_BLOCKS_PATH"] = str(GRC)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def test_yaml_files_are_generated_from_the_table(tmp_path):
    written = grc_yaml.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in GRC.glob("gr_gdmcom_*.block.yml"))
    for p in written:
        assert p.read_text() == (GRC / p.name).read_text(), f"{p.name} is stale: python -m gr_gdmcom.blocks.grc_yaml grc/"


@pytest.mark.parametrize("path", sorted(GRC.glob("*.block.yml")), ids=lambda p: p.name)
def test_block_yaml_matches_python_class(path):
    doc = yaml.safe_load(path.read_text())
    ns = {}
    exec(doc["templates"]["imports"], ns)  # noqa: S102 - our own YAML
    make = doc["templates"]["make"]
    m = re.match(r"(\w+)\.(\w+)\((.*)\)$", make)
    assert m, make
    assert m.group(1) != "blocks", "'blocks' would shadow gnuradio.blocks in generated scripts"
    cls = getattr(ns[m.group(1)], m.group(2))
    assert doc["id"] == f"gr_gdmcom_{m.group(2)}"
    assert doc["category"].startswith("[GDM-COM]/")
    sig = inspect.signature(cls.__init__)
    accepts_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    frame_fields = set(FrameConfig.__dataclass_fields__)
    params = {p["id"]: p for p in doc["parameters"]}
    for pid in re.findall(r"(\w+)=\$\{(\w+)\}", m.group(3)):
        assert pid[0] == pid[1] and pid[0] in params
        assert pid[0] in sig.parameters or (accepts_kw and pid[0] in frame_fields), f"{cls.__name__} lacks {pid[0]}"
    # defaults in YAML equal the Python defaults
    for pid, p in params.items():
        if pid in sig.parameters and sig.parameters[pid].default is not inspect.Parameter.empty:
            assert eval(p["default"]) == sig.parameters[pid].default, pid  # noqa: S307
        elif pid in frame_fields:
            assert eval(p["default"]) == FrameConfig.__dataclass_fields__[pid].default, pid  # noqa: S307
    for cb in doc["templates"].get("callbacks", []):
        name = cb.split("(")[0]
        assert callable(getattr(cls, name, None)), f"callback {name} missing on {cls.__name__}"
    # every parameter is documented
    for pid in params:
        assert f"({pid})" in doc["documentation"]


@pytest.fixture(scope="module")
def compiled(grcc_build):
    return grcc_build


@pytest.mark.parametrize("fg", FLOWGRAPHS, ids=lambda p: p.name)
def test_every_flowgraph_compiles(compiled, fg):
    script = compiled / f"{fg.stem}.py"
    assert script.exists()
    # the generated script imports cleanly with the venv's python
    r = subprocess.run([sys.executable, str(script), "--help"], env=_env(), capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name,extra", [("awgn_link", []), ("impaired_link", ["--cfo", "0.004", "--fading", "1e-4"])])
def test_generated_link_scripts_run_headless(compiled, tmp_path, name, extra):
    out = tmp_path / "out"
    img = ROOT / "gr_gdmcom" / "data" / "coffee.png"
    r = subprocess.run([sys.executable, str(compiled / f"{name}.py"), "--snr-db", "15", "--images", str(img),
                        "--model", "tiny", "--out-dir", str(out), *extra],
                       env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    files = list(out.glob("*.png"))
    assert len(files) == 1
    from PIL import Image
    assert Image.open(files[0]).size == Image.open(img).size
