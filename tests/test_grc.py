"""GRC integration: block YAML matches the Python classes; every flowgraph compiles with grcc and runs."""

import inspect
import json
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
    env["GRC_BLOCKS_PATH"] = env["GR_CONF_GRC_LOCAL_BLOCKS_PATH"] = str(GRC)
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
    make = next(line.strip() for line in doc["templates"]["make"].splitlines() if line.strip().startswith("gdmcom."))
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


def _codec_ok(**kw):
    from gr_gdmcom.config import CodecConfig
    try:
        CodecConfig(**kw).validate()
        return True
    except ValueError:
        return False


def _frame_ok(**kw):
    try:
        FrameConfig(**kw)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("pid", sorted(grc_yaml.ASSERTS))
def test_asserts_agree_with_the_configs_validation(pid):
    """A GRC assert never rejects a setting the config accepts; the PHY's asserts reject exactly what
    FrameConfig rejects (each parameter varied alone, the others at their defaults)."""
    frame = pid in FrameConfig.__dataclass_fields__
    defaults = {"T": 50, "k": 5, "m": 5, **{f: FrameConfig.__dataclass_fields__[f].default for f in
                                             FrameConfig.__dataclass_fields__}}
    for v in (-1, 0, 0.5, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 1000, 1001, 4096, 4097, 65535, 65536):
        if frame and isinstance(defaults[pid], int) and isinstance(v, float):
            continue
        ns = dict(defaults, **{pid: v})
        granted = eval(grc_yaml.ASSERTS[pid], {}, ns)  # noqa: S307 - our own table
        valid = _frame_ok(**{pid: v}) if frame else _codec_ok(**{pid: v})
        assert granted or not valid, f"{pid}={v}: valid, but the GRC assert rejects it"
        if frame:
            assert granted == valid, f"{pid}={v}: assert {granted}, FrameConfig {valid}"


def test_block_faces_show_at_most_five_parameters():
    for name, b in grc_yaml.BLOCKS.items():
        doc = yaml.safe_load((GRC / f"gr_gdmcom_{name}.block.yml").read_text())
        shown = [p["id"] for p in doc["parameters"] if p.get("hide", "none") == "none"]
        assert 2 <= len(shown) <= 5 and shown == [p[0] for p in b["params"] if p[0] in b["face"]], (name, shown)


@pytest.mark.parametrize("fg", FLOWGRAPHS, ids=lambda p: p.name)
def test_flowgraphs_frame_settings_are_the_blocks_defaults(fg):
    """A burst-format or receiver setting typed into a flowgraph as a number is the block's
    default (a variable, e.g. ``sps``, is the flowgraph's own knob): the flowgraphs are saved
    with every parameter, so a default that improved (the tracker's ``phase_window`` 32 -> 512)
    stayed at its old value in all seven receivers until this test."""
    frame = set(FrameConfig.__dataclass_fields__)
    defaults = {}
    for f in GRC.glob("*.block.yml"):
        doc = yaml.safe_load(f.read_text())
        defaults[doc["id"]] = {p["id"]: str(p.get("default")) for p in doc["parameters"]}
    stale = []
    for b in yaml.safe_load(fg.read_text())["blocks"]:
        for pid, value in b["parameters"].items() if b["id"] in defaults else ():
            literal = re.fullmatch(r"[-+0-9.eE]+|True|False", str(value))
            if pid in frame and literal and str(value) != defaults[b["id"]][pid]:
                stale.append((b["name"], pid, value, defaults[b["id"]][pid]))
    assert not stale, stale


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


@pytest.mark.parametrize("name,extra", [("awgn_link", []), ("impaired_link", ["--fading", "1e-4"])])
def test_generated_link_scripts_run_with_their_defaults_from_any_folder(compiled, tmp_path, name, extra):
    """What GRC's Run button does: the generated script, no options (impaired_link: fading on), run from the
    flowgraph's folder (here an empty one: the bundled image is found through the package, the model is offline)."""
    r = subprocess.run([sys.executable, str(compiled / f"{name}.py"), *extra], env=_env(), capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    files = list((tmp_path / "out" / name).glob("*.png"))  # the default output folder, relative to the cwd
    assert len(files) == 1
    from PIL import Image
    from gr_gdmcom.pipeline import package_image
    assert Image.open(files[0]).size == Image.open(package_image("astronaut.png")).size
    summary = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"summary"')]
    assert summary and summary[0]["images_sent"] == 1 and summary[0]["decoded"] == 1


def test_generated_script_exits_2_when_nothing_was_sent(compiled, tmp_path):
    r = subprocess.run([sys.executable, str(compiled / "awgn_link.py"), "--images", "missing.png"], env=_env(),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "gr_gdmcom: no image was sent (exit status 2)" in r.stderr
    log = r.stdout + r.stderr  # (GNU Radio's logger writes to stdout)
    assert log.count("image not found: missing.png") == 1
    assert log.count("none of the 1 image(s) could be sent") == 1
