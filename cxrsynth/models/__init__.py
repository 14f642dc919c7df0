"""Model families behind one interface (`base.GenerativeModel`). A family never imports another."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cxrsynth.errors import NotBuilt

if TYPE_CHECKING:  # torch is imported only when a model is built
    from cxrsynth.models.base import GenerativeModel

FAMILIES = ("emixer", "ldm", "mopoe")
_ISSUES = {"emixer": "issue 4", "ldm": "issue 5", "mopoe": "issue 6"}


def model_class(model_config) -> "type[GenerativeModel]":
    """The class of the family named by `model_config.family` (nothing is built)."""
    family = model_config.family
    module = importlib.import_module(f"cxrsynth.models.{family}")
    cls = getattr(module, "Model", None)
    if cls is None:
        raise NotBuilt(f"the {family} model family", _ISSUES.get(family, ""))
    return cls


def build_model(model_config) -> "GenerativeModel":
    """Build the family named by `model_config.family` from its config."""
    return model_class(model_config)(model_config)
