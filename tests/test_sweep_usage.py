"""gdmcom sweep's usage errors: exit 2 with a message in the user's options, checked before
any work, and no empty results folder left behind (tiny / analytic models, 64 px images)."""

import csv

import pytest

from gr_gdmcom.cli import main


@pytest.fixture
def folder(tmp_path, image_folder):
    (tmp_path / "emptydir").mkdir()
    return image_folder({"astro.png": ("astronaut.png", (64, 64))})


BASE = ["--model", "tiny", "--device", "cpu", "--snr", "5", "--no-plots", "--no-progress", "--metrics", "none"]


@pytest.mark.parametrize("argv, message", [
    (["--images", "{tmp}/nope"], "error: no such image file or folder: "),
    (["--images", "{tmp}/emptydir"], "error: no images found in "),
    (["--methods", "proposed,foo"], "error: unknown method 'foo'"),
    (["--grid", "5,5"], "error: --grid entries are k,m,N"),
    (["--bcr", "1/192", "--reduce", "2"], "error: --bcr 1/192 and --reduce 2 disagree"),
    (["--methods", "sd_semcom", "--captions", "{tmp}/nope.json"], "error: cannot read captions file"),
    (["--methods", "digital", "--digital-mcs", "bogus"], "error: unknown MCS 'bogus'"),
    (["--methods", "proposed", "--digital-mcs", "bogus"], "error: unknown MCS 'bogus'"),  # was accepted
    (["--methods", "proposed_calibrated"], "error: method proposed_calibrated needs --calibration FILE"),
    # 13: said in the user's options, not 'reduce_method pool needs reduce in 1, 2, 4, 8, 16, got 3'
    (["--bcr", "1/288", "--reduce-method", "pool"],
     "error: --bcr 1/288 (--reduce 3) cannot be made with --reduce-method pool, which pools 2, 4, 8 or 16 values: "
     "--bcr 1/96, 1/192, 1/384, 1/768, 1/1536; or use --reduce-method dct or subset"),
    # 8: contradictory options, once accepted silently
    (["--methods", "proposed", "--grid", "5,5,15", "--steps", "10"],
     "error: --steps 10 would be ignored: each --grid setting k,m,N fixes its own N"),
    (["--methods", "digital", "--grid", "5,5,15"],
     "error: --grid sets the proposed method's k,m,N, but --methods digital has no proposed"),
    (["--jobs", "0"], "error: --jobs must be >= 1 (worker processes for the digital chain), got 0"),
    (["--threads", "-1"], "error: --threads must be 0 (torch's choice) or a positive number of threads, got -1"),
])
def test_usage_errors_exit_2_and_leave_no_folder(folder, tmp_path, capsys, argv, message):
    out = tmp_path / "out" / "x"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    images = [] if "--images" in argv else ["--images", str(folder)]
    rc = main(["sweep", *images, *argv, "--out", str(out), *BASE])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_steps_with_grid_warns_where_another_method_uses_it(folder, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    rc = main(["sweep", "--images", str(folder), "--methods", "proposed,random_noise", "--grid", "2,2,6",
               "--steps", "10", "--out", str(out), *BASE])
    assert rc == 0
    assert "--steps 10 applies to random_noise only: each --grid setting k,m,N fixes its own N" in caplog.text
    rows = {r["method"]: r for r in csv.DictReader(open(out / "rows.csv"))}
    assert rows["proposed"]["n_steps"] == "6" and rows["random_noise"]["n_steps"] == "10"


def test_a_calibration_of_another_model_is_refused_before_anything_runs(tmp_path, folder, capsys):
    """It was caught per image: a warning, error rows, exit 1, and the same again on every rerun."""
    from gr_gdmcom.codec.calibration import Calibration
    from gr_gdmcom.config import CodecConfig

    cal = Calibration(model="analytic", k=5, m=5, T=50, guidance=6.0, prompt=CodecConfig.prompt,
                      clean_end="model", inversion="ddim", inversion_iters=3, metric="mse", images=["a.png"],
                      rescale=True, fit_x=[0.0, 10.0, 20.0], fit_n=[30.0, 15.0, 10.0]).save(tmp_path / "cal.json")
    out = tmp_path / "out"
    argv = ["sweep", "--images", str(folder), "--methods", "proposed,proposed_calibrated", "--calibration", str(cal),
            "--out", str(out), *BASE]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (f"error: --calibration {cal}: calibration {cal} was measured for another setting: "
            "model='analytic' (here 'tiny')") in err
    assert not out.exists()
    # the same file with the model it was made for runs
    assert main([*argv[:-len(BASE)], *BASE, "--model", "analytic", "--dtype", "fp32"]) == 0
    assert {r["method"] for r in csv.DictReader(open(out / "rows.csv"))} == {"proposed", "proposed_calibrated"}
