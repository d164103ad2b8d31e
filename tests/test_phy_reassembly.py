"""Chunks back into images (gr_gdmcom.phy.reassembly)."""

import numpy as np
import pytest

from gr_gdmcom.phy import Header, Reassembler, RxFrame, chunk_symbols, noise_var_to_snr_db
from gr_gdmcom.phy.channel import complex_noise


def frames_of(image_id, sym, max_chunk, noise_var=0.1, **hdr):
    parts = chunk_symbols(sym, max_chunk)
    out = []
    for i, p in enumerate(parts):
        h = Header(image_id=image_id, chunk_index=i, chunk_count=len(parts), total_symbols=len(sym),
                   chunk_symbols=len(p), **hdr)
        nv = noise_var if np.isscalar(noise_var) else noise_var[i]
        out.append(RxFrame(header=h, symbols=p.astype(np.complex64), snr_db=noise_var_to_snr_db(nv), noise_var=nv,
                           cfo=0.0, gain=1 + 0j, start=1000 * i))
    return out


def test_complete_image_in_any_order(rng):
    sym = complex_noise(10_000, 1.0, rng)
    frames = frames_of(5, sym, 3000, noise_var=[0.1, 0.2, 0.1, 0.4])
    r = Reassembler()
    out = []
    for i in (2, 0, 3, 1):
        out += r.add(frames[i])
    assert len(out) == 1
    img = out[0]
    assert img.complete and img.missing == [] and img.chunks_received == img.chunks_total == 4
    np.testing.assert_array_equal(img.symbols, sym)
    assert img.mask.all() and img.header.chunk_index == 0
    sizes = [len(f.symbols) for f in frames]
    mean_nv = np.dot(sizes, [0.1, 0.2, 0.1, 0.4]) / 10_000
    assert img.noise_var == pytest.approx(mean_nv) and img.snr_db == pytest.approx(noise_var_to_snr_db(mean_nv))
    assert r.counters["images_complete"] == 1 and r.flush() == []


def test_missing_chunk_gives_masked_partial_image(rng):
    sym = complex_noise(9000, 1.0, rng)
    frames = frames_of(7, sym, 3000)
    r = Reassembler()
    assert r.add(frames[0]) == [] and r.add(frames[2]) == []
    img, = r.flush()
    assert not img.complete and img.missing == [1] and img.chunks_received == 2 and img.chunks_total == 3
    assert not img.mask[3000:6000].any() and img.mask[:3000].all() and img.mask[6000:].all()
    assert not img.symbols[3000:6000].any()
    np.testing.assert_array_equal(img.symbols[6000:], sym[6000:])
    assert r.counters["images_partial"] == 1 and r.counters["images_complete"] == 0


def test_new_image_finalises_previous_and_counts_lost(rng):
    a, b = complex_noise(4000, 1.0, rng), complex_noise(4000, 1.0, rng)
    r = Reassembler()
    fa, fb = frames_of(10, a, 2000), frames_of(13, b, 2000)  # ids 11 and 12 never arrive
    assert r.add(fa[0]) == []
    out = r.add(fb[0])  # another image: image 10 is finalised without its chunk 1
    assert len(out) == 1 and out[0].header.image_id == 10 and out[0].missing == [1]
    out = r.add(fb[1])
    assert len(out) == 1 and out[0].complete
    assert r.counters == dict(images_complete=1, images_partial=1, images_lost=2, chunks_duplicate=0,
                              chunks_inconsistent=0, images_repeated=0, images_idle=0, images_updated=0)


def test_image_received_again_is_returned_as_a_repeat(rng):
    """A retransmission (or a capture replayed twice): the same image ids and headers
    again after they were delivered come out again, numbered, and are not lost images."""
    imgs = {i: complex_noise(4000, 1.0, rng) for i in (5, 6)}
    r, out = Reassembler(), []
    for _ in range(3):
        for i in (5, 6):
            for f in frames_of(i, imgs[i], 2000):
                out += r.add(f)
    assert [(o.header.image_id, o.repeat, o.complete) for o in out] == [
        (5, 0, True), (6, 0, True), (5, 1, True), (6, 1, True), (5, 2, True), (6, 2, True)]
    assert r.counters["images_repeated"] == 4 and r.counters["images_lost"] == 0
    # a new picture under a used id (another alpha) is not a repeat
    alpha = frames_of(5, imgs[5], 2000)[0].header.alpha
    out += [img for f in frames_of(5, imgs[5], 2000, alpha=alpha * 2) for img in r.add(f)]
    assert out[-1].repeat == 0 and r.counters["images_repeated"] == 4
    # the chunk an image was finalised without, arriving late, is the rest of that image, not a repeat:
    # it is returned again, whole, as an update
    late = frames_of(8, imgs[5], 2000)
    out += r.add(late[0]) + r.add(frames_of(9, imgs[6], 2000)[0]) + r.add(late[1])
    assert [(o.header.image_id, o.missing, o.repeat, o.update) for o in out[-3:]] == [
        (8, [1], 0, 0), (9, [1], 0, 0), (8, [], 0, 1)]
    np.testing.assert_array_equal(out[-1].symbols, imgs[5])
    assert r.flush() == [] and r.counters["images_repeated"] == 4


