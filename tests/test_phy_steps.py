"""A step in the received level inside a burst (docs/frame-format.md section 6 step 4 and
section 8): a Pluto/AD9361 AGC step, a transmitter's keying ramp -- the preamble, the header
and the first payload symbols 6-20 dB down, then the full level, or the level dropping after
the header.  The channel tracker finds the step in its known symbols' gains
(``sync.level_steps``), fits each side on its own and places the step between two pilots by
the received power, so the burst's estimate and each symbol's reported noise stay honest.

Before (the receiver of 2026-11-29 morning): a step at body symbol 1400, -20 dB before it, 20
dB after, was estimated 5-7 dB optimistic (the ~80 weak header symbols dominated the windows
reaching the first strong pilots; the symbols just after the step were divided by gains 4-7x
too small), and a step inside the header made the estimate 7-11 dB pessimistic."""

import numpy as np
import pytest

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, measure_snr_db, sync

N = 4096
NPRE = 224  # preamble symbols before the body


@pytest.fixture(scope="module")
def sent():
    rng = np.random.default_rng(3)
    pay = ((rng.standard_normal(N) + 1j * rng.standard_normal(N)) / np.sqrt(2)).astype(np.complex64)
    hdr = Header(image_id=1, latent_shape=(4, 32, N // 128), image_size=(256, 256), k=5, T=50, forward=0,
                 guidance=6.0, alpha=1.0, prompt_hash=0, total_symbols=N, chunk_symbols=N, chunk_count=1,
                 chunk_index=0)
    tx = FrameTx(FrameConfig())
    return pay, tx.burst(hdr, pay), tx.layout.burst_map(N).payload


def _stepped(x, at, db, snr_db, seed):
    """The burst with its level ``db`` dB before body symbol ``at`` (db < 0: a step up there) or
    ``-db`` dB after it (db > 0: a step down), then AWGN for ``snr_db`` at the full level."""
    y = x.copy()
    k = (NPRE + at) * 2  # sps 2
    if db < 0:
        y[:k] *= 10 ** (db / 20)
    else:
        y[k:] *= 10 ** (-db / 20)
    y = np.concatenate([np.zeros(500, np.complex64), y, np.zeros(3000, np.complex64)])
    rng = np.random.default_rng(seed)
    n = 10 ** (-snr_db / 20) / np.sqrt(2) * (rng.standard_normal(len(y)) + 1j * rng.standard_normal(len(y)))
    return (y + n).astype(np.complex64)


def _receive(y, step_window=None):
    rx = FrameRx(FrameConfig())
    if step_window is not None:
        rx._step_window = step_window
    (f,) = rx.push(y) + rx.flush()
    return f


@pytest.mark.parametrize("at, db, snr_db", [
    (1400, -20, 20), (1400, -10, 20), (1400, -6, 20),  # the walkthrough's: +5..+7 dB optimistic before
    (1400, -20, 10),                                   # +2.4..+3.7 before
    (1400, 10, 20), (1400, 20, 20),                    # the level dropping after the header
    (600, -20, 20), (600, 20, 10),                     # inside the header: 7-11 dB pessimistic before
    (2500, -10, 20), (2500, 20, 20),                   # a third of the payload in
])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_level_step_leaves_the_estimate_honest(sent, at, db, snr_db, seed):
    pay, x, pay_pos = sent
    f = _receive(_stepped(x, at, db, snr_db, seed))
    act = measure_snr_db(pay, f.symbols)
    assert f.tracked and f.erased is None
    # the burst: within 1 dB either way (the promise of section 8 is +3 dB)
    assert -1.0 <= f.snr_db - act <= 1.0, (f.snr_db, act)
    # the symbols near the step: their errors as large as the noise reported for them, within
    # 3 dB (they were 6-9 dB larger)
    near = np.abs(pay_pos - at) < 64
    if near.any():  # (a step inside the header has none)
        err = np.abs(f.symbols[near] - pay[near]) ** 2
        ratio = 10 * np.log10(err.mean() / f.symbol_noise_var[near].mean())
        assert abs(ratio) <= 3.0, ratio


def test_the_payload_after_a_step_up_gets_its_level(sent):
    """Step up at body 1400, -20 dB before, 20 dB after: the payload got 5 dB before (the
    symbols after the step divided by gains 4-7x too small) and 15.8-15.9 dB now (the 50 payload
    symbols before the step are at 0 dB)."""
    pay, x, _ = sent
    acts = [measure_snr_db(pay, _receive(_stepped(x, 1400, -20, 20.0, s)).symbols) for s in (0, 1)]
    assert min(acts) >= 15.5, acts


@pytest.mark.parametrize("snr_db", [20.0, 10.0])
def test_a_flat_burst_is_unchanged(sent, snr_db):
    """Without a step nothing moves: the same symbols, estimate and reliabilities as the
    tracker that does not look for steps."""
    pay, x, _ = sent
    y = _stepped(x, 1400, 0, snr_db, 7)
    f, f0 = _receive(y), _receive(y, step_window=0)
    assert f.snr_db == f0.snr_db and f.track_span == f0.track_span
    np.testing.assert_array_equal(f.symbols, f0.symbols)
    np.testing.assert_array_equal(f.symbol_noise_var, f0.symbol_noise_var)
    assert abs(f.snr_db - measure_snr_db(pay, f.symbols)) < 0.5


def _known(gain, pos, snr_db, rng, probes=True):
    """Known symbols (unit QPSK on the first 1346 positions, Gaussian probes after) through
    ``gain`` at their positions plus noise: (zk, weight)."""
    ref = np.exp(1j * np.pi / 2 * rng.integers(0, 4, len(pos))).astype(np.complex128)
    if probes:
        late = pos >= 1346
        ref[late] = (rng.standard_normal(late.sum()) + 1j * rng.standard_normal(late.sum())) / np.sqrt(2)
    n = 10 ** (-snr_db / 20) / np.sqrt(2) * (rng.standard_normal(len(pos)) + 1j * rng.standard_normal(len(pos)))
    z = gain * ref + n
    return z * np.conj(ref), np.abs(ref) ** 2


POS = np.concatenate([np.arange(1346), 1346 + 17 * np.arange(1, 400)])


@pytest.mark.parametrize("at, db", [(1400, -20), (1400, -6), (700, 10), (3000, -10)])
def test_level_steps_finds_a_step_between_the_right_known_symbols(at, db):
    rng = np.random.default_rng(11)
    gain = np.where(POS < at, 10 ** (db / 20), 1.0) * np.exp(0.3j)
    zk, w = _known(gain, POS, 20.0, rng)
    (i,) = sync.level_steps(zk, POS, 68, w)
    # between the two known symbols around it, or one probe off (without the received power
    # of the symbols between, a probe of small weight may fit either level)
    assert POS[i - 1] - 17 < at <= POS[i] + 17, (POS[i - 1], POS[i])


@pytest.mark.parametrize("seed", range(4))
def test_level_steps_finds_nothing_in_noise_or_a_smooth_fade(seed):
    """AWGN at 0-20 dB, and a fade (8 sinusoids, fD = 2e-4 / symbol: a fade every ~2500 symbols)
    whose level moves 20 dB and more over the burst: no step."""
    rng = np.random.default_rng(seed)
    for snr_db in (0.0, 10.0, 20.0):
        zk, w = _known(np.ones(len(POS)), POS, snr_db, rng)
        for window in (68, 272):
            assert not len(sync.level_steps(zk, POS, window, w))
    f = 2e-4 * np.cos(2 * np.pi * rng.random(8))
    fade = np.exp(1j * (2 * np.pi * f[:, None] * POS[None, :] + 2 * np.pi * rng.random(8)[:, None])).sum(0) / np.sqrt(8)
    zk, w = _known(fade, POS, 20.0, rng)
    for window in (68, 272):
        assert not len(sync.level_steps(zk, POS, window, w))


def test_a_track_without_steps_is_the_old_one():
    """track_gain with step_window on a still channel: the same gain, window and score as without."""
    rng = np.random.default_rng(5)
    zk, w = _known(np.full(len(POS), 0.7 + 0.2j), POS, 10.0, rng)
    spans = [34, 68, 136, 272, 544, 1088, 2176, 8704]
    a = sync.track_gain(zk, POS, POS[-1] + 1, 0.0, spans, POS >= 1346, w)
    b = sync.track_gain(zk, POS, POS[-1] + 1, 0.0, spans, POS >= 1346, w, step_window=68)
    assert not len(b.steps) and b.step_var is None and a.span == b.span and a.score == b.score
    np.testing.assert_array_equal(a.g, b.g)
