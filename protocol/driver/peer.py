"""``PeerSession``: one connected peer, its channels, one trio task.

Theory of operation
-------------------
A session owns the ``ChannelDriver``s of one peer (restored from the store or created
while connected) and, while a ``FrameLink`` is up, runs two loops in one nursery:

- *receive*: each ``PeerFrame`` is checked against ``FrameLimits`` (message count and
  bytes: a frame beyond them is refused whole with a ``warning`` and the link is
  closed, nothing applied); each message is routed by its ``channel_id`` (the
  ``temporary_channel_id`` during the opening) to its driver, which applies it at once
  and queues the actions. The receive loop waits while more than
  ``max_queued_lists`` action lists are queued (back-pressure on a flooding peer).
- *execute*: whenever something was queued, first ``maybe_commit`` on every channel
  (so all the updates that arrived since the last round go under one
  ``commitment_signed``), then drain every driver's queue in order
  (``ChannelDriver.run_queued``: Persists awaited, events delivered) collecting the
  Sends, and send them as ``PeerFrame``s (at most ``max_messages`` each). Repeat until
  nothing is queued.

Routing refusals (BOLT #1, DESIGN rule 4), each changing nothing: an ``error`` or
``warning`` naming a channel we do not have is ignored ("MUST ignore"); any other
message naming an unknown channel gets a ``warning`` naming that channel_id; an
``open_channel`` reusing a channel id we know gets a ``warning``; an
``open_channel`` the application's ``accept_channel`` policy refuses gets an
``error`` naming its temporary id (BOLT #2: the opening fails). An ``error`` or
``warning`` with the all-zero (or no) channel_id concerns every channel and is given
to each.

Dispositions (protocol/errors.py): ``IGNORE`` drops the message; ``CLOSE`` was applied
by the driver (``fail``: error sent, commitment broadcast); ``WARN``: the session sends
a ``warning`` after the current round and closes the link. When the link ends, every
connected channel gets ``disconnected()`` (uncommitted updates are forgotten, BOLT #2),
its actions are executed (events delivered; Sends dropped), and ``run`` returns;
``connected`` is true until then, so a next link never starts half-way. The next
link: ``run`` again on the same session; every channel gets ``reconnected()`` and
``channel_reestablish`` does the rest.

Waiting for a state: ``wait_changed`` returns after the next moment a channel's state
or the link may have changed (a frame applied, a round drained, a link starting or
ending). Callers re-check their condition after each, so none polls the clock (under
a test's autojumping clock a poll would burn trio time while a store write runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from proto import peer_pb2
from protocol.driver.driver import ChannelDriver, DriverContext, PersistFailed
from protocol.driver.link import FrameLink, LinkClosed
from protocol.errors import Disposition, RemoteProtocolError
from protocol.messages import ZERO32, body_of, error, warning
from protocol.table import LinkState

log = logging.getLogger(__name__)

# Messages of the opening that name the channel by its temporary id (BOLT #2).
_BY_TEMPORARY_ID = ("open_channel", "accept_channel", "funding_created")

AcceptChannel = Callable[["PeerSession", peer_pb2.OpenChannel], ChannelDriver | None]


@dataclass(frozen=True)
class FrameLimits:
    # A commitment round for 483 HTLCs each way is ~1,000 messages; a frame is a
    # batch, never a backlog.
    max_messages: int = 1_024
    # Fits 1,024 update_add_htlc with a 1,366-byte onion each, with room to spare;
    # the gRPC edge bounds the stream message below its own maximum too.
    max_frame_bytes: int = 4 * 1024 * 1024
    max_queued_lists: int = 4_096


class PeerSession:
    """One peer's channels over successive links. See the module docstring."""

    def __init__(self, peer_node_id: bytes, drivers: list[ChannelDriver], ctx: DriverContext,
                 *, accept_channel: AcceptChannel | None = None,
                 limits: FrameLimits = FrameLimits()) -> None:
        self.peer_node_id = peer_node_id
        self.ctx = ctx
        self.accept_channel = accept_channel
        self.limits = limits
        self.drivers: list[ChannelDriver] = []
        self._by_id: dict[bytes, ChannelDriver] = {}
        self._outbox: list[peer_pb2.PeerMessage] = []
        self._wakeup = trio.Event()
        self._drained = trio.Event()
        self._changed = trio.Event()
        self._drain_lock = trio.Lock()
        self._close_reason: str | None = None
        self._link: FrameLink | None = None
        for driver in drivers:
            self.add_channel(driver)

    # -- channels ------------------------------------------------------------------------

    def add_channel(self, driver: ChannelDriver) -> None:
        if driver.peer_node_id != self.peer_node_id:
            raise ValueError("this driver belongs to another peer")
        if driver.channel_id in self._by_id:
            raise ValueError(f"channel {driver.channel_id.hex()} exists")
        self.drivers.append(driver)
        driver.on_enqueue = self._enqueued
        self._index(driver)
        if driver.queued:  # commands given before it joined the session
            self._wakeup.set()

    def driver_for(self, channel_id: bytes) -> ChannelDriver | None:
        return self._by_id.get(channel_id)

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def wait_changed(self) -> None:
        """Return after the next change that may concern a channel's state or the
        link (see the module docstring). Re-check what you wait for after it."""
        await self._changed.wait()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _index(self, driver: ChannelDriver) -> None:
        # Both ids stay known: the temporary one names the opening messages, and a
        # reused temporary id must be recognised as in use. An accepted channel has no
        # id before its open_channel: indexed under b"", it made the next one "exist".
        if driver.channel_id:
            self._by_id.setdefault(driver.channel_id, driver)
        temporary = driver.channel.d.temporary_channel_id
        if temporary:
            self._by_id.setdefault(temporary, driver)

    def _enqueued(self, driver: ChannelDriver) -> None:
        self._index(driver)
        self._wakeup.set()

    @property
    def _queued(self) -> int:
        return sum(d.queued for d in self.drivers)

    # -- the link --------------------------------------------------------------------------

    async def run(self, link: FrameLink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``link`` until it closes (or a WARN closes it). See the module docstring."""
        if self._link is not None:
            raise RuntimeError("this peer already has a link")
        self._link = link
        self._close_reason = None
        for driver in self.drivers:
            if driver.channel.link is LinkState.DOWN:
                driver.reconnected()
        self._notify_changed()
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop, link)
                await self._execute_loop(link)
                nursery.cancel_scope.cancel()
        finally:
            self._outbox.clear()
            with trio.CancelScope(shield=True):  # even when cancelled: the peer must know
                await link.aclose()
            # Synchronous, so it happens even when cancelled. ``connected`` stays true
            # until the disconnect is processed: a next ``run`` that started earlier
            # would find the channels still UP and never send channel_reestablish.
            # A channel still REESTABLISHING (the peer left before answering) goes
            # DOWN too, or the next link would send it no channel_reestablish.
            for driver in self.drivers:
                if driver.channel.link is not LinkState.DOWN:
                    driver.disconnected()
            try:
                await self._drain()  # events of the disconnect (skipped when cancelled)
            finally:
                self._outbox.clear()  # Sends of a link that is gone
                self._link = None
                self._notify_changed()

    def close(self, reason: str) -> None:
        """Close the link after the current round (the channels survive)."""
        self._close_reason = reason
        self._wakeup.set()

    async def _receive_loop(self, link: FrameLink) -> None:
        try:
            while True:
                while self._queued > self.limits.max_queued_lists:
                    await self._drained.wait()
                frame = await link.receive()
                self._receive_frame(frame)
                if self._close_reason is not None:
                    return  # nothing after a refused frame or a WARN is applied
        except LinkClosed:
            self.close("the peer closed the link")

    def _receive_frame(self, frame: peer_pb2.PeerFrame) -> None:
        if len(frame.messages) > self.limits.max_messages:
            self._warn_and_close(b"", f"frame of {len(frame.messages)} messages refused "
                                      f"(at most {self.limits.max_messages})")
            return
        size = frame.ByteSize()
        if size > self.limits.max_frame_bytes:
            self._warn_and_close(b"", f"frame of {size} bytes refused "
                                      f"(at most {self.limits.max_frame_bytes})")
            return
        for message in frame.messages:
            if self._close_reason is not None:
                return  # a WARN closes the link: nothing after it is applied
            self._route(message)
        self._wakeup.set()
        self._notify_changed()

    def _route(self, message: peer_pb2.PeerMessage) -> None:
        try:
            name, body = body_of(message)
        except RemoteProtocolError as exc:
            self._outbox.append(warning(ZERO32, exc.message))
            return
        if name in _BY_TEMPORARY_ID:
            channel_id = bytes(body.temporary_channel_id)
        elif "channel_id" in body.DESCRIPTOR.fields_by_name:
            channel_id = bytes(body.channel_id)
        else:
            channel_id = b""
        if name in ("error", "warning") and channel_id in (b"", ZERO32):
            for driver in list(self.drivers):  # BOLT #1: concerns every channel
                self._apply(driver, message)
            return
        if name == "open_channel":
            self._open_channel(channel_id, message)
            return
        known = self._by_id.get(channel_id)
        if known is None:
            if name not in ("error", "warning"):  # BOLT #1: those MUST be ignored
                self._outbox.append(warning(channel_id, f"{name} for an unknown channel"))
            return
        self._apply(known, message)

    def _open_channel(self, temporary_channel_id: bytes, message: peer_pb2.PeerMessage
                      ) -> None:
        if temporary_channel_id in self._by_id:
            self._outbox.append(warning(temporary_channel_id,
                                        "open_channel reuses a channel id in use"))
            return
        driver = (self.accept_channel(self, message.open_channel)
                  if self.accept_channel is not None else None)
        if driver is None:
            self._outbox.append(error(temporary_channel_id, "channel refused"))
            return
        self.add_channel(driver)
        if self._apply(driver, message) is not None:
            # The open was refused: forget the channel (nothing of it was stored).
            self.drivers.remove(driver)
            self._by_id = {k: d for k, d in self._by_id.items() if d is not driver}
            self._outbox.append(error(temporary_channel_id, "open_channel refused"))

    def _apply(self, driver: ChannelDriver, message: peer_pb2.PeerMessage
               ) -> Disposition | None:
        disposition = driver.handle(message)
        if disposition is Disposition.WARN:
            self._warn_and_close(driver.channel_id, "message refused; reconnect to resync")
        return disposition

    def _warn_and_close(self, channel_id: bytes, text: str) -> None:
        self._outbox.append(warning(channel_id or ZERO32, text))
        self.close(text)

    async def _execute_loop(self, link: FrameLink) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            try:
                await self._drain()
            except PersistFailed as exc:
                log.warning("peer %s: %s", self.peer_node_id.hex(), exc)
                self._forget_lost()
                self._outbox.clear()  # computed from state that is not durable
                return
            try:
                await self._flush(link)
            except LinkClosed:
                return
            if self._close_reason is not None:
                return

    def _forget_lost(self) -> None:
        lost = [d for d in self.drivers if d.lost]
        for driver in lost:
            self.drivers.remove(driver)
        self._by_id = {k: d for k, d in self._by_id.items() if not d.lost}

    async def _drain(self) -> None:
        """Commit what is pending, run every queue, until nothing is left. One drainer
        at a time (the link's executor, the disconnect, an offline ``idle``): two would
        interleave one channel's actions."""
        async with self._drain_lock:
            await self._drain_locked()

    async def _drain_locked(self) -> None:
        while True:
            if self._link is not None:
                for driver in self.drivers:
                    driver.maybe_commit()
            busy = [d for d in self.drivers if d.queued]
            if not busy:
                break
            for driver in busy:
                await driver.run_queued(self._outbox)
        self._drained.set()
        self._drained = trio.Event()
        self._notify_changed()

    async def _flush(self, link: FrameLink) -> None:
        while self._outbox:
            chunk = self._outbox[:self.limits.max_messages]
            del self._outbox[:self.limits.max_messages]
            await link.send(peer_pb2.PeerFrame(messages=chunk))

    async def idle(self) -> None:
        """Wait until nothing is queued. Without a link, execute the queue here: a
        command given while the peer is offline (``fail`` for a force close,
        ``funding_confirmed``) runs when you ``await session.idle()``, its Sends
        dropped (reestablish resends what the peer must see)."""
        while True:
            if self._link is None:
                try:
                    await self._drain()
                except PersistFailed as exc:
                    log.warning("peer %s: %s", self.peer_node_id.hex(), exc)
                    self._forget_lost()
                finally:
                    if self._link is None:
                        self._outbox.clear()
                return
            if not (self._queued or self._wakeup.is_set()):
                return
            # The executor's next round, or the end of the link (then: offline above).
            # Not ``_drained``: a link whose run is cancelled ends without a drain, and
            # an idle waiting for one waited for ever (seen: a shielded SDK exit hung).
            await self.wait_changed()
