import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "gr_gdmcom" / "data"


def pytest_configure(config):
    # One torch thread: GNU Radio's threads and the tiny model's small ops share
    # the cores; oversubscription slowed tiny-model calls 10-100x on 2 cores.
    import torch
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--seed", type=int, default=1234, help="seed for every random generator in the tests")


@pytest.fixture(scope="session")
def seed(pytestconfig):
    return pytestconfig.getoption("--seed")


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def components():
    from gr_gdmcom.codec import load_components
    return load_components("tiny", device="cpu")


@pytest.fixture(scope="session")
def codec(components):
    from gr_gdmcom.codec import GenerativeCodec
    from gr_gdmcom.config import CodecConfig
    return GenerativeCodec(CodecConfig(model="tiny", device="cpu"), components=components)


@pytest.fixture(scope="session")
def astronaut():
    from PIL import Image
    return np.asarray(Image.open(DATA / "astronaut.png").convert("RGB"))


@pytest.fixture(scope="session")
def small(astronaut):
    """64 x 64 RGB uint8."""
    return astronaut[::4, ::4].copy()


@pytest.fixture(scope="session")
def grcc_build(tmp_path_factory):
    """Every flowgraphs/*.grc compiled once with grcc (run by the venv's python: the
    flowgraphs import gr_gdmcom); the folder of generated scripts."""
    grcc = shutil.which("grcc")
    if grcc is None:
        pytest.skip("grcc not installed")
    out = tmp_path_factory.mktemp("grcc")
    env = dict(os.environ, GRC_BLOCKS_PATH=str(ROOT / "grc"), GR_CONF_GRC_LOCAL_BLOCKS_PATH=str(ROOT / "grc"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    files = [str(f) for f in sorted((ROOT / "flowgraphs").glob("*.grc"))]
    r = subprocess.run([sys.executable, grcc, "-o", str(out), *files], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out



@pytest.fixture
def image_folder(tmp_path):
    """image_folder({"astro.png": ("astronaut.png", (w, h)), ...}) -> ``tmp_path/imgs`` holding
    the bundled images resized."""
    from PIL import Image

    data = Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data"

    def make(sizes: dict) -> Path:
        d = tmp_path / "imgs"
        d.mkdir()
        for name, (src, size) in sizes.items():
            Image.open(data / src).convert("RGB").resize(size).save(d / name)
        return d
    return make
