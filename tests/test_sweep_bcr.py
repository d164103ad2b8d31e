"""``gdmcom sweep --bcr``: settings per BCR, the digital baseline at the same symbol budget,
metric-vs-BCR plots (eval/sweep.py, eval/report.py; docs/rate.md)."""

import contextlib
import json

import pytest
from PIL import Image

from gr_gdmcom.config import CodecConfig, bcr_text, reduce_for_bcr
from gr_gdmcom.eval import report
from gr_gdmcom.eval.sweep import SweepError, SweepOptions, run_sweep

@pytest.fixture
def folder(tmp_path, image_folder):
    """Two images: 64x64 (latent 4 x 8 x 8, 128 symbols whole) and 48x40 (4 x 6 x 5, 60 symbols)."""
    return image_folder({"astro.png": ("astronaut.png", (64, 64)), "coffee.png": ("coffee.png", (40, 48))})


def _opts(folder, out, **kw):
    base = dict(images=[folder], out=out, snrs=[10.0], methods="proposed,sd_semcom,digital",
                config=CodecConfig(model="tiny", device="cpu", T=20), plots=False, progress=False,
                metrics=(), argv=["test"])
    base.update(kw)
    return SweepOptions(**base)


@pytest.mark.parametrize("text, r", [("1/96", 1), ("1/192", 2), (" 1/384", 4), ("1/768", 8), ("1/1536", 16)])
def test_bcr_is_a_reduction_of_the_whole_latents_1_96(text, r):
    assert reduce_for_bcr(text) == r and bcr_text(r) == text.strip()


@pytest.mark.parametrize("text", ["1/100", "1/48", "0", "-1/96", "fast", "1/0"])
def test_bcr_that_is_no_whole_reduction_is_refused(text):
    with pytest.raises(ValueError, match=r"--bcr must be 1/\(96 r\) for a whole r >= 1 \(1/96, 1/192, 1/384, "
                                         rf"\.\.\.\), got '{text}'"):
        reduce_for_bcr(text)


