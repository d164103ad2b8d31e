"""Rate adaptation (codec/rate.py, docs/rate.md): mean removal and the latent reduction."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.codec.core import CodecError, latent_from_symbols, latent_to_symbols
from gr_gdmcom.codec.rate import POOL_BLOCKS, Reduction, RateError, channel_means, impose, mean_gain_db
from gr_gdmcom.config import CodecConfig
from gr_gdmcom.phy import Header
from gr_gdmcom.pipeline import LinkMetaError, header_for, meta_from_header


@pytest.mark.parametrize("method,factor,shape", [("subset", 2, (4, 8, 8)), ("subset", 4, (4, 21, 32)),
                                                 ("pool", 4, (4, 21, 32)), ("pool", 8, (4, 5, 7)),
                                                 ("pool", 16, (4, 8, 8)), ("dct", 2, (4, 8, 8)),
                                                 ("dct", 4, (4, 21, 32)), ("dct", 8, (4, 5, 7)), ("dct", 3, (2, 6, 6))])
def test_reduction_rows_are_orthonormal(method, factor, shape):
    red = Reduction.make(method, factor, shape)
    eye = torch.eye(red.n_values, dtype=torch.float64)
    rows = red.adjoint(eye).reshape(red.n_values, -1)  # row i of A
    torch.testing.assert_close(rows @ rows.T, eye)  # A A^T = I
    torch.testing.assert_close(red.apply(red.adjoint(eye)), eye)
    n = int(np.prod(shape))
    assert abs(red.n_values - n / factor) <= 4 * shape[0] * (shape[1] + shape[2]) / factor  # about 1/factor


def test_pool_values_against_block_sums():
    z = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(1, 2, 3, 5)
    y = Reduction.make("pool", 4, (2, 3, 5)).apply(z).reshape(2, 2, 3)
    # channel 0, top-left 2x2 block: (0 + 1 + 5 + 6) / 2; bottom-right edge block holds one value: 14 / 1
    assert y[0, 0, 0].item() == pytest.approx((0 + 1 + 5 + 6) / 2)
    assert y[0, 1, 2].item() == pytest.approx(14.0)
    assert y[1, 1, 0].item() == pytest.approx((25 + 26) / math.sqrt(2))


def test_dct_keeps_the_lowest_frequencies_of_scipys_orthonormal_dctn(rng):
    from scipy.fft import dctn, idctn

    z = rng.standard_normal((1, 3, 6, 8))
    red = Reduction.make("dct", 4, (3, 6, 8))
    y = red.apply(torch.from_numpy(z)).numpy().reshape(3, 12)
    coef = dctn(z[0], axes=(1, 2), norm="ortho")
    # the 12 of 48 frequencies with the smallest (i/6)^2 + (j/8)^2, in that order (ties: row-major)
    freq = [(i / 6) ** 2 + (j / 8) ** 2 for i in range(6) for j in range(8)]
    kept = sorted(range(48), key=lambda n: (freq[n], n))[:12]
    assert kept[:4] == [0, 1, 8, 9] and red.n_values == 36
    np.testing.assert_allclose(y, coef.reshape(3, 48)[:, kept], atol=1e-12)
    # A^T y: the inverse DCT of the kept coefficients, the rest zero (the least-squares low-pass image)
    low = np.zeros((3, 48))
    low[:, kept] = coef.reshape(3, 48)[:, kept]
    np.testing.assert_allclose(red.adjoint(torch.from_numpy(y.reshape(1, -1))).numpy()[0],
                               idctn(low.reshape(3, 6, 8), axes=(1, 2), norm="ortho"), atol=1e-12)
    # a channel-constant latent lives in the DC coefficient alone: sent without loss
    flat = torch.from_numpy(np.broadcast_to(np.array([1.0, -2.0, 0.5]).reshape(1, 3, 1, 1), (1, 3, 6, 8)).copy())
    torch.testing.assert_close(red.adjoint(red.apply(flat)), flat)


def test_subset_pattern_is_fixed_by_the_shape():
    a, b = Reduction.make("subset", 4, (4, 8, 8)), Reduction.make("subset", 4, (4, 8, 8))
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    assert torch.equal(a.apply(z), b.apply(z)) and a.n_values == 64
    kept = a.adjoint(a.apply(z))
    assert int((kept != 0).sum()) == 64 and torch.equal(kept[kept != 0], z[kept != 0])


def test_reduction_errors():
    with pytest.raises(RateError, match="pool reduces by 2, 4, 8, 16, got 3"):
        Reduction.make("pool", 3, (4, 8, 8))
    with pytest.raises(RateError, match="unknown reduce method 'wavelet'; choose one of subset, pool, dct"):
        Reduction.make("wavelet", 2, (4, 8, 8))
    with pytest.raises(RateError, match="dct reduce=128 keeps no coefficient of a 8x8 latent channel"):
        Reduction.make("dct", 128, (4, 8, 8))
    with pytest.raises(RateError, match=r"dct reduce=4 of latent \[3, 2, 2\] leaves an odd number of values \(3\)"):
        Reduction.make("dct", 4, (3, 2, 2))
    with pytest.raises(ValueError, match=r"reduce_method pool \(--reduce-method pool\) pools 1, 2, 4, 8, 16 values: reduce \(--reduce\) must be one of them, got 3; or use reduce_method dct or subset"):
        CodecConfig(reduce=3, reduce_method="pool").validate()
    with pytest.raises(ValueError, match="reduce must be >= 1, got 0"):
        CodecConfig(reduce=0).validate()


def test_mean_gain_formula(rng):
    c = np.array([2.0, -1.0, 0.5, 0.0])
    z = c.reshape(4, 1, 1) + rng.standard_normal((4, 32, 32))
    centred = z - z.mean(axis=(1, 2), keepdims=True)
    expected = 10 * math.log10(np.mean(z ** 2) / np.mean(centred ** 2))  # ~ 10 log10(1 + mean(c^2))
    assert mean_gain_db(z) == pytest.approx(expected)
    assert mean_gain_db(z) == pytest.approx(10 * math.log10(1 + np.mean(c ** 2)), abs=0.1)


@pytest.mark.parametrize("reduce,method", [(1, "subset"), (4, "subset"), (4, "pool"), (4, "dct")])
def test_noiseless_symbols_round_trip_with_means(rng, reduce, method):
    z = (np.array([1.5, -0.7, 0.2, 3.0]).reshape(4, 1, 1) + rng.standard_normal((4, 6, 10))).astype(np.float32)
    cfg = CodecConfig(model="tiny", remove_mean=True, reduce=reduce, reduce_method=method)
    sym, alpha, means, red = latent_to_symbols(z, cfg)
    assert np.mean(np.abs(sym) ** 2) == pytest.approx(1.0, rel=1e-5) and sym.size == red.n_values // 2
    # the channel means, rounded to float16 as the frame header carries them
    np.testing.assert_array_equal(means, z.reshape(4, -1).mean(axis=1, dtype=np.float64).astype(np.float16))
    from gr_gdmcom.codec import LatentMeta
    meta = LatentMeta(alpha=alpha, latent_shape=z.shape, image_size=(48, 80), k=5, T=50, guidance=6.0, prompt="p",
                      means=means, reduce=red.factor, reduce_method=red.method)
    back = torch.from_numpy(latent_from_symbols(sym, meta).astype(np.float64))[None]
    torch.testing.assert_close(red.apply(back), red.apply(torch.from_numpy(z.astype(np.float64))[None]),
                               rtol=1e-5, atol=1e-5)
    # the values the reduction did not send come back as their channel's mean
    unsent = red.adjoint(red.apply(torch.ones_like(back))) == 0
    if unsent.any():
        torch.testing.assert_close(back[unsent], torch.from_numpy(np.array(np.broadcast_to(
            np.asarray(means).reshape(4, 1, 1), z.shape))).unsqueeze(0)[unsent], rtol=1e-6, atol=1e-6)


def test_mean_removal_changes_nothing_when_the_mean_is_zero(components, small, rng):
    # transmitter: a latent whose channel means are zero gives the same symbols either way
    z = rng.standard_normal((4, 8, 8))
    z -= z.mean(axis=(1, 2), keepdims=True)
    on, off = (latent_to_symbols(z, CodecConfig(remove_mean=v)) for v in (True, False))
    np.testing.assert_allclose(on[0], off[0], atol=1e-6)
    assert on[1] == pytest.approx(off[1], rel=1e-9)
    # receiver: zero means in the metadata decode to the same image, bit for bit
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu", steps=10, remove_mean=False),
                            components=components)
    enc = codec.encode(small)
    noisy = enc.symbols + 0.1 * (rng.standard_normal(enc.symbols.size) + 1j * rng.standard_normal(enc.symbols.size))
    a = codec.decode(noisy.astype(np.complex64), enc.meta, 10.0).image
    b = codec.decode(noisy.astype(np.complex64), dataclasses.replace(enc.meta, means=(0.0,) * 4), 10.0).image
    assert np.array_equal(a, b)


def test_mean_removal_lowers_the_tiny_models_power(components, small):
    """The tiny model's latent sits far off the origin: removing the means saves > 3 dB of power."""
    off = GenerativeCodec(CodecConfig(model="tiny", device="cpu", remove_mean=False), components=components).encode(small)
    on = GenerativeCodec(CodecConfig(model="tiny", device="cpu", remove_mean=True), components=components).encode(small)
    assert on.meta.power < off.meta.power / 2 and len(on.meta.means) == 4
    z = latent_from_symbols(off.symbols, off.meta).astype(np.float64)  # z_k, as the paper sends it
    mu = np.asarray(on.meta.means).reshape(4, 1, 1)
    np.testing.assert_allclose(mu.ravel(), z.mean(axis=(1, 2)), atol=4 * 2 ** -11)  # float16 of the means
    assert on.meta.power == pytest.approx(float(np.mean((z - mu) ** 2)), rel=1e-5)
    assert on.meta.power == pytest.approx(off.meta.power - float(np.mean(mu ** 2)), rel=2e-3)  # P - mean(mu^2)


