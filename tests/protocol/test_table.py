"""Every transition of the table is exercised, and only table moves happen."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest

from proto import peer_pb2
from protocol import channel as channel_module
from protocol.config import LocalConfig
from protocol.errors import LocalProtocolError
from protocol.table import (
    STATE_TRIGGERED,
    TRANSITIONS,
    ChannelState,
    Event,
    LinkState,
    next_state,
)
from tests.protocol.pair import FUNDING_TXID, HEIGHT, ChannelPair, Party, preimage_of

S, E = ChannelState, Event
Seen = set[tuple[ChannelState, Event]]


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    """Record every (state, event) the dispatcher finds allowed in the table."""
    record: Seen = set()

    def spy(state: ChannelState, event: Event) -> ChannelState | None:
        target = next_state(state, event)
        if target is not None:
            record.add((state, event))
        return target

    monkeypatch.setattr(channel_module, "next_state", spy)
    yield record


def _opening_states() -> dict[ChannelState, Callable[[], tuple[ChannelPair, Party]]]:
    def init() -> tuple[ChannelPair, Party]:
        p = ChannelPair(open_channel=False)
        return p, p.a

    def await_accept() -> tuple[ChannelPair, Party]:
        p, _ = init()
        p.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
        return p, p.a

    def await_funding_created() -> tuple[ChannelPair, Party]:
        p, _ = await_accept()
        p.deliver_one(p.a)
        return p, p.b

    def await_funding_outpoint() -> tuple[ChannelPair, Party]:
        p, _ = await_funding_created()
        p.deliver_one(p.b)
        return p, p.a

    def await_funding_signed() -> tuple[ChannelPair, Party]:
        p, _ = await_funding_outpoint()
        p.do("a", lambda c: c.funding_outpoint(FUNDING_TXID, 0))
        return p, p.a

    def await_channel_ready() -> tuple[ChannelPair, Party]:
        p, _ = await_funding_signed()
        p.deliver_one(p.a)
        p.deliver_one(p.b)
        return p, p.a

    return {S.INIT: init, S.AWAIT_ACCEPT: await_accept,
            S.AWAIT_FUNDING_CREATED: await_funding_created,
            S.AWAIT_FUNDING_OUTPOINT: await_funding_outpoint,
            S.AWAIT_FUNDING_SIGNED: await_funding_signed,
            S.AWAIT_CHANNEL_READY: await_channel_ready}


def _later_states() -> dict[ChannelState, Callable[[], tuple[ChannelPair, Party]]]:
    def normal() -> tuple[ChannelPair, Party]:
        p = ChannelPair()
        return p, p.a

    def shutdown() -> tuple[ChannelPair, Party]:
        p = ChannelPair()
        p.add("a", 5_000_000, 1)
        p.settle()
        p.do("a", lambda c: c.shutdown())
        return p, p.a

    def negotiating() -> tuple[ChannelPair, Party]:
        p = ChannelPair()
        p.do("a", lambda c: c.shutdown())
        p.deliver_one(p.a)
        return p, p.b  # b replied; waits for a's closing_signed

    def closed() -> tuple[ChannelPair, Party]:
        p = ChannelPair()
        p.do("a", lambda c: c.shutdown())
        p.settle()
        return p, p.a

    def failed() -> tuple[ChannelPair, Party]:
        p = ChannelPair()
        p.do("a", lambda c: c.fail("test"))
        return p, p.a

    return {S.NORMAL: normal, S.SHUTDOWN: shutdown, S.NEGOTIATING: negotiating,
            S.CLOSED: closed, S.FAILED: failed}


STATES = {**_opening_states(), **_later_states()}


def test_state_factories_reach_their_state() -> None:
    for state, make in STATES.items():
        _, party = make()
        assert party.channel.state is state, state


def _generic_events(seen: Seen) -> None:
    """error / fail / warning / disconnect / reconnect / reestablish wherever legal."""
    warning = peer_pb2.PeerMessage(warning=peer_pb2.Warning(data=b"w"))
    for state, make in STATES.items():
        for event in (E.RECV_ERROR, E.CMD_FAIL, E.RECV_WARNING, E.CMD_DISCONNECTED):
            if (state, event) not in TRANSITIONS:
                continue
            pair, party = make()
            ch = party.channel
            if event is E.RECV_ERROR:
                msg = peer_pb2.PeerMessage(error=peer_pb2.Error(channel_id=ch.channel_id))
                pair.apply(party, ch.handle(msg, height=HEIGHT))
                assert ch.state is S.FAILED
            elif event is E.CMD_FAIL:
                pair.apply(party, ch.fail("operator"))
                assert ch.state is S.FAILED
            elif event is E.RECV_WARNING:
                pair.apply(party, ch.handle(warning, height=HEIGHT))
                assert ch.state is state
            else:
                pair.apply(party, ch.disconnected())
                assert ch.link is LinkState.DOWN
                if ch.state is not S.FAILED and state is not S.CLOSED:
                    assert ch.state is state
                    pair.disconnect()
                    pair.reconnect()
                    pair.settle()  # CMD_RECONNECTED, RECV_CHANNEL_REESTABLISH


def _normal_operation(seen: Seen) -> None:
    pair = ChannelPair()
    i = pair.add("a", 5_000_000, 1)
    j = pair.add("b", 6_000_000, 2)
    pair.do("a", lambda c: c.update_fee(1200))
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(i, preimage_of(1)))
    pair.do("a", lambda c: c.fail_htlc(j))
    pair.settle()
    # A redundant channel_ready and funding confirmation once open.
    pair.do("a", lambda c: c.funding_confirmed())
    ready = peer_pb2.PeerMessage(channel_ready=peer_pb2.ChannelReady(
        channel_id=pair.b.channel.channel_id,
        second_per_commitment_point=pair.a.channel.secrets.per_commitment_point(1)))
    assert pair.b.channel.handle(ready, height=HEIGHT) == []


def _shutdown_operation(seen: Seen) -> None:
    # Updates of every kind while shutting down; the peer's add crossing our shutdown.
    pair = ChannelPair()
    i = pair.add("a", 5_000_000, 1)
    j = pair.add("b", 5_000_000, 2)
    pair.settle()
    pair.do("a", lambda c: c.shutdown())  # a: SHUTDOWN
    k = pair.add("b", 1_000_000, 3)  # b has not seen it yet: legal
    pair.deliver_all()  # RECV_UPDATE_ADD_HTLC / RECV_SHUTDOWN in SHUTDOWN
    pair.do("b", lambda c: c.commit())  # CMD_COMMIT; b then replies with its shutdown
    pair.settle()
    assert pair.a.channel.state is S.SHUTDOWN and pair.b.channel.state is S.SHUTDOWN
    pair.do("a", lambda c: c.update_fee(1100))
    pair.do("b", lambda c: c.fulfill_htlc(i, preimage_of(1)))
    pair.do("a", lambda c: c.fail_htlc(j))
    pair.settle()
    pair.do("a", lambda c: c.fulfill_htlc(k, preimage_of(3)))
    pair.settle()
    assert pair.a.channel.state is S.CLOSED
    # CMD_SHUTDOWN as a reply in SHUTDOWN: the command refuses if already sent, so the
    # reply path is the automatic one; the explicit command after receiving it:
    pair = ChannelPair()
    pair.add("b", 1_000_000, 1)
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_all()  # b: SHUTDOWN, cannot reply yet (uncommitted add)
    assert pair.b.channel.state is S.SHUTDOWN and pair.b.channel.d.local_shutdown_script is None
    pair.b.channel.d.book.revert_uncommitted()  # (as a disconnect would)
    pair.do("b", lambda c: c.shutdown())
    assert pair.b.channel.d.local_shutdown_script is not None


def _retransmissions_while_closing(seen: Seen) -> None:
    # channel_ready, shutdown and closing retransmitted into SHUTDOWN / NEGOTIATING.
    pair = ChannelPair()
    pair.add("b", 1_000_000, 1)
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_all()
    pair.disconnect()
    pair.reconnect()
    pair.deliver_one(pair.b)  # b's reestablish -> a (in SHUTDOWN) resends ready+shutdown
    pair.deliver_all()  # b receives channel_ready in SHUTDOWN, a in NEGOTIATING
    pair.settle()
    assert pair.a.channel.state is S.CLOSED is pair.b.channel.state
    # The peer's echo of an agreed closing_signed reaching a CLOSED channel.
    pair = ChannelPair()
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    final = copy.deepcopy(pair.a.outbox[0])
    pair.settle()
    assert pair.a.channel.state is S.CLOSED is pair.b.channel.state
    assert pair.b.channel.handle(final, height=HEIGHT) == []  # (CLOSED, closing_signed)
    # A reconnect in NEGOTIATING: shutdown retransmitted into NEGOTIATING.
    pair = ChannelPair(config_a=LocalConfig(closing_feerate_per_kw=5000),
                       config_b=LocalConfig(closing_feerate_per_kw=253))
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)
    pair.deliver_one(pair.b)
    pair.deliver_one(pair.a)
    pair.disconnect()
    pair.reconnect()
    pair.settle()
    assert pair.a.channel.state is S.CLOSED is pair.b.channel.state
    # channel_ready retransmitted to a NEGOTIATING fundee (no commitment ever followed it).
    pair = ChannelPair()
    pair.do("a", lambda c: c.shutdown())
    pair.deliver_one(pair.a)  # b: NEGOTIATING, its shutdown to a lost
    pair.disconnect()
    pair.reconnect()
    pair.settle()
    assert pair.b.channel.state is S.CLOSED


def _ready_while_offline(seen: Seen) -> None:
    pair = ChannelPair(open_channel=False)
    pair.do("a", lambda c: c.open(funding_sat=1_000_000, push_msat=0, feerate_per_kw=1000))
    pair.deliver_all()
    pair.do("a", lambda c: c.funding_outpoint(FUNDING_TXID, 0))
    pair.deliver_all()
    pair.disconnect()
    pair.do("a", lambda c: c.funding_confirmed())  # offline: sent on reestablish
    pair.do("b", lambda c: c.funding_confirmed())
    pair.reconnect()
    pair.settle()
    assert pair.a.channel.state is S.NORMAL is pair.b.channel.state


def _spent_on_chain(seen: Seen) -> None:
    """The watch saw the funding output spent (``funding_spent``), later the close
    resolved (``resolved``): from every state that has a funding output, for good."""
    error = peer_pb2.PeerMessage(error=peer_pb2.Error(data=b"e"))
    warning = peer_pb2.PeerMessage(warning=peer_pb2.Warning(data=b"w"))
    for state in (S.AWAIT_CHANNEL_READY, S.NORMAL, S.SHUTDOWN, S.NEGOTIATING, S.CLOSED,
                  S.FAILED):
        _, party = STATES[state]()
        ch = party.channel
        assert [type(a).__name__ for a in ch.funding_spent()] == ["Persist"]
        assert ch.state is S.ON_CHAIN
        assert ch.funding_spent() == []  # a repeat stores nothing
        for msg in (error, warning):
            error.error.channel_id = ch.channel_id
            assert ch.handle(msg, height=HEIGHT) in ([], [channel_module.PeerWarning("w")])
            assert ch.state is S.ON_CHAIN
        with pytest.raises(LocalProtocolError):
            ch.fail("its commitment would be a double spend")
        with pytest.raises(LocalProtocolError):
            ch.add_htlc(1_000_000, b"h" * 32, HEIGHT + 40, height=HEIGHT)
        ch.disconnected()
        assert [type(a).__name__ for a in ch.resolved()] == ["Persist"]
        assert ch.state is S.RESOLVED
        assert ch.resolved() == [] == ch.funding_spent()
        for msg in (error, warning):
            ch.handle(msg, height=HEIGHT)
        ch.disconnected()
        assert ch.state is S.RESOLVED
    _, party = STATES[S.CLOSED]()  # an agreed close that confirmed: CLOSED -> RESOLVED
    party.channel.resolved()
    assert party.channel.state is S.RESOLVED


def test_every_transition_is_exercised(seen: Seen) -> None:
    for make in STATES.values():
        make()
    _generic_events(seen)
    _spent_on_chain(seen)
    _normal_operation(seen)
    _shutdown_operation(seen)
    _retransmissions_while_closing(seen)
    _ready_while_offline(seen)
    missing = sorted(f"{s.value}+{e.value}" for s, e in set(TRANSITIONS) - seen)
    assert not missing, f"transitions never exercised: {missing}"


def test_state_triggered_targets_are_states() -> None:
    for (state, _), target in STATE_TRIGGERED.items():
        assert isinstance(state, ChannelState) and isinstance(target, ChannelState)


def test_a_command_outside_the_table_is_a_local_error() -> None:
    pair = ChannelPair(open_channel=False)
    with pytest.raises(LocalProtocolError, match="not allowed in state init"):
        pair.a.channel.commit()
    with pytest.raises(LocalProtocolError):
        pair.a.channel.funding_outpoint(FUNDING_TXID, 0)
