"""Who is calling: clients by their node key, the operator by an admin credential.

Clients (client.proto, ``Hub.GetChallenge`` / ``Hub.Authenticate``):

1. ``issue_challenge(client_node_id)`` makes 32 random bytes, never issued before,
   valid for ``challenge_ttl_seconds``; pending challenges are bounded in number so
   a stranger asking for millions fills nothing but a fixed table.
2. ``authenticate(...)`` takes the challenge out of the table *before* checking the
   signature, so every challenge is answered at most once, right or wrong: a
   replayed answer finds nothing. The signature must verify for the claimed node id
   over ``wire_auth.challenge_digest`` (domain tag, hub node id, client node id,
   nonce, expiry); then a random session credential is issued, bound to that node
   id and to the connection (gRPC's peer address) the answer came on. A node id
   keeps at most ``max_sessions_per_client`` sessions (the newest: a client that
   reconnects over and over does not pile them up) and the table at most
   ``max_sessions``.
3. ``session_for(credential, connection)`` is checked on every later call: no or an
   unknown or expired credential is ``Unauthenticated``; a credential presented on
   another connection than its own (a stolen or another client's credential) is
   ``Unauthenticated`` too: on this connection nobody has authenticated. (Not
   PERMISSION_DENIED: gRPC reconnects a channel by itself after a network blip, and
   the client's transport must then see the one status that makes it authenticate
   again.) Either way nothing else runs. ``PermissionDenied`` is left for an
   authenticated caller asking for what is not its own.

The tables live in this process only: a hub process authenticates the clients
connected to it (DESIGN.md, "Scale-out"), and after a restart clients authenticate
again, which a reconnect does anyway. A lock guards them: the edge checks on the
asyncio thread, the hub's services may look on from trio.

The operator: ``AdminCredential`` is 32 random bytes written hex-encoded to a 0600
file on first start; calls present it as metadata, compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from channel.signing import is_compressed_pubkey_encoding, verify
from hub.tls import PrivateFileError, read_private_file, write_private_file
from protocol.driver.wire_auth import NONCE_BYTES, challenge_digest

SESSION_CREDENTIAL_BYTES = 32
ADMIN_CREDENTIAL_FILE = "admin.credential"


class AuthError(Exception):
    """A refused authentication; ``Unauthenticated`` or ``PermissionDenied``."""


class Unauthenticated(AuthError):
    """No valid credential: the caller must (re)authenticate."""


class PermissionDenied(AuthError):
    """A credential that is not the caller's to use."""


class TooManyChallenges(AuthError):
    """The pending-challenge (or session) table is full; try again shortly."""


@dataclass(frozen=True)
class IssuedChallenge:
    hub_node_id: bytes
    client_node_id: bytes
    nonce: bytes
    expires_at_unix: int


@dataclass(frozen=True)
class SessionGrant:
    client_node_id: bytes
    credential: bytes
    expires_at_unix: int


@dataclass(frozen=True)
class _Session:
    client_node_id: bytes
    connection: str
    expires_at_unix: int


