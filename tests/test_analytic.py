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


@pytest.mark.parametrize("opts,msg", [
    ("shape=0x8x8", "analytic: shape must be CxHxW with 1 <= C <= 192, got (0, 8, 8)"),
    ("shape=4x0x8", "analytic: shape must be CxHxW with 1 <= C <= 192, got (4, 0, 8)"),
    ("shape=4x8x0", "analytic: shape must be CxHxW with 1 <= C <= 192, got (4, 8, 0)"),
    ("shape=193x1x1", "analytic: shape must be CxHxW with 1 <= C <= 192, got (193, 1, 1)"),
    ("shape=4x8x8x1", "analytic: bad value '4x8x8x1' for shape"),
    ("K=0", "analytic: need K >= 1 and 0 <= rank <= D=256, got K=0, rank=8"),
    ("rank=-1", "analytic: need K >= 1 and 0 <= rank <= D=256, got K=8, rank=-1"),
    ("shape=1x2x2,rank=5", "analytic: need K >= 1 and 0 <= rank <= D=4, got K=8, rank=5"),
    ("K=2.5", "analytic: bad value '2.5' for K"),
    ("mean=-0.1", "analytic: mean and lowrank must be >= 0 and diag > 0"),
    ("lowrank=-1e-9", "analytic: mean and lowrank must be >= 0 and diag > 0"),
    ("diag=-1", "analytic: mean and lowrank must be >= 0 and diag > 0"),
    ("cond=0", "analytic: need 0 < cond <= 1 and 0 <= leak <= 1"),
    ("cond=1.01", "analytic: need 0 < cond <= 1 and 0 <= leak <= 1"),
    ("leak=-0.5", "analytic: need 0 < cond <= 1 and 0 <= leak <= 1"),
    ("leak=1.5", "analytic: need 0 < cond <= 1 and 0 <= leak <= 1"),
    ("scale=0", "analytic: scale must be positive"),
    ("scale=-2", "analytic: scale must be positive"),
    ("precision=fp16", "analytic: precision must be fp32 or fp64"),
    ("mean=nan", "analytic: mean must be finite, got mean=nan"),
    ("diag=inf", "analytic: diag must be finite, got diag=inf"),
    ("lowrank=inf,scale=nan", "analytic: lowrank, scale must be finite, got lowrank=inf, scale=nan"),
    ("cond=nan", "analytic: cond must be finite, got cond=nan"),
    ("leak=-inf", "analytic: leak must be finite, got leak=-inf"),
    ("tied=2", "analytic: tied must be 0 or 1, got 2"),
    ("tied=-1", "analytic: tied must be 0 or 1, got -1"),
    ("K=4,K=8", "analytic: option K given twice"),
    ("k=4,components=8", "analytic: option K given twice"),
    ("seed=1, seed = 1", "analytic: option seed given twice"),
    ("K", "analytic: option 'K' must be key=value"),
    ("vae=/tmp/x", "analytic: vae=PATH (fitting the mixture to real VAE latents) is not implemented yet; "
                   "see docs/validation.md"),
    ("Shape=4x8x8", "analytic: unknown option 'Shape'; valid: shape, K, rank, seed, mean, lowrank, diag, cond, "
                    "leak, tied, scale, precision"),
])
def test_each_bad_option_is_named(opts, msg):
    # a NaN or infinite option used to build a model whose latents were NaN or inf; tied=2 and an
    # option given twice (the last one won) were taken silently
    with pytest.raises(ValueError) as e:
        parse_spec("analytic:" + opts)
    assert str(e.value) == msg


