"""codec/core.py piece by piece against references written out here (issue 13's mutation
target): the symbol mapping and its inverse with known numbers, the DDIM update (eq. 9/10),
classifier-free guidance and v-prediction with a stand-in UNet whose output is a known
function, the grid against diffusers' DDIMScheduler, the fixed-point inversion against the
closed-form iterates of a linear denoiser, the step decision against ``select_steps`` with
the arguments the paper's receiver uses, and the exact errors and records of encode/decode.

Fast (the analytic prior and stand-ins; no diffusers model): ``scripts/mutation.py core``
runs it first for every mutant of core.py.
"""

import dataclasses
import logging
import math
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gr_gdmcom.codec import CodecError, GenerativeCodec, LatentMeta, load_components
from gr_gdmcom.codec.calibration import Calibration, CalibrationError
from gr_gdmcom.codec.models import model_fingerprint
from gr_gdmcom.codec.core import (Decoded, Failed, latent_from_symbols, latent_to_symbols, symbols_from_latent,
                                  weight_by_reliability)
from gr_gdmcom.codec.rate import Reduction
from gr_gdmcom.codec.schedule import sampling_path, select_steps
from gr_gdmcom.config import CodecConfig

R2 = math.sqrt(2.0)


@pytest.fixture(scope="module")
def comp():
    return load_components("analytic", device="cpu", dtype="fp32")


def _codec(comp, **kw):
    """A codec on the analytic model; the paper's signal (no mean removal) unless ``remove_mean`` says."""
    kw.setdefault("remove_mean", False)
    return GenerativeCodec(CodecConfig(model="analytic", device="cpu", **kw), components=comp)


def _img(h=64, w=64, seed=0):
    """A smooth picture (gradients), so that its analytic latent is not flat."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.random.default_rng(seed)
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 2) % 256], -1)
    return np.clip(img + r.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


class LinearUNet:
    """A stand-in UNet: ``out = c(t) x + e[:, 0, 0]`` per item (known in closed form).

    ``c(t) = c0 + c1 t / 1000``; records each call's batch, timesteps and embeddings."""

    def __init__(self, c0=0.3, c1=0.0):
        self.c0, self.c1, self.calls = c0, c1, []

    def c(self, t):
        return self.c0 + self.c1 * torch.as_tensor(t, dtype=torch.float32) / 1000.0

    def __call__(self, sample, timestep, encoder_hidden_states, **_):
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        self.calls.append((sample.clone(), t.clone(), encoder_hidden_states.clone()))
        out = self.c(t).view(-1, 1, 1, 1) * sample.float() + encoder_hidden_states[:, 0, 0].view(-1, 1, 1, 1).float()
        return SimpleNamespace(sample=out.to(sample.dtype))  # in the model's dtype, as a diffusers UNet


def _stub(comp, unet, prediction="epsilon", **kw):
    c = dataclasses.replace(comp, unet=unet, scheduler_config={**comp.scheduler_config, "prediction_type": prediction})
    codec = GenerativeCodec(CodecConfig(model="analytic", device="cpu", **kw), components=c)
    emb = torch.zeros(2, 77, 8)
    emb[0, 0, 0], emb[1, 0, 0] = 0.05, -0.2  # unconditional, conditional offsets
    codec._embeddings[codec.config.prompt] = emb
    return codec