def test_timeout_duplicates_and_inconsistent_chunks(rng):
    sym = complex_noise(6000, 1.0, rng)
    r = Reassembler(timeout_frames=2, finalise_on_new_id=False)
    fr = frames_of(1, sym, 2000, noise_var=[0.5, 0.5, 0.5])
    better = frames_of(1, sym, 2000, noise_var=[0.1, 0.1, 0.1])
    assert r.add(fr[0]) == [] and r.add(better[0]) == []
    assert r.counters["chunks_duplicate"] == 1
    bad = frames_of(1, sym[:10], 2000)[0]
    bad.symbols = bad.symbols[:5]  # does not match its header
    assert r.add(bad) == [] and r.counters["chunks_inconsistent"] == 1
    out = r.add(frames_of(2, sym, 2000)[0])  # third frame without image 1: timeout
    assert len(out) == 1 and out[0].header.image_id == 1 and out[0].chunk_noise_var == {0: 0.1}
    assert out[0].missing == [1, 2]


def test_same_id_with_other_image_fields_starts_a_new_image(rng):
    sym = complex_noise(4000, 1.0, rng)
    r = Reassembler()
    r.add(frames_of(3, sym, 2000, alpha=1.0)[0])
    out = r.add(frames_of(3, sym, 2000, alpha=2.0)[1])  # id reused by another image
    assert len(out) == 1 and out[0].header.alpha == 1.0 and out[0].missing == [1]
    img, = r.flush()
    assert img.header.alpha == 2.0 and img.missing == [0]
    assert Reassembler(max_pending=1, finalise_on_new_id=False).add(frames_of(1, sym, 2000)[0]) == []
    with pytest.raises(ValueError):
        Reassembler(timeout_frames=0)


def test_per_symbol_noise_variances_and_untracked_chunks(rng):
    """Each chunk's symbol_noise_var lands at its symbols (a frame without one: its noise_var),
    erased symbols get 0; chunks not tracked are listed."""
    sym = complex_noise(3000, 1.0, rng)
    frames = frames_of(2, sym, 1000, noise_var=[0.1, 0.2, 0.3])
    frames[0].symbol_noise_var = np.linspace(0.05, 0.15, 1000).astype(np.float32)
    frames[2].tracked = False
    r = Reassembler()
    (img,) = r.add(frames[0]) + r.add(frames[2]) + r.flush()
    np.testing.assert_allclose(img.symbol_noise_var[:1000], np.linspace(0.05, 0.15, 1000), rtol=1e-6)
    assert np.all(img.symbol_noise_var[1000:2000] == 0) and np.allclose(img.symbol_noise_var[2000:], 0.3)
    assert img.untracked == [2] and img.missing == [1]


def test_erased_symbols_are_masked_and_the_image_is_partial(rng):
    """A frame's erased symbols (no signal: a dropout) are masked like a missing chunk's,
    counted, left out of the image's noise estimate, and the image is not complete."""
    sym = complex_noise(3000, 1.0, rng)
    frames = frames_of(4, sym, 1000, noise_var=[0.1, 0.2, 0.1])
    erased = np.zeros(1000, bool)
    erased[100:350] = True
    frames[1].symbols[erased] = 0
    frames[1].erased = erased
    r = Reassembler()
    (img,) = sum((r.add(f) for f in frames), [])
    assert not img.complete and img.missing == [] and img.erased_symbols == 250
    np.testing.assert_array_equal(img.mask, np.concatenate([np.ones(1100, bool), np.zeros(250, bool),
                                                            np.ones(1650, bool)]))
    # the noise over the received symbols: chunk 1's weighs its 750 live ones
    assert img.noise_var == pytest.approx((1000 * 0.1 + 750 * 0.2 + 1000 * 0.1) / 2750)
    assert r.counters["images_partial"] == 1 and r.counters["images_complete"] == 0
    from gr_gdmcom.phy.reassembly import erased_ranges
    assert erased_ranges(~img.mask) == [[1100, 1350]] and erased_ranges(None) == []


