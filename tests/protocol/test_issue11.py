"""Issue 11: a peer that signs its own malicious states. One test (or a few) per finding,
each failing before its fix: the malicious side is a real ``Channel`` whose own rules are
switched off (``tests.protocol.lax``), so what it sends is well formed and validly
signed; the honest side must refuse it with ``RemoteProtocolError`` and change nothing,
or handle it without harm."""

from __future__ import annotations

import copy
import json

import pytest

from channel.commitment import Side
from proto import peer_pb2
from protocol.actions import (
    Broadcast,
    ChannelClosed,
    ChannelFailed,
    HtlcDeadline,
    Persist,
    Send,
    Watch,
)
from protocol.config import (
    CLOSING_CONFIRM_DEADLINE_BLOCKS,
    FULFILLED_HTLC_DEADLINE_BLOCKS,
    OFFERED_HTLC_GRACE_BLOCKS,
    InvalidConfig,
    LocalConfig,
)
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.table import ChannelState
from tests.protocol.lax import lax
from tests.protocol.pair import HEIGHT, P2WPKH_A, ChannelPair, hash_of, preimage_of

CLOSE, WARN = Disposition.CLOSE, Disposition.WARN


def refused_delivery(pair: ChannelPair, sender_name: str,
                     disposition: Disposition = CLOSE) -> RemoteProtocolError:
    """Deliver ``sender``'s next message; it must be refused, the receiver unchanged."""
    sender = pair.party(sender_name)
    receiver = pair.other(sender)
    msg = sender.outbox.popleft()
    before = copy.deepcopy(receiver.channel.snapshot())
    with pytest.raises(RemoteProtocolError) as exc:
        receiver.channel.handle(msg, height=pair.height)
    assert receiver.channel.snapshot() == before
    assert exc.value.disposition is disposition, exc.value
    return exc.value


# -- finding 2: a funder makes the fee unpayable ----------


def poor_funder() -> ChannelPair:
    """a (funder) keeps 100,000 sat, b holds 900,000 sat and offers five 100,000-sat
    HTLCs a has not seen yet (uncommitted, or committed but unacknowledged)."""
    pair = ChannelPair(push_msat=900_000_000)
    for n in range(5):
        pair.add("b", 100_000_000, n)
    return pair


def test_crossing_update_fee_counts_our_unacknowledged_adds() -> None:
    """At 80,000 sat/kw a can pay a commitment without HTLCs (57,920 sat) but not one
    with b's five (126,720 sat). Before the fix b accepted the fee (its view left out
    its own adds a had not acknowledged) and then ``b.commit()`` raised
    TransactionError while ``can_commit()`` was true."""
    pair = poor_funder()
    with lax():
        pair.do("a", lambda c: c.update_fee(80_000))
    exc = refused_delivery(pair, "a")
    assert "cannot afford feerate_per_kw 80000" in exc.message
    # The honest side can still sign its pending adds.
    assert pair.b.channel.can_commit()
    pair.do("b", lambda c: c.commit())


def test_crossing_update_fee_after_our_commit() -> None:
    """The same with b's adds committed (in a's next commitment) but not revoked: a
    signs its fee first; b must refuse it before its commitment_signed could make
    ``handle()`` build an unpayable commitment."""
    pair = poor_funder()
    pair.do("b", lambda c: c.commit())
    with lax():
        pair.do("a", lambda c: c.update_fee(80_000))
    refused_delivery(pair, "a")


def crossing_at_20000() -> ChannelPair:
    """a: 100,000 sat at 20,000 sat/kw; b offers eight 100,000-sat HTLCs a has not seen.
    A ninth HTLC from a makes the fee 20 * (724 + 172 * 9) = 45,440 sat, so a may add at
    most 100,000 - 10,000 (reserve) - 45,440 = 44,560 sat; without b's eight the fee
    would be 17,920 sat. (An honest b keeps at most seven unacknowledged against so poor
    a funder, so that a's own fee spike buffer covers them: ``rules.crossing_problem``;
    eight need b's rules off.)"""
    pair = ChannelPair(push_msat=900_000_000, feerate_per_kw=20_000)
    with lax():
        for n in range(8):
            pair.add("b", 100_000_000, n)
    return pair


@pytest.mark.parametrize("amount_msat", [44_560_001, 50_000_000])
def test_peer_add_at_a_high_feerate_crossing_several_of_ours(amount_msat: int) -> None:
    """Before the fix b accepted it: its view left out its own unacknowledged adds."""
    pair = crossing_at_20000()
    with lax():
        pair.add("a", amount_msat, 100)
    exc = refused_delivery(pair, "a")
    assert "sender cannot afford" in exc.message
    pair.do("b", lambda c: c.commit())  # b's own adds still go through


def test_peer_add_at_the_limit_is_accepted_with_our_adds_counted() -> None:
    pair = crossing_at_20000()
    with lax():
        pair.add("a", 44_560_000, 100)
    pair.deliver_one(pair.a)
    assert (Side.REMOTE, 0) in pair.b.channel.d.book.htlcs
    pair.do("b", lambda c: c.commit())


# -- finding 3: what a watcher needs to punish a revoked commitment ----------


