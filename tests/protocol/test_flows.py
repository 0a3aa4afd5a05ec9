"""Deterministic scenarios: opening, batching, fees, retransmission, restarts, data loss
protection, cooperative and forced close."""

from __future__ import annotations

import copy
import json

import pytest

from channel.commitment import Side
from channel.tx import Tx
from proto import peer_pb2
from protocol.actions import (
    Broadcast,
    ChannelClosed,
    ChannelFailed,
    HtlcFailed,
    HtlcFulfilled,
    HtlcReceived,
    Persist,
    Send,
)
from protocol.channel import Channel
from protocol.config import LocalConfig
from protocol.errors import Disposition, RemoteProtocolError
from protocol.table import ChannelState, LinkState
from tests.protocol.pair import ChannelPair, hash_of, preimage_of


def kinds(p: object) -> list[str]:
    return [m.WhichOneof("body") for m in p.outbox]  # type: ignore[attr-defined]


def test_open_then_pay_and_get_paid() -> None:
    pair = ChannelPair()
    pair.check_invariants()
    pair.check_same_commitments()
    htlc_id = pair.add("a", 5_000_000, 1)
    # Not irrevocably committed yet: no HtlcReceived, and fulfilling is refused.
    pair.do("a", lambda c: c.commit())
    pair.deliver_all()
    assert not pair.events_of("b", HtlcReceived)
    pair.settle()
    (received,) = pair.events_of("b", HtlcReceived)
    assert received.amount_msat == 5_000_000 and received.htlc_id == htlc_id
    pair.do("b", lambda c: c.fulfill_htlc(htlc_id, preimage_of(1)))
    pair.settle()
    (fulfilled,) = pair.events_of("a", HtlcFulfilled)
    assert fulfilled.payment_preimage == preimage_of(1)
    pair.check_same_commitments()
    a, b = pair.a.channel.d.book, pair.b.channel.d.book
    assert not a.htlcs and not b.htlcs  # folded into the base balances
    assert a.local_base_msat == 600_000_000 - 5_000_000 == b.remote_base_msat
    # And the other way, failed this time.
    htlc_id = pair.add("b", 7_000_000, 2)
    pair.settle()
    pair.do("a", lambda c: c.fail_htlc(htlc_id, b"unknown payment"))
    pair.settle()
    (failed,) = pair.events_of("b", HtlcFailed)
    assert failed.reason == b"unknown payment" and failed.htlc_id == htlc_id
    assert pair.b.channel.d.book.local_base_msat == 405_000_000


def test_many_updates_from_both_sides_under_one_signature() -> None:
    pair = ChannelPair(config_a=LocalConfig(max_accepted_htlcs=100),
                       config_b=LocalConfig(max_accepted_htlcs=100))
    for n in range(40):
        pair.add("a", 2_000_000 + n, n)
        pair.add("b", 3_000_000 + n, 100 + n)
    pair.deliver_all()  # the adds cross on the link
    pair.do("a", lambda c: c.commit())
    sent = [m for m in pair.a.outbox if m.WhichOneof("body") == "commitment_signed"]
    assert len(sent) == 1
    pair.settle()
    pair.check_same_commitments()
    pair.check_invariants()
    commitment = pair.a.channel.build_local(pair.a.channel.d.local_ctn)
    assert len(commitment.htlc_outputs) == 80
    # Four signatures in all carried 80 adds: a signs, b revokes and signs, a revokes and
    # signs (b's adds), b revokes.
    assert pair.a.channel.d.remote_ctn == 2 and pair.b.channel.d.remote_ctn == 1
    assert len(pair.events_of("a", HtlcReceived)) == 40 == len(pair.events_of("b", HtlcReceived))


def test_persist_precedes_every_signature_and_secret() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    acts = pair.do("a", lambda c: c.commit())
    assert isinstance(acts[0], Persist) and isinstance(acts[1], Send)
    pair.deliver_one(pair.a)  # the add
    msg = pair.a.outbox.pop()
    acts = pair.b.channel.handle(msg, height=pair.height)
    i_persist = next(i for i, x in enumerate(acts) if isinstance(x, Persist))
    i_raa = next(i for i, x in enumerate(acts) if isinstance(x, Send))
    assert i_persist < i_raa
    assert acts[i_raa].message.WhichOneof("body") == "revoke_and_ack"  # type: ignore[union-attr]
    assert acts[i_persist].snapshot["local_ctn"] == 1  # type: ignore[union-attr]