def test_of_two_copies_of_a_chunk_the_one_with_fewer_erasures_is_kept(rng):
    """A copy whose live symbols are a little cleaner but half of which were erased loses to a
    whole copy (expected MMSE error: 0.5 x 0.05/1.05 + 0.5 against 0.1/1.1)."""
    sym = complex_noise(2000, 1.0, rng)
    for dropped_first in (True, False):
        dropped = frames_of(6, sym, 1000, noise_var=0.05)[0]  # chunk 0 of 2, twice
        whole = frames_of(6, sym, 1000, noise_var=0.1)[0]
        dropped.erased = np.arange(1000) < 500
        dropped.symbols = np.where(dropped.erased, 0, dropped.symbols).astype(np.complex64)
        r = Reassembler()
        for f in ((dropped, whole) if dropped_first else (whole, dropped)):
            assert r.add(f) == []
        img, = r.flush()
        assert img.erased_symbols == 0 and img.mask[:1000].all() and img.noise_var == pytest.approx(0.1)
        assert r.counters["chunks_duplicate"] == 1


def test_a_frame_of_the_same_id_from_another_picture_or_model_starts_a_new_image():
    """The image key left out the means, the model's fingerprint, guidance and flags: two transmitters
    both starting at image id 0, with equal alpha, merged into one 'complete' image."""
    def frame(idx, **changes):
        h = Header(image_id=0, chunk_index=idx, chunk_count=2, total_symbols=8, chunk_symbols=4,
                   latent_shape=(4, 1, 4), image_size=(8, 8), alpha=1.0, means=(0.1, 0.2, 0.3, 0.4), model_hash=7)
        h = h.replace(**changes)
        return RxFrame(header=h, symbols=np.full(4, idx + 1, np.complex64), snr_db=10.0, noise_var=0.1, cfo=0.0,
                       gain=1.0, start=0)
    for changes in [dict(means=(0.5, 0.2, 0.3, 0.4)), dict(model_hash=9), dict(guidance=2.0), dict(flags=0x20)]:
        r = Reassembler()
        out = r.add(frame(0)) + r.add(frame(1, **changes)) + r.flush()
        assert [(o.chunks_received, o.complete, o.missing) for o in out] == [(1, False, [1]), (1, False, [0])], changes
    r = Reassembler()
    out = r.add(frame(0)) + r.add(frame(1))
    assert [(o.chunks_received, o.complete) for o in out] == [(2, True)]


def test_a_retransmission_after_a_late_chunk_is_still_a_repeat(rng):
    """Image 5 finalised without chunk 1 (image 6 came), chunk 1 arriving late (the rest of 5: it
    comes out again, whole, as update 1), then image 5 sent again: a repeat, as it starts with a chunk
    the image had.  (Once the late chunk's reception replaced what the first had received, {0, 2} by
    {1}, and the retransmission came out as a new image under a reused id.)"""
    a, b = complex_noise(6000, 1.0, rng), complex_noise(6000, 1.0, rng)
    f5, f6 = frames_of(5, a, 2000), frames_of(6, b, 2000)
    r = Reassembler()
    out = r.add(f5[0]) + r.add(f5[2]) + r.add(f6[0]) + r.add(f5[1])
    out += sum((r.add(f) for f in f6[1:] + frames_of(5, a, 2000)), []) + r.flush()
    assert [(o.header.image_id, o.chunks_received, o.repeat, o.update) for o in out] == [
        (5, 2, 0, 0), (6, 1, 0, 0), (5, 3, 0, 1), (6, 3, 0, 1), (5, 3, 1, 0)]
    assert r.counters["images_repeated"] == 1 and r.counters["images_updated"] == 2
    # each image counted once: the updates replaced their partial receptions
    assert r.counters["images_complete"] == 3 and r.counters["images_partial"] == 0


