"""GPU-path options of a loaded model: attention kernel, memory format, ``torch.compile``.

``apply_speed_options(components, ...)`` changes the loaded modules in place
(the codec's arithmetic is untouched); ``warm_up(codec)`` runs one encode and
decode so that compilation and kernel selection happen before the first timed
or served request.  The dtype is chosen at load time (``--dtype``); the DDIM
arithmetic stays float32 whatever it is (``GenerativeCodec._ddim``).

* ``attention="sdpa"``: PyTorch's ``scaled_dot_product_attention`` (diffusers'
  ``AttnProcessor2_0``: flash / memory-efficient kernels on CUDA); ``"classic"``:
  diffusers' explicit softmax(QK^T)V (``AttnProcessor``), the reference.
* ``channels_last``: NHWC memory format for the UNet and VAE convolutions
  (faster cuDNN kernels on tensor-core GPUs).
* ``compile``: ``torch.compile`` of the UNet (``nn.Module.compile``, in place;
  ``compile_mode="reduce-overhead"`` or ``"max-autotune"`` add CUDA graphs).
  The first call of each new input shape compiles (tens of seconds);
  ``compile_dynamic=False`` compiles every batch size as a static shape (the
  fastest kernels, one compilation each), None lets dynamo turn to a dynamic
  batch dimension after the second size (fewer compilations: a server).
* ``compile_vae``: also compile the VAE's encoder and decoder (same mode).
* ``fuse_qkv``: diffusers' fused QKV projections (one matrix product for the
  query, key and value of each self-attention, one for the key and value of
  each cross-attention), SDPA only.
* ``inductor_tuning``: the inductor settings of diffusers' speed-up guide
  (1x1 convolutions as matrix products, coordinate-descent tuning, no epilogue
  fusion); process-wide, and compilation takes longer.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "classic")


INDUCTOR_TUNING = dict(conv_1x1_as_mm=True, coordinate_descent_tuning=True, epilogue_fusion=False,
                       coordinate_descent_check_all_directions=True)


def apply_speed_options(c, attention: str = "sdpa", channels_last: bool = False, compile: bool = False,
                        compile_mode: Optional[str] = None, compile_backend: str = "inductor",
                        compile_vae: bool = False, compile_dynamic: Optional[bool] = None, fuse_qkv: bool = False,
                        inductor_tuning: bool = False):
    """Apply the options to ``c`` (:class:`~.models.Components`) in place; returns ``c``.

    ``compile_mode`` (or ``compile_vae``) implies ``compile``.

    Raises:
        ValueError: an unknown ``attention``; ``fuse_qkv`` with ``attention="classic"``.
    """
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    if fuse_qkv and attention != "sdpa":
        raise ValueError("fuse_qkv needs attention 'sdpa' (diffusers' fused processor is an SDPA one)")
    if not hasattr(c.unet, "set_attn_processor"):  # the analytic model has no attention
        return c
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    proc = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    c.unet.set_attn_processor(proc())
    c.vae.set_attn_processor(proc())
    if fuse_qkv:
        c.unet.fuse_qkv_projections()
        c.vae.fuse_qkv_projections()
    if channels_last:
        c.unet.to(memory_format=torch.channels_last)
        c.vae.to(memory_format=torch.channels_last)
    compile = compile or compile_mode is not None or compile_vae
    if compile:
        if inductor_tuning:
            import torch._inductor.config as inductor

            for key, value in INDUCTOR_TUNING.items():
                setattr(inductor, key, value)
        opts = dict(mode=None if compile_mode == "default" else compile_mode, backend=compile_backend,
                    fullgraph=False, dynamic=compile_dynamic)
        c.unet.compile(**opts)
        if compile_vae:
            c.vae.encoder.compile(**opts)
            c.vae.decoder.compile(**opts)
    c.speed = dict(attention=attention, channels_last=channels_last, fuse_qkv=fuse_qkv,
                   compile=(compile_mode or "default") if compile else None, compile_vae=compile_vae,
                   inductor_tuning=inductor_tuning and compile)
    log.info("model options: attention %s%s, channels_last %s, compile %s", attention,
             " (fused QKV)" if fuse_qkv else "", channels_last,
             f"{compile_backend}/{compile_mode or 'default'}{' +VAE' if compile_vae else ''}"
             f"{' +tuning' if inductor_tuning else ''}" if compile else "off")
    return c


def warm_up(codec, size: int = 64, batch: int = 1) -> None:
    """One encode and decode of ``batch`` images of ``size`` x ``size`` (not counted anywhere:
    the codec's counters are restored), so compilation happens before timing or serving."""
    stats = dict(codec.stats)
    img = np.full((size, size, 3), 128, np.uint8)
    encs = codec.encode_many([img] * batch)
    codec.decode_many([(e.symbols, e.meta, 10.0) for e in encs])
    codec.stats.update(stats)
