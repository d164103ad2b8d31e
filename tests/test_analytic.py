"""The analytic diffusion prior (codec/analytic.py): exact noise prediction,
guidance, the stand-in components, and GenerativeCodec running on them."""

import math

import numpy as np
import pytest
import torch

from gr_gdmcom.codec import GenerativeCodec, load_components
from gr_gdmcom.codec.analytic import (GaussianMixture, build_analytic, block_patterns, is_analytic, parse_spec)
from gr_gdmcom.codec.images import to_tensor
from gr_gdmcom.codec.models import ModelLoadError
from gr_gdmcom.codec.schedule import get_grid
from gr_gdmcom.config import CodecConfig

SMALL = "analytic:shape=1x1x2,K=3,rank=1,mean=1.0,lowrank=0.5,diag=0.2,precision=fp64"


def dense_eps(gmm: GaussianMixture, x: torch.Tensor, a: float, lw: torch.Tensor) -> torch.Tensor:
    """Reference E[eps | x_t] with dense covariances: sqrt(1-a) sum_k r_k C_k^-1 (x - sqrt(a) mu_k)."""
    out = []
    eye = torch.eye(gmm.D, dtype=torch.float64)
    for xb in x.double():
        logs, terms = [], []
        for k in range(gmm.K):
            C = a * gmm.covariance(k) + (1 - a) * eye
            mu = math.sqrt(a) * gmm.means[k]
            logs.append(lw[k] + torch.distributions.MultivariateNormal(mu, covariance_matrix=C).log_prob(xb))
            terms.append(torch.linalg.solve(C, xb - mu))
        r = torch.softmax(torch.stack(logs), 0)
        out.append(math.sqrt(1 - a) * sum(r[k] * terms[k] for k in range(gmm.K)))
    return torch.stack(out)


def test_spec_parsing_and_errors():
    assert parse_spec("analytic") == parse_spec("analytic:")
    s = parse_spec("analytic:shape=4x16x8,K=4,rank=2,seed=3,precision=fp64")
    assert s.shape == (4, 16, 8) and s.K == 4 and s.rank == 2 and s.dim == 512
    assert parse_spec(s.label()) == s
    assert is_analytic("analytic:K=2") and not is_analytic("analyticx") and not is_analytic("tiny")
    for bad, msg in (("analytic:foo=1", "unknown option"), ("analytic:K=x", "bad value"),
                     ("analytic:shape=4x8", "bad value"), ("analytic:diag=0", "diag"),
                     ("analytic:vae=/tmp/x", "not implemented")):
        with pytest.raises(ValueError, match=msg):
            parse_spec(bad)
    with pytest.raises(ModelLoadError, match="unknown option"):
        load_components("analytic:foo=1", device="cpu")


@pytest.mark.parametrize("model", [SMALL, "analytic:shape=2x2x2,K=4,rank=3,precision=fp64",
                                   "analytic:shape=2x2x2,K=2,rank=0,precision=fp64"])
def test_woodbury_eps_equals_dense(model):
    gmm = build_analytic(model).gmm
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(6, gmm.D, generator=g, dtype=torch.float64)
    for a in (0.999, 0.7, 0.2, 0.01):
        lw = gmm.log_weights([0, 1] if gmm.K > 2 else None)
        got = gmm.eps(x, torch.full((6,), a, dtype=torch.float64), lw)
        assert torch.allclose(got, dense_eps(gmm, x, a, lw), atol=1e-10)


def test_eps_matches_monte_carlo_posterior():
    """E[eps | x_t] against an importance-weighted Monte-Carlo estimate that uses only
    prior samples and the Gaussian forward kernel (small D so the weights are good)."""
    gmm = build_analytic(SMALL).gmm
    g = torch.Generator().manual_seed(1)
    x0, _ = gmm.sample(400_000, generator=g)
    for a in (0.8, 0.4):
        xt = torch.tensor([[0.7, -1.1], [2.0, 0.5]], dtype=torch.float64)
        for xb in xt:
            eps = (xb - math.sqrt(a) * x0) / math.sqrt(1 - a)  # the eps that would map x0 to this x_t
            logw = -0.5 * (eps ** 2).sum(1)
            w = torch.softmax(logw, 0)
            mc = (w.unsqueeze(1) * eps).sum(0)
            ess = 1.0 / float((w ** 2).sum())
            exact = gmm.eps(xb[None], torch.tensor([a], dtype=torch.float64))[0]
            assert ess > 5000
            assert torch.allclose(exact, mc, atol=0.02), (a, xb, exact, mc)


