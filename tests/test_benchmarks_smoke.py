"""The benchmarks run unchanged on CPU (tiny model, 64 x 64): smoke runs of bench_gpu.py and bench_serving.py."""

import re
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"


def _script(monkeypatch, capsys, name: str, *args) -> str:
    """benchmarks/``name`` with ``args`` as its command line; its stdout (exit status 0 checked,
    with what it printed when not)."""
    path = BENCH.parent / name
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0, capsys.readouterr()
    return capsys.readouterr().out


def _run(monkeypatch, capsys, *args) -> str:
    """bench_gpu.py with ``args`` as its command line; its stdout (exit status 0 checked)."""
    return _script(monkeypatch, capsys, BENCH.name, *args)


def test_bench_gpu_cpu_smoke(capsys, monkeypatch):
    out = _run(monkeypatch, capsys, "--device", "cpu", "--batch", "1", "--repeat", "1", "--k", "1", "--m", "1",
               "--snr", "20")
    assert "warning" not in out  # the codec and img2img ran the same number of UNet calls
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("fp32"))
    assert row[1] == "1" and float(row[2]) > 0 and float(row[-1]) > 0  # B, images/s, codec/img2img ratio
    assert 0 < float(row[7]) < 1  # TFLOP/s sustained: the tiny model does ~1 GFLOP per image
    assert out.splitlines()[-1].startswith("best: ")


def test_bench_gpu_flops_counts_sd15_arithmetic(capsys, monkeypatch):
    """--flops: the arithmetic per image from SD-1.5's configs on the meta device.  The per-image
    total is the sum written out here from the printed parts (k+m+N guided calls, two samples each,
    plus one VAE encode and one decode), and the UNet count is SD-1.5's known ~0.8 TFLOP per call."""
    out = _run(monkeypatch, capsys, "--flops", "--k", "5", "--m", "5", "--n-steps", "13").splitlines()
    unet, enc, dec = map(float, re.search(r"UNet (\d+) GFLOP .* encode (\d+), decode (\d+) GFLOP", out[0]).groups())
    assert 780 <= unet <= 820
    assert "5+5+13 = 23 UNet calls x 2 (CFG)" in out[1]
    total = float(out[1].split(": ")[1].split()[0])
    assert abs(total - (23 * 2 * unet + enc + dec) / 1e3) < 0.1
    assert out[-1].split()[0] == "12" and abs(float(out[-1].split()[3]) - 12 * total) <= 2


def test_bench_gpu_speed_flags_without_anchor(capsys, monkeypatch):
    """The GPU session's latency flags on CPU: fused QKV and no img2img anchor -> the anchor's columns
    say nan, not a number."""
    out = _run(monkeypatch, capsys, "--device", "cpu", "--batch", "1", "--repeat", "1", "--k", "1", "--m", "1",
               "--snr", "20", "--fuse-qkv", "--no-anchor")
    assert "fused QKV" in out.splitlines()[0] and "warning" not in out
    assert re.search(r"^# B=1: warm-up \(compilation, kernel selection\) \d+ s, not counted$", out, re.M)
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("fp32"))
    assert float(row[2]) > 0 and row[-2:] == ["nan", "nan"]


def test_bench_serving_cpu_smoke(capsys, monkeypatch):
    """benchmarks/bench_serving.py on the tiny model: both schedulings serve every request, the same
    images within float rounding, and the summary lines are there."""
    out = _script(monkeypatch, capsys, "bench_serving.py", "--requests", "6", "--rounds", "1", "--max-batch", "2")
    assert re.search(r"^same outputs: largest grey-level difference step vs batch [01] \(of 255\)$", out, re.M)
    ratio = float(re.search(r"^step-level/batch throughput ratio: ([0-9.]+)$", out, re.M).group(1))
    assert 0.3 < ratio < 3
    rows = [line.split() for line in out.splitlines() if line.startswith(("batch ", "step "))]
    assert len(rows) == 4 and all(float(r[1]) > 0 and float(r[4]) > 0 for r in rows)  # images/s, calls/image


def test_soak_rx_finds_nothing_wrong_in_a_short_soak(capsys, monkeypatch):
    """benchmarks/soak_rx.py on 60 random streams (sps, SNR, faults): the receiver raises nothing,
    delivers no frame of a header not sent, nothing non-finite, loses no clean burst at >= 3 dB and
    estimates each within 3 dB of what its payload got (seeds 160-219 hold seed 166, a clean 30.5 dB
    burst at sps 8 the receiver lost before 812aaf9)."""
    out = _script(monkeypatch, capsys, "soak_rx.py", "--streams", "60", "--seed", "160").splitlines()
    last = re.fullmatch(r"exceptions 0, wrong headers 0, non-finite 0, clean bursts lost at >= 3 dB: 0 of (\d+), "
                        r"estimates more than 3 dB off: 0", out[-1])
    assert last, out[-1]
    assert int(last.group(1)) >= 5  # some clean streams were there to lose
    assert sum(int(line.split("|")[3]) for line in out if line.startswith("| ") and "---" not in line
               and "fault" not in line) > 60  # bursts sent


