"""Every acceptance limit of ``protocol.rules`` checked on both sides: the last value it
accepts and the first it refuses (issue 11: "almost every limit can move by one or lose
a term without a failing test"). Figures are worked out in each test from the BOLT #3
fee formula (weight 724 + 172 per untrimmed HTLC), so a moved bound, a dropped term
(HTLCs already offered, the fee headroom, whose reserve it is) or a swapped side
changes the answer at the boundary.

The channel: 1,000,000 sat, a funds and keeps 600,000 sat, b has 400,000 sat, 1,000
sat/kw. a demands a reserve of 10,000 sat of b, b demands 20,000 sat of a (different, so
"whose reserve" matters).
"""

from __future__ import annotations

import pytest

from channel.commitment import Side
from protocol import rules
from protocol.book import Htlc, Mark
from protocol.config import LocalConfig
from protocol.errors import LocalProtocolError
from tests.protocol.pair import HEIGHT, ChannelPair, hash_of, preimage_of

LOCAL, REMOTE = Side.LOCAL, Side.REMOTE
CFG_A = LocalConfig(channel_reserve_sat=10_000, max_accepted_htlcs=30, htlc_minimum_msat=2000,
                    max_htlc_value_in_flight_msat=580_000_000)
CFG_B = LocalConfig(channel_reserve_sat=20_000, max_accepted_htlcs=10, htlc_minimum_msat=1000,
                    max_htlc_value_in_flight_msat=590_000_000)
HASH = hash_of(preimage_of(1))


@pytest.fixture
def pair() -> ChannelPair:
    return ChannelPair(config_a=CFG_A, config_b=CFG_B)


def add_problem(pair: ChannelPair, receiver: str, amount_msat: int,
                cltv: int = HEIGHT + 40) -> rules.Problem | None:
    """The receiver's verdict on the peer's next add."""
    ch = pair.party(receiver).channel
    return rules.add_problem(ch.d, ch.static, REMOTE, ch.d.book.next_remote_htlc_id,
                             amount_msat, HASH, cltv, HEIGHT)


def own_add_problem(pair: ChannelPair, sender: str, amount_msat: int,
                    cltv: int = HEIGHT + 40) -> rules.Problem | None:
    ch = pair.party(sender).channel
    return rules.add_problem(ch.d, ch.static, LOCAL, ch.d.book.next_local_htlc_id,
                             amount_msat, HASH, cltv, HEIGHT)


def fee_1000(htlcs: int) -> int:
    """Commitment fee in msat at 1,000 sat/kw with ``htlcs`` untrimmed HTLCs."""
    return (724 + 172 * htlcs) * 1000


# -- htlc_minimum_msat ----------------------------------------------------------------


def test_htlc_minimum_is_the_receivers(pair: ChannelPair) -> None:
    assert add_problem(pair, "b", 1000) is None  # b's minimum
    assert "htlc_minimum_msat" in add_problem(pair, "b", 999).message  # type: ignore[union-attr]
    assert add_problem(pair, "a", 2000) is None  # a's minimum
    assert "htlc_minimum_msat" in add_problem(pair, "a", 1999).message  # type: ignore[union-attr]
    # A sender checks the receiver's minimum, not its own.
    assert own_add_problem(pair, "a", 1000) is None
    assert own_add_problem(pair, "a", 999) is not None
    assert own_add_problem(pair, "b", 1999) is not None


# -- max_htlc_value_in_flight_msat, HTLCs already offered --------------------------------


def test_in_flight_counts_what_is_already_offered(pair: ChannelPair) -> None:
    """b accepts 590,000,000 msat in flight from a in total: with 10,000,000 offered and
    committed, 580,000,000 more is the limit; one msat more is refused for the
    in-flight cap (a's affordability, which 580,000,000 may break, is tested apart)."""
    pair.add("a", 10_000_000, 1)
    pair.settle()
    limit = 590_000_000 - 10_000_000
    p = add_problem(pair, "b", limit + 1)
    assert p is not None and "max_htlc_value_in_flight_msat" in p.message
    p = add_problem(pair, "b", limit)
    assert p is None or "in flight" not in p.message


