"""The digital baseline's command line, ``python -m gr_gdmcom.eval.digital`` (calibrate, sweep):
output, defaults, help, refusals.  First in digital.py's mutation run (scripts/mutation.py): its
mutants of ``main`` die here in a second instead of after test_digital.py's 12 s."""

import re

import numpy as np
import pytest

pytest.importorskip("py3gpp")
pytest.importorskip("skimage.data")

from gr_gdmcom.eval import digital as dg  # noqa: E402


def _words(text):
    return " ".join(text.split())


@pytest.mark.parametrize("args, tail", [
    (["--help"], "positional arguments: {calibrate,sweep} calibrate measure the MCS thresholds (BLER <= 10 %) sweep run "
                 "an skimage test image through the chain over SNRs options: -h, --help show this help message and "
                 "exit"),
    (["calibrate", "--help"], "--n-symbols N_SYMBOLS [default=2048] --trials TRIALS [default=100] --step STEP SNR "
                              "grid, dB [default=0.25] --seed SEED [default=0] --jobs JOBS processes [default=1] "
                              "--mcs [MCS ...] subset of MCS names [default: all]"),
    (["sweep", "--help"], "--image IMAGE skimage.data image [default='astronaut'] --size SIZE resize to size x size "
                          "[default=256] --bcr BCR n_symbols = bcr*3*size^2 [default=1/96] --snr SNR [SNR ...] dB "
                          "[default=[0, 5, 10, 15, 20]] --codec CODEC [default='hevc'] --mcs MCS [default='adaptive'] "
                          "--trials TRIALS channel realisations per SNR [default=1] --seed SEED [default=0]"),
])
def test_the_commands_help(args, tail, capsys):
    with pytest.raises(SystemExit) as e:
        dg.main(args)
    out = _words(capsys.readouterr().out)
    assert e.value.code == 0 and out.endswith(tail), out
    assert out.startswith(f"usage: python -m gr_gdmcom.eval.digital {(args[0] + ' ') if len(args) > 1 else ''}")
    if len(args) == 1:
        assert "Digital baseline: separate source and channel coding at the semantic codec's budget." in out


def test_the_commands_defaults(monkeypatch, capsys):
    seen = []

    def calibrate(*a, **k):
        seen.append((a, k))
        return {}

    def run(img, n_symbols, snr, rng, **k):
        seen.append((img.size, img.mode, n_symbols, snr, k, rng.integers(1 << 30)))
        return dg.DigitalResult(img, True, k["codec"], 1, 1, "QPSK", 0.5, n_symbols, 0.1, "", "")

    monkeypatch.setattr(dg, "calibrate_thresholds", calibrate)
    monkeypatch.setattr(dg, "run_digital", run)
    assert dg.main(["calibrate"]) == 0
    assert seen.pop() == ((2048, 100, 0.25), dict(seed=0, jobs=1, names=None))
    assert capsys.readouterr().out == "{}\n"
    assert dg.main(["sweep"]) == 0
    first = np.random.default_rng(0).integers(1 << 30)
    assert seen[0] == ((256, 256), "RGB", 2048, 0, dict(codec="hevc", mcs="adaptive"), first)
    assert [s[3] for s in seen] == [0, 5, 10, 15, 20] and len(seen) == 5  # one trial each, one rng for all
    assert capsys.readouterr().out.splitlines()[0] == "# astronaut 256x256, n_symbols=2048, codec=hevc, mcs=adaptive"
    with pytest.raises(SystemExit):
        dg.main([])  # a command is required
    for args in (["calibrate", "--step", "nan"], ["sweep", "--bcr", "inf"], ["sweep", "--snr", "nan"]):
        with pytest.raises(SystemExit):
            dg.main(args)


