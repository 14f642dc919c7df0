"""MoPoE-VAE settings (Sutter et al., ICLR 2021; Klug, Sutter and Vogt on MIMIC-CXR)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MoPoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["mopoe"] = "mopoe"
    preset: Literal["tiny", "paper", "custom"] = "custom"
    image_size: int = Field(32, ge=16, le=512)
    latent_dim: int = Field(64, ge=2)
    beta: float = Field(1.0, ge=0)
    lr: float = Field(5e-4, gt=0)
