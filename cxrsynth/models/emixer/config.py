"""EMIXER settings (Biswal et al., MLHC 2022)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmixerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["emixer"] = "emixer"
    preset: Literal["tiny", "paper", "custom"] = "custom"
    image_size: int = Field(32, ge=16, le=512)
    z_dim: int = Field(120, ge=8)
    z_chunk: int = Field(20, ge=1)
    class_embed_dim: int = Field(128, ge=1)
    g_width: int = Field(32, ge=4)
    d_width: int = Field(32, ge=4)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    d_steps: int = Field(2, ge=1)
