"""The pair's rule-1 checker (``check_persisted_before_send``) must catch a violation:
each real action list that sends a signature or a secret, replayed with its ``Persist``
moved after the ``Send``, is rejected; the genuine order is accepted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol.actions import Action, Persist, Send, Watch
from protocol.channel import Channel
from tests.protocol.pair import FUNDING_TXID, HEIGHT, ChannelPair, Party


def persist_last(actions: list[Action]) -> list[Action]:
    return ([a for a in actions if not isinstance(a, Persist)]
            + [a for a in actions if isinstance(a, Persist)])


def check_both_orders(pair: ChannelPair, p: Party, actions: list[Action], kind: str) -> None:
    assert any(isinstance(a, Send) and a.message.WhichOneof("body") == kind for a in actions)
    # Watches come before the Persist (a driver stores them first); then the Persist.
    first = next(a for a in actions if not isinstance(a, Watch))
    assert isinstance(first, Persist)
    with pytest.raises(AssertionError, match="before"):
        pair.apply(p, persist_last(actions))
    pair.apply(p, actions)  # the genuine order passes


def produce(p: Party, fn: Callable[[Channel], list[Action]]) -> list[Action]:
    return fn(p.channel)  # actions not yet executed by the pair


def test_checker_catches_funding_messages_sent_before_persist() -> None:
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    acts = produce(pair.a, lambda c: c.funding_outpoint(FUNDING_TXID, 0))
    check_both_orders(pair, pair.a, acts, "funding_created")
    msg = pair.a.outbox.popleft()
    acts = produce(pair.b, lambda c: c.handle(msg, height=HEIGHT))
    check_both_orders(pair, pair.b, acts, "funding_signed")


def test_checker_catches_commitment_signed_and_revoke_and_ack_before_persist() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    acts = produce(pair.a, lambda c: c.commit())
    check_both_orders(pair, pair.a, acts, "commitment_signed")
    pair.deliver_one(pair.a)  # the add
    msg = pair.a.outbox.popleft()
    acts = produce(pair.b, lambda c: c.handle(msg, height=HEIGHT))
    check_both_orders(pair, pair.b, acts, "revoke_and_ack")


def test_checker_catches_closing_signed_before_persist() -> None:
    """A closing_signed keeps the commitment numbers as they were: only the widened
    checker (the persisted proposal) sees it go out before its Persist."""
    pair = ChannelPair()
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)
    msg = pair.b.outbox.popleft()  # b's shutdown reply; a then proposes a closing fee
    acts = produce(pair.a, lambda c: c.handle(msg, height=HEIGHT))
    check_both_orders(pair, pair.a, acts, "closing_signed")
    # b's counter-proposal or agreement is checked as well.
    msg = pair.a.outbox.popleft()
    acts = produce(pair.b, lambda c: c.handle(msg, height=HEIGHT))
    check_both_orders(pair, pair.b, acts, "closing_signed")