def test_soak_reassembly_finds_nothing_wrong_in_a_short_soak(capsys, monkeypatch):
    """benchmarks/soak_reassembly.py on 30 random frame streams (losses, duplicates, reorders, restarted,
    interleaved and contradicting transmitters, erasures): no exception, no image out of shape, mixed or
    miscounted (seeds 0-29 hold 5 streams where an image with every symbol erased reported 100 dB
    before 10e69a6)."""
    out = _script(monkeypatch, capsys, "soak_reassembly.py", "--streams", "30", "--seed", "0").splitlines()
    assert re.fullmatch(r"exceptions 0, failing streams 0; [0-9.]+ s", out[-1]), out[-1]
    rows = [line.split() for line in out if line.split() and line.split()[0] in (
        "simple", "restart", "retransmit", "contradict", "interleave", "many_open")]
    assert len(rows) == 6 and sum(int(r[7]) for r in rows) > 1000  # images out


def test_soak_codec_finds_nothing_wrong_in_a_short_soak(capsys, monkeypatch):
    """benchmarks/soak_codec.py, two short windows: 40 random configurations (API and CLI refusals) with
    3 encode -> AWGN -> decode runs from seed 100, and 3 runs from seed 409.  Seed 101 (analytic, an
    80x64 image sent by the random forward: decode_many raised the model's ValueError before 79f30c7)
    and seed 410 (a PIL image in mode La: load_rgb raised Pillow's ValueError before fb54b8d) are in them."""
    for argv in (["--configs", "40", "--runs", "3", "--seed", "100"], ["--configs", "0", "--runs", "3", "--seed", "409"]):
        last = _script(monkeypatch, capsys, "soak_codec.py", *argv).splitlines()[-1]
        m = re.fullmatch(r"configs (\d+) \(refused (\d+), accepted (\d+), .*runs 3 \(passed (\d+), .* findings 0", last)
        assert m, last
        assert int(m.group(4)) >= 1  # something went through the whole link
        if argv[1] == "40":
            assert int(m.group(2)) >= 10 and int(m.group(3)) >= 10  # both refused and accepted settings


def test_soak_server_finds_nothing_wrong_through_a_broker(capsys, monkeypatch):
    """benchmarks/soak_server.py for a few seconds through a Broker: valid, mutated and garbage requests
    from DEALER, REQ and delimiter-less sockets and clients that vanish, each answered with its
    documented reply, counters that add up, no ERROR in the server's log.  Its first message is a frame
    over max_request_bytes + 64 KiB: before e5867e6 the server's connection to the broker was closed
    for good and nothing was answered again (exit 1, 'no reply to a valid encode')."""
    out = _script(monkeypatch, capsys, "soak_server.py", "--seconds", "3", "--threads", "3", "--burst", "20",
                  "--broker").splitlines()
    assert out[-1] == "findings 0", out
    assert re.search(r"\| ok \| \d+ \|", "\n".join(out)) and re.search(r"\| bad_json \| \d+ \|", "\n".join(out))


def test_bench_phy_smoke(capsys, monkeypatch):
    """The receiver's rate benchmark: FrameRx alone, GNU Radio's channel_model, and the two in one
    flowgraph (the frame_rx block), each a positive rate; the receiver counts every burst."""
    out = _script(monkeypatch, capsys, "bench_phy.py", "--bursts", "3", "--symbols", "1024", "--repeat", "1",
                  "--cores", "0", "--off", "notch")
    rates = dict((m.group(1).strip(), (float(m.group(2)), float(m.group(3)))) for m in
                 re.finditer(r"^(.+?)\s+wall\s+([\d.]+) Msps\s+cpu\s+([\d.]+) Msps$", out, re.M))
    assert list(rates) == ["FrameRx, one push", "FrameRx, 8192-sample pushes", "channel_model",
                           "channel_model -> frame_rx"], out
    assert all(w > 0 and c > 0 for w, c in rates.values()) and "off: notch" in out.splitlines()[0]


class _Parsed(Exception):
    """Raised after a benchmark's command line parsed: its flags exist."""


def test_every_gpu_session_stage_command_line_parses(monkeypatch):
    """benchmarks/gpu_session.sh runs only when a GPU is lent, for minutes: a flag renamed in a benchmark
    would cost a stage then.  Each stage's command line goes through its benchmark's own argparse here."""
    import argparse
    import shlex

    text = (BENCH.parent / "gpu_session.sh").read_text().replace("\\\n", " ")
    stages = re.findall(r"^stage (\w+) \$\{T\d:-\d+\} \$PY (benchmarks/\S+\.py) (.*)$", text, re.M)
    assert [s[0] for s in stages] == ["eager_fp16", "eager_bf16", "cudagraphs_b1", "cudagraphs_b16", "serving",
                                      "serving_cudagraphs", "tuned_b1"]
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for name, script, args in stages:
        argv = [str(BENCH.parent.parent / script)] + shlex.split(args.replace('"$MODEL"', "sd15-random"))
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(_Parsed):
            runpy.run_path(argv[0], run_name="__main__")
