"""The GNU Radio link with the model behind a ZMQ inference server, and with the server gone."""

import pytest

pytest.importorskip("gnuradio.gr")

from gr_gdmcom.bridge.server import InferenceServer  # noqa: E402
from gr_gdmcom.config import CodecConfig  # noqa: E402
from gr_gdmcom.link import ChannelConfig, run_link  # noqa: E402
from gr_gdmcom.phy import FrameConfig  # noqa: E402

pytestmark = pytest.mark.gnuradio
TINY = CodecConfig(model="tiny", device="cpu")


@pytest.fixture
def image(tmp_path, small):
    from PIL import Image
    p = tmp_path / "a.png"
    Image.fromarray(small[:48, :40]).save(p)
    return p


def test_link_through_inference_server(tmp_path, image, codec):
    with InferenceServer(codec, bind="tcp://127.0.0.1:0") as srv:
        endpoint = srv.last_endpoint
        run = run_link([str(image)], str(tmp_path / "o"), ChannelConfig(snr_db=12.0, seed=2), TINY, TINY,
                       FrameConfig(), server=endpoint + "?timeout_ms=60000&retries=2")
        assert srv.status()["codec"]["images_decoded"] >= 1
    (r,) = run["results"]
    assert "error" not in r and (r["height"], r["width"]) == (48, 40)
    assert abs(r["snr_est_db"] - 12.0) < 1.0


def test_dead_server_reports_failed_images_and_flowgraph_ends(tmp_path, image):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)  # nothing listens there any more
    ctx.term()
    run = run_link([str(image)], str(tmp_path / "o"), ChannelConfig(snr_db=12.0), TINY, TINY, FrameConfig(),
                   server=f"tcp://127.0.0.1:{port}?timeout_ms=300&retries=1")
    (ev,) = run["tx_events"]
    assert "error" in ev and run["tx_counters"]["images_failed"] == 1
    assert run["results"] == []


def test_sink_with_dead_server_reports_failure_pdu(tmp_path, image, codec):
    import numpy as np
    import pmt
    import zmq
    from gnuradio import blocks, gr

    from gr_gdmcom.blocks import semantic_sink
    from gr_gdmcom.phy import FrameTx, awgn
    from gr_gdmcom.pipeline import header_for

    enc = codec.encode(str(image))
    burst = FrameTx().frames(enc.symbols, header_for(enc.meta, 4))[0]
    x = awgn(np.concatenate([np.zeros(500, np.complex64), burst, np.zeros(3000, np.complex64)]), 15.0,
             np.random.default_rng(0))
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    ctx.term()
    tb = gr.top_block()
    snk = semantic_sink(out_dir="", server=f"tcp://127.0.0.1:{port}?timeout_ms=300&retries=1", model="tiny",
                        device="cpu")
    dbg = blocks.message_debug()
    tb.connect(blocks.vector_source_c(x.tolist()), snk)
    tb.msg_connect(snk, "images", dbg, "store")
    tb.run()
    (r,) = snk.results
    assert r["image_id"] == 4 and "error" in r
    assert snk.counters()["images_failed"] == 1
    meta = pmt.to_python(pmt.car(dbg.get_message(0)))
    assert "error" in meta and meta["counters"]["images_failed"] == 1
