import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights"


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Each test writes its artifacts and figures under its own temp dir, except the
    decoded-dataset cache, which is shared through COMPANION_ARTIFACTS when a test asks."""
    monkeypatch.setenv("COMPANION_OUTPUT_DIR", str(tmp_path / "figures"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscription on a machine with few, shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_images(root: Path, n: int, size=(12, 10), mode="RGB", seed=0):
    """Write n small random images (PNG) under root, returning the paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        arr = rng.integers(0, 255, size=shape, dtype=np.uint8)
        p = root / f"img_{i:03d}.png"
        Image.fromarray(arr, mode=None).convert(mode).save(p)
        paths.append(p)
    return paths


def pytest_collection_modifyitems(config, items):
    """The notebooks (nbval items) run in a kernel process each: they are part of the slow tier."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
