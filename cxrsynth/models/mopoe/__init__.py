"""MoPoE-VAE family: frontal image, lateral image, report (and labels) in one latent space.

The model class is imported on first use, so reading a config (which imports mopoe.config) stays
free of torch.
"""

from pathlib import Path

from cxrsynth.models.mopoe.config import MoPoEConfig
from cxrsynth.models.registry import Family, Probe


def _model():
    from cxrsynth.models.mopoe.model import Model

    return Model


def _probe(model, train, holdout) -> dict[str, float]:
    from cxrsynth.models.mopoe.probe import linear_probe_table

    return linear_probe_table(model, list(train), list(holdout))


FAMILY = Family(
    name="mopoe",
    config=MoPoEConfig,
    load_model=_model,
    presets=Path(__file__).parent / "presets",
    description="multimodal VAE over frontal, lateral, report and labels (MoPoE)",
    writes_reports=lambda config: "report" in config.modalities,
    has_lateral=lambda config: "lateral" in config.modalities,
    probe=Probe(
        title="MoPoE linear probe",
        note="Average precision of a linear classifier on each modality subset's latent means (F frontal, L lateral, T text).",
        run=_probe,
    ),
)


def __getattr__(name: str):
    if name == "Model":
        return _model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
