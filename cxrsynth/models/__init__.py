"""Model families behind one interface (`base.GenerativeModel`). A family never imports another."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model is built
    from cxrsynth.models.base import GenerativeModel


def model_class(model_config) -> "type[GenerativeModel]":
    """The class of the family named by `model_config.family` (nothing is built)."""
    return importlib.import_module(f"cxrsynth.models.{model_config.family}").Model


def build_model(model_config) -> "GenerativeModel":
    """Build the family named by `model_config.family` from its config."""
    return model_class(model_config)(model_config)
