"""A channel closed on chain leaves the off-chain world (issue 10): the watch's
``ChannelClosedOnChain`` moves the channel to ON_CHAIN in both parties' state machines
(stored, kept across a restart), the hub routes nothing into it, and once every output
is settled deep (``ChannelResolved``) it is RESOLVED; buried ``WATCH_PRUNE_BLOCKS``
deeper, its watch leaves the WatchSet and the chain bundle for good. The hub, the
clients and the chain are real (the embedded node), as in test_enforce.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from channel.watch import ANTI_REORG_DELAY
from client.node import ClientNode
from hub.node import HubNode
from proto import client_pb2
from protocol.driver.driver import ChannelDriver
from protocol.driver.enforce import WATCH_PRUNE_BLOCKS, watch_key
from protocol.routing import FailureCode
from protocol.table import ChannelState
from regtest.node import Node
from tests.client.world import is_normal
from tests.driver.conftest import TEST_PASSPHRASE
from tests.driver.parties import until
from tests.driver.test_enforce import (
    FUNDING_SAT,
    PUSH_MSAT,
    Net,
    claims_of,
    latest_signed_commitment,
    network,
    start_hub,
)
from tests.hub.parties import NullBroadcaster


@asynccontextmanager
async def second_client(net: Net, name: str, cls: type[ClientNode] = ClientNode
                        ) -> AsyncIterator[tuple[ClientNode, ChannelDriver, ChannelDriver]]:
    """Another client with a NORMAL channel it funded (``PUSH_MSAT`` on the hub's side),
    following no chain of its own: (client, its driver, the hub's driver)."""
    regtest_node, world = net.node, net.world

    async def fund(driver: ChannelDriver, needed: Any) -> None:
        txid_hex, vout = regtest_node.send_to_script(needed.script_pubkey, needed.amount_sat)
        driver.funding_outpoint(bytes.fromhex(txid_hex)[::-1], vout)

    client = cls.open(world.client_url(name), TEST_PASSPHRASE, world.terms(),
                      height=world.height, broadcaster=NullBroadcaster(), funder=fund)
    try:
        async with trio.open_nursery() as nursery:
            await world.start_client(nursery, client)
            driver = client.open_channel(FUNDING_SAT, PUSH_MSAT)
            await until(lambda: driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
                        and regtest_node.call("getrawmempool") != [])
            await net.hub.sessions[client.node_id].idle()
            await net.mine(net.hub.settings.minimum_depth)
            driver.funding_confirmed()
            hub_driver = next(d for d in net.hub.drivers.values()
                              if d.peer_node_id == client.node_id)
            await until(lambda: is_normal(driver) and is_normal(hub_driver))
            yield client, driver, hub_driver
            nursery.cancel_scope.cancel()
    finally:
        client.close()


async def test_a_force_close_mined_puts_the_channel_on_chain_and_nothing_routes_into_it(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    async with network(regtest_node, regtest_rpc, tmp_path) as net, \
            second_client(net, "carol") as (carol, _, _):
        invoice = await net.alice.add_invoice(10_000_000, "after the close")
        commitment = latest_signed_commitment(net.alice_driver)
        regtest_node.call("sendrawtransaction", commitment.serialize().hex())
        await net.mine(1)
        # both parties' state machines: on chain, for good, stored
        await until(lambda: net.hub_driver.channel.state is ChannelState.ON_CHAIN
                    and net.alice_driver.channel.state is ChannelState.ON_CHAIN)
        assert net.hub.channel_proto(net.hub_driver).state == \
            client_pb2.CHANNEL_STATE_FORCE_CLOSING
        await net.hub.sessions[net.alice.node_id].idle()
        update_id = net.hub_driver.channel.d.update_id

        paid = await carol.pay(idempotency_key="toward a closed channel", bolt11=invoice)

        def failed() -> bool:
            row = next(p for p in carol.payments() if p["payment_id"] == paid["payment_id"])
            return bool(row["state"] == "failed")
        await until(failed)
        row = next(p for p in carol.payments() if p["payment_id"] == paid["payment_id"])
        # the reason a payee without an open channel gets (docs/payment-format.md)
        assert row["failure_code"] == FailureCode.UNKNOWN_PAYEE
        # nothing offered or stored on the closed channel
        assert net.hub_driver.channel.d.book.htlcs == {}
        assert net.hub_driver.channel.d.update_id == update_id

        await net.restart_hub()
        assert net.hub_driver.channel.state is ChannelState.ON_CHAIN
        assert net.hub.channel_proto(net.hub_driver).state == \
            client_pb2.CHANNEL_STATE_FORCE_CLOSING
        open_count = (await net.hub.admin.get_info()).open_channel_count
        assert open_count == 1  # carol's only


async def test_a_resolved_channel_is_pruned_from_the_watches_and_stays_so(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """Alice force-closes (no HTLC): the hub's to_remote claim confirms; 6 blocks on,
    the hub's channel is RESOLVED (shown closed); ``WATCH_PRUNE_BLOCKS`` later its
    watch leaves the WatchSet and the bundle, and a restart does not bring it back."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        commitment = latest_signed_commitment(net.alice_driver)
        regtest_node.call("sendrawtransaction", commitment.serialize().hex())
        await net.mine(1)
        await until(lambda: len(claims_of(net, net.hub_chain, commitment)) == 1)
        await net.mine(1)
        claim_height = int(regtest_node.call("getblockcount"))
        assert net.hub.onchain is not None
        enforcer = net.hub.onchain.enforcer
        key = watch_key(net.hub_driver)

        await net.mine(ANTI_REORG_DELAY - 2)  # the claim is 5 deep: not yet
        assert net.hub_driver.channel.state is ChannelState.ON_CHAIN
        await net.mine(1)
        await until(lambda: net.hub_driver.channel.state is ChannelState.RESOLVED)
        assert net.hub.channel_proto(net.hub_driver).state == client_pb2.CHANNEL_STATE_CLOSED
        resolved = enforcer.watches.watches[key].resolved_on_chain()
        assert resolved is not None and resolved.height == claim_height + ANTI_REORG_DELAY - 1

        await net.mine(WATCH_PRUNE_BLOCKS - 1)
        assert key in enforcer.watches.watches  # kept for a deep reorg
        assert key in net.hub_chain.to_json()["watches"]
        await net.mine(1)
        await until(lambda: key not in enforcer.watches.watches)
        assert key not in net.hub_chain.to_json()["watches"]

        await net.restart_hub()
        assert net.hub_driver.channel.state is ChannelState.RESOLVED
        assert key not in net.hub_chain.restored_sections["watches"]
        assert net.hub.onchain is not None
        net.hub.onchain.enforcer.refresh()
        assert net.hub.onchain.enforcer.watch_of(net.hub_driver) is None
        await net.mine(1)
        assert net.hub.onchain.enforcer.watch_of(net.hub_driver) is None


async def test_a_close_reorged_out_leaves_the_channel_on_chain_and_goes_out_again(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The block with alice's commitment leaves the chain for a longer branch without
    it (the node's mempool forgotten too): the channel stays ON_CHAIN on both sides
    (that commitment was published; no other may follow), and the hub's watch sends it
    again (``closing``), so it confirms in the new branch."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        commitment = latest_signed_commitment(net.alice_driver)
        regtest_node.call("sendrawtransaction", commitment.serialize().hex())
        [close_block] = regtest_node.mine(1)
        await net.synced()
        await until(lambda: net.hub_driver.channel.state is ChannelState.ON_CHAIN
                    and net.alice_driver.channel.state is ChannelState.ON_CHAIN)
        regtest_node.call("invalidateblock", close_block)
        regtest_node.mempool.clear()
        regtest_node.mine(2)
        await net.synced()
        assert net.hub.onchain is not None
        reorged = net.hub.onchain.enforcer.watch_of(net.hub_driver)
        assert reorged is not None and reorged.closed_on_chain() is None  # reversed
        assert net.hub_driver.channel.state is ChannelState.ON_CHAIN
        assert net.alice_driver.channel.state is ChannelState.ON_CHAIN
        await until(lambda: commitment.txid_hex() in regtest_node.call("getrawmempool"))
        await net.mine(1)
        watch = net.hub.onchain.enforcer.watch_of(net.hub_driver)
        assert watch is not None
        close = watch.closed_on_chain()
        assert close is not None and close.txid == commitment.txid()
        assert net.hub_driver.channel.state is ChannelState.ON_CHAIN


async def test_a_restart_makes_the_on_chain_state_a_crash_lost_again(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The chain bundle (the watch's reported close) was written, the channel's
    ON_CHAIN snapshot was not (the hub stopped in between): the stored channel says
    NORMAL. After the restart the watch's state moves it to ON_CHAIN again, at the
    first step, before anything can route into it."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        commitment = latest_signed_commitment(net.alice_driver)
        regtest_node.call("sendrawtransaction", commitment.serialize().hex())
        await net.mine(1)
        await until(lambda: net.hub_driver.channel.state is ChannelState.ON_CHAIN)
        await net.hub.sessions[net.alice.node_id].idle()
        await net.world.disconnect(net.alice)
        net.hub_scope.cancel()
        await until(net.hub_ended.is_set)
        # the crash: the last snapshot is one from before funding_spent
        store = net.hub.store
        [stored] = [c for c in store.load_channels() if c.channel_key ==
                    net.hub_driver.channel_key]
        assert stored.snapshot["state"] == "on_chain"
        with net.hub.db.engine.begin() as conn:
            store.snapshot_write(stored.channel_key, stored.peer_node_id,
                                 stored.update_id + 1,
                                 {**stored.snapshot, "state": "normal",
                                  "update_id": stored.update_id + 1})(conn)
        net.hub.close()
        net.hub = net.world.hub = HubNode.open(net.hub.settings, height=net.world.height,
                                               broadcaster=NullBroadcaster())
        net.hub_driver = net.hub.drivers[net.hub_driver.channel_key]
        assert net.hub_driver.channel.state is ChannelState.NORMAL  # as stored
        net.hub_chain = await net.hub.attach_chain(net.rpc, poll_interval_s=0.5)
        net.hub_scope, net.hub_ended = await start_hub(net.nursery, net.hub)
        await net.mine(1)
        await until(lambda: net.hub_driver.channel.state is ChannelState.ON_CHAIN)
        await net.hub.sessions[net.alice.node_id].idle()
        [stored] = [c for c in net.hub.store.load_channels()
                    if c.channel_key == net.hub_driver.channel_key]
        assert stored.snapshot["state"] == "on_chain"