def revoked_watches(pair: ChannelPair, name: str) -> list[Watch]:
    return [e for e in pair.party(name).events
            if isinstance(e, Watch) and e.kind == "revoked_commitment"]


def test_revoked_commitment_watch_carries_its_htlc_outputs() -> None:
    """Two HTLCs of a's with one payment hash (one script), one of b's, one trimmed: the
    Watch b gets when a revokes that commitment lists each HTLC output by index, exactly
    as the commitment b signed, and the to_local output; it survives JSON. Before the fix
    it carried only the txid and the number, and the book pruned the HTLCs right after."""
    pair = ChannelPair()
    same = hash_of(preimage_of(1))
    for amount in (2_000_000, 9_000_000):
        pair.do("a", lambda c, amount=amount: c.add_htlc(amount, same, HEIGHT + 40,
                                                         height=HEIGHT))
    pair.add("b", 3_000_000, 2)
    pair.add("a", 500_000, 3)  # trimmed on both commitments
    pair.settle()
    b = pair.b.channel
    n = b.d.remote_ctn
    signed = b.build_remote(n)
    pair.do("a", lambda c: c.update_fee(1100))
    pair.settle()
    watch = next(w for w in revoked_watches(pair, "b") if w.commitment_number == n)
    assert watch.txid == signed.txid
    assert watch.htlc_outputs == signed.htlc_outputs
    assert len(watch.htlc_outputs) == 3
    assert sorted(h.amount_msat for _, h in watch.htlc_outputs) == [2_000_000, 3_000_000,
                                                                     9_000_000]
    for index, h in watch.htlc_outputs:
        assert signed.tx.outputs[index].amount_sat == h.amount_msat // 1000
    assert watch.to_local_output_index == signed.to_local_index is not None
    assert watch.to_local_amount_sat == signed.tx.outputs[signed.to_local_index].amount_sat
    record = json.loads(json.dumps(watch.to_record()))
    assert Watch.from_record(record) == watch


def test_revoked_watch_before_the_persist_that_prunes() -> None:
    """The Persist after a revocation forgets the revoked commitment's HTLCs: the Watch
    must come before it in the action list."""
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(0, preimage_of(1)))
    pair.do("b", lambda c: c.commit())
    pair.deliver_one(pair.b)  # fulfill
    pair.deliver_one(pair.b)  # commitment_signed -> a revokes
    raa = pair.a.outbox[0]
    assert raa.WhichOneof("body") == "revoke_and_ack"
    acts = pair.b.channel.handle(pair.a.outbox.popleft(), height=HEIGHT)
    kinds = [type(a).__name__ for a in acts]
    assert kinds.index("Watch") < kinds.index("Persist"), kinds


def test_revoked_watch_when_to_local_is_dust() -> None:
    """A cheater whose to_local is below the dust limit (b, pushed 300 sat at open)
    still has HTLC outputs to punish: a's Watch lists them and says there is no
    to_local. Before the fix nothing was revocable from the Watch at all."""
    pair = ChannelPair(push_msat=300_000)
    pair.add("a", 5_000_000, 1)
    pair.settle()
    n = pair.a.channel.d.remote_ctn
    assert pair.a.channel.build_remote(n).to_local_index is None
    pair.do("b", lambda c: c.fail_htlc(0, b"no"))
    pair.settle()
    watch = next(w for w in revoked_watches(pair, "a") if w.commitment_number == n)
    assert watch.to_local_output_index is None and watch.to_local_amount_sat == 0
    assert [h.htlc_id for _, h in watch.htlc_outputs] == [0]
    assert watch.htlc_outputs[0][1].offered_by is Side.LOCAL  # a's frame: a offered it


def test_watch_record_refuses_garbage() -> None:
    good = Watch("funding", b"\x01" * 32, output_index=0, script_pubkey=b"\x00\x20" + bytes(32),
                 amount_sat=5).to_record()
    assert Watch.from_record(good).amount_sat == 5
    for broken in ({**good, "kind": "nonsense"}, {k: v for k, v in good.items() if k != "txid"},
                   {**good, "txid": "zz"}, {**good, "htlc_outputs": [[0, {"offered_by": "x"}]]}):
        with pytest.raises(ValueError):
            Watch.from_record(broken)


def test_funding_watch_says_what_to_check() -> None:
    pair = ChannelPair(open_channel=False)
    pair.open(push_msat=0, feerate_per_kw=1000)
    for name in ("a", "b"):
        w = next(e for e in pair.party(name).events if isinstance(e, Watch))
        static = pair.party(name).channel.static
        assert w.kind == "funding" and w.output_index == 0
        assert w.script_pubkey == static.funding_script_pubkey
        assert w.amount_sat == pair.funding_sat


# -- finding 4: dust exposure on update_fee ----------


def three_htlcs_of_b(cap_msat: int) -> ChannelPair:
    """b offers three 4,000-sat HTLCs: outputs at 1,000 sat/kw, all trimmed at 10,000
    (HTLC-timeout fee 6,630 sat): 12,000,000 msat would then go to the miners."""
    pair = ChannelPair(config_b=LocalConfig(max_dust_htlc_exposure_msat=cap_msat))
    for n in range(3):
        pair.add("b", 4_000_000, n)
    pair.settle()
    return pair


