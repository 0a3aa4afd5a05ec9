"""Encryption at rest: AES-256-GCM blobs bound to the row that holds them.

Theory of operation
-------------------
A channel snapshot holds the channel seed and every revocation secret the peer gave
us; a node seed is the key to everything. Both are stored only as blobs sealed by a
``SecretBox`` (DESIGN rule 5). A blob is ``nonce (12 random bytes) || ciphertext ||
tag``; its *associated data* names the row it belongs to (``snapshot_aad``: the
channel key and the update_id; ``secret_aad``: the secret's name), so a blob copied
into another row, or an older snapshot put back in place of the newest, fails the tag
check exactly like a tampered one: ``DecryptionError``, and nothing is loaded.

Where the 32-byte key comes from (``KeySource``):

- ``Passphrase``: scrypt (RFC 7914) over the passphrase with a random 16-byte salt.
  The salt and the cost parameters are not secret; they live in the store itself
  (``driver_meta``) together with a *check blob* (a constant sealed under the key),
  so a wrong passphrase is refused when the store is opened (``WrongKey``), before
  anything is decrypted or written.
- ``KeyFile``: 32 random bytes (hex) in a file of mode 0600 (``create_key_file``
  makes one). A key file that group or others may read is refused (``KeyFileError``):
  a key anyone on the machine can read protects nothing.

Random nonces are safe here: a store seals far fewer than 2**32 blobs under one key.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16
# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB and ~0.1 s per open here (the
# interactive-login figure of RFC 7914 section 2); tests pass a smaller n.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1

_CHECK_PLAINTEXT = b"chanhub store key check v1"
_CHECK_AAD = b"chanhub key check"


class CryptoError(Exception):
    """Base class of the errors of this module."""


class DecryptionError(CryptoError):
    """A blob failed authentication: wrong key, tampered, or moved to another row."""


class WrongKey(CryptoError):
    """The passphrase or key file does not open this store."""


class KeyFileError(CryptoError):
    """The key file is missing, malformed, or readable by others than its owner."""


class SecretBox:
    """AES-256-GCM with a fixed key; every blob bound to associated data."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("blob too short")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise DecryptionError("blob failed authentication (wrong key, tampered or "
                                  "moved to another row)") from exc

    def check_blob(self) -> bytes:
        """A constant sealed under this key, stored to recognise the key later."""
        return self.seal(_CHECK_PLAINTEXT, _CHECK_AAD)

    def verify_check_blob(self, blob: bytes) -> None:
        try:
            ok = self.open(blob, _CHECK_AAD) == _CHECK_PLAINTEXT
        except DecryptionError:
            ok = False
        if not ok:
            raise WrongKey("the passphrase or key file does not open this store")


def snapshot_aad(channel_key: bytes, update_id: int) -> bytes:
    """Binds a snapshot blob to its channel and its update_id."""
    return b"chanhub snapshot|" + channel_key + b"|" + update_id.to_bytes(8, "big")


def secret_aad(name: str) -> bytes:
    """Binds a named secret (a node seed) to its name."""
    return b"chanhub secret|" + name.encode()


@dataclass(frozen=True)
class ScryptParams:
    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def to_record(self) -> dict[str, int | str]:
        return {"salt": self.salt.hex(), "n": self.n, "r": self.r, "p": self.p}

    @classmethod
    def from_record(cls, record: dict[str, int | str]) -> ScryptParams:
        return cls(bytes.fromhex(str(record["salt"])), int(record["n"]), int(record["r"]),
                   int(record["p"]))

    @classmethod
    def fresh(cls, n: int = SCRYPT_N) -> ScryptParams:
        return cls(os.urandom(SALT_BYTES), n)


def key_from_passphrase(passphrase: str, params: ScryptParams) -> bytes:
    if not passphrase:
        raise WrongKey("an empty passphrase protects nothing")
    kdf = Scrypt(salt=params.salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class Passphrase:
    """Key source: a passphrase through scrypt (salt and cost kept in the store).
    ``scrypt_n`` is used only when a new store is initialised."""

    passphrase: str
    scrypt_n: int = SCRYPT_N

    def __repr__(self) -> str:  # never print the passphrase
        return "Passphrase(<hidden>)"


@dataclass(frozen=True)
class KeyFile:
    """Key source: a 0600 file holding 32 random bytes as hex."""

    path: Path


KeySource = Passphrase | KeyFile


def create_key_file(path: Path) -> None:
    """Write a fresh random key to ``path`` with mode 0600; refuse to overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(KEY_BYTES).hex() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"key file {path} has mode {stat.S_IMODE(mode):o}: others "
                               "can read it; chmod 600 it")
        text = f.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError(f"key file {path} is not hex") from exc
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {path} must hold {KEY_BYTES} bytes")
    return key
