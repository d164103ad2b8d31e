"""End to end through real GNU Radio top blocks with the tiny model."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gnuradio.gr")

from gr_gdmcom.cli import main  # noqa: E402
from gr_gdmcom.codec import select_steps  # noqa: E402
from gr_gdmcom.config import CodecConfig  # noqa: E402
from gr_gdmcom.link import ChannelConfig, run_link  # noqa: E402
from gr_gdmcom.phy import FrameConfig  # noqa: E402

pytestmark = pytest.mark.gnuradio
TINY = CodecConfig(model="tiny", device="cpu")


@pytest.fixture
def images(tmp_path, small):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    Image.fromarray(small[:60, :52]).save(a)
    Image.fromarray(small[::-1]).save(b)
    return [a, b]


def test_awgn_link_at_10_db(tmp_path, images):
    run = run_link([str(p) for p in images], str(tmp_path / "out"), ChannelConfig(snr_db=10.0, seed=3), TINY, TINY,
                   FrameConfig(), names={0: "a", 1: "b"})
    res = {r["image_id"]: r for r in run["results"]}
    assert sorted(res) == [0, 1]
    for i, p in enumerate(images):
        r = res[i]
        assert abs(r["snr_est_db"] - 10.0) < 1.0
        alpha = run["tx_events"][i]["alpha"]
        assert r["n_steps"] == select_steps(r["snr_est_db"], power=1 / alpha ** 2).n_steps
        assert Image.open(r["file"]).size == Image.open(p).size
    assert run["counters"]["header_crc_fail"] == 0 and run["counters"]["images_complete"] == 2


def test_link_cli_impaired_channel(tmp_path, images, capsys):
    rc = main(["link", "--image", str(images[0]), "--snr", "10", "--cfo", "0.005", "--delay", "0.37",
               "--taps", "1", "0.3j", "-0.1", "--model", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert rc == 0, rows
    (row,) = rows
    assert row["channel"] == "model" and row["image"] == "a"
    assert abs(row["snr_est_db"] - 10.0) < 1.0
    for key in ("image", "snr_db", "snr_est_db", "n_steps", "psnr", "ms_ssim"):
        assert key in row
    assert (tmp_path / "snr10" / "a.png").exists()
    # the picture to open: original and decode side by side, labelled with the receiver's estimate
    assert row["sheet"] == str(tmp_path / "a_snrs.png")
    assert f"pictures (original, then each SNR): {row['sheet']}\n" in captured.err
    sheet = np.asarray(Image.open(row["sheet"]))
    dec = np.asarray(Image.open(tmp_path / "snr10" / "a.png"))
    h = round(dec.shape[0] * 256 / dec.shape[1])
    want = np.asarray(Image.fromarray(dec).resize((256, h), Image.NEAREST), np.float64)
    assert sheet.shape[1] == 2 * 262 + 6 and np.abs(sheet[6:6 + h, 268:524] - want).mean() < 1.0


def test_link_reports_unreadable_image(tmp_path, images, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    rc = main(["link", "--image", str(bad), str(images[1]), "--snr", "12", "--model", "tiny", "--device", "cpu",
               "--out", str(tmp_path / "o")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1
    assert rows[0]["image"] == "bad" and rows[0]["error"].startswith("not sent: cannot read image")
    assert rows[1]["image"] == "b" and "error" not in rows[1]


def test_link_with_a_sample_clock_offset(tmp_path, small):
    """channel_model at 100 ppm clock offset: the receiver re-times the burst (0.6 sample
    of drift over it) and the estimate stays within 1 dB of the 25 dB channel."""
    img = tmp_path / "big.png"
    Image.fromarray(small).resize((256, 256)).save(img)  # 2048 latent symbols: one long burst
    run = run_link([str(img)], str(tmp_path / "out"), ChannelConfig(snr_db=25.0, kind="model", cfo=0.002,
                                                                     epsilon=1.0 + 100e-6, seed=4),
                   TINY, TINY, FrameConfig(), names={0: "big"})
    (r,) = run["results"]
    assert run["counters"]["timing_tracked"] == 1 and run["counters"]["header_crc_fail"] == 0, run["counters"]
    assert abs(r["snr_est_db"] - 25.0) < 1.0, r["snr_est_db"]


def test_link_at_bcr_1_384_sends_a_quarter_of_the_symbols(tmp_path, small, capsys):
    """``--bcr 1/384`` (``--reduce 4``): BCR 1/384 through the GNU Radio link; the header's flags
    carry the reduction to the receiver, which decodes an image of the original size (docs/rate.md)."""
    img = tmp_path / "s.png"
    Image.fromarray(small[:48, :40]).save(img)  # latent 4 x 6 x 5 = 120 values: 60 symbols whole
    rc = main(["link", "--image", str(img), "--snr", "12", "--model", "tiny", "--device", "cpu", "--bcr", "1/384",
               "--reduce-method", "pool", "--out", str(tmp_path / "o")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0, rows
    (row,) = rows
    # 2x2 pooling of a 6 x 5 latent: 3 x 3 blocks per channel (the right column of blocks is 2 x 1)
    assert row["symbols"] == 4 * 3 * 3 // 2 == 18
    assert row["complete"] and Image.open(row["output"]).size == (40, 48)


def test_link_with_mean_removal_restores_the_means(tmp_path, small, components, monkeypatch):
    """``remove_mean`` (the default): the frame header carries the four float16 channel
    means, and the sink's image is bit for bit the in-process decode of the received
    symbols with the transmitter's own means added back (docs/rate.md)."""
    import dataclasses

    import numpy as np

    from gr_gdmcom.codec import GenerativeCodec
    from gr_gdmcom.pipeline import RxPipeline

    seen = []
    real = RxPipeline.decode
    monkeypatch.setattr(RxPipeline, "decode", lambda self, img: seen.append(img) or real(self, img))
    path = tmp_path / "a.png"
    Image.fromarray(small[:64, :48]).save(path)
    cfg = TINY
    assert cfg.remove_mean  # on by default
    run = run_link([str(path)], str(tmp_path / "out"), ChannelConfig(snr_db=10.0, seed=6), cfg, cfg, FrameConfig(),
                   names={0: "a"})
    (res,), (img,) = run["results"], seen
    assert "error" not in res and run["counters"]["header_invalid"] == 0
    codec = GenerativeCodec(cfg, components=components)
    enc = codec.encode(small[:64, :48], "a")
    # the tiny model's latent sits far off the origin: the means are large and now travel
    assert len(enc.meta.means) == 4 and min(enc.meta.means) < -0.5, enc.meta.means
    assert img.header.flags & 0x20 and img.header.means == enc.meta.means  # float16, exactly
    meta = dataclasses.replace(enc.meta, alpha=float(np.float32(enc.meta.alpha)))  # the header's float32 alpha
    ref = codec.decode(img.symbols, meta, float(img.snr_db), noise_var=img.symbol_noise_var).image  # as the sink
    got = np.asarray(Image.open(res["file"]).convert("RGB"))
    np.testing.assert_array_equal(got, ref)
    # and the means matter: without them the same symbols decode to another image
    lost = codec.decode(img.symbols, dataclasses.replace(meta, means=()), float(img.snr_db),
                        noise_var=img.symbol_noise_var).image
    assert np.abs(lost.astype(int) - ref.astype(int)).mean() > 5


