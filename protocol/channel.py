"""``Channel``: one channel's sans-I/O state machine (BOLT #2), driven by its owner.

How a driver (hub or client) uses it::

    ch = Channel.outbound(config=..., channel_seed=..., temporary_channel_id=...,
                          chain_hash=..., close_script=...)          # or Channel.inbound
    actions = ch.open(funding_sat=..., push_msat=..., feerate_per_kw=...)
    actions = ch.handle(peer_message, height=current_height)         # every received message
    actions = ch.add_htlc(amount_msat, payment_hash, cltv_expiry, height=h)   # commands...
    actions = ch.commit()                 # when ch.can_commit(): batches every pending update
    ch.disconnected(); ch.reconnected()   # link down / up: channel_reestablish does the rest
    ch = Channel.restore(last_persisted_snapshot)                    # after a restart
    ch.received_htlcs()                   # after a restart: peer HTLCs still to settle

Driver loop, per returned action in order: ``Persist`` -> write durably (group commit
is fine) before executing anything after it; ``Send`` -> queue on the peer link (a
frame may batch several); ``Broadcast``/``Watch`` -> chain; events -> application.
On ``RemoteProtocolError``: IGNORE -> drop the message; WARN -> send ``warning``,
``disconnected()``, reconnect later; CLOSE -> ``fail(exc.message)``.

Every call returns a list of actions (``protocol.actions``) to execute in order, or
raises ``LocalProtocolError`` (a refused command) / ``RemoteProtocolError`` (a refused
message); a refused input changes nothing. Whether an input is allowed at all is decided
by the transition table (``protocol.table``) alone, checked first; then the handler
validates the content (``protocol.rules``) and only then mutates.

Rule 1 (persist before revealing): handlers put a ``PERSIST`` marker in their action
list before any ``Send`` carrying a new commitment signature or a revocation secret; the
dispatcher turns the first marker into one ``Persist`` holding the snapshot taken after
the whole input was applied, at the marker's position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from channel.commitment import ChannelStatic, Commitment, Side
from channel.keys import ChannelSecrets
from channel.shachain import RevocationStore
from proto import peer_pb2
from protocol import closing, commitments, opening, reestablish, updates
from protocol.actions import (
    Action,
    Broadcast,
    ChannelFailed,
    HtlcDeadline,
    HtlcFailed,
    PeerWarning,
    Persist,
    Send,
)
from protocol.book import LOCAL, REMOTE, Book, Mark, View, in_commitment
from protocol.config import LocalConfig
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.messages import PeerMessage, body_of, check_channel_id, check_shape, error, event_of
from protocol.state import ChannelData, from_snapshot, to_snapshot
from protocol.step import PERSIST, PersistMarker, Step
from protocol.table import (
    STATE_TRIGGERED,
    ChannelState,
    Event,
    LinkState,
    Trigger,
    next_link_state,
    next_state,
)

Handler = Callable[["Channel", Any, int], Step]


class Channel:
    """One channel, one party. See the module docstring."""

    # Message handlers, by event; each takes (channel, message body, height).
    _HANDLERS: ClassVar[dict[Event, Handler]] = {}

    def __init__(self, data: ChannelData, link: LinkState) -> None:
        self.d = data
        self.link = link
        self.secrets = ChannelSecrets.from_seed(data.channel_seed)
        self.revocations = (RevocationStore.from_bytes(data.remote_secrets)
                            if data.remote_secrets else RevocationStore())
        self._static: ChannelStatic | None = None
        # Removals (fulfill/fail) of ours a disconnect reverted, re-sent after reestablish.
        self.resend_removals: list[tuple[int, bytes | None, bytes]] = []
        self.reported_preimages: set[int] = set()
        self.pending_events: list[Action] = []
        self._points: dict[int, bytes] = {}  # recent per-commitment points (hot path)
        # The peer's commitments we signed and it has not revoked (at most two), kept
        # in memory for the revoked_commitment Watch; rebuilt from the book if missing.
        self.signed_remote: dict[int, Commitment] = {}

    def local_point(self, commitment_number: int) -> bytes:
        """Our per-commitment point, memoised: each is needed several times in a row
        (build, sign, revoke_and_ack) and derives through 48 shachain steps."""
        point = self._points.get(commitment_number)
        if point is None:
            if len(self._points) > 8:
                self._points.clear()
            point = self._points[commitment_number] = self.secrets.per_commitment_point(
                commitment_number)
        return point

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def outbound(cls, *, config: LocalConfig, channel_seed: bytes, temporary_channel_id: bytes,
                 chain_hash: bytes, close_script: bytes) -> Channel:
        """We are the funder. Call ``open()`` next."""
        return cls(ChannelData(config, channel_seed, True, temporary_channel_id, chain_hash,
                               close_script=close_script), LinkState.UP)

    @classmethod
    def inbound(cls, *, config: LocalConfig, channel_seed: bytes, chain_hash: bytes,
                close_script: bytes) -> Channel:
        """We are the fundee: feed it the peer's open_channel."""
        return cls(ChannelData(config, channel_seed, False, b"", chain_hash,
                               close_script=close_script), LinkState.UP)

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Channel:
        """Rebuild from the latest persisted snapshot. The channel is disconnected (call
        ``reconnected()`` when a link is up); updates no commitment covered are gone."""
        ch = cls(from_snapshot(snapshot), LinkState.DOWN)
        dropped = ch.d.book.revert_uncommitted()
        # Reported by the first reconnected(), like a disconnect would have.
        ch.pending_events = [HtlcFailed(h.htlc_id, h.payment_hash,
                                        local_reason="restarted before the HTLC was committed")
                             for h in dropped]
        ch.d.closing_fee_sent_sat = ch.d.closing_fee_received_sat = None
        return ch

    # -- queries ----------------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        return self.d.state

    @property
    def channel_id(self) -> bytes:
        return self.d.channel_id or self.d.temporary_channel_id

    @property
    def static(self) -> ChannelStatic:
        if self._static is None:
            self._static = commitments.make_static(self.d, self.secrets)
        return self._static

    @property
    def minimum_depth(self) -> int:
        """Confirmations to wait before ``funding_confirmed()``: the fundee's demand."""
        d = self.d
        if d.local_is_funder:
            return d.remote.minimum_depth if d.remote is not None else 0
        return d.config.minimum_depth

    def snapshot(self) -> dict[str, Any]:
        return to_snapshot(self.d)

    def view_of(self, owner: Side, commitment_number: int) -> View:
        return self.d.book.view(in_commitment(owner, commitment_number))

    def latest_view(self, owner: Side) -> View:
        """Our current commitment, or the peer's latest signed one."""
        return self.view_of(owner, self.d.local_ctn if owner is LOCAL else self.d.remote_ctn)

    def build_local(self, commitment_number: int, view: View | None = None) -> Commitment:
        v = self.view_of(LOCAL, commitment_number) if view is None else view
        return commitments.build(self.static, LOCAL, commitment_number,
                                 self.local_point(commitment_number), v)

    def build_remote(self, commitment_number: int, view: View | None = None) -> Commitment:
        d = self.d
        if commitment_number == d.remote_oldest_ctn:
            point = d.remote_current_point
        elif commitment_number == d.remote_oldest_ctn + 1:
            point = d.remote_next_point
        else:
            raise AssertionError(f"no point for remote commitment {commitment_number}")
        v = self.view_of(REMOTE, commitment_number) if view is None else view
        return commitments.build(self.static, REMOTE, commitment_number, point, v)

    def received_htlcs(self) -> list[tuple[int, int, bytes, int]]:
        """HTLCs the peer offered that are irrevocably committed and still unresolved:
        (htlc_id, amount_msat, payment_hash, cltv_expiry). After a restart the
        application re-fulfills or re-fails these."""
        d = self.d
        out = []
        for h in d.book.htlcs.values():
            lc, rc = h.add.local_ctn, h.add.remote_ctn
            if (h.offered_by is REMOTE and h.removal is None and not h.policy_failure
                    and lc is not None
                    and rc is not None and rc <= d.remote_oldest_ctn):
                out.append((h.htlc_id, h.amount_msat, h.payment_hash, h.cltv_expiry))
        return out

    def onchain_deadlines(self) -> list[HtlcDeadline]:
        """Every HTLC still at stake and the height by which to go on chain for it
        (``Channel.fail()``) if the peer has not settled it by then: ours until they
        are gone from every commitment, the peer's once we fulfilled them (see
        ``HtlcDeadline``). Recomputed from the state, so a restarted driver has them."""
        return [updates.htlc_deadline(h) for h in self.d.book.htlcs.values()
                if h.offered_by is LOCAL
                or (h.removal is not None and h.removal.fulfilled)]

    def has_uncommitted_changes(self) -> bool:
        """True when a ``commit()`` would sign something new for the peer."""
        return self.d.book.pending(REMOTE, self.remote_eligible)

    def awaiting_revocation(self) -> bool:
        return self.d.remote_ctn > self.d.remote_oldest_ctn

    def can_commit(self) -> bool:
        return (self.link is LinkState.UP and not self.awaiting_revocation()
                and self.d.state in (ChannelState.NORMAL, ChannelState.SHUTDOWN)
                and self.has_uncommitted_changes())

    @staticmethod
    def remote_eligible(m: Mark) -> bool:
        """Updates our next commitment_signed covers: ours, and the peer's we acked."""
        return m.origin is LOCAL or m.local_ctn is not None

    def local_eligible(self) -> Callable[[Mark], bool]:
        """Updates the peer's next commitment_signed must cover: its own, and ours it
        acknowledged (revoked the commitment before the one that added them)."""
        oldest = self.d.remote_oldest_ctn

        def pred(m: Mark) -> bool:
            return m.origin is REMOTE or (m.remote_ctn is not None and m.remote_ctn <= oldest)

        return pred

    # -- the dispatcher ------------------------------------------------------------------------

    def handle(self, message: PeerMessage, *, height: int) -> list[Action]:
        """Process one received message (BOLT #2); ``height`` is the current block height."""
        event = event_of(message)
        self._check_allowed(event)
        check_shape(message)
        check_channel_id(message, self.channel_id)
        _, body = body_of(message)
        handler = self._HANDLERS[event]
        return self._finish(event, handler(self, body, height))

    def _check_allowed(self, event: Event) -> None:
        make: type[LocalProtocolError] | type[RemoteProtocolError] = (
            LocalProtocolError if event.is_command else RemoteProtocolError)
        if next_state(self.d.state, event) is None:
            raise make(f"{event.value} not allowed in state {self.d.state.value}",
                       Disposition.IGNORE if event.is_command else Disposition.CLOSE)
        if next_link_state(self.link, event) is None:
            raise make(f"{event.value} not allowed while the link is {self.link.value}",
                       Disposition.IGNORE if event.is_command else Disposition.WARN)

    def command(self, event: Event, fn: Callable[[], Step]) -> list[Action]:
        """Run a local command: table check, then ``fn`` (validate, then mutate)."""
        self._check_allowed(event)
        return self._finish(event, fn())

    def _finish(self, event: Event, step: Step) -> list[Action]:
        d = self.d
        if d.state is not ChannelState.FAILED:  # a handler may have failed the channel
            target = next_state(d.state, event)
            assert target is not None
            d.state = target
        link = next_link_state(self.link, event)
        assert link is not None
        self.link = link
        step.extend(self._fire_triggers())
        out: list[Action] = []
        persisted = False
        for a in step:
            if isinstance(a, PersistMarker):
                if not persisted:
                    d.update_id += 1
                    out.append(Persist(d.update_id, to_snapshot(d)))
                    persisted = True
            else:
                out.append(a)
        return out

    def _fire_triggers(self) -> Step:
        step: Step = []
        while True:
            d = self.d
            fired: Trigger | None = None
            if d.state is ChannelState.AWAIT_CHANNEL_READY and opening.both_ready(self):
                fired = Trigger.BOTH_CHANNEL_READY
            elif d.state is ChannelState.SHUTDOWN and closing.drained(self):
                fired = Trigger.SHUTDOWN_DRAINED
            elif d.state is ChannelState.NEGOTIATING and d.closing_txid:
                fired = Trigger.CLOSING_AGREED
            if fired is None:
                return step
            d.state = STATE_TRIGGERED[(d.state, fired)]
            step.extend(self._on_trigger(fired))

    def _on_trigger(self, trigger: Trigger) -> Step:
        if trigger is Trigger.BOTH_CHANNEL_READY:
            return opening.on_both_ready(self)
        if trigger is Trigger.SHUTDOWN_DRAINED:
            return closing.on_drained(self)
        return []

    # -- failing ---------------------------------------------------------------------------------

    def fail_channel(self, reason: str, *, send_error: bool, may_broadcast: bool = True,
                     remote_current_point: bytes | None = None) -> Step:
        """Move to FAILED (the CMD_FAIL / RECV_ERROR row) and broadcast our latest
        commitment unless data loss protection forbids it (BOLT #2 channel_reestablish:
        "MUST NOT broadcast its commitment transaction")."""
        d = self.d
        d.state = ChannelState.FAILED
        if not may_broadcast:
            d.data_loss = True
        step: Step = [PERSIST]
        if send_error:
            step.append(Send(error(self.channel_id, reason)))
        if not d.data_loss and d.local_commit_signature:
            tx = commitments.finalize_local(self.static, self.secrets,
                                            self.build_local(d.local_ctn),
                                            d.local_commit_signature)
            step.append(Broadcast(tx.serialize(), tx.txid(), "force close: latest commitment"))
        step.append(ChannelFailed(reason, not d.data_loss, remote_current_point))
        return step

    # -- commands ----------------------------------------------------------------------------------

    def open(self, *, funding_sat: int, push_msat: int, feerate_per_kw: int) -> list[Action]:
        """Funder: send open_channel (BOLT #2)."""
        return self.command(Event.CMD_OPEN,
                            lambda: opening.cmd_open(self, funding_sat, push_msat, feerate_per_kw))

    def funding_outpoint(self, funding_txid: bytes, output_index: int) -> list[Action]:
        """Funder: the wallet built (not broadcast) the funding tx; send funding_created.
        Broadcast the funding tx on the ``FundingSigned`` event, not before."""
        return self.command(Event.CMD_FUNDING_OUTPOINT,
                            lambda: opening.cmd_funding_outpoint(self, funding_txid, output_index))

    def funding_confirmed(self) -> list[Action]:
        """The funding tx reached ``minimum_depth``: send channel_ready."""
        return self.command(Event.CMD_FUNDING_CONFIRMED,
                            lambda: opening.cmd_funding_confirmed(self))

    def add_htlc(self, amount_msat: int, payment_hash: bytes, cltv_expiry: int, *, height: int,
                 onion_routing_packet: bytes = b"") -> list[Action]:
        """Offer an HTLC; its id is in the returned update_add_htlc."""
        return self.command(Event.CMD_ADD_HTLC, lambda: updates.cmd_add(
            self, amount_msat, payment_hash, cltv_expiry, height, onion_routing_packet))

    def fulfill_htlc(self, htlc_id: int, payment_preimage: bytes) -> list[Action]:
        return self.command(Event.CMD_FULFILL_HTLC,
                            lambda: updates.cmd_settle(self, htlc_id, payment_preimage, b""))

    def fail_htlc(self, htlc_id: int, reason: bytes = b"") -> list[Action]:
        return self.command(Event.CMD_FAIL_HTLC,
                            lambda: updates.cmd_settle(self, htlc_id, None, reason))

    def update_fee(self, feerate_per_kw: int) -> list[Action]:
        return self.command(Event.CMD_UPDATE_FEE, lambda: updates.cmd_fee(self, feerate_per_kw))

    def commit(self) -> list[Action]:
        """Sign the peer's next commitment covering every pending update (batching)."""
        return self.command(Event.CMD_COMMIT, lambda: updates.cmd_commit(self))

    def shutdown(self) -> list[Action]:
        """Start a cooperative close to ``close_script``."""
        return self.command(Event.CMD_SHUTDOWN, lambda: closing.cmd_shutdown(self))

    def fail(self, reason: str) -> list[Action]:
        """Force close: send error, broadcast our latest commitment."""
        return self.command(Event.CMD_FAIL,
                            lambda: self.fail_channel(reason, send_error=self.link is LinkState.UP))

    def funding_spent(self) -> list[Action]:
        """The funding output is spent on chain (the watch's ``ChannelClosedOnChain``;
        not called for our agreed close): ON_CHAIN for good, stored. No HTLC is added,
        settled or signed off chain from now on; the watch resolves each one on chain.
        A reorg of the spend leaves it so (a commitment once published is mined)."""
        return self.command(Event.CMD_FUNDING_SPENT, lambda: self._move(ChannelState.ON_CHAIN))

    def resolved(self) -> list[Action]:
        """Every output of the close is claimed or lost, deep enough (the watch's
        ``ChannelResolved``): RESOLVED, stored; the channel is no longer watched."""
        return self.command(Event.CMD_RESOLVED, lambda: self._move(ChannelState.RESOLVED))

    def _move(self, state: ChannelState) -> Step:
        if self.d.state in (state, ChannelState.RESOLVED):
            return []  # a repeat, or after the end: nothing to store
        self.d.state = state  # set here: ``_finish`` leaves a FAILED channel's state alone
        return [PERSIST]

    def disconnected(self) -> list[Action]:
        """The link went down (BOLT #2: uncommitted updates are forgotten)."""
        return self.command(Event.CMD_DISCONNECTED, lambda: reestablish.on_disconnected(self))

    def reconnected(self) -> list[Action]:
        """A link is up again: sends channel_reestablish."""
        return self.command(Event.CMD_RECONNECTED, lambda: reestablish.cmd_reconnected(self))