def test_in_flight_at_the_limit_accepted(pair: ChannelPair) -> None:
    """a accepts 580,000,000 msat from b; b holds 400,000 sat, so in-flight is reached
    through HTLCs already offered: 3 x 150,000,000 plus one more."""
    for n in range(2):
        pair.add("b", 150_000_000, n)
    pair.settle()
    # 300,000,000 in flight; b keeps 100,000 sat (a's reserve for it is 10,000 sat).
    assert add_problem(pair, "a", 90_000_000) is None
    cfg = LocalConfig(channel_reserve_sat=10_000, max_accepted_htlcs=30,
                      htlc_minimum_msat=2000, max_htlc_value_in_flight_msat=389_999_999)
    pair.a.channel.d.config = cfg
    p = add_problem(pair, "a", 90_000_000)
    assert p is not None and "in flight" in p.message
    pair.a.channel.d.config = LocalConfig(channel_reserve_sat=10_000, max_accepted_htlcs=30,
                                          htlc_minimum_msat=2000,
                                          max_htlc_value_in_flight_msat=390_000_000)
    assert add_problem(pair, "a", 90_000_000) is None


# -- max_accepted_htlcs ------------------------------------------------------------------------


def test_max_accepted_is_the_receivers(pair: ChannelPair) -> None:
    """b accepts 10 HTLCs from a; a accepts 30 from b."""
    for n in range(9):
        pair.add("a", 2_000_000, n)
    pair.settle()
    assert add_problem(pair, "b", 2_000_000) is None  # the 10th
    assert own_add_problem(pair, "a", 2_000_000) is None
    pair.add("a", 2_000_000, 9)
    pair.settle()
    p = add_problem(pair, "b", 2_000_000)
    assert p is not None and "max_accepted_htlcs" in p.message
    with pytest.raises(LocalProtocolError, match="max_accepted_htlcs"):
        pair.a.channel.add_htlc(2_000_000, HASH, HEIGHT + 40, height=HEIGHT)
    assert add_problem(pair, "a", 2_000_000) is None  # b -> a: 30 allowed


# -- the sender's reserve, and whose it is -------------------------------------------------------


def test_fundee_keeps_the_reserve_its_peer_demands(pair: ChannelPair) -> None:
    """b (400,000 sat) must keep a's demand, 10,000 sat: 390,000,000 msat is the most it
    can offer (b's own demand of a is 20,000 sat: a swapped reserve gives 380,000,000)."""
    pair.a.channel.d.config = LocalConfig(channel_reserve_sat=10_000, max_accepted_htlcs=30,
                                          htlc_minimum_msat=2000,
                                          max_htlc_value_in_flight_msat=10**12)
    assert add_problem(pair, "a", 390_000_000) is None
    p = add_problem(pair, "a", 390_000_001)
    assert p is not None and "reserve" in p.message
    assert own_add_problem(pair, "b", 390_000_000) is None
    assert own_add_problem(pair, "b", 390_000_001) is not None


def test_funder_keeps_its_reserve_and_the_fee(pair: ChannelPair) -> None:
    """a's add as b judges it: 600,000,000 - 20,000,000 (b's demand) - the fee with one
    HTLC (896,000) = 579,104,000 msat at most."""
    pair.b.channel.d.config = LocalConfig(channel_reserve_sat=20_000, max_accepted_htlcs=10,
                                          htlc_minimum_msat=1000,
                                          max_htlc_value_in_flight_msat=10**12)
    limit = 600_000_000 - 20_000_000 - fee_1000(1)
    assert add_problem(pair, "b", limit) is None
    p = add_problem(pair, "b", limit + 1)
    assert p is not None and "cannot afford" in p.message