def test_an_image_with_every_symbol_erased_reports_its_chunks_noise_not_100_db(rng):
    """Every received symbol erased: the mean noise over no symbols was 0, reported as 100 dB (a perfect
    channel) for an image of which nothing arrived; now the chunks' own estimates.  A frame without
    symbol_noise_var gets 0 at its erased symbols too (it got its noise_var)."""
    sym = complex_noise(2000, 1.0, rng)
    frames = frames_of(3, sym, 1000, noise_var=[0.1, 0.3])
    for f in frames:
        f.erased = np.ones(1000, bool)
        f.symbols = np.zeros(1000, np.complex64)
    r = Reassembler()
    (img,) = r.add(frames[0]) + r.add(frames[1])
    assert not img.mask.any() and img.erased_symbols == 2000 and not img.complete
    assert img.noise_var == pytest.approx(0.2) and img.snr_db == pytest.approx(noise_var_to_snr_db(0.2))
    assert not img.symbol_noise_var.any()


# --- deadlines: an image whose rest never comes is published while the stream goes on -------------

def _pushed(rx, r, x, piece):
    """Push ``x`` in ``piece``-sample parts; [(stream position when out, image)]."""
    out = []
    for k in range(0, len(x), piece):
        for f in rx.push(x[k:k + piece]):
            out += [(rx.position, img) for img in r.add(f)]
        out += [(rx.position, img) for img in r.idle(rx.position)]
    return out


def _stream(cfg, images, rng, snr_db, silent=()):
    """Bursts of ``images`` ({id: n_symbols}) back to back, the chunks in ``silent`` ((id, chunk))
    sent as silence (lost), then 600 000 samples of noise; the symbols per id; bursts' starts."""
    from gr_gdmcom.phy import FrameTx
    from gr_gdmcom.phy.channel import awgn
    tx, parts, syms, starts, at = FrameTx(cfg), [np.zeros(2000, np.complex64)], {}, {}, 2000
    for image_id, n in images.items():
        syms[image_id] = complex_noise(n, 1.0, rng)
        h = Header(image_id=image_id, latent_shape=(2, 1, n), image_size=(8, 8))
        for i, b in enumerate(tx.frames(syms[image_id], h)):
            starts[image_id, i] = at
            parts += [np.zeros_like(b) if (image_id, i) in silent else b,
                      np.zeros(cfg.gap_symbols * cfg.sps, np.complex64)]
            at += len(b) + cfg.gap_symbols * cfg.sps
    parts.append(np.zeros(600_000, np.complex64))
    return awgn(np.concatenate(parts), snr_db, rng), syms, starts


@pytest.mark.parametrize("timeout", [4.0, 1.0])
def test_the_last_image_without_its_last_chunk_is_published_at_its_deadline_not_at_the_end(rng, timeout):
    from gr_gdmcom.phy import FrameConfig, FrameRx
    cfg = FrameConfig(max_chunk_symbols=1024, image_timeout=timeout)
    x, syms, starts = _stream(cfg, {4: 3000}, rng, 20.0, silent={(4, 2)})
    rx = FrameRx(cfg)
    r = Reassembler(deadline=rx.image_deadline)
    (at, img), = _pushed(rx, r, x, 4096)
    lay = cfg.layout()
    deadline = starts[4, 1] + lay.burst_samples(1000) + int(np.ceil(timeout * lay.burst_samples(1000))) \
        + 4 * lay.burst_samples(0)
    assert deadline <= at < deadline + 4096, (at, deadline)  # the first push past it
    assert at < len(x) - 500_000  # long before the end of the stream
    assert img.missing == [2] and img.chunks_received == 2 and not img.complete
    assert np.abs(img.symbols[:2000] - syms[4][:2000]).mean() < 0.1
    assert r.counters["images_idle"] == 1 and r.counters["images_partial"] == 1
    assert r.flush() == [] and rx.flush() == []


def test_without_a_timeout_the_image_waits_for_the_end_of_the_stream(rng):
    from gr_gdmcom.phy import FrameConfig, FrameRx
    cfg = FrameConfig(max_chunk_symbols=1024, image_timeout=0)
    x, _, _ = _stream(cfg, {4: 3000}, rng, 20.0, silent={(4, 2)})
    rx = FrameRx(cfg)
    r = Reassembler(deadline=rx.image_deadline)
    frames = rx.push(x[:20_000])
    assert frames and [rx.image_deadline(f) for f in frames] == [None] * len(frames)
    assert [i for f in frames for i in r.add(f)] == []
    assert _pushed(rx, r, x[20_000:], 4096) == []
    (img,) = [i for f in rx.flush() for i in r.add(f)] + r.flush()
    assert img.missing == [2] and r.counters["images_idle"] == 0


