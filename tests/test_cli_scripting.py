"""The command line as users script it: clean JSON on stdout, one vocabulary,
fast one-line errors, the demo script from any folder, README commands that parse."""

import json
import math
import os
import re
import shlex
import socket
import subprocess
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
GPU_OR_NETWORK = re.compile(r"\[(GPU|network)[^\]]*\]|\[not run by scripts/readme-check\.sh\]")


def readme_commands():
    """Every line of the README's fenced bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.strip())
    return lines


def test_every_readme_command_parses_and_names_files_that_exist():
    """Offline lines: gdmcom parses them and every path they name is in the repository
    (scripts/readme-check.sh runs them; this is the cheap half CI always does)."""
    parser = build_parser()
    checked = 0
    for line in readme_commands():
        if GPU_OR_NETWORK.search(line):
            continue
        words = shlex.split(line, comments=True)
        words = [w for w in words if w != "&"]
        if words[:1] == ["gdmcom"]:
            parser.parse_args(words[1:])  # SystemExit fails the test
        elif words[:2] == ["bash", "scripts/demo.sh"]:
            from gr_gdmcom.demo import build_parser as demo_parser

            demo_parser().parse_args(["link", *words[2:]])
        else:
            assert words[0] in (".", "bash"), line
        for w in words:
            if re.match(r"^(gr_gdmcom|scripts|flowgraphs|\.venv)/", w.split("=")[-1]) and not w.startswith("--"):
                path = ROOT / w
                assert path.exists() or path.parent.name == "bin", f"{line}: {w} does not exist"
            assert "kodim" not in w, line
        checked += 1
    assert checked >= 10


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
