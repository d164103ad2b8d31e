"""The evaluation sweep: outputs, resumability, batching, bad input (tiny model, 64 px images)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval import learned, report
from gr_gdmcom.eval.sweep import SweepError, SweepOptions, run_sweep

DATA = Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data"


@pytest.fixture(autouse=True)
def _awgn(monkeypatch):
    """gr_gdmcom.phy.awgn is written in parallel; use phy.channel's until it is exported."""
    import gr_gdmcom.phy as phy

    if not hasattr(phy, "awgn"):
        try:
            from gr_gdmcom.phy.channel import awgn
        except ImportError:
            def awgn(x, snr_db, rng):
                s = np.sqrt(10 ** (-snr_db / 10) / 2)
                return (x + s * (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape))).astype(np.complex64)
        monkeypatch.setattr(phy, "awgn", awgn, raising=False)


@pytest.fixture
def folder(tmp_path):
    """Two readable images of different sizes (64x64, 64x48)."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.open(DATA / "astronaut.png").convert("RGB").resize((64, 64)).save(d / "astro.png")
    Image.open(DATA / "coffee.png").convert("RGB").resize((64, 48)).save(d / "coffee.png")
    return d


def _cfg(**kw):
    return CodecConfig(model="tiny", device="cpu", **kw)


def _opts(folder, out, **kw):
    base = dict(images=[folder], out=out, snrs=[0.0, 10.0], methods="proposed,random_noise,sd_semcom,digital",
                config=_cfg(), plots=False, progress=False, argv=["test"])
    base.update(kw)
    return SweepOptions(**base)


class Spy:
    """Counts the codec's encode/decode calls and the digital chain's runs."""

    def __init__(self, monkeypatch):
        self.calls = dict(encode=0, decode=0, digital=0)
        enc, dec = GenerativeCodec.encode_many, GenerativeCodec.decode_many

        def encode_many(codec, images, names=None):
            self.calls["encode"] += 1
            return enc(codec, images, names)

        def decode_many(codec, items):
            self.calls["decode"] += 1
            return dec(codec, items)

        monkeypatch.setattr(GenerativeCodec, "encode_many", encode_many)
        monkeypatch.setattr(GenerativeCodec, "decode_many", decode_many)
        from gr_gdmcom.eval import digital

        run = digital.run_digital

        def run_digital(*a, **k):
            self.calls["digital"] += 1
            return run(*a, **k)

        monkeypatch.setattr(digital, "run_digital", run_digital)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_outputs_and_second_run_recomputes_nothing(folder, tmp_path, components, monkeypatch):
    out = tmp_path / "res"
    spy = Spy(monkeypatch)
    res = run_sweep(_opts(folder, out, plots=True), components=components)
    assert res.rows_computed == 2 * 2 * 4 and res.rows_failed == 0
    rows = _csv(out / "rows.csv")
    assert len(rows) == 16
    assert list(rows[0]) == report.ROW_FIELDS
    assert {r["method"] for r in rows} == {"proposed", "random_noise", "sd_semcom", "digital"}
    for r in rows:
        assert r["psnr"] and r["ms_ssim"] and r["ms_ssim_scales"] == "3"
        assert r["snr_est_db"] == ""          # no PHY here
        assert r["fidelity"] and r["decode_success"] in ("true", "false")
        assert int(r["symbols"]) == 4 * 8 * (8 if r["height"] == "64" else 6) // 2
        assert float(r["bcr"]) == pytest.approx(1 / 96)
        assert (out / r["output"]).is_file()
        if r["method"] != "digital":
            assert int(r["n_steps"]) >= 1 and r["decode_success"] == "true"
    # the transmitter ran once per image size group and setting, not once per SNR
    assert spy.calls["encode"] == 2 * 2           # (proposed, random_noise) x two sizes
    assert spy.calls["decode"] == 2 * 2 * 2       # (proposed, random_noise) x sizes x SNRs
    assert spy.calls["digital"] == 4

    summ = _csv(out / "summary.csv")
    assert len(summ) == 4 * 2
    assert all(s["n_images"] == "2" and s["psnr_mean"] and s["psnr_ci95"] for s in summ)
    md = (out / "summary.md").read_text()
    assert "## PSNR" in md and "95 %" in md and "| proposed |" in md
    info = json.loads((out / "run.json").read_text())
    for k in ("config", "versions", "git_commit", "seed", "device", "model", "fingerprint", "runs"):
        assert k in info
    assert info["model"]["id"] == "tiny" and info["model"]["revision"].startswith("tiny-v")
    assert info["versions"]["torch"] and info["device"] == "cpu"
    for f in ("psnr_vs_snr.png", "psnr_vs_snr.pdf", "ms_ssim_vs_snr.png", "grid_snr0.png", "grid_snr10.pdf",
              "snr_astro.png", "snr_coffee.pdf"):
        assert (out / "plots" / f).stat().st_size > 1000

    # second run over the same folder: nothing is recomputed, rows.csv is unchanged
    before = (out / "rows.csv").read_bytes()
    spy.calls.update(encode=0, decode=0, digital=0)
    res2 = run_sweep(_opts(folder, out), components=components)
    assert res2.rows_computed == 0 and res2.rows_reused == 16
    assert spy.calls == dict(encode=0, decode=0, digital=0)
    assert (out / "rows.csv").read_bytes() == before
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 2


def test_interrupted_sweep_continues_where_it_stopped(folder, tmp_path, components, monkeypatch):
    out = tmp_path / "res"
    real = report.RowWriter.write
    state = dict(n=0)

    def write(self, row):
        if state["n"] == 5:
            raise KeyboardInterrupt
        state["n"] += 1
        return real(self, row)

    monkeypatch.setattr(report.RowWriter, "write", write)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_opts(folder, out, methods="proposed,sd_semcom"), components=components)
    assert len(_csv(out / "rows.csv")) == 5
    monkeypatch.setattr(report.RowWriter, "write", real)
    # a torn last line (killed mid-write) is dropped and recomputed
    with open(out / "rows.csv", "a") as f:
        f.write("astro,/x/astro.png,64,64,10,sd_sem")
    res = run_sweep(_opts(folder, out, methods="proposed,sd_semcom"), components=components)
    assert res.rows_computed == 8 - 5 and res.rows_reused == 5
    rows = _csv(out / "rows.csv")
    assert len(rows) == 8 and len({report.row_key(r) for r in rows}) == 8


def test_more_snrs_later_computes_only_the_new_ones(folder, tmp_path, components):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0]), components=components)
    res = run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0, 15.0]), components=components)
    assert res.rows_computed == 2 and res.rows_total == 4


def test_results_are_reproducible(folder, tmp_path, components):
    a = run_sweep(_opts(folder, tmp_path / "a", methods="random_noise,sd_semcom"), components=components)
    b = run_sweep(_opts(folder, tmp_path / "b", methods="random_noise,sd_semcom"), components=components)
    ra = {report.row_key(r): r["psnr"] for r in _csv(a.out / "rows.csv")}
    rb = {report.row_key(r): r["psnr"] for r in _csv(b.out / "rows.csv")}
    assert ra == rb


def test_unreadable_images_are_skipped_and_listed(folder, tmp_path, components):
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "res"
    res = run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0]), components=components)
    assert sorted(Path(f).name for f, _ in res.skipped) == ["broken.png", "empty.jpg"]
    assert res.rows_total == 2
    md = (out / "summary.md").read_text()
    assert "Skipped images (2, unreadable)" in md and "broken.png" in md and "empty.jpg" in md
    assert "notes.txt" not in md


def test_empty_folder_and_unknown_method_are_refused(tmp_path, folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SweepError, match="no images found"):
        run_sweep(_opts(empty, tmp_path / "r"))
    with pytest.raises(ValueError, match="valid methods: proposed, proposed_caption, proposed_fixed_point, proposed_clean_one, proposed_calibrated, random_noise, received, sd_semcom, digital"):
        run_sweep(_opts(folder, tmp_path / "r", methods="proposed,bpg"))
    assert not (tmp_path / "r" / "rows.csv").exists()


def test_results_folder_of_another_configuration_is_refused(folder, tmp_path, components):
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0]), components=components)
    with pytest.raises(SweepError, match="another configuration.*seed"):
        run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0], config=_cfg(seed=7)), components=components)
    # without a readable run.json the rows' configuration is unknown: refused too (they were reused as
    # the new seed's and run.json rewritten), and so is a foreign rows.csv, which was overwritten
    (out / "run.json").write_text("{")
    with pytest.raises(SweepError, match=r"rows.csv exists but run.json is unreadable: which configuration made "
                                         r"its rows is unknown; use another --out"):
        run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0], config=_cfg(seed=7)), components=components)
    (out / "run.json").unlink()
    with pytest.raises(SweepError, match="rows.csv exists but run.json is missing"):
        run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0]), components=components)


def test_learned_metrics_unavailable_leave_empty_cells_and_a_reason(folder, tmp_path, components, monkeypatch):
    def missing(device):
        raise learned.Unavailable("pyiqa is not installed (test)")

    monkeypatch.setattr(learned, "FACTORIES", {k: [missing] for k in learned.ALL})
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0]), components=components)
    for r in _csv(out / "rows.csv"):
        for col in ("lpips", "dists", "pieapp"):
            assert r[col] == ""               # empty, never "0"
    s = _csv(out / "summary.csv")[0]
    assert s["lpips_mean"] == "" and s["fid"] == "" and s["kid"] == ""
    md = (out / "summary.md").read_text()
    assert "## LPIPS — lower is better\n\n**unavailable** — pyiqa is not installed (test)" in md
    assert "## FID — lower is better\n\n**unavailable**" in md
    info = json.loads((out / "run.json").read_text())
    assert info["learned_metrics"]["lpips"] == dict(available=False, backend="", reason="pyiqa is not installed (test)")


def test_learned_metric_that_runs_fills_its_column(folder, tmp_path, components, monkeypatch):
    def fake_lpips(device):
        return lambda ref, img: float(np.mean(np.abs(ref.astype(float) - img)) / 255)

    fake_lpips.backend = "fake"
    monkeypatch.setattr(learned, "FACTORIES", {**learned.FACTORIES, "lpips": [fake_lpips]})
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0], plots=True), components=components)
    vals = [float(r["lpips"]) for r in _csv(out / "rows.csv")]
    assert len(vals) == 2 and all(0 < v < 1 for v in vals)
    assert "LPIPS: fake." in (out / "summary.md").read_text()


def test_grid_runs_table2_settings_and_shares_the_transmitter(folder, tmp_path, components, monkeypatch):
    spy = Spy(monkeypatch)
    out = tmp_path / "res"
    grid = [(2, 0, 2), (2, 0, 4), (1, 1, 3)]
    res = run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0], grid=grid), components=components)
    assert res.rows_total == 2 * 3
    rows = _csv(out / "rows.csv")
    assert {r["setting"] for r in rows} == {"k2,m0,N2,norescale", "k2,m0,N4,norescale", "k1,m1,N3,norescale"}
    assert {int(r["n_steps"]) for r in rows} == {2, 3, 4}
    assert all("no rescaling" in r["fidelity"] for r in rows)
    # (2,0,2) and (2,0,4) share the k = 2 transmitter: encoded once per size group
    assert spy.calls["encode"] == 2 * 2
    t2 = (out / "table2.md").read_text()
    assert "| k | m | N | PSNR↑ | MS-SSIM↑ | LPIPS↓ | FID↓ | n |" in t2
    assert "| 2 | 0 | 4 |" in t2 and "| 1 | 1 | 3 |" in t2 and "--no-rescale" in t2
    assert "| 5 | 5 | 15 | 22.19 | 0.823 | 0.187 | 51.20 |" in t2  # the paper's row for comparison


@pytest.fixture
def captioned(tmp_path, monkeypatch):
    """(a captions file for astro.png, the list of prompts every DDIM run of the codec used)."""
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"astro.png": "an astronaut in a suit"}))
    prompts = []
    real = GenerativeCodec._ddim

    def ddim(self, x, paths, prompt, guidance):
        prompts.append(prompt)
        return real(self, x, paths, prompt, guidance)

    monkeypatch.setattr(GenerativeCodec, "_ddim", ddim)
    return caps, prompts


def test_sd_semcom_uses_captions_as_prompt(folder, tmp_path, components, captioned):
    caps, prompts = captioned
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="sd_semcom", snrs=[5.0], captions=caps, semcom_t=3), components=components)
    assert set(prompts) == {"an astronaut in a suit", CodecConfig().prompt}
    rows = {r["image"]: r for r in _csv(out / "rows.csv")}
    assert rows["astro"]["setting"].startswith("t=3,caption=file-") and rows["astro"]["n_steps"] == "3"
    assert "caption: captions file" in rows["astro"]["fidelity"]
    assert "caption: fixed prompt" in rows["coffee"]["fidelity"]


def test_proposed_caption_uses_the_caption_on_both_sides(folder, tmp_path, components, captioned):
    """Table I's "proposed with caption": DDIM inversion at the transmitter and the
    receiver's inversion and sampling run with the image's caption; the result equals
    the codec configured with that prompt, and differs from the fixed-prompt run."""
    caps, prompts = captioned
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="proposed,proposed_caption", snrs=[10.0], captions=caps),
              components=components)
    assert prompts.count("an astronaut in a suit") == 3  # transmitter inversion, receiver inversion, sampling
    rows = {(r["image"], r["method"]): r for r in _csv(out / "rows.csv")}
    cap = rows["astro", "proposed_caption"]
    assert cap["setting"].startswith("k5,m5,snr,rescale,caption=file-")
    assert "caption: captions file" in cap["fidelity"] and "astronaut" in cap["detail"]
    assert "caption: fixed prompt" in rows["coffee", "proposed_caption"]["fidelity"]
    assert cap["symbols"] == rows["astro", "proposed"]["symbols"]  # same symbol budget
    # the caption changes astro's result; coffee (no caption) is the fixed-prompt run
    assert cap["psnr"] != rows["astro", "proposed"]["psnr"]
    assert rows["coffee", "proposed_caption"]["psnr"] == rows["coffee", "proposed"]["psnr"]


def test_cli_sweep(folder, tmp_path, capsys):
    from gr_gdmcom.cli import main

    out = tmp_path / "res"
    rc = main(["sweep", "--images", str(folder), "--snr", "5", "--methods", "proposed,digital", "--out", str(out),
               "--model", "tiny", "--device", "cpu", "--no-plots", "--no-progress", "--metrics", "none"])
    assert rc == 0
    cap = capsys.readouterr()
    done = json.loads(cap.out)  # stdout: one JSON line; the same in words on stderr
    assert done["rows_computed"] == 4 and done["rows_total"] == 4 and "4 rows computed" in cap.err
    rc = main(["sweep", "--images", str(folder / "*.png"), "--snr", "5", "--methods", "proposed,digital",
               "--out", str(out), "--model", "tiny", "--device", "cpu", "--no-plots", "--no-progress",
               "--metrics", "none"])  # a quoted glob names the same images
    cap = capsys.readouterr()
    assert rc == 0 and "0 rows computed, 4 already present" in cap.err
    assert json.loads(cap.out)["rows_reused"] == 4
    (folder / "broken.png").write_bytes(b"not a png at all")  # skipped: the sweep runs, its status says so
    rc = main(["sweep", "--images", str(folder), "--snr", "5", "--methods", "proposed,digital", "--out", str(out),
               "--model", "tiny", "--device", "cpu", "--no-plots", "--no-progress", "--metrics", "none"])
    cap = capsys.readouterr()
    done = json.loads(cap.out)  # (the JSON says why the status is 1: one image skipped, no row failed)
    assert rc == 1 and "warning: skipped" in cap.err and done["rows_reused"] == 4
    assert done["images_skipped"] == 1 and done["rows_failed"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--methods", "proposed,jpeg2000"], "unknown method 'jpeg2000'; valid methods: proposed, proposed_caption, "
                                         "proposed_fixed_point, proposed_clean_one, proposed_calibrated, "
                                         "random_noise, received, sd_semcom, digital"),
    (["--grid", "10,0"], "--grid entries are k,m,N"),
    (["--grid", "10,5,12"], "steps N must satisfy"),
])
def test_cli_usage_errors_exit_2(folder, tmp_path, capsys, argv, message):
    from gr_gdmcom.cli import main

    rc = main(["sweep", "--images", str(folder), "--out", str(tmp_path / "r"), "--model", "tiny"] + argv)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_empty_folder_exit_2(tmp_path, capsys):
    from gr_gdmcom.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["sweep", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--model", "tiny"])
    assert rc == 2
    assert "no images found in" in capsys.readouterr().err


def test_digital_worker_processes_give_the_same_rows(folder, tmp_path):
    a = run_sweep(_opts(folder, tmp_path / "a", methods="digital", snrs=[20.0]))
    b = run_sweep(_opts(folder, tmp_path / "b", methods="digital", snrs=[20.0], jobs=2))
    key = ("psnr", "decode_success", "detail", "symbols")
    ra = {report.row_key(r): [r[k] for k in key] for r in _csv(a.out / "rows.csv")}
    rb = {report.row_key(r): [r[k] for k in key] for r in _csv(b.out / "rows.csv")}
    assert ra == rb and len(ra) == 2
    # the digital chain gets exactly the proposed method's channel uses for each image
    assert {r["image"]: r["symbols"] for r in _csv(a.out / "rows.csv")} == {"astro": "128", "coffee": "96"}


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"]])
def test_help_renders(argv, capsys):
    from gr_gdmcom.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "sweep" in capsys.readouterr().out


def test_sigterm_ends_a_sweep_with_an_end_record(folder, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from gr_gdmcom.cli import main

    real, state = report.RowWriter.write, dict(n=0)

    def write(self, row):  # the scheduler's SIGTERM arrives after the first row
        state["n"] += 1
        if state["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, row)

    monkeypatch.setattr(report.RowWriter, "write", write)
    out = tmp_path / "res"
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's own where a Ray test ran first
    rc = main(["sweep", "--images", str(folder), "--snr", "5", "--methods", "digital", "--out", str(out),
               "--digital-codec", "jpeg", "--no-plots", "--no-progress", "--metrics", "none", "--model", "tiny"])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    end = json.loads((out / "run.json").read_text())["runs"][-1]
    assert end["interrupted"] is True and end["rows_computed"] == 1 and end["finished"]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler does not outlive the sweep


def test_a_96px_image_gets_3_ms_ssim_scales_and_the_sweep_goes_on(folder, tmp_path, components, capsys):
    """Sides 88..98 made torchmetrics raise ('image height must be larger than 90'), which ended
    the sweep with exit 2 after rows were written; now they score with 3 scales."""
    from gr_gdmcom.cli import main

    Image.open(DATA / "coffee.png").convert("RGB").resize((128, 96)).save(folder / "wide96.png")
    out = tmp_path / "res"
    rc = main(["sweep", "--images", str(folder), "--snr", "5", "15", "--methods", "proposed", "--out", str(out),
               "--model", "tiny", "--device", "cpu", "--no-plots", "--no-progress", "--metrics", "none"])
    assert rc == 0, capsys.readouterr().err
    rows = {(r["image"], r["snr_db"]): r for r in _csv(out / "rows.csv")}
    assert len(rows) == 6 and not any(r["error"] for r in rows.values())
    assert rows["wide96", "5"]["ms_ssim_scales"] == "3" and 0 <= float(rows["wide96", "5"]["ms_ssim"]) <= 1


def test_a_scoring_failure_is_one_error_row(folder, tmp_path, components, monkeypatch, capsys):
    """Whatever fails while scoring one image becomes that row's error (named image, size); the
    other images go on, and the exit status is 1 (rows with errors), not 2 (usage error)."""
    from gr_gdmcom.cli import main
    from gr_gdmcom.eval import sweep

    real = sweep.ms_ssim

    def ms_ssim(ref, img):
        if ref.shape[0] == 48:
            raise ValueError("For a given number of `betas` parameters 4 and kernel size 11, ...")
        return real(ref, img)

    monkeypatch.setattr(sweep, "ms_ssim", ms_ssim)
    out = tmp_path / "res"
    rc = main(["sweep", "--images", str(folder), "--snr", "5", "--methods", "proposed", "--out", str(out),
               "--model", "tiny", "--device", "cpu", "--no-plots", "--no-progress", "--metrics", "none"])
    assert rc == 1
    rows = {r["image"]: r for r in _csv(out / "rows.csv")}
    assert rows["astro"]["error"] == "" and rows["astro"]["psnr"]
    assert rows["coffee"]["error"].startswith("proposed scoring coffee (64×48): ValueError: For a given number")
    assert rows["coffee"]["psnr"] == "" and rows["coffee"]["symbols"] == "96"
    assert "1 with errors" in capsys.readouterr().err


@pytest.mark.parametrize("with_metadata", [False, True])
def test_a_torchvision_that_fails_to_import_leaves_psnr_ms_ssim_sweeps_working(folder, tmp_path, with_metadata):
    """The usual torch/torchvision mismatch (RuntimeError 'operator torchvision::nms does not
    exist') broke torchmetrics' own import, so every sweep ended in a traceback at the first
    MS-SSIM.  Now only the learned metrics are unavailable (with that reason)."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "fake"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    if with_metadata:  # as a pip-installed torchvision: torchmetrics then trusts its metadata
        (fake / "torchvision-0.20.0.dist-info").mkdir()
        (fake / "torchvision-0.20.0.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.20.0\n")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(root)]))
    out = tmp_path / "res"
    p = subprocess.run([sys.executable, "-c", "import sys; from gr_gdmcom.cli import main; sys.exit(main())",
                        "sweep", "--images", str(folder), "--snr", "5", "--methods", "proposed", "--out", str(out),
                        "--model", "patch-gmm", "--device", "cpu", "--no-plots", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert "torchvision does not import: RuntimeError: operator torchvision::nms does not exist" in p.stderr
    rows = _csv(out / "rows.csv")
    assert len(rows) == 2 and all(r["psnr"] and 0 <= float(r["ms_ssim"]) <= 1 and not r["error"] for r in rows)
    assert all(r["lpips"] == "" for r in rows)


def test_a_replaced_image_is_recomputed_not_reused(tmp_path, components, caplog):
    """The resume key was the file stem only: pic.jpg (123x77) replaced by a different pic.png
    (160x120) gave '0 rows computed, 1 already present' with the old image's numbers."""
    d = tmp_path / "stale"
    d.mkdir()
    Image.open(DATA / "astronaut.png").convert("RGB").resize((123, 77)).save(d / "pic.jpg")
    out = tmp_path / "res"
    opts = dict(methods="proposed", snrs=[5.0, 15.0], metrics=())
    first = run_sweep(_opts(d, out, **opts), components=components)
    old = {r["snr_db"]: r for r in _csv(out / "rows.csv")}
    assert first.rows_computed == 2 and len(old["5"]["image_sha256"]) == 16 and old["5"]["width"] == "123"
    (d / "pic.jpg").unlink()
    Image.open(DATA / "coffee.png").convert("RGB").resize((160, 120)).save(d / "pic.png")
    # only one SNR this time: the 15 dB row of the old picture must go too
    res = run_sweep(_opts(d, out, **dict(opts, snrs=[5.0])), components=components)
    assert res.rows_computed == 1 and res.rows_reused == 0
    rows = _csv(out / "rows.csv")
    assert len(rows) == 1 and rows[0]["width"] == "160" and rows[0]["height"] == "120"
    assert rows[0]["image_sha256"] != old["5"]["image_sha256"] and rows[0]["psnr"] != old["5"]["psnr"]
    assert "image pic changed since its 2 rows in rows.csv were computed" in caplog.text
    # unchanged now: nothing recomputed
    assert run_sweep(_opts(d, out, **dict(opts, snrs=[5.0])), components=components).rows_computed == 0


def test_one_snr_draws_no_snr_curves_and_metrics_none_drops_the_fid_note(folder, tmp_path, components, caplog):
    """A single SNR drew psnr_vs_snr.png with every point at one x; --metrics none still printed
    the FID/KID patch note."""
    out = tmp_path / "res"
    run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0], plots=True, metrics=()), components=components)
    assert not list((out / "plots").glob("*_vs_snr.*")) and not list((out / "plots").glob("snr_*"))
    assert (out / "plots" / "grid_snr5.png").is_file()
    assert "one SNR only (5 dB): no plots/<metric>_vs_snr figures" in caplog.text
    assert "FID/KID:" not in (out / "summary.md").read_text()
    # with the set metrics asked for, the note is there (here: why they did not run)
    run_sweep(_opts(folder, out, methods="proposed", snrs=[5.0, 15.0], plots=True, metrics=("fid",)),
              components=components)
    assert "FID/KID:" in (out / "summary.md").read_text()
    assert (out / "plots" / "psnr_vs_snr.png").is_file()


