"""Optional learned metrics: LPIPS, DISTS, PieAPP (per image), FID and KID (per set).

None of these is written here: they come from ``pyiqa`` or ``torchmetrics``
(the optional extra ``metrics``; both need ``torchvision`` and pretrained
weights).  This module only finds out whether a metric can run *here*, without
downloading anything:

1. the backend imports (``pyiqa``; ``torchmetrics`` with ``torchvision`` /
   ``torch-fidelity``);
2. the metric is built with every network connection refused
   (:func:`offline`), so weights that are not already in the local caches
   (``~/.cache/torch/hub/...``) make construction fail instead of downloading.

A metric that cannot run is *unavailable* with a one-line reason; its cells
stay empty -- never zero, never invented -- and the sweep's ``summary.md``
prints the reason.

=========  =========  ==================================================
metric     better     backends tried, in order
=========  =========  ==================================================
``lpips``  lower      pyiqa ``lpips`` (AlexNet, v0.1); torchmetrics LPIPS (alex)
``dists``  lower      pyiqa ``dists``
``pieapp`` lower      pyiqa ``pieapp``
``fid``    lower      torchmetrics FrechetInceptionDistance (2048-d pool3,
                      needs torch-fidelity); pyiqa ``fid`` (clean-fid, folders)
``kid``    lower      torchmetrics KernelInceptionDistance (needs torch-fidelity)
=========  =========  ==================================================

FID and KID are set metrics.  On a few dozen images they are only meaningful
over patches: :func:`patches` cuts every image into non-overlapping
256 x 256 crops (aligned at the top-left corner, remainders dropped; Kodak's
768 x 512 gives 6 per image, 144 for 24 images), and the KID subset size is
``min(1000, number of patches)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

PER_IMAGE = ("lpips", "dists", "pieapp")
SET_LEVEL = ("fid", "kid")
ALL = PER_IMAGE + SET_LEVEL
LOWER_IS_BETTER = {"lpips": True, "dists": True, "pieapp": True, "fid": True, "kid": True}
LABELS = {"lpips": "LPIPS", "dists": "DISTS", "pieapp": "PieAPP", "fid": "FID", "kid": "KID"}
PATCH = 256
KID_MAX_SUBSET = 1000
KID_SUBSETS = 100
INSTALL_HINT = "install the 'metrics' extra with a torch/torchvision pair that import together (docs/evaluation.md)"


class Unavailable(RuntimeError):
    """A metric cannot run here; the message is the one-line reason."""


class NonFiniteScore(ValueError):
    """A metric returned NaN or an infinity for an image: a failure, not a value."""


@dataclass
class Availability:
    name: str
    available: bool
    backend: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return dict(available=self.available, backend=self.backend, reason=self.reason)


# --------------------------------------------------------------------------- no downloads
class _NoNetwork(OSError):
    pass


class _QuietStdout:
    """What a metric library prints while :func:`offline` holds: to stderr, never into a command's
    stdout (``gdmcom sweep``'s JSON lines), and without torch.hub's ``Downloading: "URL" to FILE``,
    which it prints before trying the download that the guard then refuses."""

    def __init__(self, err, wanted: Optional[List[str]] = None):
        self.err, self._line = err, ""
        #: the files the dropped ``Downloading: "URL" to FILE`` lines named: where the weights belong
        self.wanted = [] if wanted is None else wanted

    def _keep(self, line: str) -> bool:
        if not line.startswith('Downloading: "'):
            return True
        _, sep, path = line.rpartition('" to ')
        if sep and path.strip():
            self.wanted.append(path.strip())
        return False

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if self._keep(line):
                self.err.write(line + "\n")
        return len(text)

    def flush(self):
        if self._line and self._keep(self._line):
            self.err.write(self._line)
        self._line = ""
        self.err.flush()


_HASH_OK: Dict[tuple, object] = {}


def _hub_asked_to_check_hash() -> bool:
    """Whether the caller is torch.hub's ``load_state_dict_from_url(..., check_hash=True)``."""
    f = sys._getframe(2)
    for _ in range(4):
        if f is None:
            return False
        if f.f_code.co_name == "load_state_dict_from_url" and f.f_code.co_filename.endswith("hub.py"):
            return bool(f.f_locals.get("check_hash"))
        f = f.f_back
    return False


def check_weight_hash(path) -> None:
    """Refuse a weight file whose content does not match the SHA-256 prefix in its name
    (torch.hub's convention: ``alexnet-owt-7be5be79.pth``).  torch.hub checks that prefix only
    when it downloads (``check_hash=True``, as torchvision asks); a file copied in by hand
    (another version, a stand-in) would otherwise be loaded and give plausible numbers that are
    not the metric's.  :func:`offline` applies it to every file torch.hub was asked to check.

    Raises:
        Unavailable: naming the file, the prefix its name promises and the one it has.
    """
    import hashlib

    import torch.hub

    p = Path(path)
    m = torch.hub.HASH_REGEX.search(p.name)
    if not m or len(m.group(1)) < 6 or not p.is_file():
        return
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_OK:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASH_OK[key] = h.hexdigest().startswith(m.group(1))
        if not _HASH_OK[key]:
            _HASH_OK[key + ("got",)] = h.hexdigest()[:len(m.group(1))]
    if not _HASH_OK[key]:
        raise Unavailable(f"{p} is not the published weight file: its SHA-256 starts {_HASH_OK[key + ('got',)]}, "
                          f"its name says {m.group(1)} (a partial copy or other weights: copy it again)")


@contextlib.contextmanager
def offline():
    """Refuse every network connection (and tell the HF libraries they are offline)
    while metrics are built, so missing weights fail instead of downloading; what the
    libraries print meanwhile goes to stderr (:class:`_QuietStdout`)."""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    orig_connect, orig_create = socket.socket.connect, socket.create_connection

    def refuse(*_a, **_k):
        raise _NoNetwork("network access refused: gr_gdmcom never downloads metric weights")

    socket.socket.connect = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    import torch

    orig_load = torch.load

    def checked_load(f, *a, **k):
        # a cached file that torch.hub was asked to hash-check (torchvision's weights: check_hash=True)
        # is checked here as its download would have been; other loaders' names promise nothing
        if isinstance(f, (str, os.PathLike)) and _hub_asked_to_check_hash():
            check_weight_hash(f)
        return orig_load(f, *a, **k)

    torch.load = checked_load  # type: ignore[assignment]
    # (stderr too: torch-fidelity sends torch.hub's stdout to stderr while it loads its Inception)
    err = sys.stderr
    quiet = _QuietStdout(err)
    quiet_err = _QuietStdout(err, quiet.wanted)
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet_err):
            yield
    except BaseException as exc:
        if quiet.wanted:  # the file the library looked for: the reason names it
            try:
                exc.gdmcom_missing_file = quiet.wanted[-1]
            except AttributeError:
                pass
        raise
    finally:
        quiet.flush()
        quiet_err.flush()
        torch.load = orig_load  # type: ignore[assignment]
        socket.socket.connect = orig_connect  # type: ignore[assignment]
        socket.create_connection = orig_create  # type: ignore[assignment]
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: huggingface_hub's exceptions for a file that is not in its cache while offline
HUB_OFFLINE_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:240]


