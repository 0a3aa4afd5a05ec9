"""Inbound liquidity: the hub's own wallet (ChainServices attached to the HubNode, on
the embedded node over HTTP) funds a channel toward a client that asked for it
(RequestInbound); the client accepts, both confirm it from their own chains, and a
payment arrives through it. The operator funds the wallet through the Admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from channel.chain import BitcoinRpc
from channel.chain.services import ChainServices
from channel.tx import Tx
from client import errors, ledger
from client.node import ClientNode
from client.sdk import AsyncHubClient
from hub.edge import FailedPrecondition, InvalidArgument, NotFound
from hub.node import HubNode
from proto import client_pb2
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.driver.link import FrameLink, memory_link_pair
from protocol.table import ChannelState
from regtest.node import Node
from tests.client.world import World, is_normal, under_autojump
from tests.driver.conftest import TEST_PASSPHRASE
from tests.driver.parties import until
from tests.hub.parties import NullBroadcaster, hub_settings

HUB_WALLET_SAT = 2_000_000
INBOUND_SAT = 500_000


async def synced(chain: ChainServices, node: Node) -> None:
    await chain.follower.wait_for_height(int(node.call("getblockcount")))


async def fund_hub_wallet(hub: HubNode, hub_chain: ChainServices, node: Node) -> None:
    """The operator sends HUB_WALLET_SAT to the hub's wallet; one block confirms it."""
    address = (await hub.admin.new_wallet_address()).address
    node.call("sendtoaddress", address, HUB_WALLET_SAT / 100_000_000)
    node.mine(1)
    await synced(hub_chain, node)


async def start_hub_on_chain(world: World, url: str, rpc: BitcoinRpc, nursery: trio.Nursery,
                             **overrides: Any) -> tuple[HubNode, ChainServices]:
    """The world's hub on ``url`` (settings ``overrides``), following the embedded
    node's chain, running."""
    hub = world.hub = HubNode.open(hub_settings(url, **overrides), height=world.height,
                                   broadcaster=NullBroadcaster())
    hub_chain = await hub.attach_chain(rpc, poll_interval_s=0.5)
    await nursery.start(hub.run)
    return hub, hub_chain


async def open_confirmed_channel(hub: HubNode, hub_chain: ChainServices, node: Node,
                                 client: ClientNode, funding_sat: int) -> ChannelDriver:
    """The client funds a channel; the hub confirms it from its chain, the client (it
    follows none of its own) is told."""
    driver = client.open_channel(funding_sat)
    await until(lambda: driver.channel.state is ChannelState.AWAIT_CHANNEL_READY)
    await hub.sessions[client.node_id].idle()
    node.mine(hub.settings.minimum_depth)
    await synced(hub_chain, node)
    driver.funding_confirmed()
    await until(lambda: is_normal(driver))
    return driver


def request(amount_sat: int, key: str = "", **fields: Any) -> client_pb2.RequestInboundRequest:
    return client_pb2.RequestInboundRequest(lsp_balance_sat=amount_sat, idempotency_key=key,
                                            **fields)


