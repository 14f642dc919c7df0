"""RoentGen-style latent diffusion settings (Chambon et al.)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LDMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["ldm"] = "ldm"
    preset: Literal["tiny", "paper", "custom"] = "custom"
    image_size: int = Field(32, ge=16, le=1024)
    lr: float = Field(5e-5, gt=0)
