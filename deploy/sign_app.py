"""Sign the app bundle (FAB) that `flwr run` is about to send, so hospitals' SuperNodes run it.

    python deploy/sign_app.py --key deploy/certs/signing/coordinator [--app .]
    -> app-signature='coordinator:1733290000:<base64url Ed25519 signature>'

Pass the printed pair to `flwr run` as a second `--run-config`. The signature is Flower's FAB
signature (Ed25519 over `sha256(FAB) || signed_at`, as `flwr app review` makes for the Flower
Hub) over the exact bytes `flwr run` builds from the same directory: Flower's FAB build is
deterministic (sorted files, fixed timestamps), so change no file between signing and running.
A SuperNode started with `python -m cxrsynth.client.supernode --trusted-entities` runs the app only
when the key id names a trusted key and the signature verifies (client/supernode.py).
Exit codes: 0 signed, 2 bad input (key or app directory).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import time
from pathlib import Path


def sign_fab(fab: bytes, key_path: Path, key_id: str, signed_at: int | None = None) -> str:
    """The run-config value `app-signature` for these FAB bytes."""
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign, load_private_key, sign_message

    signed_at = int(time.time()) if signed_at is None else int(signed_at)
    signature = sign_message(
        load_private_key(key_path), create_message_to_sign(hashlib.sha256(fab).digest(), signed_at)
    )
    return f"{key_id}:{signed_at}:{base64.urlsafe_b64encode(signature).rstrip(b'=').decode('ascii')}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Sign the Flower app bundle of an app directory for the hospitals' SuperNodes."
    )
    p.add_argument(
        "--key", required=True, type=Path, help="Ed25519 private key (OpenSSH), from deploy/certs.py --app-signer"
    )
    p.add_argument("--key-id", help="the key's name in trusted-entities.yaml (default: the key file's name)")
    p.add_argument("--app", type=Path, default=Path("."), help="the app directory `flwr run` is given (default: .)")
    args = p.parse_args(argv)
    from flwr.cli.build import build_fab_from_disk

    if not (args.app / "pyproject.toml").is_file():
        print(f"{args.app}: no pyproject.toml; --app must be the directory you pass to `flwr run`.", file=sys.stderr)
        return 2
    try:
        value = sign_fab(build_fab_from_disk(args.app), args.key, args.key_id or args.key.name)
    except (OSError, ValueError) as e:
        print(
            f"{args.key}: cannot sign with this key ({e}); it must be an unencrypted Ed25519 OpenSSH private key.",
            file=sys.stderr,
        )
        return 2
    print(f"app-signature='{value}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