class Authenticator:
    """Challenges and sessions of one hub process (see the module docstring).

    ``clock`` returns Unix seconds (tests pass a fake one); ``random_bytes`` makes
    nonces and credentials.
    """

    def __init__(self, hub_node_id: bytes, *, challenge_ttl_seconds: int = 60,
                 session_ttl_seconds: int = 24 * 3600, max_pending_challenges: int = 100_000,
                 max_sessions: int = 100_000, max_sessions_per_client: int = 4,
                 clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        if not is_compressed_pubkey_encoding(hub_node_id):
            raise ValueError("hub_node_id must be a 33-byte compressed public key")
        self.hub_node_id = hub_node_id
        self._challenge_ttl = challenge_ttl_seconds
        self._session_ttl = session_ttl_seconds
        self._max_pending = max_pending_challenges
        self._max_sessions = max_sessions
        self._max_sessions_per_client = max_sessions_per_client
        self._clock = clock
        self._random = random_bytes
        self._lock = threading.Lock()
        # nonce -> challenge, oldest first (expiry order, since the TTL is fixed)
        self._challenges: OrderedDict[bytes, IssuedChallenge] = OrderedDict()
        self._sessions: dict[bytes, _Session] = {}
        # node id -> its credentials, oldest first: a client that reconnects again and
        # again keeps at most max_sessions_per_client sessions, the newest.
        self._sessions_of: dict[bytes, list[bytes]] = {}
        self._prune_sessions_at = 1024

    def _now(self) -> int:
        return int(self._clock())

    def issue_challenge(self, client_node_id: bytes) -> IssuedChallenge:
        if not is_compressed_pubkey_encoding(client_node_id):
            raise Unauthenticated("client_node_id must be a 33-byte compressed public key")
        now = self._now()
        with self._lock:
            self._prune_challenges(now)
            if len(self._challenges) >= self._max_pending:
                raise TooManyChallenges("too many pending challenges")
            nonce = self._random(NONCE_BYTES)
            if nonce in self._challenges:  # only a broken RNG repeats 32 bytes
                raise RuntimeError("nonce repeated")
            challenge = IssuedChallenge(self.hub_node_id, client_node_id, nonce,
                                        now + self._challenge_ttl)
            self._challenges[nonce] = challenge
        return challenge

    def authenticate(self, client_node_id: bytes, nonce: bytes, signature: bytes,
                     connection: str) -> SessionGrant:
        """Check an answer; on success a new session bound to ``connection``."""
        now = self._now()
        with self._lock:
            # Taken out first: right or wrong, a challenge is answered once.
            challenge = self._challenges.pop(bytes(nonce), None)
        if challenge is None:
            raise Unauthenticated("unknown or already answered challenge")
        if challenge.client_node_id != client_node_id:
            raise Unauthenticated("challenge was issued for another node id")
        if now > challenge.expires_at_unix:
            raise Unauthenticated("challenge expired")
        digest = challenge_digest(self.hub_node_id, client_node_id, challenge.nonce,
                                  challenge.expires_at_unix)
        if len(signature) != 64 or not verify(client_node_id, digest, signature):
            raise Unauthenticated("signature does not verify for client_node_id")
        credential = self._random(SESSION_CREDENTIAL_BYTES)
        session = _Session(client_node_id, connection, now + self._session_ttl)
        with self._lock:
            self._prune_sessions(now)
            if len(self._sessions) >= self._max_sessions:
                raise TooManyChallenges("too many sessions")
            self._sessions[credential] = session
            owned = self._sessions_of.setdefault(client_node_id, [])
            owned.append(credential)
            while len(owned) > self._max_sessions_per_client:
                self._sessions.pop(owned.pop(0), None)
        return SessionGrant(client_node_id, credential, session.expires_at_unix)

    def session_for(self, credential: bytes | None, connection: str) -> bytes:
        """The node id a call's credential authenticates (see the module docstring)."""
        if not credential:
            raise Unauthenticated("no session credential")
        now = self._now()
        with self._lock:
            session = self._sessions.get(credential)
            if session is not None and now > session.expires_at_unix:
                self._forget(credential)
                session = None
        if session is None:
            raise Unauthenticated("unknown or expired session credential")
        if not hmac.compare_digest(session.connection.encode(), connection.encode()):
            raise Unauthenticated("session credential belongs to another connection")
        return session.client_node_id

    def end_sessions_of(self, connection: str) -> None:
        """Forget the sessions of a connection that has gone away."""
        with self._lock:
            for credential in [c for c, s in self._sessions.items()
                               if s.connection == connection]:
                self._forget(credential)

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _forget(self, credential: bytes) -> None:
        session = self._sessions.pop(credential, None)
        if session is None:
            return
        owned = self._sessions_of.get(session.client_node_id, [])
        if credential in owned:
            owned.remove(credential)
        if not owned:
            self._sessions_of.pop(session.client_node_id, None)

    def pending_challenge_count(self) -> int:
        with self._lock:
            return len(self._challenges)

    def _prune_challenges(self, now: int) -> None:
        while self._challenges:
            nonce, oldest = next(iter(self._challenges.items()))
            if oldest.expires_at_unix >= now:
                break
            del self._challenges[nonce]

    def _prune_sessions(self, now: int) -> None:
        # Amortized O(1) per session: sweep expired ones whenever the table has
        # doubled since the last sweep.
        if len(self._sessions) >= self._prune_sessions_at:
            for credential in [c for c, s in self._sessions.items()
                               if now > s.expires_at_unix]:
                self._forget(credential)
            self._prune_sessions_at = max(1024, 2 * len(self._sessions))


class AdminCredential:
    """The operator's credential: 32 random bytes, hex in a 0600 file."""

    def __init__(self, secret_hex: str) -> None:
        self._secret = secret_hex.strip().encode()

    @classmethod
    def load_or_create(cls, path: Path) -> AdminCredential:
        if not path.exists():
            write_private_file(path, secrets.token_hex(32).encode() + b"\n")
        try:
            text = read_private_file(path).decode().strip()
        except (PrivateFileError, UnicodeDecodeError) as exc:
            raise AuthError(f"admin credential file {path}: {exc}") from exc
        if len(text) < 32:
            raise AuthError(f"admin credential file {path} is too short")
        return cls(text)

    def check(self, presented: str | None) -> None:
        """Raise ``Unauthenticated`` unless ``presented`` is the credential (constant
        time in the credential's contents)."""
        if presented is None or not hmac.compare_digest(presented.strip().encode(),
                                                        self._secret):
            raise Unauthenticated("missing or wrong admin credential")
