"""A malicious peer that signs its own states (issue 11), against one honest side.

The peer holds its own ``Channel`` and keys and takes random legal-looking actions with
adversarial amounts, fees, CLTVs and timings: adds it cannot afford, at or around every
limit (htlc minimum, dust, reserve, in-flight, expiry margins, two HTLCs on one hash),
fee updates from 1 sat/kw to absurd, settles of HTLCs that are not committed, with the
wrong preimage or oversized reasons, commitments signed whenever its own machine will
build them, shutdowns, disconnects, and lies in channel_reestablish. It bypasses its own
checks with ``tests.protocol.lax``, so every message it sends is well formed and validly
signed: exactly what a stranger running its own code can do. The honest side runs as a
driver would: it commits what is pending, settles what it is offered, goes on chain at
an HTLC's deadline, and fails the channel when a refusal says CLOSE.

After every step the honest side is checked:

- no exception but ``RemoteProtocolError`` out of ``handle()`` (``LocalProtocolError``
  out of a command), and a refused message changes nothing;
- its value (balance plus its own HTLCs still in flight, in its latest commitment)
  plus what it paid (its HTLCs the peer fulfilled) never decreases;
- its books add up, and both its latest commitments can be built;
- rule 1 and the Watch-before-Persist order (``ChannelPair.apply``).

At random moments and at the end, the honest side must be able to go on chain with
everything it owns: its latest commitment (force close), the sweep of its to_local,
its HTLC-timeout/success transactions and their sweeps; against each of the peer's
unrevoked commitments, the to_remote sweep and every HTLC claim; and for every
commitment the peer revoked, a penalty from the ``Watch`` record alone spending every
output but our own to_remote. Each transaction is checked input by input with btclib's
script engine (the one the regtest node uses).

Runs under the suite's hypothesis profiles, scaled down (each step signs and verifies
real transactions): ``ci`` 250 runs of 50 steps, ``soak`` 1,250 runs of 80.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from btclib.script.engine import verify_input
from btclib.script.engine.flags import ScriptFlag
from btclib.tx.tx import Tx as BtclibTx
from btclib.tx.tx_out import TxOut as BtclibTxOut
from hypothesis import event as hypothesis_event
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from channel import penalty, sweep
from channel.commitment import Side, finalize_holder_htlc_tx
from channel.errors import TransactionError
from channel.scripts import p2wpkh
from channel.tx import Tx, TxOut
from proto import peer_pb2
from protocol import commitments
from protocol.actions import Action, HtlcFulfilled, Persist, Send, Watch
from protocol.config import LocalConfig
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.table import ChannelState, LinkState
from tests.protocol.lax import lax
from tests.protocol.pair import ChannelPair, Party, check_watches_before_persist

FLAGS = (ScriptFlag.P2SH | ScriptFlag.WITNESS | ScriptFlag.STRICTENC | ScriptFlag.LOW_S
         | ScriptFlag.NULLDUMMY | ScriptFlag.DERSIG | ScriptFlag.WITNESS_PUBKEYTYPE
         | ScriptFlag.NULLFAIL | ScriptFlag.CLEANSTACK | ScriptFlag.CHECKLOCKTIMEVERIFY
         | ScriptFlag.CHECKSEQUENCEVERIFY)
DEST = b"\x00\x14" + b"\xdd" * 20
SWEEP_FEERATE = 253
CONFIG = LocalConfig(max_accepted_htlcs=8, channel_reserve_sat=10_000,
                     max_dust_htlc_exposure_msat=5_000_000,
                     max_htlc_value_in_flight_msat=500_000_000, htlc_minimum_msat=1000)
FUNDING_SAT = 1_000_000

# Each value set mixes ordinary values (three times as likely, so a run gets deep
# before a refusal ends it) with adversarial ones around every limit of CONFIG and the
# channel: htlc minimum, trimmed/untrimmed at common feerates (dust 546 sat + 663/703 *
# feerate/1000), the dust exposure cap, the in-flight cap, reserves, whole balances.
def weighted(ordinary: list[int], adversarial: list[int]) -> st.SearchStrategy[int]:
    return st.sampled_from(ordinary * 3 + adversarial)


AMOUNTS = weighted(
    [1000, 600_000, 2_000_000, 3_000_000, 20_000_000, 50_000_000, 100_000_000],
    [0, 1, 999, 1_209_000, 1_250_000, 4_999_999, 5_000_001, 250_000_000, 390_000_000,
     499_999_999, 500_000_001, 590_000_000, 600_000_000, 10**12, 2**64 - 1])
FEERATES = weighted([253, 1000, 2500, 5000],
                    [1, 252, 10_000, 40_000, 100_000, 100_001, 2**32 - 1])
CLTV_DELTAS = weighted([40, 100, 144], [-1, 0, 3, 4, 2016, 2017, 500_000_000])
SIDES = st.sampled_from(["honest", "peer"])


def event(text: str) -> None:
    """hypothesis.event, also usable when a test drives the machine by hand."""
    with contextlib.suppress(InvalidArgument):
        hypothesis_event(text)


def scaled() -> settings:
    """A quarter of the profile's examples (at least 10), its step count."""
    base = settings.default
    assert base is not None
    return settings(max_examples=max(10, base.max_examples // 4),
                    stateful_step_count=base.stateful_step_count)


def verify_spends(tx: Tx, prevouts: list[TxOut]) -> None:
    """Every input of ``tx`` valid under the node's script flags (raises otherwise)."""
    parsed = BtclibTx.parse(tx.serialize())
    outs = [BtclibTxOut(o.amount_sat, o.script_pubkey) for o in prevouts]
    for i in range(len(parsed.vin)):
        verify_input(outs, parsed, i, FLAGS)


def prevouts_of(tx: Tx, source: Tx) -> list[TxOut]:
    """The outputs of ``source`` that ``tx`` spends, in input order."""
    txid = source.txid()
    assert all(i.outpoint.txid == txid for i in tx.inputs)
    return [source.outputs[i.outpoint.index] for i in tx.inputs]


def tolerable(exc: TransactionError) -> bool:
    """An output too small to pay for its own claim at 1 sat/vB is not worth claiming."""
    return "after a" in str(exc)


def penalty_from_watch(h: Any, revoked_tx: Tx, watch: Watch) -> Tx:
    """The penalty built from the Watch record alone (plus the revocation store)."""
    ch = h.channel
    assert watch.commitment_number is not None
    secret = ch.revocations.get_commitment_secret(watch.commitment_number)
    return penalty.build_penalty_tx(ch.static, ch.secrets, revoked_tx, secret,
                                    watch.htlc_outputs, DEST, SWEEP_FEERATE)


class MaliciousPeer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pair: ChannelPair
        self.h: Party  # honest
        self.m: Party  # malicious
        self.preimages: dict[bytes, bytes] = {}
        self.counter = 0
        self.paid_msat = 0
        self.last_value_msat = 0
        self.signed_remote: dict[bytes, Tx] = {}  # every peer commitment the honest signed
        self.revoked: list[Watch] = []
        self.onchain_checks = 0
        self.steps = self.delivered = 0

    # -- set-up ----------

    @initialize(honest=st.sampled_from(["a", "b"]), push_msat=st.sampled_from(
        [0, 300_000, 400_000_000, 900_000_000, 900_000_000]),
        feerate=st.sampled_from([253, 1000, 5000]))
    def open(self, honest: str, push_msat: int, feerate: int) -> None:
        """``a`` funds; the honest side is either the funder or the fundee."""
        self.pair = ChannelPair(funding_sat=FUNDING_SAT, push_msat=push_msat,
                                feerate_per_kw=feerate, config_a=CONFIG, config_b=CONFIG)
        self.h = self.pair.party(honest)
        self.m = self.pair.other(self.h)
        self.last_value_msat = self.value_msat()
        self.record_signed()

    # -- driving each side ----------

    @property
    def live(self) -> bool:
        return self.h.channel.state not in (ChannelState.FAILED, ChannelState.CLOSED)

    def honest_apply(self, actions: list[Action]) -> None:
        self.pair.apply(self.h, actions)
        for a in actions:
            if isinstance(a, HtlcFulfilled):
                htlc = self.h.channel.d.book.htlcs.get((Side.LOCAL, a.htlc_id))
                assert htlc is not None and htlc.payment_hash == a.payment_hash
                self.paid_msat += htlc.amount_msat
            elif isinstance(a, Watch) and a.kind == "revoked_commitment":
                self.revoked.append(a)
        self.record_signed()

    def honest_command(self, fn: Any) -> None:
        if not self.live:
            return
        before = self.h.channel.snapshot()
        try:
            actions = fn(self.h.channel)
        except LocalProtocolError as exc:
            assert self.h.channel.snapshot() == before, "a refused command changed the state"
            if exc.disposition is Disposition.CLOSE:
                self.honest_fail(exc.message)
            return
        self.honest_apply(actions)

    def honest_fail(self, reason: str) -> None:
        if self.h.channel.state is not ChannelState.FAILED:
            self.honest_apply(self.h.channel.fail(reason))

    def peer(self, fn: Any) -> None:
        """The malicious side acts with its checks off; whatever its own machine cannot
        do (it may raise anything: its state is its own problem) is simply not done."""
        with lax():
            try:
                actions = fn(self.m.channel)
            except Exception:  # the cheater's own breakage is not what is checked
                return
        self.m.outbox.extend(a.message for a in actions if isinstance(a, Send))

    def deliver_to_honest(self) -> None:
        msg = self.m.outbox.popleft()
        self.delivered += 1
        ch = self.h.channel
        before = ch.snapshot()
        try:
            actions = ch.handle(msg, height=self.pair.height)
        except RemoteProtocolError as exc:
            assert ch.snapshot() == before, "a refused message changed the state"
            event(f"refused {msg.WhichOneof('body')} ({exc.disposition.name}): "
                  f"{exc.message.split(':')[0][:60]}")
            if exc.disposition is Disposition.CLOSE:
                self.honest_fail(exc.message)
            elif exc.disposition is Disposition.WARN:
                self.disconnect()
            return
        self.honest_apply(actions)

    def deliver_to_peer(self) -> None:
        msg = self.h.outbox.popleft()
        self.peer(lambda c: c.handle(msg, height=self.pair.height))

    def record_signed(self) -> None:
        """Remember every commitment of the peer's the honest side signed: the only
        transactions the peer can ever publish."""
        ch = self.h.channel
        if ch.d.remote_current_point and ch.d.local_commit_signature:
            for n in {ch.d.remote_oldest_ctn, ch.d.remote_ctn}:
                if n in ch.d.remote_commit_txids and (
                        n == ch.d.remote_oldest_ctn or ch.d.remote_next_point):
                    c = ch.build_remote(n)
                    self.signed_remote.setdefault(c.txid, c.tx)

    # -- the peer's moves ----------

    @rule(amount=AMOUNTS, delta=CLTV_DELTAS, reuse_hash=st.booleans())
    def peer_adds(self, amount: int, delta: int, reuse_hash: bool) -> None:
        if not self.live:
            return
        if reuse_hash and self.preimages:
            payment_hash = sorted(self.preimages)[self.counter % len(self.preimages)]
        else:
            payment_hash = self.new_hash()
        expiry = max(0, min(self.pair.height + delta, 2**32 - 1))
        self.peer(lambda c: c.add_htlc(amount, payment_hash, expiry, height=self.pair.height))

    @rule(amount=AMOUNTS, delta=CLTV_DELTAS, reuse_hash=st.booleans())
    def peer_adds_again(self, amount: int, delta: int, reuse_hash: bool) -> None:
        self.peer_adds(amount, delta, reuse_hash)  # a second rule doubles the weight

    @rule(feerate=FEERATES)
    def peer_updates_fee(self, feerate: int) -> None:
        if not self.live:
            return
        self.peer(lambda c: c.update_fee(feerate))

    @rule(feerate=FEERATES, amount=AMOUNTS, add=st.booleans())
    def peer_crosses_and_signs(self, feerate: int, amount: int, add: bool) -> None:
        """Timing: an update_fee (or an add) and its commitment_signed at once, before
        the peer reads what the honest side has in flight (finding 2's crossing)."""
        if not self.live:
            return
        if add:
            self.peer_adds(amount, 40, False)
        else:
            self.peer_updates_fee(feerate)
        self.peer_commits()

    @rule(htlc_signatures=st.integers(0, 3))
    def peer_signs_what_it_cannot_build(self, htlc_signatures: int) -> None:
        """A commitment_signed for a state the peer's own machine refuses to build (a
        fee its funder cannot pay, say): the signature cannot be valid, but everything
        before the signature check runs on it, and must not crash."""
        ch = self.h.channel
        if not self.live or not ch.d.book.pending(Side.LOCAL, ch.local_eligible()):
            return  # nothing for the honest side to build: refused at once, uninteresting
        sig = hashlib.sha256(b"sig").digest() * 2
        self.m.outbox.append(peer_pb2.PeerMessage(commitment_signed=peer_pb2.CommitmentSigned(
            channel_id=self.m.channel.channel_id, signature=sig,
            htlc_signatures=[sig] * htlc_signatures)))

    @rule(feerate=st.sampled_from([10_000, 40_000, 100_000]),
          htlc_signatures=st.integers(0, 3))
    def peer_fee_spike(self, feerate: int, htlc_signatures: int) -> None:
        """A scripted timing attack (issue 11, finding 2): the funder's update_fee goes
        out before it reads the honest side's adds, the link runs (the peer revokes but
        signs nothing), then a commitment_signed for whatever the honest side would now
        build."""
        if not self.live:
            return
        self.peer_updates_fee(feerate)
        while self.live and self.m.outbox:
            self.deliver_to_honest()
        self.exchange(False)
        self.peer_signs_what_it_cannot_build(htlc_signatures)
        while self.live and self.m.outbox:
            self.deliver_to_honest()

    @rule(pick=st.integers(0, 20), right_preimage=st.sampled_from([True] * 4 + [False]),
          fulfill=st.booleans(), reason_bytes=weighted([0, 292], [1024, 1025]))
    def peer_settles(self, pick: int, right_preimage: bool, fulfill: bool,
                     reason_bytes: int) -> None:
        """Settle one of the honest side's HTLCs (committed or not), rightly or not."""
        ours = sorted(k[1] for k in self.m.channel.d.book.htlcs if k[0] is Side.REMOTE)
        if not ours:
            return
        htlc_id = ours[pick % len(ours)]
        htlc = self.m.channel.d.book.htlcs[(Side.REMOTE, htlc_id)]
        if fulfill:
            pre = self.preimages.get(htlc.payment_hash, b"\x00" * 32)
            if not right_preimage:
                pre = hashlib.sha256(pre).digest()
            self.peer(lambda c: c.fulfill_htlc(htlc_id, pre))
        else:
            self.peer(lambda c: c.fail_htlc(htlc_id, b"\x01" * reason_bytes))

    @rule()
    def peer_commits(self) -> None:
        if not self.live:
            return
        self.peer(lambda c: c.commit())

    @rule(script=st.sampled_from([b"\x00\x14" + b"\xee" * 20, b"\x51\x20" + b"\xee" * 32]))
    def peer_shuts_down(self, script: bytes) -> None:
        if not self.live:
            return
        self.m.channel.d.close_script = script
        self.peer(lambda c: c.shutdown())

    @rule(next_commitment=st.integers(0, 6), next_revocation=st.integers(0, 6),
          claim_secret=st.booleans())
    def peer_lies_in_reestablish(self, next_commitment: int, next_revocation: int,
                                 claim_secret: bool) -> None:
        """A channel_reestablish with numbers of its choosing, and a secret we really
        revealed (or none): it must not make us lose data or broadcast a revoked state."""
        if not self.live or self.h.channel.link is not LinkState.REESTABLISHING:
            return
        ch = self.m.channel
        secret = bytes(32)
        if claim_secret and ch.d.remote_oldest_ctn > 0:
            secret = ch.revocations.get_commitment_secret(ch.d.remote_oldest_ctn - 1)
        self.m.outbox.appendleft(peer_pb2.PeerMessage(
            channel_reestablish=peer_pb2.ChannelReestablish(
                channel_id=ch.channel_id, next_commitment_number=next_commitment,
                next_revocation_number=next_revocation,
                your_last_per_commitment_secret=secret,
                my_current_per_commitment_point=ch.local_point(ch.d.local_ctn))))

    # -- the honest side's moves ----------

    @rule(amount=AMOUNTS, delta=CLTV_DELTAS)
    def honest_adds(self, amount: int, delta: int) -> None:
        if not self.live:
            return
        payment_hash = self.new_hash()
        expiry = max(0, min(self.pair.height + delta, 2**32 - 1))
        self.honest_command(lambda c: c.add_htlc(amount, payment_hash, expiry,
                                                 height=self.pair.height))

    @rule(amount=AMOUNTS, delta=CLTV_DELTAS)
    def honest_adds_again(self, amount: int, delta: int) -> None:
        self.honest_adds(amount, delta)

    @rule(amount=st.sampled_from([2_000_000, 100_000_000]), n=st.integers(2, 4))
    def honest_adds_a_burst(self, amount: int, n: int) -> None:
        """Several payments at once (what a hub forwards): many HTLCs in flight."""
        for _ in range(n):
            self.honest_adds(amount, 40)

    @rule(fulfill=st.booleans())
    def honest_settles(self, fulfill: bool) -> None:
        if not self.live:
            return
        for htlc_id, _, payment_hash, _ in self.h.channel.received_htlcs()[:3]:
            if fulfill:
                pre = self.preimages[payment_hash]
                self.honest_command(lambda c, i=htlc_id, pre=pre: c.fulfill_htlc(i, pre))
            else:
                self.honest_command(lambda c, i=htlc_id: c.fail_htlc(i, b"no"))

    @rule(feerate=FEERATES)
    def honest_updates_fee(self, feerate: int) -> None:
        if not self.live:
            return
        if self.h.channel.d.local_is_funder:
            self.honest_command(lambda c: c.update_fee(feerate))

    @rule()
    def honest_shuts_down(self) -> None:
        if not self.live:
            return
        self.honest_command(lambda c: c.shutdown())

    # -- link and time ----------

    @rule(side=SIDES, n=st.integers(1, 6))
    def deliver(self, side: str, n: int) -> None:
        if not self.live:
            return
        for _ in range(n):
            if not self.live:
                return
            if side == "peer" and self.m.outbox:
                self.deliver_to_honest()
            elif side == "honest" and self.h.outbox:
                self.deliver_to_peer()
            # The honest driver signs whatever is pending as soon as it may.
            if self.live and self.h.channel.can_commit():
                self.honest_command(lambda c: c.commit())

    @rule(peer_signs=st.sampled_from([True, True, True, False]))
    def exchange(self, peer_signs: bool) -> None:
        """Both directions until the link is quiet; the peer signs for what it got
        (or, sometimes, leaves the honest side waiting)."""
        for _ in range(60):
            if not self.live:
                return
            if self.m.outbox:
                self.deliver_to_honest()
            elif self.h.outbox:
                self.deliver_to_peer()
            elif peer_signs and self.m.channel.can_commit():
                self.peer(lambda c: c.commit())
            else:
                return
            if self.live and self.h.channel.can_commit():
                self.honest_command(lambda c: c.commit())

    @rule(peer_signs=st.booleans())
    def exchange_again(self, peer_signs: bool) -> None:
        self.exchange(peer_signs)

    @rule()
    def disconnect(self) -> None:
        if not self.live:
            return
        self.pair.a.outbox.clear()
        self.pair.b.outbox.clear()
        if self.h.channel.link is not LinkState.DOWN:
            self.honest_command(lambda c: c.disconnected())
        if self.m.channel.link is not LinkState.DOWN:
            self.peer(lambda c: c.disconnected())
        self.honest_command(lambda c: c.reconnected())
        self.peer(lambda c: c.reconnected())

    @rule(blocks=weighted([1, 3], [20, 150]))
    def mine(self, blocks: int) -> None:
        if not self.live:
            return
        """Time passes; the honest driver goes on chain at an HTLC's deadline."""
        self.pair.height += blocks
        due = [d for d in self.h.channel.onchain_deadlines()
               if d.deadline_height <= self.pair.height]
        if due:
            self.honest_fail(f"HTLC {due[0].htlc_id} reached its deadline")

    @rule()
    def check_onchain_now(self) -> None:
        if self.onchain_checks < 3:  # expensive: a few times per run, and at the end
            self.onchain_checks += 1
            self.check_onchain()

    # -- checks ----------

    def new_hash(self) -> bytes:
        self.counter += 1
        pre = hashlib.sha256(b"malicious" + self.counter.to_bytes(4, "big")).digest()
        payment_hash = hashlib.sha256(pre).digest()
        self.preimages[payment_hash] = pre
        return payment_hash

    def value_msat(self) -> int:
        ch = self.h.channel
        v = ch.view_of(Side.LOCAL, ch.d.local_ctn)
        return v.local_msat + sum(h.amount_msat for h in v.htlcs if h.offered_by is Side.LOCAL)

    def check_step(self) -> None:
        ch = self.h.channel
        value = self.value_msat()
        assert value + self.paid_msat >= self.last_value_msat, \
            f"honest value fell from {self.last_value_msat} to {value} + {self.paid_msat} paid"
        self.last_value_msat = value + self.paid_msat
        for owner, n in ((Side.LOCAL, ch.d.local_ctn), (Side.REMOTE, ch.d.remote_ctn)):
            v = ch.view_of(owner, n)
            assert v.local_msat >= 0 and v.remote_msat >= 0
            assert v.local_msat + v.remote_msat + sum(h.amount_msat for h in v.htlcs) \
                == FUNDING_SAT * 1000
        if ch.d.local_commit_signature:
            ch.build_local(ch.d.local_ctn)
        if ch.d.remote_next_point or ch.d.remote_ctn == ch.d.remote_oldest_ctn:
            ch.build_remote(ch.d.remote_ctn)

    def check_onchain(self) -> None:
        ch = self.h.channel
        d = ch.d
        if not d.local_commit_signature or d.data_loss:
            assert not d.data_loss, "a lying peer made us believe we lost data"
            return
        static, secrets = ch.static, ch.secrets
        funding = TxOut(static.funding_sat, static.funding_script_pubkey)
        # Our latest commitment, and everything it pays us.
        own = ch.build_local(d.local_ctn)
        tx = commitments.finalize_local(static, secrets, own, d.local_commit_signature)
        verify_spends(tx, [funding])
        if own.to_local_index is not None:
            self.spend(lambda: sweep.sweep_to_local(static, secrets, tx, d.local_ctn, DEST,
                                                    SWEEP_FEERATE), tx)
        for pos, (index, htlc) in enumerate(own.htlc_outputs):
            preimage = None
            if htlc.offered_by is Side.REMOTE:
                preimage = self.preimages.get(htlc.payment_hash)
                if preimage is None:
                    continue
            second = finalize_holder_htlc_tx(static, secrets, own, index,
                                             d.local_htlc_signatures[pos], preimage)
            verify_spends(second, prevouts_of(second, tx))
            self.spend(lambda second=second: sweep.sweep_second_stage(
                static, secrets, second, d.local_ctn, DEST, SWEEP_FEERATE), second)
        # The peer's unrevoked commitments: to_remote and every HTLC, by index.
        points = {d.remote_oldest_ctn: d.remote_current_point}
        if d.remote_ctn != d.remote_oldest_ctn:
            points[d.remote_ctn] = d.remote_next_point
        for n, point in points.items():
            theirs = ch.build_remote(n)
            if theirs.to_remote_index is not None:
                self.spend(lambda t=theirs: sweep.sweep_to_remote(
                    static, secrets, t.tx, DEST, SWEEP_FEERATE), theirs.tx)
            claims = [(index, htlc, None if htlc.offered_by is Side.LOCAL
                       else self.preimages[htlc.payment_hash])
                      for index, htlc in theirs.htlc_outputs]
            if claims:
                self.spend(lambda t=theirs, p=point, c=claims: sweep.claim_remote_htlcs(
                    static, secrets, t.tx, p, c, DEST, SWEEP_FEERATE), theirs.tx)
        # Every revoked commitment: a penalty from the Watch record, covering every
        # output but our own to_remote.
        our_to_remote = p2wpkh(static.local.basepoints.payment_basepoint)
        for watch in self.revoked:
            revoked_tx = self.signed_remote[watch.txid]
            punishable = {i for i, o in enumerate(revoked_tx.outputs)
                          if o.script_pubkey != our_to_remote}
            assert punishable == ({index for index, _ in watch.htlc_outputs}
                                  | ({watch.to_local_output_index}
                                     if watch.to_local_output_index is not None else set()))
            if not punishable:
                continue
            penalty_tx = self.spend(lambda w=watch, r=revoked_tx: penalty_from_watch(
                self.h, r, w), revoked_tx)
            event(f"penalty over {len(punishable)} output(s)")
            if penalty_tx is not None:
                assert {i.outpoint.index for i in penalty_tx.inputs} == punishable

    def spend(self, build: Any, source: Tx) -> Tx | None:
        try:
            tx: Tx = build()
        except TransactionError as exc:
            assert tolerable(exc), exc
            return None
        verify_spends(tx, prevouts_of(tx, source))
        event(f"on chain: {tx.inputs and len(tx.inputs)} input(s) verified")
        return tx

    def teardown(self) -> None:
        if hasattr(self, "h"):
            self.check_onchain()
            d = self.h.channel.d
            event(f"end: {d.state.value}, {min(len(self.revoked), 5)}+ revoked, "
                  f"{min(d.remote_oldest_ctn, 10)}+ remote commitments")
            event(f"steps {self.steps // 10 * 10}+, delivered {self.delivered // 10 * 10}+")

    @invariant()
    def honest_side_sound(self) -> None:
        if hasattr(self, "h"):
            self.steps += 1
            self.check_step()


TestMaliciousPeer = MaliciousPeer.TestCase
TestMaliciousPeer.settings = scaled()


def test_the_fee_spike_of_finding_2_by_hand() -> None:
    """The machine's own moves replay finding 2: the honest fundee offers two
    100,000-sat HTLCs, the funder (100,000 sat) sends update_fee 100,000 before reading
    them, then a commitment_signed. Before the fix ``handle()`` raised TransactionError
    building a commitment with a fee of 106,800 sat; now the update_fee is refused and
    the channel fails cleanly, everything still claimable on chain."""
    machine = MaliciousPeer()
    machine.open("b", 900_000_000, 1000)
    machine.honest_adds_a_burst(100_000_000, 2)
    machine.peer_fee_spike(100_000, 0)
    machine.check_step()
    assert machine.h.channel.state is ChannelState.FAILED
    machine.check_onchain()


def test_persist_is_last_check_is_real() -> None:
    """The Watch-before-Persist check the pair runs on every honest action list fails
    when the order is wrong."""
    import pytest

    w = Watch("revoked_commitment", b"\x00" * 32, commitment_number=0)
    p = Persist(1, {})
    check_watches_before_persist([w, p])
    with pytest.raises(AssertionError):
        check_watches_before_persist([p, w])