def _why_failed(exc: BaseException) -> str:
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    # (weights on the Hugging Face hub: with HF_HUB_OFFLINE set, huggingface_hub raises its own
    # LocalEntryNotFoundError / OfflineModeIsEnabled before any socket is opened)
    if any(isinstance(x, _NoNetwork) or "network access refused" in str(x)
           or type(x).__name__ in HUB_OFFLINE_ERRORS for x in chain):
        missing = next((x.gdmcom_missing_file for x in chain if getattr(x, "gdmcom_missing_file", None)), None)
        if missing:
            return (f"pretrained weights are not in the local cache: no {missing} (no download is attempted "
                    "here; copy the file there, or set TORCH_HOME to the folder above hub/ that holds it)")
        return "pretrained weights are not in the local cache (no download is attempted here)"
    return _one_line(exc)


def _import(module: str):
    """Import ``module`` or raise :class:`Unavailable` naming what is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        raise Unavailable(f"{missing} is not installed ({INSTALL_HINT})") from None
    except Exception as exc:  # e.g. a torchvision built for another torch
        raise Unavailable(f"{module} does not import: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- backends
def _to_float(img: np.ndarray, device):
    import torch

    a = np.asarray(img)
    t = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return t.to(device)


def _pyiqa_fr(metric_name: str) -> Callable:
    """A pyiqa full-reference metric as ``(ref, img, device) -> float`` (inputs uint8 (H, W, 3))."""

    def factory(device):
        _import("torchvision")
        pyiqa = _import("pyiqa")
        with offline():
            m = pyiqa.create_metric(metric_name, device=device, as_loss=False)

        def score(ref, img):
            import torch

            with torch.no_grad():
                return float(m(_to_float(img, device), _to_float(ref, device)).reshape(-1)[0])

        return score

    factory.backend = f"pyiqa:{metric_name}"
    return factory


def _torchmetrics_lpips(device):
    _import("torchvision")
    mod = _import("torchmetrics.image.lpip")
    with offline():
        m = mod.LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device)

    def score(ref, img):
        import torch

        with torch.no_grad():
            return float(m(_to_float(img, device), _to_float(ref, device)))

    return score


_torchmetrics_lpips.backend = "torchmetrics:LPIPS(alex)"  # type: ignore[attr-defined]


def _uint8_batch(imgs: Sequence[np.ndarray], device):
    import torch

    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous().to(device)


def _torchmetrics_fid(device):
    _import("torchvision")
    _import("torch_fidelity")
    mod = _import("torchmetrics.image.fid")
    with offline():
        mod.FrechetInceptionDistance(feature=2048)  # builds the Inception net: weights must be present

    def compute(refs, imgs):
        with offline():
            m = mod.FrechetInceptionDistance(feature=2048).to(device)
        for i in range(0, len(refs), 32):
            m.update(_uint8_batch(refs[i:i + 32], device), real=True)
            m.update(_uint8_batch(imgs[i:i + 32], device), real=False)
        return dict(value=float(m.compute()))

    return compute


_torchmetrics_fid.backend = "torchmetrics:FrechetInceptionDistance(2048)"  # type: ignore[attr-defined]


def _pyiqa_fid(device):
    _import("torchvision")
    pyiqa = _import("pyiqa")
    with offline():
        m = pyiqa.create_metric("fid", device=device)

    def compute(refs, imgs):
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="gdmcom_fid_") as tmp:
            dirs = [Path(tmp) / "ref", Path(tmp) / "test"]
            for d, arrs in zip(dirs, (refs, imgs)):
                d.mkdir()
                for i, a in enumerate(arrs):
                    Image.fromarray(a).save(d / f"{i:06d}.png")
            with offline():
                # pyiqa passes its own device to the FID network
                val = m(str(dirs[1]), str(dirs[0]), verbose=False, num_workers=0)
        return dict(value=float(val))

    return compute


_pyiqa_fid.backend = "pyiqa:fid (clean-fid)"  # type: ignore[attr-defined]


def _torchmetrics_kid(device):
    _import("torchvision")
    _import("torch_fidelity")
    mod = _import("torchmetrics.image.kid")
    with offline():
        mod.KernelInceptionDistance(subset_size=2)

    def compute(refs, imgs):
        n = min(len(refs), len(imgs))
        if n < 2:
            raise Unavailable("KID needs at least 2 patches per set")
        subset = min(KID_MAX_SUBSET, n)
        with offline():
            m = mod.KernelInceptionDistance(subset_size=subset, subsets=KID_SUBSETS).to(device)
        for i in range(0, len(refs), 32):
            m.update(_uint8_batch(refs[i:i + 32], device), real=True)
            m.update(_uint8_batch(imgs[i:i + 32], device), real=False)
        mean, std = m.compute()
        return dict(value=float(mean), std=float(std), subset_size=subset, subsets=KID_SUBSETS)

    return compute


_torchmetrics_kid.backend = "torchmetrics:KernelInceptionDistance"  # type: ignore[attr-defined]

#: metric name -> factories tried in order; a factory takes the device and
#: returns the scoring function or raises.  Tests may insert their own.
FACTORIES: Dict[str, List[Callable]] = {
    "lpips": [_pyiqa_fr("lpips"), _torchmetrics_lpips],
    "dists": [_pyiqa_fr("dists")],
    "pieapp": [_pyiqa_fr("pieapp")],
    "fid": [_torchmetrics_fid, _pyiqa_fid],
    "kid": [_torchmetrics_kid],
}


# --------------------------------------------------------------------------- patches
def patches(img: np.ndarray, size: int = PATCH) -> List[np.ndarray]:
    """Non-overlapping ``size`` x ``size`` crops of ``img`` (H, W, 3), top-left aligned,
    remainders dropped; empty when the image is smaller than ``size`` on a side."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    return [a[y:y + size, x:x + size] for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]


