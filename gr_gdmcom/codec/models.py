"""Loading the latent diffusion model's frozen components.

``load_components(model)`` takes a Hugging Face id (default: Stable Diffusion
1.5), a local diffusers folder (``vae/``, ``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), ``tiny``: a seeded random-weight model of
the same diffusers/transformers classes, built offline from the configs below
(the tokenizer from the ``vocab.json``/``merges.txt`` kept in this package),
or ``sd15-random``: SD-1.5's real architecture (its published UNet, VAE and
CLIP text-encoder configs, kept in ``assets/sd15/``) with random weights, for
measuring speed and memory without the weights.  Both are saved once to a
cache folder and then loaded through the very same ``from_pretrained`` path
as a real model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

TINY_NAME = "tiny"
TINY_VERSION = 2
SD15_RANDOM_NAME = "sd15-random"
SD15_RANDOM_VERSION = 1
_ASSETS = Path(__file__).resolve().parent / "assets"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do instead."""


@dataclass
class Components:
    """The frozen SD components and where they came from."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    model_id: str
    revision: Optional[str] = None
    #: the speed options applied (:func:`.accel.apply_speed_options`); empty: the defaults
    speed: dict = field(default_factory=dict)

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)


#: What a fingerprint covers: the values that make a latent mean the same to both sides (the
#: VAE's latent space and the UNet's noise schedule), named explicitly so that diffusers
#: versions adding config keys, a local folder against a hub id, or another dtype or device
#: give the same fingerprint.
FINGERPRINT_KEYS = {
    "vae": ("in_channels", "latent_channels", "block_out_channels", "layers_per_block", "scaling_factor"),
    "unet": ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
             "attention_head_dim", "sample_size"),
    "scheduler": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"),
}


def model_fingerprint(c: Components) -> int:
    """A 16-bit fingerprint (1..65535) of the model ``c`` -- its architecture and noise schedule
    (:data:`FINGERPRINT_KEYS`), and for the offline priors their parameters (``analytic``: its
    spec; ``patch-gmm``: its parameter file's sha256) -- carried in every frame header so that a
    receiver running another model says so instead of decoding noise.  Two checkpoints of one
    architecture (SD-1.5 and a fine-tune of it, or ``sd15-random``) have the same fingerprint:
    their latents share the VAE's space.  Computed once per :class:`Components` (the codecs a
    server makes for requests' own settings share it)."""
    cached = getattr(c, "_fingerprint", None)
    if cached is not None:
        return cached
    import hashlib
    import zlib

    def pick(cfg, keys):
        cfg = dict(cfg or {})
        return {k: cfg.get(k) for k in keys}

    what = {"vae": [type(c.vae).__name__, pick(getattr(c.vae, "config", {}), FINGERPRINT_KEYS["vae"])],
            "unet": [type(c.unet).__name__, pick(getattr(c.unet, "config", {}), FINGERPRINT_KEYS["unet"])],
            "scheduler": pick(c.scheduler_config, FINGERPRINT_KEYS["scheduler"])}
    model = str(c.model_id)
    if model == "analytic" or model.startswith("analytic:"):
        from .analytic import parse_spec
        what["spec"] = str(parse_spec(model))
    elif model == "patch-gmm" or model.startswith("patch-gmm:"):
        from .patch_gmm import PARAMS_FILE, parse_options
        folder, _ = parse_options(model)
        what["params"] = hashlib.sha256((folder / PARAMS_FILE).read_bytes()).hexdigest()
    text = json.dumps(what, sort_keys=True, default=lambda v: list(v) if isinstance(v, (tuple, list)) else str(v))
    c._fingerprint = zlib.crc32(text.encode()) % 0xFFFF + 1
    return c._fingerprint


def cache_dir() -> Path:
    """Folder for built models: ``$GDMCOM_CACHE`` or ``~/.cache/gr_gdmcom``."""
    return Path(os.environ.get("GDMCOM_CACHE", Path.home() / ".cache" / "gr_gdmcom"))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine; "
                             "use --device cpu (or auto).")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} requested but this torch has no MPS (Apple GPU) support here; "
                             "use --device cpu (or auto).")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp16, bf16 or fp32")
    return table[dtype]


