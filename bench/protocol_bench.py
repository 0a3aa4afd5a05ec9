"""Updates per second between two in-memory ``protocol.Channel`` parties.

    python -m bench.protocol_bench [--payments N] [--batch 1 100 ...]

A payment is ``batch`` HTLCs added by the funder under one commitment_signed, then
fulfilled by the fundee under one commitment_signed: add + commit + revoke (both ways)
+ fulfill + commit + revoke (both ways), i.e. four commitment signatures and four
revocations per round whatever the batch. Each HTLC counts two updates (its add and its
fulfill). Every signature is made and verified for real (channel/, coincurve); the
``Persist`` snapshots are built (they are part of the state machine's work) and, in the
second column, also serialized to JSON as a store would. No I/O.

Also printed: the secp256k1 floor measured in the same run (one sign + one verify per
commitment and per untrimmed HTLC output).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import deque

from coincurve import PrivateKey, PublicKey

from proto import peer_pb2
from protocol.actions import Action, Persist, Send
from protocol.channel import Channel
from protocol.config import LocalConfig

HEIGHT = 1000


_runs = 0


class Pair:
    def __init__(self, batch: int, serialize: bool) -> None:
        # Fresh seeds per run: channel/ memoises key derivations, and a rerun with the
        # same seeds would measure those caches instead of the work.
        global _runs
        _runs += 1
        seed_a = hashlib.sha256(b"a%d" % _runs).digest()
        seed_b = hashlib.sha256(b"b%d" % _runs).digest()
        cfg = LocalConfig(max_accepted_htlcs=max(30, batch), channel_reserve_sat=10_000)
        self.a = Channel.outbound(config=cfg, channel_seed=seed_a,
                                  temporary_channel_id=b"\x07" * 32,
                                  chain_hash=b"\x00" * 32, close_script=b"\x00\x14" + b"\xaa" * 20)
        self.b = Channel.inbound(config=cfg, channel_seed=seed_b, chain_hash=b"\x00" * 32,
                                 close_script=b"\x00\x14" + b"\xbb" * 20)
        self.serialize = serialize
        self.persisted_bytes = 0
        self.queue: deque[tuple[Channel, peer_pb2.PeerMessage]] = deque()
        self.run(self.a, self.a.open(funding_sat=100_000_000, push_msat=0, feerate_per_kw=1000))
        self.pump()
        self.run(self.a, self.a.funding_outpoint(hashlib.sha256(b"f").digest(), 0))
        self.pump()
        self.run(self.a, self.a.funding_confirmed())
        self.run(self.b, self.b.funding_confirmed())
        self.pump()

    def other(self, ch: Channel) -> Channel:
        return self.b if ch is self.a else self.a

    def run(self, ch: Channel, actions: list[Action]) -> None:
        for act in actions:
            if isinstance(act, Send):
                self.queue.append((self.other(ch), act.message))
            elif isinstance(act, Persist) and self.serialize:
                self.persisted_bytes += len(json.dumps(act.snapshot))

    def pump(self) -> None:
        while self.queue:
            ch, msg = self.queue.popleft()
            self.run(ch, ch.handle(msg, height=HEIGHT))

    def commit_round(self, first: Channel) -> None:
        """first signs; the other revokes and signs back; first revokes."""
        self.run(first, first.commit())
        self.pump()
        second = self.other(first)
        self.run(second, second.commit())
        self.pump()

    def payment_round(self, batch: int, n: int) -> None:
        preimages = [hashlib.sha256(f"{n}:{i}".encode()).digest() for i in range(batch)]
        ids = []
        for pre in preimages:
            acts = self.a.add_htlc(10_000_000, hashlib.sha256(pre).digest(), HEIGHT + 40,
                                   height=HEIGHT)
            ids.append(acts[-1].message.update_add_htlc.id)  # type: ignore[union-attr]
            self.run(self.a, acts)
        self.pump()
        self.commit_round(self.a)
        for htlc_id, pre in zip(ids, preimages, strict=True):
            self.run(self.b, self.b.fulfill_htlc(htlc_id, pre))
        self.pump()
        self.commit_round(self.b)


def measure(batch: int, payments: int, serialize: bool) -> tuple[float, float]:
    pair = Pair(batch, serialize)
    rounds = max(1, payments // batch)
    start = time.perf_counter()
    for n in range(rounds):
        pair.payment_round(batch, n)
    elapsed = time.perf_counter() - start
    htlcs = rounds * batch
    return 2 * htlcs / elapsed, htlcs / elapsed


def signature_floor(n: int = 2000) -> tuple[float, float]:
    key = PrivateKey(hashlib.sha256(b"k").digest())
    pub = PublicKey(key.public_key.format())
    msg = hashlib.sha256(b"m").digest()
    start = time.perf_counter()
    sigs = [key.sign(msg, hasher=None) for _ in range(n)]
    sign_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for s in sigs:
        pub.verify(s, msg, hasher=None)
    verify_us = (time.perf_counter() - start) / n * 1e6
    return sign_us, verify_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 100])
    args = parser.parse_args()
    sign_us, verify_us = signature_floor()
    print(f"secp256k1 floor: sign {sign_us:.1f} us, verify {verify_us:.1f} us")
    print(f"{'HTLCs/commitment':>17} {'updates/s':>11} {'payments/s':>11} "
          f"{'updates/s +json':>16} {'floor updates/s':>16}")
    for batch in args.batch:
        payments = args.payments if batch > 1 else max(200, args.payments // 5)
        measure(batch, 2 * batch, serialize=False)  # warm-up: imports, caches
        ups, pps = measure(batch, payments, serialize=False)
        ups_json, _ = measure(batch, payments, serialize=True)
        # Per round 4 commitments are signed and verified; the two signed after the adds
        # carry `batch` HTLC outputs each, the two after the fulfills none.
        sig_ops = 4 + 2 * batch
        floor = 2 * batch / (sig_ops * (sign_us + verify_us) * 1e-6)
        print(f"{batch:>17} {ups:>11,.0f} {pps:>11,.0f} {ups_json:>16,.0f} {floor:>16,.0f}")


if __name__ == "__main__":
    main()
