"""The channel's states and its one transition table.

Theory of operation
===================

A channel is two machines in one, like h11's client and server halves:

1. The *channel state* (``ChannelState``) follows the channel's life: opening
   (BOLT #2 "Channel Establishment"), normal operation, closing ("Channel Close"),
   and the ends: ``CLOSED`` (cooperative close agreed), ``FAILED`` (an ``error``
   either way: the channel is settled on chain by the watcher), ``ON_CHAIN`` (the
   watch saw the funding output spent on chain by a commitment or an unknown
   transaction: nothing happens off chain any more, the watch resolves every output)
   and ``RESOLVED`` (every output of the close claimed or lost, deep enough: the
   channel is closed for good and no longer watched).
2. The *link state* (``LinkState``) follows the connection: ``UP``, ``DOWN``, and
   ``REESTABLISHING`` (we sent ``channel_reestablish`` after a reconnect and wait for
   the peer's; BOLT #2 "Message Retransmission": nothing else may be processed first).

Every input is an ``Event``: one per message kind we can receive (``RECV_*``) and one
per local command (``CMD_*``). ``TRANSITIONS`` maps ``(state, event)`` to the next
state; ``LINK_TRANSITIONS`` does the same for the link. An input whose pair is missing
from a table is a protocol violation: ``LocalProtocolError`` for a command,
``RemoteProtocolError`` for a message. Nothing else decides whether a move is legal.

Some moves depend on more than the event (both ``channel_ready`` exchanged, no HTLC left
after ``shutdown``). Like h11's ``_fire_state_triggered_transitions`` those are applied
after the event, from ``STATE_TRIGGERED``: ``(state, condition) -> state``; the
conditions are computed by the channel and named here.

The updates inside NORMAL/SHUTDOWN (which HTLC is in which commitment) are not states
of this table: they are the update log (``protocol.book``), where BOLT #2's per-update
life (sent, committed, revoked...) is a commitment number per side.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ChannelState(enum.Enum):
    INIT = "init"  # object created, nothing sent or received
    AWAIT_ACCEPT = "await_accept"  # funder: open_channel sent
    AWAIT_FUNDING_OUTPOINT = "await_funding_outpoint"  # funder: wallet builds funding tx
    AWAIT_FUNDING_CREATED = "await_funding_created"  # fundee: accept_channel sent
    AWAIT_FUNDING_SIGNED = "await_funding_signed"  # funder: funding_created sent
    AWAIT_CHANNEL_READY = "await_channel_ready"  # both commitment 0 signed; waiting depth
    NORMAL = "normal"  # HTLCs flow both ways
    SHUTDOWN = "shutdown"  # shutdown sent or received: no new HTLCs, old ones drain
    NEGOTIATING = "negotiating"  # closing_signed fee negotiation
    CLOSED = "closed"  # closing tx agreed and broadcast
    FAILED = "failed"  # error sent or received
    ON_CHAIN = "on_chain"  # funding output spent on chain (not our agreed close): no updates
    RESOLVED = "resolved"  # every output of the close claimed or lost, deep: closed for good


class LinkState(enum.Enum):
    UP = "up"
    DOWN = "down"
    REESTABLISHING = "reestablishing"


class Event(enum.Enum):
    # Messages received.
    RECV_OPEN_CHANNEL = "open_channel"
    RECV_ACCEPT_CHANNEL = "accept_channel"
    RECV_FUNDING_CREATED = "funding_created"
    RECV_FUNDING_SIGNED = "funding_signed"
    RECV_CHANNEL_READY = "channel_ready"
    RECV_UPDATE_ADD_HTLC = "update_add_htlc"
    RECV_UPDATE_FULFILL_HTLC = "update_fulfill_htlc"
    RECV_UPDATE_FAIL_HTLC = "update_fail_htlc"
    RECV_COMMITMENT_SIGNED = "commitment_signed"
    RECV_REVOKE_AND_ACK = "revoke_and_ack"
    RECV_UPDATE_FEE = "update_fee"
    RECV_SHUTDOWN = "shutdown"
    RECV_CLOSING_SIGNED = "closing_signed"
    RECV_CHANNEL_REESTABLISH = "channel_reestablish"
    RECV_ERROR = "error"
    RECV_WARNING = "warning"
    # Local commands.
    CMD_OPEN = "cmd_open"
    CMD_FUNDING_OUTPOINT = "cmd_funding_outpoint"
    CMD_FUNDING_CONFIRMED = "cmd_funding_confirmed"
    CMD_ADD_HTLC = "cmd_add_htlc"
    CMD_FULFILL_HTLC = "cmd_fulfill_htlc"
    CMD_FAIL_HTLC = "cmd_fail_htlc"
    CMD_UPDATE_FEE = "cmd_update_fee"
    CMD_COMMIT = "cmd_commit"
    CMD_SHUTDOWN = "cmd_shutdown"
    CMD_FAIL = "cmd_fail"  # force close: send error, broadcast our commitment
    CMD_DISCONNECTED = "cmd_disconnected"
    CMD_RECONNECTED = "cmd_reconnected"
    CMD_FUNDING_SPENT = "cmd_funding_spent"  # the watch saw the funding output spent
    CMD_RESOLVED = "cmd_resolved"  # the watch found every output of the close settled

    @property
    def is_command(self) -> bool:
        return self.name.startswith("CMD_")


S = ChannelState
E = Event

# Events that change no channel state wherever they are legal in the "operating"
# states (the update protocol runs inside NORMAL and, without adds, inside SHUTDOWN).
_UPDATES_BOTH = (
    E.RECV_UPDATE_FULFILL_HTLC,
    E.RECV_UPDATE_FAIL_HTLC,
    E.RECV_COMMITMENT_SIGNED,
    E.RECV_REVOKE_AND_ACK,
    E.RECV_UPDATE_FEE,
    E.CMD_FULFILL_HTLC,
    E.CMD_FAIL_HTLC,
    E.CMD_UPDATE_FEE,
    E.CMD_COMMIT,
)
_LINK_EVENTS = (E.RECV_CHANNEL_REESTABLISH, E.CMD_DISCONNECTED, E.CMD_RECONNECTED, E.RECV_WARNING)
_OPERATING = (S.AWAIT_CHANNEL_READY, S.NORMAL, S.SHUTDOWN, S.NEGOTIATING)
_SPENT = (S.ON_CHAIN, S.RESOLVED)

#: The states in which a channel is over (no payment will ever cross it again): what
#: counts against no limit of open channels.
ENDED_STATES = frozenset({S.CLOSED, S.FAILED, S.ON_CHAIN, S.RESOLVED})


def _build() -> dict[tuple[ChannelState, Event], ChannelState]:
    t: dict[tuple[ChannelState, Event], ChannelState] = {
        # Opening, funder side.
        (S.INIT, E.CMD_OPEN): S.AWAIT_ACCEPT,
        (S.AWAIT_ACCEPT, E.RECV_ACCEPT_CHANNEL): S.AWAIT_FUNDING_OUTPOINT,
        (S.AWAIT_FUNDING_OUTPOINT, E.CMD_FUNDING_OUTPOINT): S.AWAIT_FUNDING_SIGNED,
        (S.AWAIT_FUNDING_SIGNED, E.RECV_FUNDING_SIGNED): S.AWAIT_CHANNEL_READY,
        # Opening, fundee side.
        (S.INIT, E.RECV_OPEN_CHANNEL): S.AWAIT_FUNDING_CREATED,
        (S.AWAIT_FUNDING_CREATED, E.RECV_FUNDING_CREATED): S.AWAIT_CHANNEL_READY,
        # Both: depth reached / peer ready. AWAIT_CHANNEL_READY -> NORMAL is triggered.
        (S.AWAIT_CHANNEL_READY, E.CMD_FUNDING_CONFIRMED): S.AWAIT_CHANNEL_READY,
        (S.AWAIT_CHANNEL_READY, E.RECV_CHANNEL_READY): S.AWAIT_CHANNEL_READY,
        # A retransmitted channel_ready after reconnect is redundant (BOLT #2: "MUST
        # ignore any redundant channel_ready it receives").
        (S.NORMAL, E.RECV_CHANNEL_READY): S.NORMAL,
        (S.SHUTDOWN, E.RECV_CHANNEL_READY): S.SHUTDOWN,
        (S.NEGOTIATING, E.RECV_CHANNEL_READY): S.NEGOTIATING,
        (S.NORMAL, E.CMD_FUNDING_CONFIRMED): S.NORMAL,
        # Normal operation.
        (S.NORMAL, E.RECV_UPDATE_ADD_HTLC): S.NORMAL,
        (S.NORMAL, E.CMD_ADD_HTLC): S.NORMAL,
        # After OUR shutdown the peer may still add until its own shutdown reaches us
        # (BOLT #2: only the shutdown's *sender* "MUST NOT send update_add_htlc").
        (S.SHUTDOWN, E.RECV_UPDATE_ADD_HTLC): S.SHUTDOWN,
        # Close: shutdown either way; SHUTDOWN -> NEGOTIATING is triggered.
        (S.NORMAL, E.CMD_SHUTDOWN): S.SHUTDOWN,
        (S.NORMAL, E.RECV_SHUTDOWN): S.SHUTDOWN,
        (S.SHUTDOWN, E.CMD_SHUTDOWN): S.SHUTDOWN,  # our reply to the peer's shutdown
        (S.SHUTDOWN, E.RECV_SHUTDOWN): S.SHUTDOWN,  # the peer's reply to ours
        (S.NEGOTIATING, E.RECV_SHUTDOWN): S.NEGOTIATING,  # retransmitted on reconnect
        (S.NEGOTIATING, E.RECV_CLOSING_SIGNED): S.NEGOTIATING,  # -> CLOSED is triggered
        (S.CLOSED, E.RECV_CLOSING_SIGNED): S.CLOSED,  # the peer's final echo
    }
    for state in (S.NORMAL, S.SHUTDOWN):
        for event in _UPDATES_BOTH:
            t[(state, event)] = state
    for state in _OPERATING:
        for event in _LINK_EVENTS:
            t.setdefault((state, event), state)
    for state in S:
        if state not in (S.FAILED, *_SPENT):
            t[(state, E.RECV_ERROR)] = S.FAILED
            t[(state, E.CMD_FAIL)] = S.FAILED
    # The funding output spent on chain: from any state that has one (an agreed close
    # that confirmed leaves CLOSED as it is: the driver does not report it), for good.
    # No update, no fail (its commitment would be a double spend); an error or a
    # warning changes nothing.
    for state in (*_OPERATING, S.CLOSED, S.FAILED, S.ON_CHAIN):
        t[(state, E.CMD_FUNDING_SPENT)] = S.ON_CHAIN
    for state in (S.CLOSED, S.ON_CHAIN, S.RESOLVED):
        t[(state, E.CMD_RESOLVED)] = S.RESOLVED
    t[(S.RESOLVED, E.CMD_FUNDING_SPENT)] = S.RESOLVED  # a repeat after the resolution
    for state in _SPENT:
        for event in (E.CMD_DISCONNECTED, E.RECV_WARNING, E.RECV_ERROR):
            t[(state, event)] = state
    for state in (S.AWAIT_ACCEPT, S.AWAIT_FUNDING_OUTPOINT, S.AWAIT_FUNDING_CREATED,
                  S.AWAIT_FUNDING_SIGNED):
        # BOLT #2: a channel not yet signed both ways is forgotten on disconnect.
        t[(state, E.CMD_DISCONNECTED)] = S.FAILED
        t[(state, E.RECV_WARNING)] = state
    for state in (S.CLOSED, S.FAILED):
        t[(state, E.CMD_DISCONNECTED)] = state
        t[(state, E.RECV_WARNING)] = state
    t[(S.FAILED, E.RECV_ERROR)] = S.FAILED
    return t


TRANSITIONS: Mapping[tuple[ChannelState, Event], ChannelState] = _build()


class Trigger(enum.Enum):
    """Conditions checked after every event (see the module docstring)."""

    BOTH_CHANNEL_READY = "both channel_ready exchanged"
    SHUTDOWN_DRAINED = "both shutdown exchanged, no HTLC and no pending update left"
    CLOSING_AGREED = "both signed the same closing transaction"


STATE_TRIGGERED: Mapping[tuple[ChannelState, Trigger], ChannelState] = {
    (S.AWAIT_CHANNEL_READY, Trigger.BOTH_CHANNEL_READY): S.NORMAL,
    (S.SHUTDOWN, Trigger.SHUTDOWN_DRAINED): S.NEGOTIATING,
    (S.NEGOTIATING, Trigger.CLOSING_AGREED): S.CLOSED,
}

L = LinkState

LINK_TRANSITIONS: Mapping[tuple[LinkState, Event], LinkState] = {
    (L.UP, E.CMD_DISCONNECTED): L.DOWN,
    (L.REESTABLISHING, E.CMD_DISCONNECTED): L.DOWN,
    (L.DOWN, E.CMD_DISCONNECTED): L.DOWN,
    (L.DOWN, E.CMD_RECONNECTED): L.REESTABLISHING,
    (L.REESTABLISHING, E.RECV_CHANNEL_REESTABLISH): L.UP,
}

# Events that need no particular link state: a command that only changes local state
# (fail, funding confirmed while offline: channel_ready is sent on reestablish), and
# error/warning, which may arrive at any time.
LINK_FREE = frozenset({E.CMD_FAIL, E.RECV_ERROR, E.RECV_WARNING, E.CMD_FUNDING_CONFIRMED,
                       E.CMD_FUNDING_SPENT, E.CMD_RESOLVED})


def next_state(state: ChannelState, event: Event) -> ChannelState | None:
    """The table's answer, or None when the move is not allowed."""
    return TRANSITIONS.get((state, event))


def next_link_state(link: LinkState, event: Event) -> LinkState | None:
    """``LINK_TRANSITIONS`` for link events; every other event needs the link UP."""
    if event in LINK_FREE:
        return link
    if (link, event) in LINK_TRANSITIONS:
        return LINK_TRANSITIONS[(link, event)]
    if event in (E.CMD_DISCONNECTED, E.CMD_RECONNECTED, E.RECV_CHANNEL_REESTABLISH):
        return None
    return link if link is L.UP else None
