"""The calibrated step rule: fit, file, provenance checks, and its use by the codec and CLI."""

import json
import math

import numpy as np
import pytest

from gr_gdmcom.cli import main
from gr_gdmcom.codec import CodecError, GenerativeCodec, load_components
from gr_gdmcom.codec.calibration import Calibration, CalibrationError, fit_points, load_calibration
from gr_gdmcom.config import CodecConfig

ANALYTIC = dict(model="analytic", device="cpu", dtype="fp32")


def _cal(**kw):
    d = dict(model="analytic", k=5, m=5, T=50, guidance=6.0, prompt=CodecConfig.prompt, clean_end="model",
             inversion="ddim", inversion_iters=3, metric="mse", images=["a.png"], rescale=True,
             fit_x=[0.0, 10.0, 20.0], fit_n=[30.0, 15.0, 10.0])
    d.update(kw)
    return Calibration(**d)


def test_fit_is_monotone_and_interpolates_in_latent_snr():
    x, n = fit_points([dict(x=0.0, n_opt=30), dict(x=10.0, n_opt=31), dict(x=20.0, n_opt=20)])
    assert x == [0.0, 10.0, 20.0] and n == [30.5, 30.5, 20.0]  # pooled adjacent violators
    cal = _cal()
    # x = SNR - 10 log10(P); linear between fit points, held beyond them, rounded, clipped to k+m..T
    for snr, p, want in ((5.0, 1.0, 22.5), (5.0, 2.0, 30 - 1.5 * (5 - 10 * math.log10(2))), (40.0, 1.0, 10.0),
                         (-10.0, 1.0, 30.0)):
        assert cal.n_float(snr, p) == pytest.approx(want)
        assert cal.n_steps(snr, p) == min(max(round(want), 10), 50)
    assert _cal(fit_n=[60.0, 15.0, 4.0]).n_steps(-5.0) == 50 and _cal(fit_n=[60.0, 15.0, 4.0]).n_steps(30.0) == 10


