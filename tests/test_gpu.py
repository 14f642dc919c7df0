"""GPU paths: one step of each family at paper width in bf16. Run where CUDA is present
(`pytest -m gpu`); skipped on a machine without a GPU.

The LDM casts to bf16 itself (`model.mixed_precision: bf16`, RoentGen's setting, autocast
around the U-Net and text encoder). EMIXER and MoPoE have no mixed-precision setting; they are
stepped here under torch's bf16 autocast from outside, which keeps softmax, log and reductions in
fp32. Whether their spectral norms and ELBO terms stay finite in bf16 at paper width is what
these tests find out on a GPU: they have not run on one yet (no GPU on the development machine).
"""

from __future__ import annotations

import math

import pytest
import torch

from cxrsynth.config import load_config
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.stream import collate_records
from cxrsynth.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a GPU machine)")]


@pytest.mark.parametrize("family", ["emixer", "ldm", "mopoe"])
def test_one_bf16_step_of_the_paper_preset_on_cuda_is_finite_and_moves_the_weights(family):
    cfg = load_config(f"{family}-paper")
    records = make_phantom(n=16, sites=1, seed=0, image_size=cfg.model.image_size, lateral=cfg.data.phantom.lateral)
    model = build_model(cfg.model)
    model.setup(records)
    model.to_device(torch.device("cuda"))
    model.opts = model.make_optimizers()
    before = {k: v.copy() for k, v in model.state().items()}
    # Pinned and copied as the DataLoader does on CUDA.
    batch = collate_records(records[:2]).pin_memory()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=family != "ldm"):
        losses = model.train_step(batch)
    torch.cuda.synchronize()
    assert losses and all(math.isfinite(v) for v in losses.values())
    after = model.state()
    assert any(not (after[k] == before[k]).all() for k in before)
