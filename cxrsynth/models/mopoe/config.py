"""MoPoE-VAE settings (Sutter et al., ICLR 2021; Klug, Sutter and Vogt on MIMIC-CXR)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Every modality a MoPoE model may have, in the order its experts are built and listed.
MODALITY_ORDER = ("frontal", "lateral", "report", "labels")


class MoPoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["mopoe"] = "mopoe"
    preset: Literal["tiny", "paper", "custom"] = "custom"
    image_size: int = Field(32, ge=16, le=512, description="side of the square images the model sees (a power of two)")
    modalities: tuple[Literal["frontal", "lateral", "report", "labels"], ...] = Field(
        ("frontal", "lateral", "report"),
        min_length=1,
        description="the experts of the model: frontal (always), lateral, report, labels (the 14 labels as a modality of their own); "
        "data without reports: [frontal, labels], with lateral when the studies have lateral views",
    )
    label_hidden: int = Field(64, ge=4, description="width of the labels modality's encoder and decoder")
    latent_dim: int = Field(64, ge=2)
    beta: float = Field(1.0, ge=0, description="weight of the KL term of the MoPoE ELBO (Sutter et al. 2021, eq. 5)")
    lr: float = Field(5e-4, gt=0)
    channels: int = Field(16, ge=4, description="width of the first image conv layer; doubles per level up to 8x")
    image_likelihood: Literal["laplace", "gaussian"] = "laplace"
    image_scale: float = Field(
        0.1, gt=0, description="fixed scale of the image likelihood, on the [-1, 1] pixel range"
    )
    text_length: int = Field(
        32, ge=8, le=1024, description="report length in word tokens (truncated or padded); a multiple of 4"
    )
    text_channels: int = Field(64, ge=8)
    text_decoder: Literal["causal", "parallel"] = Field(
        "causal",
        description="causal: each word from the latent and the words before it; parallel: all words at once from the latent (the MoPoE code's convolutional decoder)",
    )
    word_dropout: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="share of the causal decoder's input words replaced by <unk> in training, so it must read the report's content from the latent (Bowman et al. 2016, Sec. 3.3)",
    )
    text_temperature: float = Field(
        0.5,
        ge=0,
        description="sampling temperature of generated words (causal decoder); 0: always the most likely word",
    )
    embed_dim: int = Field(32, ge=4)
    vocab_min_count: int = Field(
        3,
        ge=1,
        description="a word joins the vocabulary only if it occurs this many times in the training reports, so rare words (names that escaped de-identification) cannot be generated",
    )
    rec_weighting: Literal["by-size", "equal"] = Field(
        "by-size",
        description="by-size: each modality's log-likelihood is scaled by (largest modality size / its size), as in the MoPoE MIMIC-CXR code, so a 64-word report weighs as much as a 128x128 image",
    )
    member_samples: int = Field(4, ge=1, description="latent samples averaged per record by member_scores")
    report_sentences: Literal["findings", "all"] = Field(
        "all",
        description="the report text the report expert reads and writes: all sentences, or only those that state a "
        "finding (cxrsynth.data.labeler), leaving out demographics, sign-offs and de-identification placeholders",
    )
    report_candidates: int = Field(
        1,
        ge=1,
        le=64,
        description="reports sampled per generated record; the one whose stated findings (cxrsynth.data.labeler) agree best "
        "with the record's label set is kept. Post-processing of the model's output: no privacy cost. 1: the first sample",
    )
    drop_contradicting_sentences: bool = Field(
        False,
        description="leave out of a generated report each sentence whose stated findings (cxrsynth.data.labeler) contradict "
        "the record's label set, before the candidates are compared",
    )
    label_pattern_min_count: int = Field(
        5,
        ge=1,
        description="with a labels modality: label combinations kept whole for generation's label sets need this many records (or, federated, this many counted)",
    )

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "frontal" not in value:
            raise ValueError(
                f"modalities {list(value)} lack 'frontal': every record has a frontal image, and the synthetic records are made around it"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"modalities {list(value)} name a modality twice")
        return tuple(m for m in MODALITY_ORDER if m in value)

    @model_validator(mode="after")
    def _shapes(self) -> "MoPoEConfig":
        if self.image_size & (self.image_size - 1):
            raise ValueError(
                f"image_size must be a power of two (the image nets halve it down to 4x4), got {self.image_size}"
            )
        if self.text_length % 4:
            raise ValueError(
                f"text_length must be a multiple of 4 (the text nets halve it twice), got {self.text_length}"
            )
        return self