def test_file_round_trip_and_bad_files(tmp_path):
    f = _cal().save(tmp_path / "cal.json")
    assert json.loads(f.read_text())["format"] == "gdmcom-calibration"
    assert load_calibration(f).to_dict() == _cal().to_dict()
    with pytest.raises(CalibrationError, match="calibration file not found: .*nope.json"):
        load_calibration(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(CalibrationError, match=r"x.json is not a gdmcom calibration file \(made by gdmcom calibrate\)"):
        load_calibration(tmp_path / "x.json")


@pytest.mark.parametrize("change, reason", [
    (dict(fit_x=None), "fit_x must be a list, got None"),
    (dict(fit_n="30"), "fit_n must be a list, got '30'"),
    (dict(k="5"), "k must be an integer, got '5'"),
    (dict(m=True), "m must be an integer, got True"),
    (dict(T=50.5), "T must be an integer, got 50.5"),
    (dict(inversion_iters=None), "inversion_iters must be an integer, got None"),
    (dict(guidance="6"), "guidance must be a number, got '6'"),
    (dict(guidance=False), "guidance must be a number, got False"),
    (dict(model=1), "model must be a string, got 1"),
    (dict(prompt=None), "prompt must be a string, got None"),
    (dict(clean_end=0), "clean_end must be a string, got 0"),
    (dict(inversion=["ddim"]), "inversion must be a string, got ['ddim']"),
    (dict(metric=None), "metric must be a string, got None"),
    (dict(images="a.png"), "images must be a list, got 'a.png'"),
    (dict(rescale=1), "rescale must be true or false, got 1"),
    (dict(points={}), "points must be a list, got {}"),
    (dict(seed=0.5), "seed must be an integer, got 0.5"),
    (dict(fit_x=[0.0, "a", 2.0]), "the fit's x and n must be finite numbers"),
    (dict(fit_x=[0.0, [1.0], 2.0]), "the fit's x and n must be finite numbers"),
    (dict(fit_n=[30.0, float("nan"), 10.0]), "the fit's x and n must be finite numbers"),
    (dict(fit_x=[0.0, 10.0, float("inf")]), "the fit's x and n must be finite numbers"),
    (dict(fit_n=[30.0, True, 10.0]), "the fit's x and n must be finite numbers"),
    (dict(fit_x=[], fit_n=[]), "the fit needs ascending x values with one N each"),
    (dict(fit_n=[30.0, 10.0]), "the fit needs ascending x values with one N each"),
    (dict(fit_x=[0.0, 20.0, 10.0]), "the fit needs ascending x values with one N each"),
])
def test_a_calibration_file_with_a_wrong_type_is_refused_with_the_field(tmp_path, change, reason):
    """A hand-edited or corrupt file (k as a string, fit_x null, NaN) was a TypeError, ValueError or
    numpy's UFuncTypeError from inside the codec or at the first decode."""
    d = _cal().to_dict()
    d.update(change)
    (tmp_path / "cal.json").write_text(json.dumps(d))
    with pytest.raises(CalibrationError) as e:
        load_calibration(tmp_path / "cal.json")
    assert str(e.value) == f"{tmp_path / 'cal.json'}: bad calibration file: {reason}"


def test_a_calibration_file_takes_integers_for_numbers_and_equal_x_values(tmp_path):
    d = _cal().to_dict()
    d.update(guidance=6, fit_x=[0, 10, 10], fit_n=[30, 15, 12.5])
    (tmp_path / "cal.json").write_text(json.dumps(d))
    cal = load_calibration(tmp_path / "cal.json")
    assert (cal.guidance, cal.fit_x, cal.n_steps(0.0), cal.source) == (6, [0, 10, 10], 30, str(tmp_path / "cal.json"))


def test_other_unreadable_calibration_files_say_why(tmp_path):
    f = tmp_path / "cal.json"
    for text, message in (("{", "cannot read calibration file {f}: Expecting property name enclosed in double "
                                "quotes: line 1 column 2 (char 1)"),
                          ("[1, 2]", "{f} is not a gdmcom calibration file (made by gdmcom calibrate)"),
                          (json.dumps(dict(_cal().to_dict(), version=2)),
                           "{f}: calibration format version 2; this gdmcom reads 1"),
                          (json.dumps(dict(_cal().to_dict(), colour="red")),
                           "{f}: bad calibration file: Calibration.__init__() got an unexpected keyword argument "
                           "'colour'")):
        f.write_text(text)
        with pytest.raises(CalibrationError) as e:
            load_calibration(f)
        assert str(e.value) == message.format(f=f)
    with pytest.raises(CalibrationError) as e:
        load_calibration(tmp_path)  # a folder
    assert str(e.value).startswith(f"cannot read calibration file {tmp_path}: [Errno 21] Is a directory")


def test_check_compares_k_unless_told_and_inversion_iters_only_for_fixed_point():
    cfg = CodecConfig(**ANALYTIC)  # k=5, m=5, ddim, inversion_iters=3: as _cal()
    assert _cal().check("analytic", cfg) is not None
    with pytest.raises(CalibrationError) as e:
        _cal(k=4).check("analytic", cfg)  # k is compared by default
    assert str(e.value) == ("calibration file was measured for another setting: k=4 (here 5); run gdmcom calibrate "
                            "with this model and these settings")  # (not read from a file: 'file')
    cal = _cal(k=4)
    assert cal.check("analytic", cfg, with_k=False) is cal  # a receiver learns k from each header
    assert _cal(inversion_iters=7).check("analytic", cfg) is not None  # ddim: the iterations are not used
    for mine, theirs in (("fixed-point", "fixed-point"), ("fixed-point", "ddim"), ("ddim", "fixed-point")):
        with pytest.raises(CalibrationError) as e:
            _cal(inversion=mine, inversion_iters=7).check("analytic", CodecConfig(inversion=theirs, **ANALYTIC),
                                                          with_k=False)
        want = (f"inversion={mine!r} (here {theirs!r}), " if mine != theirs else "") + "inversion_iters=7 (here 3)"
        assert str(e.value) == (f"calibration file was measured for another setting: {want}; run gdmcom "
                                f"calibrate with this model and these settings")


def test_the_latent_power_defaults_to_one_and_k_to_the_calibrations():
    cal = _cal()  # fit 30 -> 15 -> 10 over x = 0, 10, 20
    assert cal.n_float(5.0) == cal.n_float(5.0, 1.0) == 22.5
    assert cal.n_steps(5.0) == cal.n_steps(5.0, 1.0) == 22
    hi = _cal(fit_n=[4.0, 3.0, 2.0])  # below k + m everywhere: the floor shows which k
    assert (hi.n_steps(5.0), hi.n_steps(5.0, k=2), hi.n_steps(5.0, k=None)) == (10, 7, 10)


def test_save_makes_the_folders_and_writes_ascii_json(tmp_path):
    cal = _cal(prompt="une photo, café", images=["été.png"])
    path = cal.save(tmp_path / "a" / "b" / "cal.json")
    assert path == tmp_path / "a" / "b" / "cal.json"
    assert path.read_bytes().isascii()  # json's escapes: no locale can misread it
    assert load_calibration(path).to_dict() == cal.to_dict()


def test_a_hand_edited_utf8_file_is_read_as_utf8_whatever_the_locale(tmp_path):
    """Python reads a file in the locale's encoding unless told: a prompt with an accent written
    by an editor (UTF-8) on a machine with an ASCII locale."""
    import os
    import subprocess
    import sys

    d = _cal(prompt="une photo, café").to_dict()
    (tmp_path / "cal.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    code = ("import sys, locale; from gr_gdmcom.codec.calibration import load_calibration; "
            "print(locale.getpreferredencoding(False), load_calibration(sys.argv[1]).prompt.encode('unicode_escape'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cal.json")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ANSI_X3.4-1968", "b'une", "photo,", "caf\\\\xe9'"], out.stdout


def test_codec_uses_the_calibration_and_refuses_other_settings(tmp_path):
    path = _cal().save(tmp_path / "cal.json")
    comp = load_components("analytic", device="cpu", dtype="fp32")
    codec = GenerativeCodec(CodecConfig(rule=f"calibrated:{path}", **ANALYTIC), components=comp)
    enc = codec.encode(np.full((64, 64, 3), 128, np.uint8) + np.arange(64, dtype=np.uint8)[:, None, None])
    for snr in (0.0, 7.0, 20.0):
        ch = codec.step_choice(snr, enc.meta)
        n = _cal().n_steps(snr, enc.meta.power)
        assert (ch.rule, ch.n_steps) == ("calibrated", n)
        assert ch.scale == pytest.approx(math.sqrt(codec.grid.alphas[n] / codec.grid.alphas[10]))  # rescale on
    dec = codec.decode(enc.symbols, enc.meta, 7.0)
    assert dec.record["rule"] == "calibrated" and dec.record["n_steps"] == _cal().n_steps(7.0, enc.meta.power)
    # another model, guidance, clean end: refused with what differs
    with pytest.raises(CalibrationError, match=r"was measured for another setting: model='analytic' \(here 'tiny'\)"):
        GenerativeCodec(CodecConfig(model="tiny", device="cpu", rule=f"calibrated:{path}"))
    with pytest.raises(CalibrationError, match=r"guidance=6.0 \(here 3.0\), clean_end='model' \(here 'one'\); "
                                               "run gdmcom calibrate with this model and these settings"):
        GenerativeCodec(CodecConfig(rule=f"calibrated:{path}", guidance=3.0, clean_end="one", **ANALYTIC),
                        components=comp)
    # the transmitter's k comes with each image
    enc.meta.k = 4
    with pytest.raises(CodecError, match=r"the transmitter used k=4 but calibration .*cal.json was measured for k=5"):
        codec.decode(enc.symbols, enc.meta, 7.0)


def test_cli_calibrates_the_analytic_prior(tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "analytic", "--device", "cpu", "--samples", "6", "--snr", "0", "20",
                 "--out", str(out), "-q"]) == 0
    cal = load_calibration(out)
    assert (cal.model, cal.k, cal.m, cal.T, cal.guidance, cal.metric) == ("analytic", 5, 5, 50, 6.0, "mse")
    assert cal.images == ["analytic prior: 6 latents, seed 0"]
    p0, p20 = cal.points
    assert len(p0["metric"]) == 41 and p0["n_opt"] == 10 + int(np.argmin(p0["metric"]))
    assert p0["n_opt"] > p20["n_opt"]  # more channel noise, more denoising steps
    assert cal.fit_n == sorted(cal.fit_n, reverse=True)
    # the line names the fitted rule's N (what --rule calibrated: uses at the samples' mean latent
    # power; it printed the raw per-SNR optimum), the measured optimum in brackets
    power = 10 ** ((p0["snr_db"] - p0["x"]) / 10)
    assert capsys.readouterr().out.strip() == (
        f"wrote {out}: mse, rescale {'on' if cal.rescale else 'off'}, N (measured best) = "
        f"0 dB: {cal.n_steps(0, power)} ({p0['n_opt' if cal.rescale else 'n_opt_no_rescale']}), "
        f"20 dB: {cal.n_steps(20, power)} ({p20['n_opt' if cal.rescale else 'n_opt_no_rescale']})")
    assert main(["calibrate", "--model", "analytic", "--out", str(out)]) == 2  # neither images nor samples
    assert "needs --images (or, with --model analytic, --samples n >= 2)" in capsys.readouterr().err


