#!/usr/bin/env python3
"""Mutation testing of chosen modules with mutmut, one module at a time, only that module's tests.

    .venv/bin/python scripts/mutation.py schedule            # one module
    .venv/bin/python scripts/mutation.py schedule metrics    # several, one after the other
    .venv/bin/python scripts/mutation.py --list              # the table below
    .venv/bin/python scripts/mutation.py --show schedule     # diffs of its surviving mutants

Not part of CI (minutes to an hour per module).  Each module runs in its own scratch copy
of the repository (``build/mutation/<name>/``: mutmut writes a ``mutants/`` tree next to the
sources), with mutmut configured to mutate that one file and to run only the test files
listed for it, one child process, a per-mutant timeout of mutmut's (15 x the test's clean
time + 1 s).  Prints and writes ``build/mutation/<name>/score.json``: killed, survived,
timeouts, no-tests, and the score killed / (total - equivalent) where the equivalent
mutants are those listed in ``EQUIVALENT`` below (reviewed by hand, see
docs/mutation-testing.md).  Needs ``pip install mutmut`` (the ``mutation`` extra).

Modules in ``EVERY_TEST`` (``core``) run each mutant against every test of their list instead
of mutmut's per-function selection, in two passes (``FAST_FILES``); ``--resume`` continues a
stopped run, ``--jobs N`` tests N mutants at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent

#: Tests of tests/test_mutation_regressions.py that exercise codec/core.py (the GNU Radio, sweep,
#: metric and server ones only reach it through slower paths the others already cover).
_CORE_K = ["-k", "decoder or erased or batch_mixing or timestep or test_codec"]  # test_codec*.py whole

_SCHEDULE_K = ["-k", "test_schedule or power or grid or timestep"]

#: server.py: not the tests that run the server in a subprocess (mutmut never maps a mutant to them: a
#: child process's calls are not recorded; 18 s of the 33 s), nor the regression tests of other modules.
_SERVER_K = ["-k", "not (process_killed or gdmcom_serve_command or gdmcom_broker_command or "
                   "(test_mutation_regressions and not server_refuses))"]

#: name -> (file to mutate, test files that exercise it[, extra pytest arguments]).
MODULES = {
    "schedule": ("gr_gdmcom/codec/schedule.py", ["tests/test_schedule.py", "tests/test_schedule_reference.py",
                                                 "tests/test_mutation_regressions.py"], _SCHEDULE_K),
    "core": ("gr_gdmcom/codec/core.py", ["tests/test_codec_core.py", "tests/test_codec_reference.py",
                                         "tests/test_codec.py", "tests/test_codec_fidelity.py",
                                         "tests/test_mutation_regressions.py"], _CORE_K),
    "metrics": ("gr_gdmcom/eval/metrics.py", ["tests/test_eval_metrics.py", "tests/test_mutation_regressions.py",
                                              "tests/test_eval_report.py"]),
    "snr": ("gr_gdmcom/phy/snr.py", ["tests/test_phy_snr_channel.py", "tests/test_phy_snr_reference.py"]),
    "reassembly": ("gr_gdmcom/phy/reassembly.py", ["tests/test_phy_reassembly.py",
                                                   "tests/test_phy_reassembly_reference.py"]),
    "server": ("gr_gdmcom/bridge/server.py", ["tests/test_server_mutants.py", "tests/test_bridge.py",
                                              "tests/test_mutation_regressions.py"], _SERVER_K),
    "header": ("gr_gdmcom/phy/header.py", ["tests/test_phy_header.py", "tests/test_header_images_mutants.py",
                                           "tests/test_phy_tx.py", "tests/test_phy_rx.py"]),
    "notch": ("gr_gdmcom/phy/notch.py", ["tests/test_phy_notch.py"]),
    "conv": ("gr_gdmcom/phy/conv.py", ["tests/test_phy_conv.py", "tests/test_phy_header.py"]),
    "tx": ("gr_gdmcom/phy/tx.py", ["tests/test_phy_tx.py"]),
    "frame": ("gr_gdmcom/phy/frame.py", ["tests/test_phy_frame.py", "tests/test_phy_tx.py"]),
    "protocol": ("gr_gdmcom/bridge/protocol.py", ["tests/test_protocol.py"]),
    "rate": ("gr_gdmcom/codec/rate.py", ["tests/test_rate.py"]),
    "channel": ("gr_gdmcom/phy/channel.py", ["tests/test_phy_snr_channel.py"]),
    "config": ("gr_gdmcom/config.py", ["tests/test_config.py"]),
    "security": ("gr_gdmcom/bridge/security.py", ["tests/test_security.py"]),
    "servermetrics": ("gr_gdmcom/bridge/metrics.py", ["tests/test_server_metrics.py"]),
    "calibration": ("gr_gdmcom/codec/calibration.py", ["tests/test_calibration.py"]),
    "digital": ("gr_gdmcom/eval/digital.py", ["tests/test_digital_cli.py", "tests/test_digital.py"]),
    "stepper": ("gr_gdmcom/codec/stepper.py", ["tests/test_stepper.py", "tests/test_batch_isolation.py"]),
    "sourcecodecs": ("gr_gdmcom/eval/source_codecs.py", ["tests/test_source_codecs.py"]),
    "analytic": ("gr_gdmcom/codec/analytic.py", ["tests/test_analytic_parts.py", "tests/test_analytic.py"]),
    "images": ("gr_gdmcom/codec/images.py", ["tests/test_header_images_mutants.py", "tests/test_codec.py",
                                             "tests/test_analytic.py", "tests/test_validate.py"]),
}

#: Mutants reviewed as equivalent (no input can tell them from the original), by mutmut
#: name, with the reason; docs/mutation-testing.md lists them too.
_M = "gr_gdmcom.eval.metrics."
_R = "gr_gdmcom.phy.reassembly.xǁReassemblerǁ"
_S = "gr_gdmcom.codec.schedule."
_C = "gr_gdmcom.codec.core."
_SV = "gr_gdmcom.bridge.server."
_N = "gr_gdmcom.phy.notch.xǁToneNotchǁ"
EQUIVALENT: dict = {
    _M + "x__t__mutmut_10": "a grey image copied to 4 channels instead of 3: the channel mean is the same",
    _M + "x__t__mutmut_20": "float64 instead of float32 pixels: the same value to rounding",
    **{_M + f"x_psnr__mutmut_{i}": "one operand float64 already: the difference is float64 either way"
       for i in (11, 13, 15, 17)},
    _M + "x_psnr__mutmut_23": 'float("INF") is float("inf")',
    _M + "x_ms_ssim__mutmut_31": "kernel_size=11 is torchmetrics' default",
    _M + "x_ms_ssim_scales__mutmut_6": "starting at 1: a side < 11 is brought back to 0 by the second loop",
    _M + "x_ms_ssim_scales__mutmut_9": "floor(x) >= 11 iff x >= 11",
    # The second loop never runs: side // 2^(n-1) >= 11 implies side > 10 * 2^(n-1).
    **{_M + f"x_ms_ssim_scales__mutmut_{i}": "in the second loop, which the first loop's bound keeps from running"
       for i in (18, 23, 24, 26, 27, 30, 31, 32, 33)},
    **{f"gr_gdmcom.phy.snr.x_{f}__mutmut_{i}": "dtype argument dropped: numpy's promotion gives the same values"
       for f, ids in (("measure_snr_db", (3, 5, 12, 14)), ("noise_var_to_snr_db", (11, 13)),
                      ("snr_db_to_noise_var", (7, 9))) for i in ids},
    "gr_gdmcom.phy.snr.x_noise_voltage__mutmut_1": "default sps 1 -> 2: the voltage does not depend on sps",
    _S + "xǁGridǁt_for_abar__mutmut_1": "a = 1 exactly: the next branch also returns -1",
    _S + "xǁGridǁt_for_abar__mutmut_16": "target = log abar[0] exactly: the search branch also returns 0",
    _S + "xǁGridǁt_for_abar__mutmut_45": "upper clamp len + 1: the target is floored at abar[-1], so i <= len - 1",
    _S + "x_select_steps__mutmut_90": "t* <= tau instead of <: t* is continuous and equals a grid timestep "
                                      "only for isolated SNR values (equivalent in practice, not in principle)",
    _S + "x_select_steps__mutmut_34": "candidates N < k + m: their noise level is always farther from s_tot^2",
    _R + "__init____mutmut_38": "frame counter starting at 1: only differences of it are used",
    _R + "add__mutmut_61": "last_seen of a new image: set again two lines below",
    **{_R + f"add__mutmut_{i}": "dtype of the empty size array: it is never indexed" for i in (15, 17)},
    _C + "x_prompt_hash__mutmut_5": 'encode("UTF-8") is encode("utf-8"): codec names ignore case',
    **{_C + f"xǁLatentMetaǁmean_latent__mutmut_{i}": "np.zeros' default dtype is float64" for i in (4, 6)},
    **{_C + f"xǁLatentMetaǁmean_latent__mutmut_{i}": "dtype dropped: the means are floats (from_dict and "
       "latent_to_symbols make them so); added to the float64 latent, the sum is the same" for i in (20, 22)},
    **{_C + f"x_latent_from_symbols__mutmut_{i}": "np.empty's default dtype is float64" for i in (26, 28)},
    _C + "x_symbols_from_latent__mutmut_8": "reshape(-2): numpy 1.x takes any negative size as the unknown one",
    _C + "x_latent_to_symbols__mutmut_30": "reshape(-2, 1, 1): numpy 1.x takes any negative size as the unknown one",
    _C + "x_weight_by_reliability__mutmut_23": "np.ones(None, bool) is a 0-d True: v[True] keeps every value "
                                               "(with one more axis), the mean is the same",
    _C + "xǁGenerativeCodecǁ__init____mutmut_32": "with_k=None: check() only tests it for truth, as False",
    _C + "xǁGenerativeCodecǁ__init____mutmut_56": "_latents_only None: only tested for truth, as False",
    **{_C + f"xǁGenerativeCodecǁ{f}__mutmut_{i}": "dtype dropped: a tensor of Python floats is float32 "
       "(torch's default dtype)" for f, ids in (("_ddim", (12, 14, 20, 22)), ("invert", (34, 37, 41, 44, 49, 53)),
                                               ("_noise_from_v", (12, 15))) for i in ids},
    **{_C + f"xǁGenerativeCodecǁ_ddim__mutmut_{i}": "dtype dropped: a tensor of Python ints is int64 (torch.long)"
       for i in (45, 47)},
    **{_C + f"xǁGenerativeCodecǁ_ddim__mutmut_{i}": "non_blocking dropped: a copy that waits for the device, "
       "the same values (only the host's run-ahead changes)" for i in (27, 28, 43, 48)},
    _C + "xǁGenerativeCodecǁ_ddim__mutmut_37": "len(idx) <= B: the all-items step also goes through index_select / "
                                             "index_copy of every row in order, the same values",
    **{_C + f"xǁGenerativeCodecǁinvert__mutmut_{i}": "device of a 0-d tensor: torch mixes a 0-d CPU tensor "
       "with tensors on any device" for i in (35, 38, 42, 45)},
    _C + "xǁGenerativeCodecǁinvert__mutmut_122": "r < best instead of <=: differs only when two successive "
                                                "residuals are exactly equal floats (equivalent in practice)",
    **{_C + f"xǁGenerativeCodecǁ{f}__mutmut_{i}": 'log.debug(exc) logs the same message as log.debug("%s", exc)'
       for f, i in (("encode_many", 53), ("encode_many", 90), ("decode_many", 32))},
    **{_C + f"xǁGenerativeCodecǁstep_choice__mutmut_{i}": "k of the calibration's N: None means the "
       "calibration's own k, which the line above made equal to meta.k" for i in (47, 50)},
    _C + "xǁGenerativeCodecǁ_free_path__mutmut_17": "lands at equality too: start_t = tau_n exactly only for the "
                                                   "grid rules, whose start_abar is a_n, the level either way",
    **{_C + f"xǁGenerativeCodecǁ_sample_reduced__mutmut_{i}": "zeros_like(z) without dtype: z is float32 "
       "(latent_from_symbols returns float32)" for i in (8, 10)},
    _C + "xǁGenerativeCodecǁstep_choice__mutmut_63": "T dropped with the calibration's fixed N: select_steps uses "
                                                    "T only to bound N, already clipped to the calibration's T = cfg.T",
    _C + "xǁGenerativeCodecǁinvert__mutmut_8": "j1 == j0 taken by the fixed-point branch: its loop over an empty "
                                              "path returns x.float().clone() and 0 calls, as _ddim does",
    **{_C + f"xǁGenerativeCodecǁ_noise_from_v__mutmut_{i}": "abar_at at an integer t >= 0 is abar[t] (exp of "
       "its log, to the last bit or so)" for i in (16, 22, 23)},
    **{f"gr_gdmcom.phy.header.x_decode_headers__mutmut_{i}": "float64 soft values: viterbi casts to float32 "
       "itself, decode_hard's signs differ only for |x| < 1e-45 (0 in float32), where both give a maximum-"
       "likelihood codeword (equivalent in practice, not in principle)" for i in (3, 5)},
    "gr_gdmcom.phy.header.xǁHeaderǁunpack__mutmut_124": "means v[21:26]: HEADER_STRUCT unpacks exactly "
                                                        "21 + MEAN_SLOTS = 25 values, the slice is the same",
    **{f"gr_gdmcom.codec.images.x_to_tensor__mutmut_{i}": "dtype=uint8 dropped: every PIL mode with 3 axes "
       "(RGB, RGBA, ...) is uint8 already" for i in (10, 12)},
    "gr_gdmcom.codec.images.x_to_tensor__mutmut_22": "x.shape[+2:] is x.shape[2:]: (H, W) of the 4-D tensor",
    "gr_gdmcom.codec.images.x_to_uint8_range__mutmut_10": "uint16: / then astype(uint8) truncates the positive "
                                                          "quotient, the floor (all 65536 values checked)",
    "gr_gdmcom.codec.images.x_to_uint8_range__mutmut_13": "uint16 as float64: floor division exact below 2**53, "
                                                          "the same for all 65536 values",
    "gr_gdmcom.codec.images.x_to_uint8_range__mutmut_15": "uint16 + 32768: v * 255 mod 65535 = 255 (v mod 257) "
                                                          "is never 32767, the same for all 65536 values",
    "gr_gdmcom.codec.images.x_to_uint8_range__mutmut_18": 'kind not in "XXiufXX": a dtype kind is one '
                                                          'character and "X" is none',
    # (load_rgb's and encode_many's numbers as mutmut 3.8.1's generator gives them at c1799b0's code:
    # both functions had changed since the numbers were taken)
    **{f"gr_gdmcom.codec.images.x_load_rgb__mutmut_{i}": "256 in the white fill colour: Pillow clips it to 255"
       for i in (121, 122, 123, 124)},
    # server.py (mutant numbers of server.py at 36f2849)
    _SV + "x_gather_batch__mutmut_22": "remaining >= 0: at exactly 0.0, Queue.get(timeout=0) takes a queued job or "
                                       "raises Empty at once, as get_nowait does",
    _SV + "x_split_on_failure__mutmut_47": "first=None: only tested for truth, as False",
    **{_SV + f"xǁInferenceServerǁ__init____mutmut_{i}": "a field that start() or stop() sets before anything reads it "
       "(_sock, _worker, _drain_s, the wake-up pipe's fds)" for i in (21, 42, 44, 45, 46, 47)},
    _SV + "xǁInferenceServerǁstart__mutmut_14": "monitor every socket event: _read_monitor counts and logs only the "
                                               "handshake failures, the same ones",
    **{_SV + f"xǁInferenceServerǁstart__mutmut_{i}": "linger of a socket that failed to bind or connect: it never "
       "held a message" for i in (44, 45)},
    _SV + "xǁInferenceServerǁstart__mutmut_53": "LAST_ENDPOINT of a connected socket: ZMQ gives back the endpoint "
                                               "string given to connect (checked with a host name and an address)",
    _SV + "xǁInferenceServerǁstart__mutmut_79": "a blocking wake-up pipe: a write blocks only with 64 KiB of wake-ups "
                                               "unread, one per reply the I/O thread has not flushed (equivalent in "
                                               "practice, not in principle)",
    _SV + "xǁInferenceServerǁ_wake__mutmut_5": "5 bytes per wake-up instead of 1: the I/O thread only tests the pipe "
                                              "for data and drains it (a full pipe is 13000 wake-ups behind instead "
                                              "of 65536: equivalent in practice)",
    **{_SV + f"xǁInferenceServerǁ_close_monitor__mutmut_{i}": "linger of the monitor socket, which only receives"
       for i in (2, 3)},
    _SV + "xǁInferenceServerǁ_close_monitor__mutmut_4": "_monitor after closing: a stopped server never reads it again",
    **{_SV + f"xǁInferenceServerǁserve_forever__mutmut_{i}": "join(None) / join(1.5): join returns when the I/O "
       "thread ends whatever its timeout (the loop only re-checks it)" for i in (4, 5)},
    **{_SV + f"xǁInferenceServerǁ_io_loop__mutmut_{i}": "poll 1 ms longer: the wake-up pipe and the socket end "
       "the wait, the timeout only paces the stop and store-expiry checks" for i in (19, 32)},
    _SV + "xǁInferenceServerǁ_read_monitor__mutmut_2": "poll(1) for the next monitor event: 1 ms more after the last "
                                                     "one, the same events read",
    _SV + "xǁInferenceServerǁ_io_loop__mutmut_28": "drain until now <= deadline: differs only at a clock reading "
                                                  "equal to the deadline (equivalent in practice)",
    _SV + "xǁInferenceServerǁ_io_loop__mutmut_33": "while draining, replies flushed on the 50 ms ticks instead of at "
                                                  "the wake-up, and all of them after the loop: the same replies, at "
                                                  "most 50 ms later (equivalent in practice)",
    _SV + "xǁInferenceServerǁ_io_loop__mutmut_35": "accept=None: only tested for truth, as False",
    _SV + "xǁInferenceServerǁ_io_loop__mutmut_49": "linger 1001 ms instead of 1000 on close (equivalent in practice)",
    _SV + "xǁInferenceServerǁ_io_loop__mutmut_9": "the wake-up pipe polled for POLLIN|POLLOUT: its read end is "
                                                 "never writable, the same events (an idle server does not spin)",
    _SV + "xǁInferenceServerǁ_read_requests__mutmut_2": "65 requests read per round instead of 64 before the replies "
                                                       "are looked at again (equivalent in practice)",
    _SV + "xǁInferenceServerǁ_read_requests__mutmut_25": "the client address read from frame 1 instead of the last: "
                                                        "every frame of a message carries its connection's metadata",
    _SV + "xǁInferenceServerǁ_read_requests__mutmut_5": "copy=None: only tested for truth, as False",
    **{_SV + f"xǁInferenceServerǁstatus__mutmut_{i}": "a field not popped from the engine's dict: **engine then "
       "gives status the same key and value" for i in (48, 49, 50, 51)},
    # the rest of the full run (2026-11-29, server.py unchanged since 36f2849)
    _SV + "xǁInferenceServerǁ_expire_store__mutmut_5": "a reply kept while expires >= now: differs only at a clock "
                                                      "reading equal to its expiry (equivalent in practice)",
    _SV + "xǁInferenceServerǁ_flush_replies__mutmut_5": "4097 bytes per read of the wake-up pipe: it is read until "
                                                       "empty either way",
    _SV + "xǁInferenceServerǁ_note_peer__mutmut_6": "pruning with one client known too: that one is the client just "
                                                   "noted at now, never older than the window",
    _SV + "xǁInferenceServerǁ_on_request__mutmut_1": "default peer \"XX?XX\": its one caller, _read_requests, always "
                                                    "passes the client's address",
    _SV + "xǁInferenceServerǁ_read_requests__mutmut_26": "the client address read from the last frame but one: every "
                                                        "frame of a message carries its connection's metadata",
    _SV + "xǁInferenceServerǁ_remember__mutmut_19": "popitem(last=None): only tested for truth, as False (the oldest "
                                                   "goes)",
    **{_SV + f"xǁInferenceServerǁ_reply_step__mutmut_{i}": "default of record['batch']: every result the step "
       "scheduler gives (stepped, fallback, k = 0) has one" for i in (5, 7, 10)},
    _SV + "xǁInferenceServerǁ_reply_step__mutmut_12": "batch 1 for a Failed result: its error reply carries no "
                                                     "server info",
    **{_SV + f"xǁInferenceServerǁ_send__mutmut_{i}": "copy=True (dropped, or None: as False): ZMQ copies large "
       "frames instead of sending them by reference, the same bytes (only memory and time differ)" for i in (3, 6, 8)},
    **{_SV + f"xǁInferenceServerǁ_send__mutmut_{i}": "_send's return value: no caller reads it" for i in (9, 28)},
    _SV + "xǁInferenceServerǁ_send_job_reply__mutmut_20": "pop without a default: every job is in _inflight when its "
                                                         "one reply is sent (the I/O thread adds it right after "
                                                         "queueing it, before it can read a reply)",
    _SV + "xǁInferenceServerǁ_worker_loop__mutmut_12": "a batch waits max_wait_ms / 1.001: 10 us less at the default "
                                                      "10 ms (equivalent in practice)",
    _N + "__init____mutmut_16": "_dc_found None: only tested for truth, as False",
    _N + "reset__mutmut_23": "block counter starting at 1: only differences of it are used",
    **{_N + f"process__mutmut_{i}": "np.concatenate of [x[:0], y] is y: the same samples" for i in (37, 39)},
    **{_N + f"{f}__mutmut_{i}": "<= / >= at a float equality (a power exactly 1e-30, a contrast exactly at the "
       "threshold, a ratio exactly at the gate, bins exactly 1.5 apart): equivalent in practice"
       for f, ids in (("_track_dc", (22, 25, 38)), ("_analyse", (15, 50, 53)), ("_candidates", (8, 55)))
       for i in ids},
    **{_N + f"_analyse__mutmut_{i}": "+- BLOCK / 2 (or + 1.5 for + 0.5) inside a modulo of BLOCK (of 1): the same "
       "residue" for i in (9, 25, 44, 46)},
    **{_N + f"_analyse__mutmut_{i}": "the frequency step without its wrap (/ 1.0, or % 2.0): the same for a "
       "reading within 1.5 bins of the tone, far from +-0.5 cycles/sample" for i in (43, 47)},
    _N + "_analyse__mutmut_4": "KEEP_DB without tones notched: the weaker peaks it admits only update notched tones; "
                               "new ones must pass CONTRAST_DB anyway",
    **{_N + f"_analyse__mutmut_{i}": "a float64 filter state: lfilter returns the same complex state and output"
       for i in (74, 76)},
    **{_N + f"_candidates__mutmut_{i}": "strict local maximum: differs only for two bins of exactly equal log "
       "power" for i in (56, 62)},
    **{_N + f"_candidates__mutmut_{i}": "at a local maximum the parabola's curvature a - 2b + d is <= 0, and 0 only "
       "for three exactly equal bins: the branches for >= 0 never run in practice, and the vertex lies within "
       "+-0.5 bin, so the clip never acts" for i in (94, 95, 106, 107, 108, 109, 110, 113, 114, 119, 120)},
    **{f"gr_gdmcom.phy.conv.x__gen_taps__mutmut_{i}": "dtype dropped: an array of Python ints is int64"
       for i in (2, 4)},
    "gr_gdmcom.phy.conv.x_decode_hard__mutmut_11": "reshape(-2, 3): numpy 1.x takes any negative size as the "
                                                  "unknown one",
    "gr_gdmcom.phy.conv.x_decode_hard__mutmut_28": "the tail test on an empty slice: a word whose inverse has a "
                                                  "nonzero tail is not the encoding of its first bits (zero-tailed), "
                                                  "so the comparison after it returns None anyway",
    "gr_gdmcom.phy.conv.x_viterbi__mutmut_14": "nc / 3 instead of nc // 3: the same for the multiples of 3 that reach it",
    "gr_gdmcom.phy.conv.x_viterbi__mutmut_70": "soft / sign instead of soft * sign: the signs are +-1, the same floats",
    **{f"gr_gdmcom.phy.conv.x_viterbi__mutmut_{i}": "float64 soft values, path metrics or candidates (the "
       "sums carried in float64 instead of float32): the decisions differ only between paths whose metrics "
       "differ by float32 rounding (equivalent in practice)" for i in (3, 5, 89, 91, 132, 134)},
    "gr_gdmcom.phy.conv.x_viterbi__mutmut_156": "> instead of >= between two candidates: differs only for exactly "
                                               "equal metrics, two paths equally likely",
    **{f"gr_gdmcom.phy.conv.x_{f}__mutmut_{i}": "another number of windows (no MAX_PARTS, batches windowed too) or "
       "a longer margin: the windowed decoder keeps the full trellis's decisions but in negligible cases "
       "(test_viterbi_equals_a_full_trellis_decoder; equivalent in practice)"
       for f, i in (("viterbi", 28), ("viterbi", 29), ("_segments", 12))},
    **{f"gr_gdmcom.phy.frame.x_{f}__mutmut_{i}": "dtype dropped: bits (uint8, bool) times a float are float64; "
       "astype(None) is float64" for f, i in (("gaussian_symbols", 2), ("qpsk", 11), ("qpsk", 13))},
    "gr_gdmcom.phy.frame.x_qpsk__mutmut_19": "reshape(-2, 2): numpy 1.x takes any negative size as the unknown one",
    "gr_gdmcom.phy.frame.x_qpsk__mutmut_25": "1j / b instead of 1j * b: b is +-1, the same values",
    "gr_gdmcom.phy.frame.x_prbs_bits__mutmut_25": "the register filled one bit per step instead of 14: each write "
                                                 "reads only bits already final, the same sequence (slower)",
    **{f"gr_gdmcom.phy.frame.x_rrc__mutmut_{i}": "<= 1e-9 instead of < 1e-9: differs only at a distance of "
       "exactly 1e-9 from 0 or from a singular point" for i in (10, 20)},
    **{f"gr_gdmcom.phy.frame.xǁFrameConfigǁvalidate__mutmut_{i}": "getattr's default in the message: the first "
       "word of every message is a field of FrameConfig, so it is never used" for i in (127, 130, 131)},
    "gr_gdmcom.phy.frame.xǁFrameConfigǁvalidate__mutmut_62": "eq_taps <= 32 instead of <= 31: 32 is even, refused by "
                                                            "the oddness test of the same line",
    "gr_gdmcom.phy.frame.xǁFrameLayoutǁcopy_region__mutmut_6": "pilots <= the copy's last position instead of <: "
                                                              "that position holds a data symbol, never a pilot",
    "gr_gdmcom.phy.frame.xǁFrameLayoutǁheader_copy_symbols__mutmut_5": "roll by +633 instead of -633: the coded "
                                                                      "header has 1266 symbols, the same rotation",
    **{f"gr_gdmcom.phy.frame.xǁFrameLayoutǁheader_region__mutmut_{i}": "arange's dtype dropped: numpy's default "
       "integer on 64-bit Linux is int64" for i in (9, 11)},
    "gr_gdmcom.phy.frame.xǁFrameLayoutǁheader_region__mutmut_5": "-(-H / P) instead of -(-H // P): arange of a "
                                                                "float stop has ceil(stop) values, the same blocks",
    "gr_gdmcom.phy.frame.xǁFrameLayoutǁshape__mutmut_20": "float64 instead of float32 taps: samples differ by float32 "
                                                          "rounding (~1e-8), inside the test vector's 2e-6 "
                                                          "(equivalent in practice)",
    "gr_gdmcom.bridge.protocol.x__parse_decode__mutmut_118": "erased symbols set to 0 whenever there is a mask, not "
                                                            "only when one is not finite: the codec sets them to 0 "
                                                            "itself (decode_many), the same decode",
    "gr_gdmcom.bridge.protocol.x__schema_error__mutmut_8": "include_url=True: the errors' url is never read",
    "gr_gdmcom.bridge.protocol.x__schema_error__mutmut_10": "errors kept in pydantic's order: it reports them in the "
                                                           "models' field order, which is _FIELD_CODES' order",
    "gr_gdmcom.bridge.protocol.x__schema_error__mutmut_51": "'XXXX' instead of '' for an error with no location: "
                                                           "neither is a field of _FIELD_CODES, bad_request either way",
    **{f"gr_gdmcom.bridge.protocol.x__schema_error__mutmut_{i}": "json.dumps without default=repr: the value comes "
       "from parsed JSON, always serialisable" for i in (67, 69, 85, 87)},
    **{f"gr_gdmcom.bridge.protocol.x_dumps_header__mutmut_{i}": "allow_nan dropped or True: _clean has made every "
       "non-finite float null" for i in (3, 6, 9)},
    **{f"gr_gdmcom.bridge.protocol.x_{f}__mutmut_{i}": '"UTF-8" is the codec "utf-8"'
       for f, i in (("dumps_header", 13), ("loads_header", 6))},
    **{f"gr_gdmcom.bridge.protocol.x_image_to_bytes__mutmut_{i}": "another default format: every format but raw is "
       "PNG" for i in (1, 2)},
    "gr_gdmcom.bridge.protocol.x_image_to_bytes__mutmut_18": 'format="png": Pillow upper-cases the format name',
    **{f"gr_gdmcom.codec.rate.x_{f}__mutmut_{i}": "reshape(-2): numpy 1.x takes any negative size as the unknown one"
       for f, i in (("channel_means", 12), ("mean_gain_db", 17))},
    "gr_gdmcom.codec.rate.xǁReductionǁ_dct_kept__mutmut_24": 'kind="STABLE": numpy reads the kind case-insensitively',
    **{f"gr_gdmcom.codec.rate.xǁReductionǁmake__mutmut_{i}": "factor <= 1 or < 2: factor 1 has returned before"
       for i in (27, 28)},
    **{f"gr_gdmcom.codec.rate.xǁReductionǁmake__mutmut_{i}": "x / r < k instead of x // r < k: the same for integers"
       for i in (44, 53)},
    **{f"gr_gdmcom.codec.rate.xǁReductionǁ{f}__mutmut_{i}": "index tensor left on the CPU: PyTorch takes CPU indices "
       "for a tensor on any device, the same values (equivalent in practice)"
       for f, i in (("apply", 21), ("apply", 42), ("adjoint", 30), ("adjoint", 56))},
    **{f"gr_gdmcom.phy.channel.x_fractional_delay__mutmut_{i}": "the input's dtype kept: it goes into a complex128 "
       "buffer either way" for i in (3, 5)},
    **{f"gr_gdmcom.phy.channel.x_fractional_delay__mutmut_{i}": "more zero padding or a longer FFT: the same delay "
       "to float rounding for a band-limited input, differences only at the edges (equivalent in practice)"
       for i in (11, 14, 20)},
    **{f"gr_gdmcom.phy.channel.x_simulate_channel__mutmut_{i}": "the input's dtype kept: np.convolve promotes to "
       "complex128 with the taps, every later step and the plain path end in complex64" for i in (6, 8)},
    "gr_gdmcom.phy.channel.x_rayleigh_block__mutmut_46": "astype(None) is astype(float64)",
    "gr_gdmcom.phy.channel.x_simulate_channel__mutmut_1": "a default offset of 1 cycle/sample: exp(j 2 pi n) = 1 at "
                                                          "every sample, the same samples to float rounding",
    **{f"gr_gdmcom.config.x_{f}__mutmut_{i}": "dest dropped or None: argparse derives the same dest from the "
       "long option (--inversion-tol -> inversion_tol)"
       for f, i in [("add_codec_args", j) for j in (36, 41, 49, 55, 70, 75, 91, 96, 104, 110)]
       + [("add_frame_args", 38), ("add_frame_args", 42)]},
    "gr_gdmcom.config.x_add_codec_args__mutmut_112": "--bcr's default=None dropped: None is argparse's default",
    **{f"gr_gdmcom.config.x_add_frame_args__mutmut_{i}": "another fallback for an undocumented field: every "
       "FrameConfig field has a docstring entry (test_config checks), so it is never used" for i in (22, 23, 24)},
    "gr_gdmcom.config.x__attribute_docs__mutmut_8": "a class without a docstring: 'XXXX' holds no entry either",
    "gr_gdmcom.config.x__attribute_docs__mutmut_38": "`or name` in the blank-line branch: a non-blank line with a "
                                                      "name set was taken by the branch before",
    "gr_gdmcom.config.x__attribute_docs__mutmut_40": "name reset to '' instead of None: both false",
    **{f"gr_gdmcom.phy.tx.xǁFrameTxǁburst__mutmut_{i}": "the payload's dtype left as given: it is cast to complex64 "
       "where it is placed in the burst body, the same values" for i in (4, 6)},
    "gr_gdmcom.phy.tx.xǁFrameTxǁburst__mutmut_56": "a sample exactly at the clip limit scaled by limit / |x| = 1: "
                                                 "the same sample",
    **{f"gr_gdmcom.bridge.metrics.xǁServerMetricsǁ__init____mutmut_{i}": "auto_describe=None/False: the registry "
       "only auto-describes collectors without describe(), and every collector here has one" for i in (2, 3)},
    **{f"gr_gdmcom.bridge.metrics.xǁServerMetricsǁclose__mutmut_{i}": "the join's timeout (None, 6 s): the thread "
       "ends once the server is shut down" for i in (3, 4)},
    **{f"gr_gdmcom.codec.calibration.x_isotonic_decreasing__mutmut_{i}": "the dtype left to numpy: scikit-learn's "
       "check_array casts x and y to float64 itself" for i in (8, 10, 12, 14)},
    "gr_gdmcom.codec.calibration.x_load_calibration__mutmut_7": '"UTF-8": codec names are case-insensitive',
    **{f"gr_gdmcom.codec.calibration.xǁCalibrationǁsave__mutmut_{i}": "the encoding written: json.dumps escapes "
       "every non-ASCII character, the file is ASCII in any encoding" for i in (10, 12, 19)},
    **{f"gr_gdmcom.codec.calibration.xǁCalibrationǁsave__mutmut_{i}": "the JSON's indentation (none, 2): layout "
       "only, the same document" for i in (14, 16, 17)},
    **{f"gr_gdmcom.eval.digital.x__desegment__mutmut_{i}": "the decoded bits' dtype left as given: 0/1 either way, cast to uint8 by packbits' caller and crc_bits" for i in (6, 8, 15, 17)},
    **{f"gr_gdmcom.eval.digital.x__segment__mutmut_{i}": "float64 code blocks instead of int64: the same 0/1/-1 values, which py3gpp's encoder reads as numbers" for i in (6, 8, 20, 22)},
    **{f"gr_gdmcom.eval.digital.x_crc_bits__mutmut_{i}": "the input's dtype kept: 0/1 integers or bools concatenate and pack to the same bytes" for i in (4, 6)},
    "gr_gdmcom.eval.digital.x_crc_bits__mutmut_35": "float64 parity bits instead of uint8: the same 0/1 values for every caller",
    **{f"gr_gdmcom.eval.digital.x_crc_bits__mutmut_{i}": "the register mask 25 bits wide or without bit 0: the extra bit is shifted out before it reaches the table index or the output, and (crc << 8) has no bit 0" for i in (20, 21)},
    **{f"gr_gdmcom.eval.digital.x_decode_transport_block__mutmut_{i}": "the LLRs' dtype kept: clipped, then multiplied by a float64 array, float64 from there" for i in (11, 13)},
    "gr_gdmcom.eval.digital.x_decode_transport_block__mutmut_16": "descrambling by division by +-1: the same values",
    **{f"gr_gdmcom.eval.digital.x_decode_transport_block__mutmut_{i}": "int.from_bytes without 'big': Python 3.11's default byte order is 'big'" for i in (87,)},
    "gr_gdmcom.eval.digital.x_encode_transport_block__mutmut_11": "int.to_bytes without 'big': Python 3.11's default byte order is 'big'",
    "gr_gdmcom.eval.digital.x_encode_transport_block__mutmut_17": "float64 bits instead of int64: the same 0/1 values for the CRC and the segmentation",
    "gr_gdmcom.eval.digital.x_demodulate_maxlog__mutmut_18": "chunks of one symbol's offset: each row is written again with the same value (rows are independent), only slower",
    **{f"gr_gdmcom.eval.digital.x_ldpc_decode__mutmut_{i}": "the LLRs' dtype kept: concatenated with float64 zeros, float64 from there" for i in (4, 6)},
    **{f"gr_gdmcom.eval.digital.x_ldpc_decode__mutmut_{i}": "division by +-1 instead of multiplication: the same values" for i in (114, 115)},
    "gr_gdmcom.eval.digital.x_ldpc_decode__mutmut_83": "the sign of an exactly-zero message: its magnitude is the minimum, 0, for the other edges, and its own message multiplies the sign in twice",
    "gr_gdmcom.eval.digital.x_ldpc_decode__mutmut_123": "L <= 0 instead of < 0 in the stopping test: differs only for an LLR exactly 0 after an iteration (equivalent in practice)",
    **{f"gr_gdmcom.eval.digital.x_modulate__mutmut_{i}": "the bits' dtype kept: 0/1 integers or bools give the same constellation index" for i in (9, 11)},
    "gr_gdmcom.eval.digital.x_modulate__mutmut_13": "reshape(-2, qm): numpy 1.x takes any negative size as the unknown one",
    "gr_gdmcom.eval.digital.x_run_digital__mutmut_211": "llr <= 0 in the raw BER: an LLR exactly 0 has probability 0 on AWGN (equivalent in practice)",
    **{f"gr_gdmcom.codec.analytic.x__log_abar_at__mutmut_{i}": "a clamp bound never reached (t is clamped to [-1, n-1] first, so u is in [0, n]), a dtype promoted anyway (cat with float64, long indices exact), or an upper clamp at n+1 where lo = hi = n and (1-w) e + w e = e exactly for w <= 2" for i in (11, 16, 18, 24, 25, 27, 35)},
    **{f"gr_gdmcom.codec.analytic.x_build_analytic__mutmut_{i}": "get_grid's default scheduler is SD's, and its 1000-entry abar table does not depend on the step count" for i in (10, 12, 13)},
    **{f"gr_gdmcom.codec.analytic.xǁAnalyticUNetǁ__call____mutmut_{i}": "B even and > 0 is B >= 2 (B = 0: empty either way); repeat_interleave of a 1-D tensor flattens the same with dim None" for i in (22, 23, 60, 62)},
    "gr_gdmcom.codec.analytic.xǁAnalyticUNetǁ__init____mutmut_3": "log_abar comes from numpy float64 already: .to(None) keeps float64",
    **{f"gr_gdmcom.codec.analytic.xǁAnalyticUNetǁ_inputs__mutmut_{i}": "the float32 timesteps or log-weights kept: _log_abar_at and eps_multi convert them (exactly) to float64 / the mixture's dtype first" for i in (4, 6, 19, 21)},
    **{f"gr_gdmcom.codec.analytic.xǁByteTokenizerǁ__call____mutmut_{i}": "'UTF-8' is utf-8; torch.tensor of Python ints is int64 (long) without dtype" for i in (16, 36, 38)},
    **{f"gr_gdmcom.codec.analytic.xǁGaussianMixtureǁeps_multi__mutmut_{i}": "chunking and the whole-batch fast path change how the rows are computed, not their values (rows are independent); a 2-D weighting expanded to its own shape" for i in (1, 23, 48, 49, 59, 60)},
    **{f"gr_gdmcom.codec.analytic.xǁGaussianMixtureǁ_combine_level__mutmut_{i}": "einsum subscripts in capitals; softmax over dim +1 of a 2-D tensor is dim -1" for i in (51, 81)},
    **{f"gr_gdmcom.codec.analytic.xǁGaussianMixtureǁ_level__mutmut_{i}": "a term common to every component (D log 2 pi) in the log-likelihood: the responsibilities, a softmax over components, do not change" for i in (157, 160, 162, 163)},
    **{f"gr_gdmcom.codec.analytic.xǁGaussianMixtureǁ_level__mutmut_{i}": "the rank-0 placeholders (A, Minv, Amu) are used only when rank > 0, A's dtype promoted by the cat with float64" for i in (101, 107, 108, 109, 110, 111, 112, 113, 117, 118, 119, 120, 121)},
    **{f"gr_gdmcom.codec.analytic.xǁGaussianMixtureǁ_level__mutmut_{i}": "torch.cat's default dim is 0; the cache is cleared one entry sooner or later (a cache, not a value)" for i in (155, 166, 167)},
    **{f"gr_gdmcom.eval.source_codecs.x_{f}__mutmut_{i}": "int.from_bytes / to_bytes without 'big': Python 3.11's default byte order is 'big'"
       for f, ids in (("_boxes", (9,)), ("_hevc_encode", (27, 34)), ("_hevc_to_heif", (17, 25)),
                      ("_split_heif", (93, 123, 133, 152, 169)), ("hevc_rebuild_heif", (20, 30))) for i in ids},
    "gr_gdmcom.eval.source_codecs.x__boxes__mutmut_29": "codec names are case-insensitive: 'LATIN-1' is latin-1",
    **{f"gr_gdmcom.eval.source_codecs.x__as_rgb__mutmut_{i}": "mode or dtype left to numpy/Pillow: convert('RGB') gives a uint8 (H, W, 3) array, which fromarray reads as RGB" for i in (2, 4, 6, 8)},
    **{f"gr_gdmcom.eval.source_codecs.x__{f}_encode__mutmut_{i}": "format names are case-insensitive in Image.save" for f, i in (("jpeg", 13), ("webp", 11))},
    "gr_gdmcom.eval.source_codecs.x__jpeg_encode__mutmut_11": "subsampling left out: Pillow's JPEG default is 4:2:0 (test_pillow_bitstreams_are_pillows_with_the_documented_settings)",
    **{f"gr_gdmcom.eval.source_codecs.x_hevc_heif_file__mutmut_{i}": "chroma left to pillow-heif: its default is 4:2:0" for i in (5, 8)},
    "gr_gdmcom.eval.source_codecs.x__hevc_decode__mutmut_6": "convert_hdr_to_8bit left out: pillow-heif's default is True",
    "gr_gdmcom.eval.source_codecs.x_encode_to_budget__mutmut_20": "popitem(last=None): None is false, as False",
    **{f"gr_gdmcom.eval.source_codecs.x__split_heif__mutmut_{i}": "a zero-size field read anyway: int.from_bytes(b'') is 0, the else value" for i in (119, 148)},
    **{f"gr_gdmcom.eval.source_codecs.x__hevc_available__mutmut_{i}": "another separator, or another default for a missing HEIF field: neither makes nor breaks an 'x265' in the text searched" for i in (7, 15, 18, 20, 23)},
    **{f"gr_gdmcom.eval.digital.x__psnr__mutmut_{i}": "one operand float64 already: the difference is float64 either way" for i in (7, 9, 11, 13)},
    "gr_gdmcom.eval.digital.x__psnr__mutmut_19": 'float("INF") is float("inf")',
    **{f"gr_gdmcom.eval.digital.x_demodulate_maxlog__mutmut_{i}": "the samples' dtype kept: subtracting the complex128 constellation promotes them, exactly, to complex128 (test_llrs_are_computed_in_double_precision_whatever_the_samples_dtype)" for i in (6, 8)},
    "gr_gdmcom.eval.digital.x_run_digital__mutmut_214": "bits.astype(None), float 0/1: compared with the bools (llr < 0), the same",
    "gr_gdmcom.eval.digital.x_main__mutmut_100": "default=None dropped: argparse's default is None",
    **{f"gr_gdmcom.eval.digital.x_calibrate_thresholds__mutmut_{i}": "worker processes or not, how many, and the default context (fork on Linux): the same thresholds (test_calibration_in_worker_processes_gives_the_serial_result)" for i in (11, 12, 13, 14)},
    **{f"gr_gdmcom.eval.digital.x_calibrate_thresholds__mutmut_{i}": "Pool.map's chunksize: the results keep their order" for i in (20, 23, 24)},
    "gr_gdmcom.eval.digital.x__threshold_one__mutmut_59": "the SNR rounded to 7 places instead of 6: the same grid for steps of 0.25 dB",
    "gr_gdmcom.eval.digital.x_simulate_bler__mutmut_60": "and instead of or: differs only for a block that passes its CRC with a wrong payload (p ~ 2^-24; equivalent in practice)",
    **{f"gr_gdmcom.eval.digital.x__to_pil__mutmut_{i}": "Image.fromarray's mode left to Pillow: a uint8 (H, W, 3) array is RGB" for i in (16, 18)},
    "gr_gdmcom.bridge.security.x_client_from_options__mutmut_20": "want_secret=None instead of False: both false",
    "gr_gdmcom.bridge.security.x_is_loopback__mutmut_16": "'XXXX' instead of '' for an endpoint without a host: "
                                                          "neither is localhost nor an IP address",
    "gr_gdmcom.bridge.security.x_parse_public_key__mutmut_17": '"ASCII": codec names are case-insensitive',
    "gr_gdmcom.bridge.security.xǁCurveServerǁstart__mutmut_17": "domain='*' dropped: pyzmq's default domain is '*'",
    "gr_gdmcom.bridge.security.xǁ_KeyListǁcallback__mutmut_22": '"ASCII": codec names are case-insensitive',
}


#: Modules whose every mutant runs every test of its list, in the list's order, instead of only the
#: tests mutmut saw calling the mutated function.  For ``core``, mutmut's per-function mapping
#: missed tests (helpers reached only through the ``torch.no_grad``-decorated batch functions,
#: which it does not trampoline, came out "no tests"), and its fast test file comes first so that
#: most mutants are killed within a second.  ``stepper``: the same (``step`` is ``torch.no_grad``-decorated:
#: ``_Active.settle`` and ``_finish``, reached only through it, came out "no tests").  ``digital``: its
#: ``functools.lru_cache``-decorated helpers (the constellations, transport-block sizes, the
#: rate-matching map, the decoder's graph, CRC tables, scrambling) came out "no tests" (442 of 1322).
#: ``analytic``: ``build_analytic`` caches a model per spec, so mutmut mapped its constructors to the one
#: test that built each first (``AnalyticUNet.__init__`` setting ``log_abar = None`` survived), and 89
#: mutants came out "no tests"; every test of ``tests/test_analytic_parts.py`` (4 s) first.
EVERY_TEST = {"core", "server", "stepper", "digital", "analytic"}

#: For an ``EVERY_TEST`` module, the run is two passes: every mutant against the tests of the first
#: ``FAST_FILES[name]`` files of its list, then the mutants still alive against all of them.  The
#: result is that of one pass with all the files (a test that fails fails in either), much faster:
#: a surviving or equivalent mutant costs the whole list, and on two shared cores that is a minute.
FAST_FILES = {"core": 2, "server": 1, "stepper": 1, "digital": 1, "analytic": 1}

#: ``EVERY_TEST`` modules whose second pass runs, for each mutant still alive, only the tests that mutmut saw
#: calling its function (mutmut's own selection) rather than all of them.  ``server``: its first file runs
#: the server on a stand-in codec in 7 s; a mutant alive after it costs the tiny-model tests of
#: test_bridge.py that reach its function (about 11 s, and 5 s of fixtures: the model, the keys), where
#: all of them cost 25 s.  mutmut records calls from the server's threads, so its selection holds there.
PER_FUNCTION_SECOND_PASS = {"server"}

#: Extra [tool.mutmut] settings per module.  ``server``: mutmut's wall-clock limit per mutant is
#: ``timeout_multiplier`` x (the tests' clean time + 1 s); at its default 15 that is 2 minutes for the
#: first pass, and a mutant that leaves a ZMQ socket open hangs ``Context.term()`` (pytest-timeout cannot
#: interrupt it) until then.  3 x still leaves a surviving mutant (7 s of tests) three times its time.
MUTMUT_OPTIONS = {"server": ["timeout_multiplier = 3.0"]}


def scratch(name: str) -> Path:
    return ROOT / "build" / "mutation" / name


def prepare(name: str) -> Path:
    """A scratch copy of the sources and tests with a [tool.mutmut] section for this module."""
    path, tests, extra = (MODULES[name] + ([],))[:3]
    d = scratch(name)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # docs: tests read protocol.md; scripts: test_phy_tx runs frame_vector.py
    for sub in ("gr_gdmcom", "tests", "grc", "flowgraphs", "docs", "scripts"):
        shutil.copytree(ROOT / sub, d / sub, ignore=ignore)
    cfg = [
        "",
        "[tool.mutmut]",
        'source_paths = ["gr_gdmcom/"]',
        f'only_mutate = ["{path}"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-q', '-x'] + extra)}",
        "also_copy = [\"grc/\", \"flowgraphs/\", \"docs/\", \"scripts/\"]",
        # torch and GNU Radio threads are not fork-safe from a process that ran tests
        'process_isolation = "forkserver"',
        "use_git_change_detection = false",
        *MUTMUT_OPTIONS.get(name, []),
    ]
    (d / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(cfg) + "\n")
    return d


def mutmut(d: Path, *args: str, capture: bool = False, every_test: bool = False,
           files: int = 0, per_function: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, GRC_BLOCKS_PATH=str(d / "grc"), OMP_NUM_THREADS="1", PYTHONPATH="",
               MUTATION_TEST_FILES=str(files), MUTATION_PER_FUNCTION=str(int(per_function)))
    cmd = [sys.executable, "-m", "mutmut"]
    if every_test:
        cmd = [sys.executable, str(Path(__file__).resolve()), _EVERY_TEST_FLAG]
    return subprocess.run([*cmd, *args], cwd=d, env=env, text=True, capture_output=capture)


_EVERY_TEST_FLAG = "--mutmut-every-test"


def _mutmut_every_test(args: list) -> int:
    """``mutmut ARGS`` (run in a scratch copy) with every mutant mapped to every test that the
    stats run saw, ordered as the test files in ``pytest_add_cli_args_test_selection``
    (``MUTATION_PER_FUNCTION=1``: only those of them that mutmut saw calling the mutant's function)."""
    import tomllib

    import mutmut.__main__ as mm

    files = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    first = int(os.environ.get("MUTATION_TEST_FILES", "0")) or len(files)  # only the tests of these files
    per_function = os.environ.get("MUTATION_PER_FUNCTION") == "1"
    collect = mm.collect_or_load_stats

    def every(*a, **kw):
        collect(*a, **kw)
        st = mm.state()
        seen = list(st.duration_by_test)
        rank = lambda n: (next((i for i, f in enumerate(files) if n.split("::")[0] == f), len(files)),  # noqa: E731
                          seen.index(n))
        order = [n for n in sorted(seen, key=rank) if rank(n)[0] < first]
        own = {k: set(v) for k, v in st.tests_by_mangled_function_name.items()}

        def tests(key):
            return [n for n in order if n in own.get(key, ())] if per_function else order

        class Every(dict):  # keeps the recorded keys (mutmut checks them), answers every lookup with all tests
            def get(self, key, default=None):
                return tests(key)

            def __getitem__(self, key):
                return tests(key)

        st.tests_by_mangled_function_name = Every(st.tests_by_mangled_function_name)

    mm.collect_or_load_stats = every
    return mm.cli.main(args=args, prog_name="mutmut", standalone_mode=False) or 0


def statuses(d: Path) -> dict:
    """{mutant name: status} from ``mutmut results --all true``."""
    out = mutmut(d, "results", "--all", "true", capture=True).stdout
    res = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.strip().rsplit(":", 1)
            res[k.strip()] = v.strip()
    return res


def retest(name: str, jobs: int = 1, copy_tests: bool = True) -> dict:
    """Each mutant the last run did not kill, applied on disk in the scratch copy (``mutmut
    apply``) and tested with the current test files: for tests added since that run.

    For an ``EVERY_TEST`` module mutmut itself reruns those mutants (its fork server, the
    current tests, each mutant against all of them), and its verdicts replace the old ones."""
    path, tests, extra = (MODULES[name] + ([],))[:3]
    d = scratch(name)
    if copy_tests:
        shutil.rmtree(d / "tests")
        shutil.copytree(ROOT / "tests", d / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # mutmut's own rerun (EVERY_TEST) selects the test files named in the scratch pyproject.toml:
        # name today's, or a test file added to MODULES since the run is never run at all
        toml = d / "pyproject.toml"
        key = "pytest_add_cli_args_test_selection = "
        toml.write_text("".join(key + json.dumps(tests) + "\n" if line.startswith(key) else line
                                for line in toml.read_text().splitlines(keepends=True)))
    if name in EVERY_TEST:
        # the fast files first (with new tests most die there), then all the files for what is left
        meta = d / "mutants" / (path + ".meta")
        for files in ([FAST_FILES[name]] if copy_tests and name in FAST_FILES else []) + [0]:  # (0: all files)
            todo = score(name)["not_killed"]
            if todo:
                # a changed test selection makes mutmut reset every verdict, the killed ones included:
                # keep those (only ``todo`` is rerun)
                before = json.loads(meta.read_text())["exit_code_by_key"]
                mutmut(d, "run", "--max-children", str(jobs), *todo, every_test=True, files=files,
                       per_function=not files and name in PER_FUNCTION_SECOND_PASS)
                m = json.loads(meta.read_text())
                codes = m["exit_code_by_key"]
                codes.update({k: v for k, v in before.items() if k not in todo and codes.get(k) is None})
                meta.write_text(json.dumps(m))
        return {}
    original = (d / path).read_text()
    env = dict(os.environ, GRC_BLOCKS_PATH=str(d / "grc"), PYTHONPATH=str(d))
    f = d / "retest.json"
    verdicts = json.loads(f.read_text()) if f.exists() else {}  # earlier retests' verdicts stand
    todo = score(name)["not_killed"]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *extra, *tests]
    limit = RETEST_TIMEOUT_S
    if todo:  # the tests pass without a mutant (else every mutant would count as killed), and how fast
        t0 = time.monotonic()
        clean = subprocess.run(cmd, cwd=d, env=env, capture_output=True, timeout=RETEST_TIMEOUT_S)
        if clean.returncode != 0:
            raise SystemExit(f"{name}: the tests fail in {d} without a mutant:\n"
                             + clean.stdout.decode(errors="replace")[-3000:])
        # (a mutant that loops forever -- at import, say -- is stopped after RETEST_CLEAN_FACTOR x that)
        limit = min(RETEST_TIMEOUT_S, max(RETEST_MIN_S, RETEST_CLEAN_FACTOR * (time.monotonic() - t0)))
    try:
        for k in todo:
            (d / path).write_text(original)
            mutmut(d, "apply", k, capture=True)
            if (d / path).read_text() == original:
                verdicts[k] = "not applied"
                continue
            try:
                r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, timeout=limit)
                verdicts[k] = "survived" if r.returncode == 0 else "killed"
            except subprocess.TimeoutExpired:
                verdicts[k] = "timeout"
            print(f"  {k}: {verdicts[k]}", flush=True)
            f.write_text(json.dumps(verdicts, indent=1))  # kept if the retest is stopped
    finally:
        (d / path).write_text(original)
    return verdicts


