"""Per-commitment secrets: generation and compact storage (BOLT #3 "Per-commitment
Secret Requirements" and "Efficient Per-commitment Secret Storage").

Theory of operation. Each side generates the secret for commitment ``n`` from one
32-byte seed at index ``I = 2**48 - 1 - n`` (the index counts DOWN as commitments go
up)::

    P = seed
    for B in 47 .. 0:
        if bit B of I is set:  flip bit B of P;  P = SHA256(P)

Because flipping happens from the top bit down, the secret at an index with its
lowest ``k`` bits zero can derive every secret at indices that share its upper
``48 - k`` bits (by running the same loop over the lower ``k`` bits only). So the
receiver of revealed secrets keeps at most 49 of them: bucket ``k`` holds the latest
secret whose index has exactly ``k`` trailing zeros (bucket 48 for index 0). When a
new secret arrives for bucket ``k``, it must derive each secret held in buckets
``0 .. k-1``; if it does not, the peer lied (or we are out of sync) and the store
refuses it without changing anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from channel.errors import ShachainError

MAX_INDEX = 2**48 - 1
_BUCKETS = 49
_RECORD = 8 + 32  # index (u64 BE) + secret; serialized per bucket


def commitment_index(commitment_number: int) -> int:
    """Shachain index of commitment ``commitment_number`` (BOLT #3)."""
    if not 0 <= commitment_number <= MAX_INDEX:
        raise ValueError("commitment_number out of range")
    return MAX_INDEX - commitment_number


def _derive(base: bytes, bits: int, index: int) -> bytes:
    value = bytearray(base)
    for b in range(bits - 1, -1, -1):
        if (index >> b) & 1:
            value[b // 8] ^= 1 << (b % 8)
            value[:] = hashlib.sha256(value).digest()
    return bytes(value)


def generate_from_seed(seed: bytes, index: int) -> bytes:
    """The BOLT #3 per-commitment secret at shachain ``index``."""
    if len(seed) != 32:
        raise ValueError("seed must be 32 bytes")
    if not 0 <= index <= MAX_INDEX:
        raise ValueError("index out of range")
    return _derive(seed, 48, index)


def _bucket(index: int) -> int:
    """Number of trailing zero bits of ``index`` (48 for 0)."""
    if index == 0:
        return 48
    return (index & -index).bit_length() - 1


@dataclass(frozen=True, slots=True)
class _Known:
    index: int
    secret: bytes


class RevocationStore:
    """The compact store of the per-commitment secrets a peer has revealed.

    Secrets must arrive one by one in order of decreasing index (increasing
    commitment number), which is the order revoke_and_ack delivers them; any
    other index is refused. The store is mutable
    but validates before it mutates: a refused secret leaves it unchanged.
    """

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: list[_Known | None] = [None] * _BUCKETS

    # -- BOLT #3 index terms --------------------------------------------------

    def add_secret(self, index: int, secret: bytes) -> None:
        """Store the secret for ``index``; raise ShachainError if inconsistent."""
        if len(secret) != 32:
            raise ShachainError("a per-commitment secret is 32 bytes")
        if not 0 <= index <= MAX_INDEX:
            raise ShachainError("index out of range")
        lowest = self.lowest_index()
        if lowest is not None and index != lowest - 1:
            # One secret per revocation, in order: a replay of an older index could
            # overwrite a bucket-0 secret unchecked, and a skipped index leaves a
            # commitment whose secret nothing derives.
            raise ShachainError(
                f"secret for index {index} out of order: expected index {lowest - 1}"
            )
        bucket = _bucket(index)
        for b in range(bucket):
            known = self._known[b]
            if known is None:
                continue
            if _derive(secret, bucket, known.index) != known.secret:
                raise ShachainError(
                    f"secret for index {index} does not derive the stored secret "
                    f"for index {known.index}"
                )
        self._known[bucket] = _Known(index, secret)

    def get_secret(self, index: int) -> bytes:
        """The secret at ``index`` if some stored secret derives it."""
        for b, known in enumerate(self._known):
            if known is None:
                continue
            # Known secret at bucket b derives every index equal to it above bit b.
            if (index >> b) == (known.index >> b):
                return _derive(known.secret, b, index)
        raise ShachainError(f"no stored secret derives index {index}")

    # -- commitment-number terms ---------------------------------------------

    def add_commitment_secret(self, commitment_number: int, secret: bytes) -> None:
        self.add_secret(commitment_index(commitment_number), secret)

    def get_commitment_secret(self, commitment_number: int) -> bytes:
        return self.get_secret(commitment_index(commitment_number))

    def lowest_index(self) -> int | None:
        """Smallest index stored so far (the latest secret received), if any."""
        indices = [k.index for k in self._known if k is not None]
        return min(indices) if indices else None

    # -- persistence ------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """49 fixed-size records; an empty bucket has index 2**64-1 and zero secret."""
        out = bytearray()
        for known in self._known:
            if known is None:
                out += b"\xff" * 8 + b"\x00" * 32
            else:
                out += known.index.to_bytes(8, "big") + known.secret
        return bytes(out)

    @classmethod
    def from_bytes(cls, raw: bytes) -> RevocationStore:
        if len(raw) != _BUCKETS * _RECORD:
            raise ShachainError("bad revocation store encoding length")
        store = cls()
        for b in range(_BUCKETS):
            rec = raw[b * _RECORD : (b + 1) * _RECORD]
            index = int.from_bytes(rec[:8], "big")
            if index == 2**64 - 1:
                continue
            if index > MAX_INDEX or _bucket(index) != b:
                raise ShachainError("corrupt revocation store record")
            store._known[b] = _Known(index, rec[8:])
        store._check_consistent()
        return store

    def _check_consistent(self) -> None:
        """Every stored secret derives each lower-bucket secret within its range (the
        invariant add_secret keeps). A tampered or corrupt record would otherwise be
        loaded and hand a wrong secret to a penalty much later."""
        for k, high in enumerate(self._known):
            if high is None:
                continue
            for low in self._known[:k]:
                if low is None or (low.index >> k) != (high.index >> k):
                    continue
                if _derive(high.secret, k, low.index) != low.secret:
                    raise ShachainError(
                        f"stored secret for index {low.index} is not derived by the one "
                        f"for index {high.index}"
                    )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RevocationStore) and self._known == other._known

    __hash__ = None  # type: ignore[assignment]
