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


def default_secret_path() -> Path:
    """Where a site keeps its secret when none is configured: $XDG_CONFIG_HOME/cxrsynth (or ~/.config)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cxrsynth" / "deid_site_secret.key"


def load_secret(secret_file: Optional[Path], ephemeral: bool = False) -> tuple[bytes, str]:
    """(secret, where it came from): the file, $CXRSYNTH_DEID_SECRET, a random one for this run
    only when `ephemeral`, else the site's default secret file, made once (mode 0600) and reused,
    so the same reports give the same surrogates on every run at a site."""
    if secret_file is not None:
        try:
            data = Path(secret_file).read_bytes().strip()
        except OSError as e:
            raise InputError(
                f"{secret_file}: cannot read the site secret (setting 'secret_file'): {e.strerror}."
            ) from None
        if len(data) < 16:
            raise InputError(
                f"{secret_file}: the site secret must be at least 16 bytes (got {len(data)}); e.g. `openssl rand -hex 32 > {secret_file}`."
            )
        return data, "file"
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < 16:
            raise InputError(f"${SECRET_ENV}: the site secret must be at least 16 characters (got {len(env)}).")
        return env.encode(), "env"
    if ephemeral:  # surrogates consistent within this run only (setting 'ephemeral_secret')
        return secrets.token_bytes(32), "ephemeral"
    path = default_secret_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    except FileExistsError:
        pass
    except OSError as e:
        raise InputError(
            f"{path}: cannot create the site secret ({e.strerror}); set 'secret_file', ${SECRET_ENV}, or 'ephemeral_secret: true'."
        ) from None
    data, _ = load_secret(path)
    return data, "site-default"


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
