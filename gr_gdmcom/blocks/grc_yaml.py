"""Generate ``grc/gr_gdmcom_<block>.block.yml`` from one table of parameters.

The YAML files are committed (GNU Radio Companion reads them from
``GRC_BLOCKS_PATH``); ``tests/test_grc.py`` checks that they are what this
module generates, that every ``make`` and ``callbacks`` entry matches the
Python class and that the ``asserts`` agree with the configs' own validation.

Block faces follow GNU Radio's convention: the few parameters of a block's
``face`` are drawn on the block, every other one is ``hide: part`` (shown in
the properties dialog only), and ``HIDE_WHEN`` hides settings that do not apply
(the threaded-decode settings unless the sink decodes in a thread).
Regenerate with::

    python -m gr_gdmcom.blocks.grc_yaml grc/
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import DEFAULT_MODEL, DEFAULT_PROMPT
from ..phy.frame import MAX_COPY_PILOT_SPACING

# (id, label, dtype, default (GRC expression), tab, documentation)
SERVER = [("server", "Inference server", "string", "'local'", None,
           "'local' (model in this process) or the ZMQ endpoint of `gdmcom serve`, e.g. tcp://gpu-host:5555")]
MODEL = [
    ("model", "Model", "string", repr(DEFAULT_MODEL), None,
     "Hugging Face id (default: Stable Diffusion 1.5), local diffusers folder, 'patch-gmm' (offline prior of "
     "natural images that runs on a CPU: the example flowgraphs' default), 'tiny' (offline random weights: "
     "tests the plumbing, the picture is noise), 'sd15-random' or 'analytic'"),
    ("device", "Device", "string", "'auto'", "Codec", "auto (CUDA if present), cpu, cuda, cuda:N"),
    ("dtype", "Precision", "string", "'auto'", "Codec", "auto (fp16 on CUDA, fp32 on CPU), fp16, bf16, fp32"),
]
SHARED = [
    ("T", "DDIM grid T", "int", "50", "Codec", "DDIM grid size (paper: 50)"),
    ("guidance", "Guidance", "float", "6.0", "Codec", "classifier-free guidance scale (paper: 6)"),
    ("prompt", "Prompt", "string", repr(DEFAULT_PROMPT), "Codec", "fixed text prompt"),
    ("seed", "Seed", "int", "0", "Codec", "seed of the codec's random generators"),
    ("clean_end", "Clean end", "enum", "'model'", "Codec",
     "a_0 of the DDIM grid: model (its scheduler config; SD 1.5: abar_0), one (a_0 = 1) or step0"),
    ("inversion", "Inversion", "enum", "'ddim'", "Codec",
     "ddim (eq. 10) or fixed-point (each inversion step solved implicitly; more UNet calls)"),
    ("inversion_iters", "Fixed-point iterations", "int", "3", "Codec",
     "most fixed-point iterations per inversion step (one UNet call each)"),
]
TX = [
    ("k", "Inversion steps k", "int", "5", "Codec", "DDIM-inversion steps at the transmitter (paper: 5)"),
    ("forward", "Forward process", "enum", "'ddim'", "Codec",
     "ddim (inversion, the method) or random (random-noise ablation)"),
    ("remove_mean", "Remove means", "bool", "True", "Codec",
     "subtract each latent channel's mean and send it in the frame header (False: the paper's exact signal)"),
    ("reduce", "Reduce by", "int", "1", "Codec",
     "send 1/reduce of the latent values: BCR 1/(96 reduce); a power of two on the radio link (docs/rate.md)"),
    ("reduce_method", "Reduction", "enum", "'subset'", "Codec",
     "subset (fixed pseudo-random values, the rest inpainted), pool (block pooling) or dct (each channel's "
     "low-frequency DCT coefficients); pool and dct with generative upsampling (docs/rate.md)"),
]
RX = [
    ("m", "Receiver steps m", "int", "5", "Codec", "DDIM-inversion steps continued at the receiver (paper: 5)"),
    ("rule", "Step rule", "editenum", "'snr'", "Codec",
     "snr (default), variance (paper's text), exact, or 'calibrated:FILE' (from gdmcom calibrate; type it in)"),
    ("rescale", "Rescale latent", "bool", "True", "Codec", "scale z_{k+m} by sqrt(a_N/a_{k+m}) (False: paper)"),
    ("steps", "Fixed N", "int", "0", "Codec", "fixed number of denoising steps N (0 = chosen from the SNR estimate); "
     "m <= N <= T, and an image sent with k needs k + m <= N"),
]
PHY = [
    ("sps", "Samples/symbol", "int", "2", "PHY", "samples per symbol (1 = no pulse shaping)"),
    ("rolloff", "RRC roll-off", "float", "0.35", "PHY", "root-raised-cosine roll-off"),
    ("rrc_span", "RRC span", "int", "8", "PHY", "RRC length in symbols (even)"),
    ("pilot_spacing", "Pilot spacing", "int", "16", "PHY", "data symbols between known pilots"),
    ("scramble", "Scramble", "bool", "True", "PHY", "PN phase scrambling of the payload (sent in the header: a receiver follows it)"),
    ("max_chunk_symbols", "Max chunk", "int", "8192", "PHY", "latent symbols per burst (larger latents are chunked)"),
    ("gap_symbols", "Gap", "int", "64", "PHY", "zero symbols between bursts"),
    ("header_copy", "Header copy", "bool", "True", "PHY",
     "a resync preamble and a second copy of the header in payloads of 2048 symbols or more (against fades; TX and RX must agree)"),
]
TX_PHY = [  # the transmitter's own settings (FrameConfig)
    ("header_version", "Header version", "int", "6", "PHY",
     "6 (this version: the sender id in the header) or 5, which receivers from before 2026-11-29 read "
     "(no sender id: Sender ID 0); receivers read both"),
    ("tx_clip", "TX clip", "float", "0.0", "PHY",
     "clip each sample at tx_clip x the burst's rms amplitude (0 = off, else >= 1): lower PAPR at the power "
     "amplifier, a distortion the receiver measures (docs/over-the-air.md)"),
]
RECEIVER = [  # the receiver's own settings (FrameConfig), on the Advanced tab
    ("detect_threshold", "Detect threshold", "float", "0.05", "Advanced",
     "normalised preamble-metric threshold (0..1)"),
    ("verify_threshold", "Verify threshold", "float", "0.12", "Advanced",
     "normalised preamble-correlation threshold (0..1)"),
    ("eq_taps", "Equaliser taps", "int", "7", "Advanced", "symbol-spaced LS equaliser taps (odd; 1 = one-tap)"),
    ("cfo_search", "CFO search", "int", "2", "Advanced",
     "extra CFO steps of 1/(16 sps) tried on either side (0..3): each widens the capture range"),
    ("phase_window", "Phase window", "int", "512", "Advanced",
     "longest channel-tracker window in pilot periods (the window is chosen per burst up to this)"),
    ("track_timing", "Drift tracking", "bool", "True", "Advanced",
     "follow a sampling-clock drift within bursts (sps >= 2); off where both ends share a clock: "
     "about a fifth less receiver time"),
    ("dispersive_eq", "Dispersive equaliser", "bool", "True", "Advanced",
     "second pass with a fractionally spaced equaliser fitted on all known symbols, kept where it lowers the "
     "noise 10 %: multipath longer than the taps or changing within a burst"),
    ("notch", "Tone notch", "bool", "True", "Advanced",
     "find narrowband interferers inside the signal's band (a spur, a carrier) and notch each, and subtract a DC "
     "offset measured where the stream is quiet (sps >= 2; counter tones_notched): 10 dB under the signal a tone "
     "costs ~8 dB of Es/N0, 3x over it every burst"),
    ("image_timeout", "Image timeout", "float", "4.0", "Advanced",
     "an image still missing chunks is published after this many of its bursts' durations with none of the "
     "rest (0 = at end of stream or the next image only; else >= 1); fewer of its bursts lost in a row never "
     "split an image: raise it where the transmitter pauses between chunks or a link drops several"),
]
#: editable dropdowns (GRC: a string parameter with options): the usual values, any other may be typed
OPTIONS = {"model": ([repr(DEFAULT_MODEL), "'patch-gmm'", "'tiny'", "'analytic'"],
                     ["Stable Diffusion 1.5", "patch-gmm (offline image prior)", "tiny (offline test)",
                      "analytic (offline prior)"]),
           "device": (["'auto'", "'cpu'", "'cuda'", "'cuda:0'"], ["auto", "cpu", "cuda", "cuda:0"]),
           "dtype": (["'auto'", "'fp32'", "'fp16'", "'bf16'"], ["auto", "fp32", "fp16", "bf16"])}
#: GRC asserts, written from CodecConfig.validate / FrameConfig.validate (tests/test_grc.py checks they agree).
#: steps: 0 (or less) is the step rule; a fixed N needs k + m <= N <= T, and the sink (k = 0: each image's k
#: comes in its header) refuses N < m when it is built -- after the model loaded, where GRC had drawn it fine
ASSERTS = {
    "T": "1 <= T <= 1000", "k": "0 <= k <= T", "m": "0 <= m <= T", "steps": "steps <= 0 or m <= steps <= T",
    "guidance": "0 <= guidance <= 100", "inversion_iters": "inversion_iters >= 1", "seed": "seed >= 0",
    "sps": "1 <= sps <= 16", "rolloff": "0 < rolloff <= 1", "rrc_span": "rrc_span >= 2 and rrc_span % 2 == 0",
    "pilot_spacing": f"2 <= pilot_spacing <= ({MAX_COPY_PILOT_SPACING} if header_copy else 4096)",
    "max_chunk_symbols": "1 <= max_chunk_symbols <= 65535",
    "gap_symbols": "gap_symbols >= 0", "eq_taps": "1 <= eq_taps <= 31 and eq_taps % 2 == 1",
    "phase_window": "phase_window >= 1", "detect_threshold": "0 < detect_threshold < 1",
    "verify_threshold": "0 < verify_threshold < 1", "cfo_search": "0 <= cfo_search <= 3",
    "tx_clip": "tx_clip == 0 or tx_clip >= 1", "header_version": "header_version in (5, 6)", "image_timeout": "image_timeout == 0 or 1 <= image_timeout <= 1e6",
}
#: parameters hidden unless they apply (a GRC hide expression)
HIDE_WHEN = {"max_pending": "${ 'part' if threaded else 'all' }",
             "drain_timeout": "${ 'part' if threaded else 'all' }"}
ENUMS = {"forward": (["'ddim'", "'random'"], ["DDIM inversion", "Random noise"]),
         "rule": (["'snr'", "'variance'", "'exact'"], ["log-SNR match", "Variance match", "Exact t*"]),
         "clean_end": (["'model'", "'one'", "'step0'"], ["From the model", "a_0 = 1", "a_0 = abar_0"]),
         "inversion": (["'ddim'", "'fixed-point'"], ["DDIM (eq. 10)", "Fixed-point"]),
         "reduce_method": (["'subset'", "'pool'", "'dct'"], ["Subset (inpainting)", "Pooling", "DCT truncation"])}

BLOCKS = {
    "semantic_source": dict(
        label="Semantic Source", category="[GDM-COM]/Sources",
        params=[("images", "Images", "string", "''", None,
                 "image paths, folders or globs, comma-separated; package:astronaut.png names a bundled image; "
                 "relative paths start from the working directory (GRC: the flowgraph's folder)"),
                ("repeat", "Repeat", "int", "1", None, "times to send the list (0 = loop forever)")]
        + SERVER + MODEL + TX + SHARED
        + [("image_id_start", "First image id", "int", "0", "Codec", "image id of the first image (wraps at 65536)"),
           ("sender_id", "Sender ID", "int", "0", "Codec",
            "this transmitter's id in every burst header, 0-127: receivers reassemble each sender's images apart, "
            "so transmitters taking turns on one channel do not split each other's images"),
           ("burst_tags", "UHD burst tags", "bool", "False", "PHY", "add tx_sob/tx_eob tags for UHD sinks"),
           ("tail_symbols", "Tail", "int", "512", "PHY", "zero symbols sent after the last burst"),
           ("wait_for_images", "Wait for images", "bool", "False", None,
            "when no image can be read: wait for the files (True) or end the stream (False)"),
           ("stop_timeout", "Stop timeout", "float", "10.0", "Codec",
            "seconds stop() waits for the encoder thread (an image being encoded finishes first)")] + PHY + TX_PHY,
        face=["images", "repeat", "model", "server"], asserts=["repeat >= 0", "tail_symbols >= 0", "stop_timeout >= 0",
                                                          "0 <= sender_id <= 127",
                                                          "reduce in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)"],
        inputs=[], outputs=[dict(domain="stream", dtype="complex"),
                            dict(domain="message", id="info", optional=True)],
        callbacks=["set_repeat(${repeat})"],
        doc="Images -> diffusion encoder (VAE, k DDIM-inversion steps, unit-power normalisation) -> framed "
            "complex baseband bursts.\nOutput: complex64 at sps samples/symbol; tags packet_len, image_id, chunk at "
            "each burst start (tx_sob/tx_eob with 'UHD burst tags').\nMessage out 'info': one PDU per image "
            "(image_id, name, path, bursts, symbols, alpha, seconds, error).\nThe stream ends after the last image "
            "unless Repeat is 0."),
    "semantic_sink": dict(
        label="Semantic Sink", category="[GDM-COM]/Sinks",
        params=[("out_dir", "Output folder", "dir_select", "'out'", None,
                 "folder for decoded images ('' = none); relative to the working directory (GRC: the flowgraph's "
                 "folder)"),
                ("filename", "File name", "string", "'img{image_id:05d}.png'", None,
                 "pattern with {image_id}, {name} and {sender}; a sender other than 0 writes into tx<sender>/ unless "
                 "the pattern names {sender}")]
        + SERVER + MODEL + RX + SHARED
        + [("threaded", "Decode in thread", "bool", "False", "Codec",
            "decode in a worker thread so a live radio stream keeps flowing (False: decode in work())"),
           ("max_pending", "Max pending", "int", "8", "Codec", "images waiting for the decoder (threaded mode)"),
           ("drain_timeout", "Drain timeout", "float", "600.0", "Codec", "seconds to finish decoding at stop")]
        + PHY + RECEIVER,
        face=["out_dir", "model", "server", "threaded"],
        inputs=[dict(domain="stream", dtype="complex")],
        outputs=[dict(domain="message", id="images", optional=True)],
        callbacks=[],
        doc="Complex baseband -> bursts found -> SNR estimated from known symbols -> N chosen -> decoded images "
            "written to the output folder.\nInput: complex64 at sps samples/symbol.\nMessage out 'images': one PDU "
            "per image, metadata image_id, sender, name, snr_est_db, n_steps, rule, k, m, T, alpha, s_tot2, unet_calls, "
            "symbols, height, width, chunks_received, chunks_total, complete, missing_chunks, untracked_chunks, "
            "erased_symbols, repeat, update, reception, snr_eff_db, seconds, model_mismatch, file or error, counters; "
            "vector: RGB uint8 pixels, height*width*3.\nThreaded: images still decoding when the stream ends "
            "are written, but get no PDU (GNU Radio delivers none that late)."),
    "frame_tx": dict(
        label="Frame TX", category="[GDM-COM]/PHY",
        params=[("burst_tags", "UHD burst tags", "bool", "False", None, "add tx_sob/tx_eob tags"),
                ("idle_zeros", "Idle zeros", "bool", "False", None, "send zeros while idle (continuous stream)")]
        + PHY + TX_PHY,
        face=["burst_tags", "idle_zeros", "sps"],
        inputs=[dict(domain="message", id="pdus")], outputs=[dict(domain="stream", dtype="complex")],
        callbacks=[],
        doc="PDU (metadata: image_id, latent_shape, image_size, k, T, forward, guidance, alpha, prompt_hash, "
            "optionally model_hash, flags, means, total_symbols; "
            "vector: c32 latent symbols) -> burst samples.\nMessage in 'pdus'; a PDU with eos=#t ends the stream.\n"
            "Output: complex64 bursts with packet_len, image_id, chunk tags."),
    "frame_rx": dict(
        label="Frame RX", category="[GDM-COM]/PHY",
        params=[("reassemble", "Reassemble", "bool", "True", None, "one PDU per image (else one per frame)")]
        + PHY + RECEIVER,
        face=["reassemble", "sps"],
        inputs=[dict(domain="stream", dtype="complex")], outputs=[dict(domain="message", id="pdus")],
        callbacks=[],
        doc="Samples -> detection, CFO/timing/gain estimation, equalisation, header CRC, SNR estimate -> PDUs.\n"
            "Input: complex64.\nMessage out 'pdus': metadata = header fields + snr_db (estimated Es/N0) + "
            "chunks/complete/untracked_chunks/erased_symbols/erased_ranges/repeat/update/reception (or noise_var, cfo, sro_ppm, start, "
            "tracked, track_span, erased_ranges, cut per frame); vector: c32 equalised latent symbols, 0 where erased."),
    "rx_level": dict(
        label="RX Level", category="[GDM-COM]/Instrumentation",
        params=[("samp_rate", "Sample rate", "float", "1000000.0", None, "sample rate of the input, samples/s"),
                ("period", "Period (s)", "float", "2.0", None, "seconds of samples per report"),
                ("clip", "Clip level", "float", "0.9", None, "|x| above this counts as clipped (full scale: 1)"),
                ("low_dbfs", "Low level (dBFS)", "float", "-40.0", None,
                 "warn when even the peak of a period stays below this")],
        face=["samp_rate", "period"], asserts=["samp_rate > 0", "period > 0", "0 < clip <= 1"],
        inputs=[dict(domain="stream", dtype="complex")], outputs=[], callbacks=[],
        doc="RX level meter: every period it logs the peak, RMS and DC (the radio's DC offset) of the received "
            "samples in dBFS (full scale: |x| = 1) and the share of samples above the clip level; it warns on clipping (lower the RX gain or "
            "the TX level) and when nothing strong arrived. Bursts should peak between about -20 and -6 dBFS.\n"
            "Input: complex64 samples."),
    "image_display": dict(
        label="Image Display", category="[GDM-COM]/GUI",
        params=[("label", "Title", "string", "'Original | Reconstruction'", None, "title above the pictures"),
                ("size", "Size (px)", "int", "256", None, "longest side of each picture on screen"),
                ("gui_hint", "GUI Hint", "gui_hint", "", None,
                 "place in the QT GUI window, as other QT GUI blocks: row, col[, row span, col span], "
                 "optionally tab@index: (empty: below the other widgets)")],
        face=["label", "size"],
        inputs=[dict(domain="message", id="images", optional=True), dict(domain="message", id="info", optional=True)],
        outputs=[], callbacks=[], gui_hint=True,
        doc="QT GUI flowgraphs only: the original image beside its reconstruction, updated per image, with a "
            "caption: estimated SNR, chosen N, PSNR against the original, chunks received.\nMessage in 'images': "
            "the Semantic Sink's PDUs (RGB uint8 vector + height/width, or file).\nMessage in 'info': the Semantic "
            "Source's PDUs (the original is read from path)."),
}


def _param_yaml(pid, label, dtype, default, tab, doc, hide="none") -> str:
    lines = [f"-   id: {pid}", f"    label: {label}", f"    dtype: {'raw' if 'enum' in dtype else dtype}"]
    if default != "":
        lines.append(f"    default: {_q(default)}")
    if "enum" in dtype:  # enum: a dropdown; editenum: a raw value with suggested options (editable dropdown)
        opts, labels = ENUMS[pid]
        lines[2] = "    dtype: enum" if dtype == "enum" else "    dtype: raw"
        lines += [f"    options: [{', '.join(_q(o) for o in opts)}]",
                  f"    option_labels: [{', '.join(_q(o) for o in labels)}]"]
    if dtype == "bool":
        lines[2] = "    dtype: bool"
        lines += ["    options: ['True', 'False']", "    option_labels: ['Yes', 'No']"]
    if pid in OPTIONS:
        opts, labels = OPTIONS[pid]
        lines += [f"    options: [{', '.join(_q(o) for o in opts)}]",
                  f"    option_labels: [{', '.join(_q(o) for o in labels)}]"]
    if tab:
        lines.append(f"    category: {tab}")
    if hide != "none":
        lines.append(f"    hide: {_q(hide)}")
    return "\n".join(lines)


def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port_yaml(p: dict) -> str:
    lines = [f"-   domain: {p['domain']}"]
    if "dtype" in p:
        lines.append(f"    dtype: {p['dtype']}")
    if "id" in p:
        lines.append(f"    id: {p['id']}")
    if p.get("optional"):
        lines.append("    optional: true")
    return "\n".join(lines)


def _hide(block: dict, pid: str) -> str:
    """'none' on the block's face, else 'part' (properties dialog only) or the HIDE_WHEN expression."""
    if pid in HIDE_WHEN:
        return HIDE_WHEN[pid]
    return "none" if pid in block["face"] else "part"


