"""What a results folder may be continued with, and what summary.md says about the rows it
averages (a walkthrough of the evaluation harness: reconstruction-changing settings reused old
rows; summaries mixed image sets; metrics added later, non-finite scores and PSNR = inf went
unsaid).  Tiny model, 64 px images, CPU."""

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval import learned, report
from gr_gdmcom.eval.sweep import SweepError, SweepOptions, find_images, run_sweep
from test_eval_sweep import _cfg, folder  # noqa: F401 - two images of different sizes (a fixture)

DATA = Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data"


def _opts(images, out, **kw):
    base = dict(images=[images] if not isinstance(images, list) else images, out=out, snrs=[5.0],
                methods="proposed", config=_cfg(), plots=False, progress=False, argv=["first"], metrics=())
    base.update(kw)
    return SweepOptions(**base)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- finding 2
@pytest.mark.parametrize("change, said", [
    (dict(remove_mean=False), "remove_mean=True there, False now"),
    (dict(clean_end="one"), "clean_end='model' there, 'one' now"),
    (dict(inversion="fixed-point"), "inversion='ddim' there, 'fixed-point' now"),
    (dict(inversion_iters=5), "inversion_iters=3 there, 5 now"),
    (dict(inversion_tol=1e-3), "inversion_tol=0.0001 there, 0.001 now"),
])
def test_a_folder_refuses_settings_that_change_reconstructions(folder, tmp_path, components, change, said):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out), components=components)
    before = (out / "rows.csv").read_bytes()
    with pytest.raises(SweepError, match=f"another configuration \\({said}\\); use another --out"):
        run_sweep(_opts(folder, out, config=_cfg(**change)), components=components)
    assert (out / "rows.csv").read_bytes() == before
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fp == dict(model="tiny", T=50, guidance=6.0, prompt=CodecConfig().prompt, seed=0, remove_mean=True,
                      clean_end="model", inversion="ddim", inversion_iters=3, inversion_tol=1e-4, dtype="fp32",
                      channel="awgn")


def _make_old(out):
    """run.json as the sweep wrote it before the new fields were fingerprinted."""
    info = json.loads((out / "run.json").read_text())
    for k in ("remove_mean", "clean_end", "inversion", "inversion_iters", "inversion_tol", "dtype"):
        info["fingerprint"].pop(k)
    info["dtype"] = "torch.float32"
    (out / "run.json").write_text(json.dumps(info))
    return info


def test_folders_written_before_the_new_fields_resume_at_the_settings_they_were_made_with(folder, tmp_path,
                                                                                          components):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out), components=components)
    info = _make_old(out)
    # its config records remove_mean=True etc. (the defaults it ran with): resumes, nothing recomputed
    res = run_sweep(_opts(folder, out), components=components)
    assert (res.rows_computed, res.rows_reused) == (0, 2)
    _make_old(out)
    with pytest.raises(SweepError, match=r"remove_mean=True there \(run.json's config\), False now"):
        run_sweep(_opts(folder, out, config=_cfg(remove_mean=False)), components=components)
    # older still: no remove_mean/clean_end in its config either -> the codec's behaviour then (no mean
    # removal, a_0 = 1): refused at today's defaults, accepted at those settings
    for k in ("remove_mean", "clean_end"):
        info["config"].pop(k)
    info["dtype"] = "torch.float16"
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(SweepError) as e:
        run_sweep(_opts(folder, out), components=components)
    assert "remove_mean=False there (not recorded: the codec's behaviour before the option existed), True now" \
        in str(e.value)
    assert "clean_end='one' there (not recorded" in str(e.value)
    assert "dtype='fp16' there (run.json's dtype), 'fp32' now" in str(e.value)
    info["dtype"] = "auto"  # unknown (no model had loaded): not compared
    (out / "run.json").write_text(json.dumps(info))
    res = run_sweep(_opts(folder, out, config=_cfg(remove_mean=False, clean_end="one")), components=components)
    assert (res.rows_computed, res.rows_reused) == (0, 2)


