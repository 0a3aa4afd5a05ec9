"""The client's channels on its own chain (protocol/driver/onchain.py): crashes during
the funding keep (or release) the signed funding tx, and after our force close the
delayed to_local comes back into the wallet, refused by the node one block early."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from channel.chain import BitcoinRpc
from channel.chain.services import ChainServices
from channel.commitment import Side, commitment_number_from_tx
from channel.sweep import sweep_to_local
from channel.tx import Tx
from client.node import ClientNode
from protocol.actions import FundingNeeded, FundingSigned
from protocol.config import CLOSING_CONFIRM_DEADLINE_BLOCKS
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.table import ChannelState
from regtest.node import Node
from tests.client.world import World, is_normal, under_autojump
from tests.driver.conftest import TEST_PASSPHRASE
from tests.driver.parties import until
from tests.fees import priced_fee_of
from tests.hub.parties import NullBroadcaster

FAUCET_SAT = 2_000_000
FUNDING_SAT = 1_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def client_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "alice.sqlite")
    url: str = request.getfixturevalue("postgres_url")
    return url



async def synced(chain: ChainServices, node: Node) -> None:
    await chain.follower.wait_for_height(int(node.call("getblockcount")))


async def funded_client(world: World, url: str, rpc: BitcoinRpc) -> tuple[ClientNode,
                                                                          ChainServices]:
    client = ClientNode.open(url, TEST_PASSPHRASE, world.terms())
    chain = await client.attach_chain(rpc, poll_interval_s=0.5)
    world.node.call("sendtoaddress", chain.wallet.new_address(), FAUCET_SAT / 100_000_000)
    world.node.mine(1)
    return client, chain


async def start_client(world: World, nursery: trio.Nursery, client: ClientNode) -> trio.Event:
    """``World.start_client``, with an event set once ``client.run`` has really ended
    (its writer thread included), so a "crash" can close the store safely after."""
    ended = trio.Event()
    scope = world.run_scopes[client.node_id] = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await client.run(task_status=task_status)
        finally:
            ended.set()

    await nursery.start(run)
    await world.connect(nursery, client)
    await under_autojump(client).ready()
    return ended


async def crash(world: World, client: ClientNode, ended: trio.Event) -> None:
    """The process dies: links and tasks cancelled, nothing finished, store closed."""
    world.scopes[client.node_id].cancel()
    world.run_scopes[client.node_id].cancel()
    await until(ended.is_set)
    client.close()


def fee_of(node: Node, tx: Tx) -> int:
    """Inputs minus outputs, the inputs' amounts from the node."""
    spent = 0
    for txin in tx.inputs:
        prev = node.call("getrawtransaction", txin.outpoint.txid_hex(), True)
        spent += round(prev["vout"][txin.outpoint.index]["value"] * 100_000_000)
    return spent - sum(o.amount_sat for o in tx.outputs)


def mempool_tx(node: Node, txid: str) -> Tx:
    return Tx.parse(bytes.fromhex(node.call("getrawtransaction", txid)))


async def test_crash_after_funding_signed_keeps_the_funding_tx(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, client_url: str,
        autojump_clock: Any) -> None:
    """The hub's funding_signed is stored, the process dies before the broadcast: the
    signed tx was in the chain bundle, so the restarted client broadcasts it."""
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        client, chain = await funded_client(world, client_url, rpc)
        ended = await start_client(world, nursery, client)
        await synced(chain, regtest_node)
        assert client.onchain is not None
        died = trio.Event()

        async def die_before_broadcast(driver: ChannelDriver, event: FundingSigned) -> None:
            died.set()
            await trio.sleep_forever()  # the process is gone: nothing after this runs

        client.onchain.funding_signed = die_before_broadcast  # type: ignore[method-assign]
        driver = client.open_channel(FUNDING_SAT)
        await until(died.is_set)
        assert driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
        funding_txid = driver.channel.d.funding_txid[::-1].hex()
        assert regtest_node.call("getrawmempool") == []  # never broadcast
        await crash(world, client, ended)

        again = ClientNode.open(client_url, TEST_PASSPHRASE, world.terms())
        chain = await again.attach_chain(rpc, poll_interval_s=0.5)
        assert chain.wallet.unbroadcast_tx(funding_txid) is not None
        await world.start_client(nursery, again)
        assert regtest_node.call("getrawmempool") == [funding_txid]  # broadcast by restore
        assert chain.wallet.balance().reserved_sat == 0
        await world.hub.sessions[again.node_id].idle()
        regtest_node.mine(world.hub.settings.minimum_depth)
        await synced(chain, regtest_node)
        assert await world.hub.check_fundings(world.gettxout) == 1
        restored = again.session.drivers[0]
        await until(lambda: is_normal(restored))
        assert again.balance_msat() == FUNDING_SAT * 1000
        nursery.cancel_scope.cancel()
    again.close()
    world.hub.close()


