"""The patch-gmm model: exact denoiser on any latent size, its VAE, reproducible fitting, and
the quality orderings of the paper (Table I, Fig. 3) asserted on held-out photographs."""

import json
import math

import numpy as np
import pytest
import torch

from gr_gdmcom.codec import GenerativeCodec, ModelLoadError, latent_from_symbols, load_components
from gr_gdmcom.codec import patch_gmm as pg
from gr_gdmcom.config import CodecConfig
from gr_gdmcom.eval.metrics import psnr


@pytest.fixture(scope="module")
def model():
    return pg.build_patch_gmm("patch-gmm:shifts=1")  # one tiling: the exact denoiser


def dense_eps(params, idx, x, a):
    """E[eps | x_t] of one tile (positions ``idx`` of the stored mixture), written out densely:
    components N(sqrt(a) mu_k, a Sigma_k + (1-a) I), Sigma_k = U U^T + diag(d)."""
    w, mu = params.weights, params.means[:, idx].astype(np.float64)
    logs, grads = [], []
    for k in range(w.size):
        U = params.factors[k][idx].astype(np.float64)
        C = a * (U @ U.T + np.diag(params.diag[k][idx].astype(np.float64))) + (1 - a) * np.eye(idx.size)
        y = x - math.sqrt(a) * mu[k]
        sol = np.linalg.solve(C, y)
        logs.append(math.log(w[k]) - 0.5 * (y @ sol) - 0.5 * np.linalg.slogdet(C)[1])
        grads.append(sol)
    r = np.exp(np.array(logs) - max(logs))
    r /= r.sum()
    return math.sqrt(1 - a) * (r[:, None] * np.array(grads)).sum(0)


def test_denoiser_is_exact_on_a_latent_that_is_not_made_of_whole_tiles(model):
    # 4 x 5 x 6 latent with 4 x 4 tiles: one whole tile, a 4x2 strip, a 1x4 strip and a 1x2 corner
    params = pg.PatchGMMParams.load(pg.ASSET_DIR / pg.PARAMS_FILE)
    c, th, tw = params.tile
    assert (th, tw) == (4, 4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, c, 5, 6, generator=g)
    t = 400.0
    emb = model.text_encoder(model.tokenizer([""], padding="max_length", max_length=77,
                                             return_tensors="pt").input_ids)[0]
    eps = model.unet(x, torch.tensor([t]), encoder_hidden_states=emb).sample[0].double().numpy()
    a = float(model.unet.abar(torch.tensor([t])))
    full = np.arange(c * th * tw).reshape(c, th, tw)
    for (y0, y1), (x0, x1) in [((0, 4), (0, 4)), ((0, 4), (4, 6)), ((4, 5), (0, 4)), ((4, 5), (4, 6))]:
        idx = full[:, : y1 - y0, : x1 - x0].reshape(-1)
        ref = dense_eps(params, idx, x[0, :, y0:y1, x0:x1].double().numpy().reshape(-1), a)
        np.testing.assert_allclose(eps[:, y0:y1, x0:x1].reshape(-1), ref, rtol=0, atol=2e-4)


