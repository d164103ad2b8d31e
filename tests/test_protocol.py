"""The wire protocol's builders and parsers alone (gr_gdmcom.bridge.protocol, docs/protocol.md):
no model, no socket, about a second.

What a hand-written client meets is here word for word: every refusal of ``parse_request`` with its
code, message, echoed id and op, at each limit and one past it; the request and reply builders' exact
frames; envelopes; images; ``config_id``.  tests/test_bridge.py sends the same kinds of message to a
running server with the tiny model."""

import hashlib
import io
import json
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gr_gdmcom.bridge import protocol as P
from gr_gdmcom.codec import Decoded, Encoded, LatentMeta

META = LatentMeta(alpha=1.25, latent_shape=(4, 8, 8), image_size=(64, 60), k=5, T=50, guidance=6.0,
                  prompt="a photo", name="small")
SYMBOLS = (np.arange(128) * (0.01 + 0.02j)).astype(np.complex64)
LIMITS = P.Limits(T=50, m=5, max_pixels=64 * 64, max_header_bytes=4096, max_prompt_chars=100)


def header_of(frames):
    return json.loads(frames[0])


def decode_frames(symbols=SYMBOLS, mask=None, **fields):
    """A decode request of META with header fields replaced (None: removed) and ``sizes`` kept true."""
    frames = P.decode_request("r1", symbols, META, 5.0, mask)
    h = header_of(frames)
    for key, value in fields.items():
        if value is None:
            h.pop(key, None)
        else:
            h[key] = value
    return [json.dumps(h).encode(), *frames[1:]]


def with_meta(**fields):
    return decode_frames(meta={**META.to_dict(), **fields})


def refusal(frames, limits=LIMITS):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(frames, limits)
    return e.value.code, e.value.message


def png(h, w, mode="RGB", level=1):
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


# ---------------------------------------------------------------------- JSON, envelopes, fingerprints
def test_headers_are_strict_compact_json():
    h = {"a": np.int64(3), "b": np.float32(0.5), "c": np.bool_(True), "d": (1, 2.5), "e": np.arange(3),
         "f": float("nan"), "g": float("inf"), "h": None, "i": "x", 7: [np.float64(-1.5)], "j": {"k": np.uint8(2)},
         "l": b"ab", "m": True, "n": np.array([[1.0, float("nan")]])}
    assert P.dumps_header(h) == (b'{"a":3,"b":0.5,"c":true,"d":[1,2.5],"e":[0,1,2],"f":null,"g":null,"h":null,'
                                 b'"i":"x","7":[-1.5],"j":{"k":2},"l":"b\'ab\'","m":true,"n":[[1.0,null]]}')
    assert P.dumps_header({"s": "\u00e9"}) == '{"s":"\\u00e9"}'.encode()
    assert P.loads_header(memoryview(b'{"x": NaN, "y": [1]}'))["y"] == [1]
    assert np.isnan(P.loads_header(b'{"x": NaN}')["x"])


@pytest.mark.parametrize("frame, message", [
    (b"\xff{}", "frame 0 is not a UTF-8 JSON header: 'utf-8' codec can't decode byte 0xff in position 0: "
                "invalid start byte"),
    (b"{", "frame 0 is not a UTF-8 JSON header: Expecting property name enclosed in double quotes: line 1 "
           "column 2 (char 1)"),
    (b"[1]", "frame 0 must be a JSON object, got list"),
    (b'"v"', "frame 0 must be a JSON object, got str"),
    (b"null", "frame 0 must be a JSON object, got NoneType"),
    (b"[" * 100000 + b"]" * 100000, "frame 0 is nested too deeply to be a protocol header"),
])
def test_a_header_that_is_not_a_json_object_is_bad_json(frame, message):
    with pytest.raises(P.ProtocolError) as e:
        P.loads_header(frame)
    assert (e.value.code, e.value.message, e.value.rid, e.value.op, str(e.value)) == (
        P.BAD_JSON, message, None, None, message)


def test_the_fingerprint_is_the_crc_of_all_frames_in_order():
    body = [b"head", b"", b"payload"]
    assert P.fingerprint(body) == zlib.crc32(b"headpayload")
    assert P.fingerprint([]) == 0 and P.fingerprint([b"ab", b"c"]) == P.fingerprint([b"a", b"bc"])
    assert P.fingerprint([b"payload", b"head"]) != P.fingerprint(body)