def test_funder_headroom_for_the_peers_adds(pair: ChannelPair) -> None:
    """a's own add keeps the fee of a commitment with this HTLC and the HTLCs b may add
    crossing it at the highest feerate: 1/20 of a's 580,000 sat above its reserve pays
    for 168 HTLCs at 172 sat each, capped at the 30 a accepts from b, so 20,000,000 +
    (724 + 172 * 31) * 1000 = 26,056,000 msat must be left: 573,944,000 msat at most
    (more than BOLT #2's buffer, 2 * (724 + 172 * 2) = 2,136 sat)."""
    pair.a.channel.d.remote.max_htlc_value_in_flight_msat = 10**12  # type: ignore[union-attr]
    limit = 600_000_000 - 20_000_000 - fee_1000(31)
    assert own_add_problem(pair, "a", limit) is None
    p = own_add_problem(pair, "a", limit + 1)
    assert p is not None and "headroom" in p.message
    # Each HTLC already in the book is one output more (172 sat), whoever offered it.
    pair.add("b", 2_000_000, 5)
    pair.settle()
    assert own_add_problem(pair, "a", limit - 172_000) is None
    assert own_add_problem(pair, "a", limit - 172_000 + 1) is not None


def test_fundee_checks_the_funder_can_pay(pair: ChannelPair) -> None:
    """b's own add: a must keep b's demand (20,000 sat) plus the fee bound with one more
    HTLC. a is left with 20,896 sat exactly at the limit."""
    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B,
                       push_msat=1_000_000_000 - 20_000_000 - fee_1000(1))
    assert own_add_problem(pair, "b", 2_000_000) is None
    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B,
                       push_msat=1_000_000_000 - 20_000_000 - fee_1000(1) + 1)
    p = own_add_problem(pair, "b", 2_000_000)
    assert p is not None and "funder could not pay" in p.message


# -- CLTV margin and horizon -------------------------------------------------------------------


@pytest.mark.parametrize("delta,ok", [(3, False), (4, True), (2016, True), (2017, False)])
def test_cltv_bounds(pair: ChannelPair, delta: int, ok: bool) -> None:
    """Refused at or below height + 3 and beyond height + 2016 (policy: our own add is
    refused, a peer's is failed back once committed)."""
    ch = pair.b.channel
    htlc = Htlc(REMOTE, 0, 2_000_000, HASH, HEIGHT + delta, b"", Mark(REMOTE, 0))
    problem = rules.policy_problem(ch.d, ch.static, htlc, HEIGHT)
    assert (problem is None) is ok
    assert (own_add_problem(pair, "a", 2_000_000, HEIGHT + delta) is None) is ok


# -- dust exposure -----------------------------------------------------------------------------


def test_dust_exposure_at_the_cap(pair: ChannelPair) -> None:
    """1,000-sat HTLCs are trimmed at 1,000 sat/kw (546 + 663 > 1,000): the fifth brings
    a's default 5,000,000 msat exposure cap to exactly its limit, the sixth past it."""
    for n in range(4):
        pair.add("b", 1_000_000, n)
    pair.settle()
    ch = pair.a.channel
    fifth = Htlc(REMOTE, 4, 1_000_000, HASH, HEIGHT + 40, b"", Mark(REMOTE, 0))
    assert rules.policy_problem(ch.d, ch.static, fifth, HEIGHT) is None
    over = Htlc(REMOTE, 4, 1_000_001, HASH, HEIGHT + 40, b"", Mark(REMOTE, 0))
    p = rules.policy_problem(ch.d, ch.static, over, HEIGHT)
    assert p is not None and "dust HTLC exposure" in p.message


# -- update_fee --------------------------------------------------------------------------------


