import json

import numpy as np
import pytest
from PIL import Image

from gr_gdmcom.cli import main


def test_simulate_prints_rows_and_writes_images(tmp_path, small, capsys):
    img = tmp_path / "astro.png"
    Image.fromarray(small).save(img)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc = main(["simulate", "--image", str(img), str(bad), "--snr", "5", "20", "--model", "tiny", "--device", "cpu",
               "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert rc == 1  # one image failed, the other completed
    errors = [r for r in rows if "error" in r]
    good = [r for r in rows if "error" not in r]
    assert len(errors) == 1 and errors[0]["image"] == "bad" and "cannot read image" in errors[0]["error"]
    assert [r["snr_db"] for r in good] == [5.0, 20.0]
    need = {"image", "snr_db", "n_steps", "k", "m", "T", "rule", "symbols", "bcr", "psnr", "ms_ssim", "unet_calls",
            "seconds"}
    for r in good:
        assert need <= set(r)
        assert r["unet_calls"] == r["k"] + r["m"] + r["n_steps"]
        assert r["symbols"] == 128 and abs(r["bcr"] - 1 / 96) < 1e-12
        out = tmp_path / "out" / f"astro_snr{r['snr_db']:g}.png"
        assert np.asarray(Image.open(out)).shape == small.shape
        assert r["sheet"] == str(tmp_path / "out" / "astro_snrs.png")
    assert good[0]["n_steps"] > good[1]["n_steps"]
    # the picture to open first: the original, then each SNR's decode (sim.contact_sheet)
    sheet = np.asarray(Image.open(good[0]["sheet"]))
    h = round(small.shape[0] * 256 / small.shape[1])
    assert sheet.shape[1] == 3 * (256 + 6) + 6 and sheet.shape[0] > h + 12
    for j, tile in enumerate([small] + [np.asarray(Image.open(tmp_path / "out" / f"astro_snr{s}.png")) for s in (5, 20)]):
        want = np.asarray(Image.fromarray(tile).resize((256, h), Image.NEAREST), np.float64)
        got = sheet[6:6 + h, 6 + j * 262: 6 + j * 262 + 256].astype(np.float64)
        assert np.abs(got - want).mean() < 1.0, j
    assert f"pictures (original, then each SNR): {good[0]['sheet']}\n" in captured.err


def test_simulate_rejects_bad_config(tmp_path, capsys):
    rc = main(["simulate", "--image", "x.png", "--snr", "5", "--k", "40", "--m", "20", "--model", "tiny",
               "--out", str(tmp_path)])
    assert rc == 2
    assert "k + m must not exceed T: k=40, m=20, T=50" in capsys.readouterr().err


def _tiny_png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_bad_numbers_and_outputs_are_refused_before_the_model_loads(tmp_path, capsys):
    """NaN/inf, an impossible channel or an output that cannot be written: one line, exit 2,
    before any model is loaded or image sent (a nan clock ratio used to kill `gdmcom link`
    with SIGFPE; an unwritable --out gave a traceback after the work)."""
    img = _tiny_png(tmp_path / "a.png")
    base = ["--image", str(img), "--snr", "10", "--model", "no-such-model"]  # loading it would fail otherwise
    for argv, message in [
        (["link", *base, "--out", str(tmp_path / "o"), "--epsilon", "nan"],
         "argument --epsilon: must be a finite number, got 'nan'"),
        (["simulate", *base, "--out", str(tmp_path / "o"), "--guidance", "inf"],
         "argument --guidance: must be a finite number, got 'inf'"),
        (["link", *base, "--out", str(tmp_path / "o"), "--taps", "1", "nanj"],
         "argument --taps: must be a finite number, got 'nanj'"),
        (["steps", "--snr", "nan"], "argument --snr: must be a finite number, got 'nan'"),
        # beyond the codec's -100..100 dB a sweep ran its digital chain, then failed every diffusion row
        (["simulate", "--image", str(img), "--snr", "-150", "--model", "no-such-model", "--out", str(tmp_path / "o")],
         "argument --snr: must be within -100..100 dB, got -150"),
        (["sweep", "--images", str(img), "--snr", "5", "101", "--out", str(tmp_path / "o")],
         "argument --snr: must be within -100..100 dB, got 101"),
    ]:
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's own refusal
            rc = exc.code
        assert rc == 2 and message in capsys.readouterr().err, argv
    for argv, message in [
        (["link", *base, "--out", str(tmp_path / "o"), "--epsilon", "0"],
         "error: epsilon (sample-clock ratio) must be in 0.5 .. 2 (1 = none), got 0.0"),
        (["link", *base, "--out", str(tmp_path / "o"), "--channel", "awgn", "--cfo", "0.01"],
         "error: cfo, epsilon, delay and taps need the channel model (--channel model"),
        (["link", *base, "--out", str(tmp_path / "o"), "--rician-k", "3"],
         "error: rician_k (--rician-k) is the K factor of a fading channel: give fading (--fading) too"),
        (["link", *base, "--out", str(tmp_path / "o"), "--fading", "1e-4", "--selective"],
         "error: selective (--selective) makes each of several taps fade on its own: give fading (--fading) and "
         "two or more taps (--taps)"),
        (["link", *base, "--out", str(img)], f"error: --out {img} is a file; give a folder"),
        (["simulate", "--image", str(img), "--snr", "10", "--model", "tiny", "--out", "/proc/gdmcom-x"],
         "error: cannot write to the output folder /proc/gdmcom-x (in /proc)"),
        (["simulate", *base, "--out", str(tmp_path / "o"), "--seed=-1"], "error: seed must be in 0..2**63-1, got -1"),
        (["steps", "--snr", "5", "--power", "0"], "error: --power (the latent power P = 1/alpha^2) must be > 0, got 0"),
        (["link", *base, "--out", str(tmp_path / "o"), "--cfo", "1000"],
         "error: cfo is normalised, cycles/sample: |cfo| < 0.5, got 1000.0"),
        # (beyond 4 samples the windowed sinc held only its round-off: a random multipath channel, 5.6 dB at 10)
        (["link", *base, "--out", str(tmp_path / "o"), "--delay", "20"],
         "error: delay is a fractional timing offset: |delay| <= 4 samples, got 20.0 (a longer path: taps with "
         "leading zeros)"),
        (["link", *base, "--out", str(tmp_path / "o"), "--tx-clip", "0.5"],
         "error: FrameConfig: tx_clip must be 0 (off) or >= 1 (got tx_clip=0.5; option --tx-clip)"),
        (["simulate", *base, "--out", str(tmp_path / "o"), "--threads", "-1"],
         "error: --threads must be 0 (torch's choice) or a positive number of threads, got -1"),
        (["simulate", "--image", str(img), "--snr", "10", "--model", "tiny", "--out", str(tmp_path / "o"),
          "--device", "gpu0"], "error: unknown device 'gpu0'; use auto, cpu, cuda, cuda:N or mps"),
        (["simulate", "--image", str(img), "--snr", "10", "--model", "tiny", "--out", str(tmp_path / "o"),
          "--device", "mps"], "error: device 'mps' requested but this torch has no MPS (Apple GPU) support here; "
                              "use --device cpu (or auto)."),
        (["validate", "--quick", "--real-images", "--rate", "--out", str(tmp_path / "v.md")],
         "error: --real-images and --rate are two separate runs: give one of them"),
        (["validate", "--quick", "--bcr", "1/384", "--out", str(tmp_path / "v.md")],
         "error: --bcr is an option of --rate"),
        (["validate", "--quick", "--out", str(tmp_path / "v.md"), "--json", "/proc/gdmcom-x/v.json"],
         "error: cannot create the output folder /proc/gdmcom-x"),
        # a mistyped --model in a sweep made the folder, an error row per diffusion row and exit 1
        # (and the corrected command was then refused: another configuration in that folder)
        (["sweep", "--images", str(img), "--snr", "5", "--methods", "proposed,digital", "--metrics", "none",
          "--model", "no-such-model", "--out", str(tmp_path / "o")],
         "error: --model 'no-such-model': not a built-in model name"),
    ]:
        assert main(argv) == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "o").exists()  # a refused run leaves no empty --out behind


def test_two_images_of_one_name_are_kept_apart(tmp_path, capsys):
    """a.png in two folders: distinct rows and files (the second's decode used to overwrite the
    first's and be scored against it), each scored as it is when sent alone."""
    a, b = _tiny_png(tmp_path / "a.png", 1), _tiny_png(tmp_path / "b" / "a.png", 2)
    common = ["--snr", "20", "--model", "tiny", "--device", "cpu"]
    assert main(["simulate", "--image", str(a), str(b), *common, "--out", str(tmp_path / "both")]) == 0
    both = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in both] == ["a.png", "a.png~2"]
    assert (tmp_path / "both" / "a.png_snr20.png").is_file() and (tmp_path / "both" / "a.png~2_snr20.png").is_file()
    assert both[0]["psnr"] != both[1]["psnr"]
    # one file named twice (its folder and itself, two spellings) is one image: one row, one label
    assert main(["simulate", "--image", str(tmp_path / "b"), str(b), f"{tmp_path}/b/./a.png", *common,
                 "--out", str(tmp_path / "once")]) == 0
    assert [json.loads(line)["image"] for line in capsys.readouterr().out.splitlines()] == ["a"]


