"""The one typed configuration (gr_gdmcom.config): CodecConfig's defaults and refusals word for word,
the type check, the server merge, the --bcr arithmetic and the argparse options built from the
dataclasses.  No model, under a second."""

import argparse
import logging
import math
from dataclasses import fields as dc_fields
from fractions import Fraction

import numpy as np
import pytest

from gr_gdmcom.config import (_HELP, CodecConfig, _attribute_docs, add_codec_args, add_frame_args, bcr_arg, bcr_text,
                              check_steps, check_types, codec_config_from_args, config_for_server, finite_complex,
                              finite_float, frame_config_from_args, reduce_for_bcr, server_mismatch, snr_arg)
from gr_gdmcom.phy import FrameConfig


def test_the_defaults_are_the_papers_settings():
    c = CodecConfig()
    assert (c.model, c.device, c.dtype, c.k, c.m, c.T, c.rule, c.rescale, c.guidance, c.prompt, c.forward, c.steps,
            c.clean_end, c.inversion, c.inversion_iters, c.inversion_tol, c.seed, c.max_pixels, c.batch_size,
            c.remove_mean, c.reduce, c.reduce_method) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "auto", "auto", 5, 5, 50, "snr", True, 6.0,
        "High quality, High res, 8K", "ddim", None, "model", "ddim", 3, 1e-4, 0, 4096 * 4096, 8, True, 1, "subset")
    assert c.validate() is c
    d = c.replace(k=7)
    assert d.k == 7 and c.k == 5 and d is not c
    assert c.replace(k=-3).k == -3  # replace does not validate


POOL = ("reduce_method pool (--reduce-method pool) pools 1, 2, 4, 8, 16 values: reduce (--reduce) must be one of "
        "them, got 3; or use reduce_method dct or subset")


@pytest.mark.parametrize("changes, message", [
    (dict(T=0), "T must be in 1..1000, got 0"),
    (dict(T=1001), "T must be in 1..1000, got 1001"),
    (dict(k=-1), "k and m must be >= 0, got k=-1, m=5"),
    (dict(m=-1), "k and m must be >= 0, got k=5, m=-1"),
    (dict(k=46), "k + m must not exceed T: k=46, m=5, T=50"),
    (dict(guidance=100.5), "guidance must be a finite number in 0..100, got 100.5"),
    (dict(guidance=-0.1), "guidance must be a finite number in 0..100, got -0.1"),
    (dict(guidance=math.nan), "guidance must be a finite number in 0..100, got nan"),
    (dict(guidance=math.inf), "guidance must be a finite number in 0..100, got inf"),
    (dict(seed=-1), "seed must be in 0..2**63-1, got -1"),
    (dict(seed=2 ** 63), f"seed must be in 0..2**63-1, got {2 ** 63}"),
    (dict(rule="calibrated:"), "unknown step rule 'calibrated:'; choose one of snr, variance, exact or "
                               "calibrated:PATH (a file made by gdmcom calibrate)"),
    (dict(rule="SNR"), "unknown step rule 'SNR'; choose one of snr, variance, exact or calibrated:PATH (a file "
                       "made by gdmcom calibrate)"),
    (dict(forward="noise"), "unknown forward mode 'noise'; choose one of ddim, random"),
    (dict(clean_end="zero"), "unknown clean_end 'zero'; choose one of model, one, step0"),
    (dict(inversion="exact"), "unknown inversion 'exact'; choose one of ddim, fixed-point"),
    (dict(inversion_iters=0), "inversion_iters must be >= 1, got 0"),
    (dict(inversion_tol=-1e-9), "inversion_tol must be a finite number >= 0, got -1e-09"),
    (dict(inversion_tol=math.nan), "inversion_tol must be a finite number >= 0, got nan"),
    (dict(inversion_tol=math.inf), "inversion_tol must be a finite number >= 0, got inf"),
    (dict(steps=9), "steps N must satisfy k + m <= N <= T, got N=9, k=5, m=5, T=50"),
    (dict(steps=51), "steps N must satisfy k + m <= N <= T, got N=51, k=5, m=5, T=50"),
    (dict(max_pixels=0), "max_pixels must be positive, got 0"),
    (dict(batch_size=0), "batch_size must be >= 1, got 0"),
    (dict(reduce=0), "reduce must be >= 1, got 0"),
    (dict(reduce_method="wavelet"), "unknown reduce_method 'wavelet'; choose one of subset, pool, dct"),
    (dict(reduce_method="pool", reduce=3), POOL),
    # types first: the range checks assume them
    (dict(k=2.5), "k must be an integer, got 2.5"),
    (dict(k=True), "k must be an integer, got True"),
    (dict(steps=12.5), "steps must be an integer (or None), got 12.5"),
    (dict(guidance=np.bool_(True)), "guidance must be a number, got True"),
    (dict(guidance=True), "guidance must be a number, got True"),
    (dict(guidance="6"), "guidance must be a number, got '6'"),
    (dict(remove_mean="no"), "remove_mean must be True or False, got 'no'"),
    (dict(remove_mean=1), "remove_mean must be True or False, got 1"),
    (dict(model=5), "model must be a string, got 5"),
    (dict(T=50.0), "T must be an integer, got 50.0"),
])
def test_each_impossible_setting_is_refused_in_its_words(changes, message):
    with pytest.raises(ValueError) as e:
        CodecConfig(**changes).validate()
    assert str(e.value) == message