def test_our_fee_update_keeps_headroom() -> None:
    """a keeps b's 20,000 sat demand plus the fee bound with every HTLC b may add (30):
    at 98,572 sat/kw that bound is 98,572 * 5,884 / 1000 = 579,997 sat, so a holding
    599,997,000 msat is exactly at the limit, and 98,573 sat/kw (580,003 sat) is over."""
    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B, push_msat=1_000_000_000 - 599_997_000)
    ch = pair.a.channel
    assert rules.fee_problem(ch.d, ch.static, LOCAL, 98_572) is None
    p = rules.fee_problem(ch.d, ch.static, LOCAL, 98_573)
    assert p is not None and "cannot afford" in p.message


def test_peer_fee_update_exact() -> None:
    """a keeps 50,000 sat; b demands 20,000: the fee without HTLCs (724 weight) may take
    30,000 sat: 41,437 sat/kw (29,999.9 rounds down to... 30,000) is the most."""
    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B, push_msat=950_000_000)
    ch = pair.b.channel
    assert 724 * 41_437 // 1000 == 30_000 and 724 * 41_438 // 1000 == 30_001
    assert rules.fee_problem(ch.d, ch.static, REMOTE, 41_437) is None
    p = rules.fee_problem(ch.d, ch.static, REMOTE, 41_438)
    assert p is not None and "channel reserve" in p.message


@pytest.mark.parametrize("feerate,ok", [(252, False), (253, True), (100_000, True),
                                        (100_001, False)])
def test_feerate_bounds(feerate: int, ok: bool) -> None:
    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B, push_msat=0)
    ch = pair.b.channel
    assert (rules.fee_problem(ch.d, ch.static, REMOTE, feerate) is None) is ok


# -- opening: the funder pays the first fee ------------------------------------------------------


def test_funder_must_pay_the_first_commitment_fee() -> None:
    from protocol.state import RemoteParams

    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B)
    remote = pair.b.channel.d.remote
    assert isinstance(remote, RemoteParams)
    cfg = CFG_B
    # 724 sat at 1,000 sat/kw: a funder with exactly that passes.
    assert rules.params_problem(cfg, 1_000_000, remote, 1000, 724_000) is None
    p = rules.params_problem(cfg, 1_000_000, remote, 1000, 723_999)
    assert p is not None and "first commitment" in p.message


# -- updates and closing: the order of things -----------------------------------------------------


def test_fulfill_reported_once_across_a_retransmission() -> None:
    """The preimage is reported at the first update_fulfill_htlc; the same fulfill
    re-sent after a reconnect (it was not committed yet) is not reported again."""
    from protocol.actions import HtlcFulfilled

    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(0, preimage_of(1)))
    pair.deliver_one(pair.b)
    assert len(pair.events_of("a", HtlcFulfilled)) == 1
    pair.disconnect()  # uncommitted: both forget it; b re-sends it after reestablish
    pair.reconnect()
    pair.settle()
    assert len(pair.events_of("a", HtlcFulfilled)) == 1
    assert not pair.a.channel.d.book.htlcs  # settled all the same


def test_peer_shutdown_with_its_updates_uncommitted_refused() -> None:
    """BOLT #2: a node MUST NOT send shutdown while its updates are uncommitted: b
    refuses it (and takes it once a's commitment_signed covered the add)."""
    import copy

    from proto import peer_pb2
    from protocol.errors import Disposition, RemoteProtocolError

    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    shutdown = peer_pb2.PeerMessage(shutdown=peer_pb2.Shutdown(
        channel_id=pair.a.channel.channel_id, scriptpubkey=b"\x00\x14" + b"\xaa" * 20))
    pair.deliver_one(pair.a)  # the add, uncommitted
    before = copy.deepcopy(pair.b.channel.snapshot())
    with pytest.raises(RemoteProtocolError, match="uncommitted") as exc:
        pair.b.channel.handle(shutdown, height=HEIGHT)
    assert exc.value.disposition is Disposition.CLOSE
    assert pair.b.channel.snapshot() == before
    pair.do("a", lambda c: c.commit())
    pair.deliver_one(pair.a)  # commitment_signed: now the add is committed
    pair.b.channel.handle(shutdown, height=HEIGHT)
    assert pair.b.channel.d.remote_shutdown_script is not None