def test_eps_is_the_regression_of_eps_on_x_t_at_full_size():
    """D = 256 (the default model): the error eps - E[eps|x_t] is orthogonal to x_t and to the
    prediction (the conditional mean's defining property), and its MSE beats the Gaussian fit."""
    am = build_analytic("analytic")
    gmm = am.gmm
    g = torch.Generator().manual_seed(2)
    n = 20_000
    x0, _ = gmm.sample(n, generator=g)
    for a in (0.9, 0.3):
        e = torch.randn(n, gmm.D, generator=g, dtype=torch.float64)
        xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * e
        pred = gmm.eps(xt.float(), torch.full((n,), a, dtype=torch.float64)).double()
        err = e - pred
        # orthogonality, per element, averaged: |E[err x_t]| and |E[err pred]| ~ 1/sqrt(n)
        assert abs(float((err * xt).mean())) < 5 / math.sqrt(n * gmm.D) * 3
        assert abs(float((err * pred).mean())) < 5 / math.sqrt(n * gmm.D) * 3
        # Tweedie: MSE = 1 - E[pred^2] per element (within Monte-Carlo error)
        mse = float((err ** 2).mean())
        assert mse == pytest.approx(1 - float((pred ** 2).mean()), abs=3e-3)
        # better than the best linear (single Gaussian) predictor
        cov = torch.cov(x0.T)
        mean = x0.mean(0)
        Cx = a * cov + (1 - a) * torch.eye(gmm.D, dtype=torch.float64)
        lin = math.sqrt(1 - a) * torch.linalg.solve(Cx, (xt - math.sqrt(a) * mean).T).T
        assert mse < float(((e - lin) ** 2).mean())


def test_fp32_agrees_with_fp64():
    g32, g64 = build_analytic("analytic").gmm, build_analytic("analytic:precision=fp64").gmm
    x, _ = g64.sample(512, generator=torch.Generator().manual_seed(3))
    for a in (0.99, 0.5, 0.01):
        ab = torch.full((512,), a, dtype=torch.float64)
        xt = math.sqrt(a) * x + math.sqrt(1 - a) * torch.randn(x.shape, dtype=torch.float64)
        assert torch.allclose(g32.eps(xt.float(), ab).double(), g64.eps(xt, ab), atol=2e-3)


def test_continuous_timesteps_follow_the_grid():
    am = build_analytic("analytic")
    g = get_grid(50)
    t = torch.tensor([1.0, 21.0, 500.0, 981.0])
    assert torch.allclose(am.unet.abar(t), torch.from_numpy(g.abar[[1, 21, 500, 981]]), rtol=1e-12)
    for a in (0.999, 0.5, 0.02):
        assert float(am.unet.abar(torch.tensor([g.t_for_abar(a)], dtype=torch.float64))) == pytest.approx(a, rel=1e-9)
    half = float(am.unet.abar(torch.tensor([10.5])))
    assert half == pytest.approx(math.sqrt(g.abar[10] * g.abar[11]), rel=1e-12)


def test_prompts_select_components_and_guidance_one_is_conditional():
    c = load_components("analytic", device="cpu")
    am = build_analytic("analytic")
    codec = GenerativeCodec(CodecConfig(model="analytic", device="cpu"), components=c)
    lw_u, lw_c = am.log_weights(""), am.log_weights(codec.config.prompt)
    assert torch.allclose(lw_u, am.gmm.log_weights())
    kept = int((lw_c > -100).sum())
    assert kept == am.spec.n_cond == 4
    assert not torch.equal(lw_c, am.log_weights("a different prompt"))
    x = am.sample_latents(4, codec.config.prompt, seed=5)
    t = torch.tensor([981.0, 981.0, 601.0, 101.0])  # near pure noise guidance matters
    abar = am.unet.abar(t)
    e_c = am.gmm.eps(x.reshape(4, -1), abar, lw_c).reshape(x.shape)
    e_u = am.gmm.eps(x.reshape(4, -1), abar, lw_u).reshape(x.shape)
    # the codec's guided prediction: w = 1 is the conditional model, w = 6 is e_u + 6 (e_c - e_u)
    assert torch.allclose(codec._eps(x, t, codec.config.prompt, 1.0), e_c, atol=1e-5)
    assert torch.allclose(codec._eps(x, t, codec.config.prompt, 6.0), e_u + 6 * (e_c - e_u), atol=1e-4)
    assert torch.allclose(am.guided_eps(x, abar, codec.config.prompt, 6.0), e_u + 6 * (e_c - e_u), atol=1e-4)
    assert float((e_c - e_u).abs().max()) > 1e-3  # guidance has an effect at t = 981
    # the batched CFG pair through the UNet equals the two separate predictions
    emb = codec._text_embedding(codec.config.prompt)
    out = am.unet(torch.cat([x, x]), torch.cat([t, t]),
                  encoder_hidden_states=torch.cat([emb[:1].expand(4, -1, -1), emb[1:].expand(4, -1, -1)])).sample
    assert torch.allclose(out[:4], e_u, atol=1e-5) and torch.allclose(out[4:], e_c, atol=1e-5)