def test_a_latent_of_one_value_per_channel_keeps_its_means(components, small):
    """An image of at most 8 x 8 pixels has a 1 x 1 latent: removing its means left only their
    float16 rounding, normalised to unit power (alpha ~ 6000: the symbols carried rounding noise).
    Such a latent is sent whole; a 9 x 9 image (2 x 2 latent) still has its means removed."""
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu", remove_mean=True), components=components)
    tiny, nine = codec.encode(small[:8, :8]), codec.encode(small[:9, :9])
    assert tiny.meta.latent_shape == (4, 1, 1) and tiny.meta.means == () and 0.1 < tiny.meta.power < 100
    assert nine.meta.latent_shape == (4, 2, 2) and len(nine.meta.means) == 4
    dec = codec.decode(tiny.symbols, tiny.meta, 30.0)
    assert dec.image.shape == (8, 8, 3)


def test_reduced_latent_decodes_to_the_original_size(components, small):
    cfg = CodecConfig(model="tiny", device="cpu", reduce=4, reduce_method="subset")
    codec = GenerativeCodec(cfg, components=components)
    img = small[:56, :40]  # latent 4 x 7 x 5: 140 values, 35 sent (17 symbols)
    enc = codec.encode(img)
    assert enc.symbols.size == (4 * 7 * 5 // 4) // 2 and enc.meta.reduce == 4
    assert enc.record["bcr"] == pytest.approx(enc.symbols.size / (3 * 56 * 40))
    calls0 = codec.stats["unet_calls"]
    dec = codec.decode(enc.symbols, enc.meta, 10.0)
    assert dec.image.shape == img.shape and dec.record["reduce"] == 4
    # free steps from the top of the grid to the start level, then N steps: T UNet calls in all
    assert codec.stats["unet_calls"] - calls0 == cfg.T == dec.record["unet_calls"]
    with pytest.raises(CodecError, match=rf"^{enc.meta.name}: metadata says latent shape \(4, 7, 5\), reduced 4x "
                                         rf"\({enc.meta.reduce_method}\), = 17 symbols but 16 symbols were received$"):
        codec.decode(enc.symbols[:-1], enc.meta, 10.0)
    # a latent too small for the reduction fails alone; the other images are encoded
    few = GenerativeCodec(cfg.replace(reduce=64), components=components)
    bad, good = few.encode_many([small[:8, :8], small[:64, :64]], ["one", "two"])
    assert bad.error == "one: reduce=64 leaves fewer than 2 of the latent's 4 values" and bad.name == "one"
    assert good.symbols.size == 4 * 8 * 8 // 64 // 2


def test_header_flags_carry_the_reduction(codec, small):
    from gr_gdmcom.codec import LatentMeta
    meta = LatentMeta(alpha=1.0, latent_shape=(4, 8, 8), image_size=(64, 64), k=5, T=50, guidance=6.0, prompt="p",
                      reduce=4, reduce_method="pool", name="x")
    h = header_for(meta, 3)
    assert h.flags == 0x12 and h.total_symbols == 32
    back = meta_from_header(h, "p", "x")
    assert (back.reduce, back.reduce_method, back.n_symbols) == (4, "pool", 32)
    dct = header_for(dataclasses.replace(meta, reduce=8, reduce_method="dct"), 3)
    assert dct.flags == 0x43 and (meta_from_header(dct, "p", "x").reduce_method, dct.total_symbols) == ("dct", 16)
    assert meta_from_header(header_for(dataclasses.replace(meta, reduce=2, reduce_method="subset"), 3),
                            "p", "x").reduce_method == "subset"
    assert meta_from_header(header_for(dataclasses.replace(meta, reduce=1, reduce_method="full"), 3),
                            "p", "x").reduce_method == "full"
    # the means ride in the header (float16) and come back through pack/unpack; bit 5 flags them
    means = (-2.25, -0.6875, 1.5, 0.125)  # exact in float16
    h = Header.unpack(header_for(dataclasses.replace(meta, means=means), 3).pack())
    assert h.flags == 0x32 and h.means == means
    assert meta_from_header(h, "p", "x").means == means
    assert meta_from_header(h.replace(flags=0x12), "p", "x").means == ()  # flag off: the paper's signal
    three = dataclasses.replace(meta, latent_shape=(3, 8, 8), means=means[:3])
    assert meta_from_header(Header.unpack(header_for(three, 3).pack()), "p", "x").means == means[:3]
    with pytest.raises(LinkMetaError, match="header flags channel means for a 5-channel latent; it carries 4"):
        meta_from_header(h.replace(latent_shape=(5, 8, 8)), "p", "x")
    with pytest.raises(LinkMetaError, match="carries at most 4 channel means, got 5"):
        header_for(dataclasses.replace(meta, latent_shape=(5, 8, 8), means=(0.1,) * 5), 3)
    with pytest.raises(LinkMetaError, match=r"channel means \(70000.0, 0.0, 0.0, 0.0\) do not fit"):
        header_for(dataclasses.replace(meta, means=(7e4, 0.0, 0.0, 0.0)), 3)
    with pytest.raises(LinkMetaError, match="reduce as a power of two up to 32768, got 3"):
        header_for(dataclasses.replace(meta, reduce=3, reduce_method="subset"), 3)


def test_receiver_drops_a_header_with_a_non_finite_mean():
    """A burst whose header has a valid CRC but a NaN mean (a faulty transmitter) is a counted
    drop (``header_invalid``), never a decode; the same burst with finite means gets through."""
    import struct
    import zlib

    from gr_gdmcom.config import CodecConfig as Cfg
    from gr_gdmcom.phy import FrameConfig, FrameTx
    from gr_gdmcom.pipeline import RxPipeline

    h = Header(image_id=7, total_symbols=60, chunk_symbols=60, latent_shape=(4, 6, 5), image_size=(48, 40),
               flags=0x20, means=(-2.0, 0.5, 1.0, 0.25))
    good = h.pack()
    body = bytearray(good[:-4])
    body[42:44] = struct.pack(">e", float("nan"))  # the second mean (bytes 40-47: four float16)
    bad = bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))
    payload = np.exp(2j * np.pi * np.arange(60) / 7).astype(np.complex64)
    tx, gap = FrameTx(FrameConfig()), np.zeros(500, np.complex64)
    for data, invalid, images in ((bad, 1, 0), (good, 0, 1)):
        rx = RxPipeline(backend=None, config=Cfg(), frame=FrameConfig())
        got = rx.push(np.concatenate([gap, tx.burst(data, payload), gap])) + rx.flush()
        assert (rx.all_counters()["header_invalid"], len(got)) == (invalid, images)
    assert got[0].header.means == (-2.0, 0.5, 1.0, 0.25)


