"""Model families behind one interface (`base.GenerativeModel`). A family never imports another.

Each family is one folder that declares itself (`registry.Family`); nothing here names one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrsynth.models import registry

if TYPE_CHECKING:  # torch is imported only when a model is built
    import numpy as np
    import torch

    from cxrsynth.models.base import GenerativeModel


def model_class(model_config) -> "type[GenerativeModel]":
    """The class of the family named by `model_config.family` (nothing is built)."""
    return registry.for_config(model_config).model_class()


def build_model(model_config) -> "GenerativeModel":
    """Build the family named by `model_config.family` from its config."""
    return model_class(model_config)(model_config)


def rebuild_model(
    cfg, extra_state: dict, arrays: "dict[str, np.ndarray]", device: "torch.device"
) -> "GenerativeModel":
    """A model as a checkpoint or the coordinator ships it: `cfg` a RunConfig, the vocabulary and
    other extra state first, then the weights."""
    model = build_model(cfg.model)
    model.load_extra_state(extra_state)
    model.load_state(arrays)
    return model.to_device(device)
