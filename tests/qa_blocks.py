"""QA of the GNU Radio blocks: vector_source -> block -> vector_sink, tags, message ports, bad input."""

import re
import time

import numpy as np
import pmt
import pytest

gr = pytest.importorskip("gnuradio.gr")
from gnuradio import blocks, gr_unittest  # noqa: E402

from gr_gdmcom.blocks import frame_rx, frame_tx, semantic_sink, semantic_source  # noqa: E402
from gr_gdmcom.codec import prompt_hash, select_steps  # noqa: E402
from gr_gdmcom.config import DEFAULT_PROMPT  # noqa: E402
from gr_gdmcom.phy import FrameTx, Header, awgn  # noqa: E402
from gr_gdmcom.pipeline import header_for  # noqa: E402

pytestmark = pytest.mark.gnuradio
TINY = dict(model="tiny", device="cpu")


def _header(image_id=7, shape=(4, 8, 8)):
    return Header(image_id=image_id, latent_shape=shape, image_size=(64, 64), k=5, T=50, forward=0, guidance=6.0,
                  alpha=0.8, prompt_hash=prompt_hash(DEFAULT_PROMPT), total_symbols=int(np.prod(shape)) // 2)


def _symbols(n, seed=0):
    r = np.random.default_rng(seed)
    return ((r.normal(size=n) + 1j * r.normal(size=n)) / np.sqrt(2)).astype(np.complex64)


def _messages(dbg):
    return [dbg.get_message(i) for i in range(dbg.num_messages())]


class qa_frame_blocks(gr_unittest.TestCase):
    def test_frame_tx_tags_and_frame_rx_pdus(self):
        sym = _symbols(128)
        tb = gr.top_block()
        tx = frame_tx(sps=2)
        snk = blocks.vector_sink_c()
        tb.connect(tx, snk)
        meta = pmt.to_pmt(dict(image_id=7, latent_shape=[4, 8, 8], image_size=[64, 64], k=5, T=50, forward=0,
                               guidance=6.0, alpha=0.8, prompt_hash=prompt_hash(DEFAULT_PROMPT), sender=5))
        tx._post(pmt.intern("pdus"), pmt.cons(meta, pmt.init_c32vector(len(sym), sym)))
        tx._post(pmt.intern("pdus"), pmt.cons(pmt.PMT_NIL, pmt.init_u8vector(1, [1])))  # bad PDU: counted
        tx._post(pmt.intern("pdus"), pmt.cons(pmt.to_pmt({"eos": True}), pmt.init_u8vector(0, [])))
        tb.run()
        out = np.asarray(snk.data(), np.complex64)
        tags = {pmt.symbol_to_string(t.key): (t.offset, pmt.to_python(t.value)) for t in snk.tags()}
        expected = FrameTx(tx.frame_config).frames(sym, _header().replace(sender=5))
        self.assertEqual(tags["packet_len"], (0, len(expected[0])))
        self.assertEqual(tags["image_id"], (0, 7))
        np.testing.assert_allclose(out[:len(expected[0])], expected[0], atol=1e-6)
        self.assertEqual(tx.counters(), dict(pdus=1, bad_pdus=1, bursts=1))

        # received at 10 dB through frame_rx: one image PDU with the SNR estimate; the same
        # burst sent again comes out again, marked as a repeat (not a new image)
        rng = np.random.default_rng(1)
        gap = np.zeros(300, np.complex64)
        rx_in = awgn(np.concatenate([gap, out, gap, out, gap]), 10.0, rng)
        tb2 = gr.top_block()
        src = blocks.vector_source_c(rx_in.tolist())
        rx = frame_rx(sps=2)
        dbg = blocks.message_debug()
        tb2.connect(src, rx)
        tb2.msg_connect(rx, "pdus", dbg, "store")
        tb2.run()
        msgs = _messages(dbg)
        self.assertEqual(len(msgs), 2)
        self.assertEqual([pmt.to_python(pmt.car(v))["repeat"] for v in msgs], [0, 1])
        self.assertEqual(rx.counters()["images_repeated"], 1)
        self.assertEqual(rx.counters()["images_complete"], 2)
        m = pmt.to_python(pmt.car(msgs[0]))
        vec = np.asarray(pmt.c32vector_elements(pmt.cdr(msgs[0])))
        self.assertEqual((m["image_id"], m["sender"]), (7, 5))
        self.assertTrue(m["complete"])
        self.assertEqual(list(m["untracked_chunks"]), [])
        self.assertLess(abs(m["snr_db"] - 10.0), 1.0)
        err_db = 10 * np.log10(np.mean(np.abs(vec - sym) ** 2))
        self.assertLess(abs(err_db + 10.0), 1.0)


    def test_frame_blocks_carry_the_removed_means_and_flags(self):
        """A latent sent with its channel means removed (the codec's default) keeps them through
        frame_tx -> frame_rx: without them a receiver would decode a shifted latent silently."""
        from gr_gdmcom.phy.header import MEANS_FLAG
        from gr_gdmcom.pipeline import meta_from_header

        sym = _symbols(128)
        means = [0.5, -0.25, 0.125, 1.0]  # exact in float16
        base = dict(image_id=9, latent_shape=[4, 8, 8], image_size=[64, 64], k=5, T=50, forward=0, guidance=6.0,
                    alpha=0.8, prompt_hash=prompt_hash(DEFAULT_PROMPT))
        tb = gr.top_block()
        tx, rx, dbg = frame_tx(sps=2), frame_rx(sps=2), blocks.message_debug()
        tb.connect(tx, rx)
        tb.msg_connect(rx, "pdus", dbg, "store")
        for extra in (dict(flags=MEANS_FLAG, means=means), dict(flags=MEANS_FLAG)):  # the second lacks its means
            tx._post(pmt.intern("pdus"), pmt.cons(pmt.to_pmt(dict(base, **extra)), pmt.init_c32vector(len(sym), sym)))
        tx._post(pmt.intern("pdus"), pmt.cons(pmt.to_pmt({"eos": True}), pmt.init_u8vector(0, [])))
        tb.run()
        self.assertEqual(tx.counters()["bad_pdus"], 1)
        msgs = _messages(dbg)
        self.assertEqual(len(msgs), 1)
        m = pmt.to_python(pmt.car(msgs[0]))
        self.assertEqual((m["image_id"], m["flags"], list(m["means"])), (9, MEANS_FLAG, means))
        h = Header(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in m.items()
                      if k in Header.__dataclass_fields__})
        self.assertEqual(list(meta_from_header(h, DEFAULT_PROMPT, "x").means), means)


