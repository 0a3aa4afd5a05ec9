"""The tower punishes the breach of an offline client, HTLC outputs included, on the
embedded regtest node: a real channel (two ``protocol.Channel`` parties,
regtest/twoparty.py), the client's appointments built from its own
``Watch("revoked_commitment")`` records and delivered over loopback gRPC with TLS and
node-key authentication to a ``TowerService``; then the client goes away, the peer
restores an old backup with two HTLCs in flight and publishes it, and only the tower
acts."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from channel.chain import BitcoinRpc
from channel.commitment import Side, finalize_holder_htlc_tx
from channel.tx import OutPoint, Tx
from client.tower import (
    PENALTY_CONF_TARGET_BLOCKS,
    PENALTY_FEERATE_MULTIPLIER,
    TowerClient,
    TowerError,
    TowerWatchHook,
    appointment_for_watch,
)
from client.transport import HubPin
from hub.tower import TowerService, TowerSettings
from proto import tower_pb2
from protocol import Broadcast, Channel, Watch
from protocol.driver.appointment import open_sealed
from protocol.driver.grpc_bridge import GrpcBridge, open_grpc_bridge
from regtest.node import Node
from regtest.twoparty import Party, TwoPartyChannel, derived_secret
from tests.fees import priced_fee_of
from tests.wire.hubfixture import new_node_secret

FUNDING_SAT = 1_000_000
TO_SELF_DELAY = 12
PENALTY_FEERATE = 1_000
A_TO_B_HTLC_MSAT = 50_000_000  # offered by the cheater
B_TO_A_HTLC_MSAT = 20_000_000  # offered by the client; the cheater knows its preimage


@dataclass
class World:
    rpc: BitcoinRpc
    node: Node
    bridge: GrpcBridge
    tower: TowerService
    tmp_path: Path

    def client(self, node_secret: bytes, name: str = "client") -> TowerClient:
        assert self.tower.port is not None
        return TowerClient(self.bridge, f"127.0.0.1:{self.tower.port}", node_secret=node_secret,
                           pin=HubPin(cert_pem=self.tower.tls.cert_pem),
                           outbox_dir=self.tmp_path / name / "tower-outbox",
                           expected_tower_node_id=self.tower.node_id,
                           call_timeout_seconds=None)

    async def mine(self, pair: TwoPartyChannel, blocks: int = 1) -> None:
        await pair.mine(blocks)
        await self.tower.sync()


@pytest.fixture
async def world(regtest_node: Node, regtest_rpc: Any, tmp_path: Path,
                autojump_clock: Any) -> AsyncIterator[World]:
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, open_grpc_bridge() as bridge, \
            trio.open_nursery() as nursery:
        tower = TowerService(TowerSettings(tmp_path / "tower", listen_port=0), rpc, bridge,
                             run_follower=False)
        await nursery.start(tower.run)
        yield World(rpc, regtest_node, bridge, tower, tmp_path)
        nursery.cancel_scope.cancel()


@dataclass
class DriverOf:
    """The one attribute of a ``ChannelDriver`` the hook reads: TwoPartyChannel runs
    its ``protocol.Channel``s without drivers."""

    channel: Channel


def add_htlc(pair: TwoPartyChannel, payer: Party, amount_msat: int, label: str) -> bytes:
    preimage = derived_secret(f"preimage {label}")
    pair.run(payer, payer.channel.add_htlc(amount_msat, hashlib.sha256(preimage).digest(),
                                           pair._height + 40, height=pair._height))
    return preimage


def settle_commitments(pair: TwoPartyChannel) -> None:
    """Sign and revoke until neither side has anything left to commit."""
    for _ in range(4):
        for party in (pair.a, pair.b):
            pair.pump()
            if party.channel.can_commit():
                pair.commit_both_ways(first=party)
    pair.pump()


def revoked_watches(party: Party) -> list[Watch]:
    return [e for e in party.events if isinstance(e, Watch) and e.kind == "revoked_commitment"]


async def breach_with_htlcs(pair: TwoPartyChannel) -> tuple[Channel, Tx, bytes]:
    """Open, pay, put two HTLCs in flight, keep the cheater's backup there, move on.
    Returns (the cheater's restored channel, its revoked commitment, the preimage of
    the client's HTLC to the cheater)."""
    await pair.open(FUNDING_SAT)
    pair.pay(300_000_000, "first payment")
    add_htlc(pair, pair.a, A_TO_B_HTLC_MSAT, "a to b")
    b_preimage = add_htlc(pair, pair.b, B_TO_A_HTLC_MSAT, "b to a")
    settle_commitments(pair)
    backup = copy.deepcopy(pair.a.snapshots[-1])
    cheater = Channel.restore(backup)
    assert len(cheater.build_local(cheater.d.local_ctn).htlc_outputs) == 2
    pair.pay(10_000_000, "after the backup")  # revokes the backed-up commitment
    revoked = next(a for a in Channel.restore(backup).fail("restored a backup")
                   if isinstance(a, Broadcast))
    return cheater, Tx.parse(revoked.raw_tx), b_preimage


async def deliver(world: World, pair: TwoPartyChannel, node_secret: bytes) -> int:
    return await deliver_with(world.client(node_secret), pair)


async def deliver_with(client: TowerClient, pair: TwoPartyChannel) -> int:
    """The client's appointments for every revocation so far, through ``client``;
    then the client goes offline. Returns how many."""
    async def estimate(conf_target_blocks: int) -> int:
        assert conf_target_blocks == PENALTY_CONF_TARGET_BLOCKS
        return PENALTY_FEERATE // PENALTY_FEERATE_MULTIPLIER

    hook = TowerWatchHook([client], destination_script_pubkey=lambda: pair.b.wallet_script,
                          feerate_per_kw=estimate)
    for watch in revoked_watches(pair.b):
        # what the party's driver does with each durable Watch (DriverContext.on_watch)
        await hook.on_watch(DriverOf(pair.b.channel), watch)  # type: ignore[arg-type]
    sent = await client.flush()
    assert len(client.outbox) == 0
    await client.aclose()
    return sent


def client_outputs(world: World, txids: list[str], script: bytes) -> int:
    """Satoshis the confirmed transactions ``txids`` pay to ``script``."""
    total = 0
    for txid in txids:
        tx = Tx.parse(bytes.fromhex(world.node.call("getrawtransaction", txid)))
        total += sum(o.amount_sat for o in tx.outputs if o.script_pubkey == script)
    return total


def unspent(world: World, tx: Tx, index: int) -> bool:
    return world.node.call("gettxout", tx.txid_hex(), index) is not None


def fee_sat(world: World, tx: Tx) -> int:
    total_in = 0
    for txin in tx.inputs:
        parent = Tx.parse(bytes.fromhex(world.node.call("getrawtransaction",
                                                        txin.outpoint.txid_hex())))
        total_in += parent.outputs[txin.outpoint.index].amount_sat
    return total_in - sum(o.amount_sat for o in tx.outputs)


async def test_tower_punishes_an_offline_clients_breach_htlcs_included(world: World) -> None:
    pair = TwoPartyChannel(world.rpc, label="tower breach", to_self_delay=TO_SELF_DELAY)
    _, revoked_tx, _ = await breach_with_htlcs(pair)
    watch = next(w for w in revoked_watches(pair.b) if w.txid == revoked_tx.txid())
    assert len(watch.htlc_outputs) == 2 and watch.to_local_output_index is not None
    assert await deliver(world, pair, new_node_secret()) == len(revoked_watches(pair.b))

    # The client is gone. The cheater publishes; the tower sees it in the next block.
    await pair.broadcast(revoked_tx)
    await world.mine(pair)
    mempool = world.node.call("getrawmempool")
    assert len(mempool) == 1, "the tower broadcast one combined penalty"
    penalty = Tx.parse(bytes.fromhex(world.node.call("getrawtransaction", mempool[0])))
    taken = {i.outpoint for i in penalty.inputs}
    expected = {OutPoint(revoked_tx.txid(), i) for i, _ in watch.htlc_outputs}
    expected.add(OutPoint(revoked_tx.txid(), watch.to_local_output_index))
    assert taken == expected  # to_local and both HTLC outputs
    await world.mine(pair)
    assert world.node.call("getrawmempool") == []

    # Balances, exact: everything but the client's own to_remote went to the client's
    # address, less the penalty's fee; the cheater's outputs are all spent.
    to_remote = next(i for i, o in enumerate(revoked_tx.outputs)
                     if o.script_pubkey not in {revoked_tx.outputs[j].script_pubkey
                                                for j in [o.index for o in expected]})
    revocable_sat = sum(revoked_tx.outputs[o.index].amount_sat for o in expected)
    assert revocable_sat == (watch.to_local_amount_sat + A_TO_B_HTLC_MSAT // 1000
                             + B_TO_A_HTLC_MSAT // 1000)
    assert penalty.outputs[0].script_pubkey == pair.b.wallet_script
    assert penalty.outputs[0].amount_sat == revocable_sat - fee_sat(world, penalty)
    # the fee is the client's rate over the weight with 73-byte signatures (the
    # largest: tests/fees.py)
    assert fee_sat(world, penalty) == priced_fee_of(penalty, PENALTY_FEERATE)
    assert [unspent(world, revoked_tx, i) for i in range(len(revoked_tx.outputs))] == [
        i == to_remote for i in range(len(revoked_tx.outputs))]
    assert world.node.call("gettxout", penalty.txid_hex(), 0)["confirmations"] == 1


async def test_tower_takes_the_second_stage_output_too(world: World) -> None:
    """The cheater gets its HTLC-success into the same block as the revoked commitment:
    the combined penalty is dead, so the tower sends the single-output penalties for
    to_local and the other HTLC, and the penalty on the HTLC-success output."""
    pair = TwoPartyChannel(world.rpc, label="tower second stage", to_self_delay=TO_SELF_DELAY)
    cheater, revoked_tx, b_preimage = await breach_with_htlcs(pair)
    await deliver(world, pair, new_node_secret())

    commitment = cheater.build_local(cheater.d.local_ctn)
    assert commitment.txid == revoked_tx.txid()
    position, (index, htlc) = next(
        (p, (i, h)) for p, (i, h) in enumerate(commitment.htlc_outputs)
        if h.offered_by is Side.REMOTE)  # the client's HTLC, which the cheater can claim
    htlc_success = finalize_holder_htlc_tx(cheater.static, cheater.secrets, commitment, index,
                                           cheater.d.local_htlc_signatures[position],
                                           b_preimage)
    await pair.broadcast(revoked_tx)
    await pair.broadcast(htlc_success)
    await world.mine(pair)  # both confirm in one block, before the tower acts
    assert not unspent(world, revoked_tx, index)

    mempool = set(world.node.call("getrawmempool"))
    assert len(mempool) == 3  # to_local, the other HTLC, and the second-stage output
    penalties = [Tx.parse(bytes.fromhex(world.node.call("getrawtransaction", t)))
                 for t in mempool]
    second = next(p for p in penalties if p.inputs[0].outpoint.txid == htlc_success.txid())
    assert second.inputs[0].outpoint == OutPoint(htlc_success.txid(), 0)
    await world.mine(pair)
    assert world.node.call("getrawmempool") == []

    # Everything the cheater could have kept is the client's, less three penalty fees.
    watch = next(w for w in revoked_watches(pair.b) if w.txid == revoked_tx.txid())
    fees = sum(fee_sat(world, p) for p in penalties)
    got = client_outputs(world, sorted(mempool), pair.b.wallet_script)
    expected = (watch.to_local_amount_sat + A_TO_B_HTLC_MSAT // 1000
                + htlc_success.outputs[0].amount_sat)
    assert htlc.amount_msat == B_TO_A_HTLC_MSAT
    assert got == expected - fees
    assert not unspent(world, htlc_success, 0)


async def test_a_tower_down_loses_no_appointment(world: World, tmp_path: Path) -> None:
    """Appointments enqueued while the tower cannot be reached stay in the outbox (on
    disk) and go out once it can."""
    secret = new_node_secret()
    client = TowerClient(world.bridge, "127.0.0.1:1", node_secret=secret,
                         pin=HubPin(cert_pem=world.tower.tls.cert_pem),
                         outbox_dir=tmp_path / "outbox", call_timeout_seconds=None)
    appointment = tower_pb2.Appointment(locator=b"\x01" * 16, nonce=b"\x02" * 12,
                                        encrypted_blob=b"\x03" * 40)
    await client.enqueue(appointment)
    with pytest.raises(TowerError, match="UNAVAILABLE"):
        await client.flush()
    assert len(client.outbox) == 1
    again = world.client(secret, name="again")
    again.outbox = client.outbox  # the same directory, as after a restart
    assert await again.flush() == 1
    assert len(again.outbox) == 0
    info = await again.get_info()
    assert info.registered and info.quota.used_appointments == 1
    await again.aclose()


async def test_a_tower_that_was_down_catches_up_and_punishes(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The tower stops (its chain position is stored); the cheater publishes and three
    blocks pass; the restarted tower scans them from where it stopped and punishes."""
    settings = TowerSettings(tmp_path / "tower", listen_port=0)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, open_grpc_bridge() as bridge:
        pair = TwoPartyChannel(rpc, label="tower restart", to_self_delay=TO_SELF_DELAY)
        _, revoked_tx, _ = await breach_with_htlcs(pair)
        async with trio.open_nursery() as nursery:
            tower = TowerService(settings, rpc, bridge, run_follower=False)
            await nursery.start(tower.run)
            world = World(rpc, regtest_node, bridge, tower, tmp_path)
            await deliver(world, pair, new_node_secret())
            stopped_at = tower.follower.tip.height  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()

        await pair.broadcast(revoked_tx)
        await pair.mine(3)
        assert regtest_node.call("getrawmempool") == []

        async with trio.open_nursery() as nursery:
            again = TowerService(settings, rpc, bridge, run_follower=False)
            await nursery.start(again.run)  # its first sync catches up
            assert again.follower is not None and again.follower.tip.height == stopped_at + 3
            mempool = regtest_node.call("getrawmempool")
            assert len(mempool) == 1
            penalty = Tx.parse(bytes.fromhex(regtest_node.call("getrawtransaction", mempool[0])))
            assert {i.outpoint.txid for i in penalty.inputs} == {revoked_tx.txid()}
            assert len(penalty.inputs) == 3
            nursery.cancel_scope.cancel()


async def test_a_reorg_that_forgets_the_breach_and_the_penalty(world: World) -> None:
    """The breach and the tower's penalty confirm; a reorg takes both blocks away and
    the node forgets both. The tower keeps its penalty; when the cheater publishes
    again, the tower's broadcaster resends it and it confirms."""
    pair = TwoPartyChannel(world.rpc, label="tower reorg", to_self_delay=TO_SELF_DELAY)
    _, revoked_tx, _ = await breach_with_htlcs(pair)
    await deliver(world, pair, new_node_secret())
    await pair.broadcast(revoked_tx)
    await world.mine(pair)
    breach_block = world.node.call("getbestblockhash")
    (penalty_txid,) = world.node.call("getrawmempool")
    await world.mine(pair)
    assert world.node.call("gettxout", penalty_txid, 0) is not None

    world.node.call("invalidateblock", breach_block)
    with world.node.lock:
        world.node.mempool.clear()
    miner = await world.rpc.getnewaddress()
    for _ in range(3):
        await world.rpc.call("generateblock", miner, [])
    await world.tower.sync()
    assert world.node.call("getrawmempool") == []  # resent, refused: the breach is gone
    assert world.tower.broadcaster is not None
    assert [p.txid for p in world.tower.broadcaster.pending()] == [penalty_txid]

    await pair.broadcast(revoked_tx)
    await world.mine(pair)
    assert world.node.call("getrawmempool") == [penalty_txid]
    await world.mine(pair)
    assert world.node.call("getrawmempool") == []
    assert world.node.call("gettxout", penalty_txid, 0)["confirmations"] == 1


async def test_the_second_stage_txids_are_the_cheaters_real_ones(world: World) -> None:
    """The kit's second-stage txids, computed by the client alone, are those of the
    HTLC-timeout and HTLC-success transactions the cheater can sign from its backup."""
    pair = TwoPartyChannel(world.rpc, label="tower txids", to_self_delay=TO_SELF_DELAY)
    cheater, revoked_tx, b_preimage = await breach_with_htlcs(pair)
    watch = next(w for w in revoked_watches(pair.b) if w.txid == revoked_tx.txid())
    appointment = appointment_for_watch(pair.b.channel, watch,
                                        destination_script_pubkey=pair.b.wallet_script,
                                        penalty_feerate_per_kw=PENALTY_FEERATE)
    opened = open_sealed(revoked_tx.txid(), appointment.nonce, appointment.encrypted_blob)
    assert opened is not None
    kit = tower_pb2.JusticeKit.FromString(opened)
    commitment = cheater.build_local(cheater.d.local_ctn)
    real = set()
    for position, (index, htlc) in enumerate(commitment.htlc_outputs):
        signature = cheater.d.local_htlc_signatures[position]
        preimage = b_preimage if htlc.offered_by is Side.REMOTE else None  # success/timeout
        real.add(finalize_holder_htlc_tx(cheater.static, cheater.secrets, commitment, index,
                                         signature, preimage).txid())
    assert {bytes(s.htlc_txid) for s in kit.second_stage_penalties} == real
    assert len(real) == 2
    assert len(kit.penalty_txs) == 1 and len(kit.output_penalty_txs) == 3


async def test_a_restarted_tower_keeps_its_breaches_and_pending_penalties(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    """The tower found the breach and sent its penalty, then restarts; the node has
    meanwhile forgotten the penalty. The restarted tower still knows the breach (its
    kit reopened from the store) and sends the penalty again at the next block."""
    settings = TowerSettings(tmp_path / "tower", listen_port=0)
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc, open_grpc_bridge() as bridge:
        pair = TwoPartyChannel(rpc, label="tower restart breach", to_self_delay=TO_SELF_DELAY)
        _, revoked_tx, _ = await breach_with_htlcs(pair)
        async with trio.open_nursery() as nursery:
            tower = TowerService(settings, rpc, bridge, run_follower=False)
            await nursery.start(tower.run)
            await deliver(World(rpc, regtest_node, bridge, tower, tmp_path), pair,
                          new_node_secret())
            await pair.broadcast(revoked_tx)
            await pair.mine(1)
            await tower.sync()
            (penalty_txid,) = regtest_node.call("getrawmempool")
            nursery.cancel_scope.cancel()

        with regtest_node.lock:
            regtest_node.mempool.clear()
        async with trio.open_nursery() as nursery:
            again = TowerService(settings, rpc, bridge, run_follower=False)
            await nursery.start(again.run)
            assert again.watcher is not None
            assert [b.txid for b in again.watcher.breaches.values()] == [revoked_tx.txid()]
            assert regtest_node.call("getrawmempool") == []
            await pair.mine(1)
            await again.sync()
            assert regtest_node.call("getrawmempool") == [penalty_txid]
            await pair.mine(1)
            await again.sync()
            assert regtest_node.call("gettxout", penalty_txid, 0)["confirmations"] == 1
            nursery.cancel_scope.cancel()