def test_each_run_records_its_own_argv_config_and_commit(folder, tmp_path, components):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out), components=components)
    run_sweep(_opts(folder, out, snrs=[5.0, 10.0], argv=["second", "--snr", "5", "10"]), components=components)
    info = json.loads((out / "run.json").read_text())
    first, second = info["runs"]
    assert first["argv"] == ["first"] and second["argv"] == ["second", "--snr", "5", "10"]
    assert first["snrs"] == [5.0] and second["snrs"] == [5.0, 10.0]
    assert first["rows_computed"] == 2 and second["rows_computed"] == 2
    for r in (first, second):
        assert r["config"]["remove_mean"] is True and r["config"]["model"] == "tiny"
        assert r["git_commit"] == info["git_commit"] and r["dtype"] == "fp32"
        assert r["images"] == ["astro", "coffee"] and r["methods"] == ["proposed/k5,m5,snr,rescale"]
    assert info["argv"] == second["argv"]  # top level: the latest run


# --------------------------------------------------------------------------- finding 3
def test_a_file_keeps_its_label_when_a_same_stem_file_joins_the_folder(tmp_path, components):
    d = tmp_path / "stem"
    d.mkdir()
    Image.open(DATA / "astronaut.png").convert("RGB").resize((64, 64)).save(d / "a.png")
    out = tmp_path / "res"
    run_sweep(_opts(d, out), components=components)
    Image.open(DATA / "coffee.png").convert("RGB").resize((64, 64)).save(d / "a.jpg")
    res = run_sweep(_opts(d, out), components=components)
    # a.png keeps its label `a` (it was recomputed as `a.png` and counted twice); only a.jpg is new
    assert (res.rows_computed, res.rows_reused, res.rows_total) == (1, 1, 2)
    rows = _csv(out / "rows.csv")
    assert sorted((r["image"], Path(r["file"]).name) for r in rows) == [("a", "a.png"), ("a.jpg", "a.jpg")]
    assert _csv(out / "summary.csv")[0]["n_images"] == "2"
    md = (out / "summary.md").read_text()
    assert "- Images: 2 in rows.csv (a, a.jpg); sizes 64×64." in md
    # and alone again, a.jpg keeps `a.jpg`: nothing recomputed
    (d / "a.png").unlink()
    res = run_sweep(_opts(d, out), components=components)
    assert (res.rows_computed, res.images) == (0, ["a.jpg"])


def test_the_summary_says_which_images_its_cells_cover(folder, tmp_path, components):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out), components=components)
    run_sweep(_opts([folder / "astro.png"], out, snrs=[5.0, 10.0]), components=components)
    md = (out / "summary.md").read_text()
    assert ("- Images: 2 in rows.csv (astro, coffee); sizes 64×48, 64×64. This run named 1 (astro); the tables "
            "also average the rows of 1 image(s) from earlier runs (coffee).") in md
    assert ("**The cells cover different image sets** (each table cell shows its n): 2 image(s) (astro, coffee) "
            "in proposed (k5,m5,snr,rescale) 5 dB — 1 image(s) (astro) in proposed (k5,m5,snr,rescale) 10 dB") in md
    psnr = {r["snr_db"]: float(r["psnr"]) for r in _csv(out / "rows.csv") if r["image"] == "astro"}
    both = np.mean([float(r["psnr"]) for r in _csv(out / "rows.csv") if r["snr_db"] == "5"])
    table = md.split("## PSNR (dB)")[1].split("##")[0]
    assert f"| proposed | {both:.2f} ± " in table and f" (n=2) | {psnr['10']:.2f} (n=1) |" in table


# --------------------------------------------------------------------------- findings 4 and 5
def _fake(backend, fn):
    def factory(device):
        return fn

    factory.backend = backend
    return factory


def _mad(ref, img):
    return float(np.mean(np.abs(ref.astype(float) - img)) / 255)


