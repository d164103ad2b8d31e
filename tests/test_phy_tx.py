"""Frame configuration, chunking and the burst transmitter (gr_gdmcom.phy.frame / .tx)."""

import numpy as np
import pytest

from gr_gdmcom.phy import FrameConfig, FrameTx, Header, chunk_sizes, chunk_symbols
from gr_gdmcom.phy.channel import complex_noise
from gr_gdmcom.phy.frame import prbs_bits
from gr_gdmcom.phy import conv
from gr_gdmcom.phy.header import HEADER_CODED_BITS


@pytest.mark.parametrize("kw", [dict(sps=0), dict(sps=2.5), dict(rolloff=0.0), dict(rrc_span=7),
                                dict(pilot_spacing=1), dict(max_chunk_symbols=70000), dict(gap_symbols=-1),
                                dict(preamble_seg=15), dict(preamble_reps=10), dict(eq_taps=4),
                                dict(phase_window=0), dict(detect_threshold=1.5), dict(verify_threshold=0.0),
                                dict(cfo_search=4), dict(cfo_search=-1), dict(header_copy=1)])
def test_config_validation(kw):
    with pytest.raises(ValueError, match="FrameConfig"):
        FrameConfig(**kw)


def test_config_defaults_and_cfo_range():
    cfg = FrameConfig()
    assert (cfg.sps, cfg.rolloff, cfg.pilot_spacing, cfg.scramble) == (2, 0.35, 16, True)
    assert cfg.cfo_range == pytest.approx(2.5 / 32)  # (cfo_search + 1/2) / (seg sps) at sps = 2
    assert FrameConfig(sps=1).cfo_range == pytest.approx(2.5 / 16)
    assert FrameConfig(cfo_search=0).cfo_range == pytest.approx(1 / 64)  # the detector alone


def test_prbs_is_maximal_length():
    b = prbs_bits(2 * 32767, 1)
    np.testing.assert_array_equal(b[:32767], b[32767:])  # period 2^15 - 1
    assert abs(int(b[:32767].sum()) - 16384) == 0  # 2^14 ones in a period


def test_chunking_balanced():
    x = np.arange(10_001)
    parts = chunk_symbols(x, 4096)
    assert [len(p) for p in parts] == [3334, 3334, 3333]
    np.testing.assert_array_equal(np.concatenate(parts), x)
    np.testing.assert_array_equal(chunk_sizes(10_001, 3), [3334, 3334, 3333])
    assert len(chunk_symbols(x[:5], 4096)) == 1
    with pytest.raises(ValueError):
        chunk_symbols(x[:0], 10)
    with pytest.raises(ValueError):
        chunk_symbols(x, 0)


@pytest.mark.parametrize("sps", [1, 2, 4])
def test_bursts_have_unit_symbol_energy_and_fields(sps, rng):
    cfg = FrameConfig(sps=sps, max_chunk_symbols=1000)
    lay = cfg.layout()
    tx = FrameTx(cfg)
    sym = complex_noise(2500, 1.0, rng)
    h = Header(image_id=9, latent_shape=(4, 25, 50), alpha=0.7)
    bursts = tx.frames(sym, h)
    assert len(bursts) == 3
    for b, n in zip(bursts, (834, 833, 833)):
        assert b.dtype == np.complex64 and len(b) == lay.burst_samples(n)
        n_sym = (len(b) - 2 * lay.half) // sps
        # unit average energy per symbol: sum |x|^2 over the burst / symbols
        assert np.sum(np.abs(b) ** 2) / n_sym == pytest.approx(1.0, rel=0.05)
        if sps > 1:  # the RRC tails ramp the burst up and down
            assert np.abs(b[0]) < 0.05 and np.abs(b[-1]) < 0.05
    stream = tx.stream(sym, h)
    assert len(stream) == sum(map(len, bursts)) + 2 * cfg.gap_symbols * sps
    assert not np.any(stream[len(bursts[0]): len(bursts[0]) + cfg.gap_symbols * sps])


