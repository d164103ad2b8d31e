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
    for v in (-1, 0, 0.5, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 1000, 1001, 3314, 3315, 4096, 4097,
              65535, 65536):
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
    lines = [json.loads(line) for line in r.stdout.splitlines()]  # stdout: the JSON lines alone
    # one result line per image decoded, as the receivers print (the summary alone said no SNR estimate)
    assert [d["file"] for d in lines if "snr_est_db" in d] == [f"out/{name}/{files[0].name}"], r.stdout
    assert "summary" in lines[-1]


def test_impaired_link_with_the_receivers_front_end_impairments(compiled, tmp_path):
    """impaired_link --dc-offset -20 (blocks.add_const_cc after the channel: the receiver's LO leakage) at
    20 dB: the estimate held near 17 dB; with --lead 40000 (blocks.delay: the channel alone first) the
    sink measures the offset there and subtracts it (tones_notched 1), the estimate back within 1 dB.
    --iq-mag 1 --iq-phase 5 (channels.iqbal_gen, receiver model) on top, the same noise: the image (about
    21.6 dB under the signal after the noise, measured against the symbols sent in phy) is noise the
    estimate reports, 2.1 dB at 19.6 dB (1.5 .. 3 allowed); out of range, one line and exit 2 before the
    model loads."""
    got = {}
    for lead, iq in (("0", []), ("40000", []), ("40000", ["--iq-mag", "1", "--iq-phase", "5"])):
        r = subprocess.run([sys.executable, str(compiled / "impaired_link.py"), "--model", "tiny", "--snr-db", "20",
                            "--dc-offset", "-20", "--lead", lead, *iq, "--out-dir", f"o{lead}{len(iq)}"], env=_env(),
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = [json.loads(line) for line in r.stdout.splitlines()]
        got[lead, len(iq)] = ([d["snr_est_db"] for d in lines if "snr_est_db" in d],
                              lines[-1]["counters"]["tones_notched"])
    (est0,), notched0 = got["0", 0]
    (est1,), notched1 = got["40000", 0]
    (est_iq,), notched_iq = got["40000", 4]
    assert est0 < 17.5 and notched0 == 0 and abs(est1 - 20.0) < 1.0 and notched1 == 1, got
    assert 1.5 < est1 - est_iq < 3.0 and notched_iq == 1, got
    r = subprocess.run([sys.executable, str(compiled / "impaired_link.py"), "--iq-phase", "50"], env=_env(),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == ("gr_gdmcom: --iq-mag/--iq-phase (magnitude dB, phase degrees) must be "
                                              "within +-6 dB and +-45 degrees, got (0.0, 50.0)\n"), r.stderr


def test_generated_script_exits_2_when_nothing_was_sent(compiled, tmp_path):
    r = subprocess.run([sys.executable, str(compiled / "awgn_link.py"), "--images", "missing.png"], env=_env(),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "gr_gdmcom: no image was sent (exit status 2)" in r.stderr
    # GNU Radio's logger (C++, on file descriptor 1) goes to stderr; stdout holds the JSON lines alone
    assert r.stderr.count("image not found: missing.png") == 1
    assert r.stderr.count("none of the 1 image(s) could be sent") == 1
    assert [json.loads(line) for line in r.stdout.splitlines()][-1]["summary"], r.stdout


def _run_command(fg: Path) -> str:
    return yaml.safe_load(fg.read_text())["options"]["parameters"]["run_command"]


@pytest.mark.parametrize("fg", FLOWGRAPHS, ids=lambda p: p.name)
def test_grc_run_button_uses_the_checkouts_venv(fg, tmp_path):
    """GRC's Run executes the flowgraph's Run Command with ``{python}`` = the python GRC runs on;
    Debian's own gnuradio-companion runs on /usr/bin/python3, which has neither torch nor gr_gdmcom.
    The shipped flowgraphs run their script with the checkout's ``.venv/bin/python`` (found beside
    the script's folder) and fall back to ``{python}`` where there is none."""
    import shlex
    for with_venv in (True, False):
        root = tmp_path / ("with" if with_venv else "without")
        (root / "flowgraphs").mkdir(parents=True)
        script = root / "flowgraphs" / f"{fg.stem}.py"
        script.write_text("import sys; print(sys.argv[0], sys.executable)\n")
        venv_python = root / ".venv" / "bin" / "python"
        if with_venv:
            venv_python.parent.mkdir(parents=True)
            venv_python.symlink_to(sys.executable)
        fallback = tmp_path / "grc-python"
        if not fallback.exists():
            fallback.symlink_to(sys.executable)
        # as GRC's Executor does: format, shlex.split, Popen from the flowgraph's folder
        args = shlex.split(_run_command(fg).format(python=shlex.quote(str(fallback)),
                                                   filename=shlex.quote(str(script))))
        r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(script), str(venv_python if with_venv else fallback)]


def _import_block(fg_name: str, block: str) -> str:
    doc = yaml.safe_load((ROOT / "flowgraphs" / fg_name).read_text())
    return next(b for b in doc["blocks"] if b["name"] == block)["parameters"]["imports"]


def test_impaired_links_taps_without_gr_gdmcom_are_the_same(monkeypatch):
    """GRC evaluates a flowgraph's Import blocks in its own python when it loads the flowgraph;
    where gr_gdmcom cannot be imported (Debian's gnuradio-companion), impaired_link's Import
    defines its own multipath_taps. It must give the taps gr_gdmcom.link gives."""
    from gr_gdmcom.link import multipath_taps
    code = _import_block("impaired_link.grc", "import_taps")
    real, fallback = {}, {}
    exec(code, real)
    assert real["multipath_taps"] is multipath_taps
    monkeypatch.setitem(sys.modules, "gr_gdmcom.link", None)  # import gr_gdmcom.link -> ImportError
    exec(code, fallback)
    assert fallback["multipath_taps"] is not multipath_taps
    for taps, delay in (([1.0, 0.3j, -0.1], 0.0), ([1.0, 0.3j, -0.1], 0.37), ([1.0], 0.5), ([0.5, 0.5], -1.25)):
        assert fallback["multipath_taps"](taps, delay) == multipath_taps(taps, delay), (taps, delay)


def test_live_demos_display_check_loads_without_gr_gdmcom(monkeypatch):
    code = _import_block("live_demo.grc", "display_check")
    monkeypatch.setitem(sys.modules, "gr_gdmcom.blocks.flowgraph", None)
    ns = {}
    exec(code, ns)  # no ImportError: GRC draws the block (and what uses it) normally
    assert ns["require_display"]("live_demo.py") is None


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python")
def test_debians_own_grcc_compiles_every_flowgraph_the_same(compiled, tmp_path):
    """Debian's grcc runs on /usr/bin/python3 (no gr_gdmcom, no torch): every flowgraph compiles
    there too, to the same script as with the venv's python."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gnuradio.grc, importlib.util as u; "
                            "print(u.find_spec('gr_gdmcom') is None)"], capture_output=True, text=True, cwd=tmp_path,
                           env={k: v for k, v in _env().items() if k != "PYTHONPATH"})
    if probe.returncode != 0:
        pytest.skip("no GNU Radio for /usr/bin/python3")
    if probe.stdout.strip() != "True":
        pytest.skip("gr_gdmcom is importable from /usr/bin/python3 here")
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    r = subprocess.run(["/usr/bin/python3", "/usr/bin/grcc", "-o", str(tmp_path), *map(str, FLOWGRAPHS)],
                       env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for fg in FLOWGRAPHS:
        assert (tmp_path / f"{fg.stem}.py").read_text() == (compiled / f"{fg.stem}.py").read_text(), fg.name
