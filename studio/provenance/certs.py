"""The certificate that signs Studio's C2PA manifests.

On first use Studio makes a local certificate authority and an ES256 (P-256) end-entity
certificate issued by it, with what C2PA asks of a signing certificate: version 3,
digitalSignature key usage, the emailProtection and documentSigning extended key
usages, subject and authority key identifiers, not a CA, not self-signed. The CA's key
is thrown away once it has signed, so it can never issue anything else. Nothing leaves
the machine: no certificate request, no timestamp authority, no revocation check.

A reader that does not trust this CA (every reader, unless told to) reports the
manifest as valid with an untrusted signer. An artist with a certificate from a CA that
readers trust names its chain and key in the settings (``signing_cert``,
``signing_key``) instead.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes

#: Under the user's config folder.
FOLDER = "provenance"
SIGNER_FILE = "signer.pem"  # the end-entity key and chain, in one file (written at once)
CA_FILE = "local-ca.pem"  # the local CA's certificate, for a reader who wants to trust it
VALID_DAYS = 3650
LOCAL_ORGANIZATION = "Studio (local, unverified)"
DOCUMENT_SIGNING = "1.3.6.1.5.5.7.3.36"  # id-kp-documentSigning (RFC 9336)


class SigningError(StudioError):
    """The signing certificate or key cannot be used; the message says which file."""


@dataclass(frozen=True)
class Credentials:
    chain_pem: bytes  # end-entity certificate first, then its issuers
    key_pem: bytes
    local: bool  # made by Studio (readers will call the signer untrusted)
    source: str  # where they came from, for messages


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, LOCAL_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def make_local_credentials(now: datetime.datetime | None = None) -> tuple[bytes, bytes, bytes]:
    """(key + chain PEM, CA certificate PEM, key PEM) of a fresh local CA and signer.

    No user or machine name goes into them: the chain travels inside every image."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Studio local CA")
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(**{**usage, "key_cert_sign": True, "crl_sign": True}), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    ee = (
        x509.CertificateBuilder()
        .subject_name(_name("Studio local signer"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**{**usage, "digital_signature": True}), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.EMAIL_PROTECTION, ObjectIdentifier(DOCUMENT_SIGNING)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ca_pem = ca.public_bytes(pem)
    return key_pem + ee.public_bytes(pem) + ca_pem, ca_pem, key_pem


def _split(pem: bytes, source: str) -> tuple[bytes, bytes]:
    """(certificates, private key) of a PEM file that holds both."""
    certs, key, block, inside = [], b"", [], False
    for line in pem.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN"):
            inside, block = True, [line]
            continue
        if inside:
            block.append(line)
            if line.startswith(b"-----END"):
                inside = False
                text = b"".join(block)
                if b"PRIVATE KEY" in line:
                    key = text
                elif b"CERTIFICATE" in line:
                    certs.append(text)
    if not certs or not key:
        raise SigningError(f"{source} should hold a private key and a certificate chain")
    return b"".join(certs), key


def local_credentials(folder: Path) -> Credentials:
    """Studio's own signer in ``folder``, made there on first use."""
    path = folder / SIGNER_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data, ca_pem, _ = make_local_credentials()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        os.chmod(path, 0o600)
        atomic_write_bytes(folder / CA_FILE, ca_pem)
        os.chmod(folder / CA_FILE, 0o644)  # a certificate, for sharing
    except OSError as exc:
        raise SigningError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    chain, key = _split(data, str(path))
    return Credentials(chain, key, local=True, source=str(path))


def user_credentials(cert: str, key: str) -> Credentials:
    """The artist's own chain and key (PEM), checked to be usable for ES256 signing."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not cert or not key:
        raise SigningError("set both signing_cert and signing_key, or neither")
    try:
        chain = Path(cert).expanduser().read_bytes()
        key_pem = Path(key).expanduser().read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read {exc.filename or cert}: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise SigningError(f"signing_cert {cert} is not a PEM certificate chain") from None
    try:
        private = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise SigningError(f"signing_key {key} is not an unencrypted PEM private key") from None
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise SigningError(f"signing_key {key} must be a P-256 (ES256) key")
    if certs[0].public_key() != private.public_key():
        raise SigningError(f"signing_key {key} does not belong to the first certificate in {cert}")
    return Credentials(chain, key_pem, local=False, source=cert)


def credentials(settings: object, folder: Path | None = None) -> Credentials:
    """The artist's own credentials if the settings name them, else the local ones."""
    from studio.settings import config_dir

    cert = getattr(settings, "signing_cert", "")
    key = getattr(settings, "signing_key", "")
    if cert or key:
        return user_credentials(cert, key)
    return local_credentials(folder or config_dir() / FOLDER)
