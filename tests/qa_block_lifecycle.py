"""What GNU Radio does to the blocks: stop and start again, missing input, logging.

- ``tb.stop(); tb.wait(); tb.start()`` three times: each run sends and decodes the list
  once (no burst lost, none duplicated by a second encoder thread).
- A missing image with ``repeat = 0``: reported once, then the source ends its stream.
- Python ``logging`` of the pipeline reaches the block's GNU Radio logger once.
"""

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

gr = pytest.importorskip("gnuradio.gr")
pmt = pytest.importorskip("pmt")
from gnuradio import blocks  # noqa: E402

from gr_gdmcom.blocks import semantic_sink, semantic_source  # noqa: E402
from gr_gdmcom.pipeline import expand_images  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model="tiny", device="cpu")
pytestmark = pytest.mark.gnuradio


@pytest.fixture
def png(tmp_path, small):
    from PIL import Image
    path = tmp_path / "astro.png"
    Image.fromarray(small[:40, :48]).save(path)
    return path


def _packet_starts(snk):
    return [t.offset for t in snk.tags() if pmt.symbol_to_string(t.key) == "packet_len"]


def test_source_and_threaded_sink_stopped_and_started_three_times(png):
    tb = gr.top_block()
    src = semantic_source(images=f"{png},{png}", repeat=1, tail_symbols=64, **TINY)
    snk = semantic_sink(out_dir="", threaded=True, max_pending=1, **TINY)
    tap = blocks.vector_sink_c()
    tb.connect(src, snk)
    tb.connect(src, tap)
    # stopped at once, while the first image is being encoded: the next run starts clean
    tb.start()
    tb.stop()
    tb.wait()
    sent_before = src.counters()["images_sent"]
    decoded_before = len(snk.results)
    for _ in range(3):
        tap.reset()
        tb.start()
        tb.wait()  # the source ends its stream after the list
        # one burst per image and run: none lost, none doubled by a second encoder thread
        assert len(_packet_starts(tap)) == 2
    results = snk.results[decoded_before:]
    ids = [r["image_id"] for r in results]
    assert len(ids) == 6 and len(set(ids)) == 6, ids
    assert all("error" not in r and r["complete"] for r in results)
    assert src.counters()["images_sent"] == sent_before + 6
    assert snk.counters()["headers_ok"] >= 6


def test_missing_image_is_reported_once_and_the_source_stops(tmp_path, caplog):
    tb = gr.top_block()
    src = semantic_source(images=str(tmp_path / "missing.png"), repeat=0, tail_symbols=16, **TINY)
    snk = blocks.vector_sink_c()
    tb.connect(src, snk)
    with caplog.at_level(logging.DEBUG, logger="gr_gdmcom"):
        tb.run()  # repeat 0 (forever), yet it ends: nothing could be sent
    assert src.counters() == dict(images_sent=0, images_failed=1, bursts=0)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in loud] == ["WARNING", "ERROR"], [r.getMessage() for r in loud]
    assert f"image not found: {tmp_path / 'missing.png'}" in loud[0].getMessage()
    assert "none of the 1 image(s) could be sent" in loud[1].getMessage()
    assert len(snk.data()) == 0  # not even the tail of zeros (qa_blocks: ...sends_nothing_writes_no_tail)


def test_package_images_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (astro,) = expand_images("package:astronaut.png")
    assert astro.is_file() and astro.parent.name == "data" and astro.parent.parent.name == "gr_gdmcom"
    assert [p.name for p in expand_images("package:")] == ["astronaut.png", "coffee.png"]


def test_pipeline_warnings_reach_the_blocks_gnuradio_logger_once(tmp_path):
    """In a flowgraph script (Python logging not configured) a missing image is one line on
    GNU Radio's log, under the source block's name."""
    script = textwrap.dedent(f"""
        from gnuradio import gr, blocks
        from gr_gdmcom.blocks import semantic_source
        tb = gr.top_block()
        src = semantic_source(images={str(tmp_path / 'gone.png')!r}, repeat=0, tail_symbols=16, model="analytic")
        tb.connect(src, blocks.null_sink(gr.sizeof_gr_complex))
        tb.run()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (r.stdout + r.stderr).splitlines()
    missing = [line for line in lines if "image not found" in line]
    assert len(missing) == 1, lines
    assert "gdmcom_semantic_source" in missing[0] and "warning" in missing[0].lower()
    stops = [line for line in lines if "could be sent" in line]
    assert len(stops) == 1 and "error" in stops[0].lower()