@pytest.mark.parametrize("frames, envelope, body", [
    ([b"id", b"", b"h", b"p"], [b"id", b""], [b"h", b"p"]),  # REQ: identity, delimiter
    ([b"id", b"h", b"p"], [b"id"], [b"h", b"p"]),  # DEALER without a delimiter
    ([b"id", b"broker", b"", b"h"], [b"id", b"broker", b""], [b"h"]),  # through a broker
    ([b"", b"h"], [b""], [b"h"]),  # an empty identity is the identity, not the delimiter
    ([b"id", b"", b"h", b""], [b"id", b""], [b"h", b""]),  # an empty payload after the delimiter stays
    ([b"id"], [b"id"], []),
    ([], [], []),
])
def test_envelopes_end_at_the_first_empty_frame_after_the_identity(frames, envelope, body):
    assert P.split_envelope(tuple(frames)) == (envelope, body)


# ---------------------------------------------------------------------- images
def test_images_go_as_png_or_raw_and_come_back_equal():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 5, 3), np.uint8)
    assert P._contiguous_hwc(img) is img
    view = np.ascontiguousarray(img.transpose(2, 0, 1)).transpose(1, 2, 0)  # the codec's HWC view of CHW
    assert not view.flags.c_contiguous
    out = P._contiguous_hwc(view)
    assert out.flags.c_contiguous and out.dtype == np.uint8 and np.array_equal(out, img)
    assert np.array_equal(P._contiguous_hwc(img.astype(np.float32) + 0.5), img)  # floats: cast to uint8
    assert P.image_to_bytes(view, "raw") == img.tobytes()
    back = P.image_from_bytes(img.tobytes(), "raw", 3, 5)
    assert np.array_equal(back, img) and back.flags.writeable
    data = P.image_to_bytes(view)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and np.array_equal(np.array(Image.open(io.BytesIO(data))), img)
    back = P.image_from_bytes(data, "png", 3, 5)
    assert np.array_equal(back, img) and back.flags.writeable
    flat = np.zeros((64, 64, 3), np.uint8)
    assert len(P.image_to_bytes(flat, "png", 0)) > 12288 > 10 * len(P.image_to_bytes(flat, "png", 9))
    assert len(P.image_to_bytes(flat, "png", 1)) < 12288
    assert P.image_to_bytes(flat) == P.image_to_bytes(flat, png_level=1)
    # a grey or RGBA PNG comes back as RGB
    assert P.image_from_bytes(png(3, 5, "L"), "png", 3, 5).shape == (3, 5, 3)
    assert P.image_from_bytes(png(3, 5, "RGBA"), "png", 3, 5).shape == (3, 5, 3)


def test_an_image_that_disagrees_with_its_header_is_refused():
    with pytest.raises(ValueError) as e:
        P.image_from_bytes(bytes(44), "raw", 3, 5)
    assert str(e.value) == "raw image of 44 bytes is not 3x5x3"
    with pytest.raises(ValueError) as e:
        P.image_from_bytes(png(3, 5), "png", 3, 4)
    assert str(e.value) == "PNG image is 5x3, header says 4x3"
    with pytest.raises(ValueError):
        P.image_from_bytes(png(3, 5), "png", 5, 3)


# ---------------------------------------------------------------------- request builders
def test_request_builders_write_exactly_these_frames():
    assert P.status_request("s") == [b'{"v":1,"op":"status","id":"s","sizes":[]}']
    assert P.make_message({"op": "x", "v": 2, "sizes": [9]}, [memoryview(b"ab")]) == [
        b'{"v":2,"op":"x","sizes":[2]}', b"ab"]  # a header's own v is kept (to test servers), sizes never
    enc = P.encode_request("e1", b"IMG", "cat")
    assert enc == [b'{"v":1,"op":"encode","id":"e1","name":"cat","sizes":[3]}', b"IMG"]
    assert P.encode_request("e1", b"IMG", "cat", {}) == enc
    assert header_of(P.encode_request("e1", b"IMG", "cat", {"k": 10}, deadline_ms=250)) == {
        "v": 1, "op": "encode", "id": "e1", "name": "cat", "settings": {"k": 10}, "deadline_ms": 250.0, "sizes": [3]}
    dec = P.decode_request("d1", SYMBOLS.astype(np.complex128), META, 5)
    assert header_of(dec) == {"v": 1, "op": "decode", "id": "d1", "meta": json.loads(json.dumps(META.to_dict())),
                              "snr_db": 5.0, "format": "png", "sizes": [1024]}
    assert dec[1] == SYMBOLS.astype("<c8").tobytes() and len(dec) == 2
    mask = np.arange(128) % 3 > 0
    dec = P.decode_request("d1", SYMBOLS, META, 5.0, mask, "raw", {"m": 0, "steps": None}, 1000)
    h = header_of(dec)
    assert (h["format"], h["settings"], h["deadline_ms"], h["sizes"]) == ("raw", {"m": 0, "steps": None}, 1000.0,
                                                                          [1024, 128])
    assert dec[2] == mask.astype(np.uint8).tobytes() and set(dec[2]) == {0, 1}
    assert "settings" not in header_of(P.decode_request("d1", SYMBOLS, META, 5.0, settings={}))


