"""Random schedules of two honest parties over a faulty link (hypothesis stateful).

Each step is one of: an add / fulfill / fail / fee update / commit by either side, the
delivery of a few in-flight messages from either side (so the two directions interleave
arbitrarily), a duplicated delivery, a disconnect followed later by channel_reestablish,
and a crash of either side, which restarts from exactly its last ``Persist``.

``ChannelPair`` checks rule 1 and "never persist a revoked commitment as current" on
every action; after every step the invariants below hold; at the end (and whenever the
``quiesce`` rule fires) the link is drained to quiescence and both sides must hold the
same latest commitments.
"""

from __future__ import annotations

import copy

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocol.config import LocalConfig
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.table import ChannelState, LinkState
from tests.protocol.pair import ChannelPair, hash_of, preimage_of

SIDES = st.sampled_from(["a", "b"])
# Dust (trimmed), small, medium, large HTLCs.
AMOUNTS = st.sampled_from([700_000, 1_000_000, 3_000_000, 20_000_000, 90_000_000])
FEERATES = st.sampled_from([253, 750, 1000, 2000, 4000, 12000])
CONFIG = LocalConfig(max_accepted_htlcs=12, channel_reserve_sat=10_000,
                     max_dust_htlc_exposure_msat=5_000_000)


class ChannelSchedules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pair = ChannelPair(config_a=CONFIG, config_b=CONFIG)
        self.counter = 0
        self.preimages: dict[bytes, bytes] = {}

    # -- commands ------------------------------------------------------------------------

    def _command(self, name: str, fn: object) -> None:
        p = self.pair.party(name)
        before = p.channel.snapshot()
        try:
            self.pair.do(name, fn)  # type: ignore[arg-type]
        except LocalProtocolError:
            assert p.channel.snapshot() == before, "refused command changed the state"

    @rule(side=SIDES, amount=AMOUNTS, cltv=st.integers(1, 200))
    def add(self, side: str, amount: int, cltv: int) -> None:
        self.counter += 1
        pre = preimage_of(self.counter)
        self.preimages[hash_of(pre)] = pre
        self._command(side, lambda c: c.add_htlc(amount, hash_of(pre), self.pair.height + cltv,
                                                 height=self.pair.height))

    @rule(side=SIDES, amount=AMOUNTS, cltv=st.integers(1, 200))
    def add_another(self, side: str, amount: int, cltv: int) -> None:
        self.add(side, amount, cltv)  # a second rule doubles the weight of adds

    @rule(side=SIDES, pick=st.integers(0, 50), fulfill=st.booleans())
    def settle_another(self, side: str, pick: int, fulfill: bool) -> None:
        self.settle(side, pick, fulfill)

    @rule(side=SIDES, pick=st.integers(0, 50), fulfill=st.booleans())
    def settle(self, side: str, pick: int, fulfill: bool) -> None:
        ch = self.pair.party(side).channel
        if ch.state not in (ChannelState.NORMAL, ChannelState.SHUTDOWN):
            return
        pending = [h for h in ch.received_htlcs() if h[0] % 3 != pick % 3]
        for htlc_id, _, payment_hash, _ in pending[: 1 + pick % 6]:
            if fulfill:
                pre = self.preimages[payment_hash]
                self._command(side, lambda c, i=htlc_id, pre=pre: c.fulfill_htlc(i, pre))
            else:
                self._command(side, lambda c, i=htlc_id: c.fail_htlc(i, b"no route"))

    @rule(feerate=FEERATES)
    def update_fee(self, feerate: int) -> None:
        self._command("a", lambda c: c.update_fee(feerate))

    @rule(blocks=st.integers(1, 6))
    def mine(self, blocks: int) -> None:
        """Time passes: HTLCs added at the old height may arrive too close to expiry and
        are then failed back (policy), never refused."""
        self.pair.height += blocks

    @rule(side=SIDES)
    def commit(self, side: str) -> None:
        if self.pair.party(side).channel.can_commit():
            self.pair.do(side, lambda c: c.commit())

    # -- the link ------------------------------------------------------------------------

    @rule(side=SIDES, n=st.integers(1, 4))
    def deliver(self, side: str, n: int) -> None:
        p = self.pair.party(side)
        for _ in range(n):
            if not p.outbox:
                return
            self.pair.deliver_one(p)

    @rule(side=SIDES)
    def duplicate(self, side: str) -> None:
        """The link delivers a message twice: the copy must be refused, unchanged."""
        p = self.pair.party(side)
        if not p.outbox or p.outbox[0].WhichOneof("body") in ("update_fee", "channel_ready",
                                                             "shutdown"):
            return  # update_fee is not idempotent on the wire (BOLT #2 has no id for it)
        msg = copy.deepcopy(p.outbox[0])
        self.pair.deliver_one(p)
        receiver = self.pair.other(p).channel
        before = receiver.snapshot()
        try:
            receiver.handle(msg, height=self.pair.height)
        except RemoteProtocolError as exc:
            assert receiver.snapshot() == before
            if exc.disposition is Disposition.WARN:
                self.pair.disconnect()
        else:
            raise AssertionError(f"duplicate {msg.WhichOneof('body')} accepted")

    @rule(side=SIDES, k=st.integers(0, 4), other_commits=st.booleans(),
          stay_down=st.integers(0, 4))
    def commit_then_cut(self, side: str, k: int, other_commits: bool, stay_down: int) -> None:
        """Commit, let ``k`` messages through (alternating), maybe commit on the other
        side too, then lose the link: commitment_signed and revoke_and_ack in flight in
        every combination, the case channel_reestablish's retransmission rules are for."""
        p = self.pair.party(side)
        q = self.pair.other(p)
        if p.channel.can_commit():
            self.pair.do(side, lambda c: c.commit())
        for i in range(k):
            sender = p if i % 2 == 0 else q
            if sender.outbox and self.pair.a.channel.link is LinkState.UP:
                self.pair.deliver_one(sender)
        if other_commits and q.channel.can_commit():
            self.pair.do(q.name, lambda c: c.commit())
        self.disconnect(stay_down)

    @rule(stay_down=st.integers(0, 4))
    def disconnect(self, stay_down: int) -> None:
        self.pair.disconnect()
        if stay_down:  # mostly reconnect at once; sometimes stay down for a while
            self.pair.reconnect(exchange=stay_down > 1)

    @precondition(lambda self: self.pair.a.channel.link is LinkState.DOWN)
    @rule()
    def reconnect(self) -> None:
        self.pair.reconnect()

    @rule(side=SIDES)
    def restart(self, side: str) -> None:
        self.pair.restart(side)
        self.pair.reconnect(exchange=True)

    @rule()
    def quiesce(self) -> None:
        self.pair.settle()
        self.pair.check_same_commitments()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def balances_add_up(self) -> None:
        self.pair.check_invariants()

    @invariant()
    def never_failed(self) -> None:
        for p in (self.pair.a, self.pair.b):
            assert p.channel.state is ChannelState.NORMAL, p.channel.state

    def teardown(self) -> None:
        pair = self.pair
        pair.settle()
        pair.check_same_commitments()
        pair.check_invariants()
        # Whatever the history, the channel then closes cooperatively: resolve every HTLC,
        # shut down, negotiate, and both publish the same closing transaction.
        pair.do("b", lambda c: c.shutdown())
        for _ in range(20):
            for p in (pair.a, pair.b):
                for htlc_id, _, payment_hash, _ in p.channel.received_htlcs():
                    pre = self.preimages[payment_hash]
                    pair.do(p.name, lambda c, i=htlc_id, pre=pre: c.fulfill_htlc(i, pre))
            pair.settle()
            if pair.a.channel.state is ChannelState.CLOSED:
                break
        assert pair.a.channel.state is ChannelState.CLOSED is pair.b.channel.state
        assert pair.a.broadcasts[-1].raw_tx == pair.b.broadcasts[-1].raw_tx


TestChannelSchedules = ChannelSchedules.TestCase
