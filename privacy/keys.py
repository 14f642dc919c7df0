"""The steward's Ed25519 key: made once on purpose, stored encrypted if wished, known by its fingerprint.

A key is never made as a side effect: `cxrsynth release key --out FILE` makes one (mode 0600,
its public key at FILE.pub) and prints its fingerprint, which users pin when they verify a
bundle (`cxrsynth release verify BUNDLE --fingerprint FP`). A key may be stored encrypted (PKCS#8
with the best encryption `cryptography` offers); its passphrase comes from a file or an
environment variable, never from the command line, where other users of the machine could read it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cxrsynth.errors import InputError

PASSPHRASE_HELP = "give its passphrase with --passphrase-file FILE or --passphrase-env VARIABLE"


def public_path(key_path: Path) -> Path:
    return Path(key_path).with_name(Path(key_path).name + ".pub")


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SHA-256 of the raw 32-byte public key, in hex: what users pin."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def normal_fingerprint(text: str) -> str:
    """A fingerprint as typed (any case, with colons, spaces or a `sha256:` prefix) -> 64 hex digits."""
    fp = re.sub(r"[\s:]", "", text.strip().lower())
    fp = fp[len("sha256") :] if fp.startswith("sha256") else fp
    if not re.fullmatch(r"[0-9a-f]{64}", fp):
        raise InputError(
            f"--fingerprint {text!r}: expected the 64 hex digits of a key fingerprint (as `cxrsynth release key` prints it)."
        )
    return fp


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def read_passphrase(file: Optional[str] = None, env: Optional[str] = None) -> Optional[bytes]:
    """The passphrase from a file (its first line) or an environment variable; None when neither is given."""
    if file and env:
        raise InputError("give the key's passphrase with one of --passphrase-file and --passphrase-env, not both.")
    if file:
        path = Path(file)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            raise InputError(
                f"--passphrase-file {path}: cannot be read ({e.strerror or e.__class__.__name__})."
            ) from None
        phrase = raw.splitlines()[0] if raw.strip() else b""
        if not phrase:
            raise InputError(f"--passphrase-file {path}: the file is empty; its first line is the passphrase.")
        return phrase
    if env:
        value = os.environ.get(env)
        if not value:
            raise InputError(f"--passphrase-env {env}: the environment variable is not set or empty.")
        return value.encode("utf-8")
    return None


def _exclusive_write(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise InputError(
            f"{path}: exists; a key is never overwritten (move it away first, or choose another --out)."
        ) from None
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise InputError(f"{path}: cannot be created ({e.strerror or e.__class__.__name__}).") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_key(path: str | Path, passphrase: Optional[bytes] = None) -> Ed25519PrivateKey:
    """A new Ed25519 key at `path` (mode 0600; encrypted when a passphrase is given) and its public
    key at path.pub. Refuses to overwrite either."""
    path = Path(path)
    pub = public_path(path)
    for p in (path, pub):
        if p.exists() or p.is_symlink():
            raise InputError(f"{p}: exists; a key is never overwritten (move it away first, or choose another --out).")
    if not path.parent.is_dir():
        raise InputError(f"{path}: its folder {path.parent} does not exist.")
    key = Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    _exclusive_write(
        path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc), 0o600
    )
    _exclusive_write(pub, public_pem(key), 0o644)
    return key


def _read_key_file(path: Path, what: str, kind: str, missing: str) -> bytes:
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder; give the {kind} file (PEM).")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: {missing}") from None
    except PermissionError:
        raise InputError(f"{what} {path}: cannot be read (permission denied).") from None


def load_private_key(path: str | Path, passphrase: Optional[bytes] = None) -> Ed25519PrivateKey:
    """The Ed25519 private key at `path`; InputError saying what is wrong and what to do."""
    path = Path(path)
    data = _read_key_file(
        path,
        "--key",
        "private key",
        f"no such key. Keys are never made implicitly: make one with `cxrsynth release key --out {path}` and keep it safe.",
    )
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    if encrypted and passphrase is None:
        raise InputError(f"--key {path}: the key is encrypted; {PASSPHRASE_HELP}.")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as e:
        if encrypted:
            raise InputError(f"--key {path}: the passphrase does not decrypt this key.") from None
        raise InputError(f"--key {path}: not a PEM private key ({str(e).splitlines()[0][:200]}).") from None
    except TypeError as e:
        raise InputError(f"--key {path}: {e}.") from None
    except Exception as e:  # noqa: BLE001 - cryptography raises assorted errors for malformed key bodies
        raise InputError(f"--key {path}: not a readable PEM private key ({e.__class__.__name__}).") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(
            f"--key {path}: a {type(key).__name__}; cxrsynth signs with Ed25519 keys only (make one with `cxrsynth release key`)."
        )
    return key


def load_public_key(path: str | Path, what: str = "--public-key") -> Ed25519PublicKey:
    path = Path(path)
    data = _read_key_file(path, what, "public key (the .pub beside the private key)", "public key file not found.")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as e:  # noqa: BLE001 - ValueError and assorted parser errors on malformed PEM
        raise InputError(
            f"{what} {path}: not a PEM public key ({str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__})."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{what} {path}: a {type(key).__name__}; release bundles are signed with Ed25519.")
    return key


def key_from_args(args) -> Ed25519PrivateKey:
    """The private key a command names with --key (and --passphrase-file / --passphrase-env)."""
    phrase = read_passphrase(getattr(args, "passphrase_file", None), getattr(args, "passphrase_env", None))
    return load_private_key(Path(args.key), phrase)


def key_command(args) -> int:
    """`cxrsynth release key --out FILE`: make the steward's signing key and print its fingerprint."""
    phrase = read_passphrase(getattr(args, "passphrase_file", None), getattr(args, "passphrase_env", None))
    key = make_key(Path(args.out), phrase)
    print(
        f"key written to {args.out} ({'encrypted' if phrase else 'not encrypted'}), public key {public_path(Path(args.out))}"
    )
    print(f"fingerprint {fingerprint(key)}")
    return 0
