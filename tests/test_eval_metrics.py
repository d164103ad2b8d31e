"""eval.metrics against references written out here or torchmetrics: known values, the number
of MS-SSIM scales for every size class, grey images, too-small images and exact errors."""

import math

import numpy as np
import pytest
import torch

from gr_gdmcom.eval.metrics import ms_ssim, ms_ssim_scales, psnr


def scales_formula(h, w):
    """Scales that fit: the coarsest of n scales is the image shrunk 2^(n-1) times (floor), and
    it must still hold the 11-pixel window; at most the 5 standard scales.  torchmetrics 1.x
    asks more of 4 scales: side // (4-1)^2 > 10, i.e. a side of 99 (not 88)."""
    side = min(h, w)
    n = 0 if side < 11 else min(5, int(math.floor(math.log2(side / 11))) + 1)
    return 3 if n == 4 and side < 99 else n


@pytest.mark.parametrize("h,w", [(4, 4), (10, 64), (11, 11), (21, 30), (22, 22), (43, 50), (44, 44), (87, 87),
                                 (88, 300), (96, 128), (98, 98), (99, 99), (175, 175), (176, 176), (352, 352),
                                 (1024, 768), (4096, 4096)])
def test_ms_ssim_scales_fit_the_window(h, w):
    assert ms_ssim_scales(h, w) == scales_formula(h, w)


def test_every_side_torchmetrics_accepts_the_scales_chosen():
    """Sides 88..98 used to get 4 scales, which torchmetrics refuses ('the image height must be
    larger than 90'): every shorter side from 11 to 200 now gives a value."""
    for side in range(11, 201):
        a, b = _pair(side, side + 7, side, grey=True)
        val, n = ms_ssim(a, b)
        assert n == scales_formula(side, side + 7) and 0.0 <= val <= 1.0, side
    from gr_gdmcom.eval.metrics import FULL_SCALES_SIDE

    assert FULL_SCALES_SIDE == 176