def test_body_layout_and_payload_scrambling(rng):
    cfg = FrameConfig(sps=1, max_chunk_symbols=100, pilot_spacing=16)
    lay = cfg.layout()
    data_pos, pilot_pos, n_body = lay.body_map(HEADER_CODED_BITS + 100)
    assert len(data_pos) + len(pilot_pos) == n_body
    assert np.all(np.diff(pilot_pos)[:-1] == 17) and pilot_pos[-1] == n_body - 1
    assert len(set(data_pos) | set(pilot_pos)) == n_body
    payload = complex_noise(100, 1.0, rng)
    burst = FrameTx(cfg).burst(Header(chunk_symbols=100, total_symbols=100), payload)
    body = burst[len(lay.preamble):]
    np.testing.assert_array_equal(body[pilot_pos], lay.pilots[: len(pilot_pos)])
    np.testing.assert_allclose(body[data_pos[HEADER_CODED_BITS:]], payload * lay.scrambler[:100], rtol=1e-6)
    hdr = body[data_pos[:HEADER_CODED_BITS]] * np.conj(lay.header_whitening)
    np.testing.assert_allclose(np.abs(hdr.real), 1.0, rtol=1e-6)  # BPSK on the whitening axis
    np.testing.assert_allclose(hdr.imag, 0.0, atol=1e-6)
    plain = FrameTx(FrameConfig(sps=1, max_chunk_symbols=100, pilot_spacing=16, scramble=False))
    body = plain.burst(Header(chunk_symbols=100, total_symbols=100), payload)[len(lay.preamble):]
    np.testing.assert_allclose(body[data_pos[HEADER_CODED_BITS:]], payload)


