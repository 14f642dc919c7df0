"""The audit's result as typed data: what `cxrsynth audit` writes to audit.json and what the
release gate, the dataset card and the pages read from it.

The figures of each check differ from check to check and are kept as they are (extra fields of
`Check`); what every check and every audit has is typed. JSON is written from these models with
only the keys an audit set, so audit.json reads as it always has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from cxrsynth.config import AuditPolicy, validate
from cxrsynth.errors import InputError

FORMAT = "cxrsynth-audit/1"


class Check(BaseModel):
    """One check: its verdict, how it ran, why it failed, and its figures (extra fields)."""

    model_config = ConfigDict(extra="allow")

    passed: bool
    status: str = ""
    reasons: list[str] = []
    note: str = ""

    def figures(self) -> dict[str, Any]:
        """The check as audit.json holds it (verdict, status, reasons and figures)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def figure(self, key: str, default: Any = None) -> Any:
        return (self.model_extra or {}).get(key, default)


class Flagged(BaseModel):
    """Synthetic records the audit flags: images near a training image, reports that leak."""

    images: list[str] = []
    reports: list[str] = []


class SiteRow(BaseModel):
    """One site's line of the audit: its record counts and figures (extra fields)."""

    model_config = ConfigDict(extra="allow")

    site: str
    n_train: int
    n_holdout: int


class AuditInputs(BaseModel):
    """What was audited: the synthetic files by SHA-256 (the release covers exactly these)."""

    model_config = ConfigDict(extra="allow")

    synthetic_files: dict[str, str] = {}


class Audit(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    passed: bool
    checks: dict[str, Check]
    flagged: Flagged = Flagged()
    dropped_labels: list[str] = []
    sites: list[SiteRow] = []
    policy: AuditPolicy = Field(default_factory=AuditPolicy)
    inputs: AuditInputs = AuditInputs()

    def check_figures(self) -> dict[str, dict]:
        """name -> the check as audit.json holds it: what cxrsynth.privacy.audit.verdict recomputes from."""
        return {name: c.figures() for name, c in self.checks.items()}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2)


def as_audit(audit: "Audit | dict", where: str = "audit") -> Audit:
    """`audit` as an Audit; a dict is validated, with an InputError naming `where` and the key."""
    if isinstance(audit, Audit):
        return audit
    return validate(Audit, audit, where, InputError, hint="(was this written by `cxrsynth audit`?)")


def read_audit_file(path: Path, missing_hint: Optional[str] = None) -> Audit:
    """audit.json as an Audit; an InputError naming the file and the key otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no audit here; {missing_hint or 'run `cxrsynth audit` first'}.") from None
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        raise InputError(f"{path}: not a readable audit ({e.__class__.__name__}).") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not an audit (a JSON object); was this written by `cxrsynth audit`?")
    for key in ("passed", "checks", "inputs", "policy"):
        if key not in data:
            raise InputError(f"{path}: key {key!r} is missing; was this written by `cxrsynth audit`?")
    if not isinstance(data["checks"], dict) or not isinstance(data["inputs"], dict):
        raise InputError(f"{path}: keys 'checks' and 'inputs' must be objects; was this written by `cxrsynth audit`?")
    return as_audit(data, str(path))