def _asserts(params) -> list:
    ids = {p[0] for p in params}
    return [f"${{ {expr} }}" for pid, expr in ASSERTS.items()
            if pid in ids and all(name in ids for name in _names(expr))]


def _names(expr: str) -> set:
    import ast
    return {n.id for n in ast.walk(ast.parse(expr)) if isinstance(n, ast.Name)}


def block_yaml(name: str) -> str:
    b = BLOCKS[name]
    params = b["params"]
    args = [f"{p[0]}=${{{p[0]}}}" for p in params if p[2] != "gui_hint"]
    make = f"gdmcom.{name}(" + ", ".join(args) + ")"
    if b.get("gui_hint"):  # a QT widget placed by GRC's GUI Hint, as qtgui_graphicitem does
        make = "|-\n        <%\n            win = 'self._%s_win' % id\n        %>\\\n        " + make + \
            "\n        ${win} = self.${id}.widget()\n        ${gui_hint() % win}"
    doc = b["doc"] + "\n\nParameters:\n" + "\n".join(f"  {p[1]} ({p[0]}): {p[5]}" for p in params)
    parts = [
        f"id: gr_gdmcom_{name}", f"label: {b['label']}", f"category: '{b['category']}'", "flags: [ python ]", "",
        "parameters:", *[_param_yaml(*p, hide=_hide(b, p[0])) for p in params], "",
        "inputs:" + ("" if b["inputs"] else " []"), *[_port_yaml(p) for p in b["inputs"]], "",
        "outputs:" + ("" if b["outputs"] else " []"), *[_port_yaml(p) for p in b["outputs"]], "",
        "templates:", "    imports: import gr_gdmcom.blocks as gdmcom", f"    make: {make}",
    ]
    if b["callbacks"]:
        parts.append("    callbacks:")
        parts += [f"    - {c}" for c in b["callbacks"]]
    asserts = _asserts(params) + [f"${{ {a} }}" for a in b.get("asserts", ())]
    if asserts:
        parts += ["", "asserts:", *[f"- {_q(a)}" for a in asserts]]
    parts += ["", "documentation: |-", *["    " + line if line else "" for line in doc.splitlines()], "",
              "file_format: 1", ""]
    return "\n".join(parts)


def write_all(folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in BLOCKS:
        path = folder / f"gr_gdmcom_{name}.block.yml"
        path.write_text(block_yaml(name))
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "grc")):
        print(p)