def test_package_prefix_names_the_bundled_images_from_any_folder(tmp_path, monkeypatch):
    """The docs' `--images gr_gdmcom/data` works only from the repository root; `package:` works
    anywhere, as for simulate and link."""
    from gr_gdmcom.eval.sweep import find_images

    monkeypatch.chdir(tmp_path)
    every = find_images(["package:"])
    assert {f.name for f in every} >= {"astronaut.png", "coffee.png"} and all(f.is_file() for f in every)
    (one,) = find_images(["package:coffee.png"])
    assert one == DATA / "coffee.png" or one.read_bytes() == (DATA / "coffee.png").read_bytes()
    with pytest.raises(SweepError, match=r"^no bundled image package:nope.png; bundled: .*astronaut.png"):
        find_images(["package:nope.png"])


def test_the_snr_strip_puts_each_rows_image_and_scores_in_its_method_row_and_snr_column(tmp_path, monkeypatch):
    """plots/snr_<image>: rows = methods, columns = SNRs; each tile is that row's own picture
    (a solid colour per row here), its PSNR / MS-SSIM under it (LPIPS once any row has one),
    a failed digital decode marked, a missing combination "not run"."""
    colours = {}
    rows = []
    for i, (method, snr) in enumerate([("proposed", 0), ("proposed", 10), ("digital", 0), ("digital", 10)]):
        colours[(method, snr)] = c = (40 * i + 20, 200 - 40 * i, 90)
        f = tmp_path / f"{method}_{snr}.png"
        Image.new("RGB", (8, 8), c).save(f)
        rows.append(dict(image="pic", snr_db=str(snr), method=method, setting="s", output=str(f), error="",
                         psnr=f"{10 + i}.5", ms_ssim=f"0.{i + 1}", lpips="",
                         decode_success="false" if (method, snr) == ("digital", 0) else "true"))
    rows.append(dict(image="pic", snr_db="20", method="proposed", setting="s", output=str(f), error="",
                     psnr="30", ms_ssim="0.9", lpips="", decode_success="true"))
    figs = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, stem: figs.append((fig, stem)) or [stem])
    original = np.zeros((8, 8, 3), np.uint8)
    assert report.plot_snr_strips(rows, {"pic": original}, tmp_path / "plots", tmp_path) == [tmp_path / "plots" / "snr_pic"]
    (fig, _), = figs
    axes = np.array(fig.axes).reshape(2, 4)          # proposed, digital  x  original, 0, 10, 20 dB
    assert [a.get_title() for a in axes[0]] == ["original", "0 dB", "10 dB", "20 dB"]
    for r, method in enumerate(("proposed", "digital")):
        for c, snr in enumerate((0, 10), start=1):
            tile = axes[r][c].images[0].get_array()
            assert tuple(int(v) for v in tile[4, 4]) == colours[(method, snr)]
        i = 2 * r
        assert axes[r][1].get_xlabel() == f"{10 + i}.50 dB / MS-SSIM 0.{i + 1}00"
    assert [t.get_text() for t in axes[1][1].texts] == ["not decoded\n(mid-grey)"]
    assert not axes[1][2].texts and not axes[1][3].images
    assert [t.get_text() for t in axes[1][3].texts] == ["not run"]
    assert "digital" in [t.get_text() for t in axes[1][0].texts]  # the row's label
    # with LPIPS measured on any row the second score is LPIPS
    rows[0]["lpips"] = "0.25"
    figs.clear()
    report.plot_snr_strips(rows, {"pic": original}, tmp_path / "plots", tmp_path)
    axes = np.array(figs[0][0].axes).reshape(2, 4)
    assert axes[0][1].get_xlabel() == "10.50 dB / LPIPS 0.2500" and axes[0][2].get_xlabel().endswith("LPIPS n/a")
    # one SNR: no strip
    assert report.plot_snr_strips([r for r in rows if r["snr_db"] == "0"], {"pic": original}, tmp_path, tmp_path) == []