@pytest.mark.parametrize("changes", [
    dict(T=1, k=0, m=0), dict(T=1000), dict(k=45), dict(k=0, m=0), dict(guidance=0.0), dict(guidance=100),
    dict(seed=0), dict(seed=2 ** 63 - 1), dict(rule="variance"), dict(rule="exact"), dict(rule="calibrated:x"),
    dict(forward="random"), dict(clean_end="one"), dict(clean_end="step0"), dict(inversion="fixed-point"),
    dict(inversion_iters=1), dict(inversion_tol=0.0), dict(steps=10), dict(steps=50), dict(max_pixels=1),
    dict(batch_size=1), dict(reduce=1000), dict(reduce_method="dct", reduce=3), dict(reduce_method="pool", reduce=16),
    dict(reduce_method="pool", reduce=1), dict(k=np.int64(4)), dict(guidance=6), dict(guidance=np.float32(2.5)),
    dict(rescale=np.bool_(False)), dict(steps=None),
])
def test_each_edge_is_taken(changes):
    c = CodecConfig(**changes).validate()
    assert all(getattr(c, k) == v for k, v in changes.items())


def test_check_steps_alone():
    check_steps(0, 0, 0)
    check_steps(2, 3, 5, 5)
    with pytest.raises(ValueError) as e:
        check_steps(2, 3, 4)
    assert str(e.value) == "k + m must not exceed T: k=2, m=3, T=4"
    with pytest.raises(ValueError) as e:
        check_steps(2, 3, 9, 4)
    assert str(e.value) == "steps N must satisfy k + m <= N <= T, got N=4, k=2, m=3, T=9"


def test_check_types_skips_fields_of_other_types():
    from dataclasses import dataclass

    @dataclass
    class Other:
        a: "list"
        b: "Optional[str]"
        c: "float"

    check_types(Other(a="not a list", b=None, c=1))
    with pytest.raises(ValueError) as e:
        check_types(Other(a=[], b=3, c=1.0))
    assert str(e.value) == "b must be a string (or None), got 3"
    with pytest.raises(ValueError) as e:
        check_types(Other(a=[], b=None, c=None))
    assert str(e.value) == "c must be a number, got None"


