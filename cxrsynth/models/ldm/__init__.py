"""ldm family: RoentGen-style latent diffusion (Chambon et al.) built with diffusers/transformers.

The model class is imported on first use, so reading a config does not pull in diffusers and
transformers.
"""

from pathlib import Path

from cxrsynth.models.ldm.config import LDMConfig
from cxrsynth.models.registry import Family


def _model():
    from cxrsynth.models.ldm.model import Model

    return Model


# A generated record's report text is its prompt.
FAMILY = Family(
    name="ldm",
    config=LDMConfig,
    load_model=_model,
    presets=Path(__file__).parent / "presets",
    description="text- and label-conditioned latent diffusion (RoentGen)",
)


def __getattr__(name: str):
    if name == "Model":
        return _model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
