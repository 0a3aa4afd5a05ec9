"""Watchtower appointments: how a revoked commitment's penalties are sealed so that a
tower learns nothing until the commitment is on chain. Written once here because the
party that seals (client/tower.py, or the hub for its own channels) and the tower that
opens (hub/tower/) must agree byte for byte (proto/tower.proto, docs/tower.md).

Theory of operation. The only thing a tower can know about a breach before it happens
would be the revoked commitment's txid, and that it never learns before the cheater
publishes the transaction: the txid is a hash of a transaction signed by both parties
and kept by them alone. So both the tower's index and the key are derived from it:

- ``locator(txid) = SHA256(txid)[:16]``: what the tower indexes appointments by and
  computes for every transaction of every block. 16 bytes make an accidental match
  between two of the ~10^9 transactions of a chain and a client's appointments
  negligible (2^-128 per pair), and a match only costs a failed decryption anyway.
  The locator reveals nothing of the txid (a preimage of a hash).
- ``key(txid) = SHA256(txid || txid)``: the ChaCha20-Poly1305 key. It is a different
  hash of the txid, so knowing the locator does not give the key (as in LND's towers).
- the nonce: 12 random bytes per appointment, stored beside the ciphertext. Each key
  seals one kit (one appointment per commitment; a re-send of the same commitment
  is a new random nonce), so nonce reuse under one key needs a 96-bit collision.
- AAD ``"chanhub/tower/v1" || locator``: a blob only opens under the locator it was
  sent with, and a future format (v2) never opens as this one.

ChaCha20-Poly1305 (IETF, 12-byte nonce) from ``cryptography`` rather than LND's
XChaCha20 (24-byte nonce): ``cryptography`` ships the former; with one message per
key the shorter nonce loses nothing. Poly1305's tag makes a wrong txid or a tampered
blob fail to open (``None``), never decrypt to garbage.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

LOCATOR_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
AAD_PREFIX = b"chanhub/tower/v1"


def locator(txid: bytes) -> bytes:
    """SHA256(txid)[:16] of a txid in internal byte order (``Tx.txid()``)."""
    if len(txid) != 32:
        raise ValueError("a txid is 32 bytes")
    return hashlib.sha256(txid).digest()[:LOCATOR_BYTES]


def blob_key(txid: bytes) -> bytes:
    """SHA256(txid || txid): the key that seals the kit of the commitment ``txid``."""
    if len(txid) != 32:
        raise ValueError("a txid is 32 bytes")
    return hashlib.sha256(txid + txid).digest()


def seal(txid: bytes, plaintext: bytes,
         random_bytes: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes, bytes]:
    """(locator, nonce, ciphertext) of ``plaintext`` for the commitment ``txid``."""
    loc = locator(txid)
    nonce = random_bytes(NONCE_BYTES)
    sealed = ChaCha20Poly1305(blob_key(txid)).encrypt(nonce, plaintext, AAD_PREFIX + loc)
    return loc, nonce, sealed


def open_sealed(txid: bytes, nonce: bytes, ciphertext: bytes) -> bytes | None:
    """The plaintext sealed for ``txid``, or None if this blob was not sealed for it
    (another txid, a tampered blob or nonce)."""
    if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
        return None
    try:
        return ChaCha20Poly1305(blob_key(txid)).decrypt(nonce, ciphertext,
                                                        AAD_PREFIX + locator(txid))
    except InvalidTag:
        return None
