"""Every invalid input is refused with a clear error and no change of state (DESIGN
rule 4), received messages with ``RemoteProtocolError`` and the disposition BOLT #2
asks for, commands with ``LocalProtocolError``."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from channel.commitment import Side
from proto import peer_pb2
from protocol import commitments
from protocol.actions import HtlcFailed, HtlcReceived
from protocol.book import everything
from protocol.channel import Channel
from protocol.config import LocalConfig
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.table import ChannelState, LinkState
from protocol.updates import add_message
from tests.protocol.pair import FUNDING_TXID, HEIGHT, ChannelPair, Party, hash_of, preimage_of

CLOSE, WARN = Disposition.CLOSE, Disposition.WARN
CFG_B = LocalConfig(htlc_minimum_msat=1000, max_accepted_htlcs=3,
                    max_htlc_value_in_flight_msat=900_000_000)


def refused(ch: Channel, msg: peer_pb2.PeerMessage, disposition: Disposition,
            match: str | None = None) -> RemoteProtocolError:
    before = copy.deepcopy(ch.snapshot())
    link = ch.link
    with pytest.raises(RemoteProtocolError, match=match) as exc:
        ch.handle(msg, height=HEIGHT)
    assert ch.snapshot() == before, "a refused message changed the state"
    assert ch.link is link
    assert exc.value.disposition is disposition, exc.value
    assert exc.value.message
    return exc.value


def local_refused(ch: Channel, fn: Callable[[Channel], object],
                  match: str | None = None) -> None:
    before = copy.deepcopy(ch.snapshot())
    with pytest.raises(LocalProtocolError, match=match):
        fn(ch)
    assert ch.snapshot() == before


def add_msg(ch: Channel, *, id: int | None = None, amount_msat: int = 1_000_000,
            cltv_expiry: int = HEIGHT + 40, payment_hash: bytes | None = None
            ) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(update_add_htlc=peer_pb2.UpdateAddHtlc(
        channel_id=ch.channel_id, id=ch.d.book.next_remote_htlc_id if id is None else id,
        amount_msat=amount_msat, payment_hash=payment_hash or hash_of(preimage_of(99)),
        cltv_expiry=cltv_expiry))


@pytest.fixture
def pair() -> ChannelPair:
    return ChannelPair(config_b=CFG_B)


def intercept(sender: Party, kind: str) -> peer_pb2.PeerMessage:
    """Take ``sender``'s next in-flight message of ``kind`` off the link."""
    for i, m in enumerate(sender.outbox):
        if m.WhichOneof("body") == kind:
            del sender.outbox[i]
            return m
    raise AssertionError(f"no {kind} in flight")


# -- update_add_htlc -------------------------------------------------------------------------


@pytest.mark.parametrize("case,match", [
    (dict(id=1), "expected 0"),  # skips an id
    (dict(amount_msat=0), "amount_msat is 0"),
    (dict(amount_msat=999), "below htlc_minimum_msat"),
    (dict(amount_msat=600_000_000), "cannot afford"),  # more than a's balance
    (dict(amount_msat=595_000_000), "cannot afford"),  # would eat a's reserve
    (dict(amount_msat=900_000_001), "max_htlc_value_in_flight_msat"),
    (dict(cltv_expiry=500_000_000), "not a block height"),
])
def test_bad_add_refused(pair: ChannelPair, case: dict[str, int], match: str) -> None:
    refused(pair.b.channel, add_msg(pair.b.channel, **case), CLOSE, match)


def test_duplicate_htlc_id_refused(pair: ChannelPair) -> None:
    pair.add("a", 1_000_000, 1)
    dup = copy.deepcopy(pair.a.outbox[0])
    pair.deliver_all()
    refused(pair.b.channel, dup, CLOSE, "duplicate or out-of-order")


def test_too_many_htlcs_refused(pair: ChannelPair) -> None:
    for n in range(3):
        pair.add("a", 1_000_000, n)
    pair.deliver_all()
    local_refused(pair.a.channel, lambda c: c.add_htlc(
        1_000_000, hash_of(preimage_of(5)), HEIGHT + 40, height=HEIGHT), "max_accepted_htlcs")
    refused(pair.b.channel, add_msg(pair.b.channel), CLOSE, "max_accepted_htlcs")


