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
  ``compile_mode="max-autotune"`` adds CUDA graphs where shapes are static).
  The first call of each new input shape compiles (tens of seconds).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

ATTENTION = ("sdpa", "classic")


def apply_speed_options(c, attention: str = "sdpa", channels_last: bool = False, compile: bool = False,
                        compile_mode: Optional[str] = None, compile_backend: str = "inductor"):
    """Apply the options to ``c`` (:class:`~.models.Components`) in place; returns ``c``.

    Raises:
        ValueError: an unknown ``attention``.
    """
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    if not hasattr(c.unet, "set_attn_processor"):  # the analytic model has no attention
        return c
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    proc = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    c.unet.set_attn_processor(proc())
    c.vae.set_attn_processor(proc())
    if channels_last:
        c.unet.to(memory_format=torch.channels_last)
        c.vae.to(memory_format=torch.channels_last)
    if compile:
        c.unet.compile(mode=compile_mode, backend=compile_backend, fullgraph=False)
    log.info("model options: attention %s, channels_last %s, compile %s", attention, channels_last,
             f"{compile_backend}/{compile_mode or 'default'}" if compile else "off")
    return c


def warm_up(codec, size: int = 64, batch: int = 1) -> None:
    """One encode and decode of ``batch`` images of ``size`` x ``size`` (not counted anywhere:
    the codec's counters are restored), so compilation happens before timing or serving."""
    stats = dict(codec.stats)
    img = np.full((size, size, 3), 128, np.uint8)
    encs = codec.encode_many([img] * batch)
    codec.decode_many([(e.symbols, e.meta, 10.0) for e in encs])
    codec.stats.update(stats)
