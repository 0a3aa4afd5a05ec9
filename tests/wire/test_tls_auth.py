"""The hub's TLS identity, the challenge/session rules and the admin credential, unit
by unit (the end-to-end refusals over gRPC are in test_edge.py)."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from channel.keys import pubkey_from_secret
from channel.signing import sign
from hub.auth import (
    AdminCredential,
    Authenticator,
    AuthError,
    TooManyChallenges,
    Unauthenticated,
)
from hub.tls import TlsError, load_or_create_tls, make_self_signed, write_private_file
from protocol.driver.wire_auth import (
    cert_der,
    cert_fingerprint_sha256,
    challenge_digest,
    fingerprint_matches,
    normalize_fingerprint,
)
from tests.wire.hubfixture import new_node_secret


def test_tls_identity_made_once_with_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "d" / "tls.cert", tmp_path / "d" / "tls.key"
    first = load_or_create_tls(cert_path, key_path)
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert first.fingerprint_sha256 == hashlib.sha256(cert_der(first.cert_pem)).hexdigest()
    again = load_or_create_tls(cert_path, key_path)
    assert again.fingerprint_sha256 == first.fingerprint_sha256
    assert again.key_pem == first.key_pem


def test_tls_files_that_cannot_be_trusted_are_refused(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "tls.cert", tmp_path / "tls.key"
    load_or_create_tls(cert_path, key_path)
    key_path.chmod(0o644)
    with pytest.raises(TlsError, match="chmod 600"):
        load_or_create_tls(cert_path, key_path)
    key_path.chmod(0o600)
    other_cert, _ = make_self_signed()
    good_cert = cert_path.read_bytes()
    cert_path.write_bytes(other_cert)
    with pytest.raises(TlsError, match="is not the key of"):
        load_or_create_tls(cert_path, key_path)
    cert_path.write_bytes(good_cert)
    key_path.unlink()
    with pytest.raises(TlsError, match="missing"):
        load_or_create_tls(cert_path, key_path)  # never silently a new identity
    assert cert_path.read_bytes() == good_cert
    with pytest.raises(FileExistsError):
        write_private_file(cert_path, b"x")  # never clobbers


def test_fingerprints() -> None:
    cert, _ = make_self_signed()
    fingerprint = cert_fingerprint_sha256(cert)
    assert fingerprint_matches(cert, fingerprint.upper())
    assert fingerprint_matches(cert_der(cert), fingerprint)
    assert not fingerprint_matches(cert, "ff" * 32)
    for bad in ["", "zz" * 32, "ab" * 31]:
        with pytest.raises(ValueError):
            normalize_fingerprint(bad)


def test_challenge_digest_binds_every_field() -> None:
    hub, client = pubkey_from_secret(new_node_secret()), pubkey_from_secret(new_node_secret())
    nonce = b"\x07" * 32
    base = challenge_digest(hub, client, nonce, 100)
    assert len({base, challenge_digest(client, hub, nonce, 100),
                challenge_digest(hub, client, b"\x08" * 32, 100),
                challenge_digest(hub, client, nonce, 101)}) == 4
    with pytest.raises(ValueError):
        challenge_digest(hub, client, b"\x07" * 31, 100)
    with pytest.raises(ValueError):
        challenge_digest(hub[:32], client, nonce, 100)


def _answer(auth: Authenticator, secret: bytes, connection: str) -> bytes:
    node = pubkey_from_secret(secret)
    challenge = auth.issue_challenge(node)
    digest = challenge_digest(challenge.hub_node_id, node, challenge.nonce,
                              challenge.expires_at_unix)
    return auth.authenticate(node, challenge.nonce, sign(secret, digest), connection).credential


def test_sessions_are_bound_to_their_connection_and_expire() -> None:
    now = [1000.0]
    auth = Authenticator(pubkey_from_secret(new_node_secret()), clock=lambda: now[0],
                         session_ttl_seconds=100)
    secret = new_node_secret()
    credential = _answer(auth, secret, "ipv4:127.0.0.1:5000")
    assert auth.session_for(credential, "ipv4:127.0.0.1:5000") == pubkey_from_secret(secret)
    with pytest.raises(Unauthenticated, match="another connection"):
        auth.session_for(credential, "ipv4:127.0.0.1:5001")
    with pytest.raises(Unauthenticated):
        auth.session_for(None, "ipv4:127.0.0.1:5000")
    now[0] += 101
    with pytest.raises(Unauthenticated):
        auth.session_for(credential, "ipv4:127.0.0.1:5000")
    credential = _answer(auth, secret, "c")
    auth.end_sessions_of("c")
    with pytest.raises(Unauthenticated):
        auth.session_for(credential, "c")


def test_pending_challenges_are_bounded() -> None:
    now = [1000.0]
    auth = Authenticator(pubkey_from_secret(new_node_secret()), clock=lambda: now[0],
                         max_pending_challenges=3, challenge_ttl_seconds=10)
    node = pubkey_from_secret(new_node_secret())
    for _ in range(3):
        auth.issue_challenge(node)
    with pytest.raises(TooManyChallenges):
        auth.issue_challenge(node)
    now[0] += 11  # the old ones expired: room again
    auth.issue_challenge(node)
    assert auth.pending_challenge_count() == 1


def test_admin_credential_file(tmp_path: Path) -> None:
    path = tmp_path / "admin.credential"
    credential = AdminCredential.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_text().strip()
    assert len(secret) == 64
    credential.check(secret)
    for wrong in [None, "", secret[:-1], secret + "0", "0" * 64]:
        with pytest.raises(Unauthenticated):
            credential.check(wrong)
    assert AdminCredential.load_or_create(path)._secret == secret.encode()  # same file
    path.chmod(0o640)
    with pytest.raises(AuthError, match="chmod 600"):
        AdminCredential.load_or_create(path)


def test_sessions_per_client_and_in_all_are_bounded() -> None:
    auth = Authenticator(pubkey_from_secret(new_node_secret()), max_sessions_per_client=2,
                         max_sessions=3)
    secret = new_node_secret()
    first, second, third = (_answer(auth, secret, "c") for _ in range(3))
    with pytest.raises(Unauthenticated):
        auth.session_for(first, "c")  # the oldest was dropped for the newest
    assert auth.session_for(second, "c") == auth.session_for(third, "c")
    _answer(auth, new_node_secret(), "d")
    with pytest.raises(TooManyChallenges):
        _answer(auth, new_node_secret(), "e")
    assert auth.session_count() == 3
