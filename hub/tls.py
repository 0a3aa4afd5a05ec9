"""The hub's TLS identity: a self-signed certificate and key, made on first start.

TLS is always on (DESIGN.md rule 5). There is no certificate authority: clients pin
the hub's certificate, by its file or by its SHA-256 fingerprint
(``protocol.driver.wire_auth``, shared with the client). The certificate names
``localhost`` and ``127.0.0.1`` (plus any ``extra_names``) so a client that trusts it
as its only root also passes gRPC's hostname check on loopback.

The key is an ECDSA P-256 key written with mode 0600 before any byte of it is; an
existing key file readable by group or others is refused (``TlsError``) rather than
used, as ssh refuses such keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.driver.wire_auth import cert_fingerprint_sha256

CERT_FILE = "tls.cert"
KEY_FILE = "tls.key"
# Ten years: the pin is the trust anchor, so expiry would only force every client to
# re-pin; rotating means deleting the files and re-pinning on purpose.
VALIDITY_DAYS = 3650


class PrivateFileError(Exception):
    """A secret file is unreadable or readable by group or others."""


class TlsError(PrivateFileError):
    """The TLS files are unusable (unreadable, not a certificate/key, bad mode)."""


@dataclass(frozen=True)
class TlsIdentity:
    """The hub's certificate and key, loaded."""

    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path

    @property
    def fingerprint_sha256(self) -> str:
        """Hex SHA-256 of the certificate's DER: what clients pin."""
        return cert_fingerprint_sha256(self.cert_pem)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, not even briefly),
    refusing to overwrite; the data is fsynced before the name is final."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen it, but be explicit
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, path)  # fails if path exists: never clobber a key
    os.unlink(tmp)


def read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others may read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise PrivateFileError(f"cannot read {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PrivateFileError(f"{path} is accessible by group or others (mode "
                       f"{stat.S_IMODE(mode):o}); chmod 600 it")
    return path.read_bytes()


def make_self_signed(extra_names: tuple[str, ...] = (),
                     now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh (cert_pem, key_pem) pair valid for localhost, 127.0.0.1 and
    ``extra_names`` (host names or IP addresses)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chanhubd")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for extra in extra_names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(extra)))
        except ValueError:
            alt_names.append(x509.DNSName(extra))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_or_create_tls(cert_path: Path, key_path: Path,
                       extra_names: tuple[str, ...] = ()) -> TlsIdentity:
    """Load the hub's certificate and key, making both on first start (neither file
    exists). Exactly one of them existing is an error: a lost key must not silently
    become a new identity that clients would have to re-pin."""
    cert_exists, key_exists = cert_path.exists(), key_path.exists()
    if not cert_exists and not key_exists:
        cert_pem, key_pem = make_self_signed(extra_names)
        write_private_file(key_path, key_pem)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert_pem)
    elif cert_exists != key_exists:
        missing = key_path if cert_exists else cert_path
        raise TlsError(f"{missing} is missing; delete the other TLS file to make a new "
                       "identity (clients must then pin the new certificate)")
    try:
        key_pem = read_private_file(key_path)
    except PrivateFileError as exc:
        raise TlsError(str(exc)) from exc
    cert_pem = cert_path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise TlsError(f"cannot parse the TLS files: {exc}") from exc
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TlsError(f"{key_path} is not the key of {cert_path}")
    return TlsIdentity(cert_pem, key_pem, cert_path, key_path)