# --------------------------------------------------------------------------- the front end
class LearnedMetrics:
    """Learned metrics that can run here, probed once.

    Args:
        names: metrics to try (subset of :data:`ALL`); others are reported as
            ``not requested``.
        device: torch device string for the metric networks.
    """

    def __init__(self, names: Sequence[str] = ALL, device: str = "cpu"):
        unknown = [n for n in names if n not in ALL]
        if unknown:
            raise ValueError(f"unknown learned metric(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
        self.names = tuple(names)
        self.device = device
        self._fns: Dict[str, Callable] = {}
        self._avail: Optional[Dict[str, Availability]] = None
        #: per-image scoring failures: name -> (count, first reason)
        self.errors: Dict[str, Tuple[int, str]] = {}

    def availability(self) -> Dict[str, Availability]:
        """``{name: Availability}`` for every metric in :data:`ALL` (probes on first call)."""
        if self._avail is None:
            self._avail = {}
            for name in ALL:
                if name not in self.names:
                    self._avail[name] = Availability(name, False, reason="not requested (--metrics)")
                    continue
                reasons = []
                for factory in FACTORIES.get(name, []):
                    backend = getattr(factory, "backend", getattr(factory, "__name__", "?"))
                    try:
                        self._fns[name] = factory(self.device)
                    except Unavailable as exc:
                        reasons.append(str(exc))
                        continue
                    except Exception as exc:  # construction failed (weights missing, version clash...)
                        reasons.append(f"{backend}: {_why_failed(exc)}")
                        continue
                    self._avail[name] = Availability(name, True, backend=backend)
                    break
                else:
                    # the first reason is usually the telling one; keep it short
                    uniq = list(dict.fromkeys(reasons)) or ["no backend"]
                    self._avail[name] = Availability(name, False, reason="; ".join(uniq[:2]))
                    log.info("%s unavailable: %s", LABELS[name], self._avail[name].reason)
        return self._avail

    def available(self, name: str) -> bool:
        return self.availability()[name].available

    def _failed(self, name: str, exc: BaseException) -> None:
        """A per-image failure leaves that cell empty; counted, first reason kept, logged once."""
        n, why = self.errors.get(name, (0, f"{self.availability()[name].backend}: {_why_failed(exc)}"))
        if n == 0:
            log.warning("%s failed on an image (cell left empty): %s", LABELS[name], why)
        self.errors[name] = (n + 1, why)

    def score(self, ref: np.ndarray, img: np.ndarray, names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """Per-image metrics that are available (of ``names``, default all): ``{name: value}``
        (absent = unavailable or failed).  A failure -- an exception, or a NaN or infinite score,
        which is no measurement either -- leaves the metric out and is counted in
        :attr:`errors` (the first reason kept)."""
        out = {}
        for name in PER_IMAGE:
            if not self.available(name) or (names is not None and name not in names):
                continue
            try:
                v = float(self._fns[name](ref, img))
                if not np.isfinite(v):
                    raise NonFiniteScore(f"returned {v} (not a finite score)")
            except Exception as exc:  # noqa: BLE001 - e.g. an image too small for the network
                self._failed(name, exc)
                continue
            out[name] = v
        return out

    def set_scores(self, refs: Sequence[np.ndarray], imgs: Sequence[np.ndarray]) -> Dict[str, dict]:
        """FID / KID over the 256 x 256 patches of paired image lists.

        Returns ``{name: {"value": float, ...}}`` for metrics that ran, and
        ``{name: {"reason": str}}`` for those that did not; ``patches`` (count) is
        in every entry.
        """
        pr, pi = [], []
        for r, i in zip(refs, imgs):
            pr += patches(r)
            pi += patches(i)
        out = {}
        for name in SET_LEVEL:
            a = self.availability()[name]
            if not a.available:
                out[name] = dict(reason=a.reason, patches=len(pr))
                continue
            if len(pr) < 2:
                out[name] = dict(reason=f"only {len(pr)} {PATCH}x{PATCH} patch{'' if len(pr) == 1 else 'es'} "
                                        f"(images smaller than {PATCH} px give none)", patches=len(pr))
                continue
            try:
                res = dict(self._fns[name](pr, pi))
            except Unavailable as exc:
                out[name] = dict(reason=str(exc), patches=len(pr))
                continue
            except Exception as exc:
                out[name] = dict(reason=f"{a.backend} failed: {_why_failed(exc)}", patches=len(pr))
                continue
            res["patches"] = len(pr)
            out[name] = res
        return out

    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in self.availability().items()}
