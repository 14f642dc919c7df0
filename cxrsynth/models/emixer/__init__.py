"""EMIXER: label-conditioned paired X-ray image + report GAN (Biswal et al., MLHC 2022).

The model class is imported on first use, so loading a config does not pull in torch and Opacus.
"""

from cxrsynth.models.emixer.config import EmixerConfig
from cxrsynth.models.registry import Family

FAMILY = Family.in_folder(
    __name__,
    name="emixer",
    config=EmixerConfig,
    description="label-conditioned image + report GAN (EMIXER)",
    writes_reports=lambda config: config.reports == "generate",
)
