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


# --------------------------------------------------------------------------- a downloaded folder, as users have it
# (the tiny model's folder stands in for a real SD-1.5 download: same layout, same loaders)
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from gr_gdmcom.codec import ModelLoadError  # noqa: E402
from gr_gdmcom.codec.models import tiny_path  # noqa: E402


def _copy(tmp_path, name="m"):
    dst = tmp_path / name
    shutil.copytree(tiny_path(), dst)
    return dst


def _resave(folder, part, **save_kw):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[part]
    m = cls.from_pretrained(folder / part)
    if save_kw.pop("half", False):
        m = m.half()
    shutil.rmtree(folder / part)
    m.save_pretrained(folder / part, **save_kw)


def _unet_out(comp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    e = torch.randn(1, 77, comp.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return comp.unet(x, torch.tensor([501]), encoder_hidden_states=e).sample


def test_fp16_variant_only_folder_loads_as_the_dtype_asked(tmp_path):
    """A folder downloaded with variant="fp16" has only *.fp16.safetensors: it loads (was refused,
    "no file named diffusion_pytorch_model.bin"), its weights within fp16 rounding of the fp32 ones."""
    ref = load_components(str(tiny_path()), device="cpu")
    folder = _copy(tmp_path)
    for part in ("unet", "vae", "text_encoder"):
        _resave(folder, part, half=True, variant="fp16")
    comp = load_components(str(folder), device="cpu", dtype="fp32")
    from gr_gdmcom.codec.models import weight_files

    assert weight_files(folder / "unet") == dict(use_safetensors=True, variant="fp16")
    assert comp.unet.dtype == torch.float32
    a, b = _unet_out(ref), _unet_out(comp)
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())


def test_bin_weights_load_without_an_error_line(tmp_path):
    """.bin weights (older downloads) load, and diffusers' 'An error occurred while trying to fetch
    ... no file named diffusion_pytorch_model.safetensors' (logged at error level) is not printed."""
    folder = _copy(tmp_path)
    for part in ("unet", "vae"):
        _resave(folder, part, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    comp = load_components(str(folder), device="cpu")
    assert torch.equal(_unet_out(comp), _unet_out(load_components(str(tiny_path()), device="cpu")))
    r = subprocess.run([sys.executable, "-c", "import sys; from gr_gdmcom.codec import load_components; "
                        "load_components(sys.argv[1], device='cpu')", str(folder)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "An error occurred" not in r.stderr, r.stderr[-1000:]


@pytest.mark.parametrize("part", ["tokenizer", "text_encoder", "scheduler", "vae"])
def test_a_folder_missing_a_part_is_refused_naming_it(tmp_path, part):
    """A missing tokenizer/ used to load as an empty tokenizer (transformers 5) and crash at the
    first prompt with a 40-line OverflowError; every missing part is now named before loading."""
    folder = _copy(tmp_path)
    shutil.rmtree(folder / part)
    with pytest.raises(ModelLoadError, match=rf"has no {part}/"):
        load_components(str(folder), device="cpu")


@pytest.mark.parametrize("part", ["unet", "text_encoder"])
def test_weights_lacking_tensors_are_refused_not_randomly_filled(tmp_path, part):
    """A checkpoint missing tensors was loaded with those tensors freshly random (the text
    encoder silently; the UNet gave a NaN latent power) -- never garbage out of a real-looking model."""
    from safetensors.torch import load_file, save_file

    folder = _copy(tmp_path)
    f = next((folder / part).glob("*.safetensors"))
    sd = load_file(f)
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[: len(keys) // 2]}, f, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"the {part}/ weights lack \d+ of the model's tensors"):
        load_components(str(folder), device="cpu")


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_a_unet_and_text_encoder_of_different_models_are_refused(tmp_path):
    """An SD-2 UNet (cross-attention 1024) beside an SD-1 text encoder (768) failed only inside the
    first UNet call, with a matmul shape traceback."""
    from diffusers import UNet2DConditionModel

    from gr_gdmcom.codec.models import tiny_configs

    folder = _copy(tmp_path)
    cfg = tiny_configs()["unet"]
    cfg["cross_attention_dim"] = 64
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel(**cfg).save_pretrained(folder / "unet")
    with pytest.raises(ModelLoadError, match="cross_attention_dim=64 but text_encoder/ has hidden_size=32"):
        load_components(str(folder), device="cpu")


def test_an_sdxl_folder_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit(folder / "model_index.json", _class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "X"])
    with pytest.raises(ModelLoadError, match="Stable Diffusion XL"):
        load_components(str(folder), device="cpu")


def test_a_cached_hub_id_loads_from_the_cache_without_asking_the_hub(tmp_path, monkeypatch):
    """A hub id in the HF cache loads from its snapshot folder with no request: with no network and
    HF_HUB_OFFLINE unset, each of diffusers' requests was retried for ~30 s (over a minute, and pages
    of warnings, before the model loaded)."""
    import socket

    hub = tmp_path / "hf" / "hub" / "models--someone--sd15"
    commit = "0" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_path(), hub / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)

    def refuse(*_a, **_k):
        raise AssertionError("a request to the hub")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    comp = load_components("someone/sd15", device="cpu")
    assert comp.model_id == "someone/sd15"
    assert torch.equal(_unet_out(comp), _unet_out(load_components(str(tiny_path()), device="cpu")))


def test_cli_refuses_a_broken_folder_in_one_line(tmp_path):
    folder = _copy(tmp_path)
    shutil.rmtree(folder / "tokenizer")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 120, 30)).save(img)
    r = subprocess.run([sys.executable, "-m", "gr_gdmcom.cli", "simulate", "--model", str(folder), "--images",
                        str(img), "--snr", "10", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and "has no tokenizer/" in r.stderr


def test_check_model_refuses_an_incomplete_folder_before_any_run(tmp_path):
    """check_model (run by simulate, link, sweep and serve before anything else) passed a folder with
    model_index.json whatever it lacked: `gdmcom sweep` then failed every row (exit 1, a results
    folder of errors) instead of exit 2 with one line."""
    from gr_gdmcom.codec.models import check_model

    folder = _copy(tmp_path)
    check_model(str(folder))
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(ModelLoadError, match="has no scheduler/"):
        check_model(str(folder))


def test_a_folder_given_with_a_tilde_loads(tmp_path, monkeypatch):
    """'~/sd15' (a GRC parameter or a quoted argument: no shell expands it) passed check_model but was
    then handed to from_pretrained unexpanded, which took it for a hub id ('couldn't connect to
    https://huggingface.co')."""
    _copy(tmp_path, "sd15")
    monkeypatch.setenv("HOME", str(tmp_path))
    comp = load_components("~/sd15", device="cpu")
    assert comp.model_id == "~/sd15" and comp.unet.config.cross_attention_dim == 32


def test_an_incomplete_hub_snapshot_offline_is_refused_naming_the_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub" / "models--someone--sd15"
    commit = "1" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_path(), hub / "snapshots" / commit)
    shutil.rmtree(hub / "snapshots" / commit / "unet")  # an interrupted download
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"has no unet/ .*the hub cache's copy in .* is incomplete"):
        load_components("someone/sd15", device="cpu")


def test_a_single_file_checkpoint_is_refused_with_the_conversion(tmp_path):
    """v1-5-pruned-emaonly.safetensors, the most common download, got only 'is a file, not a diffusers
    folder' and the list of built-in models."""
    from gr_gdmcom.codec.models import check_model

    f = tmp_path / "v1-5-pruned-emaonly.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"is a single-file checkpoint, not a diffusers folder: convert it once "
                                             r"with diffusers, .*from_single_file\('.*v1-5-pruned-emaonly"):
        check_model(str(f))
