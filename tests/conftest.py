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
