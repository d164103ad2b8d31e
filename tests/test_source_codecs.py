"""The digital baseline's source codecs alone: quality checks, the HEVC packaging's box parser on
hand-built files, the bounds a corrupt header must not escape, the budget search and its cache."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from gr_gdmcom.eval import source_codecs as sc

skdata = pytest.importorskip("skimage.data")


def _hevc_ok() -> bool:
    try:
        sc.check_available("hevc")
        return True
    except sc.CodecUnavailableError:
        return False


needs_hevc = pytest.mark.skipif(not _hevc_ok(), reason="pillow-heif with x265 not available")
ALL = ["jpeg", "webp", pytest.param("hevc", marks=needs_hevc)]


@pytest.fixture(scope="module")
def astro64():
    return Image.fromarray(skdata.astronaut()).resize((64, 64), Image.LANCZOS)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(10 * np.log10(255.0 ** 2 / np.mean((x - y) ** 2)))


# --------------------------------------------------------------------------- #
# the interface
# --------------------------------------------------------------------------- #
def test_the_codec_table():
    assert sc.CODECS == ("hevc", "jpeg", "webp")
    assert [(c.name, c.q_min, c.q_max) for c in map(sc.get_codec, sc.CODECS)] == [
        ("hevc", 0, 100), ("jpeg", 1, 95), ("webp", 0, 100)]


@pytest.mark.parametrize("name", ["bpg", "JPEG", "", None, ["jpeg"]])
def test_an_unknown_codec_is_named_with_the_choices(name):
    with pytest.raises(ValueError) as e:
        sc.get_codec(name)
    assert str(e.value) == f"unknown source codec {name!r}; choose one of hevc, jpeg, webp"
    with pytest.raises(ValueError, match="unknown source codec"):
        sc.check_available(name)


@pytest.mark.parametrize("codec", ALL)
def test_each_codec_round_trips_at_its_size_and_better_with_quality(codec, astro64):
    c = sc.get_codec(codec)
    lo, hi = c.q_min + 10, c.q_max - 5
    a, b = sc.encode(astro64, codec, lo), sc.encode(astro64, codec, hi)
    assert len(a) < len(b)
    da, db = sc.decode(a, codec), sc.decode(bytearray(b), codec)
    assert da.size == db.size == (64, 64) and da.mode == db.mode == "RGB"
    assert 15 < psnr(astro64, da) < psnr(astro64, db) - 5
    assert psnr(astro64, db) > 30
    assert sc.encode(astro64, codec, hi) == b  # deterministic


@pytest.mark.parametrize("codec", ALL)
def test_quality_must_be_an_integer_in_range(codec, astro64):
    c = sc.get_codec(codec)
    for q in (c.q_min - 1, c.q_max + 1, 50.7, 50.0, True, False, "50", float("nan"), None):
        with pytest.raises(ValueError) as e:
            sc.encode(astro64, codec, q)
        assert str(e.value) == f"{codec} quality must be an integer in [{c.q_min}, {c.q_max}], got {q!r}"
    for q in (c.q_min, c.q_max, np.int64(50)):
        assert sc.encode(astro64, codec, q) == sc.encode(astro64, codec, int(q))


def test_input_images_become_plain_rgb_without_metadata(astro64):
    rgba = astro64.convert("RGBA")
    rgba.info["icc_profile"] = b"junk"
    out = sc._as_rgb(rgba)
    assert out.mode == "RGB" and out.info == {} and out is not rgba
    assert np.array_equal(np.asarray(out), np.asarray(astro64))
    grey = sc._as_rgb(astro64.convert("L"))
    g = np.asarray(grey)
    assert grey.mode == "RGB" and np.array_equal(g[..., 0], g[..., 2])
    # every mode encodes the same as its RGB conversion
    assert sc.encode(astro64.convert("P"), "jpeg", 50) == sc.encode(astro64.convert("P").convert("RGB"), "jpeg", 50)


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_pillow_decoders_refuse_garbage(codec):
    for data in (b"", b"garbage", sc.encode(Image.new("RGB", (16, 16)), codec, 50)[:20]):
        with pytest.raises(OSError):
            sc.decode(data, codec)


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_pillow_bitstreams_are_pillows_with_the_documented_settings(codec, astro64):
    buf = io.BytesIO()
    if codec == "jpeg":
        astro64.save(buf, format="JPEG", quality=40, optimize=True, subsampling="4:2:0")
    else:
        astro64.save(buf, format="WEBP", quality=40, method=6)
    assert sc.encode(astro64, codec, 40) == buf.getvalue()


def test_the_decoders_always_give_8_bit_rgb():
    """Bitstreams from other encoders too: a grey JPEG, a WebP and a HEIF with alpha, a 10-bit HEIF."""
    def saved(img, fmt):
        b = io.BytesIO()
        img.save(b, format=fmt)
        return b.getvalue()

    out = sc.decode(saved(Image.new("L", (16, 16), 77), "JPEG"), "jpeg")
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [77, 77, 77]
    out = sc.decode(saved(Image.new("RGBA", (16, 16), (1, 2, 3, 100)), "WEBP"), "webp")
    assert out.mode == "RGB" and out.size == (16, 16)


@needs_hevc
def test_the_hevc_decoder_gives_8_bit_rgb_from_alpha_and_10_bit_files():
    import pillow_heif

    b = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGBA", (16, 16), (10, 200, 30, 128))).save(b, quality=90)
    out = sc.decode(b"\x02" + b.getvalue(), "hevc")
    assert out.mode == "RGB" and np.abs(np.asarray(out, dtype=int) - [10, 200, 30]).max() <= 4
    grad = np.repeat(np.linspace(0, 65535, 32)[None, :, None], 32, 0).repeat(3, 2).astype(np.uint16)
    b = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(32, 32), data=grad.tobytes()).save(b, quality=95)
    out = sc.decode(b"\x02" + b.getvalue(), "hevc")
    assert out.mode == "RGB" and np.abs(np.asarray(out, dtype=int) - (grad >> 8)).mean() < 3


def test_a_missing_pillow_heif_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import raises ImportError
    with pytest.raises(sc.CodecUnavailableError) as e:
        sc._pillow_heif()
    assert str(e.value) == ("hevc unavailable: pillow-heif is not installed (pip install 'gr-gdmcom[eval]'); "
                            "jpeg and webp still work")


# --------------------------------------------------------------------------- #
# availability
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("codec,lib", [("jpeg", "libjpeg"), ("webp", "libwebp")])
def test_a_pillow_without_the_library_is_named(monkeypatch, codec, lib):
    from PIL import features

    asked = []
    monkeypatch.setattr(features, "check", lambda f: asked.append(f) or False)
    with pytest.raises(sc.CodecUnavailableError) as e:
        sc.get_codec(codec)._check()
    assert str(e.value) == f"{codec} unavailable: this Pillow was built without {lib}"
    assert asked == [{"jpeg": "jpg", "webp": "webp"}[codec]]
    monkeypatch.setattr(features, "check", lambda f: True)
    sc.get_codec(codec)._check()  # no error


def test_a_pillow_heif_without_x265_is_named(monkeypatch):
    class FakeHeif:
        __version__ = "9.9"
        info = {"encoders": {"aom": "AOMedia AV1"}, "HEIF": "", "AVIF": "aom"}

        @classmethod
        def libheif_info(cls):
            return cls.info

    monkeypatch.setattr(sc, "_pillow_heif", lambda: FakeHeif)
    with pytest.raises(sc.CodecUnavailableError) as e:
        sc._hevc_available()
    assert str(e.value) == (f"hevc unavailable: pillow-heif 9.9 has no x265 HEVC encoder "
                            f"(libheif_info: {FakeHeif.info}); jpeg and webp still work")
    for info in ({"encoders": {"x265": "x265 HEVC encoder"}}, {"encoders": {"a": "X265 3.5"}},
                 {"HEIF": "x265 HEVC encoder (3.5+1-f0c1022b6)"}):
        FakeHeif.info = info
        sc._hevc_available()  # no error
    FakeHeif.info = {"HEIF": "x26"}
    with pytest.raises(sc.CodecUnavailableError):
        sc._hevc_available()


def test_availability_is_checked_before_encoding_and_decoding(monkeypatch, astro64):
    monkeypatch.setattr(sc, "_availability", lambda name: f"{name} unavailable: test")
    for call in (lambda: sc.encode(astro64, "jpeg", 50), lambda: sc.decode(b"x", "webp"),
                 lambda: sc.encode_to_budget(astro64, "jpeg", 10 ** 6), lambda: sc.check_available("hevc")):
        with pytest.raises(sc.CodecUnavailableError, match=r"^(jpeg|webp|hevc) unavailable: test$"):
            call()


# --------------------------------------------------------------------------- #
# the ISO-BMFF parser, on hand-built files
# --------------------------------------------------------------------------- #
def box(kind: str, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind.encode("latin-1") + payload


def heif(payload=b"slice-data!", version=0, offset_size=4, length_size=4, base_offset_size=4, items=1,
         extents=1, base_shift=0, length_shift=0, metas=1, ilocs=1, tail=("mdat",), zero_offsets=False):
    """A minimal single-item HEIF-like file; *_shift move the item away from the mdat payload."""
    ftyp = box("ftyp", b"heic\0\0\0\0mif1heic")

    def iloc(base):
        b = bytes([version, 0, 0, 0, offset_size << 4 | length_size, base_offset_size << 4])
        b += items.to_bytes(2, "big") + (1).to_bytes(2, "big")
        if version == 1:
            b += (0).to_bytes(2, "big")  # construction_method
        b += (0).to_bytes(2, "big")  # data_reference_index
        ext_off = 0
        if base_offset_size:
            b += base.to_bytes(base_offset_size, "big")
        else:
            ext_off = base
        b += extents.to_bytes(2, "big")
        if offset_size:
            b += (0 if base_offset_size else ext_off).to_bytes(offset_size, "big")
        b += (len(payload) + length_shift).to_bytes(length_size, "big")
        return box("iloc", b)

    def meta(base):
        inner = box("hdlr", b"\0" * 4 + b"\0" * 4 + b"pict" + b"\0" * 13) + iloc(base) * ilocs + box("pitm", b"\0" * 6)
        return box("meta", b"\0\0\0\0" + inner) * metas

    head = ftyp + meta(0)
    base = len(head) + 8 + base_shift
    if zero_offsets:
        base = 0
    head = ftyp + meta(base)
    out = head
    for kind in tail:
        out += box(kind, payload)
    return out, len(head)


@pytest.mark.parametrize("kw", [{}, {"version": 1}, {"base_offset_size": 0}, {"base_offset_size": 8}, {"offset_size": 0},
                                {"offset_size": 8, "base_offset_size": 0}, {"payload": b""}])
def test_the_parser_splits_a_well_formed_file(kw):
    data, moff = heif(**kw)
    prefix, payload, pos = sc._split_heif(data)
    assert prefix == data[:moff + 8] and payload == kw.get("payload", b"slice-data!")
    assert int.from_bytes(data[pos:pos + 4], "big") == len(payload)
    # the length field is the iloc's last 4 bytes
    iloc_end = data.index(b"pitm") - 4
    assert pos == iloc_end - 4


def test_an_item_in_offset_only_layout_is_found():
    # no base offset and no extent offset: the item would start at byte 0, not the mdat payload
    data, _ = heif(base_offset_size=0, offset_size=0)
    with pytest.raises(ValueError, match="^item data does not start the mdat payload$"):
        sc._split_heif(data)


@pytest.mark.parametrize("kw,msg", [
    ({"tail": ()}, "expected exactly one mdat box, at the end"),
    ({"tail": ("mdat", "mdat")}, "expected exactly one mdat box, at the end"),
    ({"tail": ("mdat", "free")}, "expected exactly one mdat box, at the end"),
    ({"metas": 0}, "expected one meta box"),
    ({"metas": 2}, "expected one meta box"),
    ({"ilocs": 0}, "expected one iloc box"),
    ({"ilocs": 2}, "expected one iloc box"),
    ({"version": 2}, "unsupported iloc layout"),
    ({"length_size": 8}, "unsupported iloc layout"),
    ({"items": 2}, "expected one item"),
    ({"items": 0}, "expected one item"),
    ({"extents": 2}, "expected one extent"),
    ({"extents": 0}, "expected one extent"),
    ({"base_shift": 1}, "item data does not start the mdat payload"),
    ({"base_shift": -1}, "item data does not start the mdat payload"),
    ({"length_shift": -1}, "item data does not fill the mdat payload"),
    ({"length_shift": 1}, "item data does not fill the mdat payload"),
])
def test_the_parser_refuses_each_layout_it_does_not_handle(kw, msg):
    data, _ = heif(**kw)
    with pytest.raises(ValueError) as e:
        sc._split_heif(data)
    assert str(e.value) == msg


def test_box_sizes_are_checked():
    ok = box("free", b"ab") + box("mdat", b"xyz")
    assert sc._boxes(ok, 0, len(ok)) == [("free", 0, 10), ("mdat", 10, 11)]
    assert sc._boxes(b"pad" + ok, 3, 3 + len(ok)) == [("free", 3, 10), ("mdat", 13, 11)]
    assert sc._boxes(ok, 0, 10) == [("free", 0, 10)]
    assert sc._boxes(b"", 0, 0) == []
    for bad, msg in [((7).to_bytes(4, "big") + b"free", "unsupported or corrupt box layout"),
                     ((1).to_bytes(4, "big") + b"mdat" + bytes(8), "unsupported or corrupt box layout"),
                     ((0).to_bytes(4, "big") + b"mdat" + bytes(8), "unsupported or corrupt box layout"),
                     ((13).to_bytes(4, "big") + b"free" + bytes(4), "unsupported or corrupt box layout"),
                     (ok + b"\0\0\0", "trailing bytes after the last box"),
                     (ok + bytes(7), "trailing bytes after the last box")]:
        with pytest.raises(ValueError) as e:
            sc._boxes(bad, 0, len(bad))
        assert str(e.value) == msg


def test_a_box_of_exactly_eight_bytes_is_a_box():
    b = box("free", b"")
    assert sc._boxes(b + b, 0, 16) == [("free", 0, 8), ("free", 8, 8)]


# --------------------------------------------------------------------------- #
# HEVC packaging
# --------------------------------------------------------------------------- #
@needs_hevc
def test_the_flat_packaging_header_and_its_rebuild(astro64):
    img = astro64.resize((300, 40))
    data = sc.encode(img, "hevc", 30)
    heif_file = sc.hevc_heif_file(img, 30)
    assert data[:5] == bytes([1, 1, 44, 0, 40])  # tag, 300, 40
    prefix, payload, pos = sc._split_heif(heif_file)
    assert data[5:] == payload
    assert sc.hevc_rebuild_heif(300, 40, payload) == heif_file
    assert sc._hevc_to_heif(data) == heif_file
    # the container of a same-size picture is the template with two lengths patched
    other = sc.hevc_heif_file(Image.new("RGB", (300, 40), (0, 90, 200)), 80)
    p2, pay2, _ = sc._split_heif(other)
    assert sc.hevc_rebuild_heif(300, 40, pay2) == other and p2[:-8] != prefix[:-8]


@needs_hevc
def test_the_whole_file_is_sent_when_the_rebuild_differs(monkeypatch, astro64):
    heif_file = sc.hevc_heif_file(astro64, 30)
    ref = np.asarray(sc.decode(sc.encode(astro64, "hevc", 30), "hevc"))
    for patch in (("hevc_rebuild_heif", lambda w, h, p: b"other"),
                  ("_split_heif", lambda d: (_ for _ in ()).throw(ValueError("layout")))):
        with monkeypatch.context() as m:
            m.setattr(sc, *patch)
            data = sc.encode(astro64, "hevc", 30)
        assert data == b"\x02" + heif_file
        assert sc._hevc_to_heif(data) == heif_file
        assert np.array_equal(np.asarray(sc.decode(data, "hevc")), ref)


@needs_hevc
def test_pictures_past_hevc_level_6_2_go_as_whole_files(monkeypatch):
    assert (sc.HEVC_MAX_PIXELS, sc.HEVC_MAX_SIDE) == (35_651_584, 16_888)
    img = Image.new("RGB", (16, 16), (50, 60, 70))
    assert sc.encode(img, "hevc", 10)[0] == 1
    monkeypatch.setattr(sc, "HEVC_MAX_PIXELS", 255)
    assert sc.encode(img, "hevc", 10)[0] == 2
    monkeypatch.setattr(sc, "HEVC_MAX_PIXELS", 256)
    assert sc.encode(img, "hevc", 10)[0] == 1
    monkeypatch.setattr(sc, "HEVC_MAX_SIDE", 15)
    assert sc.encode(img, "hevc", 10)[0] == 2
    assert sc.encode(Image.new("RGB", (15, 15)), "hevc", 10)[0] == 1
    assert sc.encode(Image.new("RGB", (15, 16)), "hevc", 10)[0] == 2
    assert sc.encode(Image.new("RGB", (16, 15)), "hevc", 10)[0] == 2


@pytest.mark.parametrize("w,h", [(0, 64), (64, 0), (0, 0), (65535, 65535), (16889, 8), (8, 16889), (8192, 4353)])
def test_a_corrupt_flat_header_is_refused_before_any_template_is_made(monkeypatch, w, h):
    monkeypatch.setattr(sc, "_hevc_template", lambda *a: pytest.fail("template made"))
    data = bytes([1]) + w.to_bytes(2, "big") + h.to_bytes(2, "big") + b"payload"
    with pytest.raises(ValueError) as e:
        sc._hevc_to_heif(data)
    assert str(e.value) == (f"hevc bitstream header gives a {w} x {h} picture; the BPG-like packaging carries "
                            "1 .. 16888 pixels a side and at most 35651584 pixels (HEVC level 6.2)")


@pytest.mark.parametrize("w,h", [(1, 1), (16888, 2111), (2111, 16888), (8192, 4352)])
def test_flat_headers_within_the_level_reach_the_template(monkeypatch, w, h):
    made = []
    monkeypatch.setattr(sc, "_hevc_template", lambda *a: made.append(a) or (bytes(16) + b"\0\0\0\0mdat", 2))
    out = sc._hevc_to_heif(bytes([1]) + w.to_bytes(2, "big") + h.to_bytes(2, "big") + b"abc")
    assert made == [(w, h)]
    assert out == bytes(2) + (3).to_bytes(4, "big") + bytes(10) + (11).to_bytes(4, "big") + b"mdat" + b"abc"


@pytest.mark.parametrize("data,msg", [
    (b"", "empty hevc bitstream"),
    (b"\x01", "truncated hevc bitstream header"),
    (b"\x01\x00\x10\x00", "truncated hevc bitstream header"),
    (b"\x00abcdef", "unknown hevc packaging tag 0x00"),
    (b"\x03", "unknown hevc packaging tag 0x03"),
    (b"\xffabc", "unknown hevc packaging tag 0xff"),
])
def test_malformed_hevc_packaging_is_named(data, msg):
    with pytest.raises(ValueError) as e:
        sc._hevc_to_heif(data)
    assert str(e.value) == msg


def test_a_whole_file_bitstream_is_passed_on_unchanged():
    assert sc._hevc_to_heif(b"\x02whatever") == b"whatever"
    assert sc._hevc_to_heif(b"\x02") == b""


@needs_hevc
def test_a_flat_header_without_a_slice_is_libheifs_error_not_a_picture():
    with pytest.raises(ValueError, match="did not give a decompressed image"):
        sc.decode(bytes([1, 0, 16, 0, 16]), "hevc")


# --------------------------------------------------------------------------- #
# the budget search
# --------------------------------------------------------------------------- #
@pytest.fixture
def counted(monkeypatch):
    """jpeg with every real encode counted (by quality)."""
    calls = []
    spec = sc.get_codec("jpeg")
    fake = dataclasses.replace(spec, _encode=lambda img, q: calls.append(q) or spec._encode(img, q))
    monkeypatch.setitem(sc._CODECS, "jpeg", fake)
    monkeypatch.setattr(sc, "_ENCODE_CACHE", type(sc._ENCODE_CACHE)())
    return calls


def test_the_search_lands_on_the_exact_boundary(counted, astro64):
    sizes = {q: len(sc.encode(astro64, "jpeg", q)) for q in range(1, 96)}
    assert all(sizes[q] < sizes[q + 1] for q in range(1, 95))  # strictly monotone for this image
    for q in (1, 2, 37, 60, 94):
        for budget in (sizes[q], sizes[q + 1] - 1):
            data, got, dec = sc.encode_to_budget(astro64, "jpeg", budget)
            assert got == q and data == sc.encode(astro64, "jpeg", q)
    assert sc.encode_to_budget(astro64, "jpeg", sizes[95])[1] == 95
    assert sc.encode_to_budget(astro64, "jpeg", 10 ** 7)[1] == 95
    assert sc.encode_to_budget(astro64, "jpeg", np.int64(sizes[95]))[1] == 95


def test_the_budget_too_small_error_carries_its_numbers(counted, astro64):
    need = len(sc.encode(astro64, "jpeg", 1))
    with pytest.raises(sc.BudgetTooSmallError) as e:
        sc.encode_to_budget(astro64, "jpeg", need - 1)
    assert str(e.value) == f"budget too small for jpeg: {need - 1} bytes available, lowest quality (1) needs {need} bytes"
    assert (e.value.codec, e.value.max_bytes, e.value.min_bytes, e.value.min_quality) == ("jpeg", need - 1, need, 1)
    assert isinstance(e.value, sc.SourceCodecError)
    assert sc.encode_to_budget(astro64, "jpeg", need)[1] == 1


@pytest.mark.parametrize("b", [1000.0, 1000.5, float("nan"), True, "1000", None])
def test_the_budget_must_be_an_integer(b, astro64):
    with pytest.raises(ValueError) as e:
        sc.encode_to_budget(astro64, "jpeg", b)
    assert str(e.value) == f"max_bytes must be an integer number of bytes, got {b!r}"


def test_the_search_encodes_each_quality_once_per_image(counted, astro64):
    out = sc.encode_to_budget(astro64, "jpeg", 1500)
    first = list(counted)
    assert len(first) == len(set(first)) <= 9  # 1, 95, then at most 7 halvings of 94
    assert first[:2] == [1, 95]
    counted.clear()
    again = sc.encode_to_budget(astro64.copy(), "jpeg", 1500)  # same content, another object
    assert counted == [] and again[:2] == out[:2]
    sc.encode_to_budget(astro64, "jpeg", 2500)
    assert set(counted).isdisjoint(first)
    counted.clear()
    sc.encode_to_budget(astro64.resize((32, 128)), "jpeg", 1500)  # another size: its own entry
    assert counted[:2] == [1, 95]


def test_the_cache_keeps_the_last_eight_images(counted, astro64):
    imgs = [Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i in range(9)]
    for im in imgs[:8]:
        sc.encode_to_budget(im, "jpeg", 10 ** 6)
    assert len(sc._ENCODE_CACHE) == 8
    counted.clear()
    sc.encode_to_budget(imgs[0], "jpeg", 10 ** 6)  # still there; now the most recent
    assert counted == []
    sc.encode_to_budget(imgs[8], "jpeg", 10 ** 6)  # pushes out imgs[1], the least recent
    assert len(sc._ENCODE_CACHE) == 8
    counted.clear()
    sc.encode_to_budget(imgs[0], "jpeg", 10 ** 6)
    assert counted == []
    sc.encode_to_budget(imgs[1], "jpeg", 10 ** 6)
    assert counted == [1, 95]


def test_the_cache_is_per_codec(counted, astro64):
    sc.encode_to_budget(astro64, "jpeg", 3000)
    n = len(counted)
    sc.encode_to_budget(astro64, "webp", 3000)
    assert len(counted) == n  # webp's encodes are not jpeg's
    keys = [k[2] for k in sc._ENCODE_CACHE]
    assert keys == ["jpeg", "webp"]


@pytest.mark.parametrize("codec", ALL)
def test_the_returned_image_is_the_decode_of_the_returned_bitstream(codec, astro64):
    data, q, dec = sc.encode_to_budget(astro64, codec, 2000)
    assert len(data) <= 2000
    assert np.array_equal(np.asarray(dec), np.asarray(sc.decode(data, codec)))
    assert data == sc.encode(astro64, codec, q)