def test_fee_update_only_by_funder_and_applied_to_both_commitments() -> None:
    pair = ChannelPair()
    pair.add("b", 20_000_000, 1)
    pair.do("a", lambda c: c.update_fee(2500))
    pair.settle()
    for ch in (pair.a.channel, pair.b.channel):
        assert ch.latest_view(Side.LOCAL).feerate_per_kw == 2500
        assert ch.latest_view(Side.REMOTE).feerate_per_kw == 2500
    pair.check_same_commitments()


def test_lost_commitment_signed_is_retransmitted_with_its_updates() -> None:
    pair = ChannelPair()
    for n in range(3):
        pair.add("a", 1_000_000 * (n + 1), n)
    pair.do("a", lambda c: c.update_fee(1500))
    pair.do("a", lambda c: c.commit())
    pair.disconnect()  # everything lost
    pair.reconnect(exchange=True)
    # BOLT #2: channel_ready is retransmitted while no commitment followed it.
    assert kinds(pair.a) == ["channel_ready", *["update_add_htlc"] * 3, "update_fee",
                             "commitment_signed"]
    pair.settle()
    pair.check_same_commitments()
    assert len(pair.b.channel.received_htlcs()) == 3


def test_uncommitted_updates_are_forgotten_and_reported() -> None:
    pair = ChannelPair()
    pair.add("a", 1_000_000, 1)
    pair.deliver_all()
    pair.disconnect()
    (dropped,) = pair.events_of("a", HtlcFailed)
    assert dropped.local_reason and dropped.htlc_id == 0
    pair.reconnect()
    pair.settle()
    assert not pair.a.channel.d.book.htlcs and not pair.b.channel.d.book.htlcs
    assert pair.add("a", 1_000_000, 2) == 0  # the id is reused, as the peer expects


def test_lost_fulfill_is_resent_after_reestablish() -> None:
    pair = ChannelPair()
    htlc_id = pair.add("a", 5_000_000, 1)
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(htlc_id, preimage_of(1)))
    pair.disconnect()
    pair.reconnect(exchange=True)
    assert "update_fulfill_htlc" in kinds(pair.b)
    pair.settle()
    assert pair.events_of("a", HtlcFulfilled)
    assert not pair.a.channel.d.book.htlcs


@pytest.mark.parametrize("revoke_first", [True, False])
def test_revoke_and_commit_retransmitted_in_original_order(revoke_first: bool) -> None:
    pair = ChannelPair()
    pair.add("b", 5_000_000, 1)
    pair.add("a", 6_000_000, 2)
    if revoke_first:
        # b's commitment_signed reaches a, a revokes, then a signs b's commitment.
        pair.do("b", lambda c: c.commit())
        pair.deliver_one(pair.b)
        pair.deliver_one(pair.b)
        pair.deliver_one(pair.a)  # a's add
        pair.a.outbox.clear()  # a's revoke_and_ack is lost
        pair.disconnect()
        pair.reconnect(exchange=True)
        pair.settle()
        pair = ChannelPair()
        pair.add("b", 5_000_000, 1)
        pair.do("b", lambda c: c.commit())
        pair.deliver_one(pair.b)
        pair.deliver_one(pair.b)
        pair.do("a", lambda c: c.commit())
        expected = ["revoke_and_ack", "commitment_signed"]
    else:
        # a signs first; then b's commitment_signed arrives and a revokes.
        pair.do("a", lambda c: c.commit())
        pair.deliver_one(pair.a)  # a's add reaches b
        pair.do("b", lambda c: c.commit())
        pair.deliver_one(pair.b)  # b's add
        pair.deliver_one(pair.b)  # b's commitment_signed (a's commitment_signed still lost)
        expected = ["commitment_signed", "revoke_and_ack"]
    assert [k for k in kinds(pair.a) if k in expected] == expected
    pair.disconnect()
    pair.reconnect(exchange=True)
    assert [k for k in kinds(pair.a) if k in expected] == expected
    pair.settle()
    pair.check_same_commitments()


