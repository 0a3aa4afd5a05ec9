"""The schedules of ``test_stateful`` against a poor funder that spends to the very edge
of its fee headroom (issue 9): a holds 100,000 sat of 1,000,000 at 4,000 sat/kw (its
headroom pays for 6 crossing HTLCs, fewer at the higher feerates it may set), each side
accepts 40 HTLCs, either side may add the largest amount its own rules allow (or a half
or a third of it) or a burst of adds while the other side's adds are in flight. Two
honest parties never fail the channel: the funder's headroom pays for every add of the
other side's that can cross its own (``protocol.rules``, module docstring), whatever
the interleaving, disconnects and crashes."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from channel.commitment import Side
from protocol import rules
from protocol.config import LocalConfig
from protocol.table import ChannelState
from tests.protocol.pair import ChannelPair, hash_of, preimage_of
from tests.protocol.test_stateful import SIDES, ChannelSchedules

CONFIG = LocalConfig(max_accepted_htlcs=40, channel_reserve_sat=10_000,
                     max_dust_htlc_exposure_msat=5_000_000)


class PoorFunderSchedules(ChannelSchedules):
    def __init__(self) -> None:
        super().__init__()
        self.pair = ChannelPair(push_msat=900_000_000, feerate_per_kw=4_000,
                                config_a=CONFIG, config_b=CONFIG)

    @rule(side=SIDES, count=st.integers(2, 14))
    def burst(self, side: str, count: int) -> None:
        """Many adds in a row before anything is delivered (a hub forwarding a burst)."""
        for _ in range(count):
            self.add(side, 20_000_000, 40)

    @rule(side=SIDES, divisor=st.sampled_from([1, 1, 2, 3]), cltv=st.integers(5, 200))
    def add_at_the_edge(self, side: str, divisor: int, cltv: int) -> None:
        ch = self.pair.party(side).channel
        if ch.state is not ChannelState.NORMAL:
            return
        self.counter += 1
        pre = preimage_of(self.counter)
        self.preimages[hash_of(pre)] = pre
        expiry = self.pair.height + cltv

        def problem(amount: int) -> rules.Problem | None:
            return rules.add_problem(ch.d, ch.static, Side.LOCAL, ch.d.book.next_local_htlc_id,
                                     amount, hash_of(pre), expiry, self.pair.height)

        lo, hi = 0, ch.latest_view(Side.LOCAL).local_msat
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if problem(mid) is None else (lo, mid - 1)
        if lo == 0:
            return
        amount = max(lo // divisor, 1)
        self._command(side, lambda c: c.add_htlc(amount, hash_of(pre), expiry,
                                                 height=self.pair.height))


TestPoorFunderSchedules = PoorFunderSchedules.TestCase
TestPoorFunderSchedules.settings = settings(TestPoorFunderSchedules.settings, max_examples=300)
