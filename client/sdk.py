"""The SDK: ``AsyncHubClient``, a client that stays connected while it is open.

Theory of operation. An ``AsyncHubClient`` wraps one ``ClientNode`` (the party: keys,
store, channels, payments) and a link factory (``connect_link``: in production it
connects a ``client.transport.HubTransport`` and opens its peer link; tests pass
memory links). Entering the context starts the node and a keeper task that holds a
link open: when the link closes it connects again with exponential backoff (trio's
clock, so MockClock tests run it instantly), and every new link re-establishes every
channel (``PeerSession.run``). Receiving needs the client online, which is why the
keeper runs for as long as the context is open.

Results are frozen dataclasses; every failure is a ``client.errors.ChanhubError``.

On chain (``chain_rpc``: the client's own bitcoind): the node's ``ChainServices``
are attached before it runs, so the wallet methods work and ``open_channel`` funds
from the wallet; ``open_channel(wait=True)`` reports each step to ``progress``
(funding signed, broadcast, each confirmation, open) until the channel carries HTLCs.

Inbound liquidity (``request_inbound``): the hub's ``RequestInbound`` (through
``hub_rpc``: ``GrpcLinks`` in production) makes the hub open a channel it funds toward
us over the peer link; our node accepts it and confirms its funding from its own
chain, so a chain is needed here too. With ``wait`` it returns once the channel is
open on our side.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from channel.chain.rpc import BitcoinRpc
from channel.chain.services import ChainServices
from channel.chain.wallet import InsufficientFunds, WalletError
from client import errors, ledger
from client.node import ClientNode, HubTerms
from client.tower import TowerClient
from client.transport import HubPin, HubTransport
from proto import client_pb2
from protocol.driver.grpc_bridge import GrpcBridge, open_grpc_bridge
from protocol.driver.link import FrameLink
from protocol.routing import FailureCode
from protocol.table import ENDED_STATES, ChannelState

log = logging.getLogger(__name__)

LinkFactory = Callable[[], Awaitable[FrameLink]]
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Payment:
    """One payment, sent or received (the durable record)."""

    payment_id: str
    direction: str  # "sent" / "received"
    state: str  # "in_flight" / "succeeded" / "failed"
    payment_hash: bytes
    amount_msat: int
    fee_msat: int
    payment_preimage: bytes | None
    idempotency_key: str | None
    refund_of_payment_id: str | None
    refunded_msat: int
    failure_code: int
    failure_message: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Payment:
        return cls(row["payment_id"], row["direction"], row["state"], row["payment_hash"],
                   int(row["amount_msat"]), int(row["fee_msat"]), row["payment_preimage"],
                   row["idempotency_key"], row["refund_of_payment_id"],
                   int(row["refunded_msat"]), int(row["failure_code"]), row["failure_message"])


@dataclass(frozen=True, slots=True)
class Balance:
    channel_msat: int  # ours in open channels (before fees of a close)
    open_channels: int


@dataclass(frozen=True, slots=True)
class WalletBalance:
    confirmed_sat: int  # spendable now
    unconfirmed_sat: int  # ours, not yet deep enough (mempool payments included)
    reserved_sat: int  # locked by a channel funding not yet broadcast


@dataclass(frozen=True, slots=True)
class OpenProgress:
    """One step of ``open_channel``: ``stage`` is "negotiating", "broadcast",
    "confirming" or "open"."""

    stage: str
    channel_id: bytes
    funding_txid: str
    depth: int
    minimum_depth: int


Progress = Callable[[OpenProgress], None]

_ORDER_STATES = {client_pb2.INBOUND_ORDER_STATE_CREATED: "created",
                 client_pb2.INBOUND_ORDER_STATE_FUNDING: "funding",
                 client_pb2.INBOUND_ORDER_STATE_COMPLETED: "completed",
                 client_pb2.INBOUND_ORDER_STATE_FAILED: "failed"}


@dataclass(frozen=True, slots=True)
class InboundOrder:
    """The hub's order for a channel it funds toward us (LSPS1-shaped)."""

    order_id: str
    state: str  # "created" / "funding" / "completed" / "failed"
    lsp_balance_sat: int  # what we can receive through the channel
    required_confirmations: int
    channel_id: bytes  # empty before the hub started the channel
    failure_reason: str

    @classmethod
    def from_proto(cls, order: client_pb2.InboundOrder) -> InboundOrder:
        return cls(order.order_id, _ORDER_STATES.get(order.state, "unknown"),
                   int(order.request.lsp_balance_sat),
                   int(order.request.required_channel_confirmations), bytes(order.channel_id),
                   order.failure_reason)


