"""MoPoE-VAE family: frontal image, lateral image, report (and labels) in one latent space.

The model class is imported on first use, so reading a config (which imports mopoe.config) stays
free of torch.
"""

from cxrsynth.models.mopoe.config import MoPoEConfig
from cxrsynth.models.registry import Family, Probe


def _probe(model, train, holdout) -> dict[str, float]:
    from cxrsynth.models.mopoe.probe import linear_probe_table

    return linear_probe_table(model, list(train), list(holdout))


FAMILY = Family.in_folder(
    __name__,
    name="mopoe",
    config=MoPoEConfig,
    description="multimodal VAE over frontal, lateral, report and labels (MoPoE)",
    writes_reports=lambda config: "report" in config.modalities,
    has_lateral=lambda config: "lateral" in config.modalities,
    probe=Probe(
        title="MoPoE linear probe",
        note="Average precision of a linear classifier on each modality subset's latent means (F frontal, L lateral, T text).",
        run=_probe,
    ),
)