def _pair(h, w, seed, grey=False):
    r = np.random.default_rng(seed)
    shape = (h, w) if grey else (h, w, 3)
    a = np.repeat(np.repeat(r.integers(0, 256, (h // 2 + 1, w // 2 + 1) + shape[2:], dtype=np.uint8), 2, 0), 2, 1)
    a = a[:h, :w]
    b = np.clip(a.astype(int) + r.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_one_scale_ms_ssim_is_ssim_and_too_small_is_none():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a, b = _pair(16, 16, 1)
    val, n = ms_ssim(a, b)
    t = [torch.from_numpy(v.astype(np.float64) / 255).permute(2, 0, 1)[None] for v in (b, a)]
    assert n == 1 and val == pytest.approx(float(ssim(*t, data_range=1.0, kernel_size=11)), abs=1e-5)
    assert ms_ssim(*_pair(8, 8, 2)) == (None, 0)
    assert ms_ssim(*_pair(4, 40, 3)) == (None, 0)


def test_grey_images_score_as_their_rgb_copies():
    a, b = _pair(64, 48, 4, grey=True)
    rgb = [np.repeat(v[:, :, None], 3, axis=2) for v in (a, b)]
    assert ms_ssim(a, b) == pytest.approx(ms_ssim(*rgb))
    assert ms_ssim(a, b)[1] == 3
    assert psnr(a, b) == pytest.approx(psnr(*rgb))


def test_shape_mismatch_error_names_both_shapes():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^images differ in shape: \(8, 8, 3\) vs \(8, 9, 3\)$"):
        psnr(a, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match=r"^images differ in shape: \(8, 8, 3\) vs \(8, 8\)$"):
        ms_ssim(a, np.zeros((8, 8), np.uint8))


def test_float_images_are_refused_not_scored_on_the_wrong_scale():
    """A 0..1 float image scored as if 0..255 (found by a library walkthrough): psnr gave 68.13 dB for
    a difference of 0.1 (20 dB); both metrics now refuse anything but uint8, saying how to convert."""
    a = np.zeros((16, 16, 3))
    for f in (psnr, ms_ssim):
        with pytest.raises(ValueError, match=r"^metrics take uint8 images \(0..255\), got float64; a float image in "
                                             r"0..1: \(x \* 255\).round\(\).astype\(np.uint8\)$"):
            f(a, np.full_like(a, 0.1))


# --------------------------------------------------------------------------- weights of the learned metrics, offline
def _hub_factory(model_dir, via_stderr=False):
    """A metric whose network loads its weights as torchvision / torch-fidelity do: torch.hub's
    load_state_dict_from_url into ``model_dir`` (torch-fidelity sends its stdout to stderr meanwhile)."""
    import contextlib
    import sys

    from gr_gdmcom.eval import learned

    def factory(device):
        with learned.offline():
            with contextlib.redirect_stdout(sys.stderr) if via_stderr else contextlib.nullcontext():
                sd = torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/net-0123abcd.pth",
                                                        model_dir=str(model_dir))
        w = float(sd["w"])
        return lambda ref, img: w * float(np.mean(np.abs(ref.astype(float) - img.astype(float))))

    factory.backend = "fake:hub-net"
    return factory


@pytest.mark.parametrize("via_stderr", [False, True])
def test_missing_metric_weights_name_the_file_to_supply(tmp_path, monkeypatch, capsys, via_stderr):
    """The reason said only 'not in the local cache': a user with the weights on another disk was
    not told which file goes where; and torch-fidelity's 'Downloading: URL to FILE' (sent to stderr)
    was printed for a download that never happens."""
    from gr_gdmcom.eval import learned

    monkeypatch.setattr(learned, "FACTORIES", {**{k: [] for k in learned.ALL},
                                               "lpips": [_hub_factory(tmp_path, via_stderr)]})
    a = learned.LearnedMetrics(names=("lpips",)).availability()["lpips"]
    assert not a.available
    assert a.reason.startswith(f"fake:hub-net: pretrained weights are not in the local cache: no "
                               f"{tmp_path / 'net-0123abcd.pth'} (no download is attempted here; ")
    assert "TORCH_HOME" in a.reason
    assert "Downloading" not in capsys.readouterr().err


def test_metric_weights_present_in_the_cache_are_used_offline(tmp_path, monkeypatch):
    from gr_gdmcom.eval import learned

    torch.save({"w": torch.tensor(0.5)}, tmp_path / "net-0123abcd.pth")
    monkeypatch.setattr(learned, "FACTORIES", {**{k: [] for k in learned.ALL}, "lpips": [_hub_factory(tmp_path)]})
    m = learned.LearnedMetrics(names=("lpips",))
    assert m.availability()["lpips"].available
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 10, np.uint8)
    assert m.score(a, b) == {"lpips": 5.0}


def test_a_cached_weight_file_that_is_not_the_published_one_is_refused(tmp_path, monkeypatch):
    """torch.hub checks the SHA-256 prefix in a file's name only when it downloads (torchvision asks
    check_hash=True); a file copied in by hand -- another version, a random-weight stand-in -- was
    loaded, and LPIPS gave plausible numbers (0.215 on a decode) that were not LPIPS."""
    import hashlib

    from gr_gdmcom.eval import learned

    def factory_for(name):
        def factory(device):
            with learned.offline():
                sd = torch.hub.load_state_dict_from_url(f"https://download.pytorch.org/models/{name}",
                                                        model_dir=str(tmp_path), check_hash=True)
            return lambda ref, img: float(sd["w"])
        factory.backend = "fake:torchvision-net"
        return factory

    torch.save({"w": torch.tensor(0.5)}, tmp_path / "blob")
    digest = hashlib.sha256((tmp_path / "blob").read_bytes()).hexdigest()
    (tmp_path / "blob").rename(tmp_path / f"net-{digest[:8]}.pth")
    (tmp_path / "net-00000000.pth").write_bytes((tmp_path / f"net-{digest[:8]}.pth").read_bytes())
    monkeypatch.setattr(learned, "FACTORIES", {**{k: [] for k in learned.ALL},
                                               "lpips": [factory_for("net-00000000.pth")],
                                               "dists": [factory_for(f"net-{digest[:8]}.pth")]})
    a = learned.LearnedMetrics(names=("lpips", "dists")).availability()
    assert not a["lpips"].available
    assert a["lpips"].reason == (f"{tmp_path / 'net-00000000.pth'} is not the published weight file: its SHA-256 "
                                 f"starts {digest[:8]}, its name says 00000000 (a partial copy or other weights: "
                                 "copy it again)")
    assert a["dists"].available