def _diffusers_grid(T=50, clean_end_one=False, beta_end=0.012):
    """(tau_0..tau_T with tau_0 = -1, a_0..a_T, abar) from diffusers' DDIMScheduler with SD 1.5's settings."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=beta_end, beta_schedule="scaled_linear",
                      steps_offset=1, timestep_spacing="leading", clip_sample=False,
                      set_alpha_to_one=clean_end_one)
    s.set_timesteps(T)
    taus = sorted(int(t) for t in s.timesteps)
    abar = s.alphas_cumprod.double().numpy()
    a = [1.0 if clean_end_one else float(abar[0])] + [float(abar[t]) for t in taus]
    return [-1] + taus, a, abar


# ----------------------------------------------------------------------------- symbols


def test_symbols_from_latent_known_values():
    s, alpha = symbols_from_latent(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    assert alpha == pytest.approx(1 / math.sqrt(25 / 4), rel=1e-15)  # P = (9 + 16) / 4
    assert s.dtype == np.complex64 and s.shape == (2,)
    np.testing.assert_allclose(s, [0.4 * (3 + 4j) / R2, 0], rtol=1e-7)
    s, alpha = symbols_from_latent(np.array([1.0, -1.0, 2.0, -2.0, 0.5, 0.5]))
    p = (1 + 1 + 4 + 4 + 0.25 + 0.25) / 6
    np.testing.assert_allclose(s, np.array([1 - 1j, 2 - 2j, 0.5 + 0.5j]) / math.sqrt(p) / R2, rtol=1e-6)
    assert np.mean(np.abs(s) ** 2) == pytest.approx(1.0, rel=1e-6)
    # the power of a float32 latent is accumulated in float64 (alpha goes into the header)
    z = np.random.default_rng(0).normal(0, 3, (4, 64, 64)).astype(np.float32) + np.float32(1 / 3)
    _, alpha = symbols_from_latent(z)
    assert alpha == pytest.approx(1 / math.sqrt(np.mean(z.astype(np.float64) ** 2)), rel=1e-13)


def _meta(**kw):
    d = dict(alpha=0.5, latent_shape=(2, 1, 2), image_size=(8, 16), k=5, T=50, guidance=6.0, prompt="p", name="im")
    d.update(kw)
    return LatentMeta(**d)


def test_latent_from_symbols_known_values_with_means():
    z = latent_from_symbols(np.array([1 + 2j, 3 - 1j], np.complex64), _meta(means=(1.0, -2.0)))
    # y = sqrt(2)/alpha [Re, Im] interleaved, plus each channel's mean
    expect = 2 * R2 * np.array([1, 2, 3, -1.0]).reshape(2, 1, 2) + np.array([1.0, -2.0]).reshape(2, 1, 1)
    assert z.dtype == np.float32 and z.shape == (2, 1, 2)
    np.testing.assert_allclose(z, expect, rtol=1e-6)
    z = latent_from_symbols(np.array([1 + 2j, 3 - 1j]), _meta())
    np.testing.assert_allclose(z, 2 * R2 * np.array([1, 2, 3, -1.0]).reshape(2, 1, 2), rtol=1e-6)


def test_latent_from_a_reduced_latent_puts_the_mean_where_nothing_was_sent():
    meta = _meta(latent_shape=(1, 2, 4), reduce=2, reduce_method="pool", means=(0.5,))
    assert meta.reduction == Reduction.make("pool", 2, (1, 2, 4)) and meta.n_symbols == 2
    z = latent_from_symbols(np.array([1 + 0j, 0 + 1j]), meta)
    # pool by 2: each sent value v is the scaled sum of 2 neighbours; A^T gives v / sqrt(2) back to each
    y = 2 * R2 * np.array([1.0, 0.0, 0.0, 1.0])
    a = Reduction.make("pool", 2, (1, 2, 4))
    np.testing.assert_allclose(z, a.adjoint(torch.from_numpy(y)[None])[0].numpy() + 0.5, rtol=1e-6)
    assert np.count_nonzero(z != 0.5) == 4  # 4 of the 8 positions carry the 4 values, 4 stay at the mean


@pytest.mark.parametrize("symbols,meta,message", [
    (np.ones((2, 1), np.complex64), _meta(), "im: received symbols must be a 1-D complex array, got complex64 (2, 1)"),
    (np.ones(2), _meta(), "im: received symbols must be a 1-D complex array, got float64 (2,)"),
    (np.ones(3, np.complex64), _meta(),
     "im: metadata says latent shape (2, 1, 2) = 2 symbols but 3 symbols were received"),
    (np.array([np.nan, np.inf], np.complex64), _meta(), "im: received symbols contain 2 non-finite values (NaN/inf)"),
    (np.ones(2, np.complex64), _meta(alpha=0.0), "im: alpha must be a number in 0.001..1e+06 (1/sqrt of the "
                                                 "latent's power), got 0.0"),
    (np.ones(2, np.complex64), _meta(alpha=-1.0), "im: alpha must be a number in 0.001..1e+06 (1/sqrt of the "
                                                  "latent's power), got -1.0"),
    (np.ones(2, np.complex64), _meta(alpha=math.inf), "im: alpha must be a number in 0.001..1e+06 (1/sqrt of the "
                                                      "latent's power), got inf"),
    # in range of a float, out of any latent's: alpha 1e-30 decoded to an all-black picture reported as good
    (np.ones(2, np.complex64), _meta(alpha=1e-30), "im: alpha must be a number in 0.001..1e+06 (1/sqrt of the "
                                                   "latent's power), got 1e-30"),
    (np.ones(2, np.complex64), _meta(alpha="1"), "im: alpha must be a number in 0.001..1e+06 (1/sqrt of the "
                                                 "latent's power), got '1'"),
    (np.ones(2, np.complex64), _meta(guidance=math.nan), "im: guidance must be a number in 0..100, got nan"),
    (np.ones(2, np.complex64), _meta(guidance=-1.0), "im: guidance must be a number in 0..100, got -1.0"),
    (np.ones(2, np.complex64), _meta(means=(1e30, 0.0)), "im: channel means must lie within +-1e+06, got [1e+30, 0.0]"),
    (np.ones(2, np.complex64), _meta(means=("a", 0.0)), "im: channel means must be numbers, got ['a', 0.0]"),
    (np.ones(2, np.complex64), _meta(forward="bogus"), "im: forward must be one of ddim, random, got 'bogus'"),
    (np.ones(2, np.complex64), _meta(latent_shape=(2, 2)), "im: latent_shape must be 3 positive integers, got (2, 2)"),
    (np.ones(2, np.complex64), _meta(latent_shape=(2, 0, 2)),
     "im: latent_shape must be 3 positive integers, got (2, 0, 2)"),
    (np.ones(2, np.complex64), _meta(image_size=(8,)), "im: image_size must be 2 integers, got (8,)"),
    (np.ones(2, np.complex64), _meta(prompt=None), "im: prompt must be a string, got NoneType"),
    (np.ones(2, np.complex64), _meta(means=(1.0,)), "im: metadata has 1 channel means for 2 channels"),
    # finite, but float32 arithmetic on them overflows into an all-black "decoded" image
    (np.array([1e30, 1 + 2e6j], np.complex64), _meta(),
     "im: 2 received symbols exceed 1e+06 in magnitude (the symbols are unit-power; is the receiver's gain set?)"),
    (np.ones(2, np.complex64), _meta(means=(0.5, math.nan)), "im: metadata has non-finite channel means [0.5, nan]"),
    (np.ones(2, np.complex64), _meta(reduce=3, reduce_method="pool"), "im: pool reduces by 2, 4, 8, 16, got 3"),
])
def test_latent_from_symbols_errors(symbols, meta, message):
    with pytest.raises(CodecError) as e:
        latent_from_symbols(symbols, meta)
    assert str(e.value).startswith(message)


def test_latent_to_symbols_removes_channel_means_and_reduces():
    zk = np.arange(16, dtype=np.float64).reshape(2, 2, 4) ** 1.5
    mu = zk.reshape(2, -1).mean(1)
    sym, alpha, means, red = latent_to_symbols(zk, CodecConfig(model="analytic", remove_mean=True))
    # the channel means (to the header's precision); what is removed is exactly what the header says
    assert means == pytest.approx(tuple(mu), rel=1e-3) and all(type(v) is float for v in means)
    assert all(float(np.float16(v)) == v for v in means)  # as the header carries them: float16
    c = (zk - np.asarray(means).reshape(2, 1, 1)).reshape(-1)
    assert alpha == pytest.approx(1 / math.sqrt(np.mean(c * c)), rel=1e-12)
    np.testing.assert_allclose(sym, alpha * (c[0::2] + 1j * c[1::2]) / R2, rtol=1e-6)
    assert (red.method, red.factor) == ("full", 1)
    sym, alpha, means, red = latent_to_symbols(zk, CodecConfig(model="analytic", remove_mean=False))
    flat = zk.reshape(-1)
    assert means == () and alpha == pytest.approx(1 / math.sqrt(np.mean(flat ** 2)), rel=1e-12)
    np.testing.assert_allclose(sym, alpha * (flat[0::2] + 1j * flat[1::2]) / R2, rtol=1e-6)
    # pool by 2: sums of horizontal pairs / sqrt(2), computed in float64 from a float32 latent
    z32 = zk.astype(np.float32)
    sym, alpha, means, red = latent_to_symbols(z32, CodecConfig(model="analytic", reduce=2, reduce_method="pool",
                                                                remove_mean=False))
    assert (red.method, red.factor, sym.size) == ("pool", 2, 4)
    z64 = z32.astype(np.float64)
    v = ((z64[:, :, 0::2] + z64[:, :, 1::2]) / R2).reshape(-1)
    assert alpha == pytest.approx(1 / math.sqrt(np.mean(v * v)), rel=1e-13)
    np.testing.assert_allclose(sym, alpha * (v[0::2] + 1j * v[1::2]) / R2, rtol=1e-6)


# ----------------------------------------------------------------------------- reliabilities


def test_weight_by_reliability_edges_and_exact_errors():
    s = np.array([1 + 1j, 2 - 1j, -1j], np.complex64)
    out, snr = weight_by_reliability(s, [0, 0, 0])  # noiseless: nothing changes, v_eff floored at 1e-10
    np.testing.assert_array_equal(out, s)
    assert snr == pytest.approx(100.0)
    v = np.array([0.1, 1.0, 3.3], np.float32)  # float32 variances: the arithmetic is float64 anyway
    out, snr = weight_by_reliability(s, v, mask=np.array([1, 0, 1]))  # integer mask means bool
    v0, v2 = float(v[0]), float(v[2])
    mse = (v0 / (1 + v0) + v2 / (1 + v2)) / 2  # symbols 0 and 2 received
    ve = mse / (1 - mse)
    assert snr == pytest.approx(-10 * math.log10(ve), rel=1e-13)
    # received symbols rescaled; the erased one is the prior mean, 0 (whatever it held)
    np.testing.assert_allclose(out, np.where([1, 0, 1], s * (1 + ve) / (1 + v.astype(np.float64)), 0), rtol=1e-6)
    for var, mask, msg in [([0, -1e-9, 0], None, "noise_var must be finite and >= 0 for every received symbol"),
                           ([0, np.nan, 0], None, "noise_var must be finite and >= 0 for every received symbol"),
                           ([0, 0], None, "noise_var shape (2,) does not match symbols (3,)"),
                           ([1, 1, 1], [0, 0, 0], "noise_var given but no symbol was received")]:
        with pytest.raises(CodecError) as e:
            weight_by_reliability(s, var, mask)
        assert str(e.value) == msg


# ----------------------------------------------------------------------------- metadata


def test_latent_meta_means_reduction_and_dict():
    m = _meta(latent_shape=(2, 2, 3))
    z = m.mean_latent()
    assert z.shape == (2, 2, 3) and z.dtype == np.float64 and not z.any()
    m = _meta(latent_shape=(2, 2, 3), means=(1.5, -0.5))
    np.testing.assert_array_equal(m.mean_latent(), np.concatenate([np.full((1, 2, 3), 1.5), np.full((1, 2, 3), -0.5)]))
    assert m.prompt_hash == zlib.crc32(b"p") & 0xFFFF
    d = _meta(means=(np.float32(0.25), np.float64(2.0))).to_dict()
    assert d["means"] == [0.25, 2.0] and all(type(v) is float for v in d["means"])
    back = LatentMeta.from_dict(dict(d, reduce="2", reduce_method="pool"))
    assert (back.means, back.reduce, back.reduce_method) == ((0.25, 2.0), 2, "pool")
    base = {k: v for k, v in d.items() if k not in ("means", "reduce", "reduce_method")}
    back = LatentMeta.from_dict(base)
    assert (back.means, back.reduce, back.reduce_method) == ((), 1, "full")
    with pytest.raises(CodecError, match=r"^im: unknown reduce method 'nope'"):
        _ = _meta(reduce=2, reduce_method="nope").n_symbols


# ----------------------------------------------------------------------------- construction


def test_codec_construction(comp, tmp_path):
    codec = GenerativeCodec(components=comp)
    assert codec.config == CodecConfig() and codec.prediction_type == "epsilon" and codec.calibration is None
    assert codec.stats == dict(unet_calls=0, images_encoded=0, images_decoded=0, failures=0)
    own = GenerativeCodec(CodecConfig(model="analytic", device="cpu", dtype="bf16", k=3))
    assert own.c.dtype == torch.bfloat16 and own.config.k == 3 and own.c.model_id == "analytic"
    # the grid: diffusers' DDIMScheduler, clean end as the model's scheduler says or 1
    for clean_end, one in (("model", False), ("one", True)):
        g = _codec(comp, clean_end=clean_end).grid
        taus, a, _ = _diffusers_grid(50, one)
        assert list(g.timesteps) == taus
        np.testing.assert_allclose(g.alphas, a, rtol=1e-12)
    # ... from the model's own scheduler config
    other = dataclasses.replace(comp, scheduler_config={**comp.scheduler_config, "beta_end": 0.02,
                                                        "set_alpha_to_one": True})
    g = GenerativeCodec(CodecConfig(model="analytic"), components=other).grid
    np.testing.assert_allclose(g.alphas, _diffusers_grid(50, True, beta_end=0.02)[1], rtol=1e-12)
    # a calibration measured for k=5 serves a receiver set to another k (k comes with each image)
    cal = Calibration(model="analytic", k=5, m=5, T=50, guidance=6.0, prompt=CodecConfig().prompt, clean_end="model",
                      inversion="ddim", inversion_iters=3, metric="mse", images=["x"], rescale=False,
                      fit_x=[0.0, 20.0], fit_n=[40.0, 12.0])
    path = cal.save(tmp_path / "cal.json")
    codec = _codec(comp, rule=f"calibrated:{path}", k=4)
    assert codec.calibration.source == str(path) and codec.calibration.fit_n == [40.0, 12.0]
    with pytest.raises(CalibrationError, match=r"guidance=6.0 \(here 2.0\)"):
        _codec(comp, rule=f"calibrated:{path}", guidance=2.0)
    with pytest.raises(CalibrationError, match=r"model='analytic' \(here 'analytic:K=4'\)"):
        GenerativeCodec(CodecConfig(model="analytic:K=4", device="cpu", rule=f"calibrated:{path}"))


def test_v_prediction_model_is_recognised(comp):
    c = dataclasses.replace(comp, scheduler_config={**comp.scheduler_config, "prediction_type": "v_prediction"})
    assert GenerativeCodec(CodecConfig(model="analytic"), components=c).prediction_type == "v_prediction"
    c = dataclasses.replace(comp, scheduler_config={**comp.scheduler_config, "prediction_type": "sample"},
                            model_id="mine")
    with pytest.raises(Exception, match="mine"):
        GenerativeCodec(CodecConfig(model="analytic"), components=c)


# ----------------------------------------------------------------------------- model calls


def test_text_embeddings_are_computed_once_per_prompt_and_bounded(comp):
    codec = _codec(comp)
    calls, asked = [], []
    enc, tok = comp.text_encoder, comp.tokenizer

    def counting(ids, **kw):
        calls.append(ids.clone())
        return enc(ids, **kw)

    class Tok:  # the pipeline's call: padded and truncated to the tokenizer's length, as tensors
        model_max_length = 77

        def __call__(self, text, **kw):
            asked.append((text, kw))
            return tok(text, **kw)

    codec.c = dataclasses.replace(comp, text_encoder=counting, tokenizer=Tok())
    e = codec._text_embedding("a cat")
    assert asked == [(["", "a cat"], dict(padding="max_length", truncation=True, max_length=77, return_tensors="pt"))]
    ids = tok(["", "a cat"], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    assert torch.equal(calls[0], ids.input_ids) and calls[0].shape == (2, 77)
    assert torch.equal(e, enc(ids.input_ids)[0]) and e.dtype == torch.float32
    assert codec._text_embedding("a cat") is e and len(calls) == 1
    for i in range(20):
        codec._text_embedding(f"p{i}")
    assert len(codec._embeddings) == 16 and list(codec._embeddings)[0] == "p4" and "a cat" not in codec._embeddings
    codec.c = dataclasses.replace(comp, dtype=torch.float64)
    assert codec._text_embedding("new").dtype == torch.float64


def test_eps_is_the_guided_combination_in_one_unet_call(comp):
    unet = LinearUNet(0.3, 0.5)
    codec = _stub(comp, unet, guidance=3.0)
    emb = codec._embeddings[codec.config.prompt]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([101.0, 501.0])
    e = codec._eps(x, t, codec.config.prompt, 3.0)
    assert len(unet.calls) == 1 and codec.stats["unet_calls"] == 1
    xin, tin, ehs = unet.calls[0]
    assert torch.equal(xin, torch.cat([x, x])) and torch.equal(tin, torch.cat([t, t]))
    assert torch.equal(ehs, torch.cat([emb[:1].expand(2, -1, -1), emb[1:].expand(2, -1, -1)]))
    c = (0.3 + 0.5 * t / 1000).view(-1, 1, 1, 1)
    e_u, e_c = c * x + 0.05, c * x - 0.2
    torch.testing.assert_close(e, e_u + 3.0 * (e_c - e_u), rtol=1e-6, atol=1e-6)
    e1 = codec._eps(x, t, codec.config.prompt, 1.0)  # w = 1: the conditional half only
    assert len(unet.calls) == 2 and unet.calls[1][0].shape[0] == 2 and codec.stats["unet_calls"] == 2
    assert torch.equal(unet.calls[1][2], emb[1:].expand(2, -1, -1))
    torch.testing.assert_close(e1, e_c, rtol=1e-6, atol=1e-6)


def test_eps_is_float32_whatever_the_models_dtype(comp):
    for w in (1.0, 3.0):
        unet = LinearUNet(0.3, 0.0)
        codec = _stub(comp, unet)
        codec.c = dataclasses.replace(codec.c, dtype=torch.bfloat16)
        codec._embeddings[codec.config.prompt] = codec._embeddings[codec.config.prompt].to(torch.bfloat16)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        e = codec._eps(x, torch.tensor([101.0, 501.0]), codec.config.prompt, w)
        assert unet.calls[0][0].dtype == torch.bfloat16 and e.dtype == torch.float32
        e_u, e_c = 0.3 * x + 0.05, 0.3 * x - 0.2
        torch.testing.assert_close(e, e_u + w * (e_c - e_u), rtol=0.05, atol=0.05)


def test_v_prediction_output_becomes_noise_at_the_timesteps_abar(comp):
    unet = LinearUNet(0.3, 0.0)
    codec = _stub(comp, unet, prediction="v_prediction")
    _, _, abar = _diffusers_grid()
    x = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.0, 21.0, 500.5, 999.0, -1.0])
    v = 0.3 * x - 0.2  # the stand-in's conditional output
    e = codec._eps(x, t, codec.config.prompt, 1.0)
    log_mid = 0.5 * (math.log(abar[500]) + math.log(abar[501]))
    a = torch.tensor([abar[0], abar[21], math.exp(log_mid), abar[999], 1.0], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(e, a.sqrt() * v + (1 - a).sqrt() * x, rtol=1e-5, atol=1e-6)
    assert e.shape == x.shape and e.dtype == torch.float32


def test_v_prediction_coefficients_follow_the_latents_device(comp):
    """The per-item abar of ``_noise_from_v`` is made on the latents' device, whatever device the
    timesteps came on (the UNet's timesteps may live on the host): with the latents on torch's
    ``meta`` device standing in for a GPU, the result is there too (a host-side coefficient
    tensor would not combine with them)."""
    codec = _stub(comp, LinearUNet(), prediction="v_prediction")
    x = torch.empty(2, 4, 8, 8, device="meta")
    out = codec._noise_from_v(x, torch.empty(2, 4, 8, 8, device="meta"), torch.tensor([21.0, 500.5]))
    assert out.device.type == "meta" and out.shape == (2, 4, 8, 8)


def test_v_prediction_coefficients_do_not_read_the_timesteps_back(comp):
    """The timesteps stay on the device: with them on torch's ``meta`` device (no values to read,
    as reading a GPU tensor would wait for the GPU) the coefficients are still made; at integer
    timesteps they are the schedule's float32 values exactly (what DDIMScheduler uses)."""
    codec = _stub(comp, LinearUNet(), prediction="v_prediction")
    out = codec._noise_from_v(torch.empty(2, 4, 8, 8, device="meta"), torch.empty(2, 4, 8, 8, device="meta"),
                              torch.empty(2, device="meta"))
    assert out.device.type == "meta"
    _, _, abar = _diffusers_grid()
    t = torch.tensor([0.0, 1.0, 21.0, 981.0, 999.0, 1200.0])
    want = torch.tensor([abar[0], abar[1], abar[21], abar[981], abar[999], abar[999]], dtype=torch.float32)
    assert torch.equal(codec._abar_on_device(t), want)