def test_our_shutdown_waits_for_our_updates() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    with pytest.raises(LocalProtocolError, match="commit pending updates"):
        pair.a.channel.shutdown()
    pair.do("a", lambda c: c.commit())
    pair.do("a", lambda c: c.shutdown())


def test_actions_are_values() -> None:
    """Actions are frozen: a driver may keep, compare and hash them (a Watch in a set
    of pending watches) without the machine changing them under it."""
    import dataclasses

    from protocol import actions

    for name in ("Send", "Persist", "Watch", "Broadcast", "FundingNeeded", "FundingSigned",
                 "ChannelOpened", "HtlcReceived", "HtlcFulfilled", "HtlcFailed",
                 "HtlcDeadline", "PeerWarning", "ChannelFailed", "ChannelClosed"):
        cls = getattr(actions, name)
        assert cls.__dataclass_params__.frozen, name
    w = actions.Watch("closing", b"\x00" * 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.kind = "funding"  # type: ignore[misc]
    assert {w, actions.Watch("closing", b"\x00" * 32)} == {w}


@pytest.mark.parametrize("push_delta,ok", [(0, True), (1, False)])
def test_our_open_keeps_the_first_fee(push_delta: int, ok: bool) -> None:
    """Our own open_channel: what we keep must pay the first commitment's fee (724 sat
    at 1,000 sat/kw), to the msat."""
    pair = ChannelPair(open_channel=False)
    push = 1_000_000_000 - 724_000 + push_delta
    if ok:
        pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=push,
                                      feerate_per_kw=1000))
    else:
        with pytest.raises(LocalProtocolError, match="first commitment"):
            pair.a.channel.open(funding_sat=1_000_000, push_msat=push, feerate_per_kw=1000)


def test_funder_keeps_the_fee_spike_buffer_when_the_peer_adds_few() -> None:
    """a accepts 2 HTLCs from b and b has offered 2: the fee of 2 crossing HTLCs more
    (1,584 sat with 5) is below BOLT #2's fee spike buffer, the fee at twice the feerate
    with b's 2, this HTLC and one more: 2 * (724 + 172 * 4) = 2,824 sat."""
    cfg_a = LocalConfig(channel_reserve_sat=10_000, max_accepted_htlcs=2)
    pair = ChannelPair(config_a=cfg_a, config_b=CFG_B)
    for n in range(2):
        pair.add("b", 2_000_000, n)
    pair.settle()
    limit = 600_000_000 - 20_000_000 - 2 * fee_1000(4)
    assert own_add_problem(pair, "a", limit) is None
    assert own_add_problem(pair, "a", limit + 1) is not None


@pytest.mark.parametrize("their_dust,ok", [(10_000, True), (10_001, False)])
def test_our_reserve_covers_their_dust_limit(their_dust: int, ok: bool) -> None:
    """BOLT #2: our channel_reserve_satoshis (10,000) must not be below their
    dust_limit_satoshis, or their output at our reserve would be trimmed."""
    from protocol.state import RemoteParams

    pair = ChannelPair(config_a=CFG_A, config_b=CFG_B)
    remote = pair.b.channel.d.remote
    assert isinstance(remote, RemoteParams)
    theirs = RemoteParams(their_dust, remote.max_htlc_value_in_flight_msat, 20_000,
                          remote.htlc_minimum_msat, remote.to_self_delay,
                          remote.max_accepted_htlcs, 3, remote.basepoints)
    p = rules.params_problem(CFG_A, 1_000_000, theirs, 1000, 600_000_000)
    assert (p is None) is ok
    assert ok or "our channel_reserve_satoshis" in p.message  # type: ignore[union-attr]