# ---------------------------------------------------------------------- parse_request: what passes
def test_a_good_decode_request_is_read_field_for_field():
    mask = np.arange(128) % 4 != 0
    sym = np.where(mask, SYMBOLS, np.complex64(complex("nan+infj"))).astype(np.complex64)
    body = P.decode_request("d1", sym, META, -3.5, mask, "raw", {"m": 2, "steps": None}, 90.5)
    req = P.parse_request(body, LIMITS)
    assert (req.op, req.id, req.name, req.snr_db, req.image_format, req.deadline_ms, req.image) == (
        "decode", "d1", "small", -3.5, "raw", 90.5, None)
    assert req.settings == {"m": 2, "steps": None} and req.meta == META
    assert req.symbols.dtype == np.complex64 and np.array_equal(req.symbols, np.where(mask, SYMBOLS, 0))
    assert req.mask.dtype == bool and np.array_equal(req.mask, mask)
    # any non-zero mask byte keeps its symbol
    frames = P.decode_request("d1", SYMBOLS, META, 5.0, mask)
    frames[2] = bytes([0, 2, 255, 1]) * 32
    assert P.parse_request(frames, LIMITS).mask.tolist() == [False, True, True, True] * 32
    plain = P.parse_request(P.decode_request("d2", SYMBOLS, META, 5.0), LIMITS)
    assert plain.mask is None and plain.settings == {} and plain.deadline_ms is None and plain.image_format == "png"
    assert np.array_equal(plain.symbols, SYMBOLS)
    # integers are numbers; the codec gets floats
    req = P.parse_request(with_meta(alpha=1, guidance=6), LIMITS)
    assert (req.meta.alpha, req.meta.guidance) == (1.0, 6.0) and isinstance(req.meta.alpha, float)


def test_good_encode_and_status_requests_are_read():
    data = png(64, 64)
    req = P.parse_request(P.encode_request("e1", data, "cat", {"k": 0}, 1.5), LIMITS)  # exactly max_pixels
    assert (req.op, req.id, req.image, req.name, req.settings, req.deadline_ms) == ("encode", "e1", data, "cat",
                                                                                     {"k": 0}, 1.5)
    assert isinstance(req.image, bytes)
    req = P.parse_request(P.make_message({"op": "encode", "id": "e2"}, [data]), LIMITS)
    assert (req.name, req.settings) == ("image", {})
    req = P.parse_request(P.status_request("s1"), LIMITS)
    assert (req.op, req.id, req.symbols, req.meta) == ("status", "s1", None, None)


def test_the_size_limits_are_inclusive():
    status = P.status_request("s")
    assert P.parse_request(status, P.Limits(max_header_bytes=len(status[0]))).op == "status"
    assert refusal(status, P.Limits(max_header_bytes=len(status[0]) - 1)) == (
        P.TOO_LARGE, f"header of {len(status[0])} bytes exceeds the limit of {len(status[0]) - 1} bytes")
    dec = P.decode_request("d1", SYMBOLS, META, 5.0, np.ones(128, bool))
    total = sum(map(len, dec))
    assert P.parse_request(dec, P.Limits(max_request_bytes=total)).op == "decode"
    assert refusal(dec, P.Limits(max_request_bytes=total - 1)) == (
        P.TOO_LARGE, f"request of {total} bytes exceeds the limit of {total - 1} bytes")
    big = P.encode_request("e1", png(65, 64), "tall")
    assert refusal(big) == (P.TOO_LARGE, "image tall has 64x65 = 4160 pixels, more than the limit max_pixels=4096")
    assert P.parse_request(with_meta(latent_shape=[4, 8, 8]), P.Limits(max_pixels=4096)).meta.latent_shape == (4, 8, 8)
    assert refusal(with_meta(latent_shape=[4, 8, 8]), P.Limits(max_pixels=4095)) == (
        P.TOO_LARGE, "small: latent [4, 8, 8] means a 64x64 image, more than max_pixels=4095")
    assert refusal(with_meta(latent_shape=[4, 8, 10], image_size=[64, 80]), P.Limits(max_pixels=5119)) == (
        P.TOO_LARGE, "small: latent [4, 8, 10] means a 80x64 image, more than max_pixels=5119")
    long = with_meta(prompt="p" * 100)
    assert P.parse_request(long, LIMITS).meta.prompt == "p" * 100
    assert refusal(with_meta(prompt="p" * 101)) == (P.BAD_META, "small: prompt of 101 characters is longer than 100")


