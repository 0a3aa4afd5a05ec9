"""The router: payer channel -> hub -> payee channel, one durable forward per HTLC.

Theory of operation. The hub's ``DriverContext.on_event`` hands the router every
HTLC event of every channel (``HubNode``). Nothing here awaits inside ``on_event``
(it runs in the peer session's task, and a wait there would stall that client's
other channels): what must wait for the store runs in a task of the router's own
nursery.

- ``HtlcReceived`` (the client's HTLC, irrevocably committed): decode the forward
  header (``protocol.routing.decode_forward``), pick the payee's channel, ask
  ``hub.policy.decide_forward``. A forward: ``add_htlc`` on the payee's channel
  (synchronous: nothing leaves yet), then the new in-flight record is *attached* to
  that channel's next snapshot write (``HubChannelStore.attach``): the first snapshot
  that holds the outgoing HTLC commits together with its record, and the update
  reaches the payee only after that (the driver's Persist ordering). A refusal: the
  failure (signed by the hub, ``encode_failure``) is stored with the record, then the
  incoming HTLC is failed back with it.
- A forward the payee's channel refuses only *until the payee acknowledges* the
  HTLCs before it (``AwaitingAcknowledgement``: the payee funds the channel, and its
  fee headroom pays for the HTLCs it has acknowledged, ``protocol.rules``) is
  *parked*, not failed: queued per payee in arrival order (a new forward toward a
  payee with a queue joins its end), offered again after each frame from the payee
  (``retry_parked``, HubNode) up to the first that must wait again; each attempt
  re-runs ``decide_forward``, so one whose payee went offline, whose expiry came too
  close or whose liquidity went is refused as a new one would be, and one whose
  payer's channel failed or went on chain meanwhile is refused (``TEMPORARY_FAILURE``).
  One that waited ``PARKED_FORWARD_TIMEOUT_S`` is refused (``INSUFFICIENT_CAPACITY``).
  Parked forwards are memory only: nothing of them was offered or stored, and after a
  restart their incoming HTLCs have no record, so ``settle_received`` routes them as
  new.
- ``HtlcFulfilled`` on an outgoing HTLC: the preimage is stored (awaited, retried
  through a failed commit), and only then the incoming HTLC is fulfilled.
- ``HtlcFailed`` on an outgoing HTLC: the payee's signed reason is relayed unchanged
  (a local failure: a reverted add, a failed channel, gets the hub's
  ``TEMPORARY_FAILURE``); stored first, then failed back. A stale ``HtlcFailed`` (a
  revert reported after the same htlc id was offered again) is recognised because
  the book still holds that id unresolved, and ignored.

Why the hub cannot lose on a forward: the outgoing HTLC is offered only from an
irrevocably committed incoming HTLC, with policy's amount and expiry margins; every
outgoing HTLC has a durable record naming its incoming HTLC; the incoming HTLC is
failed only once its outgoing HTLC failed or never existed, and fulfilled with the
stored preimage. An incoming HTLC is decided once: its record stays in ``by_incoming``
from the decision until the HTLC has left its channel's book (``forget_settled``),
not only until its fulfill or fail is queued: a disconnect reverts a queued removal
the peer never signed for (the channel re-sends it), and the stored records
``settle_received`` is given were read when the link opened, perhaps before the
decision was stored. Without that, the HTLC would look new and be routed a second
time (seen in the kill -9 test: refused while the payee was offline, then offered to
it once it was back, fulfilled by the payee and failed to the payer).
``reconcile`` re-applies these rules after a restart from the store and the restored
channel books: outgoing fulfilled -> fulfill incoming; outgoing failed or absent ->
fail incoming; still pending -> wait for its event; an incoming HTLC with no record ->
routed as new.

On chain (the channels' watches, protocol/driver/enforce.py): only a NORMAL channel
is forwarded into (an ON_CHAIN or RESOLVED one never: ``UNKNOWN_PAYEE``, as for a
closed one). An outgoing HTLC the payee holds past its deadline is settled on chain by
the watch; ``outgoing_timed_out_on_chain`` fails the incoming one back once the
timeout claim is buried (HubNode, on ``ClaimBuried``). An incoming HTLC whose channel
refuses the fulfill (on chain, failed) gets its preimage to that channel's watch
(``preimage_to_chain``), which claims it on chain.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import trio

from channel.commitment import Side
from hub.events import EventLog
from hub.ledger import (
    FAILED,
    IN_FLIGHT,
    SUCCEEDED,
    ForwardRecord,
    HubChannelStore,
    WriteFn,
    insert_forward,
    new_payment_id,
    upsert_forward,
)
from hub.policy import FeePolicy, IncomingHtlc, OutgoingChannel, OutgoingHtlc, decide_forward
from proto import client_pb2
from protocol.actions import HtlcFailed, HtlcFulfilled, HtlcReceived
from protocol.driver.driver import ChannelDriver
from protocol.driver.peer import PeerSession
from protocol.driver.writer import CommitFailed, WriterClosed
from protocol.errors import AwaitingAcknowledgement, LocalProtocolError
from protocol.routing import (
    Failure,
    FailureCode,
    FailureOrigin,
    ForwardInstructions,
    RoutingFormatError,
    decode_failure,
    decode_forward,
    encode_failure,
)
from protocol.table import ChannelState, LinkState

log = logging.getLogger(__name__)

FR = client_pb2.FailureReason
_REASONS: dict[FailureCode, int] = {
    FailureCode.UNKNOWN_PAYEE: FR.FAILURE_REASON_UNKNOWN_DESTINATION,
    FailureCode.PAYEE_OFFLINE: FR.FAILURE_REASON_PAYEE_OFFLINE,
    FailureCode.INSUFFICIENT_CAPACITY: FR.FAILURE_REASON_INSUFFICIENT_BALANCE,
    FailureCode.AMOUNT_BELOW_MINIMUM: FR.FAILURE_REASON_AMOUNT_OUT_OF_RANGE,
    FailureCode.FEE_INSUFFICIENT: FR.FAILURE_REASON_FEE_INSUFFICIENT,
    FailureCode.INCORRECT_CLTV_EXPIRY: FR.FAILURE_REASON_EXPIRY_TOO_SOON,
    FailureCode.EXPIRY_TOO_SOON: FR.FAILURE_REASON_EXPIRY_TOO_SOON,
    FailureCode.EXPIRY_TOO_FAR: FR.FAILURE_REASON_EXPIRY_TOO_SOON,
    FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS: FR.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS,
    FailureCode.FINAL_INCORRECT_CLTV_EXPIRY: FR.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS,
    FailureCode.FINAL_INCORRECT_HTLC_AMOUNT: FR.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS,
    FailureCode.INVOICE_EXPIRED: FR.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS,
    FailureCode.ALREADY_PAID: FR.FAILURE_REASON_INCORRECT_PAYMENT_DETAILS,
}


def failure_reason(code: FailureCode | None) -> int:
    if code is None:
        return int(FR.FAILURE_REASON_OTHER)
    return int(_REASONS.get(code, FR.FAILURE_REASON_OTHER))


def payment_proto(record: ForwardRecord, client_node_id: bytes) -> client_pb2.Payment:
    """The record as ``client_node_id`` sees it (the payer: SENT, the payee: RECEIVED,
    the payer's identity withheld)."""
    sent = record.payer_node_id == client_node_id
    state = {IN_FLIGHT: client_pb2.PAYMENT_STATE_IN_FLIGHT,
             SUCCEEDED: client_pb2.PAYMENT_STATE_SUCCEEDED,
             FAILED: client_pb2.PAYMENT_STATE_FAILED}[record.state]
    payment = client_pb2.Payment(
        payment_id=record.payment_id,
        direction=(client_pb2.PAYMENT_DIRECTION_SENT if sent
                   else client_pb2.PAYMENT_DIRECTION_RECEIVED),
        state=state, payment_hash=record.payment_hash,
        payment_preimage=record.payment_preimage or b"",
        amount_msat=record.amount_out_msat,
        fee_msat=record.fee_msat if sent else 0,
        counterparty_node_id=(record.payee_node_id or b"") if sent else b"",
        created_at_unix=record.created_at_unix, resolved_at_unix=record.resolved_at_unix,
        failure_reason=record.failure_reason,  # type: ignore[arg-type]
        failure_message=record.failure_message)
    return payment


# Channel states with no off-chain future: nothing is forwarded from them.
_GONE = (ChannelState.FAILED, ChannelState.ON_CHAIN, ChannelState.RESOLVED)

# How long a forward may wait for the payee's acknowledgement (module docstring)
# before it is refused as if the channel could not take it.
PARKED_FORWARD_TIMEOUT_S = 30.0


@dataclass
class _Parked:
    """A forward waiting for its payee's acknowledgement; ``deadline`` in trio time
    (0: not parked yet)."""
    record: ForwardRecord
    forward: ForwardInstructions
    packet: bytes
    deadline: float


@dataclass
class RouterStats:
    forwarded: int = 0
    succeeded: int = 0
    failed: int = 0
    refused: int = 0
    parked: int = 0


class Router:
    def __init__(self, *, store: HubChannelStore, events: EventLog, node_secret: bytes,
                 hub_node_id: bytes, sessions: dict[bytes, PeerSession],
                 drivers: dict[bytes, ChannelDriver], fee_policy: Callable[[], FeePolicy],
                 cltv_expiry_delta_blocks: int, min_htlc_msat: int,
                 height: Callable[[], int], now_unix: Callable[[], int],
                 preimage_to_chain: Callable[[ChannelDriver, bytes], None] | None = None
                 ) -> None:
        """``preimage_to_chain(driver, preimage)``: hand a preimage to the incoming
        channel's watch when that channel refuses the fulfill off chain (it is on
        chain, or failed): the watch claims the payer's HTLC on chain with it."""
        self.store = store
        self.events = events
        self.node_secret = node_secret
        self.hub_node_id = hub_node_id
        self.sessions = sessions
        self.drivers = drivers
        self.fee_policy = fee_policy
        self.cltv_expiry_delta_blocks = cltv_expiry_delta_blocks
        self.min_htlc_msat = min_htlc_msat
        self.height = height
        self.now_unix = now_unix
        self.preimage_to_chain = preimage_to_chain
        self.stats = RouterStats()
        # Forwards by incoming HTLC, from the decision until that HTLC has left its
        # channel's book (module docstring); by outgoing HTLC while in flight.
        self.by_incoming: dict[tuple[bytes, int], ForwardRecord] = {}
        self.by_outgoing: dict[tuple[bytes, int], ForwardRecord] = {}
        # Incoming HTLCs settled off chain (fulfill or fail queued) and still in their
        # channel's book: channel key -> htlc ids (``forget_settled``).
        self.settling: dict[bytes, set[int]] = {}
        # Resolved forwards whose incoming HTLC waits for its link: key -> htlc id -> record.
        self.deferred: dict[bytes, dict[int, ForwardRecord]] = {}
        # Forwards waiting for their payee's acknowledgement, in arrival order per payee.
        self.parked: dict[bytes, deque[_Parked]] = {}
        self.parked_incoming: set[tuple[bytes, int]] = set()
        self._parked_added = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._stopped = False
        self._tasks = 0
        self._idle = trio.Event()

    # -- life cycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._expire_parked()
        finally:
            self._stopped = True

    async def _expire_parked(self) -> None:
        """Refuse each parked forward whose deadline passed: sleeps until the earliest
        deadline, or until something is parked."""
        while True:
            deadlines = [queue[0].deadline for queue in self.parked.values()]
            with trio.move_on_at(min(deadlines) if deadlines else math.inf):
                await self._parked_added.wait()
                self._parked_added = trio.Event()
                continue
            now = trio.current_time()
            for payee, queue in list(self.parked.items()):
                # FIFO with one timeout: the deadlines in a queue never decrease.
                while queue and queue[0].deadline <= now:
                    expired = queue.popleft()
                    self.parked_incoming.discard(expired.record.incoming)
                    log.info("forward %s: the payee did not acknowledge in time",
                             expired.record.payment_id)
                    self._refuse(expired.record, Failure(FailureCode.INSUFFICIENT_CAPACITY),
                                 expired.packet)
                if not queue:
                    del self.parked[payee]

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._stopped:
            # A link's last act after the hub stopped (its parked forwards refused):
            # nothing was stored, and reconcile() decides it after the restart.
            log.debug("router stopped: %s left to the restart", fn.__name__)
            return
        assert self._nursery is not None, "Router.run is not running"
        self._tasks += 1

        async def task() -> None:
            try:
                await fn(*args)
            finally:
                self._tasks -= 1
                if not self._tasks:
                    self._idle.set()
                    self._idle = trio.Event()

        self._nursery.start_soon(task)

    async def idle(self) -> None:
        """Wait until no resolution is being stored (tests, drain)."""
        while self._tasks:
            await self._idle.wait()

    # -- events (from DriverContext.on_event; never await the store here) ----------------

    def on_event(self, driver: ChannelDriver, event: object) -> None:
        if isinstance(event, HtlcReceived):
            self.route(driver, event.htlc_id, event.amount_msat, event.payment_hash,
                       event.cltv_expiry, event.onion_routing_packet)
        elif isinstance(event, HtlcFulfilled):
            self._outgoing_fulfilled(driver, event)
        elif isinstance(event, HtlcFailed):
            self._outgoing_failed(driver, event)

    def route(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
              payment_hash: bytes, cltv_expiry: int, packet: bytes) -> None:
        key = (driver.channel_key, htlc_id)
        if key in self.by_incoming or key in self.parked_incoming:
            return  # decided already (being forwarded or settled), or held
        htlc = driver.channel.d.book.htlcs.get((Side.REMOTE, htlc_id))
        if htlc is None or htlc.removal is not None or htlc.payment_hash != payment_hash:
            return  # not an unresolved HTLC of this channel (any more): nothing to route
        now = self.now_unix()
        record = ForwardRecord(
            payment_id=new_payment_id(), payer_node_id=driver.peer_node_id,
            incoming_channel_key=driver.channel_key, incoming_htlc_id=htlc_id,
            payee_node_id=None, outgoing_channel_key=None, outgoing_htlc_id=None,
            payment_hash=payment_hash, amount_in_msat=amount_msat, amount_out_msat=0,
            cltv_in=cltv_expiry, cltv_out=0, state=IN_FLIGHT, created_at_unix=now)
        try:
            forward = decode_forward(packet)
        except RoutingFormatError:
            self._refuse(record, Failure(FailureCode.INVALID_ONION_PAYLOAD), packet)
            return
        record = ForwardRecord(**{**record.row(), "payee_node_id": forward.payee_node_id,
                                  "amount_out_msat": forward.amount_to_forward_msat,
                                  "cltv_out": forward.outgoing_cltv_value})
        parked = _Parked(record, forward, packet, deadline=0.0)
        if forward.payee_node_id in self.parked or not self._forward(parked):
            self._park(parked)  # behind the ones already waiting: arrival order

    def _park(self, parked: _Parked) -> None:
        parked.deadline = trio.current_time() + PARKED_FORWARD_TIMEOUT_S
        self.parked.setdefault(parked.forward.payee_node_id, deque()).append(parked)
        self.parked_incoming.add(parked.record.incoming)
        self.stats.parked += 1
        self._parked_added.set()

    def retry_parked(self, payee_node_id: bytes) -> None:
        """Offer the forwards waiting for this payee, in order, up to the first that
        must wait again (HubNode calls it after each of the payee's frames, and when
        its link ends: then each is refused, the payee offline)."""
        queue = self.parked.get(payee_node_id)  # none, most of the time: one lookup
        while queue:
            head = queue.popleft()
            if not self._forward(head):
                queue.appendleft(head)
                return
            self.parked_incoming.discard(head.record.incoming)
        self.parked.pop(payee_node_id, None)

    def _forward(self, parked: _Parked) -> bool:
        """Decide and offer (or refuse) one forward: False when it must wait for the
        payee's acknowledgement, and nothing was done."""
        record, forward = parked.record, parked.forward
        incoming = self.drivers.get(record.incoming_channel_key)
        if incoming is None or incoming.channel.state in _GONE:
            # The payer's channel failed or went on chain while this forward waited:
            # nothing goes out for an HTLC that is settled on chain, if at all.
            self._refuse(record, Failure(FailureCode.TEMPORARY_FAILURE), parked.packet)
            return True
        out_driver, outgoing = self._outgoing_channel(forward.payee_node_id)
        decision = decide_forward(
            incoming=IncomingHtlc(record.amount_in_msat, record.cltv_in,
                                  record.payment_hash),
            forward=forward, fee_policy=self.fee_policy(),
            cltv_expiry_delta_blocks=self.cltv_expiry_delta_blocks,
            height=self.height(), outgoing=outgoing)
        if isinstance(decision, Failure):
            self._refuse(record, decision, parked.packet)
            return True
        assert out_driver is not None
        return self._offer(parked, out_driver, decision)

    def _offer(self, parked: _Parked, out_driver: ChannelDriver, out: OutgoingHtlc) -> bool:
        record, packet = parked.record, parked.packet
        try:
            out_id = out_driver.add_htlc(out.amount_msat, out.payment_hash, out.cltv_expiry,
                                         onion_routing_packet=out.onion_routing_packet)
        except AwaitingAcknowledgement:
            return False
        except LocalProtocolError as exc:
            log.info("forward %s refused by the payee's channel: %s", record.payment_id,
                     exc.message)
            self._refuse(record, Failure(FailureCode.INSUFFICIENT_CAPACITY), packet)
            return True
        record = ForwardRecord(**{**record.row(),
                                  "outgoing_channel_key": out_driver.channel_key,
                                  "outgoing_htlc_id": out_id})
        # The record rides in the outgoing channel's next snapshot (module docstring).
        self.store.attach(out_driver.channel_key, insert_forward(record))
        self.by_incoming[record.incoming] = record
        self.by_outgoing[(out_driver.channel_key, out_id)] = record
        self.stats.forwarded += 1
        return True

    def _refuse(self, record: ForwardRecord, failure: Failure, packet: bytes) -> None:
        blob = encode_failure(failure, origin=FailureOrigin.HUB,
                              payment_hash=record.payment_hash, onion_routing_packet=packet,
                              node_secret=self.node_secret)
        resolved = record.failed(failure_reason(failure.code), failure.code.name, blob,
                                 self.now_unix())
        self.stats.refused += 1
        self.by_incoming[record.incoming] = resolved
        self._spawn(self._store_then_settle, resolved)

    def _outgoing_fulfilled(self, driver: ChannelDriver, event: HtlcFulfilled) -> None:
        record = self.by_outgoing.pop((driver.channel_key, event.htlc_id), None)
        if record is None or record.payment_hash != event.payment_hash:
            return  # not a forward of ours (or already resolved)
        resolved = record.succeeded(bytes(event.payment_preimage), self.now_unix())
        self.by_incoming[record.incoming] = resolved
        self._spawn(self._store_then_settle, resolved)

    def _outgoing_failed(self, driver: ChannelDriver, event: HtlcFailed) -> None:
        key = (driver.channel_key, event.htlc_id)
        record = self.by_outgoing.get(key)
        if record is None or record.payment_hash != event.payment_hash:
            return
        htlc = driver.channel.d.book.htlcs.get((Side.LOCAL, event.htlc_id))
        if htlc is not None and htlc.removal is None:
            return  # stale: a reverted add reported after the id was offered again
        del self.by_outgoing[key]
        self._fail_back(record, bytes(event.reason))

    def outgoing_timed_out_on_chain(self, driver: ChannelDriver, htlc_id: int) -> None:
        """Our claim of the outgoing HTLC by timeout confirmed (the channel closed on
        chain): the payee can no longer take it, so the incoming one is failed back.
        The book still holds the HTLC unremoved (nothing was agreed off chain), which
        ``_outgoing_failed`` would take for a stale report."""
        record = self.by_outgoing.pop((driver.channel_key, htlc_id), None)
        if record is not None:
            self._fail_back(record, b"")

    def _fail_back(self, record: ForwardRecord, payee_reason: bytes) -> None:
        """Fail the incoming HTLC because its outgoing one failed (or never existed):
        relay the payee's signed reason, or the hub's own temporary failure."""
        code: FailureCode | None = None
        blob = payee_reason
        if payee_reason and record.payee_node_id is not None:
            try:
                code = decode_failure(
                    payee_reason, payment_hash=record.payment_hash,
                    onion_routing_packet=self._packet_of(record),
                    hub_node_id=self.hub_node_id,
                    payee_node_id=record.payee_node_id).failure.code
            except RoutingFormatError:
                blob = b""  # not a valid payee failure: the payer gets ours instead
        if not blob:
            failure = Failure(FailureCode.TEMPORARY_FAILURE)
            code = failure.code
            blob = encode_failure(failure, origin=FailureOrigin.HUB,
                                  payment_hash=record.payment_hash,
                                  onion_routing_packet=self._packet_of(record),
                                  node_secret=self.node_secret)
        resolved = record.failed(failure_reason(code), code.name if code else "", blob,
                                 self.now_unix())
        self.by_incoming[record.incoming] = resolved
        self._spawn(self._store_then_settle, resolved)

    def _packet_of(self, record: ForwardRecord) -> bytes:
        driver = self.drivers.get(record.incoming_channel_key)
        if driver is not None:
            htlc = driver.channel.d.book.htlcs.get((Side.REMOTE, record.incoming_htlc_id))
            if htlc is not None:
                return bytes(htlc.onion)
        return b""

    # -- storing, then settling the incoming HTLC ----------------------------------------

    def _resolution_write(self, record: ForwardRecord) -> WriteFn:
        writes: list[WriteFn] = [upsert_forward(record)]
        payer_events: list[client_pb2.Event] = []
        if record.state == SUCCEEDED:
            payer_events.append(client_pb2.Event(payment_succeeded=client_pb2.PaymentSucceeded(
                payment=payment_proto(record, record.payer_node_id))))
            if record.payee_node_id is not None:
                writes.append(self.events.append_fn(record.payee_node_id, [client_pb2.Event(
                    invoice_paid=client_pb2.InvoicePaid(
                        payment_hash=record.payment_hash, payment_id=record.payment_id,
                        amount_msat=record.amount_out_msat))]))
        else:
            payer_events.append(client_pb2.Event(payment_failed=client_pb2.PaymentFailed(
                payment=payment_proto(record, record.payer_node_id))))
        writes.append(self.events.append_fn(record.payer_node_id, payer_events))

        def write(conn: sa.Connection) -> None:
            for fn in writes:
                fn(conn)

        return write

    async def _store_then_settle(self, record: ForwardRecord) -> None:
        write = self._resolution_write(record)
        while True:
            try:
                await self.store.writer.write(write)
                break
            except CommitFailed:
                log.warning("forward %s: commit failed, storing again", record.payment_id)
            except WriterClosed:
                return  # shutting down: reconcile() finishes it after the restart
        self.events.notify(record.payer_node_id)
        if record.payee_node_id is not None:
            self.events.notify(record.payee_node_id)
        if record.state == SUCCEEDED:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        self.settle_incoming(record)

    def settle_incoming(self, record: ForwardRecord) -> None:
        driver = self.drivers.get(record.incoming_channel_key)
        if driver is None:
            return
        try:
            if record.state == SUCCEEDED:
                assert record.payment_preimage is not None
                driver.fulfill_htlc(record.incoming_htlc_id, record.payment_preimage)
            elif record.state == FAILED:
                driver.fail_htlc(record.incoming_htlc_id, record.failure_blob or b"")
            else:
                return
        except LocalProtocolError as exc:
            # Typically the payer's link is down or reestablishing: retried by
            # ``retry_deferred`` once it is up (HubNode calls it after each frame).
            log.debug("forward %s: incoming not settled now: %s", record.payment_id,
                      exc.message)
            if record.state == SUCCEEDED and self.preimage_to_chain is not None:
                # Never wrong to give the watch: claimed on chain if the channel is
                # (or goes) there; an ON_CHAIN channel has no other way to settle.
                assert record.payment_preimage is not None
                self.preimage_to_chain(driver, record.payment_preimage)
            if driver.channel.state in (ChannelState.ON_CHAIN, ChannelState.RESOLVED):
                if self.by_incoming.get(record.incoming) is record:
                    del self.by_incoming[record.incoming]
                return  # settled on chain by the watch, or timed out there by the payer
            if driver.channel.link is not LinkState.UP:
                self.deferred.setdefault(record.incoming_channel_key, {})[
                    record.incoming_htlc_id] = record
                return
            # Refused on a link that is up: settled already (a removal the channel
            # re-sent after a disconnect, a second attempt); kept like the others.
        # Kept until the HTLC leaves the book (module docstring), also when this is a
        # stored record after a restart: it was not in the map then.
        self.by_incoming[record.incoming] = record
        self.settling.setdefault(record.incoming_channel_key, set()).add(
            record.incoming_htlc_id)

    def forget_settled(self, driver: ChannelDriver) -> None:
        """Drop the records of this channel's settled incoming HTLCs that have left its
        book (HubNode calls it after each frame of the channel's client: the frame that
        completes a removal's commitment round)."""
        settled = self.settling.get(driver.channel_key)
        if not settled:
            return
        book = driver.channel.d.book.htlcs
        for htlc_id in [i for i in settled if (Side.REMOTE, i) not in book]:
            settled.discard(htlc_id)
            self.by_incoming.pop((driver.channel_key, htlc_id), None)
        if not settled:
            del self.settling[driver.channel_key]

    def retry_deferred(self, driver: ChannelDriver) -> None:
        """Settle what was refused while this channel's link was not up."""
        if driver.channel.link is not LinkState.UP:
            return
        for record in self.deferred.pop(driver.channel_key, {}).values():
            self.settle_incoming(record)

    # -- the payee's channel -------------------------------------------------------------

    def _outgoing_channel(self, payee_node_id: bytes
                          ) -> tuple[ChannelDriver | None, OutgoingChannel | None]:
        session = self.sessions.get(payee_node_id)
        if session is None:
            return None, None
        usable = [d for d in session.drivers if d.channel.state is ChannelState.NORMAL]
        if not usable:
            return None, None
        best = max(usable, key=_spendable_msat)
        online = session.connected and best.channel.link is LinkState.UP
        remote = best.channel.d.remote
        minimum = max(self.min_htlc_msat, remote.htlc_minimum_msat if remote else 0)
        return best, OutgoingChannel(online=online, available_msat=_spendable_msat(best),
                                     htlc_minimum_msat=minimum)

    # -- after a restart -------------------------------------------------------------------

    def reconcile(self, in_flight: list[ForwardRecord]) -> list[ForwardRecord]:
        """Rebuild the in-flight maps from the stored in-flight records
        (``ledger.load_in_flight``) and decide every forward the restored channel books
        already settled (see the module docstring). Call before any link runs and with
        ``run`` started. Returns the records still in flight."""
        pending: list[ForwardRecord] = []
        for record in in_flight:
            outgoing = record.outgoing
            driver = self.drivers.get(outgoing[0]) if outgoing else None
            htlc = (driver.channel.d.book.htlcs.get((Side.LOCAL, outgoing[1]))
                    if driver is not None and outgoing is not None else None)
            if htlc is None or htlc.payment_hash != record.payment_hash:
                self._fail_back(record, b"")  # never added, or reverted by the restart
            elif htlc.removal is None:
                self.by_incoming[record.incoming] = record
                assert outgoing is not None
                self.by_outgoing[outgoing] = record
                pending.append(record)
            elif htlc.removal.fulfilled:
                assert htlc.removal.preimage is not None
                resolved = record.succeeded(bytes(htlc.removal.preimage), self.now_unix())
                self.by_incoming[record.incoming] = resolved
                self._spawn(self._store_then_settle, resolved)
            else:
                self._fail_back(record, bytes(htlc.removal.reason))
        return pending

    def settle_received(self, driver: ChannelDriver, records: dict[int, ForwardRecord]
                        ) -> None:
        """For every HTLC the client offered on this channel that is irrevocably
        committed and unsettled: settle it the way its record says
        (``records``: ``ledger.load_forwards_for_incoming``), or route it if it has none
        (the hub stopped before storing anything of it)."""
        for htlc_id, amount_msat, payment_hash, cltv_expiry in driver.channel.received_htlcs():
            live = self.by_incoming.get((driver.channel_key, htlc_id))
            record = live or records.get(htlc_id)
            if record is None or record.payment_hash != payment_hash:
                htlc = driver.channel.d.book.htlcs[(Side.REMOTE, htlc_id)]
                self.route(driver, htlc_id, amount_msat, payment_hash, cltv_expiry,
                           bytes(htlc.onion))
            elif record.state != IN_FLIGHT:
                self.settle_incoming(record)


def _spendable_msat(driver: ChannelDriver) -> int:
    """The hub's side after every pending update, less the reserve the client asks
    of it: an estimate for the policy; the channel's own check is final."""
    channel = driver.channel
    view = channel.d.book.view(lambda mark: True)
    remote = channel.d.remote
    reserve_msat = remote.channel_reserve_sat * 1000 if remote is not None else 0
    return max(0, view.local_msat - reserve_msat)