def test_malformed_payment_hash_refused(pair: ChannelPair) -> None:
    refused(pair.b.channel, add_msg(pair.b.channel, payment_hash=b"\x01" * 31), WARN, "malformed")


def test_add_after_shutdown_refused(pair: ChannelPair) -> None:
    _committed_htlc(pair)  # keeps the channel in SHUTDOWN (not yet negotiating)
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)
    assert pair.b.channel.state is ChannelState.SHUTDOWN
    refused(pair.b.channel, add_msg(pair.b.channel), CLOSE)
    local_refused(pair.a.channel, lambda c: c.add_htlc(
        1_000_000, hash_of(preimage_of(5)), HEIGHT + 40, height=HEIGHT), "not allowed")


@pytest.mark.parametrize("cltv,b_height", [(HEIGHT, HEIGHT - 50), (HEIGHT + 2, HEIGHT - 50),
                                           (HEIGHT + 2100, HEIGHT + 200)])
def test_cltv_out_of_bounds_is_failed_back_not_committed_to(pair: ChannelPair, cltv: int,
                                                            b_height: int) -> None:
    """Expired, too close or too far for the height a sees. Our own such add is refused;
    the peer's (it saw another height: a block race) is accepted and failed back once
    committed, never reported as received, and no loop of refusals follows."""
    local_refused(pair.a.channel, lambda c: c.add_htlc(
        1_000_000, hash_of(preimage_of(5)), cltv, height=HEIGHT), "cltv_expiry")
    pair.do("b", lambda c: c.add_htlc(1_000_000, hash_of(preimage_of(6)), cltv,
                                      height=b_height))
    pair.settle()
    assert not pair.events_of("a", HtlcReceived)
    (failed,) = pair.events_of("b", HtlcFailed)
    assert b"cltv_expiry" in failed.reason
    pair.check_same_commitments()


def test_dust_exposure_over_limit_is_failed_back() -> None:
    pair = ChannelPair(config_a=LocalConfig(max_dust_htlc_exposure_msat=1_000_000),
                       config_b=LocalConfig(max_dust_htlc_exposure_msat=10_000_000))
    pair.add("b", 600_000, 1)
    pair.add("b", 600_000, 2)  # b's own limit allows it; a's does not
    pair.settle()
    assert len(pair.events_of("a", HtlcReceived)) == 1
    (failed,) = pair.events_of("b", HtlcFailed)
    assert b"dust HTLC exposure" in failed.reason


def test_add_the_funder_cannot_pay_on_the_peers_commitment_refused() -> None:
    """a (funder, 800 sat left) trims a 2,000 sat HTLC on its own commitment (dust limit
    5,000) but not on b's (354): the fee of b's commitment is 896 sat. b's add must be
    refused, or a's next commit() raised TransactionError while signing b's commitment."""
    pair = ChannelPair(push_msat=1_000_000_000 - 800_000, feerate_per_kw=1000,
                       config_a=LocalConfig(dust_limit_sat=5000),
                       config_b=LocalConfig(dust_limit_sat=354))
    a = pair.a.channel
    refused(a, add_msg(a, amount_msat=2_000_000), CLOSE, "could not pay")


def test_fee_the_funder_cannot_pay_on_its_own_commitment_refused() -> None:
    """b trims a's 2,000 sat HTLC on its commitment (dust limit 5,000), a does not: at
    1,200 sat/kw a (1,000 sat left) can pay b's commitment (868 sat) but not its own
    (1,075 sat), which b would have to sign."""
    pair = ChannelPair(push_msat=1_000_000_000 - 1_000_000, feerate_per_kw=253,
                       config_b=LocalConfig(dust_limit_sat=5000))
    b = pair.b.channel
    # b offers it without its own funder-headroom check (a dishonest b could).
    h = b.d.book.add_htlc(Side.LOCAL, 2_000_000, hash_of(preimage_of(1)), HEIGHT + 40, b"")
    pair.b.outbox.append(add_message(b, h))
    pair.settle()
    assert len(pair.a.channel.latest_view(Side.LOCAL).htlcs) == 1
    refused(b, fee_msg(b, 1200), CLOSE, "cannot afford")


