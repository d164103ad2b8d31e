"""Summary statistics, the row file and the markdown tables (no model needed)."""

import socket

import numpy as np
import pytest

from gr_gdmcom.eval import learned, report
from gr_gdmcom.eval.baselines import latent_symbols, load_captions, parse_grid, parse_methods


def test_mean_ci_is_student_t():
    from scipy import stats

    v = [20.1, 22.5, 21.0, 23.7, 19.9]
    mean, half, n = report.mean_ci(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert n == 5 and mean == pytest.approx(np.mean(v))
    assert half == pytest.approx((hi - lo) / 2)
    assert report.mean_ci([3.0]) == (3.0, None, 1)
    assert report.mean_ci([]) == (None, None, 0)
    assert report.mean_ci([None, 1.0, 3.0])[2] == 2


def _row(image, snr, method, psnr, **kw):
    r = {k: "" for k in report.ROW_FIELDS}
    r.update(image=image, snr_db=str(snr), method=method, setting="s", psnr=str(psnr), **kw)
    return r


def test_summary_groups_and_skips_error_rows():
    rows = [_row("a", 5, "proposed", 20), _row("b", 5, "proposed", 22), _row("c", 5, "proposed", "", error="boom"),
            _row("a", 5, "digital", 10, decode_success="false"), _row("b", 5, "digital", 30, decode_success="true")]
    s = report.summarize(rows)
    assert [x["method"] for x in s] == ["proposed", "digital"]
    p = s[0]
    assert p["n_images"] == 2 and p["n_errors"] == 1 and p["psnr_mean"] == 21.0 and p["psnr_ci95"] > 0
    assert p["lpips_mean"] is None and p["lpips_n"] == 0
    assert s[1]["success_rate"] == 0.5
    md = report.summary_markdown(s, dict(availability={"lpips": dict(available=False, reason="no pyiqa")}))
    assert "**unavailable** — no pyiqa." in md
    assert "1 rows carry an error" in md


def test_rows_file_drops_a_torn_line_and_keeps_empty_cells(tmp_path):
    path = tmp_path / "rows.csv"
    with report.RowWriter(path) as w:
        w.write(dict(image="a", snr_db=5.0, method="proposed", setting="x", psnr=21.5, lpips=None,
                     decode_success=True, detail=dict(mcs="qpsk-1/2", quality=None)))
    with open(path, "a") as f:
        f.write("b,/b.png,64,64,5,prop")
    rows = report.read_rows(path)
    assert len(rows) == 1
    r = rows[0]
    assert r["psnr"] == "21.5" and r["lpips"] == "" and r["decode_success"] == "true" and r["detail"] == "mcs=qpsk-1/2"
    assert path.read_text().endswith("\n") and ",prop\n" not in path.read_text() + "\n" and len(path.read_text().splitlines()) == 2
    assert report.row_key(r) == ("a", "5", "proposed", "x")
    assert report.fmt_cell(float("nan")) == "" and report.fmt_cell(float("inf")) == "inf"


def test_table2_layout():
    rows = []
    for g, base in (((10, 0, 15), 22.0), ((5, 5, 15), 21.0)):
        for i, img in enumerate("ab"):
            rows.append(_row(img, 5, "proposed", base + i, ms_ssim="0.8"))
            rows[-1]["setting"] = f"k{g[0]},m{g[1]},N{g[2]},norescale"
    md = report.table2_markdown(report.summarize(rows), [(10, 0, 15), (5, 5, 15)])
    lines = md.splitlines()
    i = lines.index("## 5 dB")
    assert lines[i + 2].startswith("| k | m | N | PSNR↑")
    assert lines[i + 4].startswith("| 10 | 0 | 15 | 22.50 ± ")
    assert lines[i + 5].startswith("| 5 | 5 | 15 | 21.50 ± ")
    assert report.parse_grid_label("k10,m0,N15,norescale") == (10, 0, 15)
    assert report.parse_grid_label("k5,m5,snr,rescale") is None


def test_parsers():
    assert parse_methods("proposed, digital") == ["proposed", "digital"]
    with pytest.raises(ValueError, match="valid methods: proposed, proposed_caption, proposed_fixed_point, proposed_clean_one, proposed_calibrated, random_noise, received, sd_semcom, digital"):
        parse_methods("proposed,deepjscc")
    assert parse_grid(["10,0,10", "5,5,15"]) == [(10, 0, 10), (5, 5, 15)]
    assert parse_grid(["5,5,15", "10,0,10", " 5, 5,15"]) == [(5, 5, 15), (10, 0, 10)]  # (twice: one setting)
    assert parse_methods(["proposed,digital", "proposed"]) == ["proposed", "digital"]
    for bad, msg in ((["10,0"], "--grid entries are k,m,N (three integers), got '10,0'"),
                     (["1,2,x"], "--grid entries are k,m,N (three integers), got '1,2,x'"),
                     (["5,-1,3"], "--grid entries must be non-negative, got '5,-1,3'")):
        with pytest.raises(ValueError) as e:
            parse_grid(bad)
        assert str(e.value) == msg
    assert latent_symbols(512, 768) == 4 * 64 * 96 // 2 == 3 * 512 * 768 // 96
    assert latent_symbols(48, 64) == 4 * 6 * 8 // 2


def test_captions_json_and_csv(tmp_path):
    j = tmp_path / "c.json"
    j.write_text('{"kodim01.png": "a red door"}')
    assert load_captions(j) == {"kodim01.png": "a red door"}
    c = tmp_path / "c.csv"
    c.write_text("file,caption\nkodim01.png,\"a door, red\"\nkodim02,a motorbike\n")
    assert load_captions(c) == {"kodim01.png": "a door, red", "kodim02": "a motorbike"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_captions(bad)
    # saved as "UTF-8 with BOM" (a spreadsheet's CSV): the first image's name used to keep the BOM,
    # so its caption was never found and it silently got the fixed prompt; JSON was refused
    c.write_bytes(b"\xef\xbb\xbfkodim01.png,a red door\nkodim02.png,a boat\n")
    assert load_captions(c) == {"kodim01.png": "a red door", "kodim02.png": "a boat"}
    c.write_bytes(b"\xef\xbb\xbffile,caption\nkodim01.png,a red door\n")
    assert load_captions(c) == {"kodim01.png": "a red door"}
    j.write_bytes(b'\xef\xbb\xbf{"kodim01.png": "a red door"}')
    assert load_captions(j) == {"kodim01.png": "a red door"}
    c.write_text("kodim01.png,a red door\n\nkodim02.png,a boat\n kodim01.png ,a blue door\n")
    with pytest.raises(ValueError) as e:
        load_captions(c)
    assert str(e.value) == f"captions file {c}, line 4: kodim01.png already has a caption (line 1)"


def test_patches_for_fid():
    assert len(learned.patches(np.zeros((512, 768, 3), np.uint8))) == 6   # a Kodak image
    assert len(learned.patches(np.zeros((255, 1000, 3), np.uint8))) == 0
    assert learned.patches(np.zeros((300, 300, 3), np.uint8))[0].shape == (256, 256, 3)


def test_unavailable_backends_report_a_reason(monkeypatch):
    def no_pkg(device):
        raise learned.Unavailable("pyiqa is not installed (test)")

    def no_weights(device):
        with learned.offline():
            socket.create_connection(("127.0.0.1", 9))

    no_weights.backend = "fake:download"
    monkeypatch.setattr(learned, "FACTORIES", {"lpips": [no_pkg, no_weights], "dists": [no_weights],
                                               "pieapp": [], "fid": [no_pkg], "kid": [no_pkg]})
    m = learned.LearnedMetrics()
    a = m.availability()
    assert not any(x.available for x in a.values())
    assert a["lpips"].reason.startswith("pyiqa is not installed (test); fake:download: pretrained weights are not")
    assert "no download is attempted" in a["dists"].reason
    assert m.score(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)) == {}
    s = m.set_scores([np.zeros((256, 256, 3), np.uint8)] * 2, [np.zeros((256, 256, 3), np.uint8)] * 2)
    assert s["fid"] == dict(reason="pyiqa is not installed (test)", patches=2)
    assert learned.LearnedMetrics(names=("lpips",)).availability()["fid"].reason.startswith("not requested")


def test_weights_missing_from_the_hf_hub_cache_are_said_in_the_offline_guard_s_words(monkeypatch):
    """Newer pyiqa keeps its weights on the Hugging Face hub: offline, huggingface_hub raises its own
    LocalEntryNotFoundError before any socket opens, and the reason was its raw text."""
    hub = pytest.importorskip("huggingface_hub")

    def hub_weights(device):
        with learned.offline():
            hub.hf_hub_download("chaofengc/IQA-PyTorch-Weights", "LPIPS_v0.1_alex-df73285e.pth")

    hub_weights.backend = "fake:hub"
    monkeypatch.setenv("HF_HOME", "/nonexistent-gdmcom-hf")
    monkeypatch.setattr(learned, "FACTORIES", {"lpips": [hub_weights], "dists": [], "pieapp": [], "fid": [],
                                               "kid": []})
    reason = learned.LearnedMetrics(names=("lpips",)).availability()["lpips"].reason
    assert reason == "fake:hub: pretrained weights are not in the local cache (no download is attempted here)"


def test_this_environment_without_torchvision_marks_all_unavailable():
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision imports here")
    except Exception:
        pass
    a = learned.LearnedMetrics().availability()
    assert not any(x.available for x in a.values())
    assert all(x.reason for x in a.values())


def test_offline_guard_restores_the_network():
    orig = socket.socket.connect
    with learned.offline():
        with pytest.raises(OSError, match="never downloads"):
            socket.create_connection(("127.0.0.1", 9), timeout=0.1)
    assert socket.socket.connect is orig


def test_set_scores_with_a_fake_backend(monkeypatch):
    seen = {}

    def fake_fid(device):
        def compute(refs, imgs):
            seen["n"] = len(refs)
            return dict(value=12.5)
        return compute

    monkeypatch.setattr(learned, "FACTORIES", {**{k: [] for k in learned.ALL}, "fid": [fake_fid]})
    m = learned.LearnedMetrics()
    imgs = [np.zeros((512, 768, 3), np.uint8)] * 2
    s = m.set_scores(imgs, imgs)
    assert s["fid"] == dict(value=12.5, patches=12) and seen["n"] == 12
    assert "reason" in s["kid"] and "value" not in s["kid"]
    small = [np.zeros((64, 64, 3), np.uint8)] * 3
    assert "only 0 256x256 patches" in m.set_scores(small, small)["fid"]["reason"]


def test_a_metric_failing_on_one_image_leaves_only_that_cell_empty(monkeypatch):
    def picky(device):
        def score(ref, img):
            if ref.shape[0] < 64:
                raise RuntimeError("input too small")
            return 0.25
        return score

    monkeypatch.setattr(learned, "FACTORIES", {**{k: [] for k in learned.ALL}, "lpips": [picky]})
    m = learned.LearnedMetrics()
    small, big = np.zeros((32, 32, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    assert m.score(small, small) == {}
    assert m.score(big, big) == {"lpips": 0.25}
    assert m.errors["lpips"][0] == 1 and "input too small" in m.errors["lpips"][1]


def test_error_bars_need_three_images_and_stay_in_the_metric_range():
    # n = 2 (the bundled images): no interval at all (t = 12.7 would span -68..+102 dB)
    assert report.error_bar(17.0, 85.0, 2, "psnr") is None
    # MS-SSIM 0.9 +- 0.3: the bar stops at 1 above and goes the whole 0.3 below
    assert report.error_bar(0.9, 0.3, 5, "ms_ssim") == pytest.approx((0.3, 0.1))
    assert report.error_bar(0.05, 0.3, 5, "ms_ssim") == pytest.approx((0.05, 0.3))
    assert report.error_bar(3.0, 5.0, 3, "psnr") == pytest.approx((3.0, 5.0))  # PSNR >= 0
    assert report.error_bar(3.0, None, 1, "psnr") is None


def test_summary_scales_note_names_the_side_the_code_uses_and_the_zero_floor():
    """summary.md said 'below 161 px' while the code and evaluation.md say 176; and MS-SSIM's
    exact 0 (torchmetrics' normalize='relu' clamp) is explained, not left to look like a bug."""
    from gr_gdmcom.eval.metrics import ms_ssim_scales

    rows = [_row("a", 5, "proposed", 20, ms_ssim="0", ms_ssim_scales="4"),
            _row("b", 5, "proposed", 22, ms_ssim="0.5", ms_ssim_scales="5")]
    md = report.summary_markdown(report.summarize(rows), {})
    assert "images with a side below 176 px use fewer than the standard 5 scales" in md
    assert ms_ssim_scales(175, 175) == 4 and ms_ssim_scales(176, 176) == 5
    assert "normalize='relu'" in md and "an exact 0 is a real floor" in md and "still scores above 0" in md


def test_offline_guard_keeps_torch_hub_s_download_line_off_stdout(tmp_path, capsys):
    """torch.hub prints `Downloading: "URL" to FILE` on stdout before the download the guard refuses:
    a line that is not true, in the stream that carries gdmcom sweep's JSON lines."""
    import torch

    with learned.offline():
        print("pyiqa says hello")
        with pytest.raises(OSError, match="never downloads"):
            torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/gdmcom-test.pth",
                                               model_dir=str(tmp_path))
    out, err = capsys.readouterr()
    assert out == "" and err == "pyiqa says hello\n"
    print("after")
    assert capsys.readouterr().out == "after\n"


def test_fid_and_kid_on_too_few_patches_are_marked_and_explained():
    """FID over 2 patches was printed as a plain number (helper-61).  Below 2048 patches (FID's
    feature count: singular covariances, a value biased by the count) and 1000 (KID: each subset
    the whole set, std 0 by construction) the cell carries its count and the notes say why."""
    rows = [_row(i, 5, "proposed", 20 + j) for j, i in enumerate("ab")] + [_row(i, 5, "digital", 30) for i in "ab"]
    for r in rows[:2]:
        r["setting"] = "k5,m5,N15,norescale"
    scores = {("proposed", "k5,m5,N15,norescale", "5"): dict(fid=dict(value=81.25, patches=2),
                                                             kid=dict(value=0.0123, std=0.0, subset_size=2, patches=2)),
              ("digital", "s", "5"): dict(fid=dict(value=3.5, patches=4096), kid=dict(value=0.001, std=0.0004,
                                                                                     subset_size=1000, patches=4096))}
    summary = report.summarize(rows, scores)
    md = report.summary_markdown(summary, {})
    fid_table = md.split("## FID")[1].split("##")[0]
    assert "| 81.25 (n=2†) |" in fid_table and "| 3.50 |" in fid_table  # 4096 patches: no mark
    assert "| 0.0123 (n=2†) |" in md.split("## KID")[1].split("##")[0]
    assert "**FID rests on too few patches** (n=2 per set, marked †): fewer samples than its 2048" in md
    assert "**KID rests on too few patches** (n=2 per set, marked †)" in md and "std is 0 by construction" in md
    t2 = report.table2_markdown(summary, [(5, 5, 15)])
    assert "| 81.25 (n=2†) |" in t2 and "**FID rests on too few patches**" in t2
    # enough patches everywhere: no mark, no note
    scores[("proposed", "k5,m5,N15,norescale", "5")] = scores[("digital", "s", "5")]
    md = report.summary_markdown(report.summarize(rows, scores), {})
    assert "†" not in md and "too few patches" not in md