# ---------------------------------------------------------------------- parse_request: refusals
def _ids(code, message, rid="r1", op="decode"):
    return code, message, rid, op


@pytest.mark.parametrize("frames, want", [
    ([], _ids(P.BAD_JSON, "empty message: frame 0 must be the JSON header", None, None)),
    ([b""], _ids(P.BAD_JSON, "empty message: frame 0 must be the JSON header", None, None)),
    ([b'{"v":1,"op":"fly","id":"r1"}'], _ids(P.BAD_OP, "'op': Input should be 'encode', 'decode' or 'status', "
                                                       'got "fly"', "r1", None)),
    ([b'{"v":1,"op":"status","id":""}'], _ids(P.BAD_REQUEST, "'id': String should have at least 1 character, "
                                                             'got ""', None, "status")),
    ([json.dumps({"v": 1, "op": "status", "id": "x" * 129}).encode()],
     _ids(P.BAD_REQUEST, "'id': String should have at most 128 characters, got \"" + "x" * 79, None,
          "status")),
    ([json.dumps({"v": 1, "op": "status", "id": "x" * 128, "sizes": [1]}).encode()],
     _ids(P.SIZE_MISMATCH, "header says payload sizes [1] but the frames have [] bytes", "x" * 128, "status")),
    ([b'{"v":1,"op":"status","id":7}'], _ids(P.BAD_REQUEST, "'id': Input should be a valid string, got 7", None,
                                             "status")),
    ([b'{"v":2,"op":"bad","id":5}'], _ids(P.BAD_VERSION, "this server speaks protocol version 1: header field 'v' "
                                                          "must be 1, got 2", None, None)),
    ([b'{"v":"1","op":"status","id":"r1"}'], _ids(P.BAD_VERSION, "this server speaks protocol version 1: header "
                                                                 "field 'v' must be 1, got \"1\"", "r1", "status")),
    ([b'{"v":1,"op":"status","id":"r1","sizes":[-1]}'],
     _ids(P.BAD_REQUEST, "'sizes.0': Input should be greater than or equal to 0, got -1", "r1", "status")),
    ([b'{"v":1,"op":"status","id":"r1","deadline_ms":0}'],
     _ids(P.BAD_REQUEST, "'deadline_ms': Input should be greater than 0, got 0", "r1", "status")),
    ([b'{"v":1,"op":"status","id":"r1","deadline_ms":86400001}'],
     _ids(P.BAD_REQUEST, "'deadline_ms': Input should be less than or equal to 86400000, got 86400001", "r1",
          "status")),
    ([b'{"v":1,"op":"status","id":"r1","deadline_ms":Infinity}'],
     _ids(P.NON_FINITE, "'deadline_ms' must be finite, got inf", "r1", "status")),
    ([b'{"v":1,"op":"status","id":"r1","sizes":[1]}', b"x"],
     _ids(P.BAD_REQUEST, "status takes no payload frames, got 1", "r1", "status")),
    ([b'{"v":1,"op":"encode","id":"r1"}'],
     _ids(P.BAD_REQUEST, "encode takes exactly one payload frame (the image file), got 0", "r1", "encode")),
    ([b'{"v":1,"op":"encode","id":"r1","sizes":[1,1]}', b"x", b"y"],
     _ids(P.BAD_REQUEST, "encode takes exactly one payload frame (the image file), got 2", "r1", "encode")),
    ([b'{"v":1,"op":"decode","id":"r1"}'],
     _ids(P.BAD_REQUEST, "decode takes one or two payload frames (symbols[, mask]), got 0", "r1", "decode")),
])
def test_each_malformed_request_is_refused_in_its_words_with_what_could_be_read(frames, want):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(frames, LIMITS)
    assert (e.value.code, e.value.message, e.value.rid, e.value.op) == want