@pytest.mark.parametrize("sps,chunk,snr_db,piece", [(1, 64, 30.0, 64), (2, 1024, 3.0, 4096), (8, 64, 30.0, 512),
                                                    (8, 1024, 30.0, 64), (4, 4096, 10.0, 4096)])
def test_a_timeout_of_n_bursts_never_splits_an_image_missing_fewer_than_n_in_a_row(rng, sps, chunk, snr_db, piece):
    """The receiver's own delay is in the deadline (at sps 8, 30 dB, 64-symbol chunks a burst was read
    1.7 bursts after its end: the detector waits for a preamble past its peak): with image_timeout 1
    every chunk of an image sent back to back comes before its deadline, and with 2 the chunk after
    a lost one does (a timeout of 1 split that image in two, at 4096-symbol chunks)."""
    from gr_gdmcom.phy import FrameConfig, FrameRx
    for timeout, lost in ((1.0, set()), (2.0, {(1, 1), (2, 1)})):
        cfg = FrameConfig(sps=sps, max_chunk_symbols=chunk, image_timeout=timeout)
        x, syms, _ = _stream(cfg, {1: 3 * chunk, 2: 4 * chunk - 5}, rng, snr_db, silent=lost)
        rx = FrameRx(cfg)
        r = Reassembler(deadline=rx.image_deadline)
        out = [img for _, img in _pushed(rx, r, x, piece)]
        assert [(i.header.image_id, i.missing) for i in out] == [(1, [1] if lost else []), (2, [1] if lost else [])]
        assert r.counters["images_idle"] == (1 if lost else 0)  # image 2, the last: complete without a loss


def test_chunks_arriving_after_the_deadline_publish_the_image_again_whole(rng):
    """More bursts lost (or delayed) in a row than the deadline allows: the image is published at its
    deadline without them, and when they come it is published again with every chunk (update 1),
    not as a second partial image holding only the rest."""
    sym = complex_noise(10_000, 1.0, rng)
    fr = frames_of(3, sym, 1000)  # 10 chunks, chunk i at stream position 1000 i
    r = Reassembler(deadline=lambda f: f.start + 1500)
    assert r.add(fr[0]) + r.add(fr[1]) == [] and r.idle(2499) == []
    first, = r.idle(2500)
    assert (first.update, first.chunks_received, first.missing) == (0, 2, list(range(2, 10)))
    out = sum((r.add(f) for f in fr[2:]), [])
    assert [(o.update, o.complete, o.chunks_received) for o in out] == [(1, True, 10)]
    np.testing.assert_array_equal(out[0].symbols, sym)
    assert out[0].mask.all() and out[0].header.chunk_index == 0 and r.flush() == []
    c = r.counters
    assert (c["images_complete"], c["images_partial"], c["images_idle"], c["images_updated"], c["images_lost"]) == (
        1, 0, 1, 1, 0)


def test_an_update_can_itself_be_updated_and_the_memory_is_bounded(rng):
    from gr_gdmcom.phy.reassembly import UPDATE_MEMORY

    imgs = {i: complex_noise(3000, 1.0, rng) for i in range(UPDATE_MEMORY + 2)}
    fr = {i: frames_of(i, imgs[i], 1000) for i in imgs}
    r = Reassembler()
    out = r.add(fr[0][0]) + r.add(fr[1][0])  # 0 finalised with chunk 0 alone
    out += r.add(fr[0][1])  # 1 finalised; 0 re-opened with chunks 0, 1
    out += r.add(fr[1][2])  # 0 published again (update 1, still without chunk 2); 1 re-opened
    out += r.add(fr[0][2])  # 1 published again (update 1); 0 whole (update 2)
    assert [(o.header.image_id, o.update, o.chunks_received, o.reception) for o in out] == [
        (0, 0, 1, 1), (1, 0, 1, 2), (0, 1, 2, 1), (1, 1, 2, 2), (0, 2, 3, 1)]  # an update: its reception's number
    np.testing.assert_array_equal(out[-1].symbols, imgs[0])
    # UPDATE_MEMORY more partial images later, image 1's last chunk is too late to complete it: it comes
    # out alone, a partial reception of its own, as before updates existed
    for i in range(2, UPDATE_MEMORY + 2):
        out += r.add(fr[i][0])
    out += r.add(fr[1][1]) + r.flush()
    assert [(o.header.image_id, o.update, o.chunks_received) for o in out[-3:]] == [
        (UPDATE_MEMORY, 0, 1), (UPDATE_MEMORY + 1, 0, 1), (1, 0, 1)]
    assert r.counters["images_updated"] == 3
    # ... and, a known image, it is no jump back in the ids: the next image is not 'lost images'
    r.add(frames_of(UPDATE_MEMORY + 2, imgs[0], 1000)[0])
    assert r.counters["images_lost"] == 0


