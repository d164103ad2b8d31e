"""The command line as users script it: clean JSON on stdout, one vocabulary,
fast one-line errors, the demo script from any folder, README commands that parse and run."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gr_gdmcom.cli import build_parser, main
from gr_gdmcom.codec.schedule import select_steps

ROOT = Path(__file__).resolve().parent.parent


def test_demo_from_another_folder_prints_only_json_and_resolves_paths_there(tmp_path, small):
    """scripts/demo.sh run from another folder, with `--opt=value` forms: stdout is JSON lines
    although GNU Radio logs (to stderr), paths are the user's, the missing image is
    reported once, and each row's N, power and s_tot2 agree with the scheduler."""
    Image.fromarray(small).save(tmp_path / "my.png")
    env = dict(os.environ, GDMCOM_SETUP="0", GRC_BLOCKS_PATH=str(ROOT / "grc"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--image", "my.png", "gone.png", "--snr=15",
                        "--out=x", "--device=cpu", "--threads", "1", "--model=tiny"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]  # one image missing, the other decoded
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # every stdout line is JSON
    assert "gdmcom_semantic_sink :info: image 0 decoded" in r.stderr  # GNU Radio's logger went to stderr
    gone = [line for line in r.stderr.splitlines() if "gone.png" in line]  # reported once, by the source's pipeline
    assert len(gone) == 1 and gone[0].startswith(
        "WARNING gr_gdmcom.pipeline: source: image gone.png not sent: image not found: gone.png (relative paths "
        f"start from the working directory {tmp_path}"), gone
    assert [x["image"] for x in rows] == ["my", "gone"]
    assert rows[1]["error"].startswith("not sent: image not found: gone.png (relative paths start from")
    row = rows[0]
    assert row["snr_db"] == 15.0 and (tmp_path / "x" / "snr15" / "my.png").is_file()
    assert row["output"] == "x/snr15/my.png"
    assert row["power"] == pytest.approx(1 / row["alpha"] ** 2, rel=1e-5) and row["power"] < 0.95  # tiny, means removed: P ~ 0.86 (~3 with them)
    from gr_gdmcom.demo import DEMO_DEFAULTS  # the demo's k = 10, m = 0

    ref = select_steps(row["snr_est_db"], k=DEMO_DEFAULTS["k"], m=DEMO_DEFAULTS["m"], T=50, power=row["power"])
    assert row["n_steps"] == ref.n_steps and row["s_tot2"] == pytest.approx(ref.s_tot2, rel=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, message", [
    (["--model", "tinyy"], "error: --model 'tinyy': not a built-in model name ("),
    (["--model", "/nonexistent/sd15"], "error: --model '/nonexistent/sd15': no such folder (/nonexistent/sd15 "
                                       "does not exist); choose 'patch-gmm' (offline prior of natural images), 'tiny'"),
    (["--model", "tiny", "--server", "tcp://127.0.0.1:{port}"],
     "error: no inference server answers at tcp://127.0.0.1:{port} (status request, 3000 ms): start one with "
     "`gdmcom serve --bind tcp://127.0.0.1:{port}` or use --server local"),
    (["--model", "tiny", "--images", "nothing/*.png"], "error: no images found in nothing/*.png"),
])
@pytest.mark.parametrize("cmd", ["simulate", "link"])
def test_unusable_model_server_or_images_fail_with_one_line(cmd, argv, message, tmp_path, capsys):
    port = _free_port()
    argv = [a.format(port=port) for a in argv]
    base = ["--images", str(ROOT / "gr_gdmcom" / "data" / "astronaut.png")] if "--images" not in argv else []
    rc = main([cmd, *base, "--snr", "5", "--out", str(tmp_path / "o"), *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith(message.format(port=port)) and err.count("\n") == 1, err


def test_missing_hub_model_offline_names_the_cache(monkeypatch):
    from gr_gdmcom.codec import ModelLoadError
    from gr_gdmcom.codec.models import check_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"^--model 'nobody/no-such-model': not a local folder, and as a "
                                             r"Hugging Face id it is not in the hub cache while HF_HUB_OFFLINE"):
        check_model("nobody/no-such-model")
    check_model("tiny"), check_model("analytic:K=4")  # built-in names pass without looking anywhere


def test_one_vocabulary_and_real_defaults_in_help(capsys):
    parser = build_parser()
    for cmd in ("simulate", "link", "sweep"):
        a = parser.parse_args([cmd, "--image", "a.png", "b/", "c/*.png", "--snr", "5", "--out", "o"])
        b = parser.parse_args([cmd, "--images", "a.png", "b/", "c/*.png", "--snr", "5", "--out", "o"])
        assert a.images == b.images == ["a.png", "b/", "c/*.png"] and a.threads == 0 and a.seed == 0
    for cmd in ("simulate", "link"):
        assert parser.parse_args([cmd, "--images", "a", "--snr", "5", "--out", "o"]).server == "local"
    assert parser.parse_args(["serve", "--threads", "2"]).torch_threads == 2
    link = parser.parse_args(["link", "--images", "a", "--snr", "5", "--out", "o", "--preamble-seg=9",
                              "--no-scramble"])
    from gr_gdmcom.config import frame_config_from_args
    from gr_gdmcom.phy import FrameConfig

    assert frame_config_from_args(link) == FrameConfig(preamble_seg=9, scramble=False)
    assert main([]) == 0  # `gdmcom` alone: the help, every command listed
    assert re.findall(r"^    (simulate|steps|link|sweep) ", capsys.readouterr().out, re.M) == [
        "simulate", "steps", "link", "sweep"]
    with pytest.raises(SystemExit):
        main(["link", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sps SPS samples per symbol (1 = no pulse shaping: symbol = sample). [default=2]" in text
    assert "(default:" not in text and text.count("[default=None]") == 1  # --steps: None = the rule chooses N
    with pytest.raises(SystemExit):
        main(["--version"])
    assert re.fullmatch(r"gdmcom \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_steps_uses_the_config_check(capsys):
    assert main(["steps", "--snr", "5", "--k", "40", "--m", "20"]) == 2
    assert capsys.readouterr().err == "error: k + m must not exceed T: k=40, m=20, T=50\n"
    assert main(["steps", "--snr", "5", "10", "20", "--power", "3.2"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        f"{s:g}": select_steps(s, power=3.2).n_steps for s in (5, 10, 20)}


# --------------------------------------------------------------------------- README
def readme_check():
    """scripts/readme_check.py (what CI runs after the tests) as a module."""
    import importlib.util

    if "readme_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("readme_check", ROOT / "scripts" / "readme_check.py")
        sys.modules["readme_check"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["readme_check"]


def test_every_readme_command_parses_and_names_files_that_exist():
    """Offline lines: gdmcom parses them and every path they name is in the repository
    (scripts/readme-check.sh, run by scripts/test.sh after the tests, runs them)."""
    parser = build_parser()
    checked = 0
    for cmd in readme_check().commands((ROOT / "README.md").read_text()):
        if cmd.skip or cmd.kind != "bash":
            continue
        words = [w for w in cmd.words if w != "&"]
        if words[:1] == ["gdmcom"]:
            parser.parse_args(words[1:])  # SystemExit fails the test
        elif words[:2] == ["bash", "scripts/demo.sh"]:
            from gr_gdmcom.demo import build_parser as demo_parser

            demo_parser().parse_args(["link", *words[2:]])
        else:
            assert words[0] == "bash", cmd.text
        for w in words:
            if re.match(r"^(gr_gdmcom|scripts|flowgraphs|\.venv)/", w.split("=")[-1]) and not w.startswith("--"):
                path = ROOT / w
                assert path.exists() or path.parent.name == "bin", f"{cmd.text}: {w} does not exist"
            assert "kodim" not in w, cmd.text
        checked += 1
    assert checked >= 10


FAKE_README = """Some prose with `gdmcom steps` inline (not fenced: not run).

```bash
. .venv/bin/activate
test "$VIRTUAL_ENV" -ef .venv && test -f README.md && echo shared   # from the copy's root
false   # fails
bash scripts/none.sh --big   # needs weights [GPU]
bash scripts/none.sh   # [network]
sleep 60
python3 -c "print('listening', flush=True); import time; time.sleep(600)" &  # a service
```

```bash
true
true  # said twice, run once
```

```python
import sys
sys.exit(3)
```
"""


def test_readme_check_runs_each_line_and_fails_with_the_line_shown(tmp_path):
    """The runner on a small README: activation applies to later lines of its block, lines run
    from the copy's root, a failing line, a timed-out line and a failing python block each fail the
    check with the line shown; tagged lines are counted and skipped; a service must stay up."""
    readme = tmp_path / "README.md"
    readme.write_text(FAKE_README)
    mod = readme_check()
    cmds = mod.commands(FAKE_README)
    assert cmds[0].words == ["test", "$VIRTUAL_ENV", "-ef", ".venv", "&&", "test", "-f", "README.md", "&&",
                             "echo", "shared"]
    assert [c.skip for c in cmds] == [None, None, "[GPU]", "[network]", None, None, None, None, None]
    assert [c.background for c in cmds].index(True) == 5 and cmds[7].same_as == 6
    assert cmds[0].prefix == [". .venv/bin/activate"] and cmds[6].prefix == [] and cmds[8].kind == "python"
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "readme_check.py"),
                        "--readme", str(readme), "--timeout", "10", "--jobs", "2"],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "9 fenced commands" in out and "6 to run (2 at once), 1 repeated, 2 marked and skipped" in out
    assert re.search(r"^ok .*echo shared   # from the copy's root$", out, re.M), out
    assert "       | shared" not in out  # output of lines that pass is not shown
    assert re.search(r"^FAIL .*  false   # fails    \(exit status 1\)$", out, re.M), out
    assert re.search(r"^FAIL .*  sleep 60    \(timed out after 10 s\)$", out, re.M), out
    assert re.search(r"^FAIL .*python block:\nimport sys\nsys.exit\(3\)    \(exit status 3\)$", out, re.M), out
    assert re.search(r"^up .*a service\n       \| listening$", out, re.M), out
    assert re.search(r"^ok .*time.sleep\(600\)\" &  # a service$", out, re.M), out
    assert len(re.findall(r"^ok .*  true", out, re.M)) == 1
    assert re.search(r"^skip \[GPU\] +bash scripts/none.sh --big", out, re.M)
    assert "readme-check: 3 ok, 3 failed, 2 skipped" in out
    assert "readme-check: FAILED: false   # fails\nreadme-check: FAILED: " in out
    assert "readme-check: FAILED: python block (import sys ...)\n" in out


def test_simulate_through_a_backend_reports_power_stages_and_the_applied_snr(codec, small):
    """`simulate --server` goes through a Backend one request at a time: same rows as the
    codec's batches; rows keep both sides' inversion times and the Rayleigh SNR applied."""
    from gr_gdmcom.bridge import LocalBackend
    from gr_gdmcom.phy import rayleigh_block
    from gr_gdmcom.sim import BackendCodec, channel_rng, simulate

    direct = list(simulate(codec, [small], [8.0], channel="rayleigh", names=["s"]))
    remote = list(simulate(BackendCodec(LocalBackend(codec.config, codec=codec), codec.config), [small], [8.0],
                           channel="rayleigh", names=["s"]))
    (row,), (row2,) = direct, remote
    for key in ("psnr", "n_steps", "power", "alpha", "s_tot2", "snr_applied_db"):
        assert row[key] == row2[key], key
    # the applied SNR: -10 log10 of the mean noise variance after zero forcing, the same draw
    n = row["symbols"]
    _, nvar = rayleigh_block(np.ones(n, np.complex64), 8.0, channel_rng(codec.config.seed, "s", 8.0))
    assert row["snr_applied_db"] == pytest.approx(-10 * math.log10(np.mean(nvar)), abs=1e-4)
    assert row["snr_applied_db"] != 8.0 and row["snr_db"] == 8.0
    ref = select_steps(row["snr_applied_db"], power=row["power"])
    assert row["n_steps"] == ref.n_steps and row["s_tot2"] == pytest.approx(ref.s_tot2, rel=1e-4)
    assert {"tx_vae_encode", "tx_inversion", "rx_inversion", "rx_sampling", "rx_vae_decode"} <= set(row["stages"])


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`gdmcom ... | head -1`: the reader closes the pipe before the JSON is written; that was a
    BrokenPipeError traceback, now exit status 141 (128 + SIGPIPE) and nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "gr_gdmcom.cli", "steps", "--snr", *map(str, range(0, 21))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the interpreter has even imported the package
    err = p.stderr.read().decode()
    assert (p.wait(timeout=60), err) == (141, "")


def test_result_lines_are_json_with_nested_nan_and_inf_as_strings(capsys):
    """A row with a NaN or inf inside a nested value (a record's list, a dict of figures) printed
    the bare word NaN/Infinity there, which is not JSON (jq refuses the line); every level is
    cleaned now, as the flowgraph scripts' lines are."""
    import json
    import math

    from gr_gdmcom.cli import emit

    emit({"psnr": math.inf, "record": {"snr_db": [1.0, math.nan], "alpha": -math.inf}, "name": "a"})
    line = capsys.readouterr().out.strip()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {line}")) == {
        "psnr": "inf", "record": {"snr_db": [1.0, "nan"], "alpha": "-inf"}, "name": "a"}


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work():
    """As root, os.access says /proc is writable: `--out-dir /proc/x` passed the check and the
    run failed after decoding every image (helper-59's walkthrough). The check now makes a file."""
    from gr_gdmcom.cli import check_out

    with pytest.raises(ValueError, match=r"^cannot write to the output folder /proc/gdmcom-x \(in /proc\)$"):
        check_out("/proc/gdmcom-x", folder=True, create=False)