def test_the_first_failing_field_in_protocol_order_names_the_error():
    """Several bad fields: v before op before id ... (one message, the most basic problem)."""
    assert refusal([b'{"v":3,"op":"fly"}'])[0] == P.BAD_VERSION
    assert refusal([b'{"v":1,"op":"fly"}'])[0] == P.BAD_OP
    assert refusal([b'{"v":1,"op":"decode","id":"r1","sizes":"x","deadline_ms":-1}'])[1].startswith("'sizes'")
    # an unknown field's failure has no code of its own: bad_request
    err = P._schema_error(_validation_error({"loc": ("zzz",), "type": "missing"}))
    assert err == (P.BAD_REQUEST, "'zzz' is missing")
    err = P._schema_error(_validation_error({"loc": (), "type": "missing"}))
    assert err == (P.BAD_REQUEST, "'' is missing")


def _validation_error(line):
    from pydantic_core import ValidationError
    return ValidationError.from_exception_data("x", [{"type": line["type"], "loc": line["loc"], "input": {}}])


@pytest.mark.parametrize("build, want", [
    (lambda: decode_frames(meta=None), (P.MISSING_META, "decode needs 'meta' (the transmitter's latent metadata: "
                                                        "alpha, latent_shape, image_size, k, T, guidance, prompt)")),
    (lambda: decode_frames(meta=[1, 2]), (P.BAD_META, "image: 'meta' must be a JSON object, got list")),
    (lambda: with_meta(alpha=None), (P.BAD_META, "small: 'meta.alpha': Input should be a valid number, got null")),
    (lambda: decode_frames(meta={k: v for k, v in META.to_dict().items() if k != "k"}),
     (P.BAD_META, "small: 'meta.k' is missing")),
    (lambda: with_meta(alpha=0.0009), (P.BAD_META, "small: 'meta.alpha': Input should be greater than or equal to "
                                                   "0.001, got 0.0009")),
    (lambda: with_meta(name="n" * 65, k=-1), (P.BAD_META, "n" * 61 + "...: 'meta.k': Input should be greater than "
                                                          "or equal to 0, got -1")),
    (lambda: with_meta(name="n" * 64, k=-1), (P.BAD_META, "n" * 64 + ": 'meta.k': Input should be greater than "
                                                          "or equal to 0, got -1")),
    (lambda: with_meta(latent_shape=[3, 8, 8]), (P.BAD_META, "small: latent has 3 channels but this model's latent "
                                                             "has 4")),
    (lambda: with_meta(image_size=[65, 60]), (P.BAD_META, "small: image_size [65, 60] does not fit latent "
                                                          "[4, 8, 8] (at most 8h x 8w)")),
    (lambda: with_meta(image_size=[64, 65]), (P.BAD_META, "small: image_size [64, 65] does not fit latent "
                                                          "[4, 8, 8] (at most 8h x 8w)")),
    (lambda: with_meta(T=40), (P.BAD_META, "small: transmitter used T=40 but this server is set to T=50")),
    (lambda: with_meta(k=46), (P.BAD_META, "small: k + m must not exceed T: k=46, m=5, T=50")),
    (lambda: with_meta(means=[0.0, 0.0]), (P.BAD_META, "small: metadata has 2 channel means for 4 channels")),
    (lambda: with_meta(reduce=2), (P.BAD_META, "small: reduce 2 needs a reduce method: one of subset, pool, dct "
                                               "('full' is reduce 1)")),
    (lambda: decode_frames(settings={"m": 46}), (P.REJECTED, "settings: k + m must not exceed T: k=5 (the "
                                                             "transmitter's), m=46, T=50")),
    (lambda: decode_frames(settings={"m": 3, "z": 1}),
     (P.BAD_REQUEST, "small: 'settings.z': Extra inputs are not permitted, got 1")),
    (lambda: decode_frames(snr_db=100.5), (P.BAD_REQUEST, "small: 'snr_db': Input should be less than or equal to "
                                                          "100, got 100.5")),
    (lambda: decode_frames(symbols=SYMBOLS[:-1]), (P.SIZE_MISMATCH, "small: metadata says latent shape (4, 8, 8) = "
                                                                    "128 symbols but 127 symbols were received")),
    (lambda: _mask_of(127),
     (P.SIZE_MISMATCH, "small: mask has 127 bytes but there are 128 symbols")),
    (lambda: decode_frames(symbols=np.where(np.arange(128) == 7, np.inf, SYMBOLS)),
     (P.NON_FINITE, "small: received symbols contain 1 non-finite values (NaN/inf)")),
    (lambda: decode_frames(symbols=np.where(np.arange(128) < 2, 2e6j, SYMBOLS)),
     (P.BAD_REQUEST, "small: 2 received symbols exceed 1e+06 in magnitude (the symbols are unit-power; is the "
                     "receiver's gain set?)")),
])
def test_each_unusable_decode_request_is_refused_in_its_words(build, want):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(build(), LIMITS)
    assert (e.value.code, e.value.message, e.value.rid, e.value.op) == (*want, "r1", "decode")