def test_a_long_payload_carries_a_resync_preamble_and_a_copy_of_the_header_after_2048_symbols(rng):
    """data = coded header, payload[:2048], the coded header rotated, payload[2048:]; pilots
    as before at every 17th body position, except that 224 symbols of resync preamble (the
    preamble's Barker sign cover over a length-16 Zadoff-Chu segment) come before the pilot
    of the block where the copy starts, and everything after moves by 224.  A 2047-symbol
    payload has neither."""
    cfg = FrameConfig(sps=1, max_chunk_symbols=3000)
    lay = cfg.layout()
    h, n = HEADER_CODED_BITS, 3000
    payload = complex_noise(n, 1.0, rng)
    hdr = Header(chunk_symbols=n, total_symbols=n)
    body = FrameTx(cfg).burst(hdr, payload)[len(lay.preamble):]
    d = np.arange(2 * h + n)
    at = (h + 2048) // 16 * 17  # the pilot before data symbol h + 2048's block
    grid = d + d // 16 + 1  # data symbol d's body position without the resync preamble
    data = body[np.where(grid >= at, grid + 224, grid)]
    assert len(body) == 2 * h + n + -(-(2 * h + n) // 16) + 1 + 224
    k = np.arange(16)
    cover = np.cumprod([1, 1, 1, 1, 1, 1, -1, -1, 1, 1, -1, 1, -1, 1])  # Barker-13 products
    np.testing.assert_allclose(body[at: at + 224], np.repeat(cover, 16) * np.tile(np.exp(-1j * np.pi * k * k / 16), 14),
                               atol=1e-5)
    np.testing.assert_allclose(body[at + 224], lay.pilots[at // 17], atol=1e-6)  # the grid resumes with a pilot
    # the copy is the coded header rotated by half its length: copy symbol j = header symbol (j + 633) mod h
    np.testing.assert_array_equal(data[h + 2048: 2 * h + 2048], data[(np.arange(h) + 633) % h])
    hard = (data[:h] * np.conj(lay.header_whitening)).real < 0
    np.testing.assert_array_equal(hard, conv.encode(np.unpackbits(np.frombuffer(hdr.pack(), np.uint8)))[np.arange(h) * 785 % h])
    sent = np.concatenate([data[h: h + 2048], data[2 * h + 2048:]]) * np.conj(lay.scrambler[:n])
    np.testing.assert_allclose(sent, payload, rtol=1e-5, atol=1e-6)
    assert lay.burst_map(2047).copy.size == 0 and lay.burst_map(2048).copy.size == h
    short = FrameTx(cfg).burst(Header(chunk_symbols=2047, total_symbols=2047), payload[:2047])
    assert len(short) == len(lay.preamble) + h + 2047 + -(-(h + 2047) // 16) + 1
    plain = FrameConfig(sps=1, max_chunk_symbols=3000, header_copy=False)  # no copy at any length
    assert len(FrameTx(plain).burst(hdr, payload)) == len(lay.preamble) + h + n + -(-(h + n) // 16) + 1


def test_tx_rejects_bad_input():
    tx = FrameTx(FrameConfig(max_chunk_symbols=10))
    with pytest.raises(ValueError, match="NaN"):
        tx.frames(np.array([1, np.nan], np.complex64), Header())
    with pytest.raises(TypeError):
        tx.frames(np.array(["a", "b"]), Header())
    with pytest.raises(ValueError):
        tx.burst(Header(), np.ones(11, np.complex64))


def test_tx_clip_limits_the_peaks_and_the_receiver_sees_the_distortion(rng):
    """tx_clip = 2: no sample above 2 sqrt(1/sps); the stream's PAPR (1e-4) falls from ~10
    to ~6 dB; through a clean link the payload's distortion (SDR ~27 dB) is what the
    receiver estimates, within 1 dB."""
    from gr_gdmcom.phy import FrameRx, measure_snr_db

    sym = complex_noise(2 * 8192, 1.0, rng)
    plain = FrameTx(FrameConfig()).stream(sym, Header(image_id=1))
    cfg = FrameConfig(tx_clip=2.0)
    x = FrameTx(cfg).stream(sym, Header(image_id=1))
    assert np.abs(x).max() <= 2.0 / np.sqrt(2) + 1e-6

    def papr(v):
        p = np.abs(v[np.abs(v) > 0]) ** 2
        return 10 * np.log10(np.quantile(p, 1 - 1e-4) / p.mean())

    assert papr(plain) > 9.0 and papr(x) < 6.5
    y = np.concatenate([np.zeros(300, np.complex64), x, np.zeros(3000, np.complex64)])
    y = (y + complex_noise(len(y), 1e-5, rng)).astype(np.complex64)
    rx = FrameRx(cfg)
    frames = rx.push(y) + rx.flush()
    chunks = chunk_symbols(sym, 8192)
    assert len(frames) == 2
    for f in frames:
        act = measure_snr_db(chunks[f.header.chunk_index], f.symbols)
        assert 24.0 < act < 30.0 and abs(f.snr_db - act) <= 1.0, (f.snr_db, act)
    with pytest.raises(ValueError, match="tx_clip"):
        FrameConfig(tx_clip=0.5)


def test_published_test_vector_matches_the_transmitter_and_the_receiver_reads_it():
    """docs/frame-vector.json (scripts/frame_vector.py) is what an implementation of docs/frame-format.md
    checks itself against: this transmitter makes it to the last sample, and the receiver reads its
    header and payload back from the published samples alone."""
    import importlib.util
    import json
    from pathlib import Path

    from gr_gdmcom.phy import FrameRx

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("frame_vector", root / "scripts" / "frame_vector.py")
    fv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fv)
    want = json.loads((root / "docs" / "frame-vector.json").read_text())
    assert fv.compare(fv.build(), want) == []
    burst = np.asarray(want["burst"], np.float64) @ np.array([1.0, 1j])
    assert len(burst) == want["burst_samples"] == 3242
    assert bytes.fromhex(want["header_hex"])[:2] == b"GD" and len(want["header_symbols"]) == HEADER_CODED_BITS
    rx = FrameRx(FrameConfig())
    gap = np.zeros(400, np.complex64)
    frames = rx.push(np.concatenate([gap, burst, gap]).astype(np.complex64)) + rx.flush()
    assert len(frames) == 1 and frames[0].header.pack().hex() == want["header_hex"]
    payload = np.asarray(want["payload"]) @ np.array([1.0, 1j])
    assert np.abs(frames[0].symbols - payload).max() < 0.02 and frames[0].snr_db > 40, frames[0].snr_db
    # the comparison notices a changed sample
    bad = dict(want, burst=[list(p) for p in want["burst"]])
    bad["burst"][1000][0] += 1e-5
    assert fv.compare(want, bad) == ["burst differs by up to 1.00e-05"]


def test_header_version_5_bursts_are_read_by_a_receiver_from_before_version_6(rng, monkeypatch):
    """``FrameConfig(header_version=5)``: the transmitter's bursts carry version 5, which a receiver from
    before 2026-11-29 (it read versions 4 and 5) decodes; version-6 bursts it refuses (header_invalid).
    This receiver reads both.  A version-5 transmitter has no sender id."""
    from gr_gdmcom.phy import FrameRx, awgn
    from gr_gdmcom.phy import header as header_mod
    from gr_gdmcom.pipeline import TxPipeline

    sym = complex_noise(3000, 1.0, rng)
    bursts = {}
    for v in (5, 6):
        cfg = FrameConfig(max_chunk_symbols=1500, header_version=v)
        bursts[v] = np.concatenate([np.zeros(300, np.complex64), FrameTx(cfg).stream(sym, Header(image_id=7)),
                                    np.zeros(3000, np.complex64)])

    def receive(x, cfg=FrameConfig(max_chunk_symbols=1500)):
        rx = FrameRx(cfg)
        return rx.push(awgn(x, 20.0, np.random.default_rng(1))) + rx.flush(), rx.counters

    for v, x in bursts.items():
        frames, _ = receive(x)
        assert [(f.header.version, f.header.image_id, f.header.chunk_index) for f in frames] == [(v, 7, 0), (v, 7, 1)]
        np.testing.assert_allclose(np.concatenate([f.symbols for f in frames]), sym, atol=0.5)
    monkeypatch.setattr(header_mod, "READ_VERSIONS", (4, 5))  # the receiver as it was before version 6
    old5, _ = receive(bursts[5])
    old6, counters = receive(bursts[6])
    assert len(old5) == 2 and old6 == [] and counters["header_invalid"] == 2, counters
    with pytest.raises(ValueError, match=r"^FrameConfig: header_version must be 6 \(this version\) or 5 \(for "
                                         r"receivers from before 2026-11-29: no sender id\) \(got header_version=4; "
                                         r"option --header-version\)$"):
        FrameConfig(header_version=4)
    with pytest.raises(ValueError, match=r"^sender_id 3 needs header_version 6: a version-5 header has no sender id "
                                         r"\(0 only\)$"):
        TxPipeline(None, [], FrameConfig(header_version=5), sender=3)


# --------------------------------------------------------------------------- exact edges
# (mutation testing, docs/mutation-testing.md: the messages, the limits and the dtypes below had no
# test that would fail if they changed)
def test_chunking_limits_and_messages():
    assert [c.tolist() for c in chunk_symbols(np.arange(3), 1)] == [[0], [1], [2]]
    with pytest.raises(ValueError) as exc:
        chunk_symbols(np.arange(3), 0)
    assert str(exc.value) == "max_chunk must be >= 1, got 0"
    with pytest.raises(ValueError) as exc:
        chunk_symbols(np.zeros(0), 4)
    assert str(exc.value) == "no symbols to send"


def test_burst_edges_messages_and_dtypes():
    tx = FrameTx(FrameConfig(max_chunk_symbols=10))
    one = tx.burst(Header(image_id=3), [0.5 + 0.5j])  # one symbol, given as a list of Python complex
    assert one.dtype == np.complex64 and len(one) == tx.layout.burst_samples(1)
    np.testing.assert_array_equal(tx.burst(Header(image_id=3), np.array([0.5 + 0.5j], np.complex128)), one)
    for n in (0, 11):
        with pytest.raises(ValueError) as exc:
            tx.burst(Header(), np.ones(n, np.complex64))
        assert str(exc.value) == f"payload must have 1..10 symbols, got {n}"
    # raw header bytes (the hook for corrupted headers) are sent as given
    hdr = Header(image_id=3, flags=0x01)
    sent = FrameTx(FrameConfig(max_chunk_symbols=10)).burst(hdr, np.ones(4, np.complex64))
    np.testing.assert_array_equal(tx.burst(hdr.replace(version=6).pack(), np.ones(4, np.complex64)), sent)
    assert not np.array_equal(tx.burst(hdr.replace(version=6, image_id=4).pack(), np.ones(4, np.complex64)), sent)


@pytest.mark.parametrize("scramble", [True, False])
def test_the_plain_flag_follows_the_scrambler_whatever_the_template_says(scramble):
    """Bit 7 of the flags says whether the payload is scrambled: set by the transmitter from its
    setting, the template's other flag bits kept."""
    from gr_gdmcom.phy.header import PLAIN_FLAG
    tx = FrameTx(FrameConfig(max_chunk_symbols=10, scramble=scramble))
    for flags in (0x01, 0x01 | PLAIN_FLAG):
        want = Header(image_id=3, flags=0x01 | (0 if scramble else PLAIN_FLAG), version=6)
        np.testing.assert_array_equal(tx.burst(Header(image_id=3, flags=flags), np.ones(4, np.complex64)),
                                      tx.burst(want.pack(), np.ones(4, np.complex64)))


def test_clipped_samples_sit_at_the_limit_with_their_phase():
    """tx_clip 1 at sps 2: the limit 1 / sqrt(2) lies under 1, so a sample between the two is clipped
    to the limit too (not scaled by less), its phase kept; the others pass as they were."""
    rng = np.random.default_rng(0)
    sym = complex_noise(500, 1.0, rng)
    plain = FrameTx(FrameConfig(sps=2)).burst(Header(image_id=1), sym)
    x = FrameTx(FrameConfig(sps=2, tx_clip=1.0)).burst(Header(image_id=1), sym)
    limit = 1 / np.sqrt(2)
    over = np.abs(plain) > limit
    assert x.dtype == np.complex64 and over.mean() > 0.05 and (np.abs(plain[over]) < 1).any()
    np.testing.assert_allclose(np.abs(x[over]), limit, rtol=1e-6)
    np.testing.assert_allclose(np.angle(x[over] * np.conj(plain[over])), 0, atol=1e-5)
    np.testing.assert_array_equal(x[~over], plain[~over])


def test_frames_refuse_bad_symbols_in_words_and_count_chunks_up_to_65535(monkeypatch, caplog):
    tx = FrameTx(FrameConfig(max_chunk_symbols=10))
    for bad, kind, msg in ((np.array(["a", "b"]), TypeError, "symbols must be numeric, got dtype <U1"),
                           (np.array([1, np.nan], np.complex64), ValueError, "symbols contain NaN or inf")):
        with pytest.raises(kind) as exc:
            tx.frames(bad, Header())
        assert str(exc.value) == msg
    with caplog.at_level("DEBUG", logger="gr_gdmcom.phy.tx"):
        tx.frames(np.ones(25, np.complex64), Header(image_id=7))
    assert [r.getMessage() for r in caplog.records] == ["image 7: 25 symbols -> 3 bursts"]
    tx1 = FrameTx(FrameConfig(max_chunk_symbols=1))
    monkeypatch.setattr(FrameTx, "burst", lambda self, header, payload: header)  # (the count is what is tested)
    headers = tx1.frames(np.ones(65535, np.complex64), Header(image_id=7))
    assert len(headers) == 65535 and headers[-1].chunk_index == 65534 and headers[-1].chunk_count == 65535
    with pytest.raises(ValueError) as exc:
        tx1.frames(np.ones(65536, np.complex64), Header(image_id=7))
    assert str(exc.value) == "65536 symbols need 65536 chunks (at most 65535)"


def test_a_stream_is_complex64_with_its_gaps():
    cfg = FrameConfig(max_chunk_symbols=10, gap_symbols=3, sps=4)
    tx = FrameTx(cfg)
    bursts = tx.frames(np.ones(25, np.complex64), Header(image_id=2))
    s = tx.stream(np.ones(25, np.complex64), Header(image_id=2))
    gap = np.zeros(12, np.complex64)
    assert s.dtype == np.complex64
    np.testing.assert_array_equal(s, np.concatenate([bursts[0], gap, bursts[1], gap, bursts[2]]))