# -- update_fulfill_htlc / update_fail_htlc ------------------------------------------------------


def _committed_htlc(pair: ChannelPair) -> int:
    htlc_id = pair.add("a", 5_000_000, 1)
    pair.settle()
    return htlc_id


def fulfill_msg(ch: Channel, htlc_id: int, preimage: bytes) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(update_fulfill_htlc=peer_pb2.UpdateFulfillHtlc(
        channel_id=ch.channel_id, id=htlc_id, payment_preimage=preimage))


def test_fulfill_unknown_id_refused(pair: ChannelPair) -> None:
    _committed_htlc(pair)
    refused(pair.a.channel, fulfill_msg(pair.a.channel, 7, preimage_of(1)), CLOSE, "unknown")


def test_fulfill_wrong_preimage_refused(pair: ChannelPair) -> None:
    htlc_id = _committed_htlc(pair)
    refused(pair.a.channel, fulfill_msg(pair.a.channel, htlc_id, preimage_of(2)), CLOSE,
            "preimage does not match")
    local_refused(pair.b.channel, lambda c: c.fulfill_htlc(htlc_id, preimage_of(2)),
                  "preimage does not match")


def test_fulfill_before_irrevocably_committed_refused(pair: ChannelPair) -> None:
    htlc_id = pair.add("a", 5_000_000, 1)
    pair.do("a", lambda c: c.commit())
    pair.deliver_all()  # b has it in its commitment; a has not revoked yet
    local_refused(pair.b.channel, lambda c: c.fulfill_htlc(htlc_id, preimage_of(1)),
                  "not irrevocably committed")
    refused(pair.a.channel, fulfill_msg(pair.a.channel, htlc_id, preimage_of(1)), CLOSE,
            "not irrevocably committed")


def test_second_removal_refused(pair: ChannelPair) -> None:
    htlc_id = _committed_htlc(pair)
    pair.do("b", lambda c: c.fulfill_htlc(htlc_id, preimage_of(1)))
    msg = copy.deepcopy(pair.b.outbox[0])
    pair.deliver_all()
    refused(pair.a.channel, msg, CLOSE, "already removed")
    fail = peer_pb2.PeerMessage(update_fail_htlc=peer_pb2.UpdateFailHtlc(
        channel_id=pair.a.channel.channel_id, id=htlc_id))
    refused(pair.a.channel, fail, CLOSE, "already removed")
    local_refused(pair.b.channel, lambda c: c.fail_htlc(htlc_id), "already removed")


def test_fail_unknown_id_refused(pair: ChannelPair) -> None:
    fail = peer_pb2.PeerMessage(update_fail_htlc=peer_pb2.UpdateFailHtlc(
        channel_id=pair.a.channel.channel_id, id=3))
    refused(pair.a.channel, fail, CLOSE, "unknown HTLC")


# -- update_fee ----------------------------------------------------------------------------------


def fee_msg(ch: Channel, feerate: int) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(update_fee=peer_pb2.UpdateFee(channel_id=ch.channel_id,
                                                              feerate_per_kw=feerate))


def test_update_fee_from_fundee_refused(pair: ChannelPair) -> None:
    refused(pair.a.channel, fee_msg(pair.a.channel, 2000), CLOSE, "not the funder")
    local_refused(pair.b.channel, lambda c: c.update_fee(2000), "not the funder")


@pytest.mark.parametrize("feerate", [100, 1_000_000])
def test_unreasonable_feerate_refused(pair: ChannelPair, feerate: int) -> None:
    refused(pair.b.channel, fee_msg(pair.b.channel, feerate), CLOSE, "outside")


def test_fee_the_funder_cannot_afford_refused() -> None:
    pair = ChannelPair(push_msat=985_000_000)  # the funder keeps 15,000 sat
    local_refused(pair.a.channel, lambda c: c.update_fee(50_000), "cannot afford")
    refused(pair.b.channel, fee_msg(pair.b.channel, 50_000), CLOSE, "cannot afford")