def test_large_latents_are_independent_tiles():
    am = build_analytic("analytic")
    x = am.sample_latents(6, "p", seed=1)  # 6 tiles of 4x8x8 -> one latent 4x16x24
    big = x.reshape(1, 2, 3, 4, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(1, 4, 16, 24)
    t = torch.tensor([301.0])
    emb = torch.zeros(1, 1, 8)
    emb[0, 0, :8] = am.log_weights("")
    out = am.unet(big, t, encoder_hidden_states=emb).sample
    ref = am.gmm.eps(x.reshape(6, -1), am.unet.abar(t).expand(6)).reshape(6, 4, 8, 8)
    assert torch.allclose(out.reshape(1, 4, 2, 8, 3, 8).permute(0, 2, 4, 1, 3, 5).reshape(6, 4, 8, 8), ref, atol=1e-6)
    with pytest.raises(ValueError, match="tiles"):
        am.unet(torch.zeros(1, 4, 12, 8), t, encoder_hidden_states=emb)


def test_vae_is_an_exact_linear_block_map():
    W = block_patterns(4)
    assert torch.allclose(W @ W.T, torch.eye(4, dtype=torch.float64), atol=1e-12)
    c = load_components("analytic", device="cpu")
    am = build_analytic("analytic")
    assert c.vae_scale == 1.0 and c.vae.config.latent_channels == 4 and c.unet.config.in_channels == 4
    assert c.tokenizer.model_max_length == 77
    ids = c.tokenizer(["", "hi"], padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (2, 77) and c.text_encoder(ids)[0].shape[0] == 2
    z = am.sample_latents(3, "p", seed=2)
    x = c.vae.decode(z / c.vae_scale).sample
    assert x.shape == (3, 3, 64, 64) and float(x.abs().max()) < 1.0  # fits the image range, no clipping
    assert torch.allclose(c.vae.encode(x).latent_dist.mode(), z, atol=1e-5)
    # through 8-bit pixels: about 6e-3 rms in the latent (block-correlated rounding), MSE ~4e-5
    img = ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    from PIL import Image
    z8 = c.vae.encode(to_tensor(Image.fromarray(img))).latent_dist.mode()[0]
    assert float((z8 - z[0]).pow(2).mean().sqrt()) < 1e-2


def test_codec_round_trips_noiselessly_with_analytic_components():
    c = load_components("analytic", device="cpu")
    am = build_analytic("analytic")
    z0 = am.sample_latents(2, CodecConfig.prompt, seed=4)
    imgs = [((c.vae.decode(z0[i:i + 1]).sample[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255)
            .to(torch.uint8).numpy() for i in range(2)]
    codec = GenerativeCodec(CodecConfig(model="analytic", device="cpu"), components=c)
    enc = codec.encode_many(imgs, ["a", "b"])
    dec = codec.decode_many([(e.symbols, e.meta, 100.0) for e in enc])  # no channel noise (100 dB: the most a decoder takes)
    for d, e, img in zip(dec, enc, imgs):
        assert d.record["n_steps"] == 10 and d.record["scale"] == pytest.approx(1.0, abs=1e-6)
        assert np.abs(d.image.astype(int) - img.astype(int)).max() <= 2
    # in the latent: k = 5 inversion + 5 more + 10 sampling steps come back to 1e-3 relative
    z = torch.from_numpy(np.stack([_latent(e) for e in enc]))
    zk = codec._ddim(codec._ddim(z0, [codec.inversion_path(0, 5)] * 2, codec.config.prompt, 6.0),
                     [codec.inversion_path(5, 10)] * 2, codec.config.prompt, 6.0)
    back = codec._ddim(zk, [[(float(codec.grid.timesteps[j]), float(codec.grid.alphas[j]),
                              float(codec.grid.alphas[j - 1])) for j in range(10, 0, -1)]] * 2,
                       codec.config.prompt, 6.0)
    assert float(((back - z0) ** 2).mean() / (z0 ** 2).mean()) < 1e-3
    assert z.shape == (2, 4, 8, 8)


def _latent(e):
    from gr_gdmcom.codec import latent_from_symbols
    return latent_from_symbols(e.symbols, e.meta)