def test_restart_from_persisted_snapshot_resumes() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.do("a", lambda c: c.commit())
    pair.deliver_all()
    pair.restart("b")  # b revoked and persisted; its revoke_and_ack may be lost
    pair.restart("a")
    pair.reconnect()
    pair.settle()
    pair.check_same_commitments()
    assert pair.b.channel.received_htlcs()


def test_snapshot_is_plain_json_and_restores_identically() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.add("b", 700_000, 2)
    pair.settle()
    snap = pair.a.channel.snapshot()
    again = json.loads(json.dumps(snap))
    assert again == snap
    restored = Channel.restore(again)
    assert restored.snapshot() == snap
    assert restored.link is LinkState.DOWN


def test_data_loss_protection_we_are_behind() -> None:
    pair = ChannelPair()
    old_b = copy.deepcopy(pair.b.persisted)
    for n in range(3):
        pair.add("a", 2_000_000, n)
        pair.settle()
    pair.disconnect()
    assert old_b is not None
    pair.b.channel = Channel.restore(old_b)  # b lost its recent state
    pair.b.last_update_id, pair.b.max_revoked = 0, -1  # (the pair's own bookkeeping too)
    pair.reconnect()
    pair.deliver_one(pair.a)  # a's channel_reestablish proves b is behind
    b = pair.b.channel
    assert b.state is ChannelState.FAILED and b.d.data_loss
    (failed,) = pair.events_of("b", ChannelFailed)
    assert not failed.may_broadcast and failed.remote_current_point
    assert not pair.b.broadcasts, "must not broadcast a stale (revoked) commitment"
    assert "error" in kinds(pair.b)
    # a refuses b's stale reestablish, then b's error fails the channel on a's side: a
    # publishes its (latest, never revoked) commitment.
    with pytest.raises(RemoteProtocolError, match="next_commitment_number 1"):
        pair.deliver_one(pair.b)
    assert kinds(pair.b) == ["error"]
    pair.deliver_one(pair.b)
    assert pair.a.channel.state is ChannelState.FAILED
    (bc,) = pair.a.broadcasts
    tx = Tx.parse(bc.raw_tx)
    assert len(tx.inputs[0].witness) == 4


@pytest.mark.parametrize("point", [b"\x02" + b"\xff" * 32, b"\x04" + b"\x11" * 32,
                                   b"\x05" * 33], ids=["off-curve", "prefix-04", "prefix-05"])
def test_data_loss_with_an_invalid_current_point_fails_without_passing_it_on(
        point: bytes) -> None:
    """The proof (our own secret) holds, so b still fails without broadcasting its stale
    commitment, but an invalid my_current_per_commitment_point is not handed on to the
    sweep."""
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
    pair.a.outbox[0].channel_reestablish.my_current_per_commitment_point = point
    pair.deliver_one(pair.a)
    b = pair.b.channel
    assert b.state is ChannelState.FAILED and b.d.data_loss
    (failed,) = pair.events_of("b", ChannelFailed)
    assert not failed.may_broadcast and failed.remote_current_point is None
    assert "not a valid point" in failed.reason
    assert not pair.b.broadcasts


def test_peer_claiming_an_impossible_commitment_number_is_refused() -> None:
    pair = ChannelPair()
    pair.add("a", 2_000_000, 1)
    pair.settle()
    pair.disconnect()
    pair.reconnect()
    forged = copy.deepcopy(pair.a.outbox[0])
    forged.channel_reestablish.next_revocation_number = 10
    forged.channel_reestablish.next_commitment_number = 11
    forged.channel_reestablish.your_last_per_commitment_secret = b"\x55" * 32
    b = pair.b.channel
    before = b.snapshot()
    with pytest.raises(RemoteProtocolError) as exc:
        b.handle(forged, height=pair.height)
    assert exc.value.disposition is Disposition.CLOSE
    assert b.snapshot() == before and b.state is ChannelState.NORMAL
    acts = pair.do("b", lambda c: c.fail(exc.value.message))  # the driver fails the channel
    assert any(isinstance(x, Broadcast) for x in acts)  # we are not behind: publish ours