def test_update_fee_that_trims_our_htlcs_past_the_cap_is_refused() -> None:
    """Before the fix only adds checked the exposure: b accepted the fee and its three
    HTLCs became miners' fees on chain."""
    pair = three_htlcs_of_b(11_999_999)
    with lax():
        pair.do("a", lambda c: c.update_fee(10_000))
    exc = refused_delivery(pair, "a")
    assert "dust HTLC exposure" in exc.message


def test_update_fee_with_exposure_at_the_cap_is_accepted() -> None:
    pair = three_htlcs_of_b(12_000_000)
    pair.a.channel.d.config = LocalConfig(max_dust_htlc_exposure_msat=12_000_000)
    pair.do("a", lambda c: c.update_fee(10_000))
    pair.settle()
    assert pair.b.channel.d.book.base_feerate_per_kw == 10_000


def test_our_update_fee_past_our_cap_is_refused() -> None:
    """The sending side: a would trim b's HTLCs on its commitment past its own cap."""
    pair = ChannelPair(config_a=LocalConfig(max_dust_htlc_exposure_msat=11_999_999))
    for n in range(3):
        pair.add("b", 4_000_000, n)
    pair.settle()
    before = pair.a.channel.snapshot()
    with pytest.raises(LocalProtocolError, match="dust HTLC exposure"):
        pair.a.channel.update_fee(10_000)
    assert pair.a.channel.snapshot() == before


# -- finding 5: closing fee floor and a close that does not confirm ----------


def negotiating(config_a: LocalConfig | None = None) -> ChannelPair:
    pair = ChannelPair(config_a=config_a)
    pair.do("b", lambda c: c.shutdown())
    pair.deliver_one(pair.b)  # b's shutdown; a replies and, as funder, proposes a fee
    pair.deliver_one(pair.a)  # a's shutdown: a's closing_signed is next on the wire
    return pair


def floor_of(pair: ChannelPair) -> int:
    from protocol import closing

    return closing.min_fee_sat(pair.a.channel, 0)


def test_closing_fee_below_the_relay_floor_is_refused() -> None:
    """Before the fix a funder creeping up from 0 sat got b to agree to a closing
    transaction no node relays."""
    pair = ChannelPair(config_a=LocalConfig(closing_feerate_per_kw=1))
    with lax():
        pair.do("b", lambda c: c.shutdown())
        pair.deliver_one(pair.b)
    pair.deliver_one(pair.a)  # a's shutdown reply
    assert pair.a.outbox[0].closing_signed.fee_satoshis == 0
    exc = refused_delivery(pair, "a", WARN)
    assert "below the relay floor" in exc.message