def test_option_boundaries_that_are_valid():
    ok = parse_spec("analytic:shape=192x1x1,K=1,mean=0,lowrank=0,cond=1,leak=1,tied=1,seed=-1, r = 0 ,")
    assert (ok.shape, ok.rank, ok.K, ok.mean, ok.lowrank, ok.cond, ok.leak, ok.tied, ok.seed) == (
        (192, 1, 1), 0, 1, 0.0, 0.0, 1.0, 1.0, 1, -1)
    assert parse_spec("analytic:shape=1X2X3,rank=6").shape == (1, 2, 3)
    assert parse_spec("analytic:diag=1e-300,scale=1e-300").diag == 1e-300
    assert parse_spec("analytic:rank=256").rank == 256
    assert parse_spec("analytic:cond=0.01").n_cond == 1 and parse_spec("analytic:cond=0.3").n_cond == 3
    for bad in ("tiny", "analytic2", "", "patch-gmm"):
        with pytest.raises(ValueError) as e:
            parse_spec(bad)
        assert str(e.value) == f"not an analytic model name: {bad!r}"


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


# --------------------------------------------------------------------------- the stand-ins, call by call
def test_log_abar_is_linear_between_grid_timesteps_and_clamped_outside():
    from gr_gdmcom.codec.analytic import _log_abar_at

    la = torch.log(torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64))  # timesteps 0, 1, 2
    t = torch.tensor([-7.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.5, 2.0, 2.5, 40.0], dtype=torch.float32)
    got = _log_abar_at(t, la)
    want = torch.stack([torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                        0.5 * la[0], la[0], 0.75 * la[0] + 0.25 * la[1], la[1], 0.5 * (la[1] + la[2]), la[2], la[2],
                        la[2]])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    # in float64 from the timestep on: 0.3 in float32 is 0.30000001192..., and 1 + that is not rounded to float32
    t3 = torch.tensor([0.3], dtype=torch.float32)
    w = float(t3.double())
    torch.testing.assert_close(_log_abar_at(t3, la), ((1 - w) * la[0] + w * la[1]).view(1), rtol=0, atol=1e-15)


def test_the_unet_call_matches_the_mixture_for_every_batch_shape():
    am = build_analytic("analytic:K=4,rank=2")
    unet, gmm = am.unet, am.gmm
    x = am.sample_latents(5, "p", seed=3)
    lw_u, lw_c = am.log_weights(""), am.log_weights("p")
    emb = lambda lw, n: torch.cat([lw.float(), torch.zeros(4)]).view(1, 1, 8).expand(n, 1, 8)  # noqa: E731

    def ref(xs, ts, lws):
        return torch.stack([gmm.eps(xi.reshape(1, -1), unet.abar(ti.view(1)), lwi).reshape(xi.shape)
                            for xi, ti, lwi in zip(xs, ts, lws)])

    calls = unet.calls
    # odd batch, per-item timesteps
    t = torch.tensor([981.0, 601.0, 301.0, 101.0, 1.0])
    out = unet(x, t, encoder_hidden_states=emb(lw_c, 5)).sample
    torch.testing.assert_close(out, ref(x, t, [lw_c] * 5), rtol=0, atol=1e-5)
    # one timestep for the whole batch (a 0-d tensor, a Python number)
    for t0 in (torch.tensor(501.0), 501):
        out = unet(x[:3], t0, encoder_hidden_states=emb(lw_u, 3)).sample
        torch.testing.assert_close(out, ref(x[:3], torch.full((3,), 501.0), [lw_u] * 3), rtol=0, atol=1e-5)
    # ... and for latents of several tiles (2 x 2 here)
    big = x[:4].reshape(1, 4, 4, 8, 8).permute(0, 2, 1, 3, 4).reshape(1, 4, 2, 2, 8, 8)
    big = big.permute(0, 1, 2, 4, 3, 5).reshape(1, 4, 16, 16).expand(2, 4, 16, 16).contiguous()
    out = unet(big, 301, encoder_hidden_states=emb(lw_c, 2)).sample
    tiles = out.reshape(2, 4, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, 4, 8, 8)
    for b in range(2):
        torch.testing.assert_close(tiles[b], ref(x[:4], torch.full((4,), 301.0), [lw_c] * 4), rtol=0, atol=1e-5)
    # a guidance pair (halves equal: shared work) and an even batch whose halves differ
    pair = torch.cat([x[:2], x[:2]])
    tt = torch.tensor([701.0, 201.0, 701.0, 201.0])
    e = torch.cat([emb(lw_u, 2), emb(lw_c, 2)])
    out = unet(pair, tt, encoder_hidden_states=e).sample
    torch.testing.assert_close(out, ref(pair, tt, [lw_u, lw_u, lw_c, lw_c]), rtol=0, atol=1e-5)
    diff = torch.cat([x[:2], x[2:4]])
    out = unet(diff, tt, encoder_hidden_states=e).sample
    torch.testing.assert_close(out, ref(diff, tt, [lw_u, lw_u, lw_c, lw_c]), rtol=0, atol=1e-5)
    tdiff = torch.tensor([701.0, 201.0, 702.0, 201.0])
    out = unet(pair, tdiff, encoder_hidden_states=e).sample
    torch.testing.assert_close(out, ref(pair, tdiff, [lw_u, lw_u, lw_c, lw_c]), rtol=0, atol=1e-5)
    assert unet.calls == calls + 7  # one per call
    # the output has the input's dtype (the arithmetic is the mixture's)
    out = unet(x[:2].to(torch.bfloat16), 501, encoder_hidden_states=emb(lw_u, 2)).sample
    assert out.dtype == torch.bfloat16 and out.device == x.device
    out = unet(x[:2].double(), 501, encoder_hidden_states=emb(lw_u, 2)).sample
    assert out.dtype == torch.float64