def test_each_seed_is_its_own_reproducible_channel(tmp_path, images):
    """GNU Radio seeds from the clock when given 0: the link runs seed s as s + 1, so --seed 0 and
    --seed 1 are different channels (they were the same one) and each repeats exactly."""
    def est(seed, run):
        out = run_link([str(images[0])], str(tmp_path / f"out{seed}-{run}"), ChannelConfig(snr_db=10.0, seed=seed),
                       TINY, TINY, FrameConfig(), names={0: "a"})
        return out["results"][0]["snr_est_db"]

    first, again, other = est(0, 1), est(0, 2), est(1, 1)
    assert first == again
    assert first != other


def test_link_through_flat_fading(tmp_path, small, capsys):
    """--fading puts GNU Radio's fading_model (Rayleigh, or Rician with --rician-k) before the
    noise: over four seeds at 10 dB average SNR the image is received every time, its SNR
    estimate spread by the fades (an AWGN link with the same seeds stays within 0.5 dB);
    out-of-range settings are refused with their reason."""
    img = tmp_path / "big.png"
    Image.fromarray(small).resize((256, 256)).save(img)  # 2048 latent symbols: one burst with the copy
    est = {}
    for fading in (0.0, 1e-4):
        for seed in range(4):
            ch = ChannelConfig(snr_db=10.0, seed=seed, fading=fading)
            run = run_link([str(img)], str(tmp_path / f"o{fading}{seed}"), ch, TINY, TINY, FrameConfig(),
                           names={0: "big"})
            (r,) = run["results"]
            assert r["complete"] and "error" not in r, r
            est.setdefault(fading, []).append(r["snr_est_db"])
    assert max(est[0.0]) - min(est[0.0]) < 0.5, est
    assert max(est[1e-4]) - min(est[1e-4]) > 1.0, est
    rc = main(["link", "--image", str(img), "--snr", "10", "--fading", "0.5", "--model", "tiny", "--device", "cpu",
               "--out", str(tmp_path / "bad")])
    assert rc == 2 and "fading (fD Ts) must be in 0 .. 0.1, got 0.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"rician_k must be finite and >= 0 \(0 = Rayleigh\), got -1"):
        ChannelConfig(fading=1e-4, rician_k=-1)


