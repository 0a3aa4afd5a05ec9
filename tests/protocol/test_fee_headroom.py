"""The funder's fee headroom (issue 9): what a channel can send, and the peer's adds that
cross the funder's on the wire (the rule and its figures: ``protocol.rules``, module
docstring).

The funder keeps its reserve plus the larger of BOLT #2's fee spike buffer (the fee at
twice the feerate with the HTLCs in the book, its add and one more) and the fee of N
HTLCs more than the book and its add, N being as many HTLCs as 1/20 of its balance above
the reserve pays for (at most what it accepts from the peer). The other side keeps its
adds the funder has not acknowledged within what that headroom pays for, so no race of
honest adds fails a channel, and the receiver's exact check (issue 11) stays as it was.

Figures from the BOLT #3 fee formula (weight 724 + 172 per HTLC output)."""

from __future__ import annotations

import pytest

from channel.commitment import Side
from protocol import rules
from protocol.config import LocalConfig
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.table import ChannelState
from tests.protocol.lax import lax
from tests.protocol.pair import HEIGHT, ChannelPair, hash_of, preimage_of

LOCAL, REMOTE = Side.LOCAL, Side.REMOTE


def fee_sat(feerate_per_kw: int, htlcs: int) -> int:
    return feerate_per_kw * (724 + 172 * htlcs) // 1000


def own_add_problem(pair: ChannelPair, sender: str, amount_msat: int) -> rules.Problem | None:
    ch = pair.party(sender).channel
    return rules.add_problem(ch.d, ch.static, LOCAL, ch.d.book.next_local_htlc_id,
                             amount_msat, hash_of(preimage_of(1)), HEIGHT + 40, HEIGHT)


def peer_add_problem(pair: ChannelPair, receiver: str, amount_msat: int) -> rules.Problem | None:
    ch = pair.party(receiver).channel
    return rules.add_problem(ch.d, ch.static, REMOTE, ch.d.book.next_remote_htlc_id,
                             amount_msat, hash_of(preimage_of(1)), HEIGHT + 40, HEIGHT)


# The defaults: a reserve of 10,000 sat each way; a client accepts 200 HTLCs from the
# hub (client/node.py), the hub 483 from a client (hub/config.py). "send": a client pays
# from the channel it funded (N at most the 200 it accepts); "forward": the hub offers
# over a channel it funded (N at most 483).
# (funding, feerate, HTLCs the funder accepts, most it can add in sat, before this rule)
FIGURES = [
    (100_000, 253, 200, 85_292, 81_071),
    (100_000, 253, 483, 85_292, 68_756),
    (100_000, 2_500, 200, 83_460, 1_760),
    (100_000, 2_500, 483, 83_460, 0),
    (200_000, 253, 200, 181_071, 181_071),
    (200_000, 253, 483, 180_287, 168_756),
    (200_000, 2_500, 200, 178_300, 101_760),
    (200_000, 2_500, 483, 178_300, 0),
]


