"""The site secret and keyed hashes (HMAC-SHA256) built on it.

Surrogates, audit-log keys and remapped DICOM UIDs are keyed hashes, so they are consistent
within a site and cannot be reversed or recomputed by anyone without the site secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

from cxrsynth.errors import InputError

SECRET_ENV = "CXRSYNTH_DEID_SECRET"


def load_secret(secret_file: Optional[Path]) -> tuple[bytes, str]:
    """(secret, where it came from): the file, $CXRSYNTH_DEID_SECRET, or a random one for this run only."""
    if secret_file is not None:
        try:
            data = Path(secret_file).read_bytes().strip()
        except OSError as e:
            raise InputError(f"{secret_file}: cannot read the site secret (setting 'secret_file'): {e.strerror}.") from None
        if len(data) < 16:
            raise InputError(f"{secret_file}: the site secret must be at least 16 bytes (got {len(data)}); e.g. `openssl rand -hex 32 > {secret_file}`.")
        return data, "file"
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < 16:
            raise InputError(f"${SECRET_ENV}: the site secret must be at least 16 characters (got {len(env)}).")
        return env.encode(), "env"
    # Without a configured secret, surrogates are consistent within this run only.
    return secrets.token_bytes(32), "ephemeral"


def keyed(secret: bytes, *parts: str) -> bytes:
    return hmac.new(secret, "\x1f".join(parts).encode("utf-8"), hashlib.sha256).digest()


def keyed_int(secret: bytes, *parts: str) -> int:
    return int.from_bytes(keyed(secret, *parts)[:8], "big")


def keyed_hex(secret: bytes, *parts: str, n: int = 16) -> str:
    return keyed(secret, *parts).hex()[:n]


def patient_shift_days(secret: bytes, patient_key: str, max_shift_days: int) -> int:
    """The per-patient date offset, in [-max, -1] or [1, max], never a whole number of years
    (a year-less "March 14" would come back unchanged)."""
    magnitude = 1 + keyed_int(secret, "shift", patient_key) % max_shift_days
    if magnitude % 365 == 0:
        magnitude -= 1
    return -magnitude if keyed_int(secret, "sign", patient_key) % 2 else magnitude