async def test_crash_before_the_outpoint_is_stored_releases_the_coins(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, client_url: str,
        autojump_clock: Any) -> None:
    """The funding tx is signed and its coins reserved (bundle stored), the process
    dies before the channel stored its outpoint: after the restart the channel is
    failed and the coins are spendable again."""
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        client, chain = await funded_client(world, client_url, rpc)
        ended = await start_client(world, nursery, client)
        await synced(chain, regtest_node)
        assert client.onchain is not None
        died = trio.Event()
        real_fund = client.onchain.fund

        async def fund_then_die(driver: ChannelDriver, needed: FundingNeeded) -> None:
            funding_outpoint = driver.funding_outpoint
            driver.funding_outpoint = lambda *a: None  # type: ignore[method-assign]
            await real_fund(driver, needed)
            driver.funding_outpoint = funding_outpoint  # type: ignore[method-assign]
            died.set()
            await trio.sleep_forever()

        client.funder = fund_then_die
        client.open_channel(FUNDING_SAT)
        await until(died.is_set)
        assert chain.wallet.balance().reserved_sat == FAUCET_SAT
        await crash(world, client, ended)

        again = ClientNode.open(client_url, TEST_PASSPHRASE, world.terms())
        chain = await again.attach_chain(rpc, poll_interval_s=0.5)
        assert chain.wallet.balance().reserved_sat == FAUCET_SAT  # stored with the tx
        await world.start_client(nursery, again)
        balance = chain.wallet.balance()
        assert (balance.reserved_sat, balance.confirmed_sat) == (0, FAUCET_SAT)
        # nothing of the opening was stored before the outpoint: no channel came back
        assert all(d.channel.state is ChannelState.FAILED for d in again.session.drivers)
        assert regtest_node.call("getrawmempool") == []
        nursery.cancel_scope.cancel()
    again.close()
    world.hub.close()