class _Stop(Exception):
    pass


class DeviceProbeUNet:
    """A stand-in UNet that records the devices of its inputs and stops the run at its first call."""

    def __init__(self):
        self.devices = []

    def __call__(self, sample, timestep, encoder_hidden_states, **_):
        self.devices.append((sample.device.type, timestep.device.type))
        raise _Stop


def test_fixed_point_inversion_timesteps_are_made_on_the_latents_device(comp):
    """The fixed-point inversion builds its per-item timesteps itself: on the latents' device (torch's
    ``meta`` standing in for a GPU), or the UNet would get host timesteps beside device latents."""
    unet = DeviceProbeUNet()
    codec = _stub(comp, unet, inversion="fixed-point")
    with pytest.raises(_Stop):
        codec.invert(torch.empty(2, 4, 8, 8, device="meta"), 0, 1, codec.config.prompt, 6.0)
    assert unet.devices == [("meta", "meta")]


def test_ddim_update_is_eq_9_and_10():
    x, e = torch.tensor([[[[1.0, -2.0]]]]), torch.tensor([[[[0.5, 0.25]]]])
    af, at = torch.tensor(0.36), torch.tensor(0.81)
    x0 = (x - 0.8 * e) / 0.6
    torch.testing.assert_close(GenerativeCodec._ddim_update(x, e, af, at), 0.9 * x0 + math.sqrt(0.19) * e)


