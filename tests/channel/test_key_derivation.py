"""The hand-written key derivation paths (signing.tweak_add_pubkey with its G
table, signing.mul_add_pubkeys, lazily derived HTLC keys) against coincurve's
general operations on random inputs."""

from __future__ import annotations

import hashlib

import pytest
from coincurve import PrivateKey, PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import keys
from channel.keys import ChannelSecrets, CommitmentKeys
from channel.signing import mul_add_pubkeys, parse_pubkey, tweak_add_pubkey

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
scalars = st.integers(min_value=1, max_value=_N - 1).map(lambda n: n.to_bytes(32, "big"))
# Tweaks with many zero bytes (skipped table rows) and extreme bytes as well.
sparse_scalars = (
    st.lists(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]), min_size=32, max_size=32)
    .map(bytes)
    .filter(lambda b: 0 < int.from_bytes(b, "big") < _N)
)


def _pub(secret: bytes) -> bytes:
    return bytes(PrivateKey(secret).public_key.format())


@settings(max_examples=200, deadline=None)
@given(secret=scalars, tweak=st.one_of(scalars, sparse_scalars))
def test_tweak_add_matches_coincurve(secret: bytes, tweak: bytes) -> None:
    base = _pub(secret)
    try:
        expected = bytes(PublicKey(base).add(tweak).format())
    except ValueError:  # the sum is the point at infinity: both refuse
        with pytest.raises(ValueError):
            tweak_add_pubkey(base, tweak)
        return
    assert tweak_add_pubkey(base, tweak) == expected


@settings(max_examples=100, deadline=None)
@given(a=scalars, x=scalars, b=scalars, y=scalars)
def test_mul_add_matches_coincurve(a: bytes, x: bytes, b: bytes, y: bytes) -> None:
    pa, pb = _pub(a), _pub(b)
    pa_parsed, pb_parsed = parse_pubkey(pa), parse_pubkey(pb)
    try:
        expected = bytes(
            PublicKey.combine_keys([PublicKey(pa).multiply(x), PublicKey(pb).multiply(y)]).format()
        )
    except ValueError:  # the sum is the point at infinity: both refuse
        with pytest.raises(ValueError):
            mul_add_pubkeys(pa_parsed, x, pb_parsed, y)
        return
    assert mul_add_pubkeys(pa_parsed, x, pb_parsed, y) == expected
    # The parsed inputs are left unchanged (the basepoint one is a shared cache entry).
    assert mul_add_pubkeys(pa_parsed, x, pb_parsed, y) == expected


def test_invalid_tweaks_and_infinity_are_refused() -> None:
    base = _pub(hashlib.sha256(b"k").digest())
    for bad in (bytes(32), _N.to_bytes(32, "big"), b"\xff" * 32, b"\x01" * 31):
        with pytest.raises(ValueError):
            tweak_add_pubkey(base, bad)
    # base + (n - k)*G is the point at infinity when base = k*G.
    k = 12345
    with pytest.raises(ValueError):
        tweak_add_pubkey(_pub(k.to_bytes(32, "big")), (_N - k).to_bytes(32, "big"))


def test_lazy_commitment_keys_equal_eager_ones() -> None:
    owner = ChannelSecrets.from_seed(hashlib.sha256(b"owner").digest())
    other = ChannelSecrets.from_seed(hashlib.sha256(b"other").digest())
    ob, tb = owner.basepoints(), other.basepoints()
    point = owner.per_commitment_point(7)
    eager = CommitmentKeys(
        per_commitment_point=point,
        revocation_pubkey=keys.derive_revocation_pubkey(tb.revocation_basepoint, point),
        local_delayed_pubkey=keys.derive_pubkey(ob.delayed_payment_basepoint, point),
        local_htlc_pubkey=keys.derive_pubkey(ob.htlc_basepoint, point),
        remote_htlc_pubkey=keys.derive_pubkey(tb.htlc_basepoint, point),
        remote_payment_pubkey=tb.payment_basepoint,
    )
    lazy = keys.derive_commitment_keys.__wrapped__(ob, tb, point)
    assert lazy.remote_htlc_pubkey == eager.remote_htlc_pubkey
    assert lazy.local_htlc_pubkey == eager.local_htlc_pubkey
    fresh = keys.derive_commitment_keys.__wrapped__(ob, tb, point)
    assert fresh == eager and eager == fresh and hash(fresh) == hash(eager)
    assert repr(keys.derive_commitment_keys.__wrapped__(ob, tb, point)) == repr(eager)
    with pytest.raises(AttributeError):
        fresh.no_such_key  # type: ignore[attr-defined]  # noqa: B018
