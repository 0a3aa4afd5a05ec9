"""The client's own chain: its follower on the embedded node over HTTP, its wallet
funded from the faucet, a channel funded from that wallet (broadcast only once the
hub signed), and a cooperative close paying back into the wallet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from channel.chain import BitcoinRpc
from client import errors, ledger
from client.node import ClientNode
from client.sdk import AsyncHubClient, OpenProgress
from protocol.driver.db import sqlite_url
from protocol.driver.link import FrameLink, memory_link_pair
from protocol.table import ChannelState
from regtest.node import Node
from tests.client.world import World, is_normal, under_autojump
from tests.driver.conftest import TEST_PASSPHRASE

FAUCET_SAT = 2_000_000
FUNDING_SAT = 1_000_000


async def wait_until(client: ClientNode, condition: Any) -> None:
    while not condition():
        await client.changed.wait()


async def logged(client: ClientNode, kind: str) -> None:
    """Until the client's event log holds ``kind`` (``changed`` taken before each read,
    so a write during the read is not missed)."""
    while True:
        changed = client.changed
        if kind in [e.kind for e in await client.events_after(0)]:
            return
        await changed.wait()


async def synced(client: ClientNode, node: Node) -> None:
    assert client.chain is not None
    await client.chain.follower.wait_for_height(int(node.call("getblockcount")))


async def test_open_from_the_wallet_then_close_into_it(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        client = ClientNode.open(world.client_url("alice"), TEST_PASSPHRASE, world.terms())
        chain = await client.attach_chain(rpc, poll_interval_s=0.5)
        await world.start_client(nursery, client)
        assert client.height() == chain.tip.height == world.height()

        # no coins yet: refused before anything is sent to the hub
        try:
            client.open_channel(FUNDING_SAT)
            raise AssertionError("opened without coins")
        except errors.InsufficientBalance:
            pass
        assert client.session.drivers == []

        address = chain.wallet.new_address()
        regtest_node.call("sendtoaddress", address, FAUCET_SAT / 100_000_000)
        regtest_node.mine(1)
        await synced(client, regtest_node)
        assert chain.wallet.balance().confirmed_sat == FAUCET_SAT

        driver = client.open_channel(FUNDING_SAT)
        await wait_until(client, lambda: driver.channel.d.funding_txid != b""
                         and driver.channel.state is ChannelState.AWAIT_CHANNEL_READY)
        funding_txid = driver.channel.d.funding_txid[::-1].hex()
        # broadcast by the client itself, after FundingSigned
        await wait_until(client, lambda: any(p.txid == funding_txid
                                             for p in chain.broadcaster.pending()))
        assert funding_txid in regtest_node.call("getrawmempool")
        await world.hub.sessions[client.node_id].idle()
        regtest_node.mine(world.hub.settings.minimum_depth)
        await synced(client, regtest_node)
        assert await world.hub.check_fundings(world.gettxout) == 1
        # the client's tracker saw the depth and told its driver: nobody else did
        await wait_until(client, lambda: is_normal(driver))
        assert client.balance_msat() == FUNDING_SAT * 1000
        after_open = chain.wallet.balance()
        assert after_open.reserved_sat == 0
        fee_sat = FAUCET_SAT - FUNDING_SAT - after_open.confirmed_sat
        assert 0 < fee_sat < 10_000

        driver.shutdown()
        await logged(client, "channel_closed")
        mempool = regtest_node.call("getrawmempool")
        assert len(mempool) == 1  # the closing tx, broadcast by the client's broadcaster
        regtest_node.mine(1)
        await synced(client, regtest_node)
        final = chain.wallet.balance()
        closing_fee_sat = after_open.confirmed_sat + FUNDING_SAT - final.confirmed_sat
        assert 0 < closing_fee_sat < 10_000
        nursery.cancel_scope.cancel()
    client.close()
    world.hub.close()


async def test_chain_state_survives_a_restart(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    url = sqlite_url(tmp_path / "alice.sqlite")
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    terms = None
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc:
        async with trio.open_nursery() as nursery:
            await world.start_hub(nursery)
            terms = world.terms()
            client = ClientNode.open(url, TEST_PASSPHRASE, terms)
            chain = await client.attach_chain(rpc, poll_interval_s=0.5)
            await nursery.start(client.run)
            address = chain.wallet.new_address()
            regtest_node.call("sendtoaddress", address, FAUCET_SAT / 100_000_000)
            regtest_node.mine(2)
            await synced(client, regtest_node)
            tip = chain.tip
            nursery.cancel_scope.cancel()
        client.close()
        world.hub.close()
        again = ClientNode.open(url, TEST_PASSPHRASE, terms)
        restored = await again.attach_chain(rpc)
        assert restored.tip == tip
        assert restored.wallet.balance().confirmed_sat == FAUCET_SAT
        again.close()


async def test_sdk_wallet_open_pay_send_and_close(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        bob = world.open_client("bob")  # funded by the faucet directly, pushes to the hub
        await world.start_client(nursery, bob)
        await world.open_channel(bob, FUNDING_SAT, 400_000_000)
        alice_node = under_autojump(ClientNode.open(world.client_url("alice"),
                                                    TEST_PASSPHRASE, world.terms()))

        async def connect_link() -> FrameLink:
            hub_end, client_end = memory_link_pair()
            nursery.start_soon(world.hub.on_peer_link, alice_node.node_id, hub_end)
            return client_end

        async with AsyncHubClient(alice_node, connect_link, chain_rpc=rpc) as alice:
            await alice.ready()
            with pytest.raises(errors.InsufficientBalance):
                await alice.open_channel(FUNDING_SAT)
            address = await alice.wallet_address()
            regtest_node.call("sendtoaddress", address, FAUCET_SAT / 100_000_000)
            unconfirmed = await alice.wallet_balance()
            assert (unconfirmed.confirmed_sat, unconfirmed.unconfirmed_sat) == (0, FAUCET_SAT)
            regtest_node.mine(1)
            await synced(alice_node, regtest_node)
            assert (await alice.wallet_balance()).confirmed_sat == FAUCET_SAT

            steps: list[OpenProgress] = []
            send_step, step_received = trio.open_memory_channel[OpenProgress](100)
            opened: list[bytes] = []
            open_done = trio.Event()

            def progress(step: OpenProgress) -> None:
                steps.append(step)
                send_step.send_nowait(step)

            async def open_it() -> None:
                opened.append(await alice.open_channel(FUNDING_SAT, progress=progress))
                open_done.set()

            nursery.start_soon(open_it)
            while (await step_received.receive()).stage != "broadcast":
                pass
            await world.hub.sessions[alice_node.node_id].idle()
            regtest_node.mine(world.hub.settings.minimum_depth)
            await synced(alice_node, regtest_node)
            assert await world.hub.check_fundings(world.gettxout) == 1
            await open_done.wait()
            stages = [s.stage for s in steps]
            assert stages[0] == "negotiating" and stages[-1] == "open"
            assert "broadcast" in stages and steps[-1].depth >= steps[-1].minimum_depth
            assert steps[-1].channel_id == opened[0]
            await world.hub.sessions[alice_node.node_id].idle()

            paid = await alice.pay(idempotency_key="tea",
                                   invoice=await bob.add_invoice(5_000_000, "tea"))
            assert paid.state == ledger.SUCCEEDED

            # on chain out of the wallet, to the faucet
            before = await alice.wallet_balance()
            faucet_address = regtest_node.call("getnewaddress")
            with pytest.raises(errors.InsufficientBalance):
                await alice.wallet_send(faucet_address, before.confirmed_sat + 1)
            with pytest.raises(errors.InvalidRequest):
                await alice.wallet_send("bc1qnotregtest", 10_000)
            txid = await alice.wallet_send(faucet_address, 100_000)
            assert txid in regtest_node.call("getrawmempool")
            regtest_node.mine(1)
            await synced(alice_node, regtest_node)
            after_send = await alice.wallet_balance()
            assert 0 < before.confirmed_sat - 100_000 - after_send.confirmed_sat < 10_000

            await alice.close_channel(channel_id=opened[0])
            await logged(alice_node, "channel_closed")
            regtest_node.mine(1)
            await synced(alice_node, regtest_node)
            final = await alice.wallet_balance()
            back_sat = final.confirmed_sat - after_send.confirmed_sat
            # the channel minus the payment and its fee, minus the closing fee
            assert FUNDING_SAT - 5_000 - 10_000 < back_sat < FUNDING_SAT - 5_000
        nursery.cancel_scope.cancel()
    bob.close()
    world.hub.close()
