"""The diffusion codec: torch and diffusers only, never GNU Radio."""

from .core import CodecError, Decoded, Encoded, Failed, GenerativeCodec, LatentMeta, latent_from_symbols, prompt_hash, symbols_from_latent
from .images import ImageError, load_rgb
from .models import Components, ModelLoadError, load_components
from .schedule import StepChoice, get_grid, select_steps, steps_table

__all__ = ["CodecError", "Components", "Decoded", "Encoded", "Failed", "GenerativeCodec", "ImageError",
           "LatentMeta", "ModelLoadError", "StepChoice", "get_grid", "latent_from_symbols", "load_components",
           "load_rgb", "prompt_hash", "select_steps", "steps_table", "symbols_from_latent"]