def test_floor_is_the_relay_minimum_of_the_closing_size() -> None:
    """The closing tx with two P2WPKH outputs: 113 bytes without witness, weight
    4 * 113 + 222 = 674, so 169 vB: 169 sat at 1 sat/vB; 253 sat/kw (our
    min_feerate_per_kw) * 674 = 170 sat is just above it; with min_feerate_per_kw at
    the relay rate's 250 sat/kw the relay minimum (168 < 169) decides."""
    pair = negotiating()
    assert floor_of(pair) == 170
    pair.a.channel.d.config = LocalConfig(min_feerate_per_kw=253)  # (253 is the minimum)
    from protocol import closing

    weight = closing._closing_weight(pair.a.channel, 0)
    assert weight == 674 and -(-weight // 4) == 169


@pytest.mark.parametrize("delta,accepted", [(-1, False), (0, True)])
def test_closing_fee_at_the_floor(delta: int, accepted: bool) -> None:
    pair = ChannelPair(config_a=LocalConfig(closing_feerate_per_kw=1),
                       config_b=LocalConfig(closing_feerate_per_kw=253))
    pair.do("b", lambda c: c.shutdown())
    pair.deliver_one(pair.b)
    pair.deliver_one(pair.a)
    # a proposed its own (clamped) ideal: the floor; b proposes 253 sat/kw, the same.
    assert pair.a.outbox[0].closing_signed.fee_satoshis == floor_of(pair)
    from protocol import closing

    msg = closing._propose(pair.a.channel, floor_of(pair) + delta)[-1]
    assert not accepted or msg.message.closing_signed.fee_satoshis == floor_of(pair)
    pair.a.outbox[0] = msg.message
    if accepted:
        pair.deliver_all()
        assert pair.b.channel.state is ChannelState.CLOSED
    else:
        refused_delivery(pair, "a", WARN)


@pytest.mark.parametrize("delta,accepted", [(0, True), (1, False)])
def test_closing_fee_at_the_ceiling(delta: int, accepted: bool) -> None:
    """BOLT #2 legacy close: at most the base fee of the final commitment (724 weight at
    1,000 sat/kw: 724 sat)."""
    from protocol import closing

    pair = negotiating()
    ceiling = closing.max_fee_sat(pair.a.channel)
    assert ceiling == 724
    pair.a.outbox[0] = closing._propose(pair.a.channel, ceiling + delta)[-1].message
    if accepted:
        pair.deliver_all()
        assert pair.b.channel.state is ChannelState.CLOSED
    else:
        refused_delivery(pair, "a", WARN)


def test_agreed_close_carries_a_confirmation_deadline_and_can_still_force_close() -> None:
    pair = negotiating()
    pair.deliver_all()
    for name in ("a", "b"):
        p = pair.party(name)
        w = next(e for e in p.events if isinstance(e, Watch) and e.kind == "closing")
        closed = next(e for e in p.events if isinstance(e, ChannelClosed))
        assert w.txid == closed.closing_txid
        assert w.deadline_height == HEIGHT + CLOSING_CONFIRM_DEADLINE_BLOCKS == HEIGHT + 144
        assert (w.amount_sat, w.script_pubkey, w.htlc_outputs) == (0, b"", ())
        # What the driver does when the deadline passes unconfirmed: a force close.
        acts = p.channel.fail("closing transaction did not confirm")
        assert any(isinstance(a, Broadcast) and a.reason.startswith("force close")
                   for a in acts)


# -- finding 6: shutdown scripts ----------

P2TR = b"\x51\x20" + b"\x11" * 32
P2WPKH_OTHER = b"\x00\x14" + b"\xcc" * 20


def opened_with_upfront(script: bytes, config_b: LocalConfig | None = None) -> ChannelPair:
    """a announces ``script`` as its upfront_shutdown_script."""
    pair = ChannelPair(open_channel=False, config_b=config_b)
    pair.do("a", lambda c: c.open(funding_sat=pair.funding_sat, push_msat=0,
                                  feerate_per_kw=1000))
    pair.a.outbox[0].open_channel.upfront_shutdown_script = script
    return pair


def test_shutdown_to_another_script_than_the_upfront_one_is_refused() -> None:
    pair = opened_with_upfront(P2WPKH_OTHER)
    pair.deliver_all()
    assert pair.b.channel.d.remote.upfront_shutdown_script == P2WPKH_OTHER
    pair.do("a", lambda c: c.funding_outpoint(b"\x05" * 32, 0))
    pair.deliver_all()
    for name in ("a", "b"):
        pair.do(name, lambda c: c.funding_confirmed())
    pair.deliver_all()
    pair.do("a", lambda c: c.shutdown())  # to P2WPKH_A, not the committed script
    exc = refused_delivery(pair, "a", WARN)
    assert "upfront_shutdown_script" in exc.message


def test_shutdown_to_the_upfront_script_is_accepted() -> None:
    pair = opened_with_upfront(P2WPKH_A)
    pair.deliver_all()
    pair.do("a", lambda c: c.funding_outpoint(b"\x05" * 32, 0))
    pair.deliver_all()
    for name in ("a", "b"):
        pair.do(name, lambda c: c.funding_confirmed())
    pair.deliver_all()
    pair.do("a", lambda c: c.shutdown())
    pair.settle()
    assert pair.b.channel.state is ChannelState.CLOSED


@pytest.mark.parametrize("script", [b"\x6a\x01\x02", b"\x00\x14" + b"\x01" * 19, P2TR])
def test_nonstandard_upfront_script_refuses_the_open(script: bytes) -> None:
    pair = opened_with_upfront(script)
    exc = refused_delivery(pair, "a")
    assert "upfront_shutdown_script" in exc.message


def test_upfront_p2tr_with_anysegwit_is_accepted() -> None:
    pair = opened_with_upfront(P2TR, LocalConfig(option_shutdown_anysegwit=True))
    pair.deliver_one(pair.a)
    assert pair.b.channel.d.remote.upfront_shutdown_script == P2TR


def p2tr_shutdown(ch_id: bytes) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(shutdown=peer_pb2.Shutdown(channel_id=ch_id, scriptpubkey=P2TR))


def test_p2tr_shutdown_refused_without_anysegwit() -> None:
    pair = ChannelPair()
    pair.a.outbox.append(p2tr_shutdown(pair.b.channel.channel_id))
    exc = refused_delivery(pair, "a", WARN)
    assert "option_shutdown_anysegwit" in exc.message


def test_p2tr_shutdown_accepted_with_anysegwit() -> None:
    pair = ChannelPair(config_b=LocalConfig(option_shutdown_anysegwit=True))
    pair.a.outbox.append(p2tr_shutdown(pair.b.channel.channel_id))
    pair.deliver_one(pair.a)
    assert pair.b.channel.d.remote_shutdown_script == P2TR


@pytest.mark.parametrize("script,anysegwit,ok", [
    (b"\x51\x20" + bytes(32), True, True),
    (b"\x60\x28" + bytes(40), True, True),  # OP_16, a 40-byte program
    (b"\x60\x29" + bytes(41), True, False),  # 41 bytes: too long
    (b"\x51\x01" + bytes(1), True, False),  # 1 byte: too short
    (b"\x61\x20" + bytes(32), True, False),  # OP_NOP is no version
    (b"\x51\x21" + bytes(32), True, False),  # push length lies
    (b"\x51\x20" + bytes(32), False, False),
    (b"\x00\x20" + bytes(32), False, True),
    (b"\x00\x20" + bytes(31), False, False),
    (b"\x76\xa9\x14" + bytes(20) + b"\x88\xac", False, True),  # P2PKH
    (b"\x76\xa9\x14" + bytes(20) + b"\x88\xad", False, False),
    (b"\x76\xa9\x15" + bytes(20) + b"\x88\xac", False, False),
    (b"\xa9\x14" + bytes(20) + b"\x87", False, True),  # P2SH
    (b"\xa9\x14" + bytes(20) + b"\x88", False, False),
    (b"\xa9\x15" + bytes(20) + b"\x87", False, False),
    (b"\x00\x14" + bytes(20), False, True),  # P2WPKH
    (b"\x00\x14" + bytes(21), False, False),
    (b"\x01\x14" + bytes(20), False, False),
    (b"\x51\x02" + bytes(2), True, True),  # the shortest v1+ program
])
def test_standard_script_forms(script: bytes, anysegwit: bool, ok: bool) -> None:
    from protocol.closing import standard_script

    assert standard_script(script, anysegwit=anysegwit) is ok


def test_our_p2tr_close_script_needs_anysegwit() -> None:
    pair = ChannelPair()
    pair.a.channel.d.close_script = P2TR
    with pytest.raises(LocalProtocolError, match="anysegwit"):
        pair.a.channel.shutdown()


# -- finding 7: bounded onion and failure reason ----------


@pytest.mark.parametrize("size,accepted", [(0, True), (1366, True), (1367, False)])
def test_onion_routing_packet_bound(size: int, accepted: bool) -> None:
    pair = ChannelPair()
    with lax():
        pair.do("a", lambda c: c.add_htlc(5_000_000, hash_of(preimage_of(1)), HEIGHT + 40,
                                          height=HEIGHT, onion_routing_packet=b"\x00" * size)
                if size <= 1366 else c.add_htlc(5_000_000, hash_of(preimage_of(1)),
                                                HEIGHT + 40, height=HEIGHT))
    pair.a.outbox[0].update_add_htlc.onion_routing_packet = b"\x00" * size
    if accepted:
        pair.deliver_one(pair.a)
        assert pair.b.channel.d.book.htlcs[(Side.REMOTE, 0)].onion == b"\x00" * size
    else:
        exc = refused_delivery(pair, "a")
        assert "onion_routing_packet" in exc.message


@pytest.mark.parametrize("size,accepted", [(1024, True), (1025, False)])
def test_fail_reason_bound(size: int, accepted: bool) -> None:
    pair = ChannelPair()
    pair.add("b", 5_000_000, 1)
    pair.settle()
    pair.a.outbox.append(peer_pb2.PeerMessage(update_fail_htlc=peer_pb2.UpdateFailHtlc(
        channel_id=pair.b.channel.channel_id, id=0, reason=b"\x01" * size)))
    if accepted:
        pair.deliver_one(pair.a)
    else:
        exc = refused_delivery(pair, "a")
        assert "reason" in exc.message


def test_our_own_oversized_onion_and_reason_are_refused() -> None:
    pair = ChannelPair()
    with pytest.raises(LocalProtocolError, match="onion"):
        pair.a.channel.add_htlc(5_000_000, hash_of(preimage_of(1)), HEIGHT + 40,
                                height=HEIGHT, onion_routing_packet=bytes(1367))
    pair.add("a", 5_000_000, 1)
    pair.settle()
    with pytest.raises(LocalProtocolError, match="reason"):
        pair.b.channel.fail_htlc(0, bytes(1025))
    pair.do("b", lambda c: c.fail_htlc(0, bytes(1024)))


# -- also seen: LocalConfig validation ----------


@pytest.mark.parametrize("fields,ok", [
    ({"max_accepted_htlcs": 483}, True),
    ({"max_accepted_htlcs": 484}, False),
    ({"max_accepted_htlcs": 0}, False),
    ({"dust_limit_sat": 354, "channel_reserve_sat": 354}, True),
    ({"dust_limit_sat": 353, "channel_reserve_sat": 354}, False),
    ({"dust_limit_sat": 1000, "channel_reserve_sat": 999}, False),
    ({"htlc_minimum_msat": 0}, False),
    ({"max_htlc_value_in_flight_msat": 0}, False),
    ({"to_self_delay": 0}, False),
    ({"to_self_delay": 2016}, True),
    ({"to_self_delay": 2017}, False),
    ({"to_self_delay": 70_000, "max_to_self_delay": 80_000}, False),
    ({"minimum_depth": 0}, False),
    ({"min_feerate_per_kw": 252}, False),
    ({"max_feerate_per_kw": 252}, False),
    ({"max_dust_htlc_exposure_msat": -1}, False),
    ({"min_funding_sat": 0}, False),
    ({"closing_feerate_per_kw": 0}, False),
    ({"closing_feerate_per_kw": 1}, True),
    ({"max_accepted_htlcs": 1}, True),
    ({"htlc_minimum_msat": 1, "max_htlc_value_in_flight_msat": 1}, True),
    ({"to_self_delay": 1, "minimum_depth": 1}, True),
    ({"to_self_delay": 0xFFFF, "max_to_self_delay": 0xFFFF}, True),
    ({"to_self_delay": 0x10000, "max_to_self_delay": 0x10000}, False),
    ({"min_feerate_per_kw": 253, "max_feerate_per_kw": 253}, True),
    ({"min_feerate_per_kw": 254, "max_feerate_per_kw": 253}, False),
    ({"max_dust_htlc_exposure_msat": 0, "min_funding_sat": 1}, True),
])
def test_local_config_is_validated(fields: dict[str, int], ok: bool) -> None:
    if ok:
        LocalConfig(**fields)
    else:
        with pytest.raises(InvalidConfig):
            LocalConfig(**fields)


# -- also seen: when to go on chain for an HTLC ----------


def test_htlc_deadlines() -> None:
    """Ours: cltv_expiry + 2; the peer's we fulfilled: cltv_expiry - 18; listed by
    ``onchain_deadlines()`` until the HTLC is gone from every commitment."""
    pair = ChannelPair()
    acts = pair.do("a", lambda c: c.add_htlc(5_000_000, hash_of(preimage_of(1)), HEIGHT + 40,
                                             height=HEIGHT))
    assert OFFERED_HTLC_GRACE_BLOCKS == 2 and FULFILLED_HTLC_DEADLINE_BLOCKS == 18
    offered = HtlcDeadline(0, True, hash_of(preimage_of(1)), HEIGHT + 40 + 2)
    assert offered in acts
    assert pair.a.channel.onchain_deadlines() == [offered]
    pair.settle()
    assert pair.b.channel.onchain_deadlines() == []  # not fulfilled yet
    acts = pair.do("b", lambda c: c.fulfill_htlc(0, preimage_of(1)))
    fulfilled = HtlcDeadline(0, False, hash_of(preimage_of(1)), HEIGHT + 40 - 18)
    assert fulfilled in acts
    assert pair.b.channel.onchain_deadlines() == [fulfilled]
    pair.settle()
    assert pair.a.channel.onchain_deadlines() == [] == pair.b.channel.onchain_deadlines()


def test_no_closing_transaction_fails_the_channel_instead_of_raising() -> None:
    """When no closing transaction can be built at all (both outputs under the dust
    limit), negotiation cannot start: the funder fails the channel (its commitment
    goes on chain) instead of raising TransactionError out of ``handle()``."""
    from protocol import closing

    pair = ChannelPair()
    pair.do("b", lambda c: c.shutdown())
    pair.deliver_one(pair.b)
    a = pair.a.channel
    a.d.book.local_base_msat, a.d.book.remote_base_msat = 1_000_000, 999_000_000
    a.d.config = LocalConfig(dust_limit_sat=1_000_000, channel_reserve_sat=1_000_000)
    a._static = None  # our dust limit is now above both outputs
    step = closing.start_negotiation(a, link_up=True)
    assert a.state is ChannelState.FAILED
    assert any(isinstance(x, Broadcast) for x in step)
    # ... and tells the peer, whose side of the channel cannot close cooperatively either
    assert [x.message.WhichOneof("body") for x in step if isinstance(x, Send)] == ["error"]


def test_close_when_the_peer_drops_its_own_dust_output() -> None:
    """b (dust limit 5,000 sat) holds 3,000 sat: its own closing transaction leaves its
    output out, a's (dust limit 546) keeps it. a accepts b's signature for the variant
    without b's output (BOLT #3), and both broadcast that same transaction."""
    pair = ChannelPair(push_msat=3_000_000, config_b=LocalConfig(dust_limit_sat=5000))
    pair.do("a", lambda c: c.shutdown())
    pair.settle()
    assert pair.a.channel.state is ChannelState.CLOSED is pair.b.channel.state
    assert pair.a.broadcasts[-1].raw_tx == pair.b.broadcasts[-1].raw_tx
    from channel.tx import Tx

    assert len(Tx.parse(pair.a.broadcasts[-1].raw_tx).outputs) == 1


# -- the last protocol mutants (docs/mutation.md, seed 12) ----------


def behind_b() -> tuple[ChannelPair, peer_pb2.PeerMessage]:
    """b restored from a backup before two updates; a's channel_reestablish proves it
    (next_revocation_number ahead of b, with b's own secret)."""
    from protocol.channel import Channel

    pair = ChannelPair()
    old_b = copy.deepcopy(pair.b.persisted)
    for n in range(2):
        pair.add("a", 2_000_000, n)
        pair.settle()
    pair.disconnect()
    assert old_b is not None
    pair.b.channel = Channel.restore(old_b)
    pair.b.last_update_id, pair.b.max_revoked = 0, -1
    pair.reconnect()
    return pair, copy.deepcopy(pair.a.outbox[0])


def test_data_loss_proven_by_the_revocation_number_alone() -> None:
    """A peer ahead on next_revocation_number only (its next_commitment_number is the
    one we expect) with the proof: we lost data all the same, so we fail WITHOUT
    broadcasting. Checking 'both numbers ahead' would refuse the message instead, and
    the driver's fail() would publish our revoked commitment."""
    pair, msg = behind_b()
    b = pair.b.channel
    assert msg.channel_reestablish.next_revocation_number > b.d.local_ctn
    msg.channel_reestablish.next_commitment_number = b.d.remote_ctn + 1
    acts = b.handle(msg, height=pair.height)
    assert b.state is ChannelState.FAILED and b.d.data_loss
    assert not any(isinstance(x, Broadcast) for x in acts)
    (failed,) = [x for x in acts if isinstance(x, ChannelFailed)]
    # a valid point is passed on to the sweep, and the reason does not call it invalid
    assert failed.remote_current_point == msg.channel_reestablish.my_current_per_commitment_point
    assert "not a valid point" not in failed.reason


def test_commitment_number_ahead_alone_is_refused_as_unproven() -> None:
    """Only next_commitment_number ahead of what we signed, nothing to prove a loss:
    refused by the data-loss check itself (no later check is reached)."""
    pair = ChannelPair()
    pair.add("a", 2_000_000, 1)
    pair.settle()
    pair.disconnect()
    pair.reconnect()
    b = pair.b.channel
    msg = copy.deepcopy(pair.a.outbox[0])
    assert msg.channel_reestablish.next_revocation_number == b.d.local_ctn
    msg.channel_reestablish.next_commitment_number = b.d.remote_ctn + 2
    with pytest.raises(RemoteProtocolError, match=r"never reached .* without proof"):
        b.handle(msg, height=pair.height)


def test_restart_between_irrevocable_commit_and_policy_fail() -> None:
    """a crashes right after b's revoke_and_ack made b's HTLC irrevocable, before the
    fail for its policy failure (expiry too close) was committed: the restored a knows
    the HTLC, its policy failure and no removal, and fails it again on reestablish
    (``reestablish._resend_removals``). b's other HTLC, acceptable and also just made
    irrevocable, is left alone."""
    from protocol.actions import HtlcFailed

    pair = ChannelPair()
    pair.do("b", lambda c: c.add_htlc(1_000_000, hash_of(preimage_of(1)), HEIGHT + 2,
                                      height=HEIGHT - 50))
    pair.add("b", 2_000_000, 2)
    pair.do("b", lambda c: c.commit())
    a = pair.a
    for _ in range(20):  # deliver, committing only until a's fail comes out
        pair.deliver_one(pair.b if pair.b.outbox else a)
        if any(m.WhichOneof("body") == "update_fail_htlc" for m in a.outbox):
            break
        for p in (a, pair.b):
            if p.channel.can_commit():
                pair.apply(p, p.channel.commit())
    else:
        raise AssertionError("a never failed the HTLC")
    policy_failed = a.d.book.htlcs[(Side.REMOTE, 0)]
    assert policy_failed.add.remote_ctn == a.d.remote_oldest_ctn  # irrevocable just now
    pair.restart("a")
    restored = a.channel.d.book.htlcs[(Side.REMOTE, 0)]
    assert restored.policy_failure and restored.removal is None
    pair.reconnect()
    pair.settle()
    (failed,) = pair.events_of("b", HtlcFailed)
    assert failed.htlc_id == 0 and b"cltv_expiry" in failed.reason
    assert [h[0] for h in a.channel.received_htlcs()] == [1]  # the good one is untouched


def test_peer_failure_acknowledged_in_our_latest_commitment_frees_the_amount() -> None:
    """b (fundee, 400,000 sat) offers 300,000 sat; a fails it; b receives the fail and
    a's commitment_signed and revokes: the fail is in b's latest commitment. The amount
    is b's again for its next add, before a's own commitment drops the HTLC
    (``rules.min_view_pred`` counts an update acknowledged in exactly the oldest
    unrevoked commitment)."""
    pair = ChannelPair()
    htlc_id = pair.add("b", 300_000_000, 1)
    pair.settle()
    pair.do("a", lambda c: c.fail_htlc(htlc_id))
    pair.do("a", lambda c: c.commit())
    pair.deliver_one(pair.a)  # update_fail_htlc
    pair.deliver_one(pair.a)  # commitment_signed: b revokes
    b = pair.b.channel
    removal = next(iter(b.d.book.htlcs.values())).removal
    assert removal is not None
    fail_mark = removal.mark
    assert fail_mark.local_ctn == b.d.local_ctn and fail_mark.remote_ctn is None
    pair.add("b", 300_000_000, 2)  # refused if the freed 300,000 sat were not counted
    pair.settle()
    assert [h[1] for h in pair.a.channel.received_htlcs()] == [300_000_000]


@pytest.mark.parametrize("push_msat,refused", [(-1, True), (0, False)])
def test_negative_push_is_refused_at_minus_one(push_msat: int, refused: bool) -> None:
    pair = ChannelPair(open_channel=False)
    if refused:
        with pytest.raises(LocalProtocolError, match="push_msat is negative"):
            pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=push_msat,
                                          feerate_per_kw=1000))
    else:
        pair.open(push_msat=push_msat, feerate_per_kw=1000)