def test_senders_taking_turns_on_one_channel_do_not_split_each_others_images(rng, caplog):
    """Two transmitters (senders 1 and 2) whose bursts interleave, ids 10 and 20 (A0 B0 A1 B1 A2 B2):
    each image is reassembled whole, no id jump is read as lost images.  Without a sender (both 0,
    as before header version 6) each frame finalises the other's image: six images out (four of them
    updates, each decoded), and the id jump 10 -> 20 read as 9 lost images."""
    a, b = complex_noise(6000, 1.0, rng), complex_noise(6000, 1.0, rng)
    for senders, want in (((1, 2), [(1, 10, True), (2, 20, True)]), ((0, 0), None)):
        fa, fb = frames_of(10, a, 2000, sender=senders[0]), frames_of(20, b, 2000, sender=senders[1])
        r, out = Reassembler(), []
        for f, g in zip(fa, fb):
            out += r.add(f) + r.add(g)
        out += r.flush()
        if want is None:
            assert (len(out), sum(o.update > 0 for o in out), r.counters["images_lost"]) == (6, 4, 9)
            continue
        assert [(o.header.sender, o.header.image_id, o.complete) for o in out] == want
        np.testing.assert_array_equal(out[0].symbols, a)
        np.testing.assert_array_equal(out[1].symbols, b)
        assert r.counters["images_lost"] == 0 and r.counters["images_complete"] == 2
    # each sender's ids are its own sequence: sender 1 jumping from 10 to 13 lost 2, sender 2 going on
    # from 20 to 21 none; the log says whose
    r = Reassembler()
    caplog.clear()
    with caplog.at_level("WARNING", logger="gr_gdmcom.phy.reassembly"):
        for image_id, sender in ((10, 1), (20, 2), (13, 1), (21, 2)):
            r.add(frames_of(image_id, a, 6000, sender=sender)[0])
    assert r.counters["images_lost"] == 2
    assert caplog.messages == ["sender 1: images 11..12 lost (no chunk received)"]
    # the same id from two senders: two images
    r = Reassembler()
    out = r.add(frames_of(7, a, 3000, sender=3)[0]) + r.add(frames_of(7, b, 3000, sender=4)[0])
    assert out == []
    out = r.add(frames_of(7, a, 3000, sender=3)[1]) + r.add(frames_of(7, b, 3000, sender=4)[1])
    assert [(o.header.sender, o.complete) for o in out] == [(3, True), (4, True)]
    np.testing.assert_array_equal(out[1].symbols, b)


def test_max_pending_counts_each_senders_images_so_five_senders_can_take_turns(rng):
    """Five transmitters (senders 1-5) taking turns burst by burst: with max_pending over all senders
    (4), each new sender's frame finalised the least recently seen image, partial, and every image
    came out several times (partial, then updates); per sender, each is reassembled once, whole."""
    syms = {s: complex_noise(4000, 1.0, rng) for s in range(1, 6)}
    frames = {s: frames_of(s * 10, syms[s], 1000, sender=s) for s in syms}  # 4 chunks each
    r, out = Reassembler(max_pending=4), []
    for i in range(4):
        for s in syms:
            out += r.add(frames[s][i])
    out += r.flush()
    assert sorted((o.header.sender, o.complete, o.update) for o in out) == [(s, True, 0) for s in range(1, 6)]
    for o in out:
        np.testing.assert_array_equal(o.symbols, syms[o.header.sender])
    # one sender's own images are still limited: 2 open of sender 1 with max_pending 1 finalise the older
    r = Reassembler(max_pending=1, finalise_on_new_id=False)
    assert r.add(frames_of(1, syms[1], 1000, sender=1)[0]) == []
    out = r.add(frames_of(2, syms[2], 1000, sender=1)[0])
    assert [(o.header.image_id, o.complete) for o in out] == [(1, False)]
    assert r.add(frames_of(3, syms[3], 1000, sender=2)[0]) == []  # another sender's: its own limit