def test_a_guidance_pair_shares_the_component_work(monkeypatch):
    """[x, x] with two embeddings (classifier-free guidance): one pass over the components with
    two weightings; anything else: one weighting per item."""
    am = build_analytic("analytic:K=4,rank=2")
    seen = []
    real = am.gmm.eps_multi
    monkeypatch.setattr(am.gmm, "eps_multi", lambda x, a, lws: seen.append((x.shape[0], len(lws))) or real(x, a, lws))
    x = am.sample_latents(6, "p", seed=4)
    emb = torch.zeros(6, 1, 8)
    for batch in (torch.cat([x[:3], x[:3]]), torch.cat([x[:1], x[:1]]), x, x[:5]):
        am.unet(batch, 401, encoder_hidden_states=emb[:batch.shape[0]])
    assert seen == [(3, 2), (1, 2), (6, 1), (5, 1)]
    seen.clear()
    am.unet(torch.cat([x[:2], x[:2]]), torch.tensor([401.0, 402.0, 401.0, 403.0]), encoder_hidden_states=emb[:4])
    assert seen == [(4, 1)]  # other timesteps: not a pair


def test_a_latent_that_is_not_made_of_tiles_is_named():
    am = build_analytic("analytic:shape=4x8x4,rank=4")
    emb = torch.zeros(1, 1, 8)
    for shape in ((1, 4, 12, 4), (1, 4, 8, 6), (1, 3, 8, 4)):
        with pytest.raises(ValueError) as e:
            am.unet(torch.zeros(shape), 1.0, encoder_hidden_states=emb)
        assert str(e.value) == (f"analytic model: latent {shape[1]}x{shape[2]}x{shape[3]} is not made of 4x8x4 tiles "
                                "(image sides must be multiples of 64x32 pixels)")


def test_guided_eps_for_any_batch_size():
    am = build_analytic("analytic")
    x = am.sample_latents(3, "p", seed=6)
    abar = torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64)
    e_u = am.gmm.eps(x.reshape(3, -1), abar, am.log_weights("")).reshape(x.shape)
    e_c = am.gmm.eps(x.reshape(3, -1), abar, am.log_weights("p")).reshape(x.shape)
    torch.testing.assert_close(am.guided_eps(x, abar, "p", 2.5), e_u + 2.5 * (e_c - e_u), rtol=0, atol=1e-5)


