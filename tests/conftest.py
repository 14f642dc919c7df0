import os

import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Two cores here: keep torch from oversubscribing when tests run alongside other work.
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