def test_calibrate_command_prints_each_threshold_and_its_search(capsys):
    assert dg.main(["calibrate", "--n-symbols", "600", "--trials", "3", "--mcs", "qpsk-1/2", "bpsk-1/5"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    # in the ladder's order, whatever order --mcs gave; the search starts at the capacity limit
    assert lines[0].startswith("bpsk-1/5     -5.75 dB   -8.5:1/1 -8.25:1/1 ") and lines[0].endswith(
        " -6.25:1/3 -6:1/2 -5.75:0/3")
    assert lines[1] == "qpsk-1/2      1.25 dB   0:1/1 0.25:1/1 0.5:1/1 0.75:1/1 1:1/1 1.25:0/3"
    assert lines[2:] == ['{"qpsk-1/2": 1.25, "bpsk-1/5": -5.75}']
    assert re.fullmatch(r"# \d+ s\n", err) and int(err.split()[1]) < 600  # the seconds the command took


def test_sweep_command_prints_a_row_per_snr_and_trial(capsys):
    assert dg.main(["sweep", "--size", "64", "--bcr", "0.0833333333", "--snr", "30", "-20", "--codec", "jpeg",
                    "--trials", "2", "--seed", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "# astronaut 64x64, n_symbols=1024, codec=jpeg, mcs=adaptive"
    assert rows[1].split() == ["snr_dB", "mcs", "ok", "q", "bytes", "bpp", "psnr", "s/call", "reason"]
    assert len(rows) == 6
    for row in rows[2:4]:
        assert re.fullmatch(r"    30 64qam-9/10  True    9    656  1\.281  20\.04 +\d+\.\d\d  ", row), row
    for row in rows[4:]:
        assert re.fullmatch(r"   -20   bpsk-1/5 False None      0  0\.000  10\.16 +\d+\.\d\d  budget: budget too "
                            r"small for jpeg: 20 bytes available, lowest quality \(1\) needs 430 bytes at bpsk-1/5, "
                            r"1024 symbols \(SNR -20 dB is below the bpsk-1/5 threshold -6 dB\)", row), row


@pytest.mark.parametrize("args, message", [
    (["sweep", "--image", "nope"], "--image 'nope' is not an image of skimage.data (astronaut, coffee, chelsea, ...)"),
    (["sweep", "--image", "__name__"], "--image '__name__' is not an image of skimage.data (astronaut, coffee, "
                                       "chelsea, ...)"),
    (["sweep", "--size", "7"], "--size must be at least 8 pixels, got 7"),
])
def test_sweep_command_refuses_what_it_cannot_use(args, message, capsys):
    """An unknown image was an AttributeError traceback; size 0 Pillow's ValueError."""
    with pytest.raises(SystemExit) as e:
        dg.main(args)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m gr_gdmcom.eval.digital: error: {message}"


def test_the_commands_numbers_reach_the_functions_as_numbers(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(dg, "calibrate_thresholds", lambda *a, **k: seen.append((a, k)) or {})
    assert dg.main(["calibrate", "--n-symbols", "600", "--trials", "3", "--step", "0.5", "--seed", "4",
                    "--jobs", "2", "--mcs", "bpsk-1/5", "qpsk-1/2"]) == 0
    a, k = seen.pop()
    assert (a, k) == ((600, 3, 0.5), dict(seed=4, jobs=2, names=["bpsk-1/5", "qpsk-1/2"]))
    assert [type(v) for v in (*a, k["seed"], k["jobs"])] == [int, int, float, int, int]


def test_the_help_describes_the_command_in_one_line(capsys):
    with pytest.raises(SystemExit):
        dg.main(["--help"])
    out = capsys.readouterr().out
    head = out.split("positional arguments:")[0]
    assert _words(head) == ("usage: python -m gr_gdmcom.eval.digital [-h] {calibrate,sweep} ... "
                            "Digital baseline: separate source and channel coding at the semantic codec's budget.")


def test_a_grey_image_is_sent_as_rgb_and_size_8_is_the_smallest(monkeypatch, capsys):
    seen = []

    def run(img, n_symbols, snr, rng, **k):
        seen.append((img.size, img.mode))
        return dg.DigitalResult(img, True, k["codec"], 1, 1, "QPSK", 0.5, n_symbols, 0.1, "", "")

    monkeypatch.setattr(dg, "run_digital", run)
    assert dg.main(["sweep", "--image", "camera", "--size", "8", "--snr", "10"]) == 0  # camera is greyscale
    assert seen == [((8, 8), "RGB")]


def test_private_names_of_skimage_data_are_not_images(monkeypatch, capsys):
    import skimage.data

    monkeypatch.setattr(skimage.data, "_private", lambda: np.zeros((8, 8, 3), np.uint8), raising=False)
    with pytest.raises(SystemExit) as e:
        dg.main(["sweep", "--image", "_private"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m gr_gdmcom.eval.digital: error: --image '_private' is not an image of skimage.data "
        "(astronaut, coffee, chelsea, ...)")
