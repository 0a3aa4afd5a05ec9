"""Unit tests of channel/ behaviour the BOLT #3 vectors do not pin down."""

from __future__ import annotations

import hashlib

import pytest

from channel import shachain
from channel.commitment import (
    ChannelParty,
    ChannelStatic,
    CommitmentHtlc,
    CommitmentSignatures,
    Side,
    build_commitment,
    commitment_fee_sat,
    commitment_number_from_tx,
    is_htlc_trimmed,
    sign_counterparty_commitment,
    verify_holder_commitment,
)
from channel.errors import InvalidSignature, ShachainError, TransactionError
from channel.keys import ChannelSecrets, pubkey_from_secret
from channel.signing import compact_signature, der_signature, sign, verify
from channel.tx import OutPoint

LOCAL = ChannelSecrets.from_seed(b"\x01" * 32)
REMOTE = ChannelSecrets.from_seed(b"\x02" * 32)
STATIC = ChannelStatic(
    OutPoint(b"\x07" * 32, 1),
    1_000_000,
    ChannelParty(LOCAL.basepoints(), 546, 144),
    ChannelParty(REMOTE.basepoints(), 546, 144),
    local_is_funder=True,
)


def htlc(side: Side, i: int, amount_msat: int, cltv: int = 600) -> CommitmentHtlc:
    return CommitmentHtlc(side, i, amount_msat, hashlib.sha256(bytes([i])).digest(), cltv)


HTLCS = [htlc(Side.LOCAL, 0, 5_000_000), htlc(Side.REMOTE, 0, 7_000_000)]


def test_secrets_from_seed_are_deterministic_and_distinct() -> None:
    again = ChannelSecrets.from_seed(b"\x01" * 32)
    assert again == LOCAL and again.basepoints() == LOCAL.basepoints()
    values = [
        LOCAL.funding_privkey,
        LOCAL.revocation_basepoint_secret,
        LOCAL.payment_basepoint_secret,
        LOCAL.delayed_payment_basepoint_secret,
        LOCAL.htlc_basepoint_secret,
        LOCAL.per_commitment_seed,
    ]
    assert len(set(values)) == 6
    assert "redacted" in repr(LOCAL)
    assert LOCAL.per_commitment_point(5) == pubkey_from_secret(LOCAL.per_commitment_secret(5))
    assert LOCAL.per_commitment_secret(5) == shachain.generate_from_seed(
        LOCAL.per_commitment_seed, 2**48 - 1 - 5
    )


def test_revocation_store_roundtrip_and_lookup() -> None:
    store = shachain.RevocationStore()
    for n in range(200):
        store.add_commitment_secret(n, LOCAL.per_commitment_secret(n))
    assert all(store.get_commitment_secret(n) == LOCAL.per_commitment_secret(n) for n in range(200))
    with pytest.raises(ShachainError):
        store.get_commitment_secret(200)
    restored = shachain.RevocationStore.from_bytes(store.to_bytes())
    assert restored == store
    assert restored.get_commitment_secret(17) == LOCAL.per_commitment_secret(17)
    # Commitment 200 lands in bucket 0 (odd index): nothing below it to check yet.
    store.add_commitment_secret(200, LOCAL.per_commitment_secret(200))
    before = store.to_bytes()
    with pytest.raises(ShachainError):
        store.add_commitment_secret(201, REMOTE.per_commitment_secret(201))
    assert store.to_bytes() == before
    with pytest.raises(ShachainError):
        shachain.RevocationStore.from_bytes(b"\x00" * 10)


def test_funder_that_cannot_pay_the_fee_is_refused() -> None:
    with pytest.raises(TransactionError):
        build_commitment(
            STATIC, Side.LOCAL, 0, LOCAL.per_commitment_point(0), 1_000, 999_999_000, [], 10_000
        )


def test_fee_and_trimming() -> None:
    feerate = 5_000
    small = htlc(Side.LOCAL, 1, 546_000 + 663 * feerate - 1000)  # 1 sat short of untrimmed
    big = htlc(Side.LOCAL, 2, 546_000 + 663 * feerate)
    assert is_htlc_trimmed(STATIC, Side.LOCAL, small, feerate)
    assert not is_htlc_trimmed(STATIC, Side.LOCAL, big, feerate)
    # The same HTLC is received in the remote's commitment: the success fee applies.
    assert is_htlc_trimmed(STATIC, Side.REMOTE, big, feerate)
    assert commitment_fee_sat(STATIC, Side.LOCAL, [small, big], feerate) == (
        feerate * (724 + 172) // 1000
    )


def test_commitment_number_is_recoverable_from_the_tx() -> None:
    c = build_commitment(
        STATIC,
        Side.LOCAL,
        123_456_789,
        LOCAL.per_commitment_point(123_456_789),
        500_000_000,
        488_000_000,
        HTLCS,
        1_000,
    )
    assert commitment_number_from_tx(STATIC, c.tx) == 123_456_789
    assert c.tx.locktime >> 24 == 0x20 and c.tx.inputs[0].sequence >> 24 == 0x80


def test_bad_signatures_are_named() -> None:
    point = LOCAL.per_commitment_point(3)
    ours = build_commitment(STATIC, Side.LOCAL, 3, point, 500_000_000, 488_000_000, HTLCS, 1_000)
    mirror = [
        CommitmentHtlc(
            h.offered_by.other(), h.htlc_id, h.amount_msat, h.payment_hash, h.cltv_expiry
        )
        for h in HTLCS
    ]
    theirs = build_commitment(
        STATIC.mirrored(), Side.REMOTE, 3, point, 488_000_000, 500_000_000, mirror, 1_000
    )
    sigs = sign_counterparty_commitment(STATIC.mirrored(), REMOTE, theirs)
    verify_holder_commitment(STATIC, ours, sigs)
    with pytest.raises(InvalidSignature, match="commitment signature"):
        verify_holder_commitment(
            STATIC, ours, CommitmentSignatures(sigs.htlc_signatures[0], sigs.htlc_signatures)
        )
    swapped = CommitmentSignatures(sigs.commitment_signature, sigs.htlc_signatures[::-1])
    with pytest.raises(InvalidSignature, match="HTLC signature #0"):
        verify_holder_commitment(STATIC, ours, swapped)
    with pytest.raises(InvalidSignature, match="expected 2 HTLC signatures"):
        verify_holder_commitment(
            STATIC, ours, CommitmentSignatures(sigs.commitment_signature, sigs.htlc_signatures[:1])
        )
    with pytest.raises(ValueError):
        sign_counterparty_commitment(STATIC, LOCAL, ours)  # that is our own commitment


def test_signature_encodings_and_low_s() -> None:
    digest = hashlib.sha256(b"m").digest()
    sig = sign(LOCAL.funding_privkey, digest)
    assert compact_signature(der_signature(sig)) == sig
    pub = LOCAL.basepoints().funding_pubkey
    assert verify(pub, digest, sig)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = sig[:32] + (n - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    assert not verify(pub, digest, high_s)
    assert not verify(b"\x02" + b"\x00" * 32, digest, sig)
    assert not verify(pub, digest, b"\x00" * 63)