def test_steps_takes_a_calibrated_rule(tmp_path, capsys):
    from gr_gdmcom.codec.calibration import Calibration
    from gr_gdmcom.config import CodecConfig

    cal = Calibration(model="analytic", k=5, m=5, T=50, guidance=6.0, prompt=CodecConfig.prompt, clean_end="model",
                      inversion="ddim", inversion_iters=3, metric="mse", images=["a.png"], rescale=True,
                      fit_x=[0.0, 10.0, 20.0], fit_n=[30.0, 15.0, 10.0])
    path = cal.save(tmp_path / "cal.json")
    assert main(["steps", "--snr", "0", "5", "20", "--rule", f"calibrated:{path}"]) == 0
    assert json.loads(capsys.readouterr().out) == {"0": 30, "5": 22, "20": 10}  # 22.5 rounds to even
    assert main(["steps", "--snr", "5", "--k", "3", "--rule", f"calibrated:{path}"]) == 2
    assert f"calibration {path} was measured for k=5, m=5, T=50; give --k 5 --m 5 --T 50" in capsys.readouterr().err


def test_keys_refuses_bad_names_before_writing_anything(tmp_path, capsys):
    """A name with a path, a name given twice or an --out that is a file: exit 2 with nothing
    written (the folder used to be made, and the first of two equal names written, first)."""
    out = tmp_path / "keys"
    for argv, message in [
        (["keys", "--out", str(out), "--name", "ok", "../evil"], "error: key name '../evil' must be letters"),
        (["keys", "--out", str(out), "--name", "s", "s"], "error: --name lists a name twice: s s"),
    ]:
        assert main(argv) == 2 and message in capsys.readouterr().err, argv
        assert not out.exists()
    img = _tiny_png(tmp_path / "a.png")
    assert main(["keys", "--out", str(img), "--name", "s"]) == 2
    assert f"error: --out {img} is a file; give a folder" in capsys.readouterr().err
    assert main(["keys", "--out", str(out), "--name", "s", "t"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s.key", "s.key_secret", "t.key", "t.key_secret"]


def test_ctrl_c_where_a_command_does_not_handle_it_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C while a model loads or Ray starts ended in a 25-line traceback (and status -2)."""
    import gr_gdmcom.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_simulate", interrupted)
    try:
        rc = main(["simulate", "--model", "tiny", "--images", "x.png", "--snr", "5", "--out", "o"])
    except KeyboardInterrupt:  # (caught here: pytest would take it for the user's and stop the run)
        pytest.fail("KeyboardInterrupt escaped gdmcom's main")
    assert rc == 130
    err = capsys.readouterr().err
    assert err == "interrupted\n"


def test_a_contact_sheet_marks_what_was_not_decoded(tmp_path):
    from gr_gdmcom.sim import contact_sheet, sheet_label

    original = np.zeros((32, 64, 3), np.uint8)
    original[:, 32:] = 255
    decoded = np.full((32, 64, 3), 200, np.uint8)
    assert sheet_label(5.0, dict(snr_est_db=5.23, n_steps=17, psnr=18.666, ms_ssim=0.7934)) == \
        "5 dB (est. 5.2), N = 17\nPSNR 18.67 dB\nMS-SSIM 0.793"
    assert sheet_label(-2.5, dict(error="lost")) == "-2.5 dB\nnot decoded"
    path = contact_sheet(original, [("a", decoded), ("b\nnot decoded", None)], tmp_path / "s" / "x_snrs.png", 128)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape[1] == 3 * (128 + 6) + 6
    assert (sheet[6:70, 6:70] == 0).all() and (sheet[6:70, 70:134] == 255).all()   # the original, scaled 2x
    assert (sheet[6:70, 140:268] == 200).all()                                     # the decoded tile
    grey = sheet[6:70, 274:402]
    assert np.count_nonzero((grey == 128).all(-1)) > 0.8 * 64 * 128 and (grey != 128).any()  # grey, with its text


def test_a_reduce_method_without_a_reduction_is_warned_about(caplog):
    """--reduce-method dct alone sent the whole latent and said nothing."""
    import argparse

    from gr_gdmcom.config import add_codec_args, codec_config_from_args

    parser = argparse.ArgumentParser()
    add_codec_args(parser)
    for argv, warned in ((["--reduce-method", "dct"], True), (["--reduce-method", "dct", "--bcr", "1/384"], False),
                         (["--reduce", "2"], False), ([], False)):
        caplog.clear()
        args = parser.parse_args(argv)
        args.given = frozenset(a[2:].replace("-", "_") for a in argv if a.startswith("--"))
        cfg = codec_config_from_args(args)
        said = "--reduce-method dct does nothing without --reduce (or --bcr) above 1: the whole latent is sent"
        assert (said in caplog.text) is warned, (argv, caplog.text)
        assert cfg.reduce == (4 if "--bcr" in argv else 2 if "--reduce" in argv else 1)