def test_vae_encoder_is_the_pca_projection_and_the_decoder_reconstructs_held_out_images(model):
    vae, params = model.vae, pg.PatchGMMParams.load(pg.ASSET_DIR / pg.PARAMS_FILE)
    img = pg.bundled_image("astronaut")  # held out
    # the README's spelling: "astronaut.png" missed the held-out copy and gave scikit-image's 512 px one
    np.testing.assert_array_equal(pg.bundled_image("astronaut.png"), img)
    assert img.shape == (256, 256, 3)
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    z = vae.encode(x).latent_dist.mode()
    # block (i, j), channel-major RGB, minus the mean block, projected on the encoder rows
    blk = x[0, :, 8 * 5:8 * 6, 8 * 7:8 * 8].reshape(-1).double().numpy()
    np.testing.assert_allclose(z[0, :, 5, 7].double().numpy(), params.encoder @ (blk - params.block_mean),
                               rtol=0, atol=1e-4)
    rec = ((vae.decode(z).sample[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert psnr(img, rec) > 21.0  # measured 21.56 dB (4 numbers per 8 x 8 x 3 block, BCR 1/48 real)


def test_provenance_holds_the_astronaut_out(model):
    prov = json.loads((pg.ASSET_DIR / pg.PROVENANCE_FILE).read_text())
    assert set(pg.HELD_OUT) <= set(prov["held_out"]) and "astronaut" in prov["held_out"]
    assert not {n.split(".")[0] for n in prov["train_images"]} & set(prov["held_out"])
    assert prov["K"] == model.spec.K and prov["seed"] == 0
    import hashlib

    sha = hashlib.sha256((pg.ASSET_DIR / pg.PARAMS_FILE).read_bytes()).hexdigest()
    assert pg.revision("patch-gmm:shifts=2") == f"patch_gmm.npz sha256:{sha[:16]} (shifts=2)"


def test_fit_is_bit_reproducible_from_the_script_and_seed(tmp_path):
    pytest.importorskip("sklearn")
    argv = ["fit", "--K", "3", "--patches", "600", "--max-iter", "5", "--augment", "2", "--images", "camera.png",
            "brick.png", "china.jpg"]
    outs = []
    for run in ("a", "b"):
        assert pg.main(argv + ["--out", str(tmp_path / run)]) == 0
        outs.append((tmp_path / run / pg.PARAMS_FILE).read_bytes())
    assert outs[0] == outs[1]
    assert pg.main(argv + ["--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    assert (tmp_path / "c" / pg.PARAMS_FILE).read_bytes() != outs[0]
    prov = json.loads((tmp_path / "a" / pg.PROVENANCE_FILE).read_text())
    assert prov["train_images"] == ["camera.png", "brick.png", "china.jpg"] and prov["K"] == 3
    assert prov["augment"] == 2
    assert {"numpy", "sklearn", "torch"} <= set(prov["versions"])


def test_augmented_views_are_the_eight_symmetries_of_the_square():
    """``augment=8``: per image, full and half resolution, each under the 8 flips/rotations
    (numpy's own rot90 and fliplr as the reference); ``augment=1`` is the image alone."""
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    full = img.astype(np.float64) / 127.5 - 1
    views = pg._views([img], 8)
    assert len(views) == 16 and len(pg._views([img], 1)) == 2
    ref = [np.fliplr(np.rot90(full, r)) if f else np.rot90(full, r) for r in range(4) for f in (0, 1)]
    for got, want in zip(views[:8], ref):
        np.testing.assert_array_equal(got, want)
    assert len({v.tobytes() for v in views[:8]}) == 8
    np.testing.assert_allclose(views[8], full.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)))


def test_fit_refuses_held_out_images(capsys):
    assert pg.main(["fit", "--images", "astronaut", "--out", "/nonexistent"]) == 2
    assert "astronaut is held out for testing and must not be fitted" in capsys.readouterr().err


def test_shifted_tilings_average_the_exact_denoisers_of_each_tiling(model):
    """``shifts=S`` (the default, 4) averages the exact E[eps|x_t] of S tilings offset along the diagonal."""
    shifted = pg.build_patch_gmm("patch-gmm")
    assert shifted.unet.offsets() == [(0, 0), (1, 1), (2, 2), (3, 3)]
    x = torch.randn(2, 4, 7, 9, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([300.0, 300.0])
    emb = torch.zeros(2, 1, 32) + shifted.gmm.log_weights().float()
    got = shifted.unet(x, t, encoder_hidden_states=emb).sample
    # independent reference: shift the latent, use the exact one-tiling model, shift back
    ref = 0
    for o in range(4):
        part = torch.zeros_like(x)
        # tiles of the offset tiling = tiles of the (0,0) tiling on the latent cut at (o, o), plus border strips
        part[:, :, o:, o:] = model.unet(x[:, :, o:, o:], t, encoder_hidden_states=emb).sample
        if o:
            part[:, :, :o, o:] = model.unet(x[:, :, :o, o:], t, encoder_hidden_states=emb).sample
            part[:, :, o:, :o] = model.unet(x[:, :, o:, :o], t, encoder_hidden_states=emb).sample
            part[:, :, :o, :o] = model.unet(x[:, :, :o, :o], t, encoder_hidden_states=emb).sample
        ref = ref + part / 4
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bad_options_give_a_clear_error():
    with pytest.raises(ModelLoadError, match="patch-gmm: bad option 'K=3'; valid: path=DIR, shifts=S"):
        load_components("patch-gmm:K=3", device="cpu")
    with pytest.raises(ModelLoadError, match="no patch_gmm.npz in /nonexistent"):
        load_components("patch-gmm:path=/nonexistent", device="cpu")
    for bad, msg in (("shifts=2,shifts=3", "patch-gmm: option shifts given twice"),
                     (f"path={pg.ASSET_DIR},path=/x", "patch-gmm: option path given twice"),
                     ("shifts=0", "patch-gmm: bad option 'shifts=0'; valid: path=DIR, shifts=S (S >= 1)"),
                     ("shifts=1.5", "patch-gmm: bad option 'shifts=1.5'; valid: path=DIR, shifts=S (S >= 1)"),
                     ("path=", "patch-gmm: bad option 'path='; valid: path=DIR, shifts=S (S >= 1)")):
        with pytest.raises(ValueError) as e:  # (an option given twice used to keep the last one)
            pg.parse_options("patch-gmm:" + bad)
        assert str(e.value) == msg
    assert pg.parse_options("patch-gmm: shifts = 2 ,") == (pg.ASSET_DIR, 2)
    assert pg.parse_options("patch-gmm") == (pg.ASSET_DIR, pg.DEFAULT_SHIFTS)


def test_codec_runs_on_image_sides_that_are_not_multiples_of_the_tile():
    codec = GenerativeCodec(CodecConfig(model="patch-gmm", device="cpu"))
    img = pg.bundled_image("coffee")[:100, :141]  # latent 13 x 18: neither side a multiple of 4
    enc = codec.encode(img, "coffee")
    assert enc.meta.latent_shape == (4, 13, 18)
    dec = codec.decode(enc.symbols, enc.meta, 30.0)
    assert dec.image.shape == img.shape
    assert psnr(img, dec.image) > 18.0


# --------------------------------------------------------------------------- quality on held-out images
SEEDS = (1, 2, 3)
FIXED_N = tuple(range(10, 25, 2))  # the best fixed N is 12-18 at 5-10 dB


@pytest.fixture(scope="module")
def crops():
    """128 x 128 crops of the three held-out images (never fitted)."""
    return {"astronaut": pg.bundled_image("astronaut")[40:168, 64:192],
            "coffee": pg.bundled_image("coffee")[20:148, 64:192],
            "chelsea": pg.bundled_image("chelsea")[30:158, 150:278]}


@pytest.fixture(scope="module")
def quality(crops):
    """PSNR per (method, snr) -> list over (image, noise seed); the same channel draw for every method."""
    from gr_gdmcom.eval.baselines import METHODS, Context
    from gr_gdmcom.phy import awgn

    ctx = Context(config=CodecConfig(model="patch-gmm", device="cpu"))
    names, imgs = list(crops), list(crops.values())
    out = {}
    for snr in (0.0, 5.0, 10.0, 20.0):
        for seed in SEEDS:
            c = ctx.config.replace(seed=seed)
            sctx = Context(config=c, components=ctx.load())
            for method in ("proposed", "received", "random_noise", "sd_semcom"):
                m = METHODS[method](sctx)
                rxs = m.receive(m.transmit(imgs, names), snr)
                out.setdefault((method, snr), []).extend(psnr(i, r.image) for i, r in zip(imgs, rxs))
    # fixed N against the rule (same pipeline, same rescaling, only N differs)
    codec0 = GenerativeCodec(ctx.config, components=ctx.load())
    for snr in (5.0, 10.0):
        encs = codec0.encode_many(imgs, names)
        for seed in SEEDS:
            ys = [awgn(e.symbols, snr, np.random.default_rng([seed, i])).astype(np.complex64) for i, e in enumerate(encs)]
            rule_n = [codec0.step_choice(snr, e.meta).n_steps for e in encs]
            out.setdefault(("rule_n", snr), []).extend(rule_n)
            for n in FIXED_N:
                codec = GenerativeCodec(ctx.config.replace(steps=n), components=ctx.load())
                decs = codec.decode_many([(y, e.meta, snr) for y, e in zip(ys, encs)])
                out.setdefault(("fixed", snr, n), []).extend(psnr(i, d.image) for i, d in zip(imgs, decs))
            decs = codec0.decode_many([(y, e.meta, snr) for y, e in zip(ys, encs)])
            out.setdefault(("rule", snr), []).extend(psnr(i, d.image) for i, d in zip(imgs, decs))
    return out


def test_decoded_psnr_rises_with_snr(quality):
    means = [np.mean(quality[("proposed", s)]) for s in (0.0, 5.0, 10.0, 20.0)]
    assert all(b > a + 0.5 for a, b in zip(means, means[1:])), means


@pytest.mark.parametrize("snr", [5.0, 10.0])
@pytest.mark.parametrize("other", ["received", "random_noise", "sd_semcom"])
def test_proposed_beats_the_baselines_on_every_held_out_image(quality, snr, other):
    """Paired per (image, seed): the proposed receiver is better in every case, and on average by > 0.3 dB."""
    p, o = np.array(quality[("proposed", snr)]), np.array(quality[(other, snr)])
    assert (p > o).all(), (p - o)
    assert (p - o).mean() > 0.3, (p - o).mean()


@pytest.mark.parametrize("snr, miss", [(5.0, 0.3), (10.0, 0.0)])
def test_rule_n_is_statistically_tied_with_the_best_fixed_n(quality, snr, miss):
    """Tied: the best fixed N's paired mean advantage over the rule is below two standard errors
    (or 0.1 dB).  Image pairs are the 3 images x 3 channel draws.  At 5 dB the rule (N = 12-17)
    misses the best fixed N (18) by about 0.16 dB +- 0.06 (docs/validation.md section 6): the test
    holds it to that miss (< 0.3 dB)."""
    rule = np.array(quality[("rule", snr)])
    fixed = {n: np.array(quality[("fixed", snr, n)]) for n in FIXED_N}
    best = max(fixed, key=lambda n: fixed[n].mean())
    d = fixed[best] - rule
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert d.mean() < max(2 * se, 0.1, miss), (best, d.mean(), se, quality[("rule_n", snr)])


def test_demo_setting_decodes_the_held_out_astronaut_3_db_above_the_received_latent_at_10_db():
    """The demo's (k, m) (the paper's Table II best, k = 10, m = 0) against k = m = 5, same channel
    draws (seeds 0, 1): it decodes better, and >= 3 dB above the received latent decoded as is
    (the issue's target; measured +3.1 dB, and +0.35 dB over k = m = 5)."""
    from gr_gdmcom.demo import DEMO_DEFAULTS
    from gr_gdmcom.phy import awgn

    img = pg.bundled_image("astronaut")
    base = GenerativeCodec(CodecConfig(model="patch-gmm", device="cpu"))
    demo = GenerativeCodec(base.config.replace(k=DEMO_DEFAULTS["k"], m=DEMO_DEFAULTS["m"]), components=base.c)
    got = {}
    for name, codec in (("base", base), ("demo", demo)):
        enc = codec.encode(img, "astronaut")
        for seed in (0, 1):
            y = awgn(enc.symbols, 10.0, np.random.default_rng([seed, 0]))
            got.setdefault(name, []).append(psnr(img, codec.decode(y, enc.meta, 10.0).image))
            got.setdefault(name + "_as_is", []).append(psnr(img, codec.decode_as_is(y, enc.meta)))
    m = {k: float(np.mean(v)) for k, v in got.items()}
    assert m["demo"] - m["demo_as_is"] > 3.0, m
    assert m["demo"] > m["base"] + 0.2, m


# --------------------------------------------------------------------------- the demo's link
@pytest.mark.gnuradio
def test_demo_link_default_model_shows_the_held_out_astronaut(tmp_path, capsys):
    """`gdmcom link` without --model (the demo) uses patch-gmm: at 20 dB the astronaut decodes
    above 20 dB PSNR and above the received latent decoded as is (both in the JSON row)."""
    pytest.importorskip("gnuradio.gr")
    from gr_gdmcom.cli import main
    from gr_gdmcom.codec.patch_gmm import ASSET_DIR

    astronaut = ASSET_DIR.parent.parent.parent / "data" / "astronaut.png"
    rc = main(["link", "--image", str(astronaut), "--snr", "20", "--device", "cpu", "--out", str(tmp_path)])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0, row
    assert abs(row["snr_est_db"] - 20.0) < 1.0
    assert row["psnr"] > 20.0  # measured 21.3 dB; the VAE alone reaches 21.6 dB
    assert row["psnr"] > row["psnr_received_as_is"] + 0.3  # measured +0.8 dB


def test_real_images_section_replaces_itself_in_place(tmp_path):
    from gr_gdmcom.eval import validate_images as vi

    page = tmp_path / "v.md"
    page.write_text("# head\n\nanalytic results\n")
    vi.write_section(page, f"{vi.BEGIN}\nfirst\n{vi.END}\n")
    vi.write_section(page, f"{vi.BEGIN}\nsecond\n{vi.END}\n")
    assert page.read_text() == f"# head\n\nanalytic results\n\n{vi.BEGIN}\nsecond\n{vi.END}\n"
    assert vi.kept_section(page) == f"{vi.BEGIN}\nsecond\n{vi.END}\n"
    assert vi.kept_section(tmp_path / "absent.md") == ""


def test_real_images_section_goes_before_a_rate_section_already_there(tmp_path):
    """`validate --rate` then `validate --real-images` into one page: section 6 was appended after 7."""
    from gr_gdmcom.eval import validate_images as vi
    from gr_gdmcom.eval import validate_rate as vr

    page = tmp_path / "v.md"
    page.write_text("# head\n")
    vi.write_section(page, f"{vr.BEGIN}\n## 7.\n{vr.END}\n", vr.BEGIN, vr.END)
    vi.write_section(page, f"{vi.BEGIN}\n## 6.\n{vi.END}\n", before=[vr.BEGIN])
    assert page.read_text() == f"# head\n\n{vi.BEGIN}\n## 6.\n{vi.END}\n\n{vr.BEGIN}\n## 7.\n{vr.END}\n"
    vi.write_section(page, f"{vi.BEGIN}\n## 6 again\n{vi.END}\n", before=[vr.BEGIN])  # in place
    assert page.read_text().index("## 6 again") < page.read_text().index("## 7.")
