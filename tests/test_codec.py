import dataclasses
import io
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from gr_gdmcom.codec import (CodecError, Decoded, Failed, GenerativeCodec, ImageError, LatentMeta,
                             ModelLoadError, load_components, symbols_from_latent)
from gr_gdmcom.codec.images import load_rgb, to_tensor
from gr_gdmcom.codec.models import cache_dir
from gr_gdmcom.codec.schedule import sampling_path, select_steps
from gr_gdmcom.config import CodecConfig


def _codec(components, **kw):
    return GenerativeCodec(CodecConfig(model="tiny", device="cpu", **kw), components=components)


def test_tiny_model_is_a_saved_diffusers_folder(components):
    folder = next(cache_dir().glob("tiny-v*"))
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir()
    assert type(components.unet).__name__ == "UNet2DConditionModel"
    assert type(components.vae).__name__ == "AutoencoderKL"
    assert type(components.text_encoder).__name__ == "CLIPTextModel"
    assert components.tokenizer.model_max_length == 77
    ids = components.tokenizer("High quality, High res, 8K").input_ids
    assert ids[0] == components.tokenizer.bos_token_id and ids[-1] == components.tokenizer.eos_token_id


def test_missing_model_error_names_alternatives(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_components(str(tmp_path), device="cpu")
    msg = str(e.value)  # checked before any loading: the folder holds no model
    assert msg.startswith(f"--model {str(tmp_path)!r} is a folder but not a diffusers model (no model_index.json")
    assert "choose 'patch-gmm'" in msg and "'tiny'" in msg and "a local diffusers folder" in msg and "\n" not in msg


def test_noiseless_round_trip_within_2_percent(codec, small):
    """k inversion steps then k sampling steps (same timestep convention) return the latent."""
    z0 = codec.c.vae.encode(to_tensor(load_rgb(small))).latent_dist.mode() * codec.c.vae_scale
    k = codec.config.k
    with torch.no_grad():
        zk = codec._ddim(z0, [codec.inversion_path(0, k)], codec.config.prompt, codec.config.guidance)
        back = codec._ddim(zk, [sampling_path(select_steps(0, k, 0, 50, steps=k, rescale=False), codec.grid)],
                           codec.config.prompt, codec.config.guidance)
    moved = float((zk - z0).norm() / z0.norm())
    err = float((back - z0).norm() / z0.norm())
    assert moved > 0.1  # the inversion really moved the latent
    assert err < 0.02


def test_symbols_have_unit_energy_and_invert(codec, small):
    enc = codec.encode(small)
    assert enc.symbols.dtype == np.complex64
    assert abs(np.mean(np.abs(enc.symbols.astype(np.complex128)) ** 2) - 1) < 1e-6
    assert enc.symbols.size == 4 * 8 * 8 // 2 and enc.meta.latent_shape == (4, 8, 8)
    assert enc.record["bcr"] == pytest.approx(1 / 96)
    z = np.random.default_rng(0).normal(size=(4, 8, 8)) * 3
    s, alpha = symbols_from_latent(z)
    from gr_gdmcom.codec import latent_from_symbols
    meta = LatentMeta(alpha=alpha, latent_shape=(4, 8, 8), image_size=(64, 64), k=5, T=50, guidance=6, prompt="p")
    np.testing.assert_allclose(latent_from_symbols(s, meta), z, rtol=1e-5, atol=1e-5)


def test_unet_calls_are_k_plus_m_plus_n_and_batch_costs_the_same(components, small):
    codec = _codec(components)
    enc = codec.encode(small)
    dec = codec.decode(enc.symbols, enc.meta, 5.0)
    assert enc.record["unet_calls"] + dec.record["unet_calls"] == 5 + 5 + dec.record["n_steps"]
    assert dec.record["n_steps"] == codec.step_choice(5.0, enc.meta).n_steps

    one = codec.stats["unet_calls"]
    codec.stats["unet_calls"] = 0
    imgs = [small, small[:, ::-1].copy(), small[::-1].copy(), np.roll(small, 5, axis=1)]
    encs = codec.encode_many(imgs)
    assert codec.stats["unet_calls"] == 5
    # equal latent power -> equal N: decode at a fixed N so the count is exact
    codec2 = _codec(components, steps=15)
    codec2.decode_many([(e.symbols, e.meta, 5.0) for e in encs])
    assert codec2.stats["unet_calls"] == 5 + 15
    assert one == 5 + 5 + dec.record["n_steps"]


def test_batch_equals_single(components, small):
    codec = _codec(components)
    imgs = [small, small[::-1].copy()]
    single = [codec.encode(im) for im in imgs]
    batch = codec.encode_many(imgs)
    for a, b in zip(single, batch):
        np.testing.assert_allclose(a.symbols, b.symbols, atol=1e-4)
    ds = [codec.decode(e.symbols, e.meta, 8.0).image for e in single]
    db = codec.decode_many([(e.symbols, e.meta, 8.0) for e in single])
    for a, b in zip(ds, db):
        assert np.abs(a.astype(int) - b.image.astype(int)).max() <= 1


def test_bit_identical_on_cpu(components, small):
    outs = []
    for _ in range(2):
        codec = _codec(components, forward="random", seed=7)
        enc = codec.encode(small)
        outs.append((enc.symbols.tobytes(), codec.decode(enc.symbols, enc.meta, 5.0).image.tobytes()))
    assert outs[0] == outs[1]


def test_random_forward_ablation_differs(components, small):
    a = _codec(components).encode(small)
    b = _codec(components, forward="random").encode(small)
    assert b.meta.forward == "random" and b.record["unet_calls"] == 0
    assert not np.allclose(a.symbols, b.symbols)


def test_varied_sizes_and_modes_come_back_at_input_size(codec, small):
    gray = small[:, :, 0][:45, :61]
    rgba = np.dstack([small, np.full(small.shape[:2], 200, np.uint8)])[:50]
    for img, size in ((gray, (45, 61)), (rgba, (50, 64)), (small[:20, :9], (20, 9))):
        enc = codec.encode(img)
        assert enc.meta.image_size == size
        assert enc.meta.latent_shape[1:] == (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
        out = codec.decode(enc.symbols, enc.meta, 10.0)
        assert out.image.shape == size + (3,) and out.image.dtype == np.uint8


def test_decode_quality_improves_with_snr(components, small):
    codec = _codec(components)
    enc = codec.encode(small)
    from gr_gdmcom.eval.metrics import psnr
    noiseless = codec.decode(enc.symbols, enc.meta, 40.0).image
    rng = np.random.default_rng(0)
    n = (rng.normal(size=enc.symbols.size) + 1j * rng.normal(size=enc.symbols.size)) / np.sqrt(2)
    p0 = psnr(noiseless, codec.decode((enc.symbols + n).astype(np.complex64), enc.meta, 0.0).image)
    p20 = psnr(noiseless, codec.decode((enc.symbols + 0.1 * n).astype(np.complex64), enc.meta, 20.0).image)
    assert p20 > p0 + 3


def test_step_rules_reach_decoder(components, small):
    for rule, expect in (("snr", 12), ("variance", 13)):
        codec = _codec(components, rule=rule)
        enc = codec.encode(small)
        meta = LatentMeta(**{**enc.meta.to_dict(), "alpha": 1.0, "latent_shape": enc.meta.latent_shape,
                             "image_size": enc.meta.image_size})
        assert codec.decode(enc.symbols, meta, 10.0).record["n_steps"] == expect
    codec = _codec(components, rule="exact")
    enc = codec.encode(small)
    rec = codec.decode(enc.symbols, enc.meta, 10.0).record
    assert rec["rule"] == "exact" and rec["unet_calls"] == 5 + rec["n_steps"]


# ---------------------------------------------------------------- bad input
def test_bad_images_give_clear_errors(tmp_path, codec, small):
    missing = tmp_path / "nope.png"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="PNG")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match=f"image not found: {missing}"):
        load_rgb(missing)
    with pytest.raises(ImageError, match=r"image file is empty \(0 bytes\)"):
        load_rgb(empty)
    with pytest.raises(ImageError, match="cannot read image .*trunc.png"):
        load_rgb(trunc)
    with pytest.raises(ImageError, match="cannot read image .*garbage.jpg"):
        load_rgb(garbage)
    with pytest.raises(ImageError, match="has zero size"):
        load_rgb(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match=r"64x64 = 4096 pixels, more than the limit max_pixels=1000"):
        load_rgb(small, max_pixels=1000)
    # a header over Pillow's decompression-bomb size (~89 M pixels; an 11 kB PNG): the limit's one
    # message, no raw DecompressionBombWarning on stderr beside it
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10000, 9000)).save(bomb)
    with warnings.catch_warnings(record=True) as seen:
        with pytest.raises(ImageError, match=r"10000x9000 = 90000000 pixels, more than the limit max_pixels=16777216"):
            load_rgb(bomb)
    assert [w.category.__name__ for w in seen] == []
    # over twice Pillow's size (its DecompressionBombError, raised before the max_pixels check): the
    # same words as the max_pixels refusal, and where max_pixels is higher still, which limit refused it
    Image.new("1", (20000, 10000)).save(bomb)
    with pytest.raises(ImageError, match=r"^image .*bomb.png has 200000000 pixels, more than the limit "
                                         r"max_pixels=16777216$"):
        load_rgb(bomb)
    with pytest.raises(ImageError, match=r"\(Pillow's own limit, below max_pixels=300000000: raise "
                                         r"PIL.Image.MAX_IMAGE_PIXELS too\)$"):
        load_rgb(bomb, max_pixels=300_000_000)
    # names given to encode_many: one per image, or none
    with pytest.raises(ValueError, match=r"^encode_many got 2 images but 1 names: give one name per image"):
        codec.encode_many([small, small], ["a"])
    # in a batch, the good images still complete
    out = codec.encode_many([small, missing, trunc, small[::-1].copy()])
    assert [type(o).__name__ for o in out] == ["Encoded", "Failed", "Failed", "Encoded"]
    assert out[1].error == f"image not found: {missing}"


