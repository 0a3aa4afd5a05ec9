"""The hub and the chain around a routed payment's two channels (issue 10): the
upstream HTLC is failed back only once the hub's timeout claim on the downstream
channel is ``ANTI_REORG_DELAY`` deep (a shallower reorg could let the payee claim it
with the preimage after all), a reorg before that cancels the pending fail-back, and
a restart keeps it; a preimage the payee gives while the payer's channel is on chain
reaches that channel's watch, which claims the payer's HTLC on chain with it.

The hub, the clients and the chain are real (the embedded node,
tests/driver/test_enforce.py's ``network``); balances are checked to the satoshi."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from channel.tx import Tx
from channel.watch import ANTI_REORG_DELAY
from client.node import ClientNode
from protocol.driver.driver import ChannelDriver
from protocol.table import ChannelState
from regtest.node import Node
from tests.driver.parties import until
from tests.driver.test_enforce import (
    HELD_MSAT,
    PUSH_MSAT,
    Net,
    SilentPayee,
    claims_of,
    latest_signed_commitment,
    network,
    spent_outputs,
)
from tests.driver.test_on_chain_state import second_client


@dataclass
class Held:
    """Alice's payment to carol, held by carol, with carol's commitment on chain."""

    carol: ClientNode
    carol_driver: ChannelDriver
    hub_carol: ChannelDriver
    commitment: Tx
    htlc_index: int
    cltv_expiry: int  # the outgoing HTLC's (hub -> carol)
    upstream_cltv_expiry: int  # alice's HTLC to the hub


@asynccontextmanager
async def timed_out_on_chain(net: Net) -> AsyncIterator[Held]:
    """Carol holds the HTLC and publishes her latest commitment; at its CLTV the hub's
    watch broadcasts the timeout claim (in the mempool, not mined, when this yields)."""
    async with second_client(net, "carol", SilentPayee) as (carol, carol_driver, hub_carol):
        regtest_node = net.node
        await net.alice.pay(idempotency_key="held",
                            bolt11=await carol.add_invoice(HELD_MSAT, "held"))
        await until(lambda: len(carol_driver.channel.received_htlcs()) == 1)
        [(_, _, _, cltv_expiry)] = carol_driver.channel.received_htlcs()
        [alice_htlc] = net.alice_driver.channel.d.book.htlcs.values()
        await net.hub.sessions[carol.node_id].idle()
        commitment = latest_signed_commitment(carol_driver)
        htlc_index = next(i for i, o in enumerate(commitment.outputs)
                          if o.amount_sat == HELD_MSAT // 1000)
        regtest_node.call("sendrawtransaction", commitment.serialize().hex())
        await net.mine(1)
        await until(lambda: hub_carol.channel.state is ChannelState.ON_CHAIN)
        await net.mine(cltv_expiry - int(regtest_node.call("getblockcount")))
        await until(lambda: htlc_index in spent_outputs(
            claims_of(net, net.hub_chain, commitment), commitment))
        yield Held(carol, carol_driver, hub_carol, commitment, htlc_index, cltv_expiry,
                   alice_htlc.cltv_expiry)


def upstream_open(net: Net) -> bool:
    """Alice's HTLC to the hub is still in her channel, on the hub's side."""
    return net.hub_driver.channel.d.book.htlcs != {}


async def settled_a_while(net: Net) -> None:
    await net.hub.router.idle()
    await net.hub.sessions[net.alice.node_id].idle()
    await net.alice.session.idle()


async def test_the_upstream_htlc_is_failed_back_when_the_timeout_claim_is_buried(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    async with network(regtest_node, regtest_rpc, tmp_path) as net, \
            timed_out_on_chain(net) as held:
        await net.mine(ANTI_REORG_DELAY - 1)  # the claim is N - 1 deep
        await settled_a_while(net)
        assert upstream_open(net)
        await net.mine(1)  # N deep
        await until(lambda: not upstream_open(net)
                    and net.alice_driver.channel.d.book.htlcs == {})
        height = int(regtest_node.call("getblockcount"))
        # timeout final at cltv + 1, buried at cltv + N; alice's HTLC expires 40 later
        assert height == held.cltv_expiry + ANTI_REORG_DELAY
        assert height < held.upstream_cltv_expiry
        assert net.alice_driver.channel.state is ChannelState.NORMAL  # off chain, in time


async def test_a_reorg_before_the_depth_cancels_the_fail_back(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The claim's block leaves the chain at depth N - 1 for a longer branch without it:
    the branch passes the height it would have been buried at, and alice's HTLC stays;
    the claim goes out again and is failed back only once buried in the new chain."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net, \
            timed_out_on_chain(net) as held:
        [claim_block] = regtest_node.mine(1)
        await net.mine(ANTI_REORG_DELAY - 2)
        await settled_a_while(net)
        assert upstream_open(net)
        regtest_node.call("invalidateblock", claim_block)
        regtest_node.mempool.clear()  # the new branch is mined before anyone resends
        regtest_node.mine(ANTI_REORG_DELAY + 1)
        await net.synced()
        await settled_a_while(net)
        assert upstream_open(net)  # past the old burial height: cancelled
        await until(lambda: held.htlc_index in spent_outputs(
            claims_of(net, net.hub_chain, held.commitment), held.commitment))
        await net.mine(ANTI_REORG_DELAY - 1)
        await settled_a_while(net)
        assert upstream_open(net)
        await net.mine(1)
        await until(lambda: not upstream_open(net))
        assert int(regtest_node.call("getblockcount")) < held.upstream_cltv_expiry


async def test_a_restart_before_the_depth_keeps_the_pending_fail_back(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    async with network(regtest_node, regtest_rpc, tmp_path) as net, \
            timed_out_on_chain(net) as held:
        await net.mine(ANTI_REORG_DELAY - 1)
        await net.world.disconnect(held.carol)
        await net.restart_hub()
        await net.world.connect(net.nursery, net.alice)
        await net.alice.ready()
        await net.synced()
        await settled_a_while(net)
        assert upstream_open(net)
        await net.mine(1)
        await until(lambda: not upstream_open(net)
                    and net.alice_driver.channel.d.book.htlcs == {})
        assert int(regtest_node.call("getblockcount")) < held.upstream_cltv_expiry


class HoldingPayee(ClientNode):
    """A payee that answers an HTLC only when the test says so (``release``)."""

    held: list[tuple[Any, ...]]

    async def _received(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                        payment_hash: bytes, cltv_expiry: int, packet: bytes) -> None:
        if not hasattr(self, "held"):
            self.held = []
        self.held.append((driver, htlc_id, amount_msat, payment_hash, cltv_expiry, packet))

    async def release(self) -> None:
        for args in self.held:
            await super()._received(*args)


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
async def test_a_preimage_learned_downstream_is_claimed_on_the_payers_channel_on_chain(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any,
        restart: bool) -> None:
    """Alice's commitment, with her HTLC to the hub in it, confirms while carol holds
    the payment; carol then fulfils off chain. The hub cannot fulfil alice's HTLC off
    chain any more (ON_CHAIN): its watch claims it on chain with the preimage. Also
    with the hub restarted before the next block (the chain bundle stored last holds
    no preimage: the stored forward gives it to the restored watch)."""
    async with network(regtest_node, regtest_rpc, tmp_path) as net, \
            second_client(net, "carol", HoldingPayee) as (carol, carol_driver, hub_carol):
        assert isinstance(carol, HoldingPayee)
        await net.alice.pay(idempotency_key="held",
                            bolt11=await carol.add_invoice(HELD_MSAT, "held"))
        await until(lambda: len(carol_driver.channel.received_htlcs()) == 1)
        await net.hub.sessions[carol.node_id].idle()
        await net.alice.session.idle()
        [alice_htlc] = net.alice_driver.channel.d.book.htlcs.values()
        commitment = latest_signed_commitment(net.alice_driver)
        htlc_index = next(i for i, o in enumerate(commitment.outputs)
                          if o.amount_sat == alice_htlc.amount_msat // 1000)
        to_remote_index = next(i for i, o in enumerate(commitment.outputs)
                               if o.amount_sat == PUSH_MSAT // 1000)
        hub_before = net.hub_chain.wallet.balance().confirmed_sat
        regtest_node.call("sendrawtransaction", commitment.serialize().hex())
        await net.mine(1)
        await until(lambda: net.hub_driver.channel.state is ChannelState.ON_CHAIN)
        await until(lambda: spent_outputs(claims_of(net, net.hub_chain, commitment),
                                          commitment) == {to_remote_index})
        claims = claims_of(net, net.hub_chain, commitment)

        await carol.release()  # carol fulfils off chain: the hub learns the preimage
        await until(lambda: carol_driver.channel.d.book.htlcs == {}
                    and hub_carol.channel.d.book.htlcs == {})
        await net.hub.router.idle()
        assert net.hub_driver.channel.d.book.htlcs  # not settled off chain (on chain)
        if restart:
            await net.world.disconnect(carol)
            await net.restart_hub()
            await net.synced()
        await net.mine(1)  # the to_remote claim confirms; the watch has the preimage
        await until(lambda: htlc_index in spent_outputs(
            claims_of(net, net.hub_chain, commitment), commitment))
        [claim] = [tx for tx in claims_of(net, net.hub_chain, commitment)
                   if tx.inputs[0].outpoint.index == htlc_index]
        preimage = next(p for p in carol.payments() if p["direction"] == "received")[
            "payment_preimage"]
        assert bytes(preimage) in claim.inputs[0].witness  # the preimage path
        assert claim.locktime <= int(regtest_node.call("getblockcount"))  # final now
        # the node took it into its mempool (what testmempoolaccept checks), and mines it
        assert claim.txid_hex() in regtest_node.call("getrawmempool")
        await net.mine(1)
        claims.append(claim)
        fees = sum(net.fee_of(tx) for tx in claims)
        assert net.hub_chain.wallet.balance().confirmed_sat == \
            hub_before + PUSH_MSAT // 1000 + alice_htlc.amount_msat // 1000 - fees