def test_cli_calibrate_skips_an_unreadable_image(tmp_path, capsys):
    """One unreadable file among the images: named, skipped, the others calibrated on, exit 1 (as
    gdmcom sweep; it used to abort the whole run); none readable: exit 2."""
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.open("gr_gdmcom/data/astronaut.png").convert("RGB").resize((64, 64)).save(d / "a.png")
    (d / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "cal.json"
    args = ["calibrate", "--model", "analytic", "--device", "cpu", "--snr", "10", "-q", "--out", str(out)]
    assert main([*args, "--images", str(d)]) == 1
    err = capsys.readouterr().err
    assert f"warning: skipped {d / 'broken.png'}: " in err and err.count("warning") == 1
    assert load_calibration(out).images == [str(d / "a.png")]
    out.unlink()
    assert main([*args, "--images", str(d / "broken.png")]) == 2
    assert "error: none of the 1 images can be read" in capsys.readouterr().err and not out.exists()


def test_sweep_methods_beyond_the_paper(tmp_path):
    """proposed_fixed_point / proposed_clean_one / proposed_calibrated run beside proposed in one sweep."""
    import csv

    from PIL import Image

    from gr_gdmcom.eval.sweep import SweepOptions, run_sweep

    d = tmp_path / "imgs"
    d.mkdir()
    Image.open("gr_gdmcom/data/astronaut.png").convert("RGB").resize((64, 64)).save(d / "astro.png")
    cal = _cal().save(tmp_path / "cal.json")
    comp = load_components("analytic", device="cpu", dtype="fp32")
    methods = "proposed,proposed_fixed_point,proposed_clean_one,proposed_calibrated"
    opts = SweepOptions(images=[d], out=tmp_path / "out", snrs=[3.0], methods=methods,
                        config=CodecConfig(**ANALYTIC), plots=False, progress=False, argv=["test"], metrics=(),
                        calibration=cal)
    res = run_sweep(opts, components=comp)
    assert res.rows_failed == 0
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "out" / "rows.csv"))}
    assert set(rows) == set(methods.split(","))
    n = int(rows["proposed"]["n_steps"])
    assert int(rows["proposed"]["unet_calls"]) == 10 + n  # k + m + N, the encoder's k counted once per image
    assert int(rows["proposed_fixed_point"]["unet_calls"]) > int(rows["proposed"]["unet_calls"])
    assert rows["proposed_calibrated"]["rule"] == "calibrated" and rows["proposed_clean_one"]["n_steps"] == str(n)
    with pytest.raises(ValueError, match=r"method proposed_calibrated needs --calibration FILE"):
        run_sweep(SweepOptions(images=[d], out=tmp_path / "o2", snrs=[3.0], methods="proposed_calibrated",
                               config=CodecConfig(**ANALYTIC), plots=False, progress=False, argv=["t"], metrics=()),
                  components=comp)


