"""ldm family: RoentGen-style latent diffusion (Chambon et al.) built with diffusers/transformers."""

from cxrsynth.models.ldm.model import Model

__all__ = ["Model"]