@pytest.mark.parametrize("funding_sat,feerate,accepted,most_sat,before_sat", FIGURES)
def test_what_a_funder_can_send_and_forward(funding_sat: int, feerate: int, accepted: int,
                                            most_sat: int, before_sat: int) -> None:
    """All of a new channel is the funder's; its largest add is the balance less the
    reserve and the headroom, to the msat: e.g. 100,000 sat at 2,500 sat/kw: 90,000 sat
    above the reserve, 1/20 of it pays 10 HTLCs of 430 sat, so the fee with 11 HTLCs,
    6,540 sat, is kept (BOLT #2's buffer alone is 5,340): 83,460 sat. Before, the fee of
    every HTLC the peer might add was kept (at 2,500 sat/kw, 483 of them: 209,930 sat,
    more than the channel). The receiver takes the largest add and both commit it."""
    cfg_a = LocalConfig(max_accepted_htlcs=accepted)
    pair = ChannelPair(funding_sat=funding_sat, push_msat=0, feerate_per_kw=feerate,
                       config_a=cfg_a, config_b=LocalConfig())
    spare_msat = (funding_sat - 10_000) * 1000
    crossing = min(accepted, spare_msat // (20 * 172 * feerate))
    headroom_sat = max(fee_sat(2 * feerate, 2), fee_sat(feerate, 1 + crossing))
    assert funding_sat - 10_000 - headroom_sat == most_sat
    old_headroom_sat = fee_sat(feerate, 1 + accepted)
    assert max(0, funding_sat - 10_000 - old_headroom_sat) == before_sat
    most = most_sat * 1000
    assert own_add_problem(pair, "a", most) is None
    p = own_add_problem(pair, "a", most + 1)
    assert p is not None and "fee headroom" in p.message
    assert peer_add_problem(pair, "b", most) is None
    pair.add("a", most, 1)
    pair.settle()
    assert pair.a.channel.state is ChannelState.NORMAL is pair.b.channel.state
    pair.check_invariants()
    pair.do("b", lambda c: c.fulfill_htlc(0, preimage_of(1)))
    pair.settle()
    assert pair.b.channel.latest_view(LOCAL).local_msat == most


def test_the_issue9_forward_fits() -> None:
    """The closing note's case: the hub refused to forward 80,000 sat over a 100,000 sat
    channel it funded at 2,500 sat/kw (it wanted 219,930 sat of reserve and headroom)."""
    pair = ChannelPair(funding_sat=100_000, push_msat=0, feerate_per_kw=2_500,
                       config_a=LocalConfig(max_accepted_htlcs=483))
    pair.add("a", 80_000_000, 1)
    pair.settle()
    assert len(pair.b.channel.received_htlcs()) == 1


def rich_funder(feerate: int = 2_500) -> ChannelPair:
    """a funds 1,000,000 sat and keeps 600,000; both demand 10,000 sat of reserve; a
    accepts 483 HTLCs from b. At 2,500 sat/kw 1/20 of a's 590,000 sat above its reserve
    pays for 68 HTLCs (430 sat each)."""
    return ChannelPair(feerate_per_kw=feerate, config_a=LocalConfig(max_accepted_htlcs=483),
                       config_b=LocalConfig(max_accepted_htlcs=483))


def at_the_edge(pair: ChannelPair) -> int:
    """a's largest add (binary search on a's own rule)."""
    lo, hi = 1, pair.a.channel.latest_view(LOCAL).local_msat
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if own_add_problem(pair, "a", mid) is None else (lo, mid - 1)
    return lo


@pytest.mark.parametrize("crossing,fails", [(68, False), (69, True)])
def test_a_burst_of_the_peers_adds_crossing_the_funders_last(crossing: int,
                                                             fails: bool) -> None:
    """a spends all it may (600,000 - 10,000 - the fee with 69 HTLCs, 31,480 sat) while b,
    not having seen it, puts 68 HTLCs in flight: b receives a's add after its own and
    finds a can still pay its reserve and the fee of the 69 (the hub's burst of
    forwards over a client's channel). A 69th is refused by b's own rule; with b's rules
    off, the channel fails: b cannot take a's add any more (a's reserve)."""
    pair = rich_funder()
    edge = at_the_edge(pair)
    assert edge == (600_000 - 10_000 - fee_sat(2_500, 69)) * 1000
    pair.add("a", edge, 1)
    for n in range(68):
        pair.add("b", 3_000_000, 100 + n)  # above dust at 2,500 sat/kw
    if not fails:
        pair.settle()
        assert pair.a.channel.state is ChannelState.NORMAL is pair.b.channel.state
        assert len(pair.a.channel.d.book.htlcs) == 69
        pair.check_invariants()
        return
    with pytest.raises(LocalProtocolError, match="wait for its acknowledgement"):
        pair.do("b", lambda c: c.add_htlc(3_000_000, hash_of(preimage_of(200)), HEIGHT + 40,
                                          height=HEIGHT))
    with lax():
        pair.add("b", 3_000_000, 200)
    with pytest.raises(RemoteProtocolError, match="sender cannot afford"):
        pair.deliver_one(pair.a)


def test_the_peers_burst_grows_once_acknowledged() -> None:
    """b's limit counts the HTLCs a has acknowledged: once a has b's 68, b may put as
    many again in flight (the fee spike buffer part, twice the acknowledged ones, and
    N more)."""
    pair = rich_funder()
    for n in range(68):
        pair.add("b", 2_500_000, n)
    with pytest.raises(LocalProtocolError, match="wait for its acknowledgement"):
        pair.add("b", 2_500_000, 99)
    pair.settle()
    for n in range(68):
        pair.add("b", 2_500_000, 100 + n)
    pair.settle()
    assert len(pair.a.channel.received_htlcs()) == 136


@pytest.mark.parametrize("crossing,fails", [(7, False), (8, True)])
def test_a_poor_funders_buffer_covers_seven_crossing_adds(crossing: int, fails: bool) -> None:
    """a (100,000 sat at 20,000 sat/kw, reserve 10,000) adds at its edge: 1/20 of its
    90,000 sat pays 1 HTLC, so BOLT #2's buffer binds: the fee at 40,000 sat/kw with 2
    HTLCs, 42,720 sat. That pays, at 20,000 sat/kw, a commitment of up to 8 HTLCs (724 +
    172 n <= 2 * 1,068): b may have 7 of its own in flight, not 8 (issue 11's test of
    the crossing adds: with 8, b must refuse a's add, so an honest b never has them)."""
    pair = ChannelPair(push_msat=900_000_000, feerate_per_kw=20_000)
    edge = at_the_edge(pair)
    assert edge == (100_000 - 10_000 - fee_sat(40_000, 2)) * 1000
    pair.add("a", edge, 1)
    for n in range(7):
        pair.add("b", 100_000_000, 100 + n)
    assert fee_sat(20_000, 8) == 42_000 <= 42_720 < fee_sat(20_000, 9)
    if not fails:
        pair.settle()
        assert pair.a.channel.state is ChannelState.NORMAL is pair.b.channel.state
        pair.check_invariants()
        return
    with pytest.raises(LocalProtocolError, match="wait for its acknowledgement"):
        pair.add("b", 100_000_000, 107)
    with lax():
        pair.add("b", 100_000_000, 107)
    with pytest.raises(RemoteProtocolError, match="sender cannot afford"):
        pair.deliver_one(pair.a)


@pytest.mark.parametrize("crossing,fails", [(10, False), (11, True)])
def test_our_fee_update_then_the_peers_adds(crossing: int, fails: bool) -> None:
    """a (100,000 sat at 2,500 sat/kw) raises the fee as far as it may: its reserve plus
    the fee at the new feerate with N = 10 HTLCs (1/20 of 90,000 sat at 430 sat each)
    must stay, so 36,825 sat/kw (90,000 sat of fee; BOLT #2's buffer would be 78,658).
    b, not having seen it, has 10 adds in flight, all its rule allows against a's
    floor (N + 1 with one add of a's that may cross): they fit, exactly. An 11th (b's
    rules off) leaves a short of its reserve: b refuses the update_fee."""
    pair = ChannelPair(push_msat=900_000_000, feerate_per_kw=2_500)
    ch = pair.a.channel
    lo, hi = 2_500, 100_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if rules.fee_problem(ch.d, ch.static, LOCAL, mid) is None else (
            lo, mid - 1)
    assert lo == 36_825 and fee_sat(36_825, 10) == 90_000 < fee_sat(36_826, 10)
    assert fee_sat(2 * 36_825, 2) == 78_658
    pair.do("a", lambda c: c.update_fee(36_825))
    for n in range(10):
        pair.add("b", 80_000_000, 100 + n)
    with pytest.raises(LocalProtocolError, match="wait for its acknowledgement"):
        pair.add("b", 40_000_000, 110)
    if not fails:
        pair.settle()
        assert pair.a.channel.state is ChannelState.NORMAL is pair.b.channel.state
        assert pair.b.channel.d.book.base_feerate_per_kw == 36_825
        pair.check_invariants()
        return
    with lax():
        for n in range(10, crossing):
            pair.add("b", 40_000_000, 100 + n)  # above dust at the new feerate
    with pytest.raises(RemoteProtocolError, match="cannot afford feerate_per_kw"):
        pair.deliver_one(pair.a)