def test_fee_that_pushes_the_funder_below_its_reserve_refused() -> None:
    """a (funder) keeps 15,000 sat, reserve 10,000: at 10,000 sat/kw the fee (7,240 sat)
    is affordable but leaves a 7,760 sat, below its reserve. b refuses it (as
    core-lightning and LND do) and a's own command refuses it first, nothing changed."""
    pair = ChannelPair(push_msat=985_000_000)
    local_refused(pair.a.channel, lambda c: c.update_fee(10_000), "cannot afford")
    refused(pair.b.channel, fee_msg(pair.b.channel, 10_000), CLOSE, "channel reserve")
    pair.b.channel.handle(fee_msg(pair.b.channel, 3_000), height=HEIGHT)  # 2,172 sat: fine


# -- commitment_signed / revoke_and_ack -----------------------------------------------------------


def _signed(pair: ChannelPair, n_htlcs: int = 2) -> tuple[Channel, peer_pb2.PeerMessage]:
    for n in range(n_htlcs):
        pair.add("a", 5_000_000, n)
    pair.do("a", lambda c: c.commit())
    msg = intercept(pair.a, "commitment_signed")
    pair.deliver_all()
    return pair.b.channel, msg


def test_bad_commitment_signature_refused(pair: ChannelPair) -> None:
    ch, msg = _signed(pair)
    bad = copy.deepcopy(msg)
    bad.commitment_signed.signature = bytes([msg.commitment_signed.signature[0] ^ 1]) + \
        msg.commitment_signed.signature[1:]
    refused(ch, bad, CLOSE, "invalid signature")


def test_bad_htlc_signature_refused(pair: ChannelPair) -> None:
    ch, msg = _signed(pair)
    bad = copy.deepcopy(msg)
    bad.commitment_signed.htlc_signatures[1] = msg.commitment_signed.htlc_signatures[0]
    refused(ch, bad, CLOSE, "HTLC signature")


def test_wrong_number_of_htlc_signatures_refused(pair: ChannelPair) -> None:
    ch, msg = _signed(pair)
    bad = copy.deepcopy(msg)
    del bad.commitment_signed.htlc_signatures[-1]
    refused(ch, bad, CLOSE, "HTLC signatures")


def test_commitment_signed_without_updates_refused(pair: ChannelPair) -> None:
    ch, msg = _signed(pair)
    ch.handle(msg, height=HEIGHT)  # the real one is fine ...
    refused(ch, msg, CLOSE, "without any update")  # ... its replay is not


def test_bad_revocation_refused(pair: ChannelPair) -> None:
    pair.add("a", 5_000_000, 1)
    pair.do("a", lambda c: c.commit())
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.a)
    raa = intercept(pair.b, "revoke_and_ack")
    bad = copy.deepcopy(raa)
    bad.revoke_and_ack.per_commitment_secret = b"\x11" * 32
    refused(pair.a.channel, bad, CLOSE, "does not match")
    bad = copy.deepcopy(raa)
    bad.revoke_and_ack.next_per_commitment_point = b"\x02" + b"\x00" * 32
    refused(pair.a.channel, bad, CLOSE, "next_per_commitment_point")
    pair.a.channel.handle(raa, height=HEIGHT)
    refused(pair.a.channel, raa, CLOSE, "without an outstanding")  # replayed


@pytest.mark.parametrize("secret", [b"\x00" * 32, b"\xff" * 32], ids=["zero", "above-order"])
def test_revocation_secret_outside_the_curve_order_refused(pair: ChannelPair,
                                                            secret: bytes) -> None:
    """32 bytes, so well-formed, but no secp256k1 secret: a typed error, not ValueError."""
    pair.add("a", 5_000_000, 1)
    pair.do("a", lambda c: c.commit())
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.a)
    bad = copy.deepcopy(intercept(pair.b, "revoke_and_ack"))
    bad.revoke_and_ack.per_commitment_secret = secret
    refused(pair.a.channel, bad, CLOSE, "not a valid secret")


