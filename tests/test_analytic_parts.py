"""The analytic model's parts alone, fast: its options, log abar at continuous timesteps, the UNet
stand-in for every batch shape, the guidance pair's shared work, Tweedie's denoiser and the density,
the byte tokenizer, the components.  First in analytic.py's mutation run (scripts/mutation.py)."""

import math

import pytest
import torch
from test_analytic import SMALL, dense_eps

from gr_gdmcom.codec import load_components
from gr_gdmcom.codec.analytic import build_analytic, parse_spec


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


def test_mixture_parameters_are_kept_in_float64_and_the_weights_normalised():
    import numpy as np

    from gr_gdmcom.codec.analytic import GaussianMixture

    rng = np.random.default_rng(0)
    g = GaussianMixture(np.float32([1, 3]), rng.standard_normal((2, 3)).astype(np.float32),
                        rng.standard_normal((2, 3, 1)).astype(np.float32), np.float32(np.full((2, 3), 0.5)))
    assert [t.dtype for t in (g.weights, g.means, g.factors, g.diag)] == [torch.float64] * 4
    assert g.weights.tolist() == [0.25, 0.75] and (g.K, g.D, g.r) == (2, 3, 1)
    assert g.dtype == torch.float32 and g.to(torch.float64) is g and g.dtype == torch.float64


def test_the_unet_stand_in_describes_itself_as_diffusers_does():
    am = build_analytic("analytic:shape=3x8x4,K=12,rank=2")
    cfg = am.unet.config
    assert (cfg.in_channels, cfg.out_channels, cfg.sample_size, cfg.cross_attention_dim) == (3, 3, 8, 12)
    assert am.unet.log_abar.dtype == torch.float64
    fresh = type(am.unet)(am.gmm, am.spec, am.unet.log_abar)
    assert fresh.calls == 0
    with pytest.raises(AttributeError):
        cfg.no_such_field


@pytest.mark.parametrize("model, msg", [
    ("analytic:K=4:rank=2", "analytic: bad value '4:rank=2' for K"),  # (a colon is no separator)
    ("analytic:K=4=5", "analytic: bad value '4=5' for K"),
    ("analytic:seed=3.5", "analytic: bad value '3.5' for seed"),
])
def test_values_with_separators_in_them_are_bad_values(model, msg):
    with pytest.raises(ValueError) as e:
        parse_spec(model)
    assert str(e.value) == msg


def test_integer_options_stay_integers_and_small_mixtures_get_8_wide_embeddings():
    s = parse_spec("analytic:seed=3,K=4,tied=1,rank=2")
    assert [type(v) for v in (s.seed, s.K, s.tied, s.rank)] == [int] * 4 and s.label().endswith("seed=3,tied=1")
    assert build_analytic("analytic:K=4,rank=2").unet.config.cross_attention_dim == 8
    assert build_analytic("analytic:K=9,rank=2").unet.config.cross_attention_dim == 9


def test_block_patterns_beyond_four_channels():
    from gr_gdmcom.codec.analytic import block_patterns

    W = block_patterns(7, seed=3)
    torch.testing.assert_close(W @ W.T, torch.eye(7, dtype=torch.float64), rtol=0, atol=1e-12)
    ramp = torch.arange(8, dtype=torch.float64) - 3.5
    horizontal = ramp.view(1, 8).expand(8, 8).reshape(-1).repeat(3)  # (RGB, 8 rows, 8 columns), flattened
    vertical = ramp.view(8, 1).expand(8, 8).reshape(-1).repeat(3)
    torch.testing.assert_close(W[3], horizontal / horizontal.norm(), rtol=0, atol=1e-12)
    torch.testing.assert_close(W[4], vertical / vertical.norm(), rtol=0, atol=1e-12)
    # then seeded Gaussian rows (generator seeded with 1000 + seed), Gram-Schmidt against the rows before
    g = torch.Generator().manual_seed(1003)
    basis = list(W[:5])
    for _ in range(2):
        v = torch.randn(192, generator=g, dtype=torch.float64)
        for b in basis:
            v = v - (v @ b) * b
        basis.append(v / v.norm())
    torch.testing.assert_close(W, torch.stack(basis), rtol=0, atol=1e-12)
    assert torch.equal(block_patterns(7, seed=3), W)
    other = block_patterns(7, seed=4)
    assert torch.equal(other[:5], W[:5]) and not torch.allclose(other[5:], W[5:])


@pytest.mark.parametrize("opts", ["", "mean=0.5,lowrank=0.3,diag=0.2,K=16,rank=4,seed=2", "tied=1,K=6"])
def test_the_seeded_mixture_has_the_documented_statistics(opts):
    """Weights 0.5 + U(0, 1) normalised; means with variance ``mean``; rank-r factors adding ``lowrank``
    per element; a log-normal diagonal whose mean is ``diag`` exactly; ``tied=1``: one covariance."""
    from gr_gdmcom.codec.analytic import GaussianMixture

    spec = parse_spec("analytic:" + opts)
    g = GaussianMixture.random(spec)
    K, D, r = spec.K, spec.dim, spec.rank
    assert (g.K, g.D, g.r) == (K, D, r) and g.dtype == torch.float32
    assert float(g.weights.sum()) == pytest.approx(1.0, abs=1e-15)
    assert float(g.weights.max() / g.weights.min()) < 3.0 and float(g.weights.std()) > 0
    n = K * D
    assert float(g.means.pow(2).mean()) == pytest.approx(spec.mean, rel=4 / math.sqrt(n))
    assert float(g.means.mean()) == pytest.approx(0.0, abs=4 * math.sqrt(spec.mean / n))
    assert float(g.factors.pow(2).sum(-1).mean()) == pytest.approx(spec.lowrank, rel=4 / math.sqrt(n))
    # (tied: the first component's diagonal for all, so its mean only nearly)
    assert float(g.diag.mean()) == pytest.approx(spec.diag, rel=0.1 if spec.tied else 1e-12) and float(g.diag.min()) > 0
    spread = torch.log(g.diag).std()
    assert 0.4 < float(spread) < 0.6  # exp(0.5 N(0, 1)): log-sd 0.5
    same = all(torch.equal(g.factors[k], g.factors[0]) and torch.equal(g.diag[k], g.diag[0]) for k in range(K))
    assert same == bool(spec.tied)
    assert not torch.equal(g.means[0], g.means[1])
    again = GaussianMixture.random(spec)
    assert torch.equal(again.means, g.means) and torch.equal(again.factors, g.factors)