def test_ddim_aligns_item_paths_at_their_ends(comp):
    unet = LinearUNet(0.2, 1.0)
    codec = _stub(comp, unet, guidance=1.0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    paths = [[(801.0, 0.1, 0.3), (401.0, 0.3, 0.7)], [(301.0, 0.6, 0.9)]]
    x_in = x.clone()
    out = codec._ddim(x_in, paths, codec.config.prompt, 1.0)
    assert torch.equal(x_in, x)  # the caller's latents are not overwritten
    assert [c[0].shape[0] for c in unet.calls] == [1, 2]
    assert unet.calls[0][1].tolist() == [801.0] and unet.calls[1][1].tolist() == [401.0, 301.0]

    def step(z, t, af, at):
        e = (0.2 + t / 1000) * z - 0.2
        return math.sqrt(at) * (z - math.sqrt(1 - af) * e) / math.sqrt(af) + math.sqrt(1 - at) * e

    torch.testing.assert_close(out[0], step(step(x[0], 801.0, 0.1, 0.3), 401.0, 0.3, 0.7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], step(x[1], 301.0, 0.6, 0.9), rtol=1e-5, atol=1e-5)
    assert torch.equal(codec._ddim(x, [], codec.config.prompt, 1.0), x) and len(unet.calls) == 2
    assert codec.stats["unet_calls"] == 2
    out64 = codec._ddim(x.double(), paths, codec.config.prompt, 1.0)  # float32 arithmetic whatever comes in
    assert out64.dtype == torch.float32 and torch.equal(out64, out)


def test_tensors_are_made_on_the_models_device(comp):
    """torch's ``meta`` device stands in for an accelerator: a per-item tensor made on the CPU
    by mistake meets latents on the model's device, and torch refuses the mix."""
    meta = torch.device("meta")
    for w in (1.0, 3.0):
        codec = _stub(comp, LinearUNet(0.3, 0.5))
        codec._embeddings[codec.config.prompt] = codec._embeddings[codec.config.prompt].to(meta)
        x = torch.zeros(2, 4, 8, 8, device=meta)
        out = codec._ddim(x, [[(801.0, 0.1, 0.3), (401.0, 0.3, 0.7)], [(301.0, 0.6, 0.9)]], codec.config.prompt, w)
        assert out.device == meta and out.shape == x.shape
    seen = []

    def encoder(ids, **_):
        seen.append(ids.device)
        return (torch.zeros(2, 77, 8),)

    codec = _codec(comp)
    codec.c = dataclasses.replace(comp, device=meta, text_encoder=encoder)
    codec._text_embedding("on the device")
    assert seen == [meta]


def test_inversion_path_against_diffusers(comp):
    codec = _codec(comp)
    taus, a, _ = _diffusers_grid()
    assert codec.inversion_path(0, 3) == [(float(taus[j + 1]), a[j], a[j + 1]) for j in range(3)]
    assert codec.inversion_path(0, 3)[0] == (1.0, a[0], a[1])
    assert codec.inversion_path(5, 7) == [(float(taus[6]), a[5], a[6]), (float(taus[7]), a[6], a[7])]
    assert codec.inversion_path(4, 4) == [] and codec.inversion_path(5, 2) == []


def _gains(A, B, c, n):
    """y_0 = (A + Bc) x, y_{i+1} = A x + Bc y_i: the fixed-point iterates of a linear denoiser e = c x."""
    g = [A + B * c]
    for _ in range(n):
        g.append(A + B * c * g[-1])
    return g


def test_ddim_and_fixed_point_inversion_with_a_linear_denoiser(comp):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    x[1] *= 3.0
    codec = _stub(comp, LinearUNet(0.4, 0.0), guidance=1.0)
    _, a, _ = _diffusers_grid()
    # the step j -> j+1 of F(x, e) = A x + B e with e = c y - 0.2 (offset of the conditional stand-in)
    A = math.sqrt(a[3] / a[2])
    B = math.sqrt(1 - a[3]) - math.sqrt(a[3]) * math.sqrt(1 - a[2]) / math.sqrt(a[2])
    # ddim (eq. 10): the noise at the start point, one call per step
    y, calls = codec.invert(x, 2, 3, codec.config.prompt, 1.0)
    torch.testing.assert_close(y, A * x + B * (0.4 * x - 0.2), rtol=1e-5, atol=1e-5)
    assert calls == [1, 1]
    y, calls = codec.invert(x, 3, 3, codec.config.prompt, 1.0)
    assert torch.equal(y, x) and calls == [0, 0]
    y, calls = codec.invert(x, 3, 1, codec.config.prompt, 1.0)
    assert torch.equal(y, x)
    # fixed point: without the offset, y_i = g_i x; exact point A / (1 - Bc)
    codec = _stub(comp, LinearUNet(0.4, 0.0), guidance=1.0, inversion="fixed-point", inversion_iters=40,
                  inversion_tol=1e-6)
    codec._embeddings[codec.config.prompt].zero_()
    y, calls = codec.invert(x, 2, 3, codec.config.prompt, 1.0)
    torch.testing.assert_close(y, A / (1 - B * 0.4) * x, rtol=1e-5, atol=1e-6)
    g = _gains(A, B, 0.4, 40)
    res = [abs(g[i + 1] - g[i]) / abs(g[i]) for i in range(40)]
    n = next(i for i, r in enumerate(res) if r <= 1e-6) + 1  # iterations until an update is below tol
    assert calls == [1 + n, 1 + n]
    # two iterations, tolerance never met: y_2
    codec.config = dataclasses.replace(codec.config, inversion_iters=2, inversion_tol=0.0)
    y, calls = codec.invert(x, 2, 3, codec.config.prompt, 1.0)
    torch.testing.assert_close(y, g[2] * x, rtol=1e-5, atol=1e-6)
    assert calls == [3, 3]
    # a large tolerance: the first update is small enough, y_1
    codec.config = dataclasses.replace(codec.config, inversion_iters=5, inversion_tol=0.5)
    y, calls = codec.invert(x, 2, 3, codec.config.prompt, 1.0)
    torch.testing.assert_close(y, g[1] * x, rtol=1e-5, atol=1e-6)
    assert calls == [2, 2]


def test_fixed_point_stops_when_an_update_is_within_tolerance(comp):
    """A denoiser that ignores its input: the first update is exactly 0, which is within a
    tolerance of 0, so the item stops after one iteration (2 calls), not after all 4."""
    codec = _stub(comp, LinearUNet(0.0, 0.0), guidance=1.0, inversion="fixed-point", inversion_iters=4,
                  inversion_tol=0.0)
    x = torch.ones(1, 4, 8, 8)
    y, calls = codec.invert(x, 2, 3, codec.config.prompt, 1.0)
    assert calls == [2]
    _, a, _ = _diffusers_grid()
    e = -0.2  # the conditional offset
    x0 = (1 - math.sqrt(1 - a[2]) * e) / math.sqrt(a[2])
    torch.testing.assert_close(y, torch.full_like(x, math.sqrt(a[3]) * x0 + math.sqrt(1 - a[3]) * e))


def test_fixed_point_stops_at_the_least_residual_when_updates_grow(comp):
    """An affine denoiser e = c y + d whose second iterate lands near 0: the relative update from
    it is larger than the first, so the item goes back to the point of least residual, y_0."""
    codec = _stub(comp, LinearUNet(5.0, 0.0), guidance=1.0, inversion="fixed-point", inversion_iters=6,
                  inversion_tol=0.0)
    _, a, _ = _diffusers_grid()
    A = math.sqrt(a[3] / a[2])
    B = math.sqrt(1 - a[3]) - math.sqrt(a[3]) * math.sqrt(1 - a[2]) / math.sqrt(a[2])
    c = 5.0
    D = (0.001 - A - B * c * (A + B * c)) / (1 + B * c)  # B d, chosen so that y_1 = 0.001 (x = 1)
    codec._embeddings[codec.config.prompt][1, 0, 0] = D / B
    y0 = A + B * c + D
    y1 = A + B * c * y0 + D
    y2 = A + B * c * y1 + D
    assert y1 == pytest.approx(0.001) and abs(y2 - y1) / abs(y1) > 10 * abs(y1 - y0) / abs(y0)
    x = torch.ones(1, 4, 8, 8)
    y, calls = codec.invert(x, 2, 3, codec.config.prompt, 1.0)
    torch.testing.assert_close(y, torch.full_like(x, y0), rtol=1e-4, atol=1e-6)
    assert calls == [3]


def test_fixed_point_items_stop_on_their_own(comp):
    codec = _codec(comp, inversion="fixed-point", inversion_iters=6, inversion_tol=1e-3)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    z *= torch.tensor([0.3, 1.0, 3.0]).view(-1, 1, 1, 1)
    y, calls = codec.invert(z, 0, 5, codec.config.prompt, 6.0)
    for b in range(3):
        yb, cb = codec.invert(z[b:b + 1], 0, 5, codec.config.prompt, 6.0)
        torch.testing.assert_close(y[b:b + 1], yb, rtol=1e-5, atol=1e-5)
        assert calls[b] == cb[0]
    assert len(set(calls)) > 1 and all(5 < c <= 5 * 7 for c in calls)


def test_sync_waits_for_cuda_only(comp, monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: seen.append(dev))
    codec = _codec(comp)
    codec._sync()
    assert seen == []
    codec.c = dataclasses.replace(comp, device=torch.device("cuda", 0))
    codec._sync()
    assert seen == [torch.device("cuda", 0)]


# ----------------------------------------------------------------------------- transmitter


def test_encode_many_names_failures_groups_and_records(comp, tmp_path, caplog):
    from PIL import Image

    codec = _codec(comp, batch_size=2, k=3)
    f = tmp_path / "photo.png"
    Image.fromarray(_img(64, 128, 1)).save(f)
    images = [_img(), str(tmp_path / "missing.png"), _img(seed=2), f, _img(seed=3), tmp_path]
    with caplog.at_level(logging.DEBUG, logger="gr_gdmcom.codec.core"):
        out = codec.encode_many(images)
    assert [r.getMessage() for r in caplog.records] == [out[1].error, out[5].error]  # reported once, by the caller
    assert [type(o).__name__ for o in out] == ["Encoded", "Failed", "Encoded", "Encoded", "Encoded", "Failed"]
    assert [o.meta.name if not isinstance(o, Failed) else o.name for o in out] == \
        ["image0", "missing", "image2", "photo", "image4", tmp_path.name]
    assert out[1].error == f"image not found: {tmp_path / 'missing.png'}"
    assert codec.stats["failures"] == 2 and codec.stats["images_encoded"] == 4
    # three 64 x 64 images in batches of 2 (2 + 1), the 64 x 128 one alone
    assert [o.record["batch"] for o in out if not isinstance(o, Failed)] == [2, 2, 1, 1]
    assert codec.stats["unet_calls"] == 3 * 3
    r = out[3].record
    assert r["unet_calls"] == 3 and r["batch_unet_calls"] == 3 and r["symbols"] == 4 * 8 * 16 // 2
    assert r["bcr"] == pytest.approx(256 / (3 * 64 * 128)) and set(r["seconds"]) == {"vae_encode", "inversion", "other"}
    m = out[3].meta
    assert (m.image_size, m.latent_shape, m.k, m.T, m.guidance, m.prompt, m.forward, m.reduce, m.reduce_method) == \
        ((64, 128), (4, 8, 16), 3, 50, 6.0, codec.config.prompt, "ddim", 1, "full")
    small = _codec(comp, max_pixels=64 * 64).encode_many([_img(64, 128), _img()])
    assert small[0].error == ("image <array (64, 128, 3) uint8> has 128x64 = 8192 pixels, "
                              "more than the limit max_pixels=4096")
    assert small[1].meta.image_size == (64, 64)
    named = codec.encode_many([_img(), _img()], ["a", "b"])
    assert [e.meta.name for e in named] == ["a", "b"]
    assert codec.encode(_img()).meta.name == "image0" and codec.encode(_img(), "z").meta.name == "z"
    with pytest.raises(CodecError, match="missing.png"):
        codec.encode(str(tmp_path / "missing.png"))


def test_a_batch_the_model_refuses_fails_each_of_its_rows(comp, tmp_path, caplog):
    codec = _codec(comp)
    bad = _img(72, 80)  # the analytic prior's tiles need sides that are multiples of 64
    with caplog.at_level(logging.DEBUG, logger="gr_gdmcom.codec.core"):
        out = codec.encode_many([bad, _img(), bad, tmp_path / "none.png"], ["b1", "ok", "b2", "none"])
    why = ("analytic model: latent 4x9x10 is not made of 4x8x8 tiles "
           "(image sides must be multiples of 64x64 pixels)")
    assert [(o.name, o.error) for o in out if isinstance(o, Failed)] == \
        [("b1", why), ("b2", why), ("none", f"image not found: {tmp_path / 'none.png'}")]
    assert out[1].meta.name == "ok" and codec.stats["failures"] == 3 and codec.stats["images_encoded"] == 1
    assert [r.getMessage() for r in caplog.records] == [out[3].error, why]  # once per refused batch


def test_encoded_symbols_are_the_normalised_inverted_latent(comp):
    codec = _codec(comp, k=4, guidance=2.0, prompt="a dog")
    from gr_gdmcom.codec.images import load_rgb, to_tensor

    img = _img(64, 128, 7)
    with torch.no_grad():
        z0 = comp.vae.encode(to_tensor(load_rgb(img))).latent_dist.mode().float() * comp.vae_scale
    zk, _ = codec.invert(z0, 0, 4, "a dog", 2.0)
    flat = zk[0].double().numpy().reshape(-1)
    enc = codec.encode(img, "d")
    alpha = 1 / math.sqrt(np.mean(flat ** 2))
    assert enc.meta.alpha == pytest.approx(alpha, rel=1e-6) and enc.meta.image_size == (64, 128)
    assert (enc.meta.guidance, enc.meta.prompt, enc.meta.k) == (2.0, "a dog", 4)
    np.testing.assert_allclose(enc.symbols, alpha * (flat[0::2] + 1j * flat[1::2]) / R2, rtol=1e-4, atol=1e-6)


def test_random_forward_is_eq_5_with_noise_seeded_by_name(comp):
    codec = _codec(comp, forward="random", k=7, seed=11)
    from gr_gdmcom.codec.images import load_rgb, to_tensor

    img = _img(seed=8)
    with torch.no_grad():
        z0 = comp.vae.encode(to_tensor(load_rgb(img))).latent_dist.mode().float()[0] * comp.vae_scale
    state = int(np.random.SeedSequence([11, zlib.crc32(b"pic")]).generate_state(1)[0])
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(state))
    a7 = _diffusers_grid()[1][7]
    zk = (math.sqrt(a7) * z0 + math.sqrt(1 - a7) * noise).double().numpy().reshape(-1)
    enc = codec.encode(img, "pic")
    alpha = 1 / math.sqrt(np.mean(zk ** 2))
    assert enc.meta.forward == "random" and enc.record["unet_calls"] == 0 and codec.stats["unet_calls"] == 0
    np.testing.assert_allclose(enc.symbols, alpha * (zk[0::2] + 1j * zk[1::2]) / R2, rtol=1e-4, atol=1e-6)


