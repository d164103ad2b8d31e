"""GPU-path options checked on CPU against the default model: the same outputs
(within float rounding; bf16 within its 8-bit mantissa)."""

import numpy as np
import pytest

from gr_gdmcom.codec import GenerativeCodec, load_components
from gr_gdmcom.codec.accel import apply_speed_options, warm_up
from gr_gdmcom.config import CodecConfig


def _roundtrip(small, dtype="fp32", **opts):
    comp = apply_speed_options(load_components("tiny", device="cpu", dtype=dtype), **opts)
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu", dtype=dtype, k=2, m=2, steps=4),
                            components=comp)
    enc = codec.encode(small, name="x")
    return enc.symbols, codec.decode(enc.symbols, enc.meta, 10.0).image, comp


@pytest.fixture(scope="module")
def reference(small):
    return _roundtrip(small)


@pytest.mark.parametrize("opts", [dict(attention="classic"), dict(channels_last=True),
                                  dict(compile=True, compile_backend="eager"), dict(fuse_qkv=True),
                                  dict(compile_vae=True, compile_backend="eager", compile_dynamic=False)],
                         ids=["classic-attention", "channels-last", "compile", "fused-qkv", "compile-vae"])
def test_options_give_the_same_outputs(small, reference, opts):
    sym, img, comp = _roundtrip(small, **opts)
    np.testing.assert_allclose(sym, reference[0], atol=1e-4)
    assert np.abs(img.astype(int) - reference[1].astype(int)).max() <= 1
    proc = type(next(iter(comp.unet.attn_processors.values()))).__name__
    assert proc == ("AttnProcessor" if opts.get("attention") == "classic" else
                    "FusedAttnProcessor2_0" if opts.get("fuse_qkv") else "AttnProcessor2_0")
    if opts.get("fuse_qkv"):  # one matrix product for q, k and v of a self-attention
        attn = next(m for m in comp.unet.modules() if type(m).__name__ == "Attention" and not m.is_cross_attention)
        assert attn.to_qkv.weight.shape[0] == 3 * attn.to_q.weight.shape[0]
    if opts.get("compile_vae"):  # the UNet and both VAE halves are compiled modules
        assert all(m._compiled_call_impl is not None for m in (comp.unet, comp.vae.encoder, comp.vae.decoder))
    assert comp.speed["channels_last"] == bool(opts.get("channels_last"))  # what status reports
    assert comp.speed["compile"] == ("default" if opts.get("compile") or opts.get("compile_vae") else None)
    if opts.get("channels_last"):
        assert comp.unet.conv_in.weight.is_contiguous(memory_format=__import__("torch").channels_last)


def test_bfloat16_end_to_end_stays_close(small, reference):
    sym, img, comp = _roundtrip(small, dtype="bf16")
    assert str(comp.unet.dtype) == "torch.bfloat16" and sym.dtype == np.complex64
    assert np.abs(sym - reference[0]).max() < 0.1  # unit-energy symbols; bf16 keeps ~3 digits
    assert np.abs(img.astype(float) - reference[1]).mean() < 4.0


def test_unknown_attention_and_warm_up_leaves_counters(components, codec):
    with pytest.raises(ValueError, match=r"^attention must be one of sdpa, classic, got 'flash'$"):
        apply_speed_options(components, attention="flash")
    with pytest.raises(ValueError, match=r"^fuse_qkv needs attention 'sdpa' \(diffusers' fused processor is an "
                                         r"SDPA one\)$"):
        apply_speed_options(components, attention="classic", fuse_qkv=True)
    before = dict(codec.stats)
    warm_up(codec)
    assert codec.stats == before
