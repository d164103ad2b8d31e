"""The codec against diffusers' own schedulers (issue 16): the clean-end convention,
v-prediction models, and the fixed-point (exact) inversion.

The references step diffusers' ``DDIMInverseScheduler`` / ``DDIMScheduler`` with
the same UNet outputs (the CFG combination written out here), as a
diffusers-based implementation of the paper would.
"""

import json
import logging
import shutil

import pytest
import torch

from gr_gdmcom.codec import GenerativeCodec, ModelLoadError, load_components
from gr_gdmcom.codec.images import load_rgb, to_tensor
from gr_gdmcom.codec.models import tiny_path
from gr_gdmcom.codec.schedule import sampling_path, scheduler_settings, select_steps
from gr_gdmcom.config import CodecConfig

K = 5


def _z0(codec, small):
    with torch.no_grad():
        return codec.c.vae.encode(to_tensor(load_rgb(small))).latent_dist.mode().float() * codec.c.vae_scale


def _guided(codec, x, t, w):
    """e_u + w (e_c - e_u) from one batched UNet call (the pipeline's CFG)."""
    emb = codec._text_embedding(codec.config.prompt)
    out = codec.c.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=emb).sample.float()
    e_u, e_c = out.chunk(2)
    return e_u + w * (e_c - e_u)


