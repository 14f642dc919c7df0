"""On-site de-identification of radiology reports and DICOM headers (Presidio, offline, fail-closed).

Runs at the hospital before anything else sees the data. Public API:

- `DeidConfig`, `load_deid_config(path | None)`: the settings (spaCy model package or folder,
  `mode: surrogate | redact`, site secret file, staff roster, limits). Defaults need no file.
- `Deidentifier(config)`: build once (loads spaCy, a few seconds). Then
  `.deidentify_text(text, meta=None, patient_key=None) -> DeidResult(text | None, status, reason, counts)`;
  `status` is "ok" or "quarantined" (then `text` is None and `reason` says why, without PHI).
  `meta` holds header fields (PatientName, PatientID, AccessionNumber, PatientBirthDate,
  ReferringPhysicianName) that become a per-report deny-list; `patient_key` keeps surrogate
  names and date shifts consistent across one patient's reports (default: meta PatientID).
- `deidentify_records(records, config=None, audit_log_path=None, workers=1) -> (clean, quarantined_ids)`:
  findings and impression of each `cxrsynth.data.records.Record` de-identified with its
  `phi_meta`; clean records come back with empty `phi_meta`; quarantined ones are left out.
- `deidentify_batch(items, config, audit_log_path, workers)`: the same for `DeidItem`s (JSON lines).
- `scan_phi(texts, config=None) -> list[list[Finding]]`: PHI findings (type, start, end, score,
  source) for the audit of synthetic reports. Never print or log the text under a finding
  outside the site.
- `deidentify_dataset(ds, key, dates="remove"|"shift", device="remove"|"keyed") -> (ds, flags)`:
  DICOM PS3.15 Table E.1-1 (basic profile) applied recursively into sequences, private tags
  removed, UIDs remapped consistently by keyed hash, burned-in annotation and any identifying
  value left over flagged.
- `deidentify_folder(src, out, config, audit_log)`: the same for a folder of DICOM files.

Commands: `cxrsynth deid run --in FILE --out FILE`, `cxrsynth deid eval --gold FILE.jsonl` and
`cxrsynth deid dicom --in DIR --out DIR`.
"""

from cxrsynth.privacy.deid.batch import DeidItem, deidentify_batch, deidentify_records
from cxrsynth.privacy.deid.config import DeidConfig, load_deid_config
from cxrsynth.privacy.deid.deidentifier import Deidentifier, DeidResult, Finding, scan_phi
from cxrsynth.privacy.deid.dicom import deidentify_dataset
from cxrsynth.privacy.deid.dicom_files import deidentify_folder

__all__ = [
    "DeidConfig",
    "DeidItem",
    "DeidResult",
    "Deidentifier",
    "Finding",
    "deidentify_batch",
    "deidentify_dataset",
    "deidentify_folder",
    "deidentify_records",
    "load_deid_config",
    "scan_phi",
]
