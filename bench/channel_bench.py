"""Commitment build+sign and verify rates against the raw signature floor.

Run: ``python -m bench.channel_bench`` (``--quick`` for a short run).

What is measured, per HTLC count N in 0, 10, 100, 483:

- sign: build the peer's commitment (keys derived for a fresh per-commitment
  point, outputs, BIP69 order) and sign it plus its N HTLC transactions, i.e. all
  commitment_signed needs (N + 1 signatures);
- verify: build our own commitment for a fresh point and verify the N + 1
  signatures received (what receiving commitment_signed needs).

Beside them, coincurve's own ``PrivateKey.sign`` and ``PublicKey.verify`` rates on
a 32-byte digest, measured in the same run. The ratio is the measured cost over
(N + 1) raw operations: 1.0 would mean the channel code costs nothing beyond the
signatures. N + 1 is the raw signature work the commitment contains: one
signature of the commitment itself (so exactly one sign for N = 0) and one per
untrimmed HTLC (every HTLC here is above the dust limit).

The per-commitment key derivation is included in the cost, not in the floor, so
small N carry it visibly: the revocation key (two variable-base multiplications)
and the delayed key (one fixed-base tweak) always, the two HTLC keys (two more
tweaks) only when an HTLC is untrimmed. Each measured commitment derives its keys
afresh (the memo caches are cleared and each point is parsed anew). The second
table splits the build+sign time per commitment into that derivation (timed on
its own), the N + 1 raw signatures (at the raw rate above) and the rest (scripts,
outputs, BIP69 sort, serialization, sighashes, call overhead).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from coincurve import PrivateKey

from channel.commitment import (
    ChannelParty,
    ChannelStatic,
    CommitmentHtlc,
    Side,
    build_commitment,
    sign_counterparty_commitment,
    verify_holder_commitment,
)
from channel.keys import ChannelSecrets
from channel.tx import OutPoint

HTLC_COUNTS = (0, 10, 100, 483)
FEERATE_PER_KW = 253


@dataclass
class Figures:
    htlcs: int
    sign_per_s: float
    sign_ratio: float
    verify_per_s: float
    verify_ratio: float
    derive_us: float  # key derivation of one commitment (the part build+sign pays)
    signs_us: float  # (N + 1) raw signatures at the raw rate
    rest_us: float  # build+sign time per commitment minus the two above


def _rate(fn: Callable[[int], object], min_seconds: float) -> float:
    """Calls per second of ``fn(i)``, run for at least ``min_seconds``."""
    count = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < min_seconds:
        for _ in range(8):
            fn(count)
            count += 1
        elapsed = time.perf_counter() - start
    return count / elapsed


def raw_rates(min_seconds: float) -> tuple[float, float]:
    key = PrivateKey(hashlib.sha256(b"bench").digest())
    pub = key.public_key
    digests = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(256)]
    sigs = [key.sign(d, hasher=None) for d in digests]
    sign_rate = _rate(lambda i: key.sign(digests[i & 255], hasher=None), min_seconds)
    verify_rate = _rate(
        lambda i: pub.verify(sigs[i & 255], digests[i & 255], hasher=None), min_seconds
    )
    return sign_rate, verify_rate


def _setup(
    n_htlcs: int,
) -> tuple[ChannelStatic, ChannelSecrets, ChannelSecrets, list[CommitmentHtlc]]:
    local = ChannelSecrets.from_seed(hashlib.sha256(b"bench local").digest())
    remote = ChannelSecrets.from_seed(hashlib.sha256(b"bench remote").digest())
    static = ChannelStatic(
        OutPoint(hashlib.sha256(b"funding").digest(), 0),
        100_000_000,
        ChannelParty(local.basepoints(), 546, 144),
        ChannelParty(remote.basepoints(), 546, 144),
        local_is_funder=True,
    )
    htlcs = [
        CommitmentHtlc(
            Side.LOCAL if i % 2 else Side.REMOTE,
            i,
            20_000_000 + i * 1000,
            hashlib.sha256(i.to_bytes(4, "big")).digest(),
            700_000 + i,
        )
        for i in range(n_htlcs)
    ]
    return static, local, remote, htlcs


def measure(n_htlcs: int, min_seconds: float, raw_sign: float, raw_verify: float) -> Figures:
    static, local, remote, htlcs = _setup(n_htlcs)
    in_htlcs_msat = sum(h.amount_msat for h in htlcs)
    local_msat = 40_000_000_000
    remote_msat = static.funding_sat * 1000 - local_msat - in_htlcs_msat
    # Fresh per-commitment points (as each new commitment has), computed up front:
    # they arrive in messages, so computing them is not part of the measured work.
    pool = 64
    remote_points = [remote.per_commitment_point(n) for n in range(pool)]
    local_points = [local.per_commitment_point(n) for n in range(pool)]
    offset = [0]

    def sign_one(i: int) -> object:
        n = offset[0] + i
        c = build_commitment(
            static,
            Side.REMOTE,
            n,
            remote_points[n % pool],
            local_msat,
            remote_msat,
            htlcs,
            FEERATE_PER_KW,
        )
        return sign_counterparty_commitment(static, local, c)

    # Signatures for the verify loop come from the peer's side, outside the timing.
    mirror = static.mirrored()
    mirrored_htlcs = [
        CommitmentHtlc(
            h.offered_by.other(), h.htlc_id, h.amount_msat, h.payment_hash, h.cltv_expiry
        )
        for h in htlcs
    ]
    received = []
    for n in range(pool):
        theirs = build_commitment(
            mirror,
            Side.REMOTE,
            n,
            local_points[n],
            remote_msat,
            local_msat,
            mirrored_htlcs,
            FEERATE_PER_KW,
        )
        received.append(sign_counterparty_commitment(mirror, remote, theirs))

    def verify_one(i: int) -> None:
        n = i % pool
        c = build_commitment(
            static, Side.LOCAL, n, local_points[n], local_msat, remote_msat, htlcs, FEERATE_PER_KW
        )
        verify_holder_commitment(static, c, received[n])

    # Key derivations are memoised per point; clear the caches so each measured
    # commitment pays for its own (a real channel never reuses a point).
    from channel import keys

    def fresh_sign(i: int) -> object:
        keys.derive_commitment_keys.cache_clear()
        keys.derive_pubkey.cache_clear()
        keys.derive_revocation_pubkey.cache_clear()
        return sign_one(i)

    def fresh_verify(i: int) -> None:
        keys.derive_commitment_keys.cache_clear()
        keys.derive_pubkey.cache_clear()
        keys.derive_revocation_pubkey.cache_clear()
        verify_one(i)

    owner_bp = static.remote.basepoints
    other_bp = static.local.basepoints

    def fresh_derive(i: int) -> object:
        keys.derive_commitment_keys.cache_clear()
        keys.derive_pubkey.cache_clear()
        keys.derive_revocation_pubkey.cache_clear()
        k = keys.derive_commitment_keys(owner_bp, other_bp, remote_points[i % pool])
        if n_htlcs:  # the HTLC keys are derived only when an HTLC output needs them
            return (k.local_htlc_pubkey, k.remote_htlc_pubkey)
        return k

    sign_rate = _rate(fresh_sign, min_seconds)
    verify_rate = _rate(fresh_verify, min_seconds)
    derive_rate = _rate(fresh_derive, min_seconds / 2)
    ops = n_htlcs + 1
    derive_us = 1e6 / derive_rate
    signs_us = ops * 1e6 / raw_sign
    return Figures(
        htlcs=n_htlcs,
        sign_per_s=sign_rate,
        sign_ratio=(1 / sign_rate) / (ops / raw_sign),
        verify_per_s=verify_rate,
        verify_ratio=(1 / verify_rate) / (ops / raw_verify),
        derive_us=derive_us,
        signs_us=signs_us,
        rest_us=1e6 / sign_rate - derive_us - signs_us,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (0.3 s per figure)")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 2.0
    raw_sign, raw_verify = raw_rates(seconds)
    print(f"coincurve raw sign:   {raw_sign:10.0f} /s  ({1e6 / raw_sign:6.1f} us)")
    print(f"coincurve raw verify: {raw_verify:10.0f} /s  ({1e6 / raw_verify:6.1f} us)")
    print()
    print(f"{'HTLCs':>5}  {'build+sign/s':>12}  {'ratio':>6}  {'build+verify/s':>14}  {'ratio':>6}")
    figures = []
    for n in HTLC_COUNTS:
        f = measure(n, seconds, raw_sign, raw_verify)
        figures.append(f)
        print(
            f"{f.htlcs:5d}  {f.sign_per_s:12.1f}  {f.sign_ratio:6.2f}  "
            f"{f.verify_per_s:14.1f}  {f.verify_ratio:6.2f}"
        )
    print()
    print("ratio = measured time per commitment / ((HTLCs + 1) x raw coincurve op);")
    print("goal: build+sign ratio <= 2.0 (DESIGN.md, Performance).")
    print()
    print("build+sign per commitment, us:")
    print(f"{'HTLCs':>5}  {'total':>9}  {'derive keys':>11}  {'raw signs':>9}  {'rest':>8}")
    for f in figures:
        print(
            f"{f.htlcs:5d}  {1e6 / f.sign_per_s:9.1f}  {f.derive_us:11.1f}  "
            f"{f.signs_us:9.1f}  {f.rest_us:8.1f}"
        )
    print("(rest: scripts, outputs, sort, serialization, sighashes, call overhead)")


if __name__ == "__main__":
    main()
