import os

import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # One thread: the models here are tiny, and on a shared 2-core machine a second torch thread
    # spinning against other processes made an LDM step 35x slower (0.12 s -> 4.2 s).
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def decoded_images(monkeypatch):
    """Counts the images a `ManifestDataset` decodes (`total`) and the most of them alive at once
    (`peak`): a stage that holds a whole dataset's images shows it in `peak`."""
    import weakref

    from cxrsynth.data.stream import ManifestDataset

    counts = {"total": 0, "peak": 0}
    live: dict[int, weakref.ref] = {}
    image = ManifestDataset.image

    def counted(self, i, lateral=False):
        img = image(self, i, lateral)
        live[id(img)] = weakref.ref(img, lambda _, key=id(img): live.pop(key, None))
        counts["total"] += 1
        counts["peak"] = max(counts["peak"], len(live))
        return img

    monkeypatch.setattr(ManifestDataset, "image", counted)
    return counts