def test_snapshot_round_trip_with_every_kind_of_pending_update() -> None:
    """A snapshot taken with HTLCs both ways, a removal and a fee update in flight
    restores to the same state (the store keeps only this)."""
    from protocol.channel import Channel
    from protocol.state import from_snapshot, to_snapshot

    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.add("b", 3_000_000, 2)
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(0, preimage_of(1)))
    pair.do("a", lambda c: c.update_fee(1500))
    pair.do("a", lambda c: c.commit())
    for p in (pair.a, pair.b):
        snap = p.channel.snapshot()
        assert to_snapshot(from_snapshot(snap)) == snap
        assert Channel.restore(snap).d.book.fee_updates or p is pair.b
    assert pair.a.channel.d.book.fee_updates[0].feerate_per_kw == 1500


# -- opening ----------------------------------------------------------------------------------


def funding_pair() -> ChannelPair:
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    return pair


@pytest.mark.parametrize("index,ok", [(0xFFFF, True), (0x10000, False)])
def test_funding_output_index_is_16_bits(index: int, ok: bool) -> None:
    """channel_id XORs the index into two bytes: 65,535 is the last usable one."""
    pair = funding_pair()
    if ok:
        pair.do("a", lambda c: c.funding_outpoint(b"\x05" * 32, index))
        pair.deliver_one(pair.a)  # b accepts funding_created
        assert pair.b.channel.d.funding_output_index == index
    else:
        with pytest.raises(LocalProtocolError, match="bad funding outpoint"):
            pair.a.channel.funding_outpoint(b"\x05" * 32, index)


def test_funding_created_for_another_temporary_channel_id_refused() -> None:
    import copy

    from protocol.errors import Disposition, RemoteProtocolError

    pair = funding_pair()
    pair.do("a", lambda c: c.funding_outpoint(b"\x05" * 32, 0))
    msg = pair.a.outbox.popleft()
    msg.funding_created.temporary_channel_id = b"\x08" * 32
    before = copy.deepcopy(pair.b.channel.snapshot())
    with pytest.raises(RemoteProtocolError, match="temporary_channel_id") as exc:
        pair.b.channel.handle(msg, height=HEIGHT)
    assert exc.value.disposition is Disposition.WARN
    assert pair.b.channel.snapshot() == before


def test_default_policy() -> None:
    """The defaults we announce and accept by (each documented in protocol.config)."""
    cfg = LocalConfig()
    assert (cfg.dust_limit_sat, cfg.channel_reserve_sat, cfg.htlc_minimum_msat,
            cfg.to_self_delay, cfg.max_accepted_htlcs, cfg.minimum_depth) == (
        546, 10_000, 1, 144, 30, 3)
    assert (cfg.max_to_self_delay, cfg.min_funding_sat, cfg.max_dust_htlc_exposure_msat,
            cfg.min_feerate_per_kw, cfg.max_feerate_per_kw) == (
        2016, 20_000, 5_000_000, 253, 100_000)
    assert cfg.max_htlc_value_in_flight_msat == 2**63 - 1
    assert cfg.closing_feerate_per_kw is None and cfg.option_shutdown_anysegwit is False


# -- channel_ready and channel_reestablish --------------------------------------------------------


def test_funding_confirmed_twice_sends_channel_ready_once() -> None:
    pair = ChannelPair()
    assert pair.a.channel.funding_confirmed() == []


def test_channel_ready_with_an_invalid_point_refused() -> None:
    import copy

    from protocol.errors import Disposition, RemoteProtocolError

    pair = funding_pair()
    pair.do("a", lambda c: c.funding_outpoint(b"\x05" * 32, 0))
    pair.deliver_all()
    pair.do("a", lambda c: c.funding_confirmed())
    msg = pair.a.outbox.popleft()
    msg.channel_ready.second_per_commitment_point = b"\x04" + b"\x11" * 32
    before = copy.deepcopy(pair.b.channel.snapshot())
    with pytest.raises(RemoteProtocolError, match="invalid second_per_commitment_point") as e:
        pair.b.channel.handle(msg, height=HEIGHT)
    assert e.value.disposition is Disposition.CLOSE
    assert pair.b.channel.snapshot() == before