# -- link, table, framing -------------------------------------------------------------------------


def test_messages_before_reestablish_refused(pair: ChannelPair) -> None:
    pair.disconnect()
    pair.reconnect()
    ch = pair.b.channel
    assert ch.link is LinkState.REESTABLISHING
    refused(ch, add_msg(ch), WARN, "link is reestablishing")
    reest = copy.deepcopy(pair.a.outbox[0])
    pair.deliver_all()
    refused(ch, reest, WARN, "link is up")  # a second reestablish


def test_reestablish_with_wrong_last_secret_refused(pair: ChannelPair) -> None:
    _committed_htlc(pair)
    pair.disconnect()
    pair.reconnect()
    msg = copy.deepcopy(pair.a.outbox[0])
    msg.channel_reestablish.your_last_per_commitment_secret = b"\x33" * 32
    refused(pair.b.channel, msg, CLOSE, "not our last secret")


@pytest.mark.parametrize("field", ["next_commitment_number", "next_revocation_number"])
def test_reestablish_beyond_48_bit_commitment_numbers_refused(pair: ChannelPair,
                                                              field: str) -> None:
    pair.disconnect()
    pair.reconnect()
    msg = copy.deepcopy(pair.a.outbox[0])
    setattr(msg.channel_reestablish, field, 2**60)
    refused(pair.b.channel, msg, CLOSE, "beyond 2")


def test_out_of_state_messages_refused(pair: ChannelPair) -> None:
    fresh = Channel.inbound(config=LocalConfig(), channel_seed=b"\x09" * 32,
                            chain_hash=pair.a.channel.d.chain_hash, close_script=b"")
    refused(fresh, add_msg(pair.b.channel), CLOSE, "not allowed in state init")
    opened = pair.b.channel
    closing = peer_pb2.PeerMessage(closing_signed=peer_pb2.ClosingSigned(
        channel_id=opened.channel_id, fee_satoshis=100, signature=b"\x01" * 64))
    refused(opened, closing, CLOSE, "not allowed in state normal")
    again = peer_pb2.PeerMessage(funding_signed=peer_pb2.FundingSigned(
        channel_id=opened.channel_id, signature=b"\x01" * 64))
    refused(opened, again, CLOSE, "not allowed")


def test_wrong_channel_id_and_empty_message_refused(pair: ChannelPair) -> None:
    ch = pair.b.channel
    msg = fee_msg(ch, 2000)
    msg.update_fee.channel_id = b"\x44" * 32
    refused(ch, msg, WARN, "another channel")
    msg = add_msg(ch)
    msg.update_add_htlc.channel_id = b"\x44" * 32
    refused(ch, msg, WARN, "another channel")
    msg = add_msg(ch)
    msg.update_add_htlc.ClearField("channel_id")
    refused(ch, msg, WARN, "another channel")
    other_error = peer_pb2.PeerMessage(error=peer_pb2.Error(channel_id=b"\x44" * 32,
                                                            data=b"not yours"))
    refused(ch, other_error, Disposition.IGNORE, "another channel")
    assert ch.state is ChannelState.NORMAL
    shutdown = peer_pb2.PeerMessage(shutdown=peer_pb2.Shutdown(
        channel_id=b"\x44" * 32, scriptpubkey=b"\x00\x14" + b"\x01" * 20))
    refused(ch, shutdown, WARN, "another channel")
    refused(ch, peer_pb2.PeerMessage(), WARN, "empty")


def test_nonstandard_shutdown_script_refused(pair: ChannelPair) -> None:
    ch = pair.b.channel
    msg = peer_pb2.PeerMessage(shutdown=peer_pb2.Shutdown(channel_id=ch.channel_id,
                                                          scriptpubkey=b"\x6a\x01\x02"))
    refused(ch, msg, WARN, "not standard")


def test_bad_closing_signed_refused(pair: ChannelPair) -> None:
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)  # a now proposes
    good = intercept(pair.a, "closing_signed")
    ch = pair.b.channel
    bad = copy.deepcopy(good)
    bad.closing_signed.signature = good.closing_signed.signature[::-1]
    refused(ch, bad, CLOSE, "invalid closing signature")
    bad = copy.deepcopy(good)
    bad.closing_signed.fee_satoshis = 10_000_000
    refused(ch, bad, WARN, "above the final commitment fee")
    ch.handle(good, height=HEIGHT)


