"""EMIXER settings (Biswal et al., MLHC 2022)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EmixerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["emixer"] = "emixer"
    preset: Literal["tiny", "paper", "custom"] = "custom"

    # Generator G(z, y): hierarchical latent as in BigGAN (Brock et al. 2019, sec. 3): the first
    # chunk feeds the linear layer, each later chunk one conditional block.
    image_size: int = Field(32, ge=16, le=512)
    up_blocks: int = Field(3, ge=1, le=7, description="residual up-sampling blocks in G")
    z_dim: int = Field(80, ge=8, description="must equal z_chunk * (up_blocks + 2)")
    z_chunk: int = Field(16, ge=1)
    class_embed_dim: int = Field(128, ge=1)
    g_width: int = Field(16, ge=4)
    attn_resolution: int = Field(
        32, ge=4, description="G's self-attention sits after the up-block of this output size"
    )

    reports: Literal["generate", "none"] = Field(
        "generate",
        description="generate: the report decoder F writes each image's report and D_report, D_joint judge reports (the paper); "
        "none: for data without reports, an image GAN conditioned on the labels alone (G, D_image): no report is read, learnt or written",
    )

    # Discriminators and the report decoder's image encoder.
    d_width: int = Field(16, ge=4)

    # Report decoder F(image): hierarchical sentence/word LSTMs (EMIXER sec. 3.2).
    feature_dim: int = Field(64, ge=8, description="image feature v (paper: 512)")
    word_dim: int = Field(32, ge=4)
    sentence_hidden: int = Field(64, ge=4)
    word_hidden: int = Field(64, ge=4)
    report_hidden: int = Field(64, ge=4, description="LSTM width of D_report and D_joint")
    vocab_size: int = Field(
        64, ge=8, description="rows of every word embedding; the vocabulary keeps at most this many ids"
    )
    vocab_min_count: int = Field(6, ge=1, description="paper: tokens seen at least 6 times")
    report_sentences: Literal["findings", "all"] = Field(
        "findings",
        description="findings: F learns only sentences the rule labeler reads a finding in (no sign-offs, dates, identifiers)",
    )
    max_sentences: int = Field(4, ge=1)
    max_words: int = Field(10, ge=2, description="words per sentence before the end token")
    decoding: Literal["sample", "greedy"] = Field(
        "sample", description="greedy decoding writes the same likeliest report again and again"
    )
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature when sampling words")

    # Losses and schedule.
    adversarial_loss: Literal["hinge", "bce"] = "hinge"
    d_steps: int = Field(2, ge=1, description="discriminator steps per generator step")
    rot_weight_d: float = Field(1.0, ge=0.0, description="SS-GAN beta (Chen et al. 2019)")
    rot_weight_g: float = Field(0.2, ge=0.0, description="SS-GAN alpha (Chen et al. 2019)")
    report_adv_weight: float = Field(1.0, ge=0.0, description="weight of D_report and D_joint in G's loss")
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    lr_f: float = Field(1e-3, gt=0)
    f_steps: int = Field(
        1,
        ge=1,
        le=16,
        description="report-decoder updates per step on the step's batch; F is cheap and learns slowest. Under DP-SGD one is made (one update per sampled batch)",
    )
    f_synthetic_pairs: float = Field(
        0.0,
        ge=0.0,
        description="weight of F's teacher-forced loss on label-matched synthetic pairs: the fake image made from record i's labels, read against record i's report (0: real pairs only, as in the paper)",
    )
    g_ema: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="decay of a moving average of G's weights (BigGAN); when above 0, that average generates and draws F's synthetic pairs (0: off)",
    )
    g_ema_start: int = Field(
        0, ge=0, description="G updates before the moving average starts (until then it copies G)"
    )
    adam_beta1: float = Field(0.0, ge=0.0, lt=1.0, description="BigGAN: 0")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    label_pattern_min_count: int = Field(
        5, ge=1, description="label combinations kept for sampling need this many records"
    )

    @model_validator(mode="after")
    def _shapes(self) -> "EmixerConfig":
        chunks = self.up_blocks + 2
        if self.z_dim != self.z_chunk * chunks:
            raise ValueError(
                f"z_dim {self.z_dim} must be z_chunk * (up_blocks + 2) = {self.z_chunk} * {chunks} = {self.z_chunk * chunks}: "
                "one chunk for the first linear layer, one per up-block, one for the final residual block"
            )
        base = self.image_size >> self.up_blocks
        if base < 2 or base << self.up_blocks != self.image_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**up_blocks ({2**self.up_blocks}) and at least {2 ** (self.up_blocks + 1)}"
            )
        if self.image_size & (self.image_size - 1):
            raise ValueError(
                f"image_size {self.image_size} must be a power of two (the discriminators halve it down to 4x4)"
            )
        sizes = [base << (i + 1) for i in range(self.up_blocks)]
        if self.attn_resolution not in sizes:
            raise ValueError(
                f"attn_resolution {self.attn_resolution} must be the output size of an up-block: one of {sizes}"
            )
        return self
