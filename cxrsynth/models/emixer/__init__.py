"""EMIXER: label-conditioned paired X-ray image + report GAN (Biswal et al., MLHC 2022).

The model class is imported on first use, so loading a config does not pull in torch and Opacus.
"""

from pathlib import Path

from cxrsynth.models.emixer.config import EmixerConfig
from cxrsynth.models.registry import Family


def _model():
    from cxrsynth.models.emixer.model import Model

    return Model


FAMILY = Family(
    name="emixer",
    config=EmixerConfig,
    load_model=_model,
    presets=Path(__file__).parent / "presets",
    description="label-conditioned image + report GAN (EMIXER)",
    writes_reports=lambda config: config.reports == "generate",
)


def __getattr__(name: str):
    if name == "Model":
        return _model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
