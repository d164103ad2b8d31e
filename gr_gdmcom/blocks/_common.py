"""Shared glue of the blocks: typed configuration from block parameters, PDUs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pmt

from ..config import CodecConfig
from ..phy import FrameConfig

#: Stream tag keys and message ports (module constants, as GNU Radio's own blocks).
PACKET_LEN = pmt.intern("packet_len")
IMAGE_ID = pmt.intern("image_id")
CHUNK = pmt.intern("chunk")
TX_SOB = pmt.intern("tx_sob")
TX_EOB = pmt.intern("tx_eob")
PORT_IMAGES = pmt.intern("images")
PORT_INFO = pmt.intern("info")
PORT_PDUS = pmt.intern("pdus")

_CODEC_FIELDS = {f.name for f in dataclasses.fields(CodecConfig)}
_FRAME_FIELDS = {f.name for f in dataclasses.fields(FrameConfig)}


def split_config(kw: dict):
    """Block keyword arguments -> (CodecConfig, FrameConfig); unknown names are an error."""
    unknown = set(kw) - _CODEC_FIELDS - _FRAME_FIELDS
    if unknown:
        raise TypeError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    codec = CodecConfig(**{k: v for k, v in kw.items() if k in _CODEC_FIELDS})
    if codec.steps is not None and codec.steps <= 0:
        codec = codec.replace(steps=None)  # GRC: 0 means "use the rule"
    frame = FrameConfig(**{k: v for k, v in kw.items() if k in _FRAME_FIELDS})
    return codec.validate(), frame


def to_pmt(obj):
    """Python value -> pmt, with numpy scalars, tuples and non-finite floats handled."""
    if isinstance(obj, pmt.pmt_base):
        return obj
    if isinstance(obj, dict):
        d = pmt.make_dict()
        for k, v in obj.items():
            d = pmt.dict_add(d, pmt.intern(str(k)), to_pmt(v))
        return d
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in obj):
            return pmt.init_s32vector(len(obj), [int(v) for v in obj])
        if obj and all(isinstance(v, (float, np.floating)) for v in obj):
            return pmt.init_f64vector(len(obj), [float(v) for v in obj])
        vec = pmt.make_vector(len(obj), pmt.PMT_NIL)
        for i, v in enumerate(obj):
            pmt.vector_set(vec, i, to_pmt(v))
        return vec
    return to_pmt_scalar(obj)


def to_pmt_scalar(v):
    if isinstance(v, (bool, np.bool_)):
        return pmt.from_bool(bool(v))
    if isinstance(v, (int, np.integer)):
        return pmt.from_long(int(v))
    if isinstance(v, (float, np.floating)):
        return pmt.from_double(float(v))
    if v is None:
        return pmt.PMT_NIL
    if isinstance(v, str):
        return pmt.intern(v)
    return pmt.intern(str(v))


#: metadata lists of integers: an s32vector even when empty (an empty Python list would
#: become an untyped pmt vector, so a field's type would depend on its length)
INT_LIST_FIELDS = ("missing_chunks", "untracked_chunks", "latent_shape", "image_size")


def pdu(meta: dict, vector=None):
    """A PDU: (metadata dict . vector); no vector -> an empty u8vector.  The fields of
    :data:`INT_LIST_FIELDS` are s32vectors, ``means`` an f64vector, whatever their length."""
    if vector is None:
        vec = pmt.init_u8vector(0, [])
    elif np.iscomplexobj(vector):
        vec = pmt.init_c32vector(len(vector), np.asarray(vector, np.complex64))
    else:
        vec = pmt.init_u8vector(len(vector), np.asarray(vector, np.uint8).ravel().tolist())
    fields = {}
    for k, v in meta.items():
        if k == "image":
            continue
        if k in INT_LIST_FIELDS and isinstance(v, (list, tuple)):
            v = pmt.init_s32vector(len(v), [int(x) for x in v])
        elif k == "means" and isinstance(v, (list, tuple)):
            v = pmt.init_f64vector(len(v), [float(x) for x in v])
        fields[k] = v
    return pmt.cons(to_pmt(fields), vec)



def guarded_receive(block, rx, receive, x):
    """``receive(x)`` for a receiving block's ``work()``: an unexpected error (a bug) is
    logged with its traceback and counted in ``block.internal_errors``, the receiver
    ``rx`` (a :class:`FrameRx`) drops its buffered samples and None is returned, so that
    the flowgraph goes on instead of losing the block's thread (GNU Radio then never
    finishes)."""
    try:
        return receive(x)
    except Exception:  # noqa: BLE001 - any bug: logged, counted, the stream goes on
        block.internal_errors += 1
        import logging
        logging.getLogger(type(block).__module__).exception(
            "internal error while receiving; %d buffered samples dropped (counted in internal_errors)", len(x))
        rx.reset()
        return None
