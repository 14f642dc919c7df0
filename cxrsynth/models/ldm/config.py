"""RoentGen-style latent diffusion settings (Chambon et al., "Vision-Language Foundation Model for
Chest X-ray Generation", 2022). The `paper` preset holds the Stable Diffusion v1 sizes RoentGen
fine-tunes; the `tiny` preset trains on CPU in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LDMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["ldm"] = "ldm"
    preset: Literal["tiny", "paper", "custom"] = "custom"
    image_size: int = Field(32, ge=16, le=1024)
    pretrained: Optional[Path] = Field(
        None,
        description="a local diffusers-format folder (vae/, unet/, text_encoder/, tokenizer/); its architecture replaces the sizes below",
    )

    # ---- autoencoder (AutoencoderKL, 1 channel) -------------------------------------------
    vae_channels: tuple[int, ...] = Field(
        (32, 64), min_length=1, description="one entry per resolution level; latents are image_size / 2**(levels-1)"
    )
    vae_layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    vae_training: Literal["stage", "frozen"] = Field(
        "stage", description="stage: trained on site data during the first vae_steps steps; frozen: never trained"
    )
    vae_steps: int = Field(0, ge=0, description="length of the VAE stage (vae_training: stage)")
    vae_lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0, description="KL term of the VAE stage (the LDM KL-f8 autoencoders use 1e-6)")
    latent_scale: float = Field(
        0.18215, gt=0, description="latents are multiplied by this before diffusion (Stable Diffusion v1 value)"
    )

    # ---- denoiser (UNet2DConditionModel) --------------------------------------------------
    unet_channels: tuple[int, ...] = Field((32, 64), min_length=1)
    unet_layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(8, ge=1)

    # ---- text encoder and tokenizer -------------------------------------------------------
    text_encoder: Literal["clip", "bert"] = Field(
        "clip", description="bert: a BERT-family encoder (the paper's RadBERT/SapBERT variants)"
    )
    text_hidden: int = Field(32, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    text_intermediate: int = Field(64, ge=8)
    text_training: Literal["joint", "frozen"] = Field(
        "joint", description="joint: fine-tuned with the UNet (the paper's best setting)"
    )
    text_position_embeddings: Literal["frozen", "trained"] = Field(
        "frozen",
        description="Opacus cannot compute per-sample gradients of position embeddings shared across the batch; keep frozen under DP-SGD",
    )
    tokenizer: Literal["wordlevel", "bpe", "fixed"] = Field(
        "wordlevel",
        description="wordlevel/bpe: trained from the site's de-identified training reports; fixed: a radiology word list shipped with "
        "the code, identical at every site (federation needs one shared vocabulary). Ignored with pretrained (its tokenizer is used).",
    )
    tokenizer_min_count: int = Field(
        5, ge=1, description="a token seen fewer times in the training reports never enters the vocabulary"
    )
    tokenizer_vocab_size: int = Field(8000, ge=64)
    max_tokens: int = Field(77, ge=8, le=512, description="CLIP's context length is 77")
    prompt_section: Literal["impression", "findings", "report", "labels"] = Field(
        "impression",
        description="which text conditions training (the paper: impression); labels: the label template of the record's labels, "
        "the same sentences generation prompts are made of, and no report text is read",
    )
    long_prompts: Literal["truncate", "filter"] = Field(
        "truncate", description="filter: drop training records whose prompt exceeds max_tokens, as the paper does"
    )

    label_conditioning: Literal["off", "vector"] = Field(
        "off",
        description="vector: the record's labels (cxrsynth.data.records.condition_vector) also condition the U-Net through its "
        "time embedding (diffusers class_embed_type 'projection'), a global path that learns label signs faster than cross-attention alone",
    )

    # ---- training -------------------------------------------------------------------------
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    prompt_dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share of training prompts replaced by the empty prompt (classifier-free guidance)",
    )
    noise_draws: int = Field(
        1,
        ge=1,
        description="(timestep, noise) draws per record each step, their losses averaged: under DP-SGD the record's "
        "gradient is clipped once, after the mean, so more draws lower its variance at no privacy cost (DPDM's noise "
        "multiplicity); each draw costs a forward and backward pass",
    )
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0, description="EMA of the UNet weights used for sampling; 0: off")
    mixed_precision: Literal["off", "bf16"] = Field(
        "off", description="bf16 autocast on GPU (no loss scaling needed, unlike fp16); ignored on CPU"
    )

    # ---- sampling -------------------------------------------------------------------------
    sampler: Literal["pndm", "ddim"] = "pndm"
    sample_steps: int = Field(75, ge=1, description="the paper samples with PNDM, 75 steps")
    guidance: float = Field(4.0, ge=1.0, description="classifier-free guidance scale (the paper: 4)")

    # ---- membership audit -----------------------------------------------------------------
    member_timesteps: tuple[int, ...] = Field((50, 150, 300, 500, 700), min_length=1)
    member_seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "LDMConfig":
        levels = len(self.vae_channels) - 1
        if self.image_size % (2**levels):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{levels} (vae_channels has {levels + 1} levels)"
            )
        for key in ("vae_channels", "unet_channels"):
            bad = [c for c in getattr(self, key) if c % self.norm_num_groups]
            if bad:
                raise ValueError(f"{key} {bad} not divisible by norm_num_groups {self.norm_num_groups} (GroupNorm)")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden {self.text_hidden} not divisible by text_heads {self.text_heads}")
        if max(self.member_timesteps) >= self.train_timesteps:
            raise ValueError(f"member_timesteps must be below train_timesteps {self.train_timesteps}")
        return self

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)
