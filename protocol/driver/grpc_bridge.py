"""The bridge between trio (which owns all channel state) and grpc.aio (which owns the
sockets), used alike by the hub's gRPC edge and by the client SDK's transport.

Theory of operation (DESIGN.md, "Concurrency"). grpcio's asyncio API runs on its own
asyncio event loop in one dedicated thread (``open_grpc_bridge``); every gRPC object,
server or client channel, of the process lives on that loop, however many streams are
open: no thread per client. Trio code and asyncio code never call each other
directly; they hand each other *callbacks*:

- toward trio: ``GrpcBridge.to_trio(fn, *args)``, which queues ``fn`` and wakes trio
  with ``TrioToken.run_sync_soon``; toward asyncio: ``GrpcBridge.to_asyncio``, which
  wakes the loop with ``loop.call_soon_threadsafe``. Neither blocks the caller. Each
  direction keeps one FIFO queue drained in one wake-up, so callbacks run in the
  order they were queued and a burst of messages on many streams costs one
  thread wake-up, not one each. A callback that raises is logged and dropped: a
  callback handed to trio never raises into trio's run loop.
- unary calls: ``run_in_trio`` (asyncio awaits a trio function run as a task in the
  bridge's nursery; cancelling the asyncio side cancels the trio task) and
  ``run_in_asyncio`` (trio awaits a coroutine run on the loop; cancelling the trio
  side cancels the coroutine).
- streams: ``BridgedStream`` is one gRPC stream seen from trio (``send``,
  ``receive``, ``aclose``: for ``PeerFrame``s it is the driver's ``FrameLink``) and
  pumped on the asyncio side by ``pump(read, write)``, which works on a server's
  ``ServicerContext`` and on a client's ``StreamStreamCall`` alike. A credit window
  bounds each direction: trio's ``send`` takes a credit (waiting when there is none)
  and gets it back once gRPC has accepted the message; the asyncio reader takes a
  credit per message read and gets it back when trio's ``receive`` consumes it. So at
  most ``window_messages`` messages wait on either side per stream; a slow reader
  stops the reads, gRPC's HTTP/2 flow control then stops the peer's writes, and the
  peer's ``send`` waits: backpressure end to end, never an unbounded queue.

Bounds: gRPC's own ``max_receive_message_length`` refuses oversized messages before
they are parsed (``grpc_options``); ``BridgedStream.send`` refuses to send one
(``MessageTooLarge``) and a ``check_received`` hook can refuse a parsed message (too
many protocol messages in a frame), which ends the stream with ``StreamAborted``.

Errors: ``LinkClosed`` (the link's only error, from ``protocol/driver/link.py``) when
a stream ends; ``BridgeClosed`` when the bridge itself is shutting down;
``RpcStatusError`` is a gRPC status (code, details) raised by trio-side handlers on
the server and by calls on the client.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from protocol.driver.link import LinkClosed

log = logging.getLogger(__name__)

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

T = TypeVar("T")
SendT = TypeVar("SendT", bound=Message)
RecvT = TypeVar("RecvT", bound=Message)

# A peer-link frame carries a batch of protocol messages; the largest single message
# (commitment_signed with 483 HTLC signatures) is ~31 kB, so 1 MiB leaves the driver
# room for large batches while bounding what one stranger can make us buffer.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# Messages in flight per stream and direction. With 1 MiB frames this bounds a link's
# buffers to 2 x 8 MiB; a batch per frame makes a small window enough for throughput.
DEFAULT_WINDOW_MESSAGES = 8


class BridgeClosed(Exception):
    """The bridge (its asyncio thread or its trio nursery) is shutting down."""


class MessageTooLarge(ValueError):
    """A message above the stream's size bound was not sent (our own bug: the sender
    must split its batch)."""


class RpcStatusError(Exception):
    """A gRPC status other than OK: raised by trio-side handlers (the edge answers the
    call with it) and by client calls (from the status the server sent)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class StreamAborted(Exception):
    """The asyncio pump refused a received message; the stream ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# A peer that vanished without closing its TCP connection (a partition, a laptop lid)
# must not look online for hours: both sides ping every 20 s of silence and give up
# after 10 s without an answer, so a dead link ends (LinkClosed) within ~30 s and the
# hub fails payments to that client back instead of holding them.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000


def grpc_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
                 server: bool = False) -> list[tuple[str, Any]]:
    """Channel/server options both sides use: the message size bound in both
    directions (gRPC refuses a larger message with RESOURCE_EXHAUSTED before parsing
    it), keepalive pings (see ``KEEPALIVE_TIME_MS``), and for a server no port
    sharing (two servers must never silently share a port) and acceptance of the
    clients' pings."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server:
        options += [
            ("grpc.so_reuseport", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ]
    return options


class _CallbackQueue:
    """One direction of the bridge: a FIFO of callbacks and one pending wake-up.

    ``push`` may be called from any thread; ``drain`` runs in the receiving thread.
    The lock makes "append, and schedule a wake-up unless one is pending" atomic
    against "take everything, and clear the pending flag"."""

    def __init__(self, wake: Callable[[Callable[[], None]], object], name: str) -> None:
        self._wake = wake
        self._name = name
        self._lock = threading.Lock()
        self._items: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self._scheduled = False
        self.closed = False

    def push(self, fn: Callable[..., object], args: tuple[object, ...]) -> bool:
        with self._lock:
            if self.closed:
                return False
            self._items.append((fn, args))
            if self._scheduled:
                return True
            self._scheduled = True
        try:
            self._wake(self.drain)
        except (RuntimeError, trio.RunFinishedError):
            # The receiving loop is gone: nothing can run there any more.
            with self._lock:
                self.closed = True
                self._items.clear()
            return False
        return True

    def drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception:
                log.exception("bridge callback toward %s raised; dropped", self._name)


class GrpcBridge:
    """The two directions between one trio run and one asyncio loop thread.

    Made by ``open_grpc_bridge``; ``loop`` is the asyncio loop every grpc.aio object
    of the process must be created on (``run_in_asyncio`` a coroutine that makes it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, trio_token: trio.lowlevel.TrioToken,
                 nursery: trio.Nursery) -> None:
        self.loop = loop
        self._nursery = nursery
        self._toward_trio = _CallbackQueue(trio_token.run_sync_soon, "trio")
        self._toward_asyncio = _CallbackQueue(loop.call_soon_threadsafe, "asyncio")

    # -- callbacks -------------------------------------------------------------------

    def to_trio(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` soon in trio's thread (call from any thread; never blocks,
        never raises). False if trio is gone."""
        return self._toward_trio.push(fn, args)

    def to_asyncio(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` soon on the asyncio loop (call from any thread; never
        blocks, never raises). False if the loop is gone."""
        return self._toward_asyncio.push(fn, args)

    # -- calls -----------------------------------------------------------------------

    async def run_in_asyncio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """From trio: run the coroutine ``fn(*args)`` on the loop and return its result
        (or raise its exception). Cancelling the trio caller cancels the coroutine."""
        done = trio.Event()

        async def wrapper() -> T:
            return await fn(*args)

        coroutine = wrapper()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError as exc:
            coroutine.close()
            raise BridgeClosed("asyncio loop is closed") from exc
        future.add_done_callback(lambda _: self.to_trio(done.set))
        try:
            await done.wait()
        finally:
            if not future.done():
                future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError as exc:
            raise BridgeClosed("asyncio side cancelled") from exc

    async def run_in_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """From asyncio: run ``fn(*args)`` as a task in the bridge's trio nursery and
        return its result (or raise its exception). Cancelling the asyncio caller
        cancels the trio task; a trio task cancelled from outside (shutdown) raises
        ``BridgeClosed`` here."""
        future: asyncio.Future[T] = self.loop.create_future()
        call = _TrioCall()
        if not self.to_trio(self._start_trio_call, call, future, fn, args):
            raise BridgeClosed("trio side is gone")
        try:
            return await future
        except asyncio.CancelledError:
            self.to_trio(call.cancel)
            raise

    def spawn_in_trio(self, fn: Callable[..., Awaitable[object]], *args: Any) -> bool:
        """From any thread: start ``fn(*args)`` as a trio task in the bridge's nursery;
        its exceptions are logged, never propagated. False if trio is gone."""
        return self.to_trio(self._nursery.start_soon, self._logged, fn, args)

    @staticmethod
    async def _logged(fn: Callable[..., Awaitable[object]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("trio task %r raised", fn)

    def _start_trio_call(self, call: _TrioCall, future: asyncio.Future[T],
                         fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> None:
        call.scope = trio.CancelScope()
        if call.cancelled:
            call.scope.cancel()
        self._nursery.start_soon(self._run_trio_call, call, future, fn, args)

    async def _run_trio_call(self, call: _TrioCall, future: asyncio.Future[T],
                             fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> None:
        outcome: tuple[bool, object] | None = None
        try:
            assert call.scope is not None
            with call.scope:
                outcome = (True, await fn(*args))
        except Exception as exc:
            outcome = (False, exc)
        finally:
            if outcome is None:
                outcome = (False, BridgeClosed("trio side cancelled"))
            self.to_asyncio(_resolve_future, future, outcome)


class _TrioCall:
    """A trio task running for an asyncio caller; ``cancel`` runs in trio."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def _resolve_future(future: asyncio.Future[Any], outcome: tuple[bool, object]) -> None:
    if future.done():  # the asyncio caller was cancelled meanwhile
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        assert isinstance(value, BaseException)
        future.set_exception(value)


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


async def _cancel_all_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    try:
        asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@asynccontextmanager
async def open_grpc_bridge(name: str = "grpc-asyncio") -> AsyncIterator[GrpcBridge]:
    """Start the asyncio loop thread and a trio nursery for the bridged tasks; on exit,
    cancel every asyncio task, stop the loop and join the thread, then cancel the
    trio-side tasks. Close gRPC servers and channels (gracefully) before leaving."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=_run_loop, args=(loop, ready), name=name, daemon=True)
    thread.start()
    await trio.to_thread.run_sync(ready.wait)
    async with trio.open_nursery() as nursery:
        bridge = GrpcBridge(loop, trio.lowlevel.current_trio_token(), nursery)
        try:
            yield bridge
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_stop_loop, loop, thread)
            bridge._toward_asyncio.closed = True
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------------
# Streams.
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of one stream (trio side), for metrics and tests."""

    messages_sent: int
    messages_received: int
    incoming_buffered: int  # received, not yet taken by ``receive`` (<= window)
    send_credit: int  # messages ``send`` may still queue without waiting
    send_blocked: bool  # a ``send`` is waiting for credit right now
    closed: bool


class BridgedStream(Generic[SendT, RecvT]):
    """One gRPC stream: trio side ``send``/``receive``/``aclose`` (a ``FrameLink`` when
    both types are ``PeerFrame``), asyncio side ``pump``.

    Attributes named ``_t_*`` are touched only in trio's thread, ``_a_*`` only on the
    asyncio loop; they cross only as arguments of bridge callbacks.
    """

    def __init__(self, bridge: GrpcBridge, *, window_messages: int = DEFAULT_WINDOW_MESSAGES,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 check_received: Callable[[RecvT], None] | None = None) -> None:
        if window_messages < 1:
            raise ValueError("window_messages must be at least 1")
        self._bridge = bridge
        self._window = window_messages
        self._max_message_bytes = max_message_bytes
        self._check_received = check_received
        # trio side
        self._t_incoming: collections.deque[RecvT] = collections.deque()
        self._t_send_credit = window_messages
        self._t_changed = trio.Event()  # replaced after each wake-up
        self._t_local_closed = False
        self._t_remote_closed: str | None = None  # why the stream ended
        self._t_pump_done = trio.Event()
        self._t_send_blocked = False
        self._t_sent = 0
        self._t_received = 0
        # asyncio side (events made in pump, on the loop)
        self._a_outgoing: collections.deque[SendT] = collections.deque()
        self._a_recv_credit = window_messages
        self._a_changed: asyncio.Event | None = None
        self._a_close_requested = False
        self._a_abort_requested = False
        self._a_task: asyncio.Task[Any] | None = None  # the pump, while it runs
        self._a_writing = False

    # -- trio side -------------------------------------------------------------------

    def _t_wake(self) -> None:
        self._t_changed.set()
        self._t_changed = trio.Event()

    async def send(self, message: SendT) -> None:
        """Queue one message to the peer, in order; waits while the window is full.
        Raises ``LinkClosed`` once the stream is closed, ``MessageTooLarge`` (sending
        nothing) above the size bound."""
        size = message.ByteSize()
        if size > self._max_message_bytes:
            raise MessageTooLarge(f"message of {size} bytes above the bound "
                                  f"{self._max_message_bytes}")
        while True:
            if self._t_local_closed or self._t_remote_closed is not None:
                raise LinkClosed(self._t_remote_closed or "closed by us")
            if self._t_send_credit > 0:
                break
            self._t_send_blocked = True
            self._t_wake()  # observers (wait_until) see the sender blocked
            try:
                await self._t_changed.wait()
            finally:
                self._t_send_blocked = False
        self._t_send_credit -= 1
        self._t_sent += 1
        if not self._bridge.to_asyncio(self._a_enqueue, message):
            self._t_on_closed("bridge closed")
            raise LinkClosed("bridge closed")

    async def receive(self) -> RecvT:
        """The next message from the peer (those already received are delivered even
        after the peer closed). Raises ``LinkClosed`` when the stream has ended."""
        while True:
            if self._t_local_closed:
                raise LinkClosed("closed by us")
            if self._t_incoming:
                message = self._t_incoming.popleft()
                self._bridge.to_asyncio(self._a_grant_recv_credit)
                return message
            if self._t_remote_closed is not None:
                raise LinkClosed(self._t_remote_closed)
            await self._t_changed.wait()

    def close_nowait(self) -> None:
        """Close our side without waiting: what was sent is still flushed, then the
        stream ends; ``send``/``receive`` raise ``LinkClosed`` from now on."""
        if not self._t_local_closed:
            self._t_local_closed = True
            self._t_incoming.clear()
            self._bridge.to_asyncio(self._a_request_close, False)
            self._t_wake()

    def abort(self) -> None:
        """End the stream now, dropping what is queued (the peer sees CANCELLED)."""
        self.close_nowait()
        self._bridge.to_asyncio(self._a_request_close, True)

    async def aclose(self) -> None:
        """Close our side and wait until what was sent is flushed and the stream has
        ended. Cancelled, it aborts the stream instead."""
        self.close_nowait()
        try:
            await self._t_pump_done.wait()
        except trio.Cancelled:
            self.abort()
            raise

    async def wait_until(self, predicate: Callable[[StreamStats], bool]) -> StreamStats:
        """Wait until ``predicate(self.stats())`` holds, re-checked on every change of
        this stream (observability and tests: e.g. "a send is blocked on credit")."""
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            await self._t_changed.wait()

    def fail(self, reason: str) -> None:
        """Mark the stream ended from trio when its pump never ran (the call could not
        be made): waiters wake and every later call raises ``LinkClosed``."""
        self._t_on_closed(reason)

    async def wait_closed(self) -> None:
        """Return once the stream has ended (either side)."""
        await self._t_pump_done.wait()

    @property
    def closed_reason(self) -> str | None:
        """Why the stream ended (None while open, or closed only by us)."""
        return self._t_remote_closed

    def stats(self) -> StreamStats:
        return StreamStats(self._t_sent, self._t_received, len(self._t_incoming),
                           self._t_send_credit, self._t_send_blocked,
                           self._t_local_closed or self._t_remote_closed is not None)

    # callbacks run in trio, queued by the asyncio side
    def _t_deliver(self, message: RecvT) -> None:
        if self._t_local_closed:
            return
        self._t_received += 1
        self._t_incoming.append(message)
        self._t_wake()

    def _t_grant_send_credit(self) -> None:
        self._t_send_credit += 1
        self._t_wake()

    def _t_on_closed(self, reason: str) -> None:
        if self._t_remote_closed is None:
            self._t_remote_closed = reason
        self._t_pump_done.set()
        self._t_wake()

    # -- asyncio side ----------------------------------------------------------------

    def _a_wake(self) -> None:
        if self._a_changed is not None:
            self._a_changed.set()

    def _a_enqueue(self, message: SendT) -> None:
        self._a_outgoing.append(message)
        self._a_wake()

    def _a_grant_recv_credit(self) -> None:
        self._a_recv_credit += 1
        self._a_wake()

    def _a_request_close(self, abort: bool) -> None:
        self._a_close_requested = True
        if abort and not self._a_abort_requested:
            self._a_abort_requested = True
            if self._a_writing and self._a_task is not None:
                # A write the peer does not read would never return: interrupt it.
                self._a_task.cancel()
        self._a_wake()

    async def pump(self, read: Callable[[], Awaitable[Any]] | None,
                   write: Callable[[SendT], Awaitable[None]] | None,
                   done_writing: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run the stream on the asyncio loop until it ends: read (``read()`` returning
        ``grpc.aio.EOF`` at the end) while trio has credit, write what trio sends.
        ``read`` is None for a server-streaming call, ``write`` None for a
        client-streaming one. Returns when the peer ended the stream, or when trio
        closed it and everything queued was written (then ``done_writing`` if given);
        raises ``StreamAborted`` when ``check_received`` refused a message or trio
        aborted the stream (the caller ends the call with that status). Always tells
        trio the stream is over."""
        self._a_changed = asyncio.Event()
        self._a_task = asyncio.current_task()
        reason = "stream ended"
        reader = asyncio.ensure_future(self._a_read_loop(read)) if read is not None else None
        try:
            while True:
                self._a_changed.clear()
                if self._a_abort_requested:
                    reason = "aborted by us"
                    raise StreamAborted(grpc.StatusCode.CANCELLED, "link aborted")
                if write is not None and self._a_outgoing:
                    message = self._a_outgoing.popleft()
                    self._a_writing = True
                    try:
                        await write(message)
                    finally:
                        self._a_writing = False
                    self._bridge.to_trio(self._t_grant_send_credit)
                    continue
                if self._a_close_requested:
                    reason = "closed by us"
                    if done_writing is not None:
                        await done_writing()
                        if reader is not None:
                            # Wait for the peer to end its side, so what we wrote is
                            # read before the call goes away.
                            await reader
                    return
                if reader is not None and reader.done():
                    reason = reader.result()
                    return
                await self._a_changed.wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._a_abort_requested and task is not None and task.uncancel() == 0:
                reason = "aborted by us"
                raise StreamAborted(grpc.StatusCode.CANCELLED, "link aborted") from None
            reason = "stream cancelled"
            raise
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            reason = f"stream failed: {exc}"
        finally:
            self._a_task = None
            if reader is not None and not reader.done():
                reader.cancel()
            self._bridge.to_trio(self._t_on_closed, reason)

    async def _a_read_loop(self, read: Callable[[], Awaitable[Any]]) -> str:
        assert self._a_changed is not None
        changed = self._a_changed
        try:
            while True:
                while self._a_recv_credit <= 0:
                    await _wait_event(changed)
                message = await read()
                if message is _EOF:
                    return "peer ended the stream"
                if self._check_received is not None:
                    self._check_received(message)
                self._a_recv_credit -= 1
                self._bridge.to_trio(self._t_deliver, message)
        except grpc.aio.AioRpcError as exc:
            return f"stream failed: {exc.code().name} {exc.details()}"
        finally:
            changed.set()


async def _wait_event(event: asyncio.Event) -> None:
    # The pump loop clears the shared event on each turn; waiting on it here is only a
    # wake-up hint, the caller re-checks its condition.
    await event.wait()
    event.clear()
