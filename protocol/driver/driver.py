"""``ChannelDriver``: runs one ``protocol.Channel``, executing its actions in order.

Theory of operation
-------------------
The state machine is synchronous and pure; its actions are not. The driver splits the
two: every input (a received message, a command of the application) is applied to the
``Channel`` at once, synchronously, and the action list it returns is appended to the
channel's *queue*. The peer session's task drains the queue (``run_queued``), list
after list, action after action, in exactly the order the machine produced them:

- ``Persist``: the snapshot is submitted to the group writer and awaited: nothing
  after it runs before the commit returned (DESIGN rule 1).
- ``Watch``: submitted to the writer at once (so a Watch followed by a Persist share
  one transaction) and handed to ``on_watch`` as soon as it is durable, before any
  later non-Send action.
- ``Send``: appended to the session's outbox; the session sends the outbox as one
  ``PeerFrame`` when the queues are drained. So a Send never leaves before every
  Persist queued before it is durable; Sends from before a Persist wait for it too
  (they lose nothing by that, and share the frame).
- ``Broadcast``: ``broadcaster.broadcast``; events: ``on_event``. Each runs after
  every earlier write is durable.

Why the machine may run ahead of the store: what leaves the process (a Send, a
Broadcast, an event the application acts on) is released only in queue order, after
every Persist before it. A crash loses at most in-memory progress nobody outside saw
(rust-lightning's "monitor update in progress", without a special state).

Because commands are synchronous, the application may call them from anywhere in the
trio thread, including inside ``on_event`` (the payee fulfilling from
``HtlcReceived``, the hub adding the outgoing HTLC): there is no lock to deadlock on.
``commit()`` is never called by the application: the session calls ``maybe_commit``
when the queues drain, so every update that arrived meanwhile goes under one
``commitment_signed``.

A Persist that fails (``CommitFailed``, ``StaleUpdate``) leaves the machine ahead of
the store with nothing durable to show for it: the driver drops the rest of its queue,
rebuilds the channel from the last stored snapshot (``Channel.restore``: exactly what a
restart would do) and raises ``PersistFailed``; the session closes the link, and
``channel_reestablish`` resynchronises both sides on the next connection.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proto import peer_pb2
from protocol import Channel
from protocol.actions import Action, Broadcast, Event, Persist, Send, Watch
from protocol.driver.db import StoreError
from protocol.driver.store import ChannelStore, StoredChannel
from protocol.driver.writer import PendingWrite, WriteError
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)


class Broadcaster(Protocol):
    """The chain side's broadcaster (channel/chain builds the real one: it rebroadcasts
    until confirmed, so ``broadcast`` should not raise for a node that is down)."""

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None: ...


EventCallback = Callable[["ChannelDriver", Event], Awaitable[None]]
WatchCallback = Callable[["ChannelDriver", Watch], Awaitable[None]]


@dataclass
class DriverContext:
    """What every channel of a process shares."""

    store: ChannelStore
    broadcaster: Broadcaster
    height: Callable[[], int]
    on_event: EventCallback
    on_watch: WatchCallback


class DriverError(Exception):
    """Base class of the driver's errors."""


class PersistFailed(DriverError):
    """A snapshot did not become durable; the channel was rebuilt from the store."""


class ChannelLost(PersistFailed):
    """The channel's first snapshot did not become durable: it does not exist."""