def test_link_through_selective_fading(tmp_path, small):
    """--selective makes each tap a path that fades on its own (selective_fading_model): three
    paths at fD Ts 1e-4, 20 dB.  The receiver's dispersive pass (FrameConfig.dispersive_eq) is
    what makes it usable: its estimate 14.7 dB against 0.7 without it (other seeds: 9.8 / 0.1,
    3.4 / 1.3; a draw in a deep fade stays at -12 with or without)."""
    img = tmp_path / "big.png"
    Image.fromarray(small).resize((256, 256)).save(img)  # 2048 latent symbols: one burst
    ch = ChannelConfig(snr_db=20.0, seed=2, fading=1e-4, taps=(1.0, 0.9, 0.8), selective=True, kind="model")
    est = {}
    for disp in (True, False):
        run = run_link([str(img)], str(tmp_path / f"o{disp}"), ch, TINY, TINY, FrameConfig(dispersive_eq=disp),
                       names={0: "big"})
        (r,) = run["results"]
        assert r["complete"] and "error" not in r, r
        est[disp] = r["snr_est_db"]
        assert run["counters"].get("dispersive", 0) == (1 if disp else 0), run["counters"]
    assert est[True] > 7.0 and est[False] < 4.0, est
    with pytest.raises(ValueError, match=r"selective \(--selective\) makes each of several taps fade"):
        ChannelConfig(fading=1e-4, selective=True, kind="model")


def test_a_receiver_running_another_model_says_so(tmp_path, small, caplog):
    """The helper's two-host case: transmitter and receiver on different models decoded noise and
    reported success.  The header carries the transmitter's model fingerprint; the receiver
    decodes (it cannot do better) but flags the image, counts it and warns."""
    Image.fromarray(small).save(tmp_path / "a.png")
    tx, same, other = (CodecConfig(model=m, device="cpu") for m in ("analytic", "analytic", "analytic:seed=1"))
    for rx, mismatch in ((same, False), (other, True)):
        caplog.clear()
        run = run_link([str(tmp_path / "a.png")], str(tmp_path / "out"), ChannelConfig(snr_db=20.0, seed=1), tx, rx,
                       FrameConfig())
        res, = run["results"]
        assert "error" not in res and res["model_mismatch"] is mismatch, res
        assert run["counters"]["model_mismatch"] == int(mismatch)
        warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sink: image 0 was encoded by")]
        assert len(warned) == int(mismatch), warned
    assert warned[0].startswith("sink: image 0 was encoded by another model (fingerprint ")


def test_an_image_that_cannot_be_written_is_reported_not_an_internal_error(tmp_path, small, caplog):
    """The output folder gone bad during a run (here: its path runs through a file) made the sink's
    write raise inside the block: logged as an internal error ("a bug: please report").  Now the
    image's result says what failed, its pixels still travel, and the run goes on."""
    Image.fromarray(small).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("not a folder")
    cfg = CodecConfig(model="analytic", device="cpu")
    run = run_link([str(tmp_path / "a.png")], str(tmp_path / "file" / "out"), ChannelConfig(snr_db=20.0, seed=1),
                   cfg, cfg, FrameConfig())
    res, = run["results"]
    assert res["error"] == f"decoded, but cannot write it to {tmp_path / 'file' / 'out'}: Not a directory", res
    assert "file" not in res and (res["height"], res["width"]) == (64, 64)  # (its pixels go in the PDU)
    assert run["counters"]["images_failed"] == 1 and run["counters"].get("internal_errors", 0) == 0


