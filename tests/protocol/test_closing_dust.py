"""Cooperative close between two parties with different dust limits (issue 11): the
negotiation ends the same way on both sides, decided by ``channel.closing``'s three
cases (an output kept by both, removed by both, or below the other side's limit only).

In the third case the owner of the output fails the channel with its own commitment,
which keeps the output (trimmed by the owner's own limit); nobody signs it away into
the closing fee, and the other side, whose commitment would trim it, never goes first.
"""

from __future__ import annotations

import pytest

from channel.tx import Tx
from protocol.actions import ChannelFailed
from protocol.config import LocalConfig
from protocol.errors import Disposition, RemoteProtocolError
from protocol.table import ChannelState
from tests.protocol.pair import ChannelPair

HIGH_DUST_SAT = 1_000
LOW_DUST_SAT = 546


def close(pair: ChannelPair) -> RemoteProtocolError | None:
    """a (the funder) asks to close; deliver until quiet. Returns the refusal that
    would fail the channel (its receiver is b in these tests), if any."""
    pair.do("a", lambda c: c.shutdown())
    try:
        pair.settle()
    except RemoteProtocolError as exc:
        assert exc.disposition is Disposition.CLOSE
        return exc
    return None


def outputs_of(raw_tx: bytes) -> list[int]:
    return sorted(o.amount_sat for o in Tx.parse(raw_tx).outputs)


@pytest.mark.parametrize("fundee_sat,outputs", [
    (LOW_DUST_SAT - 1, 1), (LOW_DUST_SAT, 1), (LOW_DUST_SAT + 1, 1),
    (HIGH_DUST_SAT - 1, 1), (HIGH_DUST_SAT, 2), (HIGH_DUST_SAT + 1, 2)])
def test_fundee_with_the_higher_limit(fundee_sat: int, outputs: int) -> None:
    """b's own limit is the higher: below it b removes its own output, and a accepts
    that variant; at it, both keep it. Both broadcast the very same transaction."""
    pair = ChannelPair(push_msat=fundee_sat * 1000,
                       config_a=LocalConfig(dust_limit_sat=LOW_DUST_SAT),
                       config_b=LocalConfig(dust_limit_sat=HIGH_DUST_SAT))
    assert close(pair) is None
    assert pair.a.channel.state is ChannelState.CLOSED is pair.b.channel.state
    assert pair.a.broadcasts[-1].raw_tx == pair.b.broadcasts[-1].raw_tx
    amounts = outputs_of(pair.a.broadcasts[-1].raw_tx)
    assert len(amounts) == outputs
    assert (fundee_sat in amounts) is (outputs == 2)


@pytest.mark.parametrize("fundee_sat,conflict", [
    (LOW_DUST_SAT - 1, False), (LOW_DUST_SAT, True), (LOW_DUST_SAT + 1, True),
    (HIGH_DUST_SAT - 1, True), (HIGH_DUST_SAT, False), (HIGH_DUST_SAT + 1, False)])
def test_funder_with_the_higher_limit(fundee_sat: int, conflict: bool) -> None:
    """a's limit is the higher: between the two limits b's output is one a must remove
    and b will not give up. a proposes without it (BOLT #3 leaves b the choice); b
    refuses, saying why, and fails the channel with its own commitment, which still pays
    it. Outside that range both sign the same transaction."""
    pair = ChannelPair(push_msat=fundee_sat * 1000,
                       config_a=LocalConfig(dust_limit_sat=HIGH_DUST_SAT),
                       config_b=LocalConfig(dust_limit_sat=LOW_DUST_SAT))
    refused = close(pair)
    if not conflict:
        assert refused is None
        assert pair.a.channel.state is ChannelState.CLOSED is pair.b.channel.state
        assert pair.a.broadcasts[-1].raw_tx == pair.b.broadcasts[-1].raw_tx
        assert (fundee_sat in outputs_of(pair.a.broadcasts[-1].raw_tx)) is (
            fundee_sat >= HIGH_DUST_SAT)
        return
    assert refused is not None and "dust limit" in refused.message
    assert not pair.b.broadcasts and not pair.a.channel.d.closing_txid
    pair.do("b", lambda c: c.fail(refused.message))  # the driver fails the channel
    assert pair.b.channel.state is ChannelState.FAILED
    (force,) = pair.b.broadcasts
    assert fundee_sat in outputs_of(force.raw_tx)  # b's commitment pays b's output


def test_funder_output_below_the_peers_limit_fails_before_signing() -> None:
    """a (funder, limit 546) keeps 3,000 sat; b's limit is 5,000. At any closing fee
    (at most the 724-sat commitment fee) a's output is between the limits: b must
    remove it, a does not give it up. a fails the channel before sending any
    closing_signed, with its commitment, which pays a's 2,276 sat. (Before, a proposed
    a transaction b could not sign: b failed the channel with b's commitment, whose
    to_remote of 2,276 sat is below b's limit: trimmed, lost to a.)"""
    pair = ChannelPair(push_msat=997_000_000, config_b=LocalConfig(dust_limit_sat=5_000))
    pair.do("a", lambda c: c.shutdown())
    pair.settle()
    a = pair.a.channel
    assert a.state is ChannelState.FAILED
    assert not any(m.WhichOneof("body") == "closing_signed" for m in pair.b.outbox)
    (force,) = pair.a.broadcasts
    assert force.reason.startswith("force close")
    assert 3_000 - 724 in outputs_of(force.raw_tx)
    assert pair.b.channel.state is ChannelState.FAILED  # a's error reached b
    (failed,) = pair.events_of("a", ChannelFailed)
    assert "below the peer's dust limit of 5000 sat" in failed.reason
