"""The hospital's SuperNode: Flower's `flower-supernode`, refusing every app its operator does not trust.

    python -m cxrsynth.client.supernode --trusted-entities trusted-entities.yaml [every flower-supernode flag]

A SuperNode runs whatever ClientApp the SuperLink hands it, and our egress guard binds only our
own ClientApp, so the one defence against a foreign app is not to run it. Flower's SuperNode
already verifies app bundles (FABs) against `--trusted-entities` (public Ed25519 keys): a FAB
runs only when one of those keys signed `sha256(FAB) || signed_at`. In Flower 1.42 the
signatures reach a SuperNode only from the Flower Hub, so a FAB submitted to our offline
SuperLink arrives with none and a SuperNode with trusted entities refuses every app, ours too.

This launcher adds the missing offline transport and nothing else: the coordinator signs the
FAB it is about to run (`deploy/sign_app.py`) and passes the signature as the run-config key
`app-signature` ("key_id:signed_at:base64url signature"). Before Flower's own check runs,
the signature is placed where Flower reads Hub signatures, so the cryptographic check (`_verify_fab`,
sha256 of the FAB bytes the SuperNode received, the trusted key) is Flower's, unchanged. An app
without a signature, or signed by a key not in `--trusted-entities`, is refused with Flower's
FAB_VERIFICATION_ERROR reply before any of its code runs.

Without `--trusted-entities` this launcher refuses to start: a hospital node that runs any app
the SuperLink sends is exactly the hole this module closes.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

import flwr.supernode.start_client_internal as _sci
from flwr.supercore.fab import Fab

SIGNATURE_KEY = "app-signature"
LOCAL_SIGNATURE = "cxrsynth-run-config-signature"


def parse_signature(value: str) -> tuple[str, int, str]:
    """(key id, signed_at, base64url signature) from the run-config value; ValueError if malformed."""
    key_id, signed_at, signature = str(value).rsplit(":", 2)
    if not key_id or not signature:
        raise ValueError("empty key id or signature")
    return key_id, int(signed_at), signature


def with_run_signature(fab: Fab, override_config: dict) -> Fab:
    """The FAB with the run's `app-signature` placed where Flower's FAB verification reads it.

    A FAB that already carries verifications (from the Flower Hub) is left as it is; a malformed
    or missing signature leaves it unsigned, and Flower refuses it.
    """
    if fab.verifications.get("valid_license"):
        return fab
    try:
        key_id, signed_at, signature = parse_signature(str(override_config.get(SIGNATURE_KEY, "")))
    except ValueError:
        return fab
    verifications = {
        key_id: json.dumps({"signature": signature, "signed_at": signed_at}),
        "valid_license": LOCAL_SIGNATURE,
    }
    return Fab(fab.hash_str, fab.content, verifications)


def _pull_with_run_signatures(original: Callable) -> Callable:
    def pull(*args, **kwargs):
        get_run, get_fab = kwargs["get_run"], kwargs["get_fab"]
        runs: dict[int, object] = {}

        def get_run_(run_id: int):
            runs[run_id] = get_run(run_id)
            return runs[run_id]

        def get_fab_(fab_hash: str, run_id: int) -> Fab:
            run = runs.get(run_id) or get_run(run_id)
            return with_run_signature(get_fab(fab_hash, run_id), dict(run.override_config))

        return original(*args, **{**kwargs, "get_run": get_run_, "get_fab": get_fab_})

    return pull


def install() -> None:
    """Route Flower's SuperNode message intake through `with_run_signature` (idempotent)."""
    if not getattr(_sci._pull_and_store_message, "_cxrsynth", False):
        pull = _pull_with_run_signatures(_sci._pull_and_store_message)
        pull._cxrsynth = True
        _sci._pull_and_store_message = pull


def main() -> int:
    if not any(a == "--trusted-entities" or a.startswith("--trusted-entities=") for a in sys.argv[1:]):
        print(
            "cxrsynth.client.supernode: --trusted-entities is required. Without it the SuperNode runs any app the "
            "SuperLink sends, including one an outsider submitted. Pass the YAML that maps the coordinator's "
            "app-signing key id to its public key (deploy/certs.py --app-signer writes it).",
            file=sys.stderr,
        )
        return 2
    install()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