# -- opening -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("dust_limit_satoshis", 100, "dust_limit_satoshis"),
    ("channel_reserve_satoshis", 200, "channel_reserve_satoshis"),
    ("to_self_delay", 5000, "to_self_delay"),
    ("push_msat", 10**12, "push_msat"),
    ("max_accepted_htlcs", 484, "max_accepted_htlcs"),
    ("chain_hash", b"\x00" * 32, "another chain"),
    ("funding_pubkey", b"\x02" + b"\xff" * 32, "basepoint"),
    ("feerate_per_kw", 10, "feerate"),
    ("feerate_per_kw", 2_000_000, "feerate"),
    ("max_accepted_htlcs", 0, "max_accepted_htlcs"),
    ("dust_limit_satoshis", 20_000, "dust_limit_satoshis is greater"),
    ("first_per_commitment_point", b"\x02" + b"\xff" * 32, "first_per_commitment_point"),
    ("htlc_basepoint", b"\x04" + b"\x11" * 32, "basepoint"),
    ("funding_satoshis", 19_999, "too small"),
    ("funding_satoshis", 21_000_000 * 10**8 + 1, "money supply"),
])
def test_bad_open_channel_refused(field: str, value: object, match: str) -> None:
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    msg = copy.deepcopy(pair.a.outbox[0])
    setattr(msg.open_channel, field, value)
    refused(pair.b.channel, msg, CLOSE, match)
    assert pair.b.channel.state is ChannelState.INIT


def test_open_with_both_initial_outputs_at_or_below_the_reserve_refused() -> None:
    """BOLT #2: both to_local (funder: 20,000 - 10,000 - 724 fee) and to_remote (push:
    10,000 sat) at or below channel_reserve_satoshis (10,000): refused by the fundee,
    and by the funder's own open() before anything is sent."""
    pair = ChannelPair(open_channel=False)
    local_refused(pair.a.channel, lambda c: c.open(
        funding_sat=20_000, push_msat=10_000_000, feerate_per_kw=1000), "at or below")
    assert not pair.a.outbox
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    msg = copy.deepcopy(pair.a.outbox[0])
    msg.open_channel.funding_satoshis = 20_000
    msg.open_channel.push_msat = 10_000_000
    refused(pair.b.channel, msg, CLOSE, "at or below channel_reserve_satoshis")
    msg.open_channel.push_msat = 9_000_000  # the funder keeps 11,000 - 724 > 10,000: fine
    pair.b.channel.handle(msg, height=HEIGHT)