def test_calibrate_on_images_with_the_tiny_model(tmp_path, components):
    """Images of any size (60 x 44: padded to 64 x 48 and cropped back) with the SD-shaped model;
    the file is the tiny model's and the codec uses it."""
    from PIL import Image

    from gr_gdmcom.eval.calibrate import CalibrateOptions, calibrate

    f = tmp_path / "astro.png"
    Image.open("gr_gdmcom/data/astronaut.png").convert("RGB").resize((60, 44)).save(f)
    cfg = CodecConfig(model="tiny", device="cpu", T=20, k=2, m=2)
    cal = calibrate(cfg, CalibrateOptions(images=[str(f)], metric="psnr", snrs=[5.0]), components=components)
    (p,) = cal.points
    assert (cal.model, cal.metric, cal.images) == ("tiny", "psnr", [str(f)])
    assert len(p["metric"]) == 17 and p["n_opt"] == 4 + int(np.argmax(p["metric"]))  # PSNR is maximised
    assert all(5 < v < 60 for v in p["metric"])  # PSNR in dB of real decodings
    path = cal.save(tmp_path / "cal.json")
    codec = GenerativeCodec(cfg.replace(rule=f"calibrated:{path}"), components=components)
    assert codec.calibration.n_steps(5.0, 1.0) == cal.n_steps(5.0, 1.0)