def test_a_latent_too_small_to_reduce_fails_alone(comp):
    codec = _codec(comp, reduce=200, reduce_method="subset")
    out = codec.encode_many([_img(64, 64), _img(64, 128)], ["small", "big"])
    assert isinstance(out[0], Failed) and out[0].name == "small"
    assert out[0].error == "small: reduce=200 leaves fewer than 2 of the latent's 256 values"
    assert codec.stats["failures"] == 1 and codec.stats["images_encoded"] == 1
    assert (out[1].meta.reduce, out[1].meta.reduce_method, out[1].symbols.size) == (200, "subset", 1)
    assert out[1].record["symbols"] == 1


# ----------------------------------------------------------------------------- receiver


@pytest.fixture(scope="module")
def sent(comp):
    codec = _codec(comp)
    return codec.encode(_img(seed=9), "sent")


def _other_grid(comp):
    """The analytic model with another noise schedule, so that a grid other than the codec's shows."""
    return dataclasses.replace(comp, scheduler_config={**comp.scheduler_config, "beta_end": 0.02})


def test_step_choice_forwards_the_receivers_settings(comp, sent):
    other = _other_grid(comp)
    meta = dataclasses.replace(sent.meta, alpha=0.5, k=3, T=40)  # P = 4; none of select_steps' defaults
    for kw in (dict(), dict(rule="variance", m=3, rescale=False), dict(steps=30, m=2), dict(rule="exact")):
        codec = GenerativeCodec(CodecConfig(model="analytic", T=40, **kw), components=other)
        cfg = codec.config
        assert codec.step_choice(3.0, meta) == select_steps(3.0, k=3, m=cfg.m, T=40, rule=cfg.rule, power=4.0,
                                                              rescale=cfg.rescale, steps=cfg.steps, grid=codec.grid)
    # a reduced latent: no receiver inversion (m = 0); a fixed N below k is not used
    red = dataclasses.replace(meta, reduce=2, reduce_method="pool")

    def codec_(**kw):
        return GenerativeCodec(CodecConfig(model="analytic", T=40, **kw), components=other)

    codec = codec_(rule="variance", m=4, rescale=False)
    assert codec.step_choice(3.0, red) == select_steps(3.0, k=3, m=0, T=40, rule="variance", power=4.0,
                                                       rescale=False, grid=codec.grid)
    codec = codec_(rule="variance", m=0, rescale=False, steps=3, k=2)
    assert codec.step_choice(3.0, red) == select_steps(3.0, k=3, m=0, T=40, power=4.0, rescale=False, steps=3,
                                                       grid=codec.grid)
    codec = codec_(rule="variance", m=0, steps=2, k=2)
    assert codec.step_choice(3.0, red) == select_steps(3.0, k=3, m=0, T=40, rule="variance", power=4.0,
                                                       grid=codec.grid)
    assert codec.step_choice(3.0, red).rule == "variance"