def test_denoise_is_tweedies_posterior_mean():
    gmm = build_analytic(SMALL).gmm
    x = torch.tensor([[0.7, -1.1], [2.0, 0.5], [-0.3, 0.2]], dtype=torch.float64)
    abar = torch.tensor([0.8, 0.4, 0.05], dtype=torch.float64)
    lw = gmm.log_weights([0, 2])
    got = gmm.denoise(x, abar, lw)
    for i in range(3):
        a = float(abar[i])
        e = dense_eps(gmm, x[i:i + 1], a, lw)[0]
        torch.testing.assert_close(got[i], (x[i] - math.sqrt(1 - a) * e) / math.sqrt(a), rtol=0, atol=1e-10)
    # one level for all; the prior weights by default
    one = gmm.denoise(x, torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(one[1], (x[1] - math.sqrt(0.5) * dense_eps(gmm, x[1:2], 0.5, gmm.log_weights())[0])
                               / math.sqrt(0.5), rtol=0, atol=1e-10)


def test_log_prob_is_the_noised_mixtures_density():
    gmm = build_analytic(SMALL).gmm
    x = torch.tensor([[0.7, -1.1], [2.0, 0.5]], dtype=torch.float32)
    lw = gmm.log_weights([1])
    got = gmm.log_prob(x, torch.tensor([0.8, 0.3], dtype=torch.float64), lw)
    for i, a in enumerate((0.8, 0.3)):
        dens = sum(math.exp(float(lw[k])) * math.exp(float(torch.distributions.MultivariateNormal(
            math.sqrt(a) * gmm.means[k], covariance_matrix=a * gmm.covariance(k) + (1 - a) * torch.eye(2,
            dtype=torch.float64)).log_prob(x[i].double()))) for k in range(gmm.K))
        assert float(got[i]) == pytest.approx(math.log(dens), rel=1e-12)
    assert got.dtype == torch.float64
    # the prior weights by default; one level for all
    prior = gmm.log_prob(x, torch.tensor(0.8))
    assert float(prior[0]) == pytest.approx(float(gmm.log_prob(x[:1], torch.tensor([0.8]), gmm.log_weights())[0]))
    assert float(prior[0]) != pytest.approx(float(got[0]))


def test_the_byte_tokenizer():
    from gr_gdmcom.codec.analytic import ByteTokenizer

    tok = ByteTokenizer(model_max_length=6)
    assert tok("hé").input_ids == [1, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 2]  # UTF-8 bytes + 3, BOS, EOS
    assert tok("abcdefgh", truncation=True).input_ids == [1, 100, 101, 102, 103, 2]  # 6 with BOS and EOS
    assert tok("abcdefgh", truncation=True, max_length=4).input_ids == [1, 100, 101, 2]
    assert tok("abcdefgh").input_ids == [1] + [b + 3 for b in b"abcdefgh"] + [2]  # no truncation: all
    assert tok("ab", padding="max_length").input_ids == [1, 100, 101, 2, 0, 0]
    assert tok(["a", "abc"]).input_ids == [[1, 100, 2], [1, 100, 101, 102, 2]]
    ids = tok(["a", "abc"], return_tensors="pt").input_ids
    assert ids.dtype == torch.long and ids.tolist() == [[1, 100, 2, 0, 0], [1, 100, 101, 102, 2]]
    assert tok("a", return_tensors="pt").input_ids.tolist() == [[1, 100, 2]]


def test_the_components_say_what_they_are():
    from gr_gdmcom.codec.schedule import SD_SCHEDULER

    c = load_components("analytic:K=4,rank=2", device="cpu", dtype="bf16")
    assert c.model_id == "analytic:K=4,rank=2" and c.dtype == torch.bfloat16 and c.device.type == "cpu"
    assert c.scheduler_config == dict(SD_SCHEDULER)
    assert load_components("analytic", device="cpu").model_id == "analytic"
    assert parse_spec("analytic:shape=4x16x8,K=4").label() == "analytic:shape=4x16x8,K=4"
