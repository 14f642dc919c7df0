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


class DecodedCounter(dict):
    """Counts the arrays that the functions it `watch`es return (`total`) and the most of them
    alive at once (`peak`); `alive()` is how many are alive now. A stage that holds a whole
    dataset's images shows it in `peak`."""

    def __init__(self, monkeypatch):
        super().__init__(total=0, peak=0)
        self.monkeypatch = monkeypatch
        self.live: dict = {}

    def watch(self, owner, name: str, pick=lambda out: out) -> None:
        """Count what `owner.name` returns (`pick`: the array in it)."""
        import weakref

        original = getattr(owner, name)

        def counted(*args, **kwargs):
            out = original(*args, **kwargs)
            arr = pick(out)
            self.live[id(arr)] = weakref.ref(arr, lambda _, key=id(arr): self.live.pop(key, None))
            self["total"] += 1
            self["peak"] = max(self["peak"], len(self.live))
            return out

        self.monkeypatch.setattr(owner, name, counted)

    def alive(self) -> int:
        return len(self.live)


@pytest.fixture
def decoded(monkeypatch):
    """A `DecodedCounter` to `watch` decoding functions with."""
    return DecodedCounter(monkeypatch)


@pytest.fixture
def decoded_images(decoded):
    """The images a `ManifestDataset` decodes, counted (`DecodedCounter`)."""
    from cxrsynth.data.stream import ManifestDataset

    decoded.watch(ManifestDataset, "image")
    return decoded