def test_step_choice_with_a_calibration(comp, sent, tmp_path):
    other = _other_grid(comp)
    cal = Calibration(model="analytic", k=3, m=2, T=40, guidance=6.0, prompt=CodecConfig().prompt, clean_end="model",
                      inversion="ddim", inversion_iters=3, metric="mse", images=["x"], rescale=True,
                      fit_x=[0.0, 30.0], fit_n=[30.0, 6.0])
    path = cal.save(tmp_path / "cal.json")

    def codec_(**kw):
        return GenerativeCodec(CodecConfig(model="analytic", T=40, m=2, rule=f"calibrated:{path}", **kw),
                               components=other)

    codec = codec_()
    meta = dataclasses.replace(sent.meta, alpha=0.5, k=3, T=40)
    for snr in (0.0, 12.0):
        n = cal.n_steps(snr, 4.0, k=3)
        want = dataclasses.replace(select_steps(snr, k=3, m=2, T=40, power=4.0, rescale=True, steps=n,
                                                grid=codec.grid), rule="calibrated")
        assert codec.step_choice(snr, meta) == want
    # reduced: Proposition 1's snr rule with the calibration's rescale setting
    red = dataclasses.replace(meta, reduce=2)
    assert codec.step_choice(12.0, red) == select_steps(12.0, k=3, m=0, T=40, rule="snr", power=4.0, rescale=True,
                                                        grid=codec.grid)
    codec = codec_(rescale=False)  # the calibration's rescale wins over the receiver's
    assert codec.step_choice(12.0, red).scale == select_steps(12.0, k=3, m=0, T=40, rule="snr", power=4.0,
                                                              grid=codec.grid).scale != 1.0
    with pytest.raises(CodecError) as e:
        codec.step_choice(12.0, dataclasses.replace(meta, k=4, name="q"))
    assert str(e.value) == f"q: the transmitter used k=4 but calibration {path} was measured for k=3"
    off = dataclasses.replace(cal, rescale=False).save(tmp_path / "off.json")  # measured without rescaling
    codec = GenerativeCodec(CodecConfig(model="analytic", T=40, m=2, rule=f"calibrated:{off}"), components=other)
    n = cal.n_steps(12.0, 4.0, k=3)
    assert codec.step_choice(12.0, meta) == dataclasses.replace(
        select_steps(12.0, k=3, m=2, T=40, power=4.0, rescale=False, steps=n, grid=codec.grid), rule="calibrated")
    assert codec.step_choice(12.0, meta).scale == 1.0
    codec = codec_(steps=20)  # a fixed N wins over the calibration
    assert codec.step_choice(12.0, meta) == select_steps(12.0, k=3, m=2, T=40, power=4.0, steps=20, grid=codec.grid)


def test_decode_errors_are_exact_and_counted(comp, sent, caplog):
    caplog.set_level(logging.DEBUG, logger="gr_gdmcom.codec.core")
    codec = _codec(comp)
    s, m = sent.symbols, sent.meta
    items = [(s, dict(name="d"), 10.0), (s, dataclasses.replace(m, T=40), 10.0),
             (s, dataclasses.replace(m, k=48), 10.0), (s, m, float("nan")), (s, m, 10.0, np.ones(3, bool)),
             (s, m, 10.0, None, -np.ones(s.size)), (s, m, 10.0, np.zeros(s.size, bool), np.ones(s.size)),
             (s[:-1], m, 10.0)]
    out = codec.decode_many(items)
    assert [o.error for o in out] == [
        "image: decode needs LatentMeta metadata, got dict",
        "sent: transmitter used T=40 but this receiver is set to T=50",
        "sent: k + m must not exceed T: k=48, m=5, T=50",
        "sent: SNR estimate must be finite, got nan",
        f"sent: mask shape (3,) does not match symbols ({s.size},)",
        "sent: noise_var must be finite and >= 0 for every received symbol",
        "sent: nothing to decode: the mask erases every symbol",
        f"sent: metadata says latent shape (4, 8, 8) = 128 symbols but {s.size - 1} symbols were received"]
    assert [o.name for o in out] == ["image"] + ["sent"] * 7
    assert [r.getMessage() for r in caplog.records] == [o.error for o in out]  # reported once, by the caller
    assert codec.stats == dict(unet_calls=0, images_encoded=0, images_decoded=0, failures=8)
    with pytest.raises(CodecError, match="^sent: SNR estimate must be finite, got inf$"):
        codec.decode(s, m, math.inf)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.codec.core"):
        dec = codec.decode(s, dataclasses.replace(m, prompt="other"), 20.0)
    assert [r.getMessage() for r in caplog.records] == [
        f"sent: transmitter prompt 'other' differs from receiver prompt {codec.config.prompt!r}; "
        "using the transmitter's"]
    assert isinstance(dec, Decoded) and codec.stats["images_decoded"] == 1
    mask = np.arange(s.size) % 4 != 0  # an erased symbol's noise variance may be infinite (no information)
    nv = np.where(mask, 0.1, np.inf)
    np.testing.assert_array_equal(codec.decode(s, m, 10.0, mask, nv).image,
                                  codec.decode(s, m, 10.0, mask, np.where(mask, 0.1, 7.0)).image)


