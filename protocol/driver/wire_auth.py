"""What hub and client must agree on to authenticate each other over gRPC, written once
(DESIGN.md, "Layers": the client never imports the hub).

The hub proves itself with TLS: its certificate is self-signed, so a client trusts
exactly one certificate, pinned either as the certificate file or as the SHA-256
fingerprint of its DER encoding (``cert_fingerprint_sha256``; the hub prints it). To
pin by fingerprint the client first fetches the certificate the server presents
(``fetch_server_certificate``), compares fingerprints in constant time, and only then
hands that certificate to gRPC as its only trusted root, so the real connection is
verified against it: a man in the middle would have to present the pinned
certificate *and* hold its key.

A client proves itself with its node key: it signs ``challenge_digest`` over the hub's
node id, its own node id, the hub's single-use nonce and the challenge's expiry,
under a domain tag, so an answer is good for one hub, one client, one challenge.
It cannot be passed off as anything else the key signs either: every other
signature by a node key is over a BIP143 sighash or a BOLT #11 hash, and making one
of those equal a tagged challenge digest would take a SHA-256 preimage.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

AUTH_DOMAIN = b"chanhub/auth/v1"
SESSION_METADATA_KEY = "x-chanhub-session"
ADMIN_METADATA_KEY = "x-chanhub-admin"
NONCE_BYTES = 32


class PinMismatch(Exception):
    """The server presented a certificate other than the pinned one."""


def challenge_digest(hub_node_id: bytes, client_node_id: bytes, nonce: bytes,
                     expires_at_unix: int) -> bytes:
    """The 32 bytes a client signs to answer a challenge (see client.proto,
    ``Challenge``). Every field has a fixed length, so the concatenation is
    unambiguous."""
    if len(hub_node_id) != 33 or len(client_node_id) != 33:
        raise ValueError("node ids are 33-byte compressed public keys")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    if not 0 <= expires_at_unix < 1 << 64:
        raise ValueError("expiry out of range")
    return hashlib.sha256(AUTH_DOMAIN + hub_node_id + client_node_id + nonce
                          + expires_at_unix.to_bytes(8, "big")).digest()


def cert_der(cert_pem_or_der: bytes) -> bytes:
    """The DER encoding of a PEM or DER certificate (ValueError if it is neither)."""
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(cert_pem_or_der).public_bytes(Encoding.DER)


def cert_fingerprint_sha256(cert_pem_or_der: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex (what the hub prints)."""
    return hashlib.sha256(cert_der(cert_pem_or_der)).hexdigest()


def normalize_fingerprint(fingerprint: str) -> str:
    """Accept ``AB:CD:...`` or ``abcd...``; ValueError unless 32 bytes of hex."""
    text = fingerprint.strip().replace(":", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits")
    return text


def fingerprint_matches(cert_pem_or_der: bytes, pinned_fingerprint: str) -> bool:
    """Constant-time comparison of a certificate's fingerprint with a pinned one."""
    return hmac.compare_digest(cert_fingerprint_sha256(cert_pem_or_der),
                               normalize_fingerprint(pinned_fingerprint))


def fetch_server_certificate(host: str, port: int, timeout_seconds: float = 10.0) -> bytes:
    """The certificate (PEM) the TLS server at host:port presents, *unverified*: only
    for comparing it with a pinned fingerprint before trusting it. Blocking (run it
    in a worker thread)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # what gRPC servers expect
    with socket.create_connection((host, port), timeout=timeout_seconds) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise PinMismatch("the server presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def pinned_root(host: str, port: int, *, cert_pem: bytes | None = None,
                fingerprint: str | None = None) -> bytes:
    """The one certificate (PEM) a client should trust for host:port: the pinned file
    itself, or the presented certificate once its fingerprint matched. Raises
    ``PinMismatch``. Blocking when pinning by fingerprint."""
    if (cert_pem is None) == (fingerprint is None):
        raise ValueError("pin by exactly one of cert_pem or fingerprint")
    if cert_pem is not None:
        cert_der(cert_pem)  # refuse a file that is no certificate, before connecting
        return cert_pem
    assert fingerprint is not None
    presented = fetch_server_certificate(host, port)
    if not fingerprint_matches(presented, fingerprint):
        raise PinMismatch(f"{host}:{port} presented a certificate with fingerprint "
                          f"{cert_fingerprint_sha256(presented)}, not the pinned one")
    return presented
