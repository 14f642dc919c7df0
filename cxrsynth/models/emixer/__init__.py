"""EMIXER: label-conditioned paired X-ray image + report GAN (Biswal et al., MLHC 2022).

`Model` is imported on first use, so loading a config does not pull in torch and Opacus.
"""


def __getattr__(name: str):
    if name == "Model":
        from cxrsynth.models.emixer.model import Model

        return Model
    raise AttributeError(name)