@pytest.mark.parametrize("number,beyond", [(2**48 - 1, False), (2**48, True)])
def test_reestablish_at_the_48_bit_limit(number: int, beyond: bool) -> None:
    import copy

    from protocol.errors import RemoteProtocolError

    pair = ChannelPair()
    pair.disconnect()
    pair.reconnect()
    msg = copy.deepcopy(pair.a.outbox[0])
    msg.channel_reestablish.next_commitment_number = number
    with pytest.raises(RemoteProtocolError) as exc:
        pair.b.channel.handle(msg, height=HEIGHT)
    assert ("beyond 2**48 - 1" in exc.value.message) is beyond


def test_data_loss_proven_by_the_first_revocation() -> None:
    """The earliest proof: b restored from before its first revocation (local_ctn 0),
    a says next_revocation_number 1 and shows b's secret of commitment 0."""
    import copy

    from protocol.channel import Channel

    pair = ChannelPair()
    old_b = copy.deepcopy(pair.b.persisted)
    pair.add("a", 2_000_000, 1)
    pair.settle()
    pair.disconnect()
    assert old_b is not None
    pair.b.channel = Channel.restore(old_b)
    pair.b.last_update_id, pair.b.max_revoked = 0, -1
    pair.reconnect()
    assert pair.a.outbox[0].channel_reestablish.next_revocation_number == 1
    pair.deliver_one(pair.a)
    assert pair.b.channel.d.data_loss and not pair.b.broadcasts


def test_policy_failure_left_by_a_restart_is_failed_back_after_reestablish() -> None:
    """b's HTLC arrives too close to expiry for a (another height): a fails it back
    once committed. a crashes before that fail is committed: after the restart and the
    reestablish a fails it again, and b learns of it."""
    from protocol.actions import HtlcFailed

    pair = ChannelPair()
    pair.do("b", lambda c: c.add_htlc(1_000_000, HASH, HEIGHT + 2, height=HEIGHT - 50))
    pair.do("b", lambda c: c.commit())
    for _ in range(20):  # until a has sent its fail (on b's revoke_and_ack)
        if any(m.WhichOneof("body") == "update_fail_htlc" for m in pair.a.outbox):
            break
        sender = pair.b if pair.b.outbox else pair.a
        pair.deliver_one(sender)
        for p in (pair.a, pair.b):
            if p.channel.can_commit():
                pair.apply(p, p.channel.commit())
    pair.restart("a")
    pair.reconnect()
    pair.settle()
    (failed,) = pair.events_of("b", HtlcFailed)
    assert b"cltv_expiry" in failed.reason
    assert not pair.a.channel.d.book.htlcs and not pair.b.channel.d.book.htlcs


@pytest.mark.parametrize("funder_msat,ok", [(10_724_000, False), (10_724_001, True)])
def test_initial_outputs_against_the_reserve(funder_msat: int, ok: bool) -> None:
    """20,000 sat funded, 724 sat first fee at 1,000 sat/kw: the funder's output is
    10,000 sat, the fundee's 9,276: both at or below a 10,000-sat reserve is refused;
    one msat more for the funder and its output is above it."""
    assert (rules.initial_reserve_problem(20_000, funder_msat, 1000, 10_000) is None) is ok


def test_snapshot_version_and_malformed_fields() -> None:
    """Stores keep snapshots of version 1; a non-hex field is a ValueError (the
    documented error of from_snapshot), not a TypeError."""
    from protocol.state import from_snapshot

    pair = ChannelPair()
    snap = pair.a.channel.snapshot()
    assert snap["version"] == 1
    for field, value in (("channel_seed", 5), ("funding_txid", None), ("version", 2)):
        with pytest.raises(ValueError):
            from_snapshot({**snap, field: value})