# ---------------------------------------------------------------------- a server's settings
def test_the_servers_settings_fill_what_the_command_did_not_give():
    mine = CodecConfig(k=3, m=4, guidance=6.0, device="cpu", batch_size=2)
    server = {"k": 5, "m": 4, "guidance": 7.5, "reduce": 2, "reduce_method": "dct", "device": "cuda", "batch_size": 16,
              "unknown": 1}
    merged, taken = config_for_server(mine, server, given=("k", "bcr"))
    assert (merged.k, merged.m, merged.guidance, merged.reduce, merged.reduce_method) == (3, 4, 7.5, 1, "dct")
    assert (merged.device, merged.batch_size) == ("cpu", 2)  # each side's own
    assert taken == ["guidance=7.5 (here: 6.0)", "reduce_method='dct' (here: 'subset')"]
    assert config_for_server(mine, {}, ()) == (mine, [])
    with pytest.raises(ValueError) as e:
        config_for_server(mine, {"k": 50}, ())
    assert str(e.value) == ("the server's codec configuration is not one this version reads: k + m must not exceed "
                            "T: k=50, m=4, T=50")
    with pytest.raises(ValueError) as e:
        config_for_server(mine, {"k": "5"}, ())
    assert str(e.value) == "the server's codec configuration is not one this version reads: k must be an integer, " \
                           "got '5'"


def test_a_mismatch_is_named_unless_a_request_carries_it():
    mine = CodecConfig(k=3, guidance=6.0, seed=1)
    server = {"k": 5, "guidance": 7.5, "seed": 2, "forward": "ddim", "device": "cuda"}
    assert server_mismatch(mine, server) == ["k=3 (server: 5)", "guidance=6.0 (server: 7.5)"]
    assert server_mismatch(mine, server, carried=("k",)) == ["guidance=6.0 (server: 7.5)"]
    # the seed counts only where a side uses the random forward process
    assert "seed=1 (server: 2)" in server_mismatch(mine, {**server, "forward": "random"})
    assert "seed=1 (server: 2)" in server_mismatch(mine.replace(forward="random"), server)
    assert server_mismatch(mine, {"seed": 2}) == []


# ---------------------------------------------------------------------- --bcr and the argparse types
@pytest.mark.parametrize("text, r", [("1/96", 1), ("1/384", 4), (" 1/192 ", 2), ("1/9600", 100)])
def test_bcr_is_one_over_96_r(text, r):
    assert reduce_for_bcr(text) == r and bcr_text(r) == text.strip()


def test_bcr_takes_a_fraction():
    assert reduce_for_bcr(Fraction(1, 768)) == 8


@pytest.mark.parametrize("text", ["1/100", "1/48", "2/96", "0", "abc", "", "-1/96"])
def test_a_bcr_that_is_not_1_over_96_r_is_refused(text):
    with pytest.raises(ValueError) as e:
        reduce_for_bcr(text)
    assert str(e.value) == f"--bcr must be 1/(96 r) for a whole r >= 1 (1/96, 1/192, 1/384, ...), got {text!r}"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        bcr_arg(text)
    assert str(e.value) == f"must be 1/(96 r) for a whole r >= 1 (1/96, 1/192, 1/384, ...), got {text!r}"