def test_every_codec_setting_reaches_the_links_blocks(tmp_path, small):
    """run_link handed the blocks a hand-picked list of settings without remove_mean, clean_end or
    inversion: `gdmcom link --no-remove-mean` sent the means removed all the same."""
    Image.fromarray(small).save(tmp_path / "a.png")
    powers = {}
    for remove in (True, False):
        cfg = CodecConfig(model="tiny", device="cpu", remove_mean=remove)
        run = run_link([str(tmp_path / "a.png")], None, ChannelConfig(snr_db=20.0, seed=1), cfg, cfg, FrameConfig())
        powers[remove] = 1 / run["tx_events"][0]["alpha"] ** 2
        assert "error" not in run["results"][0]
    assert powers[False] > 2 * powers[True]  # the tiny model's means are far from 0 (docs/rate.md: 5.7 dB)
    from gr_gdmcom.link import build_link

    cfg = CodecConfig(model="tiny", device="cpu", clean_end="one", inversion="fixed-point", inversion_iters=2)
    _, src, snk = build_link([str(tmp_path / "a.png")], None, ChannelConfig(snr_db=20.0), cfg, cfg, FrameConfig())
    for block in (src, snk):
        got = block.codec_config
        assert (got.clean_end, got.inversion, got.inversion_iters) == ("one", "fixed-point", 2), got
    assert src.codec_config.remove_mean is True and snk.codec_config.rescale is True


def test_a_filename_pattern_with_a_folder_writes_into_it(tmp_path):
    """`{name}/x{image_id}.png` was refused per image (the sub-folder was never made)."""
    from gr_gdmcom.pipeline import RxPipeline

    rx = RxPipeline(None, CodecConfig(model="tiny"), FrameConfig(), str(tmp_path / "out"), "{name}/x{image_id}.png")
    path = rx._write(np.full((8, 8, 3), 7, np.uint8), 3, "astro")
    assert path == tmp_path / "out" / "astro" / "x3.png" and np.asarray(Image.open(path)).max() == 7


def test_a_receivers_dc_offset_is_measured_before_the_first_burst_and_subtracted(tmp_path, small, capsys):
    """``--dc-offset -20``: the receiver's LO leakage 20 dB under the signal (blocks.add_const_cc after
    the noise) held a 20 dB link near 17 dB; with ``--lead 40000`` (the receiver started first,
    blocks.delay) the receiver measures it there and subtracts it: back within 0.5 dB of 20."""
    img = tmp_path / "big.png"
    Image.fromarray(small).resize((256, 256)).save(img)
    est = {}
    for lead in (0, 40_000):
        rc = main(["link", "--image", str(img), "--snr", "20", "--model", "tiny", "--device", "cpu", "--seed", "4",
                   "--dc-offset", "-20", "--lead", str(lead), "--out", str(tmp_path / f"o{lead}")])
        (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert rc == 0 and row["counters"]["tones_notched"] == (1 if lead else 0), row
        assert row["dc_offset"] == -20.0 and row.get("lead", 0) == lead
        est[lead] = row["snr_est_db"]
    assert est[0] < 18.0 and abs(est[40_000] - 20.0) < 0.5, est


@pytest.mark.parametrize("kw, message", [
    (dict(dc_offset=25.0), "dc_offset (dB against the signal's power) must be finite and at most 20, got 25.0"),
    (dict(dc_offset=float("nan")), "dc_offset (dB against the signal's power) must be finite and at most 20, got nan"),
    (dict(iq_imbalance=(1.0, 50.0)), "iq_imbalance (magnitude dB, phase degrees) must be within +-6 dB and +-45 "
                                     "degrees, got (1.0, 50.0)"),
    (dict(lead=-1), "lead (samples before the first burst) must be an integer in 0 .. 1e8, got -1")])
def test_front_end_impairments_out_of_range_are_refused(kw, message):
    with pytest.raises(ValueError) as exc:
        ChannelConfig(**kw)
    assert str(exc.value) == message
