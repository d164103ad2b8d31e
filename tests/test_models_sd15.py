"""--model sd15-random: SD-1.5's architecture from the configs shipped in the package.

The full-size model is never run here (a UNet call on CPU is ~10 s and 4 GB):
its parameter counts are checked on the meta device against the published
checkpoint's, and a width-reduced build with the same depth goes through the
real load path and the codec."""

import numpy as np
import pytest
import torch

from gr_gdmcom.codec import GenerativeCodec, load_components
from gr_gdmcom.codec.models import build_random, sd15_configs
from gr_gdmcom.config import CodecConfig


def test_full_size_configs_have_the_released_checkpoints_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15_configs()
    with torch.device("meta"):  # shapes only: no memory, no init time
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # SD-1.5 (stable-diffusion-v1-5): unet 859.52 M, vae 83.65 M, CLIP ViT-L/14 text 123.06 M
    assert (count(unet), count(vae), count(text)) == (859_520_964, 83_653_863, 123_060_480)
    assert cfg["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["unet"]["cross_attention_dim"] == cfg["text"]["hidden_size"] == 768
    assert cfg["vae"]["scaling_factor"] == 0.18215


def test_shrunk_keeps_the_depth_and_divides_the_widths():
    full, small = sd15_configs(), sd15_configs(shrink=8)
    assert small["unet"]["block_out_channels"] == [40, 80, 160, 160]
    assert small["unet"]["cross_attention_dim"] == small["text"]["hidden_size"] == 96
    for part in ("unet", "vae", "text"):
        same = {k for k in full[part] if k not in ("block_out_channels", "norm_num_groups", "cross_attention_dim",
                                                  "hidden_size", "intermediate_size", "projection_dim")}
        assert {k: small[part][k] for k in same} == {k: full[part][k] for k in same}


@pytest.fixture(scope="module")
def shrunk_codec(tmp_path_factory):
    path = build_random(tmp_path_factory.mktemp("sd15") / "sd15-shrunk", sd15_configs(shrink=8))
    comp = load_components(str(path), device="cpu")  # the from_pretrained path of --model sd15-random
    return GenerativeCodec(CodecConfig(model=str(path), device="cpu", k=1, m=1, T=50), components=comp)


def test_shrunk_model_loads_and_runs_the_codec(shrunk_codec, small):
    c = shrunk_codec.c
    assert len(c.unet.down_blocks) == 4 and len(c.unet.down_blocks[0].resnets) == 2
    assert c.text_encoder.config.num_hidden_layers == 12
    enc = shrunk_codec.encode(small, name="x")
    assert enc.meta.latent_shape == (4, 8, 8)  # 8x downsampling, 4 latent channels
    assert abs(float(np.mean(np.abs(enc.symbols) ** 2)) - 1.0) < 1e-4
    dec = shrunk_codec.decode(enc.symbols, enc.meta, snr_db=20.0)
    assert dec.image.shape == small.shape and dec.image.dtype == np.uint8
    assert dec.record["unet_calls"] == 1 + dec.record["n_steps"]