# ---------------------------------------------------------------------- what mutation testing found unchecked
def _pool_reference(z, factor):
    """Block sums over (ph, pw) blocks (smaller at the bottom and right edges) over sqrt(values in the block)."""
    ph, pw = POOL_BLOCKS[factor]
    c, h, w = z.shape
    out = np.zeros((c, -(-h // ph), -(-w // pw)))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            block = z[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw]
            out[:, i, j] = block.reshape(c, -1).sum(1) / math.sqrt(block[0].size)
    return out


@pytest.mark.parametrize("factor,shape", [(2, (2, 3, 5)), (4, (2, 5, 5)), (8, (2, 5, 5)), (8, (1, 3, 9)),
                                          (16, (2, 5, 5)), (16, (1, 6, 7))])
def test_pool_is_the_block_sums_over_their_root_size_at_every_edge(rng, factor, shape):
    z = rng.standard_normal(shape)
    red = Reduction.make("pool", factor, shape)
    y = red.apply(torch.from_numpy(z[None]))[0].numpy()
    want = _pool_reference(z, factor)
    assert red.n_values == want.size
    np.testing.assert_allclose(y, want.ravel(), rtol=1e-13, atol=0)
    # A^T: each value of a block gets the block's value over sqrt(its size)
    back = red.adjoint(torch.from_numpy(y[None]))[0].numpy()
    np.testing.assert_allclose(back, _pool_adjoint_reference(y.reshape(want.shape), factor, shape), rtol=1e-13,
                               atol=0)


def _pool_adjoint_reference(y, factor, shape):
    ph, pw = POOL_BLOCKS[factor]
    c, h, w = shape
    out = np.zeros(shape)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            rows, cols = slice(i * ph, min((i + 1) * ph, h)), slice(j * pw, min((j + 1) * pw, w))
            n = (rows.stop - rows.start) * (cols.stop - cols.start)
            out[:, rows, cols] = (y[:, i, j] / math.sqrt(n))[:, None, None]
    return out


@pytest.mark.parametrize("h,w", [(16, 16), (8, 8), (12, 6)])
def test_dct_coefficients_go_in_radial_order_ties_row_major(h, w):
    """The symbol order is part of the format (both sides derive it): ties, such as (i, j) and (j, i) of
    a square latent, go in row-major order."""
    red = Reduction.make("dct", 4, (1, h, w))
    freq = [(i / h) ** 2 + (j / w) ** 2 for i in range(h) for j in range(w)]
    assert red._dct_kept().tolist() == sorted(range(h * w), key=lambda n: (freq[n], n))[: h * w // 4]


def test_impose_replaces_the_measured_part_and_keeps_the_rest(rng):
    """x + A^T (sqrt(a / a_s) y_s - A x): A of the result is the measurement at level a, the part of x
    outside A's rows is x's."""
    for method, factor in (("subset", 4), ("pool", 4), ("dct", 2)):
        red = Reduction.make(method, factor, (2, 4, 6))
        x = torch.from_numpy(rng.standard_normal((1, 2, 4, 6)))
        y_s = torch.from_numpy(rng.standard_normal((1, red.n_values)))
        out = impose(x, red, y_s, 0.3, 0.6)
        torch.testing.assert_close(red.apply(out), math.sqrt(0.5) * y_s, rtol=1e-12, atol=1e-12)
        rest = lambda v: v - red.adjoint(red.apply(v))  # noqa: E731  (the projection off A's rows)
        torch.testing.assert_close(rest(out), rest(x), rtol=1e-12, atol=1e-12)


def test_the_maps_stay_on_the_latents_device_and_dtype():
    """On the meta device (no data: what a GPU run would do with the device and dtype, checked on CPU)."""
    for method, factor in (("full", 1), ("subset", 2), ("pool", 8), ("dct", 4)):
        red = Reduction.make(method, factor, (4, 5, 7))
        for dtype in (torch.float32, torch.float64):
            z = torch.zeros(2, 4, 5, 7, device="meta", dtype=dtype)
            y = red.apply(z)
            x = red.adjoint(y)
            assert (y.device.type, y.dtype, tuple(y.shape)) == ("meta", dtype, (2, red.n_values)), method
            assert (x.device.type, x.dtype, tuple(x.shape)) == ("meta", dtype, (2, 4, 5, 7)), method
    # (the meta device lets a CPU operand through a product: the DCT's matrices are checked themselves)
    z = torch.zeros(1, 4, 5, 7, device="meta", dtype=torch.float32)
    for m, n in zip(Reduction.make("dct", 4, (4, 5, 7))._dct_matrices(z), (5, 7)):
        assert (m.device.type, m.dtype, tuple(m.shape)) == ("meta", torch.float32, (n, n))


def test_means_and_mean_gain_are_computed_in_float64():
    z = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 37.3 + 1000).astype(np.float16)
    means = channel_means(z)
    assert means.dtype == np.float64
    np.testing.assert_array_equal(means, z.astype(np.float64).reshape(2, -1).mean(1))
    assert mean_gain_db(z) == mean_gain_db(z.astype(np.float64))


@pytest.mark.parametrize("method,factor,shape,message", [
    ("full", 2, (4, 8, 8), "reduce 2 needs a reduce method: one of subset, pool, dct ('full' is reduce 1)"),
    ("pool", 0, (4, 8, 8), "reduce must be >= 1, got 0"),
    ("dct", 8, (4, 1, 4), "dct reduce=8 keeps no coefficient of a 1x4 latent channel"),
    ("subset", 2, (2, 1, 1), "reduce=2 leaves fewer than 2 of the latent's 2 values"),
])
def test_each_reduction_refusal_in_its_words(method, factor, shape, message):
    with pytest.raises(RateError) as e:
        Reduction.make(method, factor, shape)
    assert str(e.value) == message


def test_the_smallest_reductions_taken():
    assert Reduction.make("subset", 2, (2, 1, 2)).n_values == 2
    assert Reduction.make("dct", 4, (2, 1, 4)).n_values == 2
    assert Reduction.make("full", 1, (1, 1, 2)).n_values == 2
