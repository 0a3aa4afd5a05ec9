"""Inbound liquidity: the hub funds a channel toward a client (``Hub.RequestInbound``,
LSPS1-shaped), from its own on-chain wallet.

Theory of operation. An order is one row of ``hub_inbound_orders`` (hub/ledger.py's
table), keyed by a random ``order_id`` (unique across hub processes) and, per client,
by its ``idempotency_key`` (the same key answers the same order, never a second
channel). ``request`` checks the policy (the hub has a wallet; the client's peer link is
up; ``lsp_balance_sat`` within the channel limits and ``max_inbound_sat``; the wallet's
confirmed balance covers it; ``client_balance_sat`` is 0, as this hub sells no client
balance; the client's channel count; ``max_inbound_total_sat``, the most all inbound
channels not closed may hold together, which bounds what strangers can lock up while
orders are free), raises ``required_channel_confirmations`` to the
hub's ``minimum_depth``, writes the order (state FUNDING, with the channel's key) and
only then starts the channel (``open_channel``): a crash in between leaves an order
whose channel does not exist, failed by ``restore`` on the next start. The channel is
the ordinary funder flow of ``protocol.driver.onchain`` (the hub's wallet funds it,
broadcast on FundingSigned); its ``ChannelOpened`` completes the order, a
``ChannelFailed`` before that fails it with the reason. The order is free (fee 0,
no invoice): payment for liquidity is not built. The checks and the order's indexing
run without an await between them, so concurrent requests cannot overshoot a limit;
the order is indexed before its row is written and dropped if the write fails.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import trio

from hub import ledger
from hub.edge import FailedPrecondition, InvalidArgument, NotFound
from proto import client_pb2
from protocol.actions import ChannelFailed, ChannelOpened, Event
from protocol.driver.driver import ChannelDriver
from protocol.table import ENDED_STATES, ChannelState

if TYPE_CHECKING:
    from hub.node import HubNode

log = logging.getLogger(__name__)

FUNDING = client_pb2.INBOUND_ORDER_STATE_FUNDING
COMPLETED = client_pb2.INBOUND_ORDER_STATE_COMPLETED
FAILED = client_pb2.INBOUND_ORDER_STATE_FAILED
MAX_IDEMPOTENCY_KEY = 64
DEFAULT_CONF_TARGET_BLOCKS = 6
LINK_GRACE_SECONDS = 5.0


@dataclass
class Order:
    order_id: str
    client_node_id: bytes
    idempotency_key: str
    request: client_pb2.RequestInboundRequest
    state: int
    channel_key: bytes | None
    failure_reason: str
    created_at_unix: int

    @classmethod
    def from_row(cls, row: Any) -> Order:
        return cls(row.order_id, bytes(row.client_node_id), row.idempotency_key,
                   client_pb2.RequestInboundRequest.FromString(bytes(row.request)),
                   int(row.state), None if row.channel_key is None else bytes(row.channel_key),
                   row.failure_reason, int(row.created_at_unix))


def _insert(order: Order) -> ledger.WriteFn:
    values = dict(order_id=order.order_id, client_node_id=order.client_node_id,
                  idempotency_key=order.idempotency_key,
                  request=order.request.SerializeToString(), state=order.state,
                  channel_key=order.channel_key, failure_reason=order.failure_reason,
                  created_at_unix=order.created_at_unix)

    def write(conn: sa.Connection) -> None:
        conn.execute(ledger.inbound_orders.insert().values(**values))

    return write


def _update(order_id: str, state: int, failure_reason: str = "") -> ledger.WriteFn:
    def write(conn: sa.Connection) -> None:
        conn.execute(ledger.inbound_orders.update()
                     .where(ledger.inbound_orders.c.order_id == order_id)
                     .values(state=state, failure_reason=failure_reason))

    return write


def _load_all(conn: sa.Connection) -> list[Order]:
    rows = conn.execute(sa.select(ledger.inbound_orders)
                        .order_by(ledger.inbound_orders.c.created_at_unix))
    return [Order.from_row(r) for r in rows]


class InboundOrders:
    """The orders of one hub (all in memory too: one row per channel the hub funded)."""

    def __init__(self, node: HubNode, now_unix: Callable[[], int]) -> None:
        self.node = node
        self.now_unix = now_unix
        self.orders: dict[str, Order] = {}
        self.by_channel: dict[bytes, Order] = {}
        for order in node.db.read_sync(_load_all):
            self._index(order)

    def _index(self, order: Order) -> None:
        self.orders[order.order_id] = order
        if order.channel_key is not None:
            self.by_channel[order.channel_key] = order

    def _unindex(self, order: Order) -> None:
        self.orders.pop(order.order_id, None)
        if order.channel_key is not None:
            self.by_channel.pop(order.channel_key, None)

    async def restore(self) -> None:
        """Orders left FUNDING whose channel never came to be (or failed unseen)."""
        for order in list(self.orders.values()):
            if order.state != FUNDING:
                continue
            driver = self.node.drivers.get(order.channel_key or b"")
            if driver is None:
                await self._set(order, FAILED, "the hub restarted before the channel opened")
            elif driver.channel.state is ChannelState.FAILED:
                await self._set(order, FAILED, "the channel failed during the opening")
            elif driver.channel.state in _OPENED:
                await self._set(order, COMPLETED)

    async def _set(self, order: Order, state: int, reason: str = "") -> None:
        await self.node.writer.write(_update(order.order_id, state, reason))
        order.state, order.failure_reason = state, reason

    def funding_depth(self, driver: ChannelDriver) -> int | None:
        order = self.by_channel.get(driver.channel_key)
        return None if order is None else int(order.request.required_channel_confirmations)

    async def on_event(self, driver: ChannelDriver, event: Event) -> None:
        order = self.by_channel.get(driver.channel_key)
        if order is None or order.state != FUNDING:
            return
        if isinstance(event, ChannelOpened):
            await self._set(order, COMPLETED)
        elif isinstance(event, ChannelFailed):
            await self._set(order, FAILED, event.reason)

    # -- the Hub service ------------------------------------------------------------------

    async def request(self, client_node_id: bytes,
                      request: client_pb2.RequestInboundRequest) -> client_pb2.InboundOrder:
        key = request.idempotency_key
        if len(key.encode()) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} bytes")
        if key:
            for order in self.orders.values():
                if order.client_node_id == client_node_id and order.idempotency_key == key:
                    return self.proto(order)
        node, s = self.node, self.node.settings
        if node.onchain is None:
            raise FailedPrecondition("this hub has no wallet to fund inbound channels")
        amount_sat = int(request.lsp_balance_sat)
        top = min(s.max_inbound_sat, s.max_channel_size_sat)
        if not s.min_channel_size_sat <= amount_sat <= top:
            raise InvalidArgument(f"lsp_balance_sat {amount_sat} is outside "
                                  f"[{s.min_channel_size_sat}, {top}]")
        if request.client_balance_sat:
            raise InvalidArgument("this hub opens inbound channels with client_balance_sat 0")
        # A client that just opened its link may ask before the hub's side of it runs.
        with trio.move_on_after(LINK_GRACE_SECONDS):
            while not (client_node_id in node.sessions and
                       node.sessions[client_node_id].connected):
                await trio.sleep(0.05)
        session = node.sessions.get(client_node_id)
        if session is None or not session.connected:
            raise FailedPrecondition("open the peer link first: the hub opens the channel "
                                     "over it")
        target = int(request.funding_confirms_within_blocks) or DEFAULT_CONF_TARGET_BLOCKS
        feerate = await node.onchain.chain.fee_estimator.feerate_sat_per_kw(target)
        # From here to the order's indexing no await: two requests at once cannot both
        # pass a limit that has room for one.
        live = sum(d.channel.state not in ENDED_STATES for d in session.drivers) + sum(
            1 for o in self.orders.values() if o.client_node_id == client_node_id
            and o.state == FUNDING and (o.channel_key or b"") not in node.drivers)
        if live >= s.max_channels_per_client:
            raise FailedPrecondition(f"you have {live} channels, the most this hub allows")
        committed_sat = self.committed_sat()
        if committed_sat + amount_sat > s.max_inbound_total_sat:
            raise FailedPrecondition(
                f"the hub has {committed_sat} sat in inbound channels; {amount_sat} more "
                f"would pass its limit of {s.max_inbound_total_sat} sat")
        confirmed_sat = node.onchain.chain.wallet.balance().confirmed_sat
        if confirmed_sat < amount_sat:
            raise FailedPrecondition(f"the hub's wallet cannot fund {amount_sat} sat now "
                                     f"({confirmed_sat} sat confirmed)")
        accepted = client_pb2.RequestInboundRequest()
        accepted.CopyFrom(request)
        accepted.required_channel_confirmations = max(
            int(request.required_channel_confirmations), s.minimum_depth)
        driver = node.new_outbound_channel(client_node_id)
        order = Order(secrets.token_hex(16), client_node_id, key, accepted, FUNDING,
                      driver.channel_key, "", self.now_unix())
        self._index(order)
        try:
            await node.writer.write(_insert(order))  # before the channel can exist anywhere
        except BaseException:
            self._unindex(order)  # nothing stored, no channel started
            raise
        node.start_outbound_channel(driver, funding_sat=amount_sat, feerate_per_kw=feerate)
        log.info("inbound order %s: %d sat toward %s", order.order_id, amount_sat,
                 client_node_id.hex())
        return self.proto(order)

    def committed_sat(self) -> int:
        """What the hub's wallet has put, or is putting, into inbound channels that are
        not closed: the orders funding or completed whose channel has not ended."""
        total = 0
        for order in self.orders.values():
            if order.state == FAILED:
                continue
            driver = self.node.drivers.get(order.channel_key or b"")
            if driver is None or driver.channel.state not in ENDED_STATES:
                total += int(order.request.lsp_balance_sat)
        return total

    async def get(self, client_node_id: bytes, order_id: str) -> client_pb2.InboundOrder:
        order = self.orders.get(order_id)
        if order is None or order.client_node_id != client_node_id:
            raise NotFound(f"no inbound order {order_id!r}")
        return self.proto(order)

    def proto(self, order: Order) -> client_pb2.InboundOrder:
        driver = self.node.drivers.get(order.channel_key or b"")
        return client_pb2.InboundOrder(
            order_id=order.order_id, request=order.request, state=order.state,  # type: ignore[arg-type]
            fee_total_sat=0, order_total_sat=int(order.request.client_balance_sat),
            created_at_unix=order.created_at_unix,
            channel_id=driver.channel_id if driver is not None else b"",
            failure_reason=order.failure_reason)


_OPENED = (ChannelState.NORMAL, ChannelState.SHUTDOWN, ChannelState.NEGOTIATING,
           ChannelState.CLOSED)
