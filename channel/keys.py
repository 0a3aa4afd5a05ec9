"""Channel keys: basepoints, per-commitment secrets and points, and the BOLT #3
"Key Derivation" of the keys each commitment uses.

Theory of operation. Each party holds five long-lived basepoints (funding,
revocation, payment, delayed payment, HTLC) and a per-commitment seed. For
commitment ``n`` the owner of that commitment reveals ``per_commitment_point(n)``
in advance and ``per_commitment_secret(n)`` when it revokes ``n``. Every key in a
commitment's scripts is a basepoint tweaked by that point, so every commitment has
fresh keys, and revealing the secret lets the OTHER party compute the private
revocation key of that commitment and nothing more:

- ``pubkey = basepoint + SHA256(per_commitment_point || basepoint) * G``
  (localpubkey, local_htlcpubkey, local_delayedpubkey and their remote
  counterparts; ``derive_privkey`` is the same sum on the secret side).
- ``revocationpubkey = revocation_basepoint * SHA256(revocation_basepoint ||
  per_commitment_point) + per_commitment_point * SHA256(per_commitment_point ||
  revocation_basepoint)``; its private key needs both the revocation basepoint
  secret (held by the non-owner) and the per-commitment secret (revealed by the
  owner on revocation).

With ``option_static_remotekey`` the to_remote output pays the other party's
``payment_basepoint`` untweaked, so its funds need no per-commitment data to sweep.

Derivations are pure functions of bytes and are memoised (LRU): the same keys are
needed to build, sign, verify and later watch a commitment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

from coincurve import PublicKey

from channel import shachain
from channel.signing import (
    is_compressed_pubkey_encoding,
    mul_add_pubkeys,
    parse_pubkey,
    parsed_pubkey,
    scalar_add,
    scalar_mul_add,
    tweak_add_pubkey,
)

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@lru_cache(maxsize=4096)
def pubkey_from_secret(secret: bytes) -> bytes:
    """33-byte compressed public key of a 32-byte secret."""
    return bytes(PublicKey.from_valid_secret(_valid_secret(secret)).format())


def _valid_secret(secret: bytes) -> bytes:
    if len(secret) != 32 or not 0 < int.from_bytes(secret, "big") < _N:
        raise ValueError("invalid secp256k1 secret")
    return secret


@lru_cache(maxsize=8192)
def derive_pubkey(basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """basepoint + SHA256(per_commitment_point || basepoint) * G."""
    if not is_compressed_pubkey_encoding(per_commitment_point):
        raise ValueError("per_commitment_point is not a compressed public key")
    return tweak_add_pubkey(basepoint, _sha256(per_commitment_point + basepoint))


def derive_privkey(basepoint_secret: bytes, per_commitment_point: bytes) -> bytes:
    """The secret of ``derive_pubkey(pubkey_from_secret(basepoint_secret), point)``."""
    basepoint = pubkey_from_secret(basepoint_secret)
    return scalar_add(basepoint_secret, _sha256(per_commitment_point + basepoint))


@lru_cache(maxsize=4096)
def derive_revocation_pubkey(revocation_basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """BOLT #3 revocationpubkey."""
    # The basepoint is long-lived (parsed once, cached); the point is fresh per
    # commitment, so it is parsed here and not kept.
    return mul_add_pubkeys(
        parsed_pubkey(revocation_basepoint),
        _sha256(revocation_basepoint + per_commitment_point),
        parse_pubkey(per_commitment_point),
        _sha256(per_commitment_point + revocation_basepoint),
    )


def derive_revocation_privkey(
    revocation_basepoint_secret: bytes, per_commitment_secret: bytes
) -> bytes:
    """BOLT #3 revocationprivkey (needs the revealed per-commitment secret)."""
    revocation_basepoint = pubkey_from_secret(revocation_basepoint_secret)
    per_commitment_point = pubkey_from_secret(per_commitment_secret)
    t1 = _sha256(revocation_basepoint + per_commitment_point)
    t2 = _sha256(per_commitment_point + revocation_basepoint)
    return scalar_mul_add(revocation_basepoint_secret, t1, per_commitment_secret, t2)


@dataclass(frozen=True, slots=True)
class Basepoints:
    """A party's public basepoints (33-byte compressed keys), as sent in open/accept."""

    funding_pubkey: bytes
    revocation_basepoint: bytes
    payment_basepoint: bytes
    delayed_payment_basepoint: bytes
    htlc_basepoint: bytes