class HubRpc(Protocol):
    """The hub's unary calls the SDK makes besides the peer link."""

    async def request_inbound(self, request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder: ...

    async def get_inbound_order(self, order_id: str) -> client_pb2.InboundOrder: ...


class AsyncHubClient:
    """``async with AsyncHubClient(node, connect_link) as client: ...``"""

    def __init__(self, node: ClientNode, connect_link: LinkFactory, *,
                 chain_rpc: BitcoinRpc | None = None, hub_rpc: HubRpc | None = None,
                 towers: Sequence[TowerClient] = ()) -> None:
        """``towers``: watchtowers that get an appointment after every revocation
        (needs ``chain_rpc``; docs/tower.md); each one's delivery task runs here."""
        self.node = node
        self._towers = list(towers)
        self._connect_link = connect_link
        self._chain_rpc = chain_rpc
        self._hub_rpc = hub_rpc
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.reconnects = 0

    async def __aenter__(self) -> AsyncHubClient:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        if self._chain_rpc is not None and self.node.chain is None:
            with errors.translate():
                await self.node.attach_chain(self._chain_rpc)
        if self._towers:
            with errors.translate():
                self.node.use_towers(self._towers)
            for tower in self._towers:
                nursery.start_soon(tower.run)
        await nursery.start(self.node.run)
        nursery.start_soon(self._keep_connected)
        self._stack, self._nursery = stack, nursery
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._stack is not None and self._nursery is not None
        with trio.CancelScope(shield=True):
            await self.node.session.idle()
        self._nursery.cancel_scope.cancel()
        await self._stack.__aexit__(None, None, None)
        self.node.close()

    async def _keep_connected(self) -> None:
        backoff = INITIAL_BACKOFF_SECONDS
        while True:
            try:
                with errors.translate():
                    link = await self._connect_link()
            except errors.ChanhubError as exc:
                log.info("cannot reach the hub (%s); again in %.1f s", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = INITIAL_BACKOFF_SECONDS
            await self.node.serve_link(link)  # returns when the link closes
            self.reconnects += 1

    async def ready(self) -> None:
        """Wait until the link is up and every channel re-established."""
        await self.node.ready()

    # -- the Client service, one method per rpc ---------------------------------------------

    async def get_balance(self) -> Balance:
        return Balance(self.node.balance_msat(), len(self.node.open_drivers()))

    async def add_invoice(self, amount_msat: int | None, description: str = "",
                          expiry_seconds: int = 3600) -> str:
        return await self.node.add_invoice(amount_msat, description, expiry_seconds)

    async def pay(self, *, idempotency_key: str, invoice: str | None = None,
                  payee_node_id: bytes | None = None, amount_msat: int | None = None,
                  max_fee_msat: int | None = None, timeout_seconds: float | None = None,
                  wait: bool = True) -> Payment:
        """Pay an invoice, or ``amount_msat`` to ``payee_node_id`` (spontaneous). The same
        key never pays twice. With ``wait``: the outcome; a failure raises the typed
        ``PaymentFailed`` subclass.

        ``max_fee_msat``: the most the hub may keep; when its fee for this amount (base
        + ppm, its terms) is more, ``FeeAboveMaximum`` before any HTLC is offered, and
        nothing is recorded (the key stays unused). ``timeout_seconds``: wait that long
        at most for the channel to the hub to be up before offering the HTLC (None: do
        not wait), then ``HubUnavailable`` with nothing recorded. Once offered, an HTLC
        cannot be taken back: ``wait`` returns when the payee settles or the hub fails
        it (at the latest as its expiry nears)."""
        row = await self.node.pay(idempotency_key=idempotency_key, bolt11=invoice,
                                  payee_node_id=payee_node_id, amount_msat=amount_msat,
                                  max_fee_msat=max_fee_msat, timeout_seconds=timeout_seconds)
        return await self._outcome(row, wait)

    async def refund(self, payment_id: str, amount_msat: int, *, idempotency_key: str,
                     payer_node_id: bytes | None = None, max_fee_msat: int | None = None,
                     timeout_seconds: float | None = None, wait: bool = True) -> Payment:
        """Send ``amount_msat`` of a received payment back to the node id its payer stated
        in the packet (``payer_node_id`` overrides it; a payment from an older payer,
        which stated none, needs it: ``RefundDestinationUnknown``). The refund goes to
        whoever the payer said: nothing authenticates that id (docs/payment-format.md).
        The refunds of one payment never total more than it brought in. ``max_fee_msat``
        and ``timeout_seconds`` as for ``pay``."""
        row = await self.node.refund(payment_id, amount_msat, idempotency_key=idempotency_key,
                                     payer_node_id=payer_node_id, max_fee_msat=max_fee_msat,
                                     timeout_seconds=timeout_seconds)
        return await self._outcome(row, wait)

    async def _outcome(self, row: dict[str, Any], wait: bool) -> Payment:
        if wait:
            row = await self.node.wait_payment(row["payment_id"])
        payment = Payment.from_row(row)
        if payment.state == ledger.FAILED:
            raise failure_error(payment)
        return payment

    async def list_payments(self) -> list[Payment]:
        return [Payment.from_row(r) for r in self.node.payments()]

    async def subscribe_events(self, after: int = 0) -> AsyncIterator[ledger.EventRecord]:
        """Every event after ``after``, stored then live, each once, in sequence."""
        cursor = after
        while True:
            changed = self.node.changed
            batch = await self.node.events_after(cursor)
            for event in batch:
                cursor = event.sequence
                yield event
            if not batch:
                await changed.wait()

    async def last_event_sequence(self) -> int:
        """The cursor to pass to ``subscribe_events`` to see only what happens next."""
        cursor = 0
        while batch := await self.node.events_after(cursor):
            cursor = batch[-1].sequence
        return cursor

    # -- on chain ---------------------------------------------------------------------------

    def _chain(self) -> ChainServices:
        if self.node.chain is None:
            raise errors.InvalidRequest("this client has no chain: give it a bitcoind RPC")
        return self.node.chain

    async def wallet_address(self) -> str:
        chain = self._chain()
        address = chain.wallet.new_address()
        await self.node.save_chain()  # the key index, before anyone pays to it
        return address

    async def wallet_balance(self) -> WalletBalance:
        chain = self._chain()
        with errors.translate():
            await chain.wallet.scan_mempool(chain.rpc)
        b = chain.wallet.balance()
        return WalletBalance(b.confirmed_sat, b.unconfirmed_sat, b.reserved_sat)

    async def wallet_send(self, address: str, amount_sat: int) -> str:
        """Pay ``amount_sat`` on chain from the wallet; returns the txid."""
        chain = self._chain()
        try:
            txid = await chain.wallet.send(address, amount_sat)
        except InsufficientFunds as exc:
            raise errors.InsufficientBalance(str(exc)) from exc
        except WalletError as exc:
            raise errors.InvalidRequest(str(exc)) from exc
        await self.node.save_chain()
        return txid

    async def open_channel(self, amount_sat: int, *, push_msat: int = 0, wait: bool = True,
                           progress: Progress | None = None) -> bytes:
        """Open a channel funded from the wallet; returns its channel id. With ``wait``:
        until it is open (``minimum_depth`` confirmations), each step to ``progress``."""
        chain = self._chain()
        if amount_sat <= 0:
            raise errors.InvalidRequest("amount_sat must be positive")
        with errors.translate():
            driver = self.node.open_channel(amount_sat, push_msat)
        minimum_depth = self.node.config.minimum_depth
        told: tuple[str, int] | None = None

        def report(stage: str, depth: int) -> None:
            nonlocal told
            if progress is not None and told != (stage, depth):
                told = (stage, depth)
                progress(OpenProgress(stage, driver.channel_id, funding_txid(), depth,
                                      minimum_depth))

        def funding_txid() -> str:
            return driver.channel.d.funding_txid[::-1].hex()

        def broadcast() -> bool:
            txid = funding_txid()
            return bool(driver.channel.d.funding_txid) and (
                chain.tracker.depth(txid) > 0
                or any(p.txid == txid for p in chain.broadcaster.pending()))

        while True:
            state = driver.channel.state
            if state is ChannelState.NORMAL:
                report("open", chain.tracker.depth(funding_txid()))
                return driver.channel_id
            if state in ENDED_STATES:  # failed, closed, or its funding spent on chain
                raise errors.InvalidRequest(f"the channel open failed ({state.value})")
            if broadcast():
                report("confirming" if chain.tracker.depth(funding_txid()) else "broadcast",
                       chain.tracker.depth(funding_txid()))
                if not wait:
                    return driver.channel_id
            else:
                report("negotiating", 0)
            await self.node.changed.wait()

    async def request_inbound(self, amount_sat: int, *, idempotency_key: str,
                              required_confirmations: int = 0, wait: bool = True
                              ) -> InboundOrder:
        """Ask the hub for a channel it funds with ``amount_sat`` toward us (what we can
        then receive). The same key returns the same order. Returns once the channel is
        open on our side (``wait``), or once both first commitments are signed (the
        funding is then the hub's to broadcast, and the link may close). Refused:
        ``HubRefused`` / ``InvalidRequest``; an order that failed: ``HubRefused``."""
        wait_open = wait
        if self._hub_rpc is None:
            raise errors.InvalidRequest("this client has no hub API to ask for inbound")
        self._chain()  # we confirm the hub's funding from our own chain
        if amount_sat <= 0:
            raise errors.InvalidRequest("amount_sat must be positive")
        request = client_pb2.RequestInboundRequest(
            lsp_balance_sat=amount_sat, idempotency_key=idempotency_key,
            required_channel_confirmations=required_confirmations)
        with errors.translate():
            order = InboundOrder.from_proto(await self._hub_rpc.request_inbound(request))
        while True:
            driver = next((d for d in self.node.session.drivers
                           if order.channel_id and d.channel_id == order.channel_id), None)
            if order.state == "failed":
                raise errors.HubRefused(f"inbound order {order.order_id} failed: "
                                        f"{order.failure_reason}")
            if driver is not None and wait_open and order.state == "completed" and \
                    driver.channel.state is ChannelState.NORMAL:
                break  # open on both sides
            if driver is not None and not wait_open and driver.channel.state in (
                    ChannelState.AWAIT_CHANNEL_READY, ChannelState.NORMAL):
                break
            # The fundee's opening raises few events here: look again at least every
            # second (the hub's order moves on its side too).
            with trio.move_on_after(1.0):
                await self.node.changed.wait()
            with errors.translate():
                order = InboundOrder.from_proto(
                    await self._hub_rpc.get_inbound_order(order.order_id))
        return order

    async def get_inbound_order(self, order_id: str) -> InboundOrder:
        if self._hub_rpc is None:
            raise errors.InvalidRequest("this client has no hub API")
        with errors.translate():
            return InboundOrder.from_proto(await self._hub_rpc.get_inbound_order(order_id))

    async def close_channel(self, *, force: bool = False,
                            channel_id: bytes | None = None) -> None:
        """Cooperative (shutdown) or forced (our latest commitment broadcast, through
        the chain's broadcaster when one is attached); all open channels, or one."""
        drivers = [d for d in self.node.open_drivers()
                   if channel_id is None or d.channel_id == channel_id]
        if not drivers:
            raise errors.NoChannel("no open channel to close")
        for driver in drivers:
            if force:
                driver.fail("force close requested by the client")
            else:
                driver.shutdown()
        await self.node.session.idle()


def failure_error(payment: Payment) -> errors.PaymentFailed:
    """The typed error of a failed payment record (the mapping lives in client.errors)."""
    try:
        code = FailureCode(payment.failure_code)
    except ValueError:
        code = FailureCode.TEMPORARY_FAILURE
    return errors.from_failure_code(code, payment.failure_message)


class GrpcLinks:
    """The production ``LinkFactory``: each call connects a new ``HubTransport``
    (pinned TLS, node-key authentication; a session is bound to its connection, so a
    reconnect authenticates again), closing the previous one, and opens its peer link."""

    def __init__(self, bridge: GrpcBridge, target: str, *, node_secret: bytes, pin: HubPin,
                 hub_node_id: bytes | None = None) -> None:
        self.bridge, self.target, self.pin = bridge, target, pin
        self.node_secret, self.hub_node_id = node_secret, hub_node_id
        self.transport: HubTransport | None = None

    async def connect(self) -> HubTransport:
        with errors.translate():
            return await HubTransport.connect(self.bridge, self.target,
                                              node_secret=self.node_secret, pin=self.pin,
                                              expected_hub_node_id=self.hub_node_id)

    async def __call__(self) -> FrameLink:
        await self.aclose()
        self.transport = await self.connect()
        with errors.translate():
            return await self.transport.open_peer_link()

    async def hub_info(self) -> client_pb2.GetInfoResponse:
        transport = await self.connect()
        try:
            with errors.translate():
                return await transport.get_info()
        finally:
            await transport.aclose()

    async def hub_terms(self) -> HubTerms:
        """The fee policy and CLTV delta a payer needs, from the hub's GetInfo."""
        return terms_of(await self.hub_info())

    async def _unary(self, call: Callable[[HubTransport], Awaitable[Any]]) -> Any:
        """On the link's own connection when one is open, else on a new one."""
        if self.transport is not None:
            with errors.translate():
                return await call(self.transport)
        transport = await self.connect()
        try:
            with errors.translate():
                return await call(transport)
        finally:
            await transport.aclose()

    async def request_inbound(self, request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder:
        order: client_pb2.InboundOrder = await self._unary(
            lambda t: t.request_inbound(request))
        return order

    async def get_inbound_order(self, order_id: str) -> client_pb2.InboundOrder:
        order: client_pb2.InboundOrder = await self._unary(
            lambda t: t.get_inbound_order(order_id))
        return order

    async def aclose(self) -> None:
        if self.transport is not None:
            transport, self.transport = self.transport, None
            with trio.CancelScope(shield=True):
                await transport.aclose()


def terms_of(info: client_pb2.GetInfoResponse) -> HubTerms:
    """A payer's terms from the hub's GetInfo."""
    return HubTerms(bytes(info.hub_node_id), int(info.fee_policy.base_fee_msat),
                    int(info.fee_policy.fee_rate_ppm), int(info.cltv_expiry_delta))


class HubClient:
    """The synchronous SDK: the same methods as ``AsyncHubClient``, each blocking until
    done. It runs a trio loop of its own in a thread; ``make_client`` is called in that
    loop and returns an async context manager yielding the ``AsyncHubClient`` to drive
    (``open_grpc_client`` is that for gRPC). ``with HubClient(...) as client: client.pay(...)``."""

    def __init__(self, make_client: Callable[[], contextlib.AbstractAsyncContextManager[
                 AsyncHubClient]]) -> None:
        self._make_client = make_client
        self._token: trio.lowlevel.TrioToken | None = None
        self._client: AsyncHubClient | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="chanhub-sdk", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            try:
                async with self._make_client() as client:
                    self._client = client
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()

        with contextlib.suppress(BaseException):
            trio.run(main)

    def __enter__(self) -> HubClient:
        self._thread.start()
        self._ready.wait()
        if self._client is None:
            raise self._error or errors.InternalError("the SDK loop did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def _run(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        assert self._token is not None
        return trio.from_thread.run(functools.partial(fn, *args, **kwargs),
                                    trio_token=self._token)

    def ready(self) -> None:
        assert self._client is not None
        self._run(self._client.ready)

    def get_balance(self) -> Balance:
        assert self._client is not None
        result: Balance = self._run(self._client.get_balance)
        return result

    def add_invoice(self, amount_msat: int | None, description: str = "",
                    expiry_seconds: int = 3600) -> str:
        assert self._client is not None
        result: str = self._run(self._client.add_invoice, amount_msat, description,
                                expiry_seconds)
        return result

    def pay(self, *, idempotency_key: str, invoice: str | None = None,
            payee_node_id: bytes | None = None, amount_msat: int | None = None,
            max_fee_msat: int | None = None, timeout_seconds: float | None = None,
            wait: bool = True) -> Payment:
        assert self._client is not None
        result: Payment = self._run(self._client.pay, idempotency_key=idempotency_key,
                                    invoice=invoice, payee_node_id=payee_node_id,
                                    amount_msat=amount_msat, max_fee_msat=max_fee_msat,
                                    timeout_seconds=timeout_seconds, wait=wait)
        return result

    def refund(self, payment_id: str, amount_msat: int, *, idempotency_key: str,
               payer_node_id: bytes | None = None, max_fee_msat: int | None = None,
               timeout_seconds: float | None = None, wait: bool = True) -> Payment:
        assert self._client is not None
        result: Payment = self._run(self._client.refund, payment_id, amount_msat,
                                    idempotency_key=idempotency_key,
                                    payer_node_id=payer_node_id, max_fee_msat=max_fee_msat,
                                    timeout_seconds=timeout_seconds, wait=wait)
        return result

    def list_payments(self) -> list[Payment]:
        assert self._client is not None
        result: list[Payment] = self._run(self._client.list_payments)
        return result

    def close_channel(self, *, force: bool = False, channel_id: bytes | None = None) -> None:
        assert self._client is not None
        self._run(self._client.close_channel, force=force, channel_id=channel_id)

    def wallet_address(self) -> str:
        assert self._client is not None
        result: str = self._run(self._client.wallet_address)
        return result

    def wallet_balance(self) -> WalletBalance:
        assert self._client is not None
        result: WalletBalance = self._run(self._client.wallet_balance)
        return result

    def wallet_send(self, address: str, amount_sat: int) -> str:
        assert self._client is not None
        result: str = self._run(self._client.wallet_send, address, amount_sat)
        return result

    def open_channel(self, amount_sat: int, *, push_msat: int = 0, wait: bool = True) -> bytes:
        assert self._client is not None
        result: bytes = self._run(self._client.open_channel, amount_sat, push_msat=push_msat,
                                  wait=wait)
        return result

    def request_inbound(self, amount_sat: int, *, idempotency_key: str,
                        required_confirmations: int = 0, wait: bool = True) -> InboundOrder:
        assert self._client is not None
        result: InboundOrder = self._run(self._client.request_inbound, amount_sat,
                                         idempotency_key=idempotency_key,
                                         required_confirmations=required_confirmations,
                                         wait=wait)
        return result

    def get_inbound_order(self, order_id: str) -> InboundOrder:
        assert self._client is not None
        result: InboundOrder = self._run(self._client.get_inbound_order, order_id)
        return result


@contextlib.asynccontextmanager
async def open_grpc_client(open_node: Callable[[], ClientNode], target: str, pin: HubPin,
                           hub_node_id: bytes | None = None, *,
                           chain_rpc: BitcoinRpc | None = None,
                           towers: Callable[[GrpcBridge, bytes], Sequence[TowerClient]]
                           | None = None) -> AsyncIterator[AsyncHubClient]:
    """An ``AsyncHubClient`` over gRPC with its own bridge (one per process).
    ``towers(bridge, node_secret)`` makes the watchtower clients it uses, if any."""
    async with open_grpc_bridge() as bridge:
        node = open_node()
        links = GrpcLinks(bridge, target, node_secret=node.node_secret, pin=pin,
                          hub_node_id=hub_node_id)
        made = towers(bridge, node.node_secret) if towers is not None else ()
        try:
            async with AsyncHubClient(node, links, chain_rpc=chain_rpc,
                                      hub_rpc=links, towers=made) as client:
                yield client
        finally:
            await links.aclose()
