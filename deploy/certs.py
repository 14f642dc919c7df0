"""Certificates and keys for a real deployment, made with the `cryptography` package.

    python deploy/certs.py --out deploy/certs --hosts superlink localhost 127.0.0.1 --nodes hospital-a hospital-b

writes
    ca.crt, ca.key                 the federation's own certificate authority (keep ca.key offline)
    server.pem, server.key         the SuperLink's TLS certificate (SANs: every --hosts entry)
    nodes/<name>, nodes/<name>.pub a SuperNode's authentication key pair (OpenSSH format, ECDSA
                                   P-384): the private key stays at the hospital, the coordinator
                                   registers the public key with `flwr supernode register`.
    signing/<signer>(.pub)         with --app-signer: the Ed25519 key that signs the app bundles
                                   (deploy/sign_app.py); keep the private key with the coordinator's
                                   release manager, off the SuperLink host.
    trusted-entities.yaml          {<signer>: <public key>}: what every hospital passes to
                                   `python -m cxrsynth.client.supernode --trusted-entities`.
Existing files are kept, so running it again only adds what is missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Flower accepts SuperNode keys on NIST curves only; P-384 is the one its docs use.
NODE_CURVE = ec.SECP384R1()
VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not private:
        path.write_bytes(data)
        return
    # A private key is never readable by others, not even between its creation and a chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cxrsynth federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def make_ca(out: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    crt, key = out / "ca.crt", out / "ca.key"
    if crt.is_file() and key.is_file():
        return x509.load_pem_x509_certificate(crt.read_bytes()), serialization.load_pem_private_key(
            key.read_bytes(), None
        )
    k = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("cxrsynth federation CA"))
        .issuer_name(_name("cxrsynth federation CA"))
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS * 5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(k, hashes.SHA256())
    )
    _write(key, _pem_key(k), private=True)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM))
    return cert, k


def make_server_cert(out: Path, hosts: list[str], ca: x509.Certificate, ca_key) -> Path:
    crt = out / "server.pem"
    if crt.is_file():
        return crt
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "server.key", _pem_key(k), private=True)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM))
    return crt


def make_node_key(out: Path, name: str) -> Path:
    priv = out / "nodes" / name
    if priv.is_file():
        return priv
    k = ec.generate_private_key(NODE_CURVE)
    _write(
        priv,
        k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
        private=True,
    )
    pub = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(priv.with_name(name + ".pub"), pub + f" {name}\n".encode())
    return priv


def make_app_signer(out: Path, name: str) -> Path:
    """An Ed25519 app-signing key pair (Flower verifies FAB signatures with Ed25519 only) and the
    trusted-entities file listing its public key."""
    priv = out / "signing" / name
    if not priv.is_file():
        k = ed25519.Ed25519PrivateKey.generate()
        _write(
            priv,
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        pub = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(priv.with_name(name + ".pub"), pub + f" {name}\n".encode())
    import yaml

    entities = out / "trusted-entities.yaml"
    known = yaml.safe_load(entities.read_text()) if entities.is_file() else {}
    known[name] = priv.with_name(name + ".pub").read_text().strip()
    _write(entities, yaml.safe_dump(known, sort_keys=True).encode())
    return priv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Make the federation's CA, the SuperLink certificate and SuperNode keys.")
    p.add_argument("--out", required=True, help="directory for the files (created)")
    p.add_argument(
        "--hosts", nargs="+", default=["localhost", "127.0.0.1"], help="names and IPs the SuperLink is reached at"
    )
    p.add_argument("--nodes", nargs="*", default=[], help="one authentication key pair per SuperNode name")
    p.add_argument("--app-signer", help="name of an Ed25519 app-signing key to make, added to trusted-entities.yaml")
    args = p.parse_args(argv)
    out = Path(args.out)
    ca, ca_key = make_ca(out)
    make_server_cert(out, args.hosts, ca, ca_key)
    for name in args.nodes:
        make_node_key(out, name)
    if args.app_signer:
        make_app_signer(out, args.app_signer)
    print(
        f"wrote {out}: ca.crt, server.pem/.key for {', '.join(args.hosts)}; node keys: {', '.join(args.nodes) or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