def check_prediction_type(scheduler_config: dict, model: str = "model") -> str:
    """The model's ``prediction_type`` (diffusers' scheduler config; ``epsilon`` when
    absent) if the codec supports it: ``epsilon`` or ``v_prediction``.

    Raises:
        ModelLoadError: for any other value (e.g. ``sample``).
    """
    from .schedule import PREDICTION_TYPES

    kind = str((scheduler_config or {}).get("prediction_type", "epsilon"))
    if kind not in PREDICTION_TYPES:
        raise ModelLoadError(f"model {model!r}: its scheduler config says prediction_type={kind!r}; the codec "
                             f"supports {' and '.join(PREDICTION_TYPES)} (a UNet predicting noise or v)")
    return kind


# --------------------------------------------------------------------------- tiny model
def tiny_configs() -> dict:
    """Configs of the tiny SD-shaped model: SD's classes and latent geometry
    (4 latent channels, 8x spatial downsampling), a few channels wide."""
    unet = dict(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8,
    )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=1000, max_position_embeddings=77, bos_token_id=535, eos_token_id=536,
        pad_token_id=536, projection_dim=32,
    )
    return dict(unet=unet, vae=vae, text=text)


def sd15_configs(shrink: int = 1) -> dict:
    """SD-1.5's published UNet, VAE and text-encoder configs (``assets/sd15/*.json``).

    ``shrink`` > 1 divides every width (channels, cross-attention and text hidden
    sizes) by it and keeps the depth (blocks, layers, heads), for cheap checks of
    the architecture; group norms use the largest group count that divides the widths.
    """
    cfg = {name: {k: v for k, v in json.loads((_ASSETS / "sd15" / f"{name}.json").read_text()).items()
                  if not k.startswith("_")} for name in ("unet", "vae", "text_encoder")}
    if shrink > 1:
        unet, vae, text = cfg["unet"], cfg["vae"], cfg["text_encoder"]
        for part in (unet, vae):
            part["block_out_channels"] = [c // shrink for c in part["block_out_channels"]]
            part["norm_num_groups"] = math.gcd(part["norm_num_groups"], *part["block_out_channels"])
        for key in ("hidden_size", "intermediate_size", "projection_dim"):
            text[key] //= shrink
        unet["cross_attention_dim"] = text["hidden_size"]
    return dict(unet=cfg["unet"], vae=cfg["vae"], text=cfg["text_encoder"])


def build_tiny(path: Path, seed: int = 0) -> Path:
    """Build the tiny random-weight model and ``save_pretrained`` it to ``path``."""
    return build_random(path, tiny_configs(), seed, marker=f'"_gdmcom_tiny": {TINY_VERSION}')


def build_random(path: Path, cfg: dict, seed: int = 0, marker: str = '"_gdmcom_random": 1') -> Path:
    """Build a random-weight model of the configs ``cfg`` (``unet``, ``vae``, ``text``)
    with the package's tokenizer and SD's scheduler, and ``save_pretrained`` it to ``path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()

    from .schedule import SD_SCHEDULER

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    # Random weights give noise predictions of arbitrary size; scale the output
    # convolution so eps-predictions have unit variance, as a trained model's
    # do, and the DDIM arithmetic behaves as it does with SD.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        unet.conv_out.bias.zero_()
        probe = unet(torch.randn(4, 4, 8, 8, generator=g), torch.tensor([1, 261, 521, 981]),
                     encoder_hidden_states=torch.randn(4, 77, cfg["unet"]["cross_attention_dim"], generator=g)).sample
        unet.conv_out.weight.div_(probe.std())
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    tok_dir = _ASSETS / "tiny_tokenizer"
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    # Calibrate the VAE scaling factor so scaled latents have unit variance,
    # as SD's 0.18215 does for its trained VAE.
    g = torch.Generator().manual_seed(seed)
    probe = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        raw = vae.encode(probe).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / raw.std()))

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    unet.save_pretrained(tmp / "unet")
    vae.save_pretrained(tmp / "vae")
    text_encoder.save_pretrained(tmp / "text_encoder")
    tokenizer.save_pretrained(tmp / "tokenizer")
    DDIMScheduler(**SD_SCHEDULER).save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", %s}' % marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, path)  # atomic: concurrent builders never see half a model
    except OSError:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return path


def tiny_path() -> Path:
    """Folder of the tiny model, built on first use."""
    path = cache_dir() / f"tiny-v{TINY_VERSION}"
    if not (path / "model_index.json").exists():
        log.info("building the tiny random-weight model in %s", path)
        build_tiny(path)
    return path


def sd15_random_path() -> Path:
    """Folder of the random-weight SD-1.5-architecture model, built on first use (4.3 GB fp32, the UNet 3.4 GB of it)."""
    path = cache_dir() / f"sd15-random-v{SD15_RANDOM_VERSION}"
    if not (path / "model_index.json").exists():
        log.warning("building the random-weight SD-1.5-architecture model in %s (once; minutes on a CPU)", path)
        build_random(path, sd15_configs(), marker=f'"_gdmcom_sd15_random": {SD15_RANDOM_VERSION}')
    return path


# --------------------------------------------------------------------------- checking a name
_CHOICES = ("choose 'patch-gmm' (offline prior of natural images), 'tiny' (random weights, built offline), "
            "'sd15-random' (SD-1.5's architecture, random weights), 'analytic' (exact Gaussian-mixture prior; "
            "image sides multiples of 64), a local diffusers folder (vae/, unet/, text_encoder/, tokenizer/, "
            "scheduler/), or a Hugging Face id such as {default} (needs network or a filled hub cache, HF_HOME)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_in_process(model: str) -> bool:
    """Whether ``model`` is one of the small offline models built in the package (``tiny``,
    ``analytic[:...]``, ``patch-gmm[:...]``), which load in-process in seconds."""
    return model == TINY_NAME or model.split(":", 1)[0] in ("analytic", "patch-gmm")


def check_model(model: str, probe_timeout: float = 4.0) -> None:
    """Refuse a ``--model`` value that cannot load, in seconds and before any weights are read.

    Built-in names pass; an existing folder must hold a diffusers model
    (``model_index.json`` or ``unet/``) with every part (:func:`check_folder`); ``owner/name`` is a hub id that must be
    in the hub cache or answer one metadata request within ``probe_timeout``
    seconds; anything else is not a model.

    Raises:
        ModelLoadError: one line naming what was given and what exists.
    """
    from ..config import DEFAULT_MODEL

    choices = _CHOICES.format(default=DEFAULT_MODEL)
    if model == SD15_RANDOM_NAME or is_in_process(model):
        return
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "model_index.json").exists() or (path / "unet").is_dir():
            check_folder(path, model)  # every part there, not SDXL: `sweep` would fail every row instead
            return
        raise ModelLoadError(f"--model {model!r} is a folder but not a diffusers model (no model_index.json "
                             f"or unet/ in {path.resolve()}); {choices}")
    if path.exists():
        if path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
            raise ModelLoadError(
                f"--model {model!r} is a single-file checkpoint, not a diffusers folder: convert it once with "
                f"diffusers, python -c \"from diffusers import StableDiffusionPipeline as P; "
                f"P.from_single_file('{path}').save_pretrained('DIR')\" (it reads the model's config from the hub, "
                "or from a local diffusers folder given as config='FOLDER'), then --model DIR")
        raise ModelLoadError(f"--model {model!r} is a file, not a diffusers folder; {choices}")
    if not _HUB_ID.match(model):
        what = "no such folder" if ("/" in model or model.startswith((".", "~"))) else "not a built-in model name"
        raise ModelLoadError(f"--model {model!r}: {what} ({path.absolute()} does not exist); {choices}")
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(model, "model_index.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"--model {model!r}: not a local folder, and as a Hugging Face id it is not in the "
                             f"hub cache while HF_HUB_OFFLINE is set; {choices}")
    try:
        huggingface_hub.model_info(model, timeout=probe_timeout)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise ModelLoadError(f"--model {model!r}: not a local folder, and the Hugging Face hub has no model of "
                             f"that id (or it is private: log in with `hf auth login`); {choices}") from None
    except Exception as exc:  # noqa: BLE001 - network errors come in many classes
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"--model {model!r}: not a local folder, not in the hub cache, and the Hugging Face "
                             f"hub cannot be reached ({why}); {choices}") from None


# --------------------------------------------------------------------------- loading
_NO_MODEL = (
    "Could not load the diffusion model {model!r}: {why}. "
    "A Hugging Face id is downloaded from the hub on first use and "
    "needs network access (or a filled hub cache, HF_HOME). Offline, point "
    "--model PATH at a local diffusers folder of Stable Diffusion 1.5 (with vae/, "
    "unet/, text_encoder/, tokenizer/, scheduler/), or use --model tiny for the "
    "random-weight test model that is built offline (it proves the plumbing, "
    "not the image quality)."
)
#: the subfolders a Stable Diffusion 1.x/2.x diffusers folder needs, and a file each must hold
_PARTS = {"vae": ("config.json",), "unet": ("config.json",), "text_encoder": ("config.json",),
          "tokenizer": ("tokenizer.json", "vocab.json"), "scheduler": ("scheduler_config.json",)}
_SD_LAYOUT = "a Stable Diffusion diffusers folder holds vae/, unet/, text_encoder/, tokenizer/ and scheduler/"
# diffusers' and transformers' weight files: NAME[.VARIANT][-0000i-of-0000n].(safetensors|bin)[.index.json]
_WEIGHTS = re.compile(r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(\w+?))?(?:-\d+-of-\d+)?"
                      r"\.(safetensors|bin)(?:\.index\.json)?$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).rstrip(".")[:300]


def check_folder(path: Path, model: str) -> None:
    """Refuse a local folder that is not a Stable Diffusion (1.x/2.x) diffusers folder,
    naming the part that is missing, before any weights are read.

    Raises:
        ModelLoadError: one line: the part missing or the architecture not supported.
    """
    index = {}
    if (path / "model_index.json").is_file():
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"--model {model!r}: {path / 'model_index.json'} is not valid JSON "
                                 f"({_first_line(exc)})") from None
    kind = str(index.get("_class_name", ""))
    if "text_encoder_2" in index or "XL" in kind or (path / "text_encoder_2").is_dir():
        raise ModelLoadError(f"--model {model!r}: {path} is a Stable Diffusion XL model ({kind or 'text_encoder_2/'}); "
                             "the codec runs Stable Diffusion 1.x/2.x UNets (one CLIP text encoder, no size "
                             "conditioning)")
    for part, needs in _PARTS.items():
        sub = path / part
        if not sub.is_dir():
            raise ModelLoadError(f"--model {model!r}: {path} has no {part}/ ({_SD_LAYOUT}; copy {part}/ from "
                                 f"the model's download)")
        if not any((sub / n).is_file() for n in needs):
            raise ModelLoadError(f"--model {model!r}: {sub} has no {' or '.join(needs)} ({_SD_LAYOUT}; copy "
                                 f"{part}/ again from the model's download)")
    if not (path / "tokenizer" / "tokenizer.json").is_file() and not (path / "tokenizer" / "merges.txt").is_file():
        raise ModelLoadError(f"--model {model!r}: {path / 'tokenizer'} has vocab.json but no merges.txt (a CLIP "
                             "tokenizer needs both, or tokenizer.json)")


def weight_files(folder: Path, dtype: Optional[torch.dtype] = None) -> dict:
    """``from_pretrained`` keywords (``variant``, ``use_safetensors``) for the weights in
    ``folder``: plain files when present, else a variant (``fp16`` first when ``dtype`` is
    fp16 or fp32, ``bf16`` first when bf16), safetensors before ``.bin``.  Empty when no
    weight file is there (``from_pretrained`` then names what it looked for)."""
    found = set()
    for f in folder.iterdir() if folder.is_dir() else ():
        m = _WEIGHTS.match(f.name)
        if m and f.is_file():
            found.add((m.group(1), m.group(2)))
    if not found:
        return {}
    variants = {v for v, _ in found}
    if None in variants:
        variant = None
    else:
        first = ["bf16", "fp16"] if dtype == torch.bfloat16 else ["fp16", "bf16"]
        variant = next((v for v in first if v in variants), sorted(variants)[0])
    kw = dict(use_safetensors=(variant, "safetensors") in found)
    if variant is not None:
        kw["variant"] = variant
    return kw


def check_architecture(vae, unet, text_encoder, tokenizer, model: str) -> None:
    """Refuse components that do not fit together as an SD 1.x/2.x text-conditioned latent
    model, before a run would fail deep inside a UNet call or decode garbage.

    Raises:
        ModelLoadError: one line naming the two settings that disagree.
    """
    uc, vc, tc = unet.config, vae.config, text_encoder.config
    if getattr(uc, "addition_embed_type", None) or getattr(uc, "class_embed_type", None):
        raise ModelLoadError(f"--model {model!r}: its UNet takes extra conditioning (addition_embed_type="
                             f"{getattr(uc, 'addition_embed_type', None)!r}, class_embed_type="
                             f"{getattr(uc, 'class_embed_type', None)!r}: SDXL, an upscaler or an unCLIP model); "
                             "the codec runs Stable Diffusion 1.x/2.x UNets")
    cross = uc.cross_attention_dim
    if cross != tc.hidden_size:
        raise ModelLoadError(f"--model {model!r}: unet/ has cross_attention_dim={cross} but text_encoder/ has "
                             f"hidden_size={tc.hidden_size}; the UNet and the text encoder come from different "
                             "models (SD 1.x: 768 with CLIP ViT-L; SD 2.x: 1024 with OpenCLIP ViT-H)")
    if not (uc.in_channels == uc.out_channels == vc.latent_channels):
        raise ModelLoadError(f"--model {model!r}: unet/ takes {uc.in_channels} and gives {uc.out_channels} latent "
                             f"channels but vae/ has latent_channels={vc.latent_channels}; an inpainting UNet "
                             "(9 input channels) or parts of different models")
    n_max = getattr(tokenizer, "model_max_length", None)
    if len(tokenizer) < 10 or not n_max or n_max > tc.max_position_embeddings:
        raise ModelLoadError(f"--model {model!r}: its tokenizer is empty or does not fit the text encoder "
                             f"({len(tokenizer)} tokens, model_max_length={n_max}, the text encoder takes "
                             f"{tc.max_position_embeddings} positions); copy tokenizer/ from the model's download")


def _hub_snapshot(model: str, revision: Optional[str]) -> Optional[Path]:
    """The hub cache's folder of ``model`` (at ``revision``), or None when it is not cached:
    a cached model then loads from disk with no request to the hub (with no network and
    HF_HUB_OFFLINE unset, each request would be retried for about 30 s)."""
    if not _HUB_ID.match(model):
        return None
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and the like)
        return None


def _hub_answers(model: str, timeout: float = 4.0) -> bool:
    """Whether the hub answers a metadata request for ``model`` within ``timeout`` seconds
    (never when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import huggingface_hub

    try:
        huggingface_hub.model_info(model, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - network errors come in many classes
        return False


def load_components(model: str = "tiny", device: str = "auto", dtype: str = "auto",
                    revision: Optional[str] = None) -> Components:
    """Load VAE, UNet, text encoder, tokenizer and scheduler config.

    Args:
        model: Hugging Face id, local folder, ``tiny`` or ``sd15-random``.
        device: ``auto`` / ``cpu`` / ``cuda[:N]``.
        dtype: ``auto`` (fp16 on CUDA, fp32 on CPU) / ``fp16`` / ``bf16`` / ``fp32``.
    Raises:
        ModelLoadError: with one paragraph saying what to do.
    """
    if model == "analytic" or model.startswith("analytic:"):
        from .analytic import analytic_components
        return analytic_components(model, device, dtype)
    if model == "patch-gmm" or model.startswith("patch-gmm:"):
        from .patch_gmm import patch_gmm_components
        return patch_gmm_components(model, device, dtype)
    check_model(model)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as tlogging

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    builders = {TINY_NAME: tiny_path, SD15_RANDOM_NAME: sd15_random_path}
    source = str(builders[model]()) if model in builders else model
    kw = dict(revision=revision) if revision else {}
    local = Path(source).expanduser() if Path(source).expanduser().is_dir() else None
    cached = None if local else _hub_snapshot(model, revision)
    if cached is not None:
        try:
            check_folder(cached, model)
            local = cached
        except ModelLoadError as exc:
            # an incomplete snapshot (an interrupted download): the hub fills it in when it answers
            if not _hub_answers(model):
                raise ModelLoadError(f"{exc} [the hub cache's copy in {cached} is incomplete and the hub cannot "
                                     "be reached to complete it]") from None
            cached = None
    if local is not None:
        if cached is None:
            check_folder(local, model)
        source, kw = str(local), dict(local_files_only=True)
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    wkw = {part: (weight_files(local / part, dt) if local is not None else {})
           for part in ("vae", "unet", "text_encoder")}
    for part, w in wkw.items():
        if w.get("variant"):
            log.info("%s: %s/ has only %s-variant weights; loading those as %s", model, part, w["variant"], dt)
    try:
        loaded = {part: cls.from_pretrained(source, subfolder=part, torch_dtype=dt, output_loading_info=True,
                                            **kw, **wkw[part])
                  for part, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel),
                                    ("text_encoder", CLIPTextModel))}
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        from diffusers import DDIMScheduler
        scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
    except Exception as exc:  # hub/network/file errors come in many classes
        if local is not None:
            raise ModelLoadError(f"Could not load the diffusion model {model!r} from {local}: {_first_line(exc)} "
                                 "(a missing, truncated or corrupt file: copy that part of the model "
                                 "again)") from None
        raise ModelLoadError(_NO_MODEL.format(model=model, why=_first_line(exc))) from None
    for part, (_, info) in loaded.items():
        # (diffusers and transformers fill weights the checkpoint lacks with a fresh random init
        # and only log it: a partial or converted checkpoint would run and decode noise)
        missing = sorted(info.get("missing_keys") or ()) + sorted(
            str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
        if missing:
            raise ModelLoadError(f"--model {model!r}: the {part}/ weights lack {len(missing)} of the model's tensors "
                                 f"(e.g. {missing[0]}): a partial or converted checkpoint, or a config.json of "
                                 "another model; copy that part of the model again")
    vae, unet, text_encoder = (loaded[p][0] for p in ("vae", "unet", "text_encoder"))
    check_architecture(vae, unet, text_encoder, tokenizer, model)
    check_prediction_type(scheduler_config, model)
    for m in (vae, unet, text_encoder):
        m.to(dev).eval().requires_grad_(False)
    return Components(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                      scheduler_config=scheduler_config, device=dev, dtype=dt,
                      model_id=model, revision=revision)
