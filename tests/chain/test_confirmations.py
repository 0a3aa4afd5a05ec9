"""The confirmation tracker on the real node: depth reached, spends seen, both
reversed when a reorg takes their block away, and its state round-tripped."""

from __future__ import annotations

import json

import pytest

from channel.chain import BitcoinRpc
from channel.chain.confirmations import (
    ConfirmationTracker,
    OutpointSpent,
    OutpointUnspent,
    TxConfirmed,
    TxMismatch,
    TxUnconfirmed,
)
from channel.chain.follower import ChainFollower, RpcChainSource, checkpoint_at
from channel.tx import Tx, TxOut


async def test_depth_and_spend_are_reported_then_reversed_by_a_reorg(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await checkpoint_at(source, await rpc.getblockcount())
    seen: list[object] = []
    tracker = ConfirmationTracker(start.height, on_event=seen.append)
    follower = ChainFollower(source, start, listeners=[tracker])

    txid = await rpc.sendtoaddress(await rpc.getnewaddress(), 70_000)
    tx = Tx.parse(await rpc.getrawtransaction(txid))
    spent = tx.inputs[0].outpoint
    tracker.watch_tx(txid, min_depth=3)
    tracker.watch_outpoint(spent)

    miner = await rpc.getnewaddress()
    (first,) = await rpc.generatetoaddress(1, miner)
    await follower.sync_once()
    assert tracker.depth(txid) == 1
    (spend_event,) = tracker.drain_events()
    assert isinstance(spend_event, OutpointSpent)
    assert spend_event.outpoint == spent and spend_event.height == start.height + 1
    assert spend_event.spending_tx.txid_hex() == txid
    assert tracker.spender(spent) is not None

    await rpc.generatetoaddress(2, miner)
    await follower.sync_once()
    assert tracker.drain_events() == [TxConfirmed(txid, start.height + 1, first, 3)]
    assert tracker.depth(txid) == 3

    # The block holding the tx is replaced by a longer branch without it.
    await rpc.invalidateblock(first)
    await rpc.call("generateblock", miner, [])
    await rpc.call("generateblock", miner, [])
    await rpc.call("generateblock", miner, [])
    await rpc.call("generateblock", miner, [])
    await follower.sync_once()
    events = tracker.drain_events()
    assert TxUnconfirmed(txid, start.height + 1, first) in events
    assert OutpointUnspent(spent, txid, start.height + 1, first) in events
    assert tracker.depth(txid) == 0 and tracker.spender(spent) is None
    assert txid in await rpc.getrawmempool()  # the node took it back

    # Mined again on the new branch: told again, from the new block.
    (again,) = await rpc.generatetoaddress(1, miner)
    await rpc.generatetoaddress(2, miner)
    await follower.sync_once()
    events = tracker.drain_events()
    assert isinstance(events[0], OutpointSpent) and events[0].block_hash == again
    assert events[1] == TxConfirmed(txid, start.height + 5, again, 3)
    assert seen == [spend_event, *seen[1:]]  # the callback saw the same stream


async def test_a_shorter_chain_above_the_tx_does_not_unconfirm_it(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await checkpoint_at(source, await rpc.getblockcount())
    tracker = ConfirmationTracker(start.height)
    follower = ChainFollower(source, start, listeners=[tracker])
    txid = await rpc.sendtoaddress(await rpc.getnewaddress(), 70_000)
    tracker.watch_tx(txid, min_depth=2)
    hashes = await rpc.generatetoaddress(3, await rpc.getnewaddress())
    await follower.sync_once()
    assert [type(e) for e in tracker.drain_events()] == [TxConfirmed]
    await rpc.invalidateblock(hashes[1])
    await follower.sync_once()
    assert tracker.drain_events() == []
    assert tracker.depth(txid) == 1


async def test_state_round_trips_through_json(rpc: BitcoinRpc, source: RpcChainSource) -> None:
    start = await checkpoint_at(source, await rpc.getblockcount())
    tracker = ConfirmationTracker(start.height)
    follower = ChainFollower(source, start, listeners=[tracker])
    txid = await rpc.sendtoaddress(await rpc.getnewaddress(), 70_000)
    tx = Tx.parse(await rpc.getrawtransaction(txid))
    tracker.watch_tx(txid, min_depth=2)
    tracker.watch_outpoint(tx.inputs[0].outpoint)
    (block,) = await rpc.generatetoaddress(1, await rpc.getnewaddress())
    await follower.sync_once()
    tracker.drain_events()

    restored = ConfirmationTracker.from_json(json.loads(json.dumps(tracker.to_json())))
    assert restored.to_json() == tracker.to_json()
    resumed = ChainFollower(source, follower.tip, listeners=[restored])
    await rpc.invalidateblock(block)
    await rpc.generatetoaddress(2, await rpc.getnewaddress())  # mines it again
    await resumed.sync_once()
    kinds = [type(e).__name__ for e in restored.drain_events()]
    assert kinds == ["OutpointUnspent", "OutpointSpent", "TxConfirmed"]


async def test_an_expected_output_that_is_not_there_is_a_mismatch(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await checkpoint_at(source, await rpc.getblockcount())
    tracker = ConfirmationTracker(start.height)
    follower = ChainFollower(source, start, listeners=[tracker])
    honest = Tx.parse(
        await rpc.getrawtransaction(await rpc.sendtoaddress(await rpc.getnewaddress(), 90_000))
    )
    lying = Tx.parse(
        await rpc.getrawtransaction(await rpc.sendtoaddress(await rpc.getnewaddress(), 90_000))
    )
    index = next(i for i, o in enumerate(honest.outputs) if o.amount_sat == 90_000)
    tracker.watch_tx(honest.txid_hex(), 1, expect_output=(index, honest.outputs[index]))
    lie_index = next(i for i, o in enumerate(lying.outputs) if o.amount_sat == 90_000)
    claimed = TxOut(100_000, lying.outputs[lie_index].script_pubkey)  # more than it pays
    tracker.watch_tx(lying.txid_hex(), 1, expect_output=(lie_index, claimed))
    tracker.watch_tx("ab" * 32, 1, expect_output=(0, claimed))
    (block,) = await rpc.generatetoaddress(1, await rpc.getnewaddress())
    await follower.sync_once()
    events = tracker.drain_events()
    assert TxConfirmed(honest.txid_hex(), start.height + 1, block, 1) in events
    assert (
        TxMismatch(
            lying.txid_hex(),
            start.height + 1,
            block,
            f"output {lie_index} pays 90000 sat, not 100000",
        )
        in events
    )
    assert len(events) == 2 and tracker.depth(lying.txid_hex()) == 0
    restored = ConfirmationTracker.from_json(json.loads(json.dumps(tracker.to_json())))
    assert restored.to_json() == tracker.to_json()
    for bad in ("AB" * 32, "ab" * 31, "zz" * 32):
        with pytest.raises(ValueError):
            tracker.watch_tx(bad, 1)


async def test_an_expected_output_index_past_the_end_is_a_mismatch(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await checkpoint_at(source, await rpc.getblockcount())
    tracker = ConfirmationTracker(start.height)
    follower = ChainFollower(source, start, listeners=[tracker])
    txid = await rpc.sendtoaddress(await rpc.getnewaddress(), 90_000)
    tx = Tx.parse(await rpc.getrawtransaction(txid))
    tracker.watch_tx(txid, 1, expect_output=(len(tx.outputs), tx.outputs[0]))
    await rpc.generatetoaddress(1, await rpc.getnewaddress())
    await follower.sync_once()
    (event,) = tracker.drain_events()
    assert isinstance(event, TxMismatch) and event.reason == f"no output {len(tx.outputs)}"
    state = tracker.to_json()
    state["txs"] = {"AB" * 32: state["txs"][txid]}
    with pytest.raises(ValueError):
        ConfirmationTracker.from_json(state)
