"""shachain at its boundaries (issue 11, "Tests that notice when a check is lost"):
secret length, index range, order, and the consistency of a store loaded from bytes
(bucket of each record, and that stored secrets still derive each other)."""

from __future__ import annotations

import pytest

from channel import shachain
from channel.errors import ShachainError
from channel.keys import ChannelSecrets
from channel.shachain import MAX_INDEX, RevocationStore, commitment_index, generate_from_seed

PEER = ChannelSecrets.from_seed(b"\x09" * 32)
RECORD = 40
EMPTY = b"\xff" * 8 + b"\x00" * 32


def store_of(n: int) -> RevocationStore:
    store = RevocationStore()
    for number in range(n):
        store.add_commitment_secret(number, PEER.per_commitment_secret(number))
    return store


def record(index: int, secret: bytes) -> bytes:
    return index.to_bytes(8, "big") + secret


def test_secret_length_is_exactly_32_bytes() -> None:
    store = RevocationStore()
    secret = PEER.per_commitment_secret(0)
    for wrong in (secret[:31], secret + b"\x00", b""):
        with pytest.raises(ShachainError, match="32 bytes"):
            store.add_secret(MAX_INDEX, wrong)
    assert store.lowest_index() is None
    store.add_secret(MAX_INDEX, secret)
    assert store.lowest_index() == MAX_INDEX


def test_index_range_and_order() -> None:
    store = RevocationStore()
    with pytest.raises(ShachainError, match="range"):
        store.add_secret(MAX_INDEX + 1, b"\x00" * 32)
    with pytest.raises(ShachainError, match="range"):
        store.add_secret(-1, b"\x00" * 32)
    # The first secret may come at any index in range (a store restarted mid-channel),
    # the last one (index 0, commitment 2**48 - 1) included.
    at_zero = RevocationStore()
    at_zero.add_secret(0, b"\x05" * 32)
    assert at_zero.lowest_index() == 0 and at_zero.get_secret(0) == b"\x05" * 32
    store.add_secret(MAX_INDEX, PEER.per_commitment_secret(0))
    for wrong in (MAX_INDEX, MAX_INDEX - 2, MAX_INDEX + 1):
        with pytest.raises(ShachainError):
            store.add_secret(wrong, PEER.per_commitment_secret(1))
    store.add_secret(MAX_INDEX - 1, PEER.per_commitment_secret(1))
    assert store.lowest_index() == MAX_INDEX - 1
    assert store.get_secret(MAX_INDEX) == PEER.per_commitment_secret(0)


def test_a_wrong_secret_in_a_higher_bucket_is_refused_and_changes_nothing() -> None:
    store = store_of(3)  # indices MAX, MAX-1 (bucket 1), MAX-2 (bucket 0)
    before = store.to_bytes()
    # Commitment 3 is index MAX-3 (bucket 2): it must derive buckets 0 and 1.
    with pytest.raises(ShachainError, match="does not derive"):
        store.add_commitment_secret(3, b"\x13" * 32)
    assert store.to_bytes() == before
    store.add_commitment_secret(3, PEER.per_commitment_secret(3))
    assert [store.get_commitment_secret(n) for n in range(4)] == [
        PEER.per_commitment_secret(n) for n in range(4)
    ]


def test_lookup_only_what_a_stored_secret_derives() -> None:
    store = store_of(5)
    for n in range(5):
        assert store.get_commitment_secret(n) == PEER.per_commitment_secret(n)
    with pytest.raises(ShachainError, match="no stored secret"):
        store.get_commitment_secret(5)
    with pytest.raises(ShachainError):
        RevocationStore().get_secret(MAX_INDEX)


def test_commitment_index_and_generation_bounds() -> None:
    assert commitment_index(0) == MAX_INDEX
    assert commitment_index(MAX_INDEX) == 0
    for wrong in (-1, MAX_INDEX + 1):
        with pytest.raises(ValueError):
            commitment_index(wrong)
    seed = b"\x01" * 32
    assert generate_from_seed(seed, 0) == seed  # no bit set: the seed itself
    assert generate_from_seed(seed, MAX_INDEX) != seed
    for wrong_index in (-1, MAX_INDEX + 1):
        with pytest.raises(ValueError):
            generate_from_seed(seed, wrong_index)
    for wrong_seed in (seed[:31], seed + b"\x00"):
        with pytest.raises(ValueError):
            generate_from_seed(wrong_seed, 1)


