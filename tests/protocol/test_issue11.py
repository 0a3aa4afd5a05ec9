"""Issue 11: a peer that signs its own malicious states. One test (or a few) per finding,
each failing before its fix: the malicious side is a real ``Channel`` whose own rules are
switched off (``tests.protocol.lax``), so what it sends is well formed and validly
signed; the honest side must refuse it with ``RemoteProtocolError`` and change nothing,
or handle it without harm."""

from __future__ import annotations

import copy

import pytest

from channel.commitment import Side
from protocol.errors import Disposition, RemoteProtocolError
from tests.protocol.lax import lax
from tests.protocol.pair import ChannelPair

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


# -- finding 2: a funder makes the fee unpayable ------------------------------------------------


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
    would be 17,920 sat."""
    pair = ChannelPair(push_msat=900_000_000, feerate_per_kw=20_000)
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
