"""ldm family: RoentGen-style latent diffusion (Chambon et al.) built with diffusers/transformers.

The model class is imported on first use, so reading a config does not pull in diffusers and
transformers.
"""

from cxrsynth.models.ldm.config import LDMConfig
from cxrsynth.models.registry import Family

# A generated record's report text is its prompt.
FAMILY = Family.in_folder(
    __name__,
    name="ldm",
    config=LDMConfig,
    description="text- and label-conditioned latent diffusion (RoentGen)",
)
