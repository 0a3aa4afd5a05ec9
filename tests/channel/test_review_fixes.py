"""Regression tests for defects found in review of channel/ (each failed before its fix)."""

from __future__ import annotations

import hashlib

import pytest

from channel import scripts
from channel.errors import ShachainError
from channel.keys import ChannelSecrets, pubkey_from_secret
from channel.shachain import RevocationStore
from channel.spend import SpendableOutput, build_spend_tx
from channel.tx import OutPoint


def _p2wpkh_output(i: int) -> tuple[SpendableOutput, bytes]:
    secret = hashlib.sha256(b"review key %d" % i).digest()
    pub = pubkey_from_secret(secret)
    outpoint = OutPoint(hashlib.sha256(b"review txid %d" % i).digest(), i % 3)
    spend = SpendableOutput(outpoint, 100_000, scripts.p2wpkh_script_code(pub), secret, (pub,))
    return spend, scripts.p2wpkh(pub)


def test_claim_fee_is_never_below_the_requested_feerate() -> None:
    # BOLT #5 claims pay ``feerate_per_kw`` on their weight: the fee must not be
    # rounded down below feerate * weight / 1000 (it was, by up to 1 sat).
    for i in range(40):
        spend, dest = _p2wpkh_output(i)
        for feerate in (253, 300, 1_001, 2_500, 7_777):
            tx = build_spend_tx([spend], dest, feerate)
            fee = spend.amount_sat - tx.outputs[0].amount_sat
            assert fee * 1000 >= feerate * tx.weight(), (i, feerate, fee, tx.weight())


def test_revocation_store_refuses_a_secret_at_a_wrong_index() -> None:
    peer = ChannelSecrets.from_seed(b"\x05" * 32)
    store = RevocationStore()
    for n in range(4):
        store.add_commitment_secret(n, peer.per_commitment_secret(n))
    before = store.to_bytes()
    # Replaying an already revoked commitment with a forged secret (an odd index:
    # nothing below it to check against) must not overwrite what we hold.
    with pytest.raises(ShachainError):
        store.add_commitment_secret(2, b"\x66" * 32)
    # Secrets arrive one commitment at a time: skipping one leaves a secret that no
    # stored one derives (and may evict one that nothing else derives).
    with pytest.raises(ShachainError):
        store.add_commitment_secret(6, peer.per_commitment_secret(6))
    with pytest.raises(ShachainError):
        store.add_commitment_secret(0, peer.per_commitment_secret(0))
    assert store.to_bytes() == before
    assert all(store.get_commitment_secret(n) == peer.per_commitment_secret(n) for n in range(4))
    store.add_commitment_secret(4, peer.per_commitment_secret(4))
    assert store.get_commitment_secret(4) == peer.per_commitment_secret(4)


N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_secret_scalar_arithmetic_refuses_invalid_results() -> None:
    # The secret-side derivations now run in libsecp256k1's constant-time scalar
    # code; like it, they refuse what is not a valid private key instead of
    # returning one (a zero sum came back as 32 zero bytes).
    from channel.signing import scalar_add, scalar_mul_add

    a = hashlib.sha256(b"a").digest()
    b = hashlib.sha256(b"b").digest()
    x = hashlib.sha256(b"x").digest()
    y = hashlib.sha256(b"y").digest()
    ia, ib, ix, iy = (int.from_bytes(v, "big") for v in (a, b, x, y))
    assert scalar_add(a, b) == ((ia + ib) % N).to_bytes(32, "big")
    assert scalar_mul_add(a, x, b, y) == ((ia * ix + ib * iy) % N).to_bytes(32, "big")
    minus_a = (N - ia).to_bytes(32, "big")
    with pytest.raises(ValueError):
        scalar_add(a, minus_a)  # a + (-a) = 0: not a key
    with pytest.raises(ValueError):
        scalar_add(bytes(32), b)  # zero secret
    with pytest.raises(ValueError):
        scalar_add(N.to_bytes(32, "big"), b)  # secret not below n
    with pytest.raises(ValueError):
        scalar_mul_add(a, x, (N - ia * ix % N).to_bytes(32, "big"), (1).to_bytes(32, "big"))


def test_compact_signature_accepts_strict_der_only() -> None:
    from channel.signing import compact_signature, der_signature, sign

    sig = sign(hashlib.sha256(b"k").digest(), hashlib.sha256(b"m").digest())
    der = der_signature(sig)
    assert compact_signature(der) == sig
    r = sig[:32].lstrip(b"\x00")
    s = sig[32:].lstrip(b"\x00")

    def encode(r_body: bytes, s_body: bytes) -> bytes:
        body = b"\x02" + bytes((len(r_body),)) + r_body + b"\x02" + bytes((len(s_body),)) + s_body
        return b"\x30" + bytes((len(body),)) + body

    pad_r = b"\x00" + r if r[0] & 0x80 else r
    assert encode(pad_r, s) == der
    bad = [
        encode(b"\x00" + pad_r, s),  # non-minimal: superfluous leading zero
        encode(pad_r, b"\x00" + s),
        encode(b"\x80" + b"\x01" * 31, s),  # negative R
        encode(pad_r, b"\xff" + s[1:]),  # negative S
        encode(pad_r, b""),  # empty S
        der + b"\x00",  # trailing garbage
        der[:-1],  # truncated
        b"\x31" + der[1:],  # not a SEQUENCE
    ]
    for candidate in bad:
        with pytest.raises(ValueError):
            compact_signature(candidate)


def test_ec_paths_take_only_compressed_points() -> None:
    # BOLT #3 keys are 33-byte compressed points and the derivations hash those
    # bytes; an uncompressed or hybrid encoding of a valid point must be refused,
    # not tweaked (the result would differ from every other implementation's).
    from coincurve import PublicKey

    from channel.keys import derive_pubkey, derive_revocation_pubkey
    from channel.signing import sign, verify

    secret = hashlib.sha256(b"point").digest()
    compressed = pubkey_from_secret(secret)
    uncompressed = PublicKey(compressed).format(compressed=False)
    hybrid = bytes((6 + (uncompressed[-1] & 1),)) + uncompressed[1:]
    point = pubkey_from_secret(hashlib.sha256(b"per-commitment").digest())
    digest = hashlib.sha256(b"m").digest()
    sig = sign(secret, digest)
    assert verify(compressed, digest, sig)
    for encoding in (uncompressed, hybrid):
        with pytest.raises(ValueError):
            derive_pubkey(encoding, point)
        with pytest.raises(ValueError):
            derive_pubkey(compressed, encoding)
        with pytest.raises(ValueError):
            derive_revocation_pubkey(encoding, point)
        with pytest.raises(ValueError):
            derive_revocation_pubkey(compressed, encoding)
        assert not verify(encoding, digest, sig)