def _source_flowgraph(images, **kw):
    """A Semantic Source (tiny model, sps 2) into a vector sink, its info PDUs into a message_debug:
    ``(top block, source, sink, debug)``."""
    tb = gr.top_block()
    src = semantic_source(images=images, sps=2, tail_symbols=16, **kw, **TINY)
    snk = blocks.vector_sink_c()
    dbg = blocks.message_debug()
    tb.connect(src, snk)
    tb.msg_connect(src, "info", dbg, "store")
    return tb, src, snk, dbg


class qa_semantic_blocks(gr_unittest.TestCase):
    def test_source_tags_bursts_and_reports_unreadable_images(self):
        import tempfile
        from pathlib import Path
        from PIL import Image
        d = Path(tempfile.mkdtemp())
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(d / "a.png")
        (d / "b.png").write_bytes(b"not a png")
        tb, src, snk, dbg = _source_flowgraph(f"{d}/a.png,{d}/b.png,{d}/missing.png")
        tb.run()
        self.assertEqual(src.counters(), dict(images_sent=1, images_failed=2, bursts=1))
        infos = [pmt.to_python(pmt.car(m)) for m in _messages(dbg)]
        self.assertEqual([i["image_id"] for i in infos], [0, 1, 2])
        self.assertIn("cannot read image", infos[1]["error"])
        self.assertIn("image not found", infos[2]["error"])
        # an image not sent has no alpha (it was a NaN, printed as "nan" by the flowgraphs)
        self.assertGreater(infos[0]["alpha"], 0.0)
        self.assertNotIn("alpha", infos[1])
        self.assertNotIn("alpha", infos[2])
        starts = [t.offset for t in snk.tags() if pmt.symbol_to_string(t.key) == "packet_len"]
        self.assertEqual(starts, [0])
        self.assertGreater(len(snk.data()), 1000)

    def test_a_waiting_source_finds_a_file_dropped_into_its_folder(self):
        """wait_for_images on an empty folder: it waited for nothing (the folder was expanded once, at
        construction: 'no images given', the stream ended), and for a missing file it logged every
        second, counted each retry as a failure and took an image id per retry (the file arriving after
        7 s was sent as image 7).  Now: the folder is reported once, the retries are silent, and the
        file copied in later is found and sent with the next id."""
        import shutil
        import tempfile
        import threading
        from pathlib import Path
        d = Path(tempfile.mkdtemp())
        (d / "inbox").mkdir()
        tb, src, snk, dbg = _source_flowgraph(f"{d}/inbox", wait_for_images=True)
        tb.start()
        time.sleep(3.5)  # three retries
        self.assertEqual(src.counters(), dict(images_sent=0, images_failed=1, bursts=0))
        shutil.copy("gr_gdmcom/data/astronaut.png", d / "drop.tmp")  # written, then renamed in: whole
        (d / "drop.tmp").rename(d / "inbox" / "a.png")
        done = threading.Thread(target=tb.wait, daemon=True)
        done.start()
        done.join(60)
        self.assertFalse(done.is_alive(), "the waiting source did not send the dropped file")
        self.assertEqual(src.counters(), dict(images_sent=1, images_failed=1, bursts=1))
        infos = [pmt.to_python(pmt.car(m)) for m in _messages(dbg)]
        self.assertEqual([(i["image_id"], i.get("error", "")[:24]) for i in infos],
                         [(0, "no images in folder " + str(d)[:4]), (1, "")])
        self.assertEqual(infos[1]["name"], "a")

    def test_a_folder_or_glob_that_matches_nothing_is_reported(self):
        """An empty folder or a glob that matches nothing vanished from the list ('no images given'); a
        missing file was reported.  Now all three are, each with what is wrong."""
        import tempfile
        from pathlib import Path
        d = Path(tempfile.mkdtemp())
        tb, src, snk, dbg = _source_flowgraph(f"{d},{d}/nothing*.png,{d}/missing.png")
        tb.run()
        errors = [pmt.to_python(pmt.car(m))["error"] for m in _messages(dbg)]
        self.assertEqual([e.split(" (")[0] for e in errors],
                         [f"no images in folder {d}", f"no image matches {d}/nothing*.png",
                          f"image not found: {d}/missing.png"])

    def test_a_source_that_sends_nothing_writes_no_tail(self):
        """The tail of zeros after the last burst flushes the receiver's filters; with no burst it made a
        ZMQ PUSH sink with no receiver hold tx_zmq open forever."""
        tb = gr.top_block()
        src = semantic_source(images="/nonexistent/missing.png", sps=2, tail_symbols=16, **TINY)
        snk = blocks.vector_sink_c()
        tb.connect(src, snk)
        tb.run()
        self.assertEqual((src.counters()["images_sent"], len(snk.data())), (0, 0))

    def test_settings_that_would_fail_every_image_are_refused_when_the_block_is_built(self):
        """Found by a GNU Radio developer's audit: repeat=-1 sent nothing and ended silently; a file
        pattern `img{idx}.png` decoded every image and then failed it on the name, uncounted."""
        with self.assertRaisesRegex(ValueError, r"^repeat must be >= 0 \(times to send the image list; 0: forever\), "
                                                r"got -1$"):
            semantic_source(images="package:astronaut.png", repeat=-1, **TINY)
        with self.assertRaisesRegex(ValueError, r"^tail_symbols must be >= 0"):
            semantic_source(images="package:astronaut.png", tail_symbols=-5, **TINY)
        with self.assertRaisesRegex(ValueError, r"^reduce must be a power of two in 1..32768 \(the frame header "
                                                r"carries its log2\), got 3$"):
            semantic_source(images="package:astronaut.png", reduce=3, **TINY)
        with self.assertRaisesRegex(ValueError, r"^stop_timeout must be >= 0 seconds, got -1$"):
            semantic_source(images="package:astronaut.png", stop_timeout=-1, **TINY)
        for bad in (128, -1, 2.5, "x"):
            with self.assertRaisesRegex(ValueError, r"^sender_id must be an integer in 0\.\.127 \(7 bits of the frame "
                                                    rf"header\), got {re.escape(repr(bad))}$"):
                semantic_source(images="package:astronaut.png", sender_id=bad, **TINY)
        with self.assertRaisesRegex(ValueError, r"^drain_timeout must be >= 0 seconds, got -1$"):
            semantic_sink(out_dir="", drain_timeout=-1, **TINY)
        src = semantic_source(images="package:astronaut.png", k=46, T=50, **TINY)  # no m of its own to add
        with self.assertRaisesRegex(ValueError, r"^repeat must be >= 0"):
            src.set_repeat(-2)
        with self.assertRaisesRegex(ValueError, r"^filename pattern 'img\{idx\}.png' cannot be filled \(KeyError: "
                                                r"'idx'\); its fields are \{image_id\}, \{name\} and \{sender\}"):
            semantic_sink(out_dir="", filename="img{idx}.png", **TINY)

    def test_a_sink_takes_a_fixed_n_below_its_default_k_plus_m(self):
        """The sink has no k (each header has the transmitter's): N=3 with m=0 was refused against
        the config's default k=5, though right for a transmitter with k=2; too small an N for an
        image's k is that image's error."""
        from gr_gdmcom.codec import GenerativeCodec
        from gr_gdmcom.config import CodecConfig

        sink = semantic_sink(out_dir="", m=0, steps=3, **TINY)
        self.assertEqual((sink.codec_config.steps, sink.codec_config.k), (3, 0))
        enc = GenerativeCodec(CodecConfig(k=5, **TINY)).encode(np.full((16, 16, 3), 90, np.uint8), "x")
        out = GenerativeCodec(CodecConfig(k=0, m=0, steps=3, **TINY)).decode_many([(enc.symbols, enc.meta, 10.0)])
        self.assertEqual(out[0].error, "x: steps N must satisfy k + m <= N <= T, got N=3, k=5, m=0, T=50")

    def test_sink_survives_bad_input_and_decodes_good_bursts(self):
        """Noise only, NaN samples, a burst cut off at the end: counted; the good burst is decoded."""
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        backend = make_backend("local", CodecConfig(**TINY))
        enc = backend.encode(_png_bytes(), name="x")
        tx = FrameTx()
        burst = tx.frames(enc.symbols, header_for(enc.meta, 3))[0]
        rng = np.random.default_rng(5)
        noise_only = np.zeros(20000, np.complex64)
        nan_part = np.full(50, np.nan, np.complex64)
        stream = np.concatenate([noise_only, burst, np.zeros(500, np.complex64), nan_part, np.zeros(500, np.complex64),
                                 burst[: len(burst) // 2]])
        stream = awgn(stream, 12.0, rng)
        stream[20000 + len(burst) + 500: 20000 + len(burst) + 550] = np.nan
        tb = gr.top_block()
        src = blocks.vector_source_c(stream.tolist())
        import tempfile
        out = tempfile.mkdtemp()
        snk = semantic_sink(out_dir=out, **TINY)
        dbg = blocks.message_debug()
        tb.connect(src, snk)
        tb.msg_connect(snk, "images", dbg, "store")
        t0 = time.time()
        tb.run()
        self.assertLess(time.time() - t0, 120)
        c = snk.counters()
        self.assertEqual(c["nonfinite_samples"], 50)
        self.assertEqual(c["truncated"], 1)
        self.assertEqual(c["images_decoded"], 1)
        self.assertEqual(len(snk.results), 1)
        r = snk.results[0]
        self.assertEqual((r["image_id"], r["height"], r["width"]), (3, 40, 48))
        # N is the step rule applied to the *estimated* SNR
        self.assertEqual(r["n_steps"], select_steps(r["snr_est_db"], power=1 / enc.meta.alpha ** 2).n_steps)
        self.assertLess(abs(r["snr_est_db"] - 12.0), 1.0)
        msgs = _messages(dbg)
        self.assertEqual(len(msgs), 1)
        self.assertEqual(pmt.length(pmt.cdr(msgs[0])), 40 * 48 * 3)


def _png_bytes(seed=3):
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3)).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class qa_missing_chunks(gr_unittest.TestCase):
    def test_a_dropout_is_erased_and_the_image_decoded(self):
        """The radio drops 600 samples of a burst and zero-fills them: the sink decodes the image
        with those symbols erased (the receiver once divided them by a gain of 0: NaN symbols,
        'image not decoded'); frame_rx's PDU gives the erased ranges, typed like every list field."""
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig
        big = np.tile(np.arange(128, dtype=np.uint8)[:, None, None] * 2, (1, 128, 3))  # a gradient: 512 symbols
        enc = make_backend("local", CodecConfig(**TINY)).encode(big, name="x")
        self.assertEqual(len(enc.symbols), 512)
        burst, = FrameTx(FrameConfig()).frames(enc.symbols, header_for(enc.meta, 3))
        stream = awgn(np.concatenate([np.zeros(400, np.complex64), burst, np.zeros(3000, np.complex64)]), 15.0,
                      np.random.default_rng(4))
        stream[400 + len(burst) - 900: 400 + len(burst) - 300] = 0  # in the payload's second half
        results = []
        for block in (semantic_sink(out_dir="", **TINY), frame_rx()):
            tb = gr.top_block()
            dbg = blocks.message_debug()
            tb.connect(blocks.vector_source_c(stream.tolist()), block)
            tb.msg_connect(block, "images" if isinstance(block, semantic_sink) else "pdus", dbg, "store")
            tb.run()
            (msg,) = _messages(dbg)
            results.append((block, pmt.car(msg), pmt.to_python(pmt.car(msg))))
        (snk, _, r), (rx, meta, m) = results
        self.assertNotIn("error", r)
        self.assertEqual((r["complete"], r["chunks_received"]), (False, 1))
        self.assertTrue(200 < r["erased_symbols"] < 300, r["erased_symbols"])
        self.assertEqual(snk.counters()["symbols_erased"], r["erased_symbols"])
        self.assertEqual((snk.counters()["images_partial"], snk.counters()["images_decoded"]), (1, 1))
        self.assertGreater(r["snr_est_db"], 13.0)
        self.assertEqual(m["erased_symbols"], r["erased_symbols"])
        (a, b), = [tuple(v) for v in m["erased_ranges"]]
        self.assertEqual(b - a, r["erased_symbols"])
        self.assertTrue(pmt.is_s32vector(pmt.dict_ref(meta, pmt.intern("missing_chunks"), pmt.PMT_NIL)))  # even empty

    def test_a_bug_in_the_receiver_is_logged_counted_and_the_flowgraph_ends(self):
        """An unexpected exception inside the receiver (here a patched one) used to end the
        block's thread, and tb.run() never returned; now it is logged with its traceback,
        counted in internal_errors, the buffered samples dropped, and the block goes on."""
        import logging
        from unittest import mock
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig, FrameRx
        enc = make_backend("local", CodecConfig(**TINY)).encode(_png_bytes(), name="x")
        burst, = FrameTx(FrameConfig()).frames(enc.symbols, header_for(enc.meta, 5))
        stream = awgn(np.concatenate([np.zeros(400, np.complex64), burst, np.zeros(3000, np.complex64)]), 15.0,
                      np.random.default_rng(5))
        for block in (semantic_sink(out_dir="", **TINY), frame_rx()):
            tb, src = gr.top_block(), blocks.vector_source_c(stream.tolist())
            tb.connect(src, block)
            with mock.patch.object(FrameRx, "_payload", side_effect=RuntimeError("boom")):
                with self.assertLogs("gr_gdmcom.blocks", logging.ERROR) as logs:
                    tb.run()  # returns
            self.assertEqual((block.counters()["internal_errors"], block.counters()["frames_out"]), (1, 0))
            self.assertIn("internal error while receiving", logs.output[0])
            self.assertIn("RuntimeError: boom", logs.output[0])  # with its traceback
            src.rewind()
            tb.run()  # the same block receives the next stream normally
            self.assertEqual((block.counters()["internal_errors"], block.counters()["frames_out"]), (1, 1))

    def test_an_image_id_received_again_keeps_both_files(self):
        """Image id 3 sent again -- the same image (a repeated transmission), then another image
        under that id (a restarted transmitter): all are decoded and kept (img00003.png,
        img00003~2.png, img00003~3.png), counted in ids_reused and logged, the repeat as one
        (images_repeated, `repeat` 1) and the other as a warning; the second used to overwrite the
        first silently."""
        import tempfile
        from pathlib import Path
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig
        backend = make_backend("local", CodecConfig(**TINY))
        enc, other = (backend.encode(_png_bytes(seed), name="x") for seed in (3, 4))
        burst, = FrameTx(FrameConfig()).frames(enc.symbols, header_for(enc.meta, 3))
        burst2, = FrameTx(FrameConfig()).frames(other.symbols, header_for(other.meta, 3))
        gap = np.zeros(2000, np.complex64)
        stream = awgn(np.concatenate([gap, burst, gap, burst, gap, burst2, gap]), 15.0, np.random.default_rng(6))
        with tempfile.TemporaryDirectory() as out:
            tb = gr.top_block()
            snk = semantic_sink(out_dir=out, **TINY)
            tb.connect(blocks.vector_source_c(stream.tolist()), snk)
            with self.assertLogs("gr_gdmcom.pipeline", "INFO") as logs:
                tb.run()
            names = ["img00003.png", "img00003~2.png", "img00003~3.png"]
            self.assertEqual(sorted(p.name for p in Path(out).iterdir()), names)
            self.assertEqual([Path(r["file"]).name for r in snk.results], names)
            self.assertEqual([r["repeat"] for r in snk.results], [0, 1, 0])
        self.assertEqual((snk.counters()["ids_reused"], snk.counters()["images_decoded"],
                          snk.counters()["images_repeated"]), (2, 3, 1))
        said = "\n".join(logs.output)
        self.assertIn("INFO:gr_gdmcom.pipeline:sink: image 3 received again (a repeated transmission); written as "
                      "img00003~2.png beside img00003.png", said)
        self.assertIn("WARNING:gr_gdmcom.pipeline:sink: image id 3 received again after its image was decoded "
                      "(a restarted transmitter, or two with one sender id?); written as img00003~3.png", said)

    def test_chunks_that_come_after_the_deadline_publish_the_image_again_over_its_file(self):
        """Chunk 0 of image 9, then silence past its deadline (more bursts lost in a row than
        image_timeout allows): the image is published without chunks 1 and 2.  When they come, it is
        published again whole (`update` 1) and written over img00009.png; it used to come out as a
        second partial image of its own (img00009~2.png, "a restarted transmitter, or two?") holding
        only the rest.  The run's summary counts it once."""
        import tempfile
        from pathlib import Path
        from PIL import Image
        from gr_gdmcom.blocks.flowgraph import summary
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig
        enc = make_backend("local", CodecConfig(**TINY)).encode(_png_bytes(), name="x")  # 60 symbols
        bursts = FrameTx(FrameConfig(max_chunk_symbols=24)).frames(enc.symbols, header_for(enc.meta, 9))
        gap = np.zeros(400, np.complex64)
        stream = awgn(np.concatenate([gap, bursts[0], np.zeros(12 * len(bursts[0]), np.complex64), bursts[1], gap,
                                      bursts[2], gap]), 15.0, np.random.default_rng(4))
        with tempfile.TemporaryDirectory() as out:
            tb, dbg = gr.top_block(), blocks.message_debug()
            snk = semantic_sink(out_dir=out, max_chunk_symbols=24, **TINY)
            tb.connect(blocks.vector_source_c(stream.tolist()), snk)
            tb.msg_connect(snk, "images", dbg, "store")
            with self.assertLogs("gr_gdmcom.pipeline", "INFO") as logs:
                tb.run()
            self.assertEqual([p.name for p in Path(out).iterdir()], ["img00009.png"])
            self.assertEqual([(r["update"], r["chunks_received"], r["missing_chunks"], Path(r["file"]).name)
                              for r in snk.results], [(0, 1, [1, 2], "img00009.png"), (1, 3, [], "img00009.png")])
            first, second = (np.asarray(pmt.to_python(pmt.cdr(m)), np.uint8) for m in _messages(dbg))
            written = np.asarray(Image.open(Path(out) / "img00009.png")).ravel()
            np.testing.assert_array_equal(written, second)
            self.assertGreater(np.abs(written.astype(int) - first).mean(), 1.0)  # not the partial decode
        c = snk.counters()
        self.assertEqual((c["images_idle"], c["images_updated"], c["images_complete"], c["images_partial"],
                          c["ids_reused"], c["images_decoded"]), (1, 1, 1, 0, 0, 2))
        self.assertIn("INFO:gr_gdmcom.pipeline:sink: image 9 again with chunks that came late (update 1); written "
                      "over img00009.png", logs.output)
        d = summary(tb, sink=snk)
        self.assertEqual((d["images"], d["decoded"]), (1, 1))

    def test_two_senders_taking_turns_on_one_channel_each_get_their_images(self):
        """Two transmitters (Sender ID 1 and 2) whose bursts alternate on one channel, the same image
        id 4: the sink decodes each image whole and writes each sender's into its own folder
        (tx1/img00004.png, tx2/img00004.png).  With one sender id each burst finalises the other's
        image and the pair comes out as partial images and updates, each update written over its
        own reception's file (the one with its `reception` number; keyed by sender, id and repeat,
        the first image's update went over the second's file)."""
        import tempfile
        from pathlib import Path
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig
        backend = make_backend("local", CodecConfig(**TINY))
        encs = [backend.encode(_png_bytes(seed), name="x") for seed in (3, 4)]  # 60 symbols each
        tx = FrameTx(FrameConfig(max_chunk_symbols=24))
        gap = np.zeros(400, np.complex64)
        for senders in ((1, 2), (0, 0)):
            a, b = (tx.frames(e.symbols, header_for(e.meta, 4, sender=s)) for e, s in zip(encs, senders))
            stream = awgn(np.concatenate([gap] + [x for pair in zip(a, b) for x in (pair[0], gap, pair[1], gap)]),
                          15.0, np.random.default_rng(9))
            with tempfile.TemporaryDirectory() as out:
                tb = gr.top_block()
                snk = semantic_sink(out_dir=out, max_chunk_symbols=24, **TINY)
                tb.connect(blocks.vector_source_c(stream.tolist()), snk)
                tb.run()
                files = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.png"))
                by_reception = {}
                for r in snk.results:
                    by_reception.setdefault(r["reception"], set()).add(Path(r["file"]).name)
            got = [(r["sender"], r["image_id"], r["complete"], r["update"]) for r in snk.results]
            if senders == (1, 2):
                self.assertEqual(got, [(1, 4, True, 0), (2, 4, True, 0)])
                self.assertEqual(files, ["tx1/img00004.png", "tx2/img00004.png"])
                self.assertEqual(snk.counters()["images_complete"], 2)
            else:
                self.assertGreater(len(got), 2)
                self.assertFalse(all(complete for _, _, complete, _ in got[:2]))
                self.assertEqual(by_reception, {1: {"img00004.png"}, 2: {"img00004~2.png"}})

    def test_two_semantic_sources_taking_turns_through_a_channel_model(self):
        """Two Semantic Sources, Sender ID 1 and 2, image id 0 both, their bursts taking turns (B
        delayed by a burst and a guard, each source leaving 2400-symbol gaps), summed and sent
        through GNU Radio's channel_model (15 dB, CFO) into one Semantic Sink: both images come
        out whole, each in its sender's folder, nothing split, lost or overlapping."""
        import tempfile
        from pathlib import Path
        from gnuradio import channels
        from gr_gdmcom.phy import noise_voltage
        kw = dict(max_chunk_symbols=512, gap_symbols=2400, **TINY)
        with tempfile.TemporaryDirectory() as out:
            tb = gr.top_block()
            a = semantic_source(images="package:astronaut.png", sender_id=1, **kw)  # 4 bursts of 4246 samples
            b = semantic_source(images="package:coffee.png", sender_id=2, **kw)  # 3 of 4110, every 8910
            add, delay = blocks.add_cc(), blocks.delay(gr.sizeof_gr_complex, 4246 + 300)
            ch = channels.channel_model(noise_voltage=noise_voltage(15.0, 2), frequency_offset=0.001, epsilon=1.0,
                                        taps=[1.0], noise_seed=3, block_tags=False)
            snk = semantic_sink(out_dir=out, max_chunk_symbols=512, **TINY)
            tb.connect(a, (add, 0))
            tb.connect(b, delay, (add, 1))
            tb.connect(add, ch, snk)
            tb.run()
            snk.stop()
            files = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.png"))
        self.assertEqual(sorted((r["sender"], r["image_id"], r["complete"], r["chunks_total"]) for r in snk.results),
                         [(1, 0, True, 4), (2, 0, True, 3)])
        self.assertEqual(files, ["tx1/img00000.png", "tx2/img00000.png"])
        c = snk.counters()
        self.assertEqual((c["images_complete"], c["images_partial"], c["images_lost"], c["overlapping"]), (2, 0, 0, 0))
        self.assertTrue(all(abs(r["snr_est_db"] - 15.0) < 1.0 for r in snk.results))

    def test_the_display_caption_names_a_sender_and_an_update(self):
        from gr_gdmcom.blocks.image_display import caption
        meta = dict(image_id=4, name="img00004", snr_est_db=12.04, n_steps=11, chunks_received=3, chunks_total=3,
                    complete=True)
        self.assertEqual(caption(meta, 21.25), "image 4 img00004  |  SNR est 12.0 dB  |  N = 11  |  PSNR 21.2 dB  |  "
                                               "chunks 3/3")
        self.assertEqual(caption(dict(meta, sender=2, update=1), None),
                         "image 4 img00004 (sender 2)  |  SNR est 12.0 dB  |  N = 11  |  chunks 3/3, update 1")

    def test_image_with_a_lost_chunk_is_decoded_and_marked(self):
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig
        enc = make_backend("local", CodecConfig(**TINY)).encode(_png_bytes(), name="x")  # 60 symbols
        cfg = FrameConfig(max_chunk_symbols=24)
        bursts = FrameTx(cfg).frames(enc.symbols, header_for(enc.meta, 9))
        self.assertEqual(len(bursts), 3)
        gap = np.zeros(400, np.complex64)
        stream = awgn(np.concatenate([gap, bursts[0], gap, bursts[2], gap * 0, np.zeros(3000, np.complex64)]),
                      15.0, np.random.default_rng(2))
        tb = gr.top_block()
        snk = semantic_sink(out_dir="", max_chunk_symbols=24, **TINY)
        tb.connect(blocks.vector_source_c(stream.tolist()), snk)
        tb.run()
        (r,) = snk.results
        self.assertEqual((r["chunks_received"], r["chunks_total"], r["complete"], r["missing_chunks"]), (2, 3, False, [1]))
        self.assertEqual(snk.counters()["images_partial"], 1)
        self.assertNotIn("error", r)

    def test_a_live_stream_publishes_an_image_whose_last_chunk_was_lost_without_stopping(self):
        """Over the air the stream never ends: an image whose last burst was lost used to be held
        until the flowgraph stopped (stop() flushed it).  Now both receiving blocks publish it once
        the stream has passed its deadline (FrameConfig.image_timeout), counted in images_idle, while
        the radio (a source that goes on sending noise) keeps running."""
        from gr_gdmcom.bridge.backend import make_backend
        from gr_gdmcom.config import CodecConfig
        from gr_gdmcom.phy import FrameConfig
        enc = make_backend("local", CodecConfig(**TINY)).encode(_png_bytes(), name="x")  # 60 symbols
        bursts = FrameTx(FrameConfig(max_chunk_symbols=24)).frames(enc.symbols, header_for(enc.meta, 9))
        gap = np.zeros(400, np.complex64)
        stream = awgn(np.concatenate([gap, bursts[0], gap, bursts[1], gap, np.zeros_like(bursts[2]),
                                      np.zeros(8192, np.complex64)]), 15.0, np.random.default_rng(8))

        class radio(gr.sync_block):  # the stream, then its noise for ever
            def __init__(self):
                gr.sync_block.__init__(self, name="radio", in_sig=None, out_sig=[np.complex64])
                self.at = 0

            def work(self, input_items, output_items):
                out = output_items[0]
                n = len(out)
                k = np.arange(self.at, self.at + n)
                out[:] = np.where(k < len(stream), stream[np.minimum(k, len(stream) - 1)],
                                  stream[len(stream) - 8192 + (k % 8192)])
                self.at += n
                return n

        for block in (semantic_sink(out_dir="", threaded=True, max_chunk_symbols=24, **TINY), frame_rx()):
            tb, dbg, src = gr.top_block(), blocks.message_debug(), radio()  # (src kept: a Python block)
            tb.connect(src, block)
            tb.msg_connect(block, "images" if isinstance(block, semantic_sink) else "pdus", dbg, "store")
            tb.start()
            try:
                waited = time.monotonic() + 60
                while dbg.num_messages() == 0 and time.monotonic() < waited:
                    time.sleep(0.05)
                (msg,) = _messages(dbg)  # published while the stream goes on
                self.assertEqual(block.counters()["images_idle"], 1)
            finally:
                tb.stop()
                tb.wait()
            m = pmt.to_python(pmt.car(msg))
            self.assertEqual((m["image_id"], m["chunks_received"], m["chunks_total"], list(m["missing_chunks"])),
                             (9, 2, 3, [2]))
            self.assertNotIn("error", m)
            self.assertEqual(len(_messages(dbg)), 1)  # and not again at stop()
