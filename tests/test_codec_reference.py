"""codec/core.py metadata and construction against references written out here: the header's
prompt CRC, the metadata's dict form both ways with exact errors, a codec that loads its own model."""

import binascii

import numpy as np
import pytest

from gr_gdmcom.codec import CodecError, GenerativeCodec, LatentMeta, prompt_hash
from gr_gdmcom.config import DEFAULT_PROMPT, CodecConfig


def test_prompt_hash_is_the_low_16_bits_of_the_utf8_prompts_crc32():
    assert prompt_hash(DEFAULT_PROMPT) == binascii.crc32(DEFAULT_PROMPT.encode()) & 0xFFFF == 0xCF29
    assert prompt_hash("café") == binascii.crc32("café".encode("utf-8")) & 0xFFFF
    assert prompt_hash("") == 0


META = dict(alpha=0.75, latent_shape=[4, 8, 6], image_size=[64, 48], k=5, T=50, guidance=6.0, prompt="p",
            forward="random", name="x", means=[], reduce=1, reduce_method="full", model_hash=0x1E7A)


def test_latent_meta_dict_round_trip():
    m = LatentMeta.from_dict(META)
    assert m.latent_shape == (4, 8, 6) and m.image_size == (64, 48) and m.forward == "random" and m.name == "x"
    assert m.to_dict() == META and isinstance(m.to_dict()["latent_shape"], list)
    assert m.power == pytest.approx(1 / 0.75 ** 2) and m.n_symbols == 96
    d = {k: v for k, v in META.items() if k not in ("forward", "name", "model_hash")}
    assert (LatentMeta.from_dict(d).forward, LatentMeta.from_dict(d).name) == ("ddim", "image")
    assert LatentMeta.from_dict(d).model_hash == 0  # not given: the receiver does not check it
    strings = {**META, "alpha": "0.5", "k": "3", "latent_shape": ["4", "8", "6"]}
    m = LatentMeta.from_dict(strings)
    assert (m.alpha, m.k, m.latent_shape) == (0.5, 3, (4, 8, 6))


@pytest.mark.parametrize("change,message", [
    (dict(alpha=None), "bad latent metadata: KeyError('alpha')"),
    (dict(k="five"), "bad latent metadata: ValueError(\"invalid literal for int() with base 10: 'five'\")"),
    (dict(latent_shape=None), "bad latent metadata: KeyError('latent_shape')"),
    (dict(image_size=7), "bad latent metadata: TypeError(\"'int' object is not iterable\")"),
])
def test_latent_meta_from_bad_dict_names_the_problem(change, message):
    d = {**META, **change}
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(CodecError) as e:
        LatentMeta.from_dict(d)
    assert str(e.value) == message


def test_codec_loads_the_configured_model_itself(codec, small):
    own = GenerativeCodec(CodecConfig(model="tiny", device="cpu", dtype="fp32"))
    assert own.c.device.type == "cpu" and own.c.dtype == codec.c.dtype
    a, b = own.encode(small, "s"), codec.encode(small, "s")
    assert np.array_equal(a.symbols, b.symbols) and a.meta == b.meta