def test_sweep_over_bcr_gives_digital_the_same_symbols(folder, tmp_path):
    out = tmp_path / "res"
    res = run_sweep(_opts(folder, out, config=CodecConfig(model="tiny", device="cpu", T=20, reduce_method="pool"),
                          reductions=[1, 2, 4], plots=True), components=None)
    rows = {(r["image"], r["method"], r["bcr_nominal"]): r for r in report.read_rows(out / "rows.csv")}
    # proposed and digital at 1/96, 1/192, 1/384; sd_semcom sends the whole latent: 1/96 only
    assert sorted({k[1:] for k in rows}) == [("digital", "1/192"), ("digital", "1/384"), ("digital", "1/96"),
                                             ("proposed", "1/192"), ("proposed", "1/384"), ("proposed", "1/96"),
                                             ("sd_semcom", "1/96")]
    assert res.rows_total == 2 * 7 and res.rows_failed == 0
    # pooling 1x2 and 2x2 blocks of a 4 x 8 x 8 latent; of a 4 x 6 x 5 one (edge blocks count): symbols = values / 2
    expect = {("astro", "1/96"): 128, ("astro", "1/192"): 4 * 8 * 4 // 2, ("astro", "1/384"): 4 * 4 * 4 // 2,
              ("coffee", "1/96"): 60, ("coffee", "1/192"): 4 * 6 * 3 // 2, ("coffee", "1/384"): 4 * 3 * 3 // 2}
    for (image, bcr), n in expect.items():
        for method in ("proposed", "digital"):
            row = rows[image, method, bcr]
            h, w = (64, 64) if image == "astro" else (48, 40)
            assert int(row["symbols"]) == n, (image, method, bcr)
            assert float(row["bcr"]) == pytest.approx(n / (3 * h * w))
    assert float(rows["astro", "proposed", "1/384"]["bcr"]) == pytest.approx(1 / 384)
    # the setting names the BCR (and the proposed method's reduction); whole-latent labels are the paper's
    assert rows["astro", "proposed", "1/384"]["setting"] == "k5,m5,snr,rescale,bcr=1/384:pool"
    assert rows["astro", "proposed", "1/96"]["setting"] == "k5,m5,snr,rescale"
    assert rows["astro", "digital", "1/192"]["setting"] == "hevc,adaptive,bcr=1/192"
    # the digital chain's rate adaptation works within that budget: at 64 x 64 HEVC does not fit
    # even the whole latent's 128 symbols at 10 dB, and says so with the budget it was given
    for bcr in ("1/96", "1/384"):
        detail = dict(kv.split("=", 1) for kv in rows["astro", "digital", bcr]["detail"].split("; "))
        assert int(detail["symbols_used"]) <= expect["astro", bcr]
        assert detail["reason"].endswith(f", {expect['astro', bcr]} symbols")
    # one metric-vs-BCR figure per metric with values, one panel per SNR
    assert (out / "plots" / "psnr_vs_bcr.png").stat().st_size > 0
    assert not (out / "plots" / "psnr_vs_snr.png").exists()  # one SNR: no curve against SNR
    run = json.loads((out / "run.json").read_text())
    assert run["sweep"]["bcr"] == ["1/96", "1/192", "1/384"]


def test_bcr_lines_join_the_whole_latent_to_each_reduction():
    s = [dict(method="proposed", setting="k5,m5,snr,rescale", snr_db=10.0),
         dict(method="proposed", setting="k5,m5,snr,rescale,bcr=1/384:pool", snr_db=10.0),
         dict(method="proposed", setting="k5,m5,snr,rescale,bcr=1/192:dct", snr_db=10.0),
         dict(method="digital", setting="hevc,adaptive", snr_db=10.0),
         dict(method="digital", setting="hevc,adaptive,bcr=1/384", snr_db=10.0),
         dict(method="sd_semcom", setting="t=auto,caption=fixed", snr_db=10.0)]
    lines = report.bcr_lines(s)
    assert {k: sorted(v) for k, v in lines.items()} == {
        ("proposed", "k5,m5,snr,rescale", "pool"): [(96, 10.0), (384, 10.0)],
        ("proposed", "k5,m5,snr,rescale", "dct"): [(96, 10.0), (192, 10.0)],
        ("digital", "hevc,adaptive", ""): [(96, 10.0), (384, 10.0)],
        ("sd_semcom", "t=auto,caption=fixed", ""): [(96, 10.0)]}
    assert report.split_bcr("k5,m5,snr,rescale,bcr=1/384:subset,ddim,clean=model") == (
        "k5,m5,snr,rescale,ddim,clean=model", 384, "subset")


def test_only_whole_latent_methods_below_1_96_is_refused(folder, tmp_path):
    with pytest.raises(SweepError, match="no method can run at BCR 1/384: sd_semcom sends the whole latent"):
        run_sweep(_opts(folder, tmp_path / "r", methods="sd_semcom", reductions=[4]))


@pytest.mark.parametrize("argv, message", [
    (["--bcr", "1/100"], "argument --bcr: must be 1/(96 r) for a whole r >= 1 (1/96, 1/192, 1/384, ...), got '1/100'"),
    (["--bcr", "1/96", "1/384", "--reduce", "2"], "--bcr 1/96 1/384 and --reduce 2 disagree; give one of them"),
    (["--bcr", "1/288", "--reduce-method", "pool"], "--bcr 1/288 (--reduce 3) cannot be made with --reduce-method "
                                                   "pool"),
])
def test_cli_bcr_usage_errors_exit_2(folder, tmp_path, capsys, argv, message):
    from gr_gdmcom.cli import main

    with pytest.raises(SystemExit) if "argument" in message else contextlib.nullcontext():
        rc = main(["sweep", "--images", str(folder), "--out", str(tmp_path / "r"), "--model", "tiny"] + argv)
        assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_sweep_bcr_runs_one_setting_per_ratio(folder, tmp_path, capsys):
    from gr_gdmcom.cli import main

    out = tmp_path / "res"
    rc = main(["sweep", "--images", str(folder / "astro.png"), "--snr", "10", "--methods", "proposed,digital",
               "--bcr", "1/96", "1/384", "--out", str(out), "--model", "tiny", "--device", "cpu", "--T", "10",
               "--no-plots", "--no-progress", "--metrics", "none"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["rows_computed"] == 4
    got = sorted((r["method"], r["bcr_nominal"], r["symbols"]) for r in report.read_rows(out / "rows.csv"))
    assert got == [("digital", "1/384", "32"), ("digital", "1/96", "128"),
                   ("proposed", "1/384", "32"), ("proposed", "1/96", "128")]


def test_reused_digital_rows_with_another_budget_are_named(tmp_path, caplog):
    """The digital setting names the BCR only, so a pool run reuses the dct run's rows; for a
    160x120 image (latent 15x20) dct sends 150 symbols at 1/384 and pool 160: said, not silent."""
    from PIL import Image

    from gr_gdmcom.config import CodecConfig
    from gr_gdmcom.eval.sweep import SweepOptions, run_sweep

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (160, 120), (90, 120, 200)).save(d / "odd.png")
    out = tmp_path / "r"

    def opts(how):
        return SweepOptions(images=[d], out=out, snrs=[20.0], methods="digital", reductions=[4],
                            config=CodecConfig(model="tiny", device="cpu", reduce_method=how), plots=False,
                            progress=False, argv=["t"], metrics=(), digital_codec="jpeg")

    assert run_sweep(opts("dct")).rows_computed == 1
    assert "symbol budget" not in caplog.text
    res = run_sweep(opts("pool"))
    assert res.rows_computed == 0 and res.rows_reused == 1
    assert ("digital rows at BCR 1/384 are reused from an earlier run whose symbol budget differs from "
            "--reduce-method pool's for 1 image(s) (odd: 150 there, 160 now)") in caplog.text