def test_a_metric_available_later_fills_the_earlier_rows_from_their_reconstructions(folder, tmp_path, components,
                                                                                    monkeypatch, caplog):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out), components=components)                      # no learned metric
    assert all(r["lpips"] == "" for r in _csv(out / "rows.csv"))
    gone = next(r for r in _csv(out / "rows.csv") if r["image"] == "coffee")["output"]
    (out / gone).unlink()                                                      # one reconstruction lost
    monkeypatch.setattr(learned, "FACTORIES", {**learned.FACTORIES, "lpips": [_fake("fake", _mad)]})
    with caplog.at_level(logging.WARNING):
        res = run_sweep(_opts(folder, out, snrs=[5.0, 10.0], metrics=("lpips",)), components=components)
    assert (res.rows_computed, res.rows_reused) == (2, 2)
    rows = {(r["image"], r["snr_db"]): r for r in _csv(out / "rows.csv")}
    astro = np.asarray(Image.open(folder / "astro.png").convert("RGB"))
    rec = np.asarray(Image.open(out / rows[("astro", "5")]["output"]).convert("RGB"))
    assert float(rows[("astro", "5")]["lpips"]) == pytest.approx(_mad(astro, rec), rel=1e-6)  # rescored
    assert rows[("astro", "10")]["lpips"] and rows[("coffee", "10")]["lpips"]
    assert rows[("coffee", "5")]["lpips"] == ""
    assert "LPIPS: 1 row(s) of earlier runs have no value and cannot be rescored" in caplog.text
    md = (out / "summary.md").read_text()
    assert ("**LPIPS covers 3 of 4 rows**: its means are over those only; 1 row(s) of earlier runs could not be "
            "rescored") in md
    assert _csv(out / "summary.csv")[0]["lpips_n"] == "1"  # 5 dB: astro only


def test_rows_a_metric_was_unavailable_for_are_counted_in_summary(folder, tmp_path, components, monkeypatch):
    out = tmp_path / "res"
    monkeypatch.setattr(learned, "FACTORIES", {**learned.FACTORIES, "lpips": [_fake("fake", _mad)]})
    run_sweep(_opts(folder, out, metrics=("lpips",)), components=components)

    def missing(device):
        raise learned.Unavailable("pyiqa is not installed (test)")

    monkeypatch.setattr(learned, "FACTORIES", {**learned.FACTORIES, "lpips": [missing]})
    run_sweep(_opts(folder, out, snrs=[5.0, 10.0], metrics=("lpips",)), components=components)
    md = (out / "summary.md").read_text()
    assert ("**LPIPS covers 2 of 4 rows**: its means are over those only; the rest were computed while LPIPS was "
            "unavailable or not asked for (--metrics); rerun with it available") in md


def test_a_non_finite_learned_score_is_a_counted_failure(folder, tmp_path, components, monkeypatch, caplog):
    nan_on_coffee = _fake("fake:dists-nan", lambda ref, img: float("nan") if ref.shape[0] == 48 else 0.25)
    monkeypatch.setattr(learned, "FACTORIES", {**learned.FACTORIES, "dists": [nan_on_coffee]})
    m = learned.LearnedMetrics(("dists",))
    a = np.zeros((48, 64, 3), np.uint8)
    assert m.score(a, a) == {} and m.errors == {"dists": (1, "fake:dists-nan: NonFiniteScore: returned nan (not a "
                                                                "finite score)")}
    out = tmp_path / "res"
    with caplog.at_level(logging.WARNING):
        run_sweep(_opts(folder, out, metrics=("dists",)), components=components)
    rows = {r["image"]: r for r in _csv(out / "rows.csv")}
    assert rows["astro"]["dists"] == "0.25" and rows["coffee"]["dists"] == "" and rows["coffee"]["error"] == ""
    assert "DISTS failed on an image (cell left empty): fake:dists-nan: NonFiniteScore: returned nan" in caplog.text
    md = (out / "summary.md").read_text()
    assert ("DISTS failed on 1 rows of the latest run (cells left empty): fake:dists-nan: NonFiniteScore: returned "
            "nan (not a finite score).") in md