@torch.no_grad()
def _diffusers_round(codec, z0, k, w, settings):
    """k steps of DDIMInverseScheduler, then k steps of DDIMScheduler, with the codec's settings."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    inv, smp = DDIMInverseScheduler(**settings), DDIMScheduler(**settings)
    inv.set_timesteps(codec.config.T)
    smp.set_timesteps(codec.config.T)
    x = z0.clone()
    for t in inv.timesteps[:k]:
        x = inv.step(_guided(codec, x, t.view(1), w), t, x).prev_sample
    zk = x.clone()
    for t in smp.timesteps[-k:]:
        x = smp.step(_guided(codec, x, t.view(1), w), t, x).prev_sample
    return zk, x


@torch.no_grad()
def _codec_round(codec, z0, k):
    zk, calls = codec.invert(z0, 0, k, codec.config.prompt, codec.config.guidance)
    ch = select_steps(20.0, k=k, m=0, T=codec.config.T, steps=k, rescale=False, grid=codec.grid)
    return zk, codec._ddim(zk, [sampling_path(ch, codec.grid)], codec.config.prompt, codec.config.guidance), calls


@pytest.mark.parametrize("clean_end,alpha_to_one", [("model", False), ("step0", False), ("one", True)])
def test_codec_matches_diffusers_schedulers_bit_for_bit(components, small, clean_end, alpha_to_one):
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu", clean_end=clean_end), components=components)
    # the tiny model's scheduler config is SD 1.5's: set_alpha_to_one False, a_0 = abar_0 = 1 - beta_0
    assert components.scheduler_config["set_alpha_to_one"] is False
    assert codec.grid.alphas[0] == (1.0 if alpha_to_one else pytest.approx(1 - 0.00085, rel=1e-7))
    settings = dict(scheduler_settings(components.scheduler_config), set_alpha_to_one=alpha_to_one)
    z0 = _z0(codec, small)
    zk_ref, back_ref = _diffusers_round(codec, z0, K, codec.config.guidance, settings)
    zk, back, _ = _codec_round(codec, z0, K)
    assert torch.equal(zk, zk_ref) and torch.equal(back, back_ref)
    # the other convention really is different (~2 % on z_k): the test can tell them apart
    other = dict(settings, set_alpha_to_one=not alpha_to_one)
    zk_other, _ = _diffusers_round(codec, z0, K, codec.config.guidance, other)
    assert float((zk_other - zk).norm() / zk.norm()) > 1e-3


def _tiny_variant(tmp_path, **scheduler_changes):
    """A copy of the tiny model whose scheduler config is changed."""
    dst = tmp_path / "tiny-variant"
    shutil.copytree(tiny_path(), dst)
    f = dst / "scheduler" / "scheduler_config.json"
    cfg = json.loads(f.read_text())
    cfg.update(scheduler_changes)
    f.write_text(json.dumps(cfg))
    return str(dst)


def test_v_prediction_model_matches_ddim_scheduler(tmp_path, small):
    comp = load_components(_tiny_variant(tmp_path, prediction_type="v_prediction"), device="cpu")
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu"), components=comp)
    assert codec.prediction_type == "v_prediction"
    z0 = _z0(codec, small)
    zk, back, _ = _codec_round(codec, z0, K)
    # DDIMScheduler converts v at the sample's own level: x0 = sqrt(a) x - sqrt(1-a) v, eps = sqrt(a) v + sqrt(1-a) x
    settings = dict(scheduler_settings(comp.scheduler_config))
    assert settings["prediction_type"] == "v_prediction"
    from diffusers import DDIMScheduler
    smp = DDIMScheduler(**settings)
    smp.set_timesteps(50)
    x = zk.clone()
    with torch.no_grad():
        for t in smp.timesteps[-K:]:
            x = smp.step(_guided(codec, x, t.view(1), codec.config.guidance), t, x).prev_sample
    assert torch.allclose(back, x, rtol=1e-5, atol=1e-5)
    # read as noise, the same UNet outputs decode elsewhere: the conversion matters
    codec.prediction_type = "epsilon"
    with torch.no_grad():
        as_eps = codec._ddim(zk, [sampling_path(select_steps(20.0, k=K, m=0, steps=K, rescale=False), codec.grid)],
                             codec.config.prompt, codec.config.guidance)
    assert float((as_eps - x).norm() / x.norm()) > 0.05
    # inversion converts v at the timestep the UNet saw, so v-model round trips close like noise-model ones
    assert float((back - z0).norm() / z0.norm()) < 0.02 < float((zk - z0).norm() / z0.norm())


def test_unsupported_prediction_type_is_refused(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_components(_tiny_variant(tmp_path, prediction_type="sample"), device="cpu")
    assert str(e.value).endswith("its scheduler config says prediction_type='sample'; the codec supports "
                                 "epsilon and v_prediction (a UNet predicting noise or v)")


def test_overridden_scheduler_settings_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="gr_gdmcom.codec.schedule"):
        cfg = scheduler_settings(dict(timestep_spacing="trailing", set_alpha_to_one=True), clean_end="step0")
    assert cfg["timestep_spacing"] == "leading" and cfg["set_alpha_to_one"] is False
    msgs = {r.getMessage(): r.levelname for r in caplog.records}
    # a setting the codec overrides on its own is a warning; the clean end the user named, information
    assert msgs["scheduler config says timestep_spacing='trailing'; using timestep_spacing='leading' "
                "(the method's grid uses leading spacing)"] == "WARNING"
    assert msgs["scheduler config says set_alpha_to_one=True; clean_end=step0 uses set_alpha_to_one=False"] == "INFO"
    with pytest.raises(ValueError, match="unknown clean_end 'zero'; choose one of model, one, step0"):
        CodecConfig(clean_end="zero").validate()


def test_fixed_point_inversion_is_exact_under_guidance(components, small):
    """At k = 5, w = 6 the implicit inversion (2 extra UNet calls per step) round-trips
    >= 10x closer than eq. 10, and every UNet call is counted per item."""
    plain = GenerativeCodec(CodecConfig(model="tiny", device="cpu"), components=components)
    fp = GenerativeCodec(CodecConfig(model="tiny", device="cpu", inversion="fixed-point", inversion_iters=2,
                                     inversion_tol=0.0), components=components)
    z0 = _z0(plain, small)
    _, back_plain, calls_plain = _codec_round(plain, z0, K)
    n0 = fp.stats["unet_calls"]
    zk, back_fp, calls_fp = _codec_round(fp, z0, K)
    err_plain = float((back_plain - z0).norm() / z0.norm())
    err_fp = float((back_fp - z0).norm() / z0.norm())
    assert err_plain > 5e-3 and err_fp < err_plain / 10
    assert calls_plain == [K] and calls_fp == [3 * K]
    assert fp.stats["unet_calls"] - n0 == 3 * K + K  # inversion + K sampling steps
    # the end point is the implicit step's fixed point: a sampling step from it returns to z_{k-1}
    z_prev, _ = fp.invert(z0, 0, K - 1, fp.config.prompt, fp.config.guidance)
    with torch.no_grad():
        step_back = fp._ddim(zk, [sampling_path(select_steps(20.0, k=K, m=0, steps=K, rescale=False), fp.grid)[:1]],
                             fp.config.prompt, fp.config.guidance)
    assert float((step_back - z_prev).norm() / z_prev.norm()) < err_fp


def test_fixed_point_stops_on_tolerance_and_records_calls(components, small):
    """A loose tolerance stops early; a batch gives each item its own result and call count;
    encode/decode records carry the calls actually spent."""
    cfg = CodecConfig(model="tiny", device="cpu", inversion="fixed-point", inversion_iters=3, inversion_tol=0.05)
    codec = GenerativeCodec(cfg, components=components)
    z0 = _z0(codec, small)
    pair = torch.cat([z0, 3 * z0])
    zk2, calls2 = codec.invert(pair, 0, K, cfg.prompt, cfg.guidance)
    zk1, calls1 = codec.invert(z0, 0, K, cfg.prompt, cfg.guidance)
    assert K * 2 <= calls1[0] < K * 4  # at least one iteration per step, stopped before the cap
    assert calls2[0] == calls1[0] and torch.allclose(zk2[:1], zk1, atol=1e-5)
    enc = codec.encode(small)
    assert enc.record["unet_calls"] == calls1[0] == enc.record["batch_unet_calls"]
    dec = codec.decode(enc.symbols, enc.meta, 100.0)
    assert dec.record["inversion"] == "fixed-point"
    assert dec.record["unet_calls"] == dec.record["batch_unet_calls"] >= cfg.m * 2 + dec.record["n_steps"]