def test_phone_photo_formats_are_read_and_listed(tmp_path, small, monkeypatch):
    """HEIC (phones' photos) was listed by sweep's folder scan but refused by load_rgb ('not an image
    format Pillow can read') and left out of simulate's: pillow-heif (eval extra) registers its opener,
    Pillow reads AVIF; both are found in a folder by every command.  Without pillow-heif, the refusal
    says what to install."""
    from gr_gdmcom.codec import images
    from gr_gdmcom.eval.sweep import find_images
    from gr_gdmcom.pipeline import expand_images

    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(Image.fromarray(small)).save(tmp_path / "phone.heic")
    Image.fromarray(small).save(tmp_path / "web.avif", quality=100)
    got = np.asarray(load_rgb(tmp_path / "phone.heic"), np.float64)
    assert got.shape == small.shape and np.abs(got - small).mean() < 8
    assert np.asarray(load_rgb(tmp_path / "web.avif")).shape == small.shape
    names = ["phone.heic", "web.avif"]
    assert [p.name for p in expand_images([tmp_path])] == [p.name for p in find_images([tmp_path])] == names
    monkeypatch.setattr(images, "_HEIF", False)
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})
    monkeypatch.setattr(Image, "ID", [k for k in Image.ID if k != "HEIF"])
    with pytest.raises(ImageError, match=r"^cannot read image .*other.heic: not an image format Pillow can read "
                                         r"\(HEIC/HEIF needs pillow-heif: pip install 'gr_gdmcom\[eval\]'\)$"):
        (tmp_path / "other.heic").write_bytes((tmp_path / "phone.heic").read_bytes())
        load_rgb(tmp_path / "other.heic")