def test_number_types_refuse_in_these_words():
    assert finite_float("2.5") == 2.5 and finite_float("-1e3") == -1000.0
    for text, message in (("x", "not a number: 'x'"), ("nan", "must be a finite number, got 'nan'"),
                          ("-inf", "must be a finite number, got '-inf'")):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            finite_float(text)
        assert str(e.value) == message
    assert snr_arg("-100") == -100.0 and snr_arg("100") == 100.0
    for text in ("100.5", "-101"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            snr_arg(text)
        assert str(e.value) == f"must be within -100..100 dB, got {text}"
    assert finite_complex("-0.1+0.2j") == complex(-0.1, 0.2) and finite_complex("1") == 1
    for text, message in (("j1", "not a complex number: 'j1' (e.g. 1, 0.3j, -0.1+0.2j)"),
                          ("nanj", "must be a finite number, got 'nanj'"), ("inf", "must be a finite number, got 'inf'")):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            finite_complex(text)
        assert str(e.value) == message


# ---------------------------------------------------------------------- options from the dataclasses
def _codec_parser(**kw):
    p = argparse.ArgumentParser(prog="x", exit_on_error=False)
    add_codec_args(p, **kw)
    return p


def test_every_codec_field_is_an_option_with_its_default():
    p = _codec_parser()
    args = p.parse_args([])
    assert codec_config_from_args(args) == CodecConfig()
    args = p.parse_args(["--k", "3", "--no-rescale", "--guidance", "7.5", "--steps", "20", "--rule", "calibrated:c.json",
                         "--forward", "random", "--reduce-method", "dct", "--bcr", "1/384", "--model", "tiny"])
    c = codec_config_from_args(args)
    assert (c.k, c.rescale, c.guidance, c.steps, c.rule, c.forward, c.reduce_method, c.reduce, c.model) == (
        3, False, 7.5, 20, "calibrated:c.json", "random", "dct", 4, "tiny")
    text = p.format_help()
    assert "--inversion-tol INVERSION_TOL" in text and "[default=0.0001]" in text
    assert "{snr,variance,exact,calibrated:PATH}" in text and "--bcr 1/N" in text
    for bad, message in ((["--rule", "fast"], "argument --rule: invalid choice: 'fast' (choose from snr, variance, "
                                              "exact or calibrated:PATH)"),
                         (["--rule", "calibrated:"], "argument --rule: invalid choice: 'calibrated:' (choose from "
                                                     "snr, variance, exact or calibrated:PATH)"),
                         (["--forward", "noise"], "argument --forward: invalid choice: 'noise' (choose from 'ddim', "
                                                  "'random')"),
                         (["--guidance", "nan"], "argument --guidance: must be a finite number, got 'nan'"),
                         (["--bcr", "1/100"], "argument --bcr: must be 1/(96 r) for a whole r >= 1 (1/96, 1/192, "
                                              "1/384, ...), got '1/100'")):
        with pytest.raises(argparse.ArgumentError) as e:
            p.parse_args(bad)
        assert str(e.value) == message


def test_skip_only_and_several_bcrs():
    args = _codec_parser(skip=("k", "reduce")).parse_args([])
    assert not hasattr(args, "k") and not hasattr(args, "bcr") and hasattr(args, "m")
    assert vars(_codec_parser(only=("k", "reduce")).parse_args(["--bcr", "1/192"])) == {"k": 5, "reduce": 1, "bcr": 2}
    args = _codec_parser(only=("k", "reduce"), many_bcr=True).parse_args(["--bcr", "1/192", "1/768"])
    assert vars(args) == {"k": 5, "reduce": 1, "bcr": [2, 8]}
    assert codec_config_from_args(args).reduce == 1  # a list of factors is the caller's (gdmcom sweep)


def test_bcr_and_reduce_must_agree_and_a_method_without_a_reduction_is_warned(caplog):
    p = _codec_parser()
    with pytest.raises(ValueError) as e:
        codec_config_from_args(p.parse_args(["--bcr", "1/384", "--reduce", "2"]))
    assert str(e.value) == "--bcr 1/384 and --reduce 2 disagree; give one of them"
    assert codec_config_from_args(p.parse_args(["--bcr", "1/384", "--reduce", "4"])).reduce == 4
    args = p.parse_args(["--reduce-method", "pool"])
    with caplog.at_level(logging.WARNING, logger="gr_gdmcom.config"):
        codec_config_from_args(args)
        assert not caplog.records  # not given on the command line: nothing to say
        args.given = ("reduce_method",)
        codec_config_from_args(args)
    assert [r.getMessage() for r in caplog.records] == [
        "--reduce-method pool does nothing without --reduce (or --bcr) above 1: the whole latent is sent"]
    caplog.clear()
    args = p.parse_args(["--reduce-method", "pool", "--reduce", "4"])
    args.given = ("reduce_method",)
    codec_config_from_args(args)
    assert not caplog.records


def test_frame_options_come_from_frameconfigs_fields_and_docstring():
    p = argparse.ArgumentParser(prog="x", exit_on_error=False)
    add_frame_args(p, skip=("notch",))
    args = p.parse_args(["--pilot-spacing", "8", "--no-header-copy", "--rolloff", "0.5", "--sps", "4"])
    assert not hasattr(args, "notch")
    cfg = frame_config_from_args(args)
    assert (cfg.pilot_spacing, cfg.header_copy, cfg.rolloff, cfg.sps) == (8, False, 0.5, 4)
    assert frame_config_from_args(p.parse_args([])) == FrameConfig()
    text = " ".join(p.format_help().split())
    assert ("--pilot-spacing PILOT_SPACING P, data symbols between two known pilots: 2..4096, at most 3314 "
            "(MAX_COPY_PILOT_SPACING) with header_copy. [default=16]") in text
    assert "--header-copy, --no-header-copy" in text
    with pytest.raises(ValueError) as e:
        frame_config_from_args(p.parse_args(["--pilot-spacing", "4000"]))
    assert str(e.value).startswith("FrameConfig: pilot_spacing must be in 2..3314 with header_copy")


class _Documented:
    """Title.

    Notes:
        x: a note before the attributes, not one of them.

    Attributes:
        a: first line
            continued here.
         see: a line indented by one more than the names continues the entry.
        b: one line, 5 % of it (an "Attributes:" in the text is text).
          not a field: this line is indented by 2 more than the names.

    Example: not an attribute
        c: after the blank line, under another heading.
    """


def test_attribute_docs_join_continuation_lines_and_stop_at_a_blank_line():
    assert _attribute_docs(_Documented) == {
        "a": "first line continued here. see: a line indented by one more than the names continues the entry.",
        "b": 'one line, 5 % of it (an "Attributes:" in the text is text). not a field: this line is indented by '
             '2 more than the names.',
        "c": "after the blank line, under another heading."}
    assert _attribute_docs(type("D", (), {})) == {}


def _unwrapped(prog):
    return argparse.HelpFormatter(prog, width=100000)  # no wrapping: textwrap breaks lines at hyphens


def test_every_option_has_its_help_and_group():
    p = argparse.ArgumentParser(prog="x", formatter_class=_unwrapped)
    add_codec_args(p)
    add_frame_args(p)
    text = " ".join(p.format_help().split())
    assert "codec: --model MODEL" in text and "phy (burst format; see docs/frame-format.md): --sps SPS" in text
    for f in dc_fields(CodecConfig):
        assert f"{_HELP[f.name]} [default={getattr(CodecConfig(), f.name)!r}]" in text, f.name
    assert ("bandwidth compression ratio 1/(96 r), the same as --reduce r: 1/96 (whole latent), 1/192, 1/384, "
            "1/768 ... [default: --reduce]") in text
    docs = _attribute_docs(FrameConfig)
    for f in dc_fields(FrameConfig):  # every field documented: its help is its docstring entry
        assert f"{' '.join(docs[f.name].split())} [default={getattr(FrameConfig(), f.name)!r}]" in text, f.name
    assert "(14 % of an 8192-symbol burst, 29 % of a 2048-symbol one)" in text  # a % in a docstring survives
    many = argparse.ArgumentParser(prog="x", formatter_class=_unwrapped)
    add_codec_args(many, only=("reduce",), many_bcr=True)
    assert "1/768 ... (several: one setting each) [default: --reduce]" in " ".join(many.format_help().split())


def test_a_skipped_frame_option_leaves_the_others():
    p = argparse.ArgumentParser(prog="x")
    add_frame_args(p, skip=("sps",))
    args = p.parse_args([])
    assert not hasattr(args, "sps") and args.notch is True and args.pilot_spacing == 16
    assert frame_config_from_args(args).sps == 2


def test_a_namespace_without_some_options_takes_the_defaults():
    assert codec_config_from_args(argparse.Namespace(k=3)) == CodecConfig(k=3)
    assert codec_config_from_args(argparse.Namespace(k=3, bcr=4)).reduce == 4  # --bcr without --reduce
