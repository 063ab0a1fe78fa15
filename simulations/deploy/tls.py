"""Throw-away credentials for a federation on this machine (tests, demos): a local CA, a
SuperLink certificate for 127.0.0.1 / localhost, and SuperNode authentication key pairs.

Real deployments get their certificates from the operator's PKI; these keys are written
unencrypted next to the run and are only good for one machine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("fedsynth local CA")
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server(ca_key, ca_cert: x509.Certificate, days: int):
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _builder(_name("localhost"), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def make_local_certificates(directory: Path, days: int = 2) -> dict[str, Path]:
    """``ca.pem``, ``server.pem`` and ``server.key`` (SANs 127.0.0.1, localhost) in ``directory``.

    Returns ``{"ca": ..., "cert": ..., "key": ...}`` (the SuperLink's ``--ssl-ca-certfile``,
    ``--ssl-certfile``, ``--ssl-keyfile``; SuperNodes and the CLI trust ``ca``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(days)
    key, cert = _server(ca_key, ca_cert, days)
    pem = serialization.Encoding.PEM
    key_bytes = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "ca": _write(directory / "ca.pem", ca_cert.public_bytes(pem)).resolve(),
        "cert": _write(directory / "server.pem", cert.public_bytes(pem)).resolve(),
        "key": _write(directory / "server.key", key_bytes, private=True).resolve(),
    }


def make_supernode_keys(directory: Path, name: str) -> dict[str, Path]:
    """An EC P-384 key pair in OpenSSH format for SuperNode authentication.

    The SuperLink operator registers ``public`` (``flwr supernode register``); the merchant's
    SuperNode signs with ``private`` (``--auth-supernode-private-key``), which never leaves it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return {
        "private": _write(directory / name, private, private=True).resolve(),
        "public": _write(directory / f"{name}.pub", public).resolve(),
    }