def test_strip_names_are_safe_and_distinct():
    """Labels are file stems, or whole names where stems collide (pipeline.image_names)."""
    assert report.strip_name("kodim01") == "snr_kodim01"
    assert report.strip_name("my photo (2)") == "snr_my_photo_2"
    assert report.strip_name("a.png") == "snr_a_png" != report.strip_name("a.jpg") == "snr_a_jpg"
    assert report.strip_name("photo.v2") == "snr_photo_v2" and report.strip_name("a~2") == "snr_a_2"
    assert report.strip_name("..") == "snr_image"


def test_strip_names_of_colliding_labels_stay_distinct(tmp_path, monkeypatch):
    """Labels "a", "a_2" and "a~" make snr_a, snr_a_2 and (snr_a taken) a suffix: a suffix from the
    count of names so far was snr_a_2 again, forever."""
    f = tmp_path / "t.png"
    Image.new("RGB", (4, 4)).save(f)
    rows = [dict(image=im, snr_db=str(s), method="proposed", setting="s", output=str(f), error="", psnr="10",
                 ms_ssim="0.5", lpips="") for im in ("a", "a_2", "a~") for s in (0, 10)]
    monkeypatch.setattr(report, "_save_figure", lambda fig, stem: [stem])
    orig = {im: np.zeros((4, 4, 3), np.uint8) for im in ("a", "a_2", "a~")}
    got = report.plot_snr_strips(rows, orig, tmp_path, tmp_path)
    assert [p.name for p in got] == ["snr_a", "snr_a_2", "snr_a_3"]