def test_calibrate_refuses_what_it_cannot_use_before_running(tmp_path, capsys):
    """--images with --samples (one would be ignored), --chunk 0 and an unwritable --out: exit 2
    at once, not after the calibration's minutes."""
    from gr_gdmcom.cli import main

    base = ["calibrate", "--model", "analytic", "--snr", "5"]
    for argv, message in [
        ([*base, "--images", "x.png", "--samples", "8", "--out", str(tmp_path / "c.json")],
         "error: give --images or --samples, not both"),
        ([*base, "--samples", "8", "--chunk", "0", "--out", str(tmp_path / "c.json")],
         "error: --chunk must be >= 1, got 0"),
        ([*base, "--samples", "8", "--out", str(tmp_path)], f"error: --out {tmp_path} is a folder; give a file name"),
        ([*base, "--samples", "8", "--out", "/proc/gdmcom-x/c.json"],
         "error: cannot create the output folder /proc/gdmcom-x"),
    ]:
        assert main(argv) == 2 and message in capsys.readouterr().err, argv
    # a reduced latent is decoded by the snr rule whatever a calibration says: no --bcr/--reduce to
    # spend minutes on a file nothing would use
    for extra in (["--bcr", "1/384"], ["--reduce", "4"], ["--reduce-method", "dct"]):
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--samples", "8", *extra, "--out", str(tmp_path / "c.json")])
        assert exit_.value.code == 2 and f"unrecognized arguments: {' '.join(extra)}" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    from gr_gdmcom.config import CodecConfig
    from gr_gdmcom.eval.calibrate import CalibrateOptions, calibrate

    with pytest.raises(ValueError, match=r"^calibrate measures the whole latent: a reduced one \(reduce 4\) is "):
        calibrate(CodecConfig(model="analytic", reduce=4), CalibrateOptions(samples=8, snrs=[5.0]))


def test_calibrate_takes_threads_as_sweep_does(tmp_path, capsys, monkeypatch):
    """`gdmcom calibrate ... --threads 1` was 'unrecognized arguments' though the docs recommend it."""
    import torch

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: set_to.append(n))
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "analytic", "--device", "cpu", "--samples", "4", "--snr", "5",
                 "--threads", "1", "--out", str(out), "-q"]) == 0
    assert set_to == [1] and load_calibration(out).model == "analytic"
    assert main(["calibrate", "--model", "analytic", "--samples", "4", "--threads", "-2", "--out", str(out)]) == 2
    assert "error: --threads must be 0 (torch's choice) or a positive number of threads, got -2" in \
        capsys.readouterr().err