# --------------------------------------------------------------------------- finding 6
def test_psnr_inf_is_said_in_the_summary_and_marked_in_the_plot(tmp_path, monkeypatch):
    def row(image, snr, method, psnr, ok="true"):
        return dict(image=image, snr_db=snr, method=method, setting="s", psnr=psnr, ms_ssim="0.9",
                    decode_success=ok, error="")

    rows = [row("grey", "-5", "digital", "inf", "false"), row("crop", "-5", "digital", "9.5", "false"),
            row("grey", "20", "digital", "inf"), row("crop", "20", "digital", "30.25"),
            row("grey", "-5", "proposed", "15"), row("crop", "-5", "proposed", "14"),
            row("grey", "20", "proposed", "25"), row("crop", "20", "proposed", "24")]
    summary = report.summarize(rows)
    dig20 = next(s for s in summary if s["method"] == "digital" and s["snr_db"] == 20)
    assert dig20["psnr_mean"] == np.inf and dig20["psnr_inf"] == 1 and dig20["psnr_finite_mean"] == 30.25
    md = report.summary_markdown(summary, dict(title="t"))
    assert ("- **PSNR = inf** where a reconstruction is identical to the original (MSE 0: a lossless decode, e.g. "
            "of a flat image), so these cells' mean is inf: digital -5 dB: 1 of 2 images (1 of them a failed decode "
            "whose mid-grey output equals the original); the others' mean 9.50 dB; digital 20 dB: 1 of 2 images; "
            "the others' mean 30.25 dB. The PSNR plots mark them") in md
    figs = {}
    real = report._save_figure

    def keep(fig, stem):
        figs[Path(stem).name] = fig
        ax = fig.axes[0]
        figs[Path(stem).name + ":state"] = ([t.get_text() for t in ax.get_legend().get_texts()],
                                           [(tuple(line.get_xdata()), tuple(line.get_ydata()), line.get_marker())
                                            for line in ax.get_lines()], ax.get_ylim())
        return real(fig, stem)

    monkeypatch.setattr(report, "_save_figure", keep)
    report.plot_metrics(summary, tmp_path)
    legend, lines, (low, high) = figs["psnr_vs_snr:state"]
    assert sorted(legend) == ["digital (▲ inf at -5, 20 dB)", "proposed (n=2: no interval)"]
    marks = [(x, y) for x, y, m in lines if m == "^" and x]  # (the legend's entry has no point)
    assert marks == [((-5.0,), (high,)), ((20.0,), (high,))] and high > 24.5  # at the top, above proposed
    fig = figs["psnr_vs_snr"]
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [(t.get_window_extent(), ax.transData.transform(t.xy)[0]) for t in ax.texts if t.get_text() == "inf"]
    (first, x_first), (last, x_last) = sorted(labels, key=lambda p: p[1])
    # the label of the last SNR lies left of its mark, inside the panel (it ran past the figure's edge)
    assert x_first < first.x0 and last.x1 < x_last and ax.bbox.x0 < first.x0 and last.x1 < ax.bbox.x1

    # the *_vs_bcr panels too (they dropped such points): digital's inf at BCR 1/384, 20 dB
    bcr_rows = [dict(r, setting="s,bcr=1/384:pool") for r in rows] + rows
    bcr_summary = report.summarize(bcr_rows)
    report.plot_metrics_vs_bcr(bcr_summary, tmp_path)
    fig = figs["psnr_vs_bcr"]
    panel20 = next(ax for ax in fig.axes if ax.get_title() == "SNR 20 dB")
    low, high = panel20.get_ylim()
    marks = [(tuple(ln.get_xdata()), tuple(ln.get_ydata())) for ln in panel20.get_lines()
             if ln.get_marker() == "^" and len(ln.get_xdata())]
    assert sorted(marks) == [((1 / 384,), (high,)), ((1 / 96,), (high,))] and high > 24.5, marks
    assert any("▲ inf" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


# --------------------------------------------------------------------------- finding 9
def test_broken_symlinks_and_loops_are_skipped_and_named(folder, tmp_path, components):
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    assert [f.name for f in find_images([folder])] == ["astro.png", "coffee.png", "dangling.png", "loop_a.png",
                                                      "loop_b.png"]
    out = tmp_path / "res"
    res = run_sweep(_opts(folder, out), components=components)
    assert res.rows_total == 2
    assert sorted((Path(f).name, why.split(": ", 1)[1]) for f, why in res.skipped) == [
        ("dangling.png", "a broken symbolic link or a link loop (-> nowhere.png)"),
        ("loop_a.png", "a broken symbolic link or a link loop (-> loop_b.png)"),
        ("loop_b.png", "a broken symbolic link or a link loop (-> loop_a.png)")]
    assert "Skipped images (3, unreadable)" in (out / "summary.md").read_text()
    only_loops = tmp_path / "loops"
    only_loops.mkdir()
    os.symlink("b.png", only_loops / "a.png")
    os.symlink("a.png", only_loops / "b.png")
    with pytest.raises(SweepError, match=r"none of the 2 image files could be read: cannot read image .*a.png: a "
                                         r"broken symbolic link or a link loop \(-> b.png\)"):
        run_sweep(_opts(only_loops, tmp_path / "r2"), components=components)
    assert not (tmp_path / "r2").exists()


def test_no_fid_patch_note_when_fid_and_kid_are_unavailable(tmp_path, components, monkeypatch):
    def missing(device):
        raise learned.Unavailable("torchvision is not installed (test)")

    monkeypatch.setattr(learned, "FACTORIES", {k: [missing] for k in learned.ALL})
    out = tmp_path / "res"
    run_sweep(_opts([DATA / "astronaut.png"], out, metrics=("fid", "kid")), components=components)
    md = (out / "summary.md").read_text()
    assert "## FID — lower is better\n\n**unavailable** — torchvision is not installed (test)." in md
    assert "patches per set" not in md and "FID/KID:" not in md   # it said "1 patches per set from 1 images"
    assert learned.LearnedMetrics(()).set_scores([np.zeros((256, 256, 3), np.uint8)] * 1,
                                                 [np.zeros((256, 256, 3), np.uint8)])["fid"]["patches"] == 1


# --------------------------------------------------------------------------- finding 10
def test_the_python_api_example_in_evaluation_md_runs_and_prints_what_it_says(tmp_path, monkeypatch, capsys):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "evaluation.md").read_text()
    code = doc.split("### From Python")[1].split("```python\n")[1].split("```")[0]
    code = code.replace("psnr(ref / 255.0, out)", "pytest.raises(ValueError, psnr, ref / 255.0, out)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "evaluation.md", "exec"), {"pytest": pytest})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "4 0 0 ['astronaut']"
    assert lines[1:5] == ["proposed 5.0 18.79 1", "proposed 15.0 21.01 1", "digital 5.0 9.86 1",
                          "digital 15.0 22.05 1"]
    assert lines[5].startswith("True 22.05 (0.9019") and lines[5].endswith(", 5)") and lines[6] == "inf"


def test_a_repeated_snr_is_one_row(folder, tmp_path, components):
    """--snr 5 5.0 computed the same row twice (rows_computed 2, rows_total 1)."""
    out = tmp_path / "dup"
    res = run_sweep(_opts(folder, out, snrs=[5.0, 5, 10.0], methods="proposed,proposed"), components=components)
    n_images = len(find_images([folder]))
    assert res.rows_computed == res.rows_total == 2 * n_images
    assert sorted({float(r["snr_db"]) for r in _csv(out / "rows.csv")}) == [5.0, 10.0]


# --------------------------------------------------------------------------- two sweeps, one folder
def test_a_folder_being_written_by_another_sweep_is_refused(folder, tmp_path, components):
    """Two sweeps writing one folder at once lost rows (the first to finish rewrote rows.csv under
    the other's appends) and a run's record in run.json: the second is refused while the first
    holds the folder's lock, and the lock goes with the sweep that held it."""
    import fcntl

    out = tmp_path / "res"
    run_sweep(_opts(folder, out), components=components)
    before = (out / "rows.csv").read_bytes()
    with open(out / ".sweep.lock", "a+") as other:  # another sweep, mid-run
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.truncate(0)
        other.write("pid 4711 on gpu-box, started 2026-11-29T07:00:00+00:00\n")
        other.flush()
        with pytest.raises(SweepError, match=r"^another gdmcom sweep \(pid 4711 on gpu-box, started "
                                             r"2026-11-29T07:00:00\+00:00\) is writing .*res; wait for it "
                                             r"to finish or give another --out$"):
            run_sweep(_opts(folder, out, snrs=[5.0, 10.0]), components=components)
        assert (out / "rows.csv").read_bytes() == before
    res = run_sweep(_opts(folder, out, snrs=[5.0, 10.0]), components=components)  # released: it runs
    assert res.rows_computed == 2 and res.rows_reused == 2
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 2
    with open(out / ".sweep.lock", "a+") as f:  # and this run released it too
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        assert f.read().startswith(f"pid {os.getpid()} on ")


def test_a_folder_on_a_file_system_without_locks_is_swept_with_a_warning(folder, tmp_path, components, monkeypatch,
                                                                       caplog):
    """flock failing for another reason than a holder (ENOLCK on some network mounts) is not
    "another gdmcom sweep is writing": the sweep runs, and says it is not guarded."""
    import errno
    import fcntl

    def no_locks(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    res = run_sweep(_opts(folder, tmp_path / "res"), components=components)
    assert res.rows_computed == 2
    assert "(No locks available): a second sweep into this folder at the same time would not be refused" \
        in caplog.text
