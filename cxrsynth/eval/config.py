"""Settings of an evaluation run (frozen; unknown keys refused like every other config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=16, le=512, description="side the classifier and MS-SSIM see")
    classifier_width: int = Field(16, ge=4, description="channels of the first conv; features are 4x this")
    classifier_steps: int = Field(300, ge=1, description="same for every utility arm, so arms compare fairly")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    augmentation: Literal["paired", "pooled"] = Field(
        "paired",
        description="real + synthetic arm: paired = every step a real batch as in real-only plus a synthetic batch of the same size "
        "(the real data keeps its updates); pooled = one batch drawn from the union (the real data gets only its share of the steps)",
    )
    per_site: bool = Field(
        True,
        description="when the real training records come from two or more sites, also train on each site's records alone and "
        "with the synthetic set (and the base-only set), scored on the same holdout: what the release gives one hospital",
    )
    seeds: int = Field(1, ge=1, le=20, description="utility arms are trained with this many seeds and averaged")
    bootstrap: int = Field(
        1000,
        ge=0,
        le=100000,
        description="resamples of the holdout's records for the 95% intervals of the utility gains and of synthetic-only "
        "over real-only (the same resample for both arms of a comparison); 0: no intervals",
    )
    workers: int = Field(
        0,
        ge=0,
        description="processes that train the utility classifiers side by side, one thread each; 0: one per CPU core when "
        "the classifiers' steps add up to 2000 or more, else none (this process); the figures do not depend on it",
    )
    uncertain_as: float = Field(
        1.0, ge=0.0, le=1.0, description="target for an uncertain (-1) label: 1 is the CheXpert U-Ones policy"
    )
    # RoentGen (Chambon et al., sec. 3.3) measures diversity over 4 samples per prompt.
    samples_per_condition: int = Field(4, ge=2)
    max_conditions: int = Field(32, ge=1, description="conditioning groups used for MS-SSIM diversity")
    max_references: int = Field(
        5, ge=1, description="real reports per synthetic report when references are label-matched"
    )
    grid: int = Field(16, ge=1, description="images per grid on the HTML page")
    sample_reports: int = Field(6, ge=0)
    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="used only when the real dataset has no split column values"
    )
    seed: int = 0
