"""ldm family: RoentGen-style latent diffusion (Chambon et al.) built with diffusers/transformers.

`Model` is imported on first use, so reading a config does not pull in diffusers and transformers.
"""

__all__ = ["Model"]


def __getattr__(name: str):
    if name == "Model":
        from cxrsynth.models.ldm.model import Model

        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
