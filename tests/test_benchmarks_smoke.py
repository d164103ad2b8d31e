"""benchmarks/bench_gpu.py runs unchanged on CPU (tiny model, 64 x 64): a smoke run of the GPU benchmark."""

import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"


def test_bench_gpu_cpu_smoke(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--device", "cpu", "--batch", "1", "--repeat", "1",
                                      "--k", "1", "--m", "1", "--snr", "20"])
    try:
        runpy.run_path(str(BENCH), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "warning" not in out  # the codec and img2img ran the same number of UNet calls
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("fp32"))
    assert row[1] == "1" and float(row[2]) > 0 and float(row[-1]) > 0  # B, images/s, codec/img2img ratio
    assert out.splitlines()[-1].startswith("best: ")
