"""BOLT #5 enforcement driven from each party's own chain (protocol/driver/enforce.py):
a hub and a client, both on the embedded regtest node with their own wallets, one
channel between them. A party that publishes a revoked commitment loses everything
to the other's watch, and a penalty a reorg took off the chain goes out again.
Balances are checked on chain to the satoshi, every fee accounted for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from channel.chain import BitcoinRpc
from channel.chain.services import ChainServices
from channel.commitment import Side
from channel.tx import Tx
from channel.watch import ANTI_REORG_DELAY
from client.node import ClientNode
from hub.node import HubNode
from protocol.commitments import finalize_local
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.table import ChannelState
from regtest.node import Node
from tests.client.world import World, is_normal
from tests.driver.conftest import TEST_PASSPHRASE
from tests.driver.parties import until
from tests.hub.parties import NullBroadcaster, hub_settings

FAUCET_SAT = 2_000_000
FUNDING_SAT = 1_000_000
PUSH_MSAT = 300_000_000  # the hub's side of the channel: both sides have an output


@dataclass
class Net:
    node: Node
    world: World
    hub: HubNode
    hub_chain: ChainServices
    alice: ClientNode
    alice_chain: ChainServices
    alice_driver: ChannelDriver
    hub_driver: ChannelDriver
    funding_tx: Tx
    rpc: BitcoinRpc
    nursery: trio.Nursery
    hub_scope: trio.CancelScope
    hub_ended: trio.Event

    async def restart_hub(self) -> None:
        """The hub process stops (alice's link first) and starts again from its store."""
        await self.world.disconnect(self.alice)
        self.hub_scope.cancel()
        await until(self.hub_ended.is_set)
        self.hub.close()
        self.hub = self.world.hub = HubNode.open(self.hub.settings, height=self.world.height,
                                                 broadcaster=NullBroadcaster())
        self.hub_chain = await self.hub.attach_chain(self.rpc, poll_interval_s=0.5)
        self.hub_driver = self.hub.drivers[self.hub_driver.channel_key]
        self.hub_scope, self.hub_ended = await start_hub(self.nursery, self.hub)

    async def synced(self) -> None:
        height = int(self.node.call("getblockcount"))
        await self.hub_chain.follower.wait_for_height(height)
        await self.alice_chain.follower.wait_for_height(height)

    async def mine(self, blocks: int) -> None:
        self.node.mine(blocks)
        await self.synced()

    def tx(self, txid: str) -> Tx:
        return Tx.parse(bytes.fromhex(self.node.call("getrawtransaction", txid)))

    def mempool(self) -> list[Tx]:
        return [self.tx(txid) for txid in self.node.call("getrawmempool")]

    def fee_of(self, tx: Tx) -> int:
        spent = 0
        for txin in tx.inputs:
            prev = self.node.call("getrawtransaction", txin.outpoint.txid_hex(), True)
            spent += round(prev["vout"][txin.outpoint.index]["value"] * 100_000_000)
        return spent - sum(o.amount_sat for o in tx.outputs)


async def start_hub(nursery: trio.Nursery, hub: HubNode) -> tuple[trio.CancelScope, trio.Event]:
    """``hub.run`` under its own scope; the event is set once it has really ended."""
    scope, ended = trio.CancelScope(), trio.Event()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await hub.run(task_status=task_status)
        finally:
            ended.set()

    await nursery.start(run)
    return scope, ended


@asynccontextmanager
async def network(regtest_node: Node, regtest_rpc: Any, tmp_path: Path) -> AsyncIterator[Net]:
    """A hub and alice, each on its own chain services, and a NORMAL channel alice
    funded from her wallet with ``PUSH_MSAT`` on the hub's side."""
    hub_url = sqlite_url(tmp_path / "hub.sqlite")
    world = World(regtest_node, tmp_path, hub_url)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, trio.open_nursery() as nursery:
        hub = world.hub = HubNode.open(hub_settings(hub_url), height=world.height,
                                       broadcaster=NullBroadcaster())
        hub_chain = await hub.attach_chain(rpc, poll_interval_s=0.5)
        hub_scope, hub_ended = await start_hub(nursery, hub)
        alice = ClientNode.open(world.client_url("alice"), TEST_PASSPHRASE, world.terms())
        alice_chain = await alice.attach_chain(rpc, poll_interval_s=0.5)
        regtest_node.call("sendtoaddress", alice_chain.wallet.new_address(),
                          FAUCET_SAT / 100_000_000)
        regtest_node.mine(1)
        await world.start_client(nursery, alice)
        await alice_chain.follower.wait_for_height(int(regtest_node.call("getblockcount")))
        alice_driver = alice.open_channel(FUNDING_SAT, PUSH_MSAT)
        await until(lambda: alice_driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
                    and regtest_node.call("getrawmempool") != [])
        [funding_txid] = regtest_node.call("getrawmempool")
        await hub.sessions[alice.node_id].idle()
        net = Net(regtest_node, world, hub, hub_chain, alice, alice_chain, alice_driver,
                  hub.drivers[next(iter(hub.drivers))], Tx.parse(bytes.fromhex(
                      regtest_node.call("getrawtransaction", funding_txid))),
                  rpc, nursery, hub_scope, hub_ended)
        await net.mine(hub.settings.minimum_depth)
        await until(lambda: is_normal(alice_driver) and is_normal(net.hub_driver))
        yield net
        nursery.cancel_scope.cancel()
    alice.close()
    net.hub.close()


def latest_signed_commitment(driver: ChannelDriver) -> Tx:
    """The party's current commitment, fully signed (what it could publish)."""
    ch = driver.channel
    return finalize_local(ch.static, ch.secrets, ch.build_local(ch.d.local_ctn),
                          ch.d.local_commit_signature)


async def revoke_one_state(net: Net) -> tuple[Tx, Tx]:
    """One update (alice's update_fee): both commitments 0 are revoked. Returns the
    signed commitments 0 of alice and of the hub, kept from before."""
    alice_old = latest_signed_commitment(net.alice_driver)
    hub_old = latest_signed_commitment(net.hub_driver)
    feerate = net.alice_driver.channel.latest_view(Side.LOCAL).feerate_per_kw
    net.alice_driver.update_fee(feerate + 250)

    def revoked_both_ways() -> bool:
        a, h = net.alice_driver.channel.d, net.hub_driver.channel.d
        return a.local_ctn == h.local_ctn == 1 and \
            a.remote_oldest_ctn == h.remote_oldest_ctn == 1
    await until(revoked_both_ways)
    await net.hub.sessions[net.alice.node_id].idle()
    await net.alice.session.idle()
    return alice_old, hub_old


def claims_of(net: Net, chain: ChainServices, commitment: Tx) -> list[Tx]:
    """Mempool transactions spending ``commitment`` into ``chain``'s wallet."""
    return [tx for tx in net.mempool()
            if any(i.outpoint.txid == commitment.txid() for i in tx.inputs)
            and all(chain.wallet.is_mine(o.script_pubkey) for o in tx.outputs)]


def spent_outputs(claims: list[Tx], commitment: Tx) -> set[int]:
    return {i.outpoint.index for tx in claims for i in tx.inputs
            if i.outpoint.txid == commitment.txid()}


async def publish_and_punish(net: Net, revoked: Tx, punisher: ChainServices) -> list[Tx]:
    """``revoked`` goes on chain; the punisher's watch claims every output of it."""
    net.node.call("sendrawtransaction", revoked.serialize().hex())
    await net.mine(1)
    await until(lambda: spent_outputs(claims_of(net, punisher, revoked), revoked)
                == set(range(len(revoked.outputs))))
    return claims_of(net, punisher, revoked)


async def test_client_publishes_a_revoked_state_the_hub_takes_everything(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        alice_old, _ = await revoke_one_state(net)
        assert len(alice_old.outputs) == 2  # her to_local and the hub's to_remote
        hub_before = net.hub_chain.wallet.balance().confirmed_sat
        alice_before = net.alice_chain.wallet.balance().confirmed_sat

        claims = await publish_and_punish(net, alice_old, net.hub_chain)
        await net.mine(1)
        fees = net.fee_of(alice_old) + sum(net.fee_of(tx) for tx in claims)
        # the whole channel, less the revoked commitment's fee and the claims' fees
        assert net.hub_chain.wallet.balance().confirmed_sat == \
            hub_before + FUNDING_SAT - fees
        assert net.alice_chain.wallet.balance().confirmed_sat == alice_before
        # more blocks change nothing: alice's own watch has nothing left to take
        await net.mine(net.alice_driver.channel.static.remote.to_self_delay + 1)
        assert net.mempool() == []
        assert net.hub_chain.wallet.balance().confirmed_sat == \
            hub_before + FUNDING_SAT - fees
        assert net.alice_chain.wallet.balance().confirmed_sat == alice_before


async def test_hub_publishes_a_revoked_state_the_client_takes_everything(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        _, hub_old = await revoke_one_state(net)
        assert len(hub_old.outputs) == 2
        hub_before = net.hub_chain.wallet.balance().confirmed_sat
        alice_before = net.alice_chain.wallet.balance().confirmed_sat

        claims = await publish_and_punish(net, hub_old, net.alice_chain)
        await net.mine(1)
        fees = net.fee_of(hub_old) + sum(net.fee_of(tx) for tx in claims)
        assert net.alice_chain.wallet.balance().confirmed_sat == \
            alice_before + FUNDING_SAT - fees
        assert net.hub_chain.wallet.balance().confirmed_sat == hub_before
        await net.mine(net.hub_driver.channel.static.remote.to_self_delay + 1)
        assert net.mempool() == []
        assert net.hub_chain.wallet.balance().confirmed_sat == hub_before


async def test_the_hub_restarted_from_its_store_still_punishes(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The watch comes back from the chain bundle and the revoked record from the
    store: a breach after the restart is punished like one before it."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        alice_old, _ = await revoke_one_state(net)
        await net.restart_hub()
        # restored from the bundle's watches section, not made anew
        assert net.hub_driver.channel_key.hex() in net.hub_chain.restored_sections["watches"]
        await net.hub_chain.follower.wait_for_height(int(regtest_node.call("getblockcount")))
        assert net.hub.onchain is not None
        assert net.hub.onchain.enforcer.watch_of(net.hub_driver) is not None
        hub_before = net.hub_chain.wallet.balance().confirmed_sat
        claims = await publish_and_punish(net, alice_old, net.hub_chain)
        await net.mine(1)
        fees = net.fee_of(alice_old) + sum(net.fee_of(tx) for tx in claims)
        assert net.hub_chain.wallet.balance().confirmed_sat == \
            hub_before + FUNDING_SAT - fees


async def test_a_reorg_that_drops_the_penalty_sends_it_again(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The penalty confirmed, then a reorg deeper than the broadcaster's memory (6
    blocks) took its block away and the node's mempool forgot it: only the watch
    knows it must go out again."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        alice_old, _ = await revoke_one_state(net)
        hub_before = net.hub_chain.wallet.balance().confirmed_sat
        claims = await publish_and_punish(net, alice_old, net.hub_chain)
        [penalty_block] = regtest_node.mine(1)
        await net.mine(net.hub_chain.broadcaster.confirm_depth)
        assert net.hub_chain.broadcaster.pending() == []  # deep enough: forgotten
        fees = net.fee_of(alice_old) + sum(net.fee_of(tx) for tx in claims)
        assert net.hub_chain.wallet.balance().confirmed_sat == \
            hub_before + FUNDING_SAT - fees

        regtest_node.call("invalidateblock", penalty_block)
        regtest_node.mempool.clear()  # e.g. a node restarted without its mempool
        await net.mine(net.hub_chain.broadcaster.confirm_depth + 2)  # a longer branch
        assert net.hub_chain.wallet.balance().confirmed_sat == hub_before
        # sent again; the penalty's deadline has passed meanwhile, so it is re-signed
        # at a higher rate too (a replacement): whichever version the block takes
        await until(lambda: spent_outputs(claims_of(net, net.hub_chain, alice_old),
                                          alice_old) == {0, 1})
        await net.mine(1)
        block = regtest_node.call("getblock", regtest_node.call("getbestblockhash"), 1)
        mined = [tx for tx in map(net.tx, block["tx"][1:])
                 if any(i.outpoint.txid == alice_old.txid() for i in tx.inputs)]
        assert spent_outputs(mined, alice_old) == {0, 1}
        assert all(net.hub_chain.wallet.is_mine(o.script_pubkey) for tx in mined
                   for o in tx.outputs)
        fees = net.fee_of(alice_old) + sum(net.fee_of(tx) for tx in mined)
        assert net.hub_chain.wallet.balance().confirmed_sat == \
            hub_before + FUNDING_SAT - fees


HELD_MSAT = 40_000_000


class SilentPayee(ClientNode):
    """A payee whose application never answers an HTLC (it died deciding): the HTLC
    stays in flight on its channel, as the fault needs; everything else is real."""

    async def _received(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                        payment_hash: bytes, cltv_expiry: int, packet: bytes) -> None:
        return None


async def test_payee_force_closes_with_an_htlc_in_flight_the_hub_times_it_out(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """Alice pays carol through the hub; carol holds the HTLC and publishes her latest
    commitment. The hub claims the HTLC by timeout after its CLTV and fails alice's
    HTLC back off chain, before alice's own on-chain deadline: her channel stays open."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        world = net.world

        async def fund(driver: ChannelDriver, needed: Any) -> None:
            txid_hex, vout = regtest_node.send_to_script(needed.script_pubkey, needed.amount_sat)
            driver.funding_outpoint(bytes.fromhex(txid_hex)[::-1], vout)

        carol = SilentPayee.open(world.client_url("carol"), TEST_PASSPHRASE, world.terms(),
                                 height=world.height, broadcaster=NullBroadcaster(), funder=fund)
        async with trio.open_nursery() as nursery:
            await world.start_client(nursery, carol)
            carol_driver = carol.open_channel(FUNDING_SAT, PUSH_MSAT)  # the hub's side
            await until(lambda: carol_driver.channel.state is ChannelState.AWAIT_CHANNEL_READY
                        and regtest_node.call("getrawmempool") != [])
            await net.hub.sessions[carol.node_id].idle()
            await net.mine(net.hub.settings.minimum_depth)
            carol_driver.funding_confirmed()  # carol follows no chain of her own
            hub_carol = net.hub.drivers[next(k for k, d in net.hub.drivers.items()
                                             if d.peer_node_id == carol.node_id)]
            await until(lambda: is_normal(carol_driver) and is_normal(hub_carol))

            paid = await net.alice.pay(idempotency_key="held", bolt11=await carol.add_invoice(
                HELD_MSAT, "held"))
            await until(lambda: len(carol_driver.channel.received_htlcs()) == 1)
            [(_, amount_msat, _, cltv_expiry)] = carol_driver.channel.received_htlcs()
            assert amount_msat == HELD_MSAT
            [alice_htlc] = net.alice_driver.channel.d.book.htlcs.values()
            assert alice_htlc.cltv_expiry > cltv_expiry  # the hub's CLTV delta
            await net.hub.sessions[carol.node_id].idle()
            hub_before = net.hub_chain.wallet.balance().confirmed_sat

            commitment = latest_signed_commitment(carol_driver)
            htlc_index = next(i for i, o in enumerate(commitment.outputs)
                              if o.amount_sat == HELD_MSAT // 1000)
            to_remote_index = next(i for i, o in enumerate(commitment.outputs)
                                   if o.amount_sat == (PUSH_MSAT - HELD_MSAT) // 1000)
            regtest_node.call("sendrawtransaction", commitment.serialize().hex())
            await net.mine(1)
            await until(lambda: spent_outputs(claims_of(net, net.hub_chain, commitment),
                                              commitment) == {to_remote_index})
            claims = claims_of(net, net.hub_chain, commitment)
            # the timeout is final in the block after cltv_expiry: broadcast at that tip
            await net.mine(cltv_expiry - int(regtest_node.call("getblockcount")))
            await until(lambda: spent_outputs(claims_of(net, net.hub_chain, commitment),
                                              commitment) == {htlc_index})
            claims += claims_of(net, net.hub_chain, commitment)
            await net.mine(ANTI_REORG_DELAY)  # the claim buried: reorg-safe
            # failed back off chain: gone from alice's channel on both sides
            await until(lambda: net.alice_driver.channel.d.book.htlcs == {}
                        and net.hub_driver.channel.d.book.htlcs == {})
            assert int(regtest_node.call("getblockcount")) < alice_htlc.cltv_expiry
            assert is_normal(net.alice_driver)  # failed back off chain, in time
            # (until, not fail_after: under autojump a store write in its thread lets
            # virtual time run to the next deadline)
            await until(lambda: next(p for p in net.alice.payments()
                                     if p["payment_id"] == paid["payment_id"])["state"]
                        == "failed")
            assert net.hub_chain.wallet.balance().confirmed_sat == \
                hub_before + PUSH_MSAT // 1000 - sum(net.fee_of(tx) for tx in claims)
            # past the HTLC's go-on-chain height: the close is already on chain, so no
            # commitment of ours (a double spend the node refuses) is sent after it
            await net.mine(3)
            assert hub_carol.channel.state is ChannelState.RESOLVED  # all claimed, deep
            assert [e.label for e in net.hub_chain.broadcaster.pending()
                    if e.last_error is not None] == []
            nursery.cancel_scope.cancel()
        carol.close()