def test_a_phone_photo_is_read_upright_by_its_exif_orientation(tmp_path, small):
    """A JPEG with EXIF Orientation 6 (the sensor's 192x128 pixels, shown 128x192) was coded, scored
    and saved sideways: load_rgb turns it as viewers do; without the tag, or with an EXIF block that
    cannot be read, the stored pixels."""
    stored = np.zeros((128, 192, 3), np.uint8)
    stored[:10, :, 0] = 255  # a red band along the stored top
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(stored).save(tmp_path / "rot6.jpg", quality=95, exif=exif)
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=95)
    up = np.asarray(load_rgb(tmp_path / "rot6.jpg"))
    assert up.shape == (192, 128, 3) and up[:, -10:, 0].mean() > 240 and up[:, :-12, 0].mean() < 15
    assert np.asarray(load_rgb(tmp_path / "plain.jpg")).shape == (128, 192, 3)
    assert np.asarray(load_rgb((tmp_path / "rot6.jpg").read_bytes())).shape == (192, 128, 3)


def test_wide_and_odd_image_types_are_scaled_as_they_mean_never_clipped(small):
    """A 16-bit grey PNG, a uint16 array, a bool mask and float/int arrays give the picture they hold
    (they were clipped to 0..255: a 16-bit picture came out nearly white); a [-1, 1] float tensor and
    values beyond a type's range are refused (it came out nearly black)."""
    grey = small[:, :, 1]
    ref = np.asarray(load_rgb(grey))
    wide = grey.astype(np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    for same in (buf.getvalue(), wide, grey / 255.0, grey.astype(np.float32), grey.astype(np.int64)):
        np.testing.assert_array_equal(np.asarray(load_rgb(same)), ref)
    np.testing.assert_array_equal(np.asarray(load_rgb(grey > 127))[:, :, 0], np.where(grey > 127, 255, 0))
    with pytest.raises(ImageError, match=r"^image x has negative values \(min -1\); give 0..1 or 0..255 \(a "
                                         r"\[-1, 1\] tensor: give \(x \+ 1\) / 2\)$"):
        load_rgb(grey / 127.5 - 1.0, name="x")
    with pytest.raises(ImageError, match=r"^image x has values up to 76500, beyond 255"):
        load_rgb(grey.astype(np.int32) * 300, name="x")


def test_bad_config_and_symbols(codec, small):
    with pytest.raises(ValueError, match="k \\+ m must not exceed T: k=30, m=30, T=50"):
        CodecConfig(k=30, m=30).validate()
    with pytest.raises(ValueError, match="unknown step rule 'fast'"):
        CodecConfig(rule="fast").validate()
    enc = codec.encode(small, name="astro")
    bad = enc.symbols.copy()
    bad[[3, 9]] = np.nan
    with pytest.raises(CodecError, match="astro: received symbols contain 2 non-finite values"):
        codec.decode(bad, enc.meta, 5.0)
    with pytest.raises(CodecError, match=r"astro: metadata says latent shape \(4, 8, 8\) = 128 symbols but 100"):
        codec.decode(enc.symbols[:100], enc.meta, 5.0)
    with pytest.raises(CodecError, match="SNR estimate must be finite"):
        codec.decode(enc.symbols, enc.meta, float("nan"))
    out = codec.decode_many([(enc.symbols, enc.meta, 5.0), (bad, enc.meta, 5.0), (enc.symbols, None, 5.0)])
    assert isinstance(out[0], Decoded) and isinstance(out[1], Failed) and isinstance(out[2], Failed)
    assert "decode needs LatentMeta metadata" in out[2].error


def test_decode_refuses_metadata_and_masks_that_cannot_make_the_image(codec, small):
    """An image_size the latent cannot hold gave a 64 x 64 image for (640, 640), an empty one for
    (0, 0), a 59 x 10 one for (-5, 10); a mask erasing everything decoded 'at 10 dB'; encode_many of
    one image iterated over its rows (or a path's characters)."""
    enc = codec.encode(small, name="astro")
    for size in ((640, 640), (0, 0), (-5, 10)):
        with pytest.raises(CodecError, match=rf"^astro: image_size \[{size[0]}, {size[1]}\] does not fit latent "
                                             rf"\[4, 8, 8\] \(1..8h x 1..8w\)$"):
            codec.decode(enc.symbols, dataclasses.replace(enc.meta, image_size=size), 10.0)
    with pytest.raises(CodecError, match="^astro: nothing to decode: the mask erases every symbol$"):
        codec.decode(enc.symbols, enc.meta, 10.0, np.zeros(enc.symbols.size, bool))
    for one in (small, "img.png"):
        with pytest.raises(TypeError, match=r"^encode_many takes a list of images, got one (ndarray|str): "
                                            r"encode\(image\) or encode_many\(\[image\]\)$"):
            codec.encode_many(one)


def test_erasure_mask(codec, small):
    enc = codec.encode(small)
    mask = np.ones(enc.symbols.size, bool)
    mask[:32] = False
    rec = codec.decode(enc.symbols, enc.meta, 10.0, mask=mask).record
    assert rec["erased"] == 32


def test_random_forward_noise_is_per_image_and_batch_invariant(components, small):
    codec = _codec(components, forward="random", seed=3)
    a, b = codec.encode_many([small, small], ["one", "two"])
    assert not np.allclose(a.symbols, b.symbols)  # same pixels, independent noise
    alone = codec.encode(small, name="two")
    np.testing.assert_allclose(alone.symbols, b.symbols, atol=1e-5)


def test_weight_by_reliability_formula():
    """Equal variances change nothing; unequal ones: each symbol scaled by (1 + v) / (1 + v_i)
    with v / (1 + v) the mean of v_i / (1 + v_i) (written out here); bad input is refused."""
    from gr_gdmcom.codec.core import weight_by_reliability

    y = np.array([1 + 1j, -0.5j, 2.0, 0.3], np.complex64)
    out, snr = weight_by_reliability(y, np.full(4, 0.1))
    np.testing.assert_allclose(out, y, rtol=1e-6)
    assert snr == pytest.approx(10.0)
    v = np.array([0.01, 0.01, 1.0, 9.0])
    m = np.mean(v / (1 + v))
    v_eff = m / (1 - m)
    out, snr = weight_by_reliability(y, v)
    np.testing.assert_allclose(out, y * (1 + v_eff) / (1 + v), rtol=1e-5)
    assert snr == pytest.approx(-10 * np.log10(v_eff))
    # erased symbols stay out of the mean
    _, snr_m = weight_by_reliability(y, v, mask=np.array([True, True, True, False]))
    m3 = np.mean(v[:3] / (1 + v[:3]))
    assert snr_m == pytest.approx(-10 * np.log10(m3 / (1 - m3)))
    for bad, msg in ((np.full(3, 0.1), "noise_var shape"), (np.array([0.1, -1, 0.1, 0.1]), "finite and >= 0"),
                     (np.array([0.1, np.nan, 0.1, 0.1]), "finite and >= 0")):
        with pytest.raises(CodecError, match=msg):
            weight_by_reliability(y, bad)


def test_decode_with_reliabilities_uses_the_effective_snr(codec, small):
    """decode(noise_var=...) hands the step rule the effective SNR and records the given one."""
    enc = codec.encode(small)
    nv = np.full(enc.symbols.size, 0.1)
    nv[: nv.size // 2] = 10.0  # half the symbols in a deep fade
    rec = codec.decode(enc.symbols, enc.meta, 3.0, noise_var=nv).record
    m = np.mean(nv / (1 + nv))
    assert rec["snr_in_db"] == 3.0 and rec["snr_db"] == pytest.approx(-10 * np.log10(m / (1 - m)))
    with pytest.raises(CodecError, match="noise_var shape"):
        codec.decode(enc.symbols, enc.meta, 3.0, noise_var=nv[:-1])


def test_reliabilities_lower_the_latent_mse_under_block_fading():
    """Analytic prior, 8 latents, block Rayleigh (16 blocks, true per-symbol noise variances),
    10 dB average: the codec's receiver with MMSE weighting and the effective SNR gets a lower
    latent MSE than treating all symbols alike (benchmarks/bench_reliability.py: 0.20 -> 0.12)."""
    from gr_gdmcom.codec import latent_from_symbols
    from gr_gdmcom.codec.analytic import build_analytic
    from gr_gdmcom.codec.core import weight_by_reliability
    from gr_gdmcom.eval.validate import LatentLink, per_item_mse
    from gr_gdmcom.phy import noise_var_to_snr_db, rayleigh_block

    cfg = CodecConfig(model="analytic", device="cpu", dtype="fp32")
    link = LatentLink(load_components("analytic", device="cpu", dtype="fp32"), cfg)
    z0 = build_analytic("analytic").sample_latents(8, cfg.prompt, seed=1)
    txs = link.transmit(link.forward(z0, cfg.k, "ddim"), cfg.k, "ddim")
    rng = np.random.default_rng(3)
    mse = {}
    runs = {"alike": [], "weighted": []}
    for tx in txs:
        y, nv = rayleigh_block(tx.symbols, 10.0, rng, block_len=tx.symbols.size // 16)
        runs["alike"].append((latent_from_symbols(y, tx.meta), noise_var_to_snr_db(float(nv.mean()))))
        w, snr = weight_by_reliability(y, nv)
        runs["weighted"].append((latent_from_symbols(w, tx.meta), snr))
    for label, items in runs.items():
        zkm = link.invert(torch.from_numpy(np.stack([z for z, _ in items])), cfg.k, cfg.m)
        chs = [link.codec.step_choice(s, tx.meta) for (_, s), tx in zip(items, txs)]
        mse[label] = float(per_item_mse(link.denoise(zkm, chs), z0).mean())
    assert mse["weighted"] < 0.8 * mse["alike"], mse


def test_a_size_the_model_refuses_fails_its_row_only():
    """The analytic prior needs sides that are multiples of 64: a 72x80 image in the same call as a
    64x64 one comes back Failed with the model's reason, and the other image is encoded."""
    from gr_gdmcom.codec import GenerativeCodec
    from gr_gdmcom.codec.core import Encoded, Failed
    from gr_gdmcom.config import CodecConfig

    codec = GenerativeCodec(CodecConfig(model="analytic"))
    good, bad = np.full((64, 64, 3), 120, np.uint8), np.full((72, 80, 3), 120, np.uint8)
    out = codec.encode_many([good, bad], ["good", "bad"])
    assert isinstance(out[0], Encoded) and out[0].symbols.size == 4 * 8 * 8 // 2
    assert isinstance(out[1], Failed) and out[1].name == "bad"
    assert out[1].error == ("analytic model: latent 4x9x10 is not made of 4x8x8 tiles "
                            "(image sides must be multiples of 64x64 pixels)")
    assert codec.stats["failures"] == 1


def test_a_premultiplied_alpha_image_reads_and_a_mode_pillow_cannot_convert_fails_that_image_only(codec, small,
                                                                                                     monkeypatch):
    """soak_codec's image modes: a PIL image in mode La (premultiplied grey + alpha) raised Pillow's
    ValueError 'conversion from La to L not supported' out of load_rgb, and so out of encode_many,
    losing the batch's other images.  It is read as LA; a mode Pillow cannot take to RGB at all is
    that image's ImageError, naming the mode."""
    la = Image.fromarray(small).convert("La")
    assert np.array_equal(np.asarray(load_rgb(la)), np.asarray(load_rgb(la.convert("LA"))))
    hsv = Image.fromarray(small).convert("HSV")
    real = Image.Image.convert

    def convert(self, mode=None, *a, **kw):
        if self.mode == "HSV":
            raise ValueError("conversion from HSV to RGB not supported")
        return real(self, mode, *a, **kw)

    monkeypatch.setattr(Image.Image, "convert", convert)
    with pytest.raises(ImageError, match=r"cannot convert image hsv \(Pillow mode HSV\) to RGB: conversion from HSV"):
        load_rgb(hsv, name="hsv")
    out = codec.encode_many([hsv, small], names=["hsv", "ok"])
    assert isinstance(out[0], Failed) and out[0].kind == "image" and not isinstance(out[1], Failed)