def test_shutdown_repeated_with_another_script_is_refused() -> None:
    """BOLT #2: a retransmitted shutdown must name the same scriptpubkey."""
    pair = ChannelPair()
    pair.do("b", lambda c: c.shutdown())
    pair.deliver_one(pair.b)
    assert pair.a.channel.d.remote_shutdown_script is not None
    again = peer_pb2.PeerMessage()
    again.shutdown.channel_id = pair.a.channel.channel_id
    again.shutdown.scriptpubkey = P2WPKH_A
    before = pair.a.channel.snapshot()
    with pytest.raises(RemoteProtocolError, match="different scriptpubkey"):
        pair.a.channel.handle(again, height=pair.height)
    assert pair.a.channel.snapshot() == before


@pytest.mark.parametrize("index", [0x10000, 0x10001])
def test_funding_output_index_beyond_16_bits_is_refused(index: int) -> None:
    """The channel_id XORs the output index into two bytes (BOLT #2): 65536 is out."""
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    pair.do("a", lambda c: c.funding_outpoint(b"\x11" * 32, 0))
    msg = pair.a.outbox.popleft()
    msg.funding_created.funding_output_index = index
    with pytest.raises(RemoteProtocolError, match="funding_output_index out of range"):
        pair.b.channel.handle(msg, height=pair.height)