async def test_force_close_sweeps_to_local_into_the_wallet(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, client_url: str,
        autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        client, chain = await funded_client(world, client_url, rpc)
        await world.start_client(nursery, client)
        await synced(chain, regtest_node)
        driver = client.open_channel(FUNDING_SAT)
        await until(lambda: driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
                         and regtest_node.call("getrawmempool") != [])
        funding_tx = mempool_tx(regtest_node, driver.channel.d.funding_txid[::-1].hex())
        await world.hub.sessions[client.node_id].idle()
        regtest_node.mine(world.hub.settings.minimum_depth)
        await synced(chain, regtest_node)
        assert await world.hub.check_fundings(world.gettxout) == 1
        await until(lambda: is_normal(driver))
        after_open = chain.wallet.balance().confirmed_sat

        driver.fail("test: force close")
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        [commitment_txid] = regtest_node.call("getrawmempool")
        commitment_tx = mempool_tx(regtest_node, commitment_txid)
        regtest_node.mine(1)
        delay = world.hub.settings.to_self_delay_blocks
        assert driver.channel.static.remote.to_self_delay == delay
        regtest_node.mine(delay - 2)  # the commitment is delay - 1 deep
        await synced(chain, regtest_node)
        assert regtest_node.call("getrawmempool") == []  # not swept yet
        early = sweep_to_local(driver.channel.static, driver.channel.secrets, commitment_tx,
                               commitment_number_from_tx(driver.channel.static, commitment_tx),
                               chain.wallet.new_script_pubkey(), 253)
        [verdict] = regtest_node.call("testmempoolaccept", [early.serialize().hex()])
        assert not verdict["allowed"] and verdict["reject-reason"] == "non-BIP68-final"

        regtest_node.mine(1)  # delay deep: the next block may hold the sweep
        await synced(chain, regtest_node)
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        [sweep_txid] = regtest_node.call("getrawmempool")
        sweep = mempool_tx(regtest_node, sweep_txid)
        assert sweep.inputs[0].outpoint.txid == commitment_tx.txid()
        assert chain.wallet.is_mine(sweep.outputs[0].script_pubkey)
        regtest_node.mine(1)
        await synced(chain, regtest_node)
        final = chain.wallet.balance()
        # to the satoshi: the faucet's coins less the three fees paid on the way
        fees = fee_of(regtest_node, funding_tx) + fee_of(regtest_node, commitment_tx) + \
            fee_of(regtest_node, sweep)
        assert final.confirmed_sat == FAUCET_SAT - fees
        assert final.confirmed_sat == after_open + sweep.outputs[0].amount_sat
        assert (final.unconfirmed_sat, final.reserved_sat) == (0, 0)
        # the sweep's fee is the estimator's rate (regtest: the fallback) on its weight,
        # priced with the largest signature (tests/fees.py)
        feerate = await chain.fee_estimator.feerate_sat_per_kw(6)
        assert fee_of(regtest_node, sweep) == priced_fee_of(sweep, feerate)
        nursery.cancel_scope.cancel()
    client.close()
    world.hub.close()


async def test_to_local_worth_less_than_its_fee_at_the_estimate_is_swept_at_the_floor(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The watch's rule (docs/dev/watch-api.md, Fees): a claim the estimate would
    leave dust falls back to the relay floor rather than staying on chain."""
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        bob = world.open_client("bob")  # funded by the faucet, pushes half to the hub
        await world.start_client(nursery, bob)
        await world.open_channel(bob, FUNDING_SAT, 500_000_000)
        client, chain = await funded_client(world, sqlite_url(tmp_path / "alice.sqlite"), rpc)
        await world.start_client(nursery, client)
        await synced(chain, regtest_node)
        driver = client.open_channel(200_000)
        await until(lambda: driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
                    and regtest_node.call("getrawmempool") != [])
        await world.hub.sessions[client.node_id].idle()
        regtest_node.mine(world.hub.settings.minimum_depth)
        await synced(chain, regtest_node)
        assert await world.hub.check_fundings(world.gettxout) == 1
        await until(lambda: is_normal(driver))
        paid = await client.pay(idempotency_key="most", bolt11=await bob.add_invoice(
            95_000_000, "most of it"))
        assert (await client.wait_payment(paid["payment_id"]))["state"] == "succeeded"
        await until(lambda: driver.channel.latest_view(Side.LOCAL).local_msat < 110_000_000)
        after_pay = chain.wallet.balance().confirmed_sat

        # a fee market where sweeping ~103,000 sat would cost ~120,000 sat
        chain.fee_estimator.fallback_sat_per_kw = 250_000
        driver.fail("test: force close")
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        [commitment_txid] = regtest_node.call("getrawmempool")
        assert client.onchain is not None
        assert client.onchain.enforcer.our_commitment_txid(driver) == \
            bytes.fromhex(commitment_txid)[::-1]
        regtest_node.mine(1)  # a sync step: the watches read the estimate after each
        await synced(chain, regtest_node)
        regtest_node.mine(driver.channel.static.remote.to_self_delay - 1)
        await synced(chain, regtest_node)
        await until(lambda: len(regtest_node.call("getrawmempool")) == 1)
        [sweep_txid] = regtest_node.call("getrawmempool")
        sweep = mempool_tx(regtest_node, sweep_txid)
        assert sweep.inputs[0].outpoint.txid_hex() == commitment_txid
        # the floor, 253 sat/kw, on its weight (priced with the largest signature)
        assert fee_of(regtest_node, sweep) == priced_fee_of(sweep, 253)
        regtest_node.mine(1)
        await synced(chain, regtest_node)
        assert chain.wallet.balance().confirmed_sat == after_pay + sweep.outputs[0].amount_sat
        nursery.cancel_scope.cancel()
    client.close()
    bob.close()
    world.hub.close()


async def test_agreed_close_not_mined_by_its_deadline_is_forced(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """Issue 11, finding 5: a closing tx nobody broadcast (or no node relays) must not
    freeze the funds: at the watch's deadline our latest commitment goes out."""
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        client, chain = await funded_client(world, sqlite_url(tmp_path / "alice.sqlite"), rpc)
        await world.start_client(nursery, client)
        await synced(chain, regtest_node)
        onchain = client.onchain
        assert onchain is not None
        driver = client.open_channel(FUNDING_SAT)
        await until(lambda: driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
                    and regtest_node.call("getrawmempool") != [])
        await world.hub.sessions[client.node_id].idle()
        regtest_node.mine(world.hub.settings.minimum_depth)
        await synced(chain, regtest_node)
        assert await world.hub.check_fundings(world.gettxout) == 1
        await until(lambda: is_normal(driver))

        to_chain = client._broadcaster.target
        client._broadcaster.target = NullBroadcaster()  # the closing tx never leaves
        driver.shutdown()
        await until(lambda: driver.channel.state is ChannelState.CLOSED
                    and driver.channel_key in onchain.closing_deadlines)
        client._broadcaster.target = to_chain
        deadline = onchain.closing_deadlines[driver.channel_key]
        assert deadline == chain.tip.height + CLOSING_CONFIRM_DEADLINE_BLOCKS
        regtest_node.mine(deadline - 1 - chain.tip.height)
        await synced(chain, regtest_node)
        assert driver.channel.state is ChannelState.CLOSED
        assert regtest_node.call("getrawmempool") == []
        regtest_node.mine(1)
        await synced(chain, regtest_node)
        await until(lambda: driver.channel.state is ChannelState.FAILED
                    and len(regtest_node.call("getrawmempool")) == 1)
        [commitment_txid] = regtest_node.call("getrawmempool")
        assert onchain.enforcer.our_commitment_txid(driver) == \
            bytes.fromhex(commitment_txid)[::-1]
        nursery.cancel_scope.cancel()
    client.close()
    world.hub.close()