def _mask_of(n):
    frames = P.decode_request("r1", SYMBOLS, META, 5.0, np.ones(128, bool))
    h = header_of(frames)
    h["sizes"] = [1024, n]
    return [json.dumps(h).encode(), frames[1], bytes(n)]


def test_the_decode_limits_are_at_their_edges():
    """k + m = T, image_size 8h x 8w, the request's own m against the server's T, an odd latent."""
    assert P.parse_request(with_meta(k=45), LIMITS).meta.k == 45
    assert P.parse_request(with_meta(image_size=[64, 64]), LIMITS).meta.image_size == (64, 64)
    assert P.parse_request(decode_frames(settings={"m": 45}), LIMITS).settings == {"m": 45}
    assert P.parse_request(decode_frames(settings={"m": 0}, meta={**META.to_dict(), "k": 50}), LIMITS).meta.k == 50
    # the request's m with another T: the T mismatch is what is wrong
    assert refusal(decode_frames(settings={"m": 45}, meta={**META.to_dict(), "T": 40})) == (
        P.BAD_META, "small: transmitter used T=40 but this server is set to T=50")
    odd = P.Limits(T=50, m=5, latent_channels=3)
    assert refusal(with_meta(latent_shape=[3, 1, 1], image_size=[8, 8]), odd) == (
        P.BAD_META, "small: latent shape [3, 1, 1] has an odd number of values")
    m = LatentMeta(**{**META.to_dict(), "latent_shape": (3, 1, 2), "image_size": (8, 16)})
    assert P.parse_request(P.decode_request("r1", np.zeros(3, np.complex64), m, 0.0), odd).meta.latent_shape == (3, 1, 2)


@pytest.mark.parametrize("data, name, want", [
    (b"", "cat", (P.BAD_IMAGE, "the image cat is empty (0 bytes)")),
    (b"", "image", (P.BAD_IMAGE, "the image is empty (0 bytes)")),
    (b"GIF89a? no", "x", (P.BAD_IMAGE, "cannot read image x: not an image format Pillow can read")),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "x", (P.BAD_IMAGE, "cannot read image x: not an image format Pillow can "
                                                          "read")),
])
def test_an_unreadable_image_is_refused_with_its_name(data, name, want):
    assert refusal(P.encode_request("r1", data, name)) == want


def test_encode_name_refusals_start_with_the_name():
    frames = P.encode_request("r1", png(4, 4), "cat", {"k": 1001})
    assert refusal(frames) == (P.BAD_REQUEST, "cat: 'settings.k': Input should be less than or equal to 1000, "
                                              "got 1001")
    frames = P.encode_request("r1", png(4, 4), "n" * 257)
    assert refusal(frames) == (P.BAD_REQUEST, "n" * 61 + "...: 'name': String should have at most 256 characters, "
                                              "got \"" + "n" * 79)
    h = header_of(P.encode_request("r1", png(4, 4), "x"))
    h["name"] = ""
    assert refusal([json.dumps(h).encode(), png(4, 4)]) == (
        P.BAD_REQUEST, "'name': String should have at least 1 character, got \"\"")