def test_roundtrip_and_encoding() -> None:
    assert RevocationStore().to_bytes() == EMPTY * 49
    assert RevocationStore.from_bytes(EMPTY * 49) == RevocationStore()
    store = store_of(9)
    raw = store.to_bytes()
    assert len(raw) == 49 * RECORD
    loaded = RevocationStore.from_bytes(raw)
    assert loaded == store and loaded.to_bytes() == raw
    assert loaded.lowest_index() == MAX_INDEX - 8
    assert store != raw and store != store_of(8)
    for wrong_length in (len(raw) - 1, len(raw) + 1, len(raw) - RECORD):
        with pytest.raises(ShachainError, match="length"):
            RevocationStore.from_bytes((raw * 2)[:wrong_length])


def test_load_refuses_a_record_in_the_wrong_bucket() -> None:
    secret = PEER.per_commitment_secret(0)
    # Index MAX (odd) belongs in bucket 0.
    good = record(MAX_INDEX, secret) + EMPTY * 48
    assert RevocationStore.from_bytes(good).get_secret(MAX_INDEX) == secret
    moved = EMPTY + record(MAX_INDEX, secret) + EMPTY * 47
    with pytest.raises(ShachainError, match="corrupt"):
        RevocationStore.from_bytes(moved)
    # Index 0 has 48 trailing zeros: bucket 48, the last; anywhere else is corrupt.
    seed_record = record(0, b"\x05" * 32)
    assert RevocationStore.from_bytes(EMPTY * 48 + seed_record).lowest_index() == 0
    with pytest.raises(ShachainError, match="corrupt"):
        RevocationStore.from_bytes(EMPTY * 47 + seed_record + EMPTY)
    # An index beyond 48 bits (but not the empty marker) is corrupt.
    with pytest.raises(ShachainError, match="corrupt"):
        RevocationStore.from_bytes(record(2**48 + 1, secret) + EMPTY * 48)
    with pytest.raises(ShachainError, match="corrupt"):
        RevocationStore.from_bytes(record(2**64 - 3, secret) + EMPTY * 48)


def test_load_refuses_secrets_that_do_not_derive_each_other() -> None:
    store = store_of(4)  # buckets: 0 = MAX-2, 1 = MAX-1, 2 = MAX-3 (which derives both)
    raw = bytearray(store.to_bytes())
    bucket0 = raw[0:RECORD]
    assert int.from_bytes(bucket0[:8], "big") == MAX_INDEX - 2
    tampered = bytearray(raw)
    tampered[8:40] = b"\x66" * 32  # bucket 0's secret, which bucket 2's must derive
    with pytest.raises(ShachainError, match="not derived"):
        RevocationStore.from_bytes(bytes(tampered))
    # A lower-bucket secret outside the higher one's range is not checked against it:
    # after commitment 4 (index MAX-4, bucket 0, below MAX-3) the store still loads.
    store.add_commitment_secret(4, PEER.per_commitment_secret(4))
    assert RevocationStore.from_bytes(store.to_bytes()) == store
    # ...and bucket 1 (MAX-1) is still in bucket 2's range: tampering bucket 2 shows.
    raw = bytearray(store.to_bytes())
    raw[2 * RECORD + 8 : 3 * RECORD] = b"\x77" * 32
    with pytest.raises(ShachainError, match="not derived"):
        RevocationStore.from_bytes(bytes(raw))


def test_a_store_of_many_secrets_reloads_after_every_step() -> None:
    store = RevocationStore()
    for n in range(70):
        store.add_commitment_secret(n, PEER.per_commitment_secret(n))
        assert RevocationStore.from_bytes(store.to_bytes()) == store
    assert shachain.RevocationStore.from_bytes(store.to_bytes()).get_commitment_secret(33) == (
        PEER.per_commitment_secret(33)
    )