def test_retransmitted_updates_keep_their_original_order() -> None:
    """BOLT #2: after a reconnect the updates a lost commitment_signed covered go again
    "in the same relative order as initially transmitted": here a's add (newer HTLC)
    went before a's fail of b's older HTLC, the reverse of the book's HTLC order."""
    pair = ChannelPair()
    old_id = pair.add("b", 2_000_000, 1)
    pair.settle()
    pair.add("a", 3_000_000, 2)
    pair.do("a", lambda c: c.fail_htlc(old_id))
    pair.do("a", lambda c: c.commit())
    sent = [m.WhichOneof("body") for m in pair.a.outbox]
    assert sent == ["update_add_htlc", "update_fail_htlc", "commitment_signed"]
    pair.disconnect()
    pair.reconnect(exchange=True)
    again = [m.WhichOneof("body") for m in pair.a.outbox]
    assert [k for k in again if k in sent] == sent
    pair.settle()
    pair.check_same_commitments()


def test_one_persist_per_input() -> None:
    """b's reply to a's shutdown: both the receipt and the reply ask to persist; the
    dispatcher writes one snapshot, after the whole input."""
    pair = ChannelPair()
    pair.do("a", lambda c: c.shutdown())
    acts = pair.deliver_one(pair.a)
    assert [type(x) for x in acts if isinstance(x, (Persist, Send))] == [Persist, Send]