def test_a_bomb_header_is_refused_by_size_not_read(monkeypatch):
    """An image whose header declares more pixels than Pillow allows is refused in the max_pixels words
    (Pillow's DecompressionBombError), unread."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert refusal(P.encode_request("r1", png(16, 16), "bomb"), P.Limits(max_pixels=200)) == (
        P.TOO_LARGE, "image bomb has 256 pixels, more than the limit max_pixels=200")


# ---------------------------------------------------------------------- replies
def test_replies_are_these_frames_and_parse_back():
    assert P.reply("r", "status", queue=2) == [b'{"v":1,"id":"r","op":"status","ok":true,"queue":2,"sizes":[]}']
    for code in P.ERROR_CODES:
        h = header_of(P.error_reply("r", "decode", code, "msg", retry_after_ms=5))
        assert h == {"v": 1, "id": "r", "op": "decode", "ok": False, "code": code, "message": "msg",
                     "retry": code in ("busy", "unavailable"), "retry_after_ms": 5, "sizes": []}
    enc = Encoded(SYMBOLS.astype(np.complex128), META, {"k": 5})
    frames = P.encoded_reply("r", enc, config_id="abc")
    h, payloads = P.parse_reply([memoryview(f) for f in frames])
    assert h == {"v": 1, "id": "r", "op": "encode", "ok": True, "meta": json.loads(json.dumps(META.to_dict())),
                 "record": {"k": 5}, "n_symbols": 128, "config_id": "abc", "sizes": [1024]}
    back = P.encoded_from_reply(h, payloads)
    assert back.symbols.dtype == np.complex64 and np.array_equal(back.symbols, SYMBOLS) and back.meta == META
    assert back.record == {"k": 5} and P.encoded_from_reply({**h, "record": None}, payloads).record == {}
    img = np.random.default_rng(1).integers(0, 256, (6, 4, 3), np.uint8)
    for fmt in ("png", "raw"):
        frames = P.decoded_reply("r", Decoded(img, {"n_steps": 13}), fmt, png_level=0)
        h, payloads = P.parse_reply(frames)
        assert h["image"] == {"format": fmt, "height": 6, "width": 4, "channels": 3} and h["record"] == {"n_steps": 13}
        dec = P.decoded_from_reply(h, payloads)
        assert np.array_equal(dec.image, img) and dec.record == {"n_steps": 13}
    assert P.decoded_reply("r", Decoded(img, {}))[1] == P.image_to_bytes(img, "png", 1)
    assert P.decoded_from_reply({**h, "record": None}, payloads).record == {}


def test_a_malformed_reply_is_refused():
    for frames, want in (([], (P.BAD_JSON, "empty reply")),
                         ([b'{"ok":true}'], (P.BAD_VERSION, "reply has protocol version None, expected 1")),
                         ([b'{"v":1.5}'], (P.BAD_VERSION, "reply has protocol version 1.5, expected 1")),
                         ([b'{"v":1}', b"x"], (P.SIZE_MISMATCH, "reply says sizes None but frames have [1] bytes")),
                         ([b'{"v":1,"sizes":[1,2]}', b"x"],
                          (P.SIZE_MISMATCH, "reply says sizes [1, 2] but frames have [1] bytes"))):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_reply(frames)
        assert (e.value.code, e.value.message) == want
    assert P.parse_reply([b'{"v":1}']) == ({"v": 1}, [])


def test_config_id_is_a_digest_of_model_weights_settings_and_limit():
    status = {"model": "tiny", "model_hash": 123, "config": {"T": 50}, "max_request_bytes": 1 << 20, "queue": 3}
    ident = json.dumps({"model": "tiny", "model_hash": 123, "config": {"T": 50}, "max_request_bytes": 1 << 20},
                       sort_keys=True)
    assert P.config_id(status) == hashlib.sha1(ident.encode()).hexdigest()[:12]
    assert P.config_id({**status, "queue": 0}) == P.config_id(status)
    for key, other in (("model", "sd"), ("model_hash", 124), ("config", {"T": 40}), ("max_request_bytes", 1)):
        assert P.config_id({**status, key: other}) != P.config_id(status), key


def test_limits_come_from_the_codec_and_meta_fields_from_latent_meta():
    codec = SimpleNamespace(config=SimpleNamespace(max_pixels=1000, T=40, m=3),
                            c=SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(in_channels=16))))
    assert P.Limits.for_codec(codec, max_header_bytes=10) == P.Limits(max_pixels=1000, T=40, m=3, latent_channels=16,
                                                                      max_header_bytes=10)
    codec.c.unet.config = SimpleNamespace()
    assert P.Limits.for_codec(codec).latent_channels == 4
    assert P.meta_fields() == ["alpha", "latent_shape", "image_size", "k", "T", "guidance", "prompt", "forward",
                               "name", "means", "reduce", "reduce_method", "model_hash"]
    assert P.Limits() == P.Limits(64 << 20, 64 << 10, 4096 * 4096, 50, 5, 4, 1024)


# ---------------------------------------------------------------------- what mutation testing found unchecked
def test_a_good_decode_request_keeps_every_meta_field():
    meta = LatentMeta(alpha=0.5, latent_shape=(4, 8, 8), image_size=(64, 64), k=3, T=50, guidance=0.0, prompt="",
                      forward="random", name="r", means=(0.5, -0.5, 0.25, 0.0), reduce=2, reduce_method="pool",
                      model_hash=0xBEEF)
    req = P.parse_request(P.decode_request("r1", SYMBOLS[:64], meta, 5.0), LIMITS)
    assert req.meta == meta and (req.meta.forward, req.meta.reduce_method, req.meta.model_hash) == (
        "random", "pool", 0xBEEF)
    # a latent whose value count is even though c / h * w is not an integer
    odd = P.Limits(T=50, m=5, latent_channels=3)
    m = LatentMeta(**{**META.to_dict(), "latent_shape": (3, 2, 3), "image_size": (16, 24)})
    assert P.parse_request(P.decode_request("r1", np.zeros(9, np.complex64), m, 0.0), odd).meta.latent_shape == (3, 2, 3)


def test_symbols_are_a_read_only_view_of_the_frame_unless_erasures_were_replaced():
    req = P.parse_request(P.decode_request("r1", SYMBOLS, META, 5.0, np.ones(128, bool)), LIMITS)
    assert not req.symbols.flags.writeable and np.array_equal(req.symbols, SYMBOLS)


def test_mask_values_go_as_zero_or_one():
    frames = P.decode_request("r1", SYMBOLS, META, 5.0, np.array([0, 2, 255, 1] * 32, np.uint8))
    assert frames[2] == bytes([0, 1, 1, 1] * 32)


def test_more_refusals_word_for_word(monkeypatch):
    h = header_of(decode_frames())
    h["sizes"] = [1001]
    assert refusal([json.dumps(h).encode(), bytes(1001)]) == (
        P.SIZE_MISMATCH, "small: symbol frame of 1001 bytes is not a whole number of 8-byte complex64 values")
    assert refusal(P.encode_request("r1", png(4, 4)[:20], "x")) == (P.BAD_IMAGE,
                                                                    "cannot read image x: Truncated File Read")
    assert refusal(decode_frames(v=None)) == (P.BAD_VERSION, "this server speaks protocol version 1: header field "
                                                             "'v' must be 1, got nothing")
    assert refusal(decode_frames(v="v" * 100)) == (P.BAD_VERSION, "this server speaks protocol version 1: header "
                                                                  "field 'v' must be 1, got \"" + "v" * 79)
    assert refusal(with_meta(name=5)) == (P.BAD_META, "image: 'meta.name': Input should be a valid string, got 5")
    with pytest.raises(P.ProtocolError) as e:  # a one-character id is echoed
        P.parse_request(P.make_message({"op": "status", "id": "r"}, [b"x"]), LIMITS)
    assert (e.value.rid, e.value.op) == ("r", "status")
    # Pillow opens no image of zero size; the check behind it, with a stand-in
    for size in ((0, 5), (5, 0)):
        monkeypatch.setattr(P, "open_image", lambda data, size=size: _Opened(size))
        assert refusal(P.encode_request("r1", b"img", "z")) == (
            P.BAD_IMAGE, f"image z has zero size ({size[0]}x{size[1]})")
    monkeypatch.setattr(P, "open_image", lambda data: _Opened((1, 1)))
    assert P.parse_request(P.encode_request("r1", b"img", "z"), LIMITS).image == b"img"


class _Opened:
    def __init__(self, size):
        self.size = size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_two_empty_frames_after_an_empty_identity():
    assert P.split_envelope([b"", b"", b"h"]) == ([b"", b""], [b"h"])


def test_a_decode_reply_names_its_request_and_format():
    img = np.zeros((2, 3, 3), np.uint8)
    h = header_of(P.decoded_reply("r9", Decoded(img, {}), server={"batch": 1}))
    assert h == {"v": 1, "id": "r9", "op": "decode", "ok": True, "record": {},
                 "image": {"format": "png", "height": 2, "width": 3, "channels": 3}, "server": {"batch": 1},
                 "sizes": [len(P.image_to_bytes(img))]}
    big = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    assert P.decoded_reply("r", Decoded(big, {}), png_level=9)[1] == P.image_to_bytes(big, "png", 9) != \
        P.image_to_bytes(big, "png", 0)


def test_config_id_takes_settings_json_cannot_write():
    from pathlib import PurePosixPath
    status = {"model": PurePosixPath("/models/sd15"), "config": {"x": PurePosixPath("a")}}
    ident = json.dumps({"model": "/models/sd15", "model_hash": None, "config": {"x": "a"}, "max_request_bytes": None},
                       sort_keys=True)
    assert P.config_id(status) == hashlib.sha1(ident.encode()).hexdigest()[:12]