def test_a_bad_item_fails_alone_and_its_batch_decodes_as_without_it(comp, sent):
    """Found by fuzzing the server: alpha 1e-300 (then schema-valid) raised ZeroDivisionError in
    the batch's preparation and every request batched with it was answered `internal`; SNR
    -1e308 raised OverflowError, a string SNR a bare ValueError, noise variances of 1e17 a
    ZeroDivisionError.  Each is now its own item's error, and the others decode as alone."""
    codec = _codec(comp)
    s, m = sent.symbols, sent.meta

    class Broken(LatentMeta):  # an arithmetic error no check foresaw: the per-item guard
        @property
        def power(self):
            return 1.0 / 0.0

    broken = Broken(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m)})
    # a latent of 5 channels for this 4-channel model (found by a library walkthrough): the UNet's
    # RuntimeError failed the whole call, the good items with it
    c, h, w = m.latent_shape
    five = dataclasses.replace(m, latent_shape=(5, h, w), means=())
    items = [(s, m, 10.0), (s, dataclasses.replace(m, alpha=1e-300), 10.0), (s, m, -1e308), (s, m, "x"),
             (s, m, None), (s, broken, 10.0), (np.concatenate([s, s[:h * w // 2]]), five, 10.0), (s, m, 12.0)]
    out = codec.decode_many(items)
    assert [getattr(o, "error", None) for o in out] == [
        None,
        "sent: alpha must be a number in 0.001..1e+06 (1/sqrt of the latent's power), got 1e-300",
        "sent: SNR estimate -1e+308 dB is outside -100..100 dB",
        "sent: SNR estimate must be a number (dB), got 'x'",
        "sent: SNR estimate must be a number (dB), got None",
        "sent: unusable decode input (ZeroDivisionError: float division by zero)",
        "sent: latent has 5 channels but this model's latent has 4",
        None]
    with pytest.raises(CodecError, match="^sent: latent has 5 channels but this model's latent has 4$"):
        codec.decode_as_is(np.concatenate([s, s[:h * w // 2]]), five)
    alone = [codec.decode(s, m, 10.0), codec.decode(s, m, 12.0)]
    for got, ref in zip((out[0], out[7]), alone):
        assert got.record["n_steps"] == ref.record["n_steps"]
        np.testing.assert_array_equal(got.image, ref.image)
    # noise variances far beyond any SNR: the effective SNR is the range's end, not a division by zero
    huge = codec.decode(s, m, 10.0, None, np.full(s.size, 1e17))
    assert huge.record["snr_db"] == -100.0 and huge.record["n_steps"] == codec.decode(s, m, -100.0).record["n_steps"]


def test_the_model_fingerprint_travels_in_the_metadata_and_a_foreign_one_is_flagged(comp, sent, caplog):
    """A latent encoded by another model means something else to this one: the metadata carries
    the encoder's fingerprint and the decode record says when it is not this model's (0: not
    given, as from a version-4 frame header: no check)."""
    codec = _codec(comp)
    assert sent.meta.model_hash == codec.model_hash == model_fingerprint(comp) and 0 < codec.model_hash < 65536
    assert model_fingerprint(_other_grid(comp)) != codec.model_hash  # another noise schedule
    foreign = codec.model_hash % 65535 + 1
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.codec.core"):
        flags = [codec.decode(sent.symbols, dataclasses.replace(sent.meta, model_hash=h), 20.0).record["model_mismatch"]
                 for h in (codec.model_hash, foreign, 0, foreign)]
    assert flags == [False, True, False, True]
    assert [r.getMessage() for r in caplog.records] == [  # once per foreign model
        f"sent: encoded by another model (fingerprint {foreign:04x}; this model 'analytic' is {codec.model_hash:04x}): "
        f"the decoded image will not be the transmitted one"]


def test_the_fingerprint_is_the_models_not_its_path_dtype_or_device():
    from gr_gdmcom.codec.models import tiny_path

    tiny = model_fingerprint(load_components("tiny", "cpu", "fp32"))
    assert model_fingerprint(load_components(str(tiny_path()), "cpu", "bf16")) == tiny  # its folder, another dtype
    others = {model_fingerprint(load_components(m, "cpu", "fp32")) for m in ("analytic", "analytic:K=4", "patch-gmm")}
    assert len(others) == 3 and tiny not in others


def test_decode_record_and_image(comp, sent):
    codec = _codec(comp, m=3)
    s, m = sent.symbols, sent.meta
    mask = np.ones(s.size, bool)
    mask[:10] = False
    nv = np.full(s.size, 0.1)
    nv[10:20] = 0.5
    dec = codec.decode(s, m, 10.0, mask, nv)
    _, snr = weight_by_reliability(np.where(mask, s, 0), nv, mask)
    ch = select_steps(snr, k=5, m=3, T=50, power=m.power, grid=codec.grid)
    r = dec.record
    assert r.pop("seconds").keys() == {"inversion", "sampling", "vae_decode", "other"}
    assert r == dict(name="sent", snr_db=snr, snr_in_db=10.0, n_steps=ch.n_steps, rule="snr", k=5, m=3, T=50,
                     start_t=ch.start_t, scale=ch.scale, s_tot2=ch.s_tot2, inversion="ddim",
                     unet_calls=3 + ch.n_steps, batch=1, batch_unet_calls=3 + ch.n_steps, erased=10, reduce=1,
                     reduce_method="full", mean_removed=False, model_mismatch=False)
    assert dec.image.shape == (64, 64, 3) and dec.image.dtype == np.uint8
    # the image is the VAE decoding of the sampled latent decode_latents returns
    z0 = codec.decode_latents([(s, m, 10.0, mask, nv)])[0]
    with torch.no_grad():
        x = comp.vae.decode(torch.from_numpy(z0)[None] / comp.vae_scale).sample.float()[0]
    expect = ((x[:, :64, :64].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(dec.image, expect)
    assert codec._latents_only is False and isinstance(codec.decode(s, m, 10.0).image, np.ndarray)
    assert codec.decode(s, m, 10.0).image.shape == (64, 64, 3)
    assert codec.decode(s, m, 10.0).record["erased"] == 0


def test_decoded_latent_is_the_paper_receiver(comp, sent):
    """z~_k -> m inversion steps -> scale -> N sampling steps (eq. 9), each step checked above."""
    codec = _codec(comp, m=2, guidance=3.0)
    meta = dataclasses.replace(sent.meta, guidance=3.0)
    z = torch.from_numpy(latent_from_symbols(sent.symbols, meta))[None]
    ch = select_steps(8.0, k=5, m=2, T=50, power=meta.power, grid=codec.grid)
    zkm, _ = codec.invert(z, 5, 7, meta.prompt, 3.0)
    ref = codec._ddim(zkm * ch.scale, [sampling_path(ch, codec.grid)], meta.prompt, 3.0)
    got = codec.decode_latents([(sent.symbols, meta, 8.0)])[0]
    np.testing.assert_allclose(got, ref[0].numpy(), rtol=1e-5, atol=1e-5)


def test_decode_groups_items_that_can_share_model_calls(comp, sent):
    codec = _codec(comp, batch_size=2)
    s, m = sent.symbols, sent.meta
    other = [dataclasses.replace(m, guidance=2.0), dataclasses.replace(m, prompt="x"), dataclasses.replace(m, k=3),
             dataclasses.replace(m, reduce=1)]
    items = [(s, m, 5.0), (s, other[0], 5.0), (s, m, 15.0), (s, other[1], 5.0), (s, m, 25.0), (s, other[2], 5.0)]
    out = codec.decode_many(items)
    assert [o.record["batch"] for o in out] == [2, 1, 2, 1, 1, 1]
    for item, o in zip(items, out):
        np.testing.assert_array_equal(o.image, codec.decode(*item).image)
    assert codec.stats["images_decoded"] == 12
    # a reduced latent of the same shape is sampled apart from a full one
    red = _codec(comp, reduce=2, reduce_method="pool").encode(_img(seed=9), "red")
    items = [(s, m, 10.0), (red.symbols, red.meta, 10.0)]
    out = codec.decode_many(items)
    assert [o.record["batch"] for o in out] == [1, 1] and [o.record["reduce"] for o in out] == [1, 2]
    for item, o in zip(items, out):
        np.testing.assert_array_equal(o.image, codec.decode(*item).image)


def test_erased_symbols_are_decoded_as_zeros(comp, sent):
    codec = _codec(comp)
    mask = np.arange(sent.symbols.size) % 3 != 0
    zeroed = np.where(mask, sent.symbols, 0).astype(np.complex64)
    a = codec.decode_latents([(sent.symbols, sent.meta, 12.0, mask)])[0]
    b = codec.decode_latents([(zeroed, sent.meta, 12.0)])[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, codec.decode_latents([(sent.symbols, sent.meta, 12.0)])[0])
    dec = codec.decode(sent.symbols, sent.meta, 12.0, mask.astype(np.int64))  # 0/1 marks as bool
    assert dec.record["erased"] == int(np.sum(~mask)) == 43
    np.testing.assert_array_equal(dec.image, codec.decode(zeroed, sent.meta, 12.0).image)


def test_free_path_of_a_reduced_latent(comp):
    codec = _codec(comp)
    taus, a, _ = _diffusers_grid()
    ch = select_steps(10.0, k=5, m=0, T=50, grid=codec.grid)
    path = codec._free_path(ch)
    j = ch.n_steps
    # from the top of the grid down; the last step lands on the start level
    assert path == [(float(taus[i]), a[i], a[i - 1]) for i in range(50, j + 1, -1)] + \
        [(float(taus[j + 1]), a[j + 1], ch.start_abar)]
    ex = select_steps(10.0, k=5, m=0, T=50, rule="exact", grid=codec.grid)
    path = codec._free_path(ex)
    assert path[-1][2] == ex.start_abar and all(p[0] > ex.start_t for p in path)
    below = sum(t > ex.start_t for t in taus[1:])
    assert len(path) == below and path[0] == (float(taus[50]), a[50], a[49])
    assert codec._free_path(dataclasses.replace(ch, start_t=float(taus[50]))) == []
    # a start below tau_1 (k = 0, exact rule, high SNR): every grid step, the last from tau_1
    low = dataclasses.replace(ex, start_t=0.5, start_abar=0.999)
    assert codec._free_path(low) == [(float(taus[i]), a[i], a[i - 1]) for i in range(50, 1, -1)] + \
        [(float(taus[1]), a[1], 0.999)]


def test_reduced_latent_receiver(comp):
    codec = _codec(comp, reduce=2, reduce_method="pool")
    enc = codec.encode(_img(seed=10), "r")
    meta = enc.meta
    z = torch.from_numpy(latent_from_symbols(enc.symbols, meta))[None]
    ch = codec.step_choice(12.0, meta)
    red = meta.reduction
    from gr_gdmcom.codec.rate import impose

    y = red.apply(z) * ch.scale
    x = torch.zeros_like(z)
    for step in codec._free_path(ch):
        x = codec._ddim(impose(x, red, y, step[1], ch.start_abar), [[step]], meta.prompt, meta.guidance)
    x = impose(x, red, y, ch.start_abar, ch.start_abar)
    ref = codec._ddim(x, [sampling_path(ch, codec.grid)], meta.prompt, meta.guidance)
    got = codec.decode_latents([(enc.symbols, meta, 12.0), (enc.symbols, meta, 12.0)])
    np.testing.assert_allclose(got[0], ref[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], got[1])
    dec = codec.decode(enc.symbols, meta, 12.0)
    assert dec.record["unet_calls"] == len(codec._free_path(ch)) + ch.n_steps
    assert (dec.record["reduce"], dec.record["reduce_method"], dec.record["m"]) == (2, "pool", 5)
    full = _codec(comp).encode(_img(seed=10), "r")
    with pytest.raises(CodecError):  # the same symbols read as a full latent: too few
        codec.decode(enc.symbols, full.meta, 12.0)


def test_decode_latents_resets_on_error(comp, sent, monkeypatch):
    codec = _codec(comp)

    def boom(batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(codec, "_decode_batch", boom)
    with pytest.raises(RuntimeError):
        codec.decode_latents([(sent.symbols, sent.meta, 5.0)])
    assert codec._latents_only is False
    out = codec.decode_latents([(sent.symbols[:3], sent.meta, 5.0)])
    assert isinstance(out[0], Failed)


def test_mean_removed_record(comp):
    codec = _codec(comp, remove_mean=True)
    enc = codec.encode(_img(seed=11), "mr")
    assert len(enc.meta.means) == 4
    assert codec.decode(enc.symbols, enc.meta, 20.0).record["mean_removed"] is True


def test_default_names():
    from gr_gdmcom.codec.core import _default_name

    assert _default_name("/a/b/cat.png", 3) == "cat" and _default_name(Path("x/dog.jpeg"), 0) == "dog"
    assert _default_name(np.zeros((2, 2, 3)), 7) == "image7"


def test_a_latent_without_power_is_refused_not_divided_by_zero():
    """alpha = 1/sqrt(P): a latent of zeros was a ZeroDivisionError, one of tiny power an alpha no
    receiver takes (config.ALPHA_RANGE)."""
    with pytest.raises(CodecError, match=r"^the latent's power P = 0 gives alpha = 1/sqrt\(P\) outside 0.001..1e\+06: "
                                         r"nothing a receiver could scale back$"):
        symbols_from_latent(np.zeros((2, 1, 2)))
    with pytest.raises(CodecError, match=r"^the latent's power P = 1e-14 gives alpha"):
        symbols_from_latent(np.full((2, 1, 2), 1e-7))
    sym, alpha = symbols_from_latent(np.full((2, 1, 2), 1e-5))  # alpha 1e5: in range, sent
    assert alpha == pytest.approx(1e5) and np.allclose(np.abs(sym), 1.0)


def test_decode_many_a_latent_the_model_refuses_fails_its_items_only(comp):
    """The random-forward encoder runs no UNet, so it sends an 8 x 8 image the analytic UNet refuses
    (sides of 64 px); decoding it raised the model's ValueError out of decode_many, losing every other
    item of the call (soak_codec.py, run seed 30).  It is now that item's Failed, naming it."""
    codec = _codec(comp, forward="random", k=2, m=0, T=20)
    small = codec.encode(_img(8, 8), name="small")
    good = codec.encode(_img(64, 64), name="good")
    out = codec.decode_many([(small.symbols, small.meta, 10.0), (good.symbols, good.meta, 10.0)])
    assert isinstance(out[0], Failed) and out[0].error.startswith("small: analytic model: latent 4x1x1")
    assert "\n" not in out[0].error
    assert isinstance(out[1], Decoded) and out[1].image.shape == (64, 64, 3)
    with pytest.raises(CodecError, match="small: analytic model"):
        codec.decode(small.symbols, small.meta, 10.0)


def test_an_snr_just_outside_the_range_is_named_with_its_digits(comp):
    """soak_codec: 100.0001 dB was refused as 'SNR estimate 100 dB is outside -100..100 dB' (':g' keeps 6
    digits), a refusal of a value it names as inside the range."""
    codec = _codec(comp)
    e = codec.encode(_img(), name="x")
    with pytest.raises(CodecError, match=r"^x: SNR estimate 100\.0001 dB is outside -100\.\.100 dB$"):
        codec.decode(e.symbols, e.meta, 100.0001)
    with pytest.raises(CodecError, match=r"^x: SNR estimate -100\.00000000001 dB is outside"):
        codec.decode(e.symbols, e.meta, -100.00000000001)
    with pytest.raises(CodecError, match=r"^x: SNR estimate 400 dB is outside"):  # round values as before
        codec.decode(e.symbols, e.meta, 400.0)