def _register() -> None:
    h = Channel._HANDLERS
    h[Event.RECV_OPEN_CHANNEL] = opening.on_open_channel
    h[Event.RECV_ACCEPT_CHANNEL] = opening.on_accept_channel
    h[Event.RECV_FUNDING_CREATED] = opening.on_funding_created
    h[Event.RECV_FUNDING_SIGNED] = opening.on_funding_signed
    h[Event.RECV_CHANNEL_READY] = opening.on_channel_ready
    h[Event.RECV_UPDATE_ADD_HTLC] = updates.on_add
    h[Event.RECV_UPDATE_FULFILL_HTLC] = updates.on_fulfill
    h[Event.RECV_UPDATE_FAIL_HTLC] = updates.on_fail
    h[Event.RECV_UPDATE_FEE] = updates.on_fee
    h[Event.RECV_COMMITMENT_SIGNED] = updates.on_commitment_signed
    h[Event.RECV_REVOKE_AND_ACK] = updates.on_revoke_and_ack
    h[Event.RECV_SHUTDOWN] = closing.on_shutdown
    h[Event.RECV_CLOSING_SIGNED] = closing.on_closing_signed
    h[Event.RECV_CHANNEL_REESTABLISH] = reestablish.on_reestablish
    h[Event.RECV_ERROR] = _on_error
    h[Event.RECV_WARNING] = _on_warning


def _on_error(ch: Channel, msg: peer_pb2.Error, height: int) -> Step:
    if ch.d.state in (ChannelState.ON_CHAIN, ChannelState.RESOLVED):
        return []  # the close is on chain already: nothing to broadcast
    text = msg.data.decode("utf-8", "replace")
    return ch.fail_channel(f"peer sent error: {text}", send_error=False)


def _on_warning(ch: Channel, msg: peer_pb2.Warning, height: int) -> Step:
    return [PeerWarning(msg.data.decode("utf-8", "replace"))]


_register()

__all__ = ["Book", "Channel"]