#: Per-mutant limit of :func:`retest` (the module's test files run whole there): RETEST_CLEAN_FACTOR
#: times their clean run, at least RETEST_MIN_S, at most RETEST_TIMEOUT_S.
RETEST_TIMEOUT_S = 600
RETEST_CLEAN_FACTOR = 5
RETEST_MIN_S = 30


def score(name: str, retested: Optional[dict] = None) -> dict:
    """Counts and score of the last run, with :func:`retest`'s verdicts (if any) replacing mutmut's."""
    st = statuses(scratch(name))
    if retested is None:
        f = scratch(name) / "retest.json"
        retested = json.loads(f.read_text()) if f.exists() else {}
    st.update({k: v for k, v in retested.items() if k in st and v in ("killed", "timeout")})
    count = lambda s: sum(v == s for v in st.values())  # noqa: E731
    eq = [k for k in st if k in EQUIVALENT]
    # a mutant that hangs the tests is caught by the timeout; mutmut reports the SIGKILL it sends a second
    # after SIGXCPU when the tests sit in C code (numpy) as "segfault": a test run that did not pass either way
    killed = count("killed") + count("timeout") + count("segfault")
    live = [k for k, v in st.items()
            if v not in ("killed", "timeout", "segfault", "not checked") and k not in EQUIVALENT]
    denom = len(st) - len(eq) - count("not checked")  # a stopped run: the score of the mutants checked
    out = dict(module=MODULES[name][0], tests=MODULES[name][1], total=len(st), not_checked=count("not checked"),
               killed=count("killed"),
               timeout=count("timeout") + count("segfault"), survived=count("survived"), no_tests=count("no tests"),
               equivalent=len(eq), score=round(100.0 * killed / denom, 1) if denom else None,
               not_killed=sorted(live))
    (scratch(name) / "score.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [_EVERY_TEST_FLAG]:
        return _mutmut_every_test(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to test: {', '.join(MODULES)}")
    ap.add_argument("--list", action="store_true", help="print the module table and exit")
    ap.add_argument("--show", action="store_true", help="print the diff of each surviving mutant (no run)")
    ap.add_argument("--score-only", action="store_true", help="recompute the score of the last run (no run)")
    ap.add_argument("--resume", action="store_true",
                    help="continue a stopped run in its scratch copy (results so far are kept) with the current tests")
    ap.add_argument("--jobs", type=int, default=1, help="mutants tested at once (mutmut's --max-children)")
    ap.add_argument("--retest", action="store_true",
                    help="copy the current tests into the last run's scratch copy and rerun only its mutants "
                         "that were not killed (after adding tests for them)")
    a = ap.parse_args(argv)
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if a.list or not a.modules:
        for n, (p, t, *x) in MODULES.items():
            print(f"{n:11s} {p:32s} {' '.join(t + sum(x, []))}")
        return 0
    for name in a.modules:
        if a.show:
            for k in score(name)["not_killed"]:
                print(mutmut(scratch(name), "show", k, capture=True).stdout)
            continue
        if a.retest:
            retest(name, a.jobs)
        elif not a.score_only:
            if a.resume:
                d = scratch(name)
                shutil.rmtree(d / "tests")
                shutil.copytree(ROOT / "tests", d / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                d = prepare(name)
            r = mutmut(d, "run", "--max-children", str(a.jobs), every_test=name in EVERY_TEST,
                       files=FAST_FILES.get(name, 0))
            if r.returncode:
                print(f"{name}: mutmut run exited with {r.returncode}", file=sys.stderr)
                return r.returncode
            if name in FAST_FILES:  # second pass: the mutants still alive against all the test files
                retest(name, a.jobs, copy_tests=False)
        s = score(name)
        print(json.dumps({k: v for k, v in s.items() if k != "not_killed"}))
        for k in s["not_killed"]:
            print(f"  not killed: {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