class ChannelDriver:
    """One channel, one party. See the module docstring."""

    def __init__(self, channel: Channel, *, channel_key: bytes, peer_node_id: bytes,
                 ctx: DriverContext) -> None:
        self.channel = channel
        self.channel_key = channel_key
        self.peer_node_id = peer_node_id
        self.ctx = ctx
        self._queue: deque[list[Action]] = deque()
        # Set by the peer session: called after every enqueue (wakes its task).
        self.on_enqueue: Callable[[ChannelDriver], None] | None = None
        self.lost = False

    @classmethod
    def restore(cls, stored: StoredChannel, ctx: DriverContext) -> ChannelDriver:
        return cls(Channel.restore(stored.snapshot), channel_key=stored.channel_key,
                   peer_node_id=stored.peer_node_id, ctx=ctx)

    @property
    def channel_id(self) -> bytes:
        return self.channel.channel_id

    @property
    def queued(self) -> int:
        return len(self._queue)

    def __repr__(self) -> str:
        return (f"ChannelDriver({self.channel_key.hex()}, {self.channel_id.hex()[:16]}, "
                f"{self.channel.state.value})")

    # -- inputs (synchronous) -------------------------------------------------------

    def _enqueue(self, actions: list[Action]) -> None:
        if actions:
            self._queue.append(actions)
        if self.on_enqueue is not None:
            self.on_enqueue(self)

    def handle(self, message: peer_pb2.PeerMessage) -> Disposition | None:
        """Apply a received message. A refusal changes nothing; its disposition is
        returned after CLOSE was applied (``fail``); the session handles WARN."""
        try:
            self._enqueue(self.channel.handle(message, height=self.ctx.height()))
            return None
        except RemoteProtocolError as exc:
            log.info("%r refused a message: %s (%s)", self, exc.message, exc.disposition.name)
            if exc.disposition is Disposition.CLOSE:
                reason = exc.message
                self._try(lambda: self.channel.fail(reason))
            return exc.disposition

    def _try(self, command: Callable[[], list[Action]]) -> bool:
        try:
            self._enqueue(command())
        except LocalProtocolError as exc:
            log.debug("%r: %s", self, exc.message)
            return False
        return True

    def maybe_commit(self) -> bool:
        """Sign the peer's next commitment if anything is pending and we may."""
        if self.channel.can_commit() and self.channel.has_uncommitted_changes():
            self._enqueue(self.channel.commit())
            return True
        return False

    def reconnected(self) -> bool:
        return self._try(self.channel.reconnected)

    def disconnected(self) -> bool:
        return self._try(self.channel.disconnected)

    # -- commands of the application (synchronous; raise LocalProtocolError) ----------

    def open(self, *, funding_sat: int, push_msat: int, feerate_per_kw: int) -> None:
        self._enqueue(self.channel.open(funding_sat=funding_sat, push_msat=push_msat,
                                        feerate_per_kw=feerate_per_kw))

    def funding_outpoint(self, funding_txid: bytes, output_index: int) -> None:
        self._enqueue(self.channel.funding_outpoint(funding_txid, output_index))

    def funding_confirmed(self) -> None:
        self._enqueue(self.channel.funding_confirmed())

    def add_htlc(self, amount_msat: int, payment_hash: bytes, cltv_expiry: int, *,
                 onion_routing_packet: bytes = b"") -> int:
        """Offer an HTLC (committed with the next batch); returns its htlc_id."""
        actions = self.channel.add_htlc(amount_msat, payment_hash, cltv_expiry,
                                        height=self.ctx.height(),
                                        onion_routing_packet=onion_routing_packet)
        htlc_id = next(a.message.update_add_htlc.id for a in actions
                       if isinstance(a, Send) and a.message.HasField("update_add_htlc"))
        self._enqueue(actions)
        return htlc_id

    def fulfill_htlc(self, htlc_id: int, payment_preimage: bytes) -> None:
        self._enqueue(self.channel.fulfill_htlc(htlc_id, payment_preimage))

    def fail_htlc(self, htlc_id: int, reason: bytes = b"") -> None:
        self._enqueue(self.channel.fail_htlc(htlc_id, reason))

    def update_fee(self, feerate_per_kw: int) -> None:
        self._enqueue(self.channel.update_fee(feerate_per_kw))

    def shutdown(self) -> None:
        self._enqueue(self.channel.shutdown())

    def fail(self, reason: str) -> None:
        self._enqueue(self.channel.fail(reason))

    def funding_spent(self) -> None:
        """The watch saw the funding output spent on chain (``Channel.funding_spent``)."""
        self._enqueue(self.channel.funding_spent())

    def resolved(self) -> None:
        """The watch found the close resolved (``Channel.resolved``)."""
        self._enqueue(self.channel.resolved())

    # -- execution (the session's task) -------------------------------------------------

    async def run_queued(self, outbox: list[peer_pb2.PeerMessage]) -> None:
        """Execute every queued action list in order; Sends go to ``outbox``."""
        while self._queue:
            actions = self._queue.popleft()
            try:
                await self._execute(actions, outbox)
            except (WriteError, StoreError) as exc:  # CommitFailed, StaleUpdate...
                await self._persist_failed(exc)

    async def _execute(self, actions: list[Action], outbox: list[peer_pb2.PeerMessage]
                       ) -> None:
        ctx = self.ctx
        writes: list[PendingWrite[Any]] = []
        watches: list[Watch] = []

        async def settle() -> None:
            for pending in writes:
                await pending.wait()
            writes.clear()
            for watch in watches:
                await ctx.on_watch(self, watch)
            watches.clear()

        for action in actions:
            if isinstance(action, Send):
                outbox.append(action.message)
            elif isinstance(action, Persist):
                writes.append(ctx.store.writer.submit(ctx.store.snapshot_write(
                    self.channel_key, self.peer_node_id, action.update_id, action.snapshot)))
                await settle()
            elif isinstance(action, Watch):
                writes.append(ctx.store.writer.submit(
                    ctx.store.watch_write(self.channel_key, action)))
                watches.append(action)
            elif isinstance(action, Broadcast):
                await settle()
                await ctx.broadcaster.broadcast(action.raw_tx, action.txid, action.reason)
            else:
                await settle()
                await ctx.on_event(self, action)
        await settle()

    async def _persist_failed(self, exc: Exception) -> None:
        self._queue.clear()
        stored = [c for c in self.ctx.store.load_channels(self.peer_node_id)
                  if c.channel_key == self.channel_key]
        if not stored:
            self.lost = True
            raise ChannelLost(f"{self!r}: its first snapshot was not stored: {exc}") from exc
        self.channel = Channel.restore(stored[0].snapshot)
        raise PersistFailed(f"{self!r}: a snapshot was not stored ({exc}); rebuilt from "
                            f"update_id {stored[0].update_id}") from exc
