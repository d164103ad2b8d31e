"""Reassembler policy, each rule of its module docstring checked at its boundary: one-chunk
images, chunk indices and counts that do not fit, ties between duplicates, which image the
open-image limit finalises, frame-exact timeouts, lost-image counting and its log."""

import logging

import numpy as np
import pytest

from gr_gdmcom.phy import Header, Reassembler, RxFrame, noise_var_to_snr_db


def frame(image_id, index, count, symbols, noise_var=0.1, total=None):
    total = sum(len(symbols) for _ in range(count)) if total is None else total
    h = Header(image_id=image_id, chunk_index=index, chunk_count=count, total_symbols=total,
               chunk_symbols=len(symbols))
    return RxFrame(header=h, symbols=np.asarray(symbols, np.complex64), snr_db=noise_var_to_snr_db(noise_var),
                   noise_var=noise_var, cfo=0.0, gain=1 + 0j, start=0)


def test_limits_are_checked_with_an_exact_message():
    for bad in (dict(timeout_frames=0), dict(max_pending=0)):
        with pytest.raises(ValueError, match=r"^timeout_frames and max_pending must be >= 1, got (0, 4|64, 0)$"):
            Reassembler(**bad)
    Reassembler(timeout_frames=1, max_pending=1)  # the smallest legal values


def test_one_chunk_image_is_complete():
    img, = Reassembler().add(frame(3, 0, 1, [1, 2j, 3]))
    assert img.complete and img.chunks_total == 1 and list(img.symbols) == [1, 2j, 3]


def test_frames_that_do_not_fit_are_counted_and_logged(caplog):
    r = Reassembler()
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.phy.reassembly"):
        assert r.add(frame(9, 2, 2, [1] * 10, total=20)) == []   # index == count
        assert r.add(frame(9, 0, 0, [], total=0)) == []           # no chunks at all
        assert r.add(frame(9, 0, 0, [1], total=1)) == []
        assert r.add(frame(9, 0, 2, [1] * 9, total=20)) == []     # wrong chunk length
    assert r.counters["chunks_inconsistent"] == 4 and r.flush() == []
    assert caplog.messages[0] == "image 9: chunk 2/2 with 10 symbols does not fit 20 total symbols; dropped"


def test_duplicates_are_counted_and_a_tie_keeps_the_first_copy():
    r = Reassembler()
    r.add(frame(1, 0, 2, [1, 1], 0.2))
    r.add(frame(1, 0, 2, [2, 2], 0.2))  # same noise: the first stays
    r.add(frame(1, 0, 2, [3, 3], 0.3))  # noisier: ignored
    img, = r.add(frame(1, 1, 2, [4, 4], 0.2))
    assert list(img.symbols) == [1, 1, 4, 4] and r.counters["chunks_duplicate"] == 2


def test_open_image_limit_finalises_the_least_recently_seen():
    r = Reassembler(max_pending=2, finalise_on_new_id=False)
    r.add(frame(10, 0, 3, [1]))
    r.add(frame(11, 0, 3, [1]))
    r.add(frame(10, 1, 3, [1]))  # image 10 seen again: 11 is now the oldest
    out = r.add(frame(12, 0, 3, [1]))
    assert [i.header.image_id for i in out] == [11] and not out[0].complete


def test_timeout_counts_frames_exactly():
    r = Reassembler(timeout_frames=2, finalise_on_new_id=False)
    assert r.add(frame(20, 0, 2, [1])) == []
    assert r.add(frame(21, 0, 3, [1])) == []          # image 20: 1 frame without a chunk
    out = r.add(frame(21, 1, 3, [1]))                 # 2 frames: finalised
    assert [i.header.image_id for i in out] == [20]


def test_lost_images_counted_from_id_gaps_and_logged_only_then(caplog):
    r = Reassembler()
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.phy.reassembly"):
        r.add(frame(100, 0, 1, [1]))
        r.add(frame(101, 0, 1, [1]))   # next id: nothing lost, nothing logged
        assert r.counters["images_lost"] == 0 and caplog.messages == []
        r.add(frame(103, 0, 1, [1]))   # gap 2: one lost
    assert r.counters["images_lost"] == 1 and caplog.messages == ["images 102..102 lost (no chunk received)"]


def test_defaults():
    r = Reassembler()
    assert (r.timeout_frames, r.max_pending, r.finalise_on_new_id) == (64, 4, True)


def test_lost_images_accumulate_up_to_the_largest_gap():
    r = Reassembler()
    for i in (100, 103, 106):          # two gaps of 2 lost
        r.add(frame(i, 0, 1, [1]))
    assert r.counters["images_lost"] == 4
    r.add(frame(106 + 256, 0, 1, [1]))  # the largest gap still read as losses
    assert r.counters["images_lost"] == 4 + 255
    r.add(frame(362 + 257, 0, 1, [1]))  # a larger jump: another sender, nothing lost
    assert r.counters["images_lost"] == 259


def test_finalised_counts_mask_type_and_partial_log(caplog):
    r = Reassembler(finalise_on_new_id=False)
    r.add(frame(1, 0, 1, [1]))
    r.add(frame(2, 0, 1, [1]))
    r.add(frame(3, 0, 2, [1], total=2))
    r.add(frame(4, 0, 2, [1], total=2))
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.phy.reassembly"):
        imgs = r.flush()
    assert (r.counters["images_complete"], r.counters["images_partial"]) == (2, 2)
    assert all(i.mask.dtype == bool for i in imgs) and list(imgs[0].mask) == [True, False]
    assert caplog.messages == [f"image {i} finalised with 1 of 2 chunks (missing [1])" for i in (3, 4)]


def test_a_long_list_of_missing_chunks_is_shortened_in_the_log(caplog):
    """One image missing 65534 chunks logged a 448 KB line listing each of them."""
    r = Reassembler(finalise_on_new_id=False)
    r.add(frame(7, 3, 40, [1], total=40))
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.phy.reassembly"):
        img, = r.flush()
    assert img.missing == [i for i in range(40) if i != 3]
    assert caplog.messages == ["image 7 finalised with 1 of 40 chunks (missing [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
                               "... 27 more])"]