@dataclass(frozen=True)
class ChannelSecrets:
    """Our private side of a channel: the basepoint secrets and the per-commitment seed."""

    funding_privkey: bytes
    revocation_basepoint_secret: bytes
    payment_basepoint_secret: bytes
    delayed_payment_basepoint_secret: bytes
    htlc_basepoint_secret: bytes
    per_commitment_seed: bytes

    @classmethod
    def from_seed(cls, channel_seed: bytes) -> ChannelSecrets:
        """Deterministic secrets from one channel seed.

        Each secret is SHA256(seed || label) with its own label (domain
        separation), so learning one secret tells nothing about another; the
        counter loop skips the (2**-128-likely) hash that is not a valid scalar.
        """
        if len(channel_seed) < 32:
            raise ValueError("channel_seed must be at least 32 bytes")

        def pick(label: bytes) -> bytes:
            for counter in range(256):
                candidate = _sha256(channel_seed + b"chanhub/" + label + bytes((counter,)))
                if 0 < int.from_bytes(candidate, "big") < _N:
                    return candidate
            raise ValueError("unusable channel seed")  # pragma: no cover

        return cls(
            funding_privkey=pick(b"funding"),
            revocation_basepoint_secret=pick(b"revocation"),
            payment_basepoint_secret=pick(b"payment"),
            delayed_payment_basepoint_secret=pick(b"delayed_payment"),
            htlc_basepoint_secret=pick(b"htlc"),
            per_commitment_seed=pick(b"per_commitment_seed"),
        )

    @cached_property
    def _basepoints(self) -> Basepoints:
        return Basepoints(
            funding_pubkey=pubkey_from_secret(self.funding_privkey),
            revocation_basepoint=pubkey_from_secret(self.revocation_basepoint_secret),
            payment_basepoint=pubkey_from_secret(self.payment_basepoint_secret),
            delayed_payment_basepoint=pubkey_from_secret(self.delayed_payment_basepoint_secret),
            htlc_basepoint=pubkey_from_secret(self.htlc_basepoint_secret),
        )

    def basepoints(self) -> Basepoints:
        return self._basepoints

    def per_commitment_secret(self, commitment_number: int) -> bytes:
        return shachain.generate_from_seed(
            self.per_commitment_seed, shachain.commitment_index(commitment_number)
        )

    def per_commitment_point(self, commitment_number: int) -> bytes:
        return pubkey_from_secret(self.per_commitment_secret(commitment_number))

    def __repr__(self) -> str:  # never print secrets into logs
        return "ChannelSecrets(<redacted>)"


_LAZY_HTLC_KEYS = {"local_htlc_pubkey": 0, "remote_htlc_pubkey": 1}


@dataclass(frozen=True, slots=True)
class CommitmentKeys:
    """The keys of one commitment, in the OWNER's frame as BOLT #3 names them.

    ``local_*`` belongs to the commitment's owner, ``remote_*`` to the other
    party, whichever of them is us.

    From ``derive_commitment_keys`` the two HTLC keys are derived on first access
    (a commitment without untrimmed HTLCs never needs them, and they are two of
    the four EC derivations of a commitment); equality, hashing and repr read them
    like any other field, so such an instance is indistinguishable from one built
    with all six keys.
    """

    per_commitment_point: bytes
    revocation_pubkey: bytes  # other's revocation_basepoint tweaked by the point
    local_delayed_pubkey: bytes
    local_htlc_pubkey: bytes
    remote_htlc_pubkey: bytes
    remote_payment_pubkey: bytes  # static remote key: other's payment_basepoint
    # (owner htlc_basepoint, other htlc_basepoint) while the HTLC keys are pending.
    _htlc_basepoints: tuple[bytes, bytes] | None = field(default=None, repr=False, compare=False)

    if not TYPE_CHECKING:  # keep attribute typos visible to mypy

        def __getattr__(self, name: str) -> bytes:
            # Only reached when a slot is unset: a pending HTLC key.
            which = _LAZY_HTLC_KEYS.get(name)
            basepoints = self._htlc_basepoints
            if which is None or basepoints is None:
                raise AttributeError(name)
            value = derive_pubkey(basepoints[which], self.per_commitment_point)
            object.__setattr__(self, name, value)
            return value


@lru_cache(maxsize=1024)
def derive_commitment_keys(
    owner: Basepoints, other: Basepoints, per_commitment_point: bytes
) -> CommitmentKeys:
    """All keys of the owner's commitment with ``per_commitment_point`` (the HTLC
    keys derived on first access, see ``CommitmentKeys``)."""
    keys = object.__new__(CommitmentKeys)
    init = object.__setattr__
    init(keys, "per_commitment_point", per_commitment_point)
    init(
        keys,
        "revocation_pubkey",
        derive_revocation_pubkey(other.revocation_basepoint, per_commitment_point),
    )
    init(
        keys,
        "local_delayed_pubkey",
        derive_pubkey(owner.delayed_payment_basepoint, per_commitment_point),
    )
    init(keys, "remote_payment_pubkey", other.payment_basepoint)
    init(keys, "_htlc_basepoints", (owner.htlc_basepoint, other.htlc_basepoint))
    return keys
