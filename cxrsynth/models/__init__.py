"""Model families behind one interface (`base.GenerativeModel`). A family never imports another.

Each family is one folder that declares itself (`registry.Family`); nothing here names one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrsynth.models import registry

if TYPE_CHECKING:  # torch is imported only when a model is built
    from cxrsynth.models.base import GenerativeModel


def model_class(model_config) -> "type[GenerativeModel]":
    """The class of the family named by `model_config.family` (nothing is built)."""
    return registry.for_config(model_config).model_class()


def build_model(model_config) -> "GenerativeModel":
    """Build the family named by `model_config.family` from its config."""
    return model_class(model_config)(model_config)