@pytest.mark.parametrize("field,value,match", [
    ("dust_limit_satoshis", 100, "dust_limit_satoshis"),
    ("dust_limit_satoshis", 20_000, "dust_limit_satoshis is greater"),
    ("channel_reserve_satoshis", 200, "channel_reserve_satoshis"),
    ("channel_reserve_satoshis", 2_000_000, "exceeds the funding"),
    ("channel_reserve_satoshis", 12_500, "at or below channel_reserve_satoshis"),
    ("to_self_delay", 5000, "to_self_delay"),
    ("max_accepted_htlcs", 484, "max_accepted_htlcs"),
    ("max_accepted_htlcs", 0, "max_accepted_htlcs"),
    ("minimum_depth", 1000, "minimum_depth"),
    ("funding_pubkey", b"\x02" + b"\xff" * 32, "basepoint"),
    ("first_per_commitment_point", b"\x03" + b"\xff" * 32, "first_per_commitment_point"),
])
def test_bad_accept_channel_refused(field: str, value: object, match: str) -> None:
    """The funder checks the fundee's parameters as the fundee checked its own (BOLT #2
    accept_channel: "other fields have the same requirements as their counterparts")."""
    pair = ChannelPair(open_channel=False, funding_sat=25_000)
    pair.do("a", lambda c: c.open(funding_sat=25_000, push_msat=12_000_000,
                                  feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    msg = copy.deepcopy(pair.b.outbox[0])
    setattr(msg.accept_channel, field, value)
    refused(pair.a.channel, msg, CLOSE, match)
    assert pair.a.channel.state is ChannelState.AWAIT_ACCEPT
    pair.deliver_one(pair.b)  # the genuine one is accepted afterwards
    assert pair.a.channel.state is ChannelState.AWAIT_FUNDING_OUTPOINT


@pytest.mark.parametrize("kind,field", [
    ("open_channel", "temporary_channel_id"), ("open_channel", "first_per_commitment_point"),
    ("open_channel", "chain_hash"), ("accept_channel", "revocation_basepoint"),
    ("funding_created", "funding_txid"), ("funding_created", "signature"),
])
def test_empty_fixed_size_fields_refused_as_malformed(kind: str, field: str) -> None:
    """proto3 cannot tell an empty bytes field from an absent one; either is malformed."""
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    receiver = {"open_channel": pair.b, "accept_channel": pair.a, "funding_created": pair.b}
    if kind != "open_channel":
        pair.deliver_one(pair.a)
    if kind == "funding_created":
        pair.deliver_one(pair.b)
        pair.do("a", lambda c: c.funding_outpoint(FUNDING_TXID, 0))
    sender = pair.other(receiver[kind])
    msg = copy.deepcopy(sender.outbox[0])
    getattr(msg, kind).ClearField(field)
    refused(receiver[kind].channel, msg, WARN, f"malformed {kind}: {field} is 0 bytes")


def test_funding_created_signed_over_an_empty_funding_txid_refused() -> None:
    """A hostile funder signs the fundee's commitment 0 spending an outpoint with no
    txid: the signature verifies, and b used to accept it (channel_id of 2 bytes, a
    watch on an empty txid)."""
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    a = pair.a.channel
    a.d.funding_txid = b""  # what cmd_funding_outpoint refuses to do
    commitment = a.build_remote(0, a.d.book.view(everything))
    sig = commitments.sign_remote(a.static, a.secrets, commitment).commitment_signature
    msg = peer_pb2.PeerMessage(funding_created=peer_pb2.FundingCreated(
        temporary_channel_id=a.d.temporary_channel_id, funding_output_index=0,
        signature=sig))
    refused(pair.b.channel, msg, WARN, "funding_txid is 0 bytes")
    assert pair.b.channel.state is ChannelState.AWAIT_FUNDING_CREATED


def test_bad_funding_signature_refused() -> None:
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    pair.do("a", lambda c: c.funding_outpoint(b"\x05" * 32, 1))
    msg = copy.deepcopy(pair.a.outbox[0])
    msg.funding_created.signature = b"\x01" * 64
    refused(pair.b.channel, msg, CLOSE, "invalid signature")
    pair.deliver_one(pair.a)  # the genuine one is accepted afterwards
    assert pair.b.channel.state is ChannelState.AWAIT_CHANNEL_READY


# -- commands ------------------------------------------------------------------------------------


def test_refused_commands_change_nothing(pair: ChannelPair) -> None:
    a = pair.a.channel
    local_refused(a, lambda c: c.commit(), "no update to commit")
    local_refused(a, lambda c: c.add_htlc(590_000_000, b"\x01" * 32, HEIGHT + 40, height=HEIGHT),
                  "cannot afford")
    local_refused(a, lambda c: c.fulfill_htlc(0, b"\x00" * 32), "unknown")
    pair.add("a", 1_000_000, 1)
    pair.do("a", lambda c: c.commit())
    pair.add("a", 1_000_000, 2)
    local_refused(a, lambda c: c.commit(), "waiting for revoke_and_ack")
    local_refused(a, lambda c: c.shutdown(), "commit pending updates first")
    pair.disconnect()
    local_refused(a, lambda c: c.add_htlc(1000, b"\x01" * 32, HEIGHT + 40, height=HEIGHT),
                  "link is down")
    local_refused(a, lambda c: c.open(funding_sat=1, push_msat=0, feerate_per_kw=1000),
                  "not allowed in state normal")