async def test_hub_funds_inbound_channel_then_a_payment_arrives(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, store_url: str,
        autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, store_url)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        hub, hub_chain = await start_hub_on_chain(world, store_url, rpc, nursery)
        alice = ClientNode.open(world.client_url("alice"), TEST_PASSPHRASE, world.terms())
        alice_chain = await alice.attach_chain(rpc, poll_interval_s=0.5)
        await world.start_client(nursery, alice)
        await until(lambda: alice.node_id in hub.sessions
                    and hub.sessions[alice.node_id].connected)

        with pytest.raises(FailedPrecondition, match="cannot fund 500000 sat"):
            await hub.request_inbound(alice.node_id, request(INBOUND_SAT, "early"))
        # the operator funds the hub's wallet
        address = (await hub.admin.new_wallet_address()).address
        regtest_node.call("sendtoaddress", address, HUB_WALLET_SAT / 100_000_000)
        assert (await hub.admin.get_wallet_balance()).unconfirmed_sat == HUB_WALLET_SAT
        regtest_node.mine(1)
        await synced(hub_chain, regtest_node)
        assert (await hub.admin.get_wallet_balance()).confirmed_sat == HUB_WALLET_SAT
        assert (await hub.admin.get_info()).onchain_confirmed_sat == HUB_WALLET_SAT

        # refusals change nothing
        with pytest.raises(InvalidArgument, match="outside"):
            await hub.request_inbound(alice.node_id, request(hub.settings.max_inbound_sat + 1))
        with pytest.raises(InvalidArgument, match="client_balance_sat"):
            await hub.request_inbound(alice.node_id, request(INBOUND_SAT,
                                                             client_balance_sat=1_000))
        with pytest.raises(FailedPrecondition, match="peer link"):
            await hub.request_inbound(b"\x02" + bytes(32), request(INBOUND_SAT))
        with pytest.raises(NotFound):
            await hub.get_inbound_order(alice.node_id,
                                        client_pb2.GetInboundOrderRequest(order_id="nope"))
        assert alice.session.drivers == []

        order = await hub.request_inbound(alice.node_id, request(INBOUND_SAT, "k1"))
        assert order.state == client_pb2.INBOUND_ORDER_STATE_FUNDING
        assert order.request.required_channel_confirmations == hub.settings.minimum_depth
        again = await hub.request_inbound(alice.node_id, request(INBOUND_SAT, "k1"))
        assert again.order_id == order.order_id  # the same key: the same order
        with pytest.raises(NotFound):  # another client cannot read it
            await hub.get_inbound_order(b"\x03" + bytes(32), client_pb2.GetInboundOrderRequest(
                order_id=order.order_id))

        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        [funding_txid] = regtest_node.call("getrawmempool")
        funding_tx = Tx.parse(bytes.fromhex(regtest_node.call("getrawtransaction",
                                                              funding_txid)))
        [driver] = alice.session.drivers
        assert not driver.channel.d.local_is_funder
        assert driver.channel.d.funding_sat == INBOUND_SAT
        regtest_node.mine(hub.settings.minimum_depth)
        await synced(hub_chain, regtest_node)
        await synced(alice_chain, regtest_node)
        await until(lambda: is_normal(driver))

        def completed() -> bool:
            return hub.inbound.orders[order.order_id].state == \
                client_pb2.INBOUND_ORDER_STATE_COMPLETED

        await until(completed)
        shown = await hub.get_inbound_order(alice.node_id, client_pb2.GetInboundOrderRequest(
            order_id=order.order_id))
        assert shown.state == client_pb2.INBOUND_ORDER_STATE_COMPLETED
        assert shown.channel_id == driver.channel_id
        # the hub's wallet paid the channel and the fee, to the satoshi
        funding_fee = HUB_WALLET_SAT - sum(o.amount_sat for o in funding_tx.outputs)
        balance = await hub.admin.get_wallet_balance()
        assert balance.confirmed_sat == HUB_WALLET_SAT - INBOUND_SAT - funding_fee
        assert balance.reserved_sat == 0 and 0 < funding_fee < 5_000

        # bob pays alice through the new channel
        bob = world.open_client("bob")
        await world.start_client(nursery, bob)
        await open_confirmed_channel(hub, hub_chain, regtest_node, bob, 1_000_000)
        invoice = await alice.add_invoice(100_000_000, "inbound works")
        await hub.sessions[alice.node_id].idle()
        paid = await bob.pay(idempotency_key="first", bolt11=invoice)
        result = await bob.wait_payment(paid["payment_id"])
        assert result["state"] == ledger.SUCCEEDED
        assert alice.balance_msat() == 100_000_000

        # alice goes offline; the hub force-closes her channel (broadcast at once, not
        # when she is back) and its to_local comes back into the hub's wallet
        await world.disconnect(alice)
        hub_driver = hub.drivers[hub.inbound.orders[order.order_id].channel_key or b""]
        before = (await hub.admin.get_wallet_balance()).confirmed_sat
        await hub.admin.close_channel(client_pb2.CloseChannelRequest(
            channel_id=hub_driver.channel_id, force=True))
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        [commitment_txid] = regtest_node.call("getrawmempool")
        assert hub.onchain is not None
        assert hub.onchain.enforcer.our_commitment_txid(hub_driver) == \
            bytes.fromhex(commitment_txid)[::-1]
        delay = hub_driver.channel.static.remote.to_self_delay
        regtest_node.mine(delay)  # the commitment is delay deep: the sweep may go out
        await synced(hub_chain, regtest_node)

        def hub_sweeps() -> list[Tx]:  # alice's own watch sweeps her to_remote too
            txs = [Tx.parse(bytes.fromhex(regtest_node.call("getrawtransaction", txid)))
                   for txid in regtest_node.call("getrawmempool")]
            return [tx for tx in txs if hub_chain.wallet.is_mine(tx.outputs[0].script_pubkey)]

        await until(lambda: len(hub_sweeps()) == 1)
        [sweep] = hub_sweeps()
        assert sweep.inputs[0].outpoint.txid_hex() == commitment_txid
        regtest_node.mine(1)
        await synced(hub_chain, regtest_node)
        after = await hub.admin.get_wallet_balance()
        assert after.confirmed_sat == before + sweep.outputs[0].amount_sat
        nursery.cancel_scope.cancel()
    alice.close()
    bob.close()
    hub.close()