def _close(pair: ChannelPair) -> None:
    pair.do("a", lambda c: c.shutdown())
    pair.settle()
    assert pair.a.channel.state is ChannelState.CLOSED
    assert pair.b.channel.state is ChannelState.CLOSED
    (ca,), (cb,) = pair.events_of("a", ChannelClosed), pair.events_of("b", ChannelClosed)
    assert ca.closing_txid == cb.closing_txid and ca.fee_sat == cb.fee_sat
    (ba,), (bb,) = pair.a.broadcasts, pair.b.broadcasts
    assert ba.raw_tx == bb.raw_tx
    tx = Tx.parse(ba.raw_tx)
    assert sum(o.amount_sat for o in tx.outputs) + ca.fee_sat <= pair.funding_sat


def test_cooperative_close_waits_for_htlcs_to_drain() -> None:
    pair = ChannelPair()
    htlc_id = pair.add("a", 5_000_000, 1)
    pair.settle()
    pair.do("b", lambda c: c.shutdown())
    pair.deliver_all()
    assert pair.a.channel.state is ChannelState.SHUTDOWN  # one HTLC still in flight
    with pytest.raises(Exception, match="not allowed"):
        pair.add("a", 1_000_000, 2)
    pair.do("b", lambda c: c.fulfill_htlc(htlc_id, preimage_of(1)))
    pair.settle()
    assert pair.a.channel.state is ChannelState.CLOSED
    assert pair.b.channel.state is ChannelState.CLOSED
    assert pair.a.broadcasts[0].raw_tx == pair.b.broadcasts[0].raw_tx


@pytest.mark.parametrize("feerates", [(None, None), (2000, 300), (253, 5000)])
def test_closing_fee_negotiation_converges(feerates: tuple[int | None, int | None]) -> None:
    pair = ChannelPair(config_a=LocalConfig(closing_feerate_per_kw=feerates[0]),
                       config_b=LocalConfig(closing_feerate_per_kw=feerates[1]))
    _close(pair)


def test_close_survives_a_reconnect_during_negotiation() -> None:
    pair = ChannelPair(config_a=LocalConfig(closing_feerate_per_kw=3000),
                       config_b=LocalConfig(closing_feerate_per_kw=253))
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)  # shutdown
    pair.deliver_one(pair.b)  # b's shutdown reply -> a proposes
    pair.deliver_one(pair.a)  # a's first closing_signed -> b counters
    pair.disconnect()
    pair.reconnect()
    pair.settle()
    assert pair.a.channel.state is ChannelState.CLOSED is pair.b.channel.state


def test_force_close_broadcasts_latest_commitment() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.settle()
    acts = pair.do("a", lambda c: c.fail("operator request"))
    assert pair.a.channel.state is ChannelState.FAILED
    (bc,) = [x for x in acts if isinstance(x, Broadcast)]
    tx = Tx.parse(bc.raw_tx)
    assert tx.txid() == pair.a.channel.build_local(pair.a.channel.d.local_ctn).txid
    assert "error" in kinds(pair.a)
    pair.deliver_all()
    assert pair.b.channel.state is ChannelState.FAILED and pair.b.broadcasts


def test_warning_is_reported_and_changes_nothing() -> None:
    pair = ChannelPair()
    before = pair.b.channel.snapshot()
    msg = peer_pb2.PeerMessage(warning=peer_pb2.Warning(channel_id=pair.b.channel.channel_id,
                                                        data=b"careful"))
    acts = pair.b.channel.handle(msg, height=pair.height)
    assert [type(x).__name__ for x in acts] == ["PeerWarning"]
    assert pair.b.channel.snapshot() == before


def test_hash_helpers() -> None:
    assert hash_of(preimage_of(1)) != hash_of(preimage_of(2))


def test_restart_reports_adds_that_were_never_committed() -> None:
    pair = ChannelPair()
    pair.add("b", 1_000_000, 1)
    pair.do("b", lambda c: c.commit())  # persisted with the add committed ...
    pair.add("b", 2_000_000, 2)
    pair.deliver_all()  # ... a's commitment_signed makes b persist the second, uncommitted
    pair.restart("b")
    pair.reconnect()
    dropped = [e for e in pair.b.events if isinstance(e, HtlcFailed) and e.local_reason]
    assert [e.htlc_id for e in dropped] == [1]
    pair.settle()
    pair.check_same_commitments()
