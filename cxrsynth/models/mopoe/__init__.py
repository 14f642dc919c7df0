"""MoPoE-VAE family: frontal image, lateral image and report in one latent space (issue 6).

`Model` is imported on first use, so reading a config (which imports mopoe.config) stays free
of torch.
"""

__all__ = ["Model"]


def __getattr__(name: str):
    if name == "Model":
        from cxrsynth.models.mopoe.model import Model

        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