async def test_order_of_a_channel_lost_in_a_restart_fails(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The order is stored before the channel is opened; a hub restarted before the
    channel was signed fails the order instead of leaving it FUNDING forever."""
    url = sqlite_url(tmp_path / "hub.sqlite")
    world = World(regtest_node, tmp_path, url)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc:
        async with trio.open_nursery() as nursery:
            hub, hub_chain = await start_hub_on_chain(world, url, rpc, nursery)
            await fund_hub_wallet(hub, hub_chain, regtest_node)
            alice = world.open_client("alice")
            await world.start_client(nursery, alice)
            await until(lambda: alice.node_id in hub.sessions
                        and hub.sessions[alice.node_id].connected)
            hub.start_outbound_channel = lambda *a, **k: None  # type: ignore[method-assign]
            order = await hub.request_inbound(alice.node_id, request(INBOUND_SAT, "k"))
            nursery.cancel_scope.cancel()
        hub.close()
        alice.close()
        hub = HubNode.open(hub_settings(url), height=world.height,
                           broadcaster=NullBroadcaster())
        await hub.attach_chain(rpc, poll_interval_s=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            shown = await hub.get_inbound_order(alice.node_id, client_pb2.GetInboundOrderRequest(
                order_id=order.order_id))
            assert shown.state == client_pb2.INBOUND_ORDER_STATE_FAILED
            assert "restarted" in shown.failure_reason
            assert hub_chain is not None
            assert hub.chain is not None
            assert hub.chain.wallet.balance().confirmed_sat == HUB_WALLET_SAT
            nursery.cancel_scope.cancel()
        hub.close()


class HubApiOf:
    """The SDK's ``HubRpc`` answered by an in-process hub (what GrpcLinks does over gRPC)."""

    def __init__(self, hub: HubNode, client_node_id: bytes) -> None:
        self.hub, self.client_node_id = hub, client_node_id

    async def request_inbound(self, request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder:
        return await self.hub.request_inbound(self.client_node_id, request)

    async def get_inbound_order(self, order_id: str) -> client_pb2.InboundOrder:
        return await self.hub.get_inbound_order(
            self.client_node_id, client_pb2.GetInboundOrderRequest(order_id=order_id))


async def test_sdk_request_inbound(regtest_node: Node, regtest_rpc: Any, tmp_path: Path,
                                   autojump_clock: Any) -> None:
    url = sqlite_url(tmp_path / "hub.sqlite")
    world = World(regtest_node, tmp_path, url)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        hub, hub_chain = await start_hub_on_chain(world, url, rpc, nursery)
        await fund_hub_wallet(hub, hub_chain, regtest_node)
        alice_node = under_autojump(
            ClientNode.open(world.client_url("alice"), TEST_PASSPHRASE, world.terms()))

        async def connect_link() -> FrameLink:
            hub_end, client_end = memory_link_pair()
            nursery.start_soon(hub.on_peer_link, alice_node.node_id, hub_end)
            return client_end

        async with AsyncHubClient(alice_node, connect_link, chain_rpc=rpc,
                                  hub_rpc=HubApiOf(hub, alice_node.node_id)) as alice:
            await alice.ready()
            # the hub's side of the link (its grace wait is in virtual time here)
            await until(lambda: alice_node.node_id in hub.sessions
                        and hub.sessions[alice_node.node_id].connected)
            with pytest.raises(errors.InvalidRequest, match="outside"):
                await alice.request_inbound(10_000_000, idempotency_key="big")
            signed = await alice.request_inbound(INBOUND_SAT, idempotency_key="k", wait=False)
            assert (signed.state, signed.lsp_balance_sat) == ("funding", INBOUND_SAT)
            await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
            regtest_node.mine(hub.settings.minimum_depth)
            done = await alice.request_inbound(INBOUND_SAT, idempotency_key="k")
            assert (done.order_id, done.state) == (signed.order_id, "completed")
            assert done.channel_id == alice_node.open_drivers()[0].channel_id
            assert (await alice.get_inbound_order(done.order_id)).state == "completed"
            with pytest.raises(errors.NotFound):
                await alice.get_inbound_order("nope")

            # a cooperative close pays the hub's side to its wallet (its close script)
            before = hub_chain.wallet.balance().confirmed_sat
            await alice.close_channel()
            await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
            [closing_txid] = regtest_node.call("getrawmempool")
            closing = Tx.parse(bytes.fromhex(regtest_node.call("getrawtransaction",
                                                               closing_txid)))
            [hub_output] = [o for o in closing.outputs
                            if hub_chain.wallet.is_mine(o.script_pubkey)]
            regtest_node.mine(1)
            await synced(hub_chain, regtest_node)
            assert hub_chain.wallet.balance().confirmed_sat == before + hub_output.amount_sat
        nursery.cancel_scope.cancel()
    hub.close()


THIN_INBOUND_SAT = 200_000
RECEIVED_MSAT = 150_000_000  # what Bob pays Alice: the hub keeps ~50,000 sat of it
BACK = 40
BACK_MSAT = 3_000_000


async def test_many_payments_at_once_on_a_channel_the_hub_funds(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """Alice's channel is the hub's, and what the hub kept pays the commitment fee of
    only a few more HTLCs than it has acknowledged: her SDK's ``pay`` waits for the
    hub's acknowledgement (``AwaitingAcknowledgement``) instead of refusing, and all
    BACK payments started at once succeed."""
    url = sqlite_url(tmp_path / "hub.sqlite")
    world = World(regtest_node, tmp_path, url)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        hub, hub_chain = await start_hub_on_chain(world, url, rpc, nursery)
        await fund_hub_wallet(hub, hub_chain, regtest_node)
        alice = world.open_client("alice")
        alice_chain = await alice.attach_chain(rpc, poll_interval_s=0.5)
        await world.start_client(nursery, alice)
        await until(lambda: alice.node_id in hub.sessions
                    and hub.sessions[alice.node_id].connected)
        await hub.request_inbound(alice.node_id, request(THIN_INBOUND_SAT, "thin"))
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        regtest_node.mine(hub.settings.minimum_depth)
        await synced(hub_chain, regtest_node)
        await synced(alice_chain, regtest_node)
        [driver] = alice.session.drivers
        await until(lambda: is_normal(driver))

        bob = world.open_client("bob")
        await world.start_client(nursery, bob)
        await open_confirmed_channel(hub, hub_chain, regtest_node, bob, 1_000_000)
        paid = await bob.pay(idempotency_key="in",
                             bolt11=await alice.add_invoice(RECEIVED_MSAT, "in"))
        assert (await bob.wait_payment(paid["payment_id"]))["state"] == ledger.SUCCEEDED

        invoices = [await bob.add_invoice(BACK_MSAT, f"back {i}") for i in range(BACK)]
        outcomes: list[dict[str, Any]] = []

        async def pay_back(i: int) -> None:
            started = await alice.pay(idempotency_key=f"back {i}", bolt11=invoices[i])
            outcomes.append(await alice.wait_payment(started["payment_id"]))

        async with trio.open_nursery() as payers:
            for i in range(BACK):
                payers.start_soon(pay_back, i)
        assert [o["state"] for o in outcomes] == [ledger.SUCCEEDED] * BACK
        assert alice.acknowledgement_waits > 0  # the path under test was taken
        received = [p for p in bob.payments() if p["direction"] == ledger.RECEIVED]
        assert len(received) == BACK and {p["state"] for p in received} == {ledger.SUCCEEDED}
        nursery.cancel_scope.cancel()
    alice.close()
    bob.close()
    hub.close()


async def test_inbound_liquidity_all_clients_together_is_bounded(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """Orders are free, so what strangers (a key each costs nothing) can make the hub
    lock up is bounded by ``max_inbound_total_sat``: two clients ask at once for more
    than it has room for together; one order is taken, the other refused with the
    figures, and nothing of it is started."""
    url = sqlite_url(tmp_path / "hub.sqlite")
    world = World(regtest_node, tmp_path, url)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        hub, hub_chain = await start_hub_on_chain(
            world, url, rpc, nursery, max_inbound_total_sat=INBOUND_SAT + INBOUND_SAT // 2)
        await fund_hub_wallet(hub, hub_chain, regtest_node)
        clients = [ClientNode.open(world.client_url(name), TEST_PASSPHRASE, world.terms())
                   for name in ("alice", "bob")]
        for client in clients:
            await client.attach_chain(rpc, poll_interval_s=0.5)
            await world.start_client(nursery, client)
            await until(lambda c=client: c.node_id in hub.sessions
                        and hub.sessions[c.node_id].connected)
        outcomes: list[object] = []

        async def ask(client: ClientNode) -> None:
            try:
                outcomes.append(await hub.request_inbound(client.node_id,
                                                          request(INBOUND_SAT, "k")))
            except FailedPrecondition as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as asking:
            for client in clients:
                asking.start_soon(ask, client)
        orders = [o for o in outcomes if isinstance(o, client_pb2.InboundOrder)]
        [refused] = [o for o in outcomes if isinstance(o, FailedPrecondition)]
        assert len(orders) == 1
        assert f"{INBOUND_SAT} more would pass its limit of {INBOUND_SAT * 3 // 2}" \
            in str(refused)
        assert hub.inbound.committed_sat() == INBOUND_SAT
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)  # one funding
        assert sorted(len(c.session.drivers) for c in clients) == [0, 1]
        assert len(hub.drivers) == 1
        # the same refusal for a smaller order still above the room left
        with pytest.raises(FailedPrecondition, match="limit"):
            await hub.request_inbound(clients[0].node_id, request(INBOUND_SAT // 2 + 1, "k2"))
        nursery.cancel_scope.cancel()
    for client in clients:
        client.close()
    hub.close()