@pytest.mark.parametrize("funder_msat,accepted", [(896_000, True), (895_999, False)])
def test_funder_floor_exactly_at_the_fee_of_the_peers_add(funder_msat: int,
                                                          accepted: bool) -> None:
    """a (funder) keeps exactly the fee of a commitment with one HTLC (BOLT #3: weight
    724 + 172 at 1,000 sat/kw: 896 sat). b's add (b's own rules off: it would keep a
    reserve for a) is acceptable to a at that floor, one msat less is not."""
    pair = ChannelPair(push_msat=1_000_000_000 - funder_msat)
    with lax():
        acts = pair.do("b", lambda c: c.add_htlc(100_000_000, hash_of(preimage_of(1)),
                                                 HEIGHT + 40, height=HEIGHT))
    assert isinstance(acts[-1], Send)
    if accepted:
        pair.deliver_one(pair.b)
        assert len(pair.a.channel.d.book.htlcs) == 1
    else:
        exc = refused_delivery(pair, "b")
        assert "could not pay the commitment fee" in exc.message


def test_no_channel_ready_before_the_funding_is_confirmed_on_reconnect() -> None:
    """A reconnect between funding_signed and our own confirmation: channel_reestablish
    only; channel_ready is (re)sent once we have sent it (``local_ready_sent``)."""
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    pair.do("a", lambda c: c.funding_outpoint(b"\x11" * 32, 0))
    pair.deliver_one(pair.a)  # funding_created
    pair.deliver_one(pair.b)  # funding_signed
    assert not pair.a.channel.d.local_ready_sent and not pair.b.channel.d.local_ready_sent
    pair.disconnect()
    pair.reconnect(exchange=True)  # what the two reestablishes trigger stays in flight
    for p in (pair.a, pair.b):
        assert not any(m.WhichOneof("body") == "channel_ready" for m in p.outbox)
    assert pair.a.channel.state is pair.b.channel.state is ChannelState.AWAIT_CHANNEL_READY


def test_funders_uncommitted_adds_count_against_its_next_add() -> None:
    """a (funder, 600,000 sat) offers 400,000 sat, not committed yet: a further 300,000
    sat would overspend it, whatever each amount alone allows (``funder_floor_msat``
    walks the funder's unsettled adds); 150,000 sat more still fits."""
    pair = ChannelPair()
    pair.add("a", 400_000_000, 1)
    with pytest.raises(LocalProtocolError, match="cannot afford"):
        pair.do("a", lambda c: c.add_htlc(300_000_000, hash_of(preimage_of(2)), HEIGHT + 40,
                                          height=HEIGHT))
    pair.add("a", 150_000_000, 3)
    pair.settle()
    assert len(pair.b.channel.received_htlcs()) == 2
