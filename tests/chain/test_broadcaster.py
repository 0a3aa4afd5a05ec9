"""The broadcaster on the real node: kept until confirmed to a depth, sent again
after a reorg that evicted it, "already known" as success, "missing inputs" kept
for later, refusals reported with bitcoind's code and reason."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from channel.chain import BitcoinRpc
from channel.chain.broadcaster import BroadcastRefused, RpcBroadcaster
from channel.chain.follower import ChainFollower, RpcChainSource, checkpoint_at
from channel.tx import OutPoint, Tx, TxIn, TxOut


async def _wallet_tx(rpc: BitcoinRpc, amount_sat: int = 80_000) -> Tx:
    txid = await rpc.sendtoaddress(await rpc.getnewaddress(), amount_sat)
    return Tx.parse(await rpc.getrawtransaction(txid))


async def test_rebroadcasts_a_tx_a_reorg_evicted_until_deep_enough(
    rpc: BitcoinRpc, source: RpcChainSource, regtest_node: Any
) -> None:
    start = await checkpoint_at(source, await rpc.getblockcount())
    broadcaster = RpcBroadcaster(rpc, tip_height=start.height, confirm_depth=3)
    follower = ChainFollower(source, start, listeners=[broadcaster], tip_listeners=[broadcaster])
    tx = await _wallet_tx(rpc)
    txid = await broadcaster.broadcast(tx, label="test")  # already in mempool: success
    assert txid == tx.txid_hex() and [p.txid for p in broadcaster.pending()] == [txid]

    miner = await rpc.getnewaddress()
    (block,) = await rpc.generatetoaddress(1, miner)
    await follower.sync_once()
    assert broadcaster.pending()[0].confirmed_height == start.height + 1

    # Reorg the block away, and have the node forget the tx (as a restarted node
    # without its mempool would): only our rebroadcast can bring it back.
    await rpc.invalidateblock(block)
    with regtest_node.lock:
        regtest_node.mempool.remove(bytes.fromhex(txid))
    assert txid not in await rpc.getrawmempool()
    await rpc.call("generateblock", miner, [])
    await rpc.call("generateblock", miner, [])
    await follower.sync_once()
    assert broadcaster.pending()[0].confirmed_height is None
    assert txid in await rpc.getrawmempool()
    assert broadcaster.rebroadcasts == 1

    await rpc.generatetoaddress(2, miner)
    await follower.sync_once()
    assert broadcaster.pending()[0].confirmed_height == start.height + 3
    await rpc.generatetoaddress(1, miner)
    await follower.sync_once()
    assert broadcaster.pending() == []  # 3 deep: forgotten
    # Broadcasting a confirmed tx again is success too (-27).
    assert await broadcaster.broadcast(tx) == txid
    # A chain that only gets shorter: the broadcaster's height follows it down
    # (it is saved with the follower's tip and must agree with it).
    await rpc.invalidateblock(await rpc.getbestblockhash())
    await follower.sync_once()
    assert broadcaster.tip_height == follower.tip.height == start.height + 4


async def test_missing_inputs_stay_pending_and_refusals_are_typed(rpc: BitcoinRpc) -> None:
    broadcaster = RpcBroadcaster(rpc, tip_height=await rpc.getblockcount())
    orphan = Tx(
        2,
        [TxIn(OutPoint(b"\x42" * 32, 0), 0xFFFFFFFF)],
        [TxOut(10_000, b"\x00\x14" + bytes(20))],
        0,
    )
    txid = await broadcaster.broadcast(orphan, label="child")
    (entry,) = broadcaster.pending()
    assert entry.txid == txid and entry.last_error is not None
    assert "missingorspent" in entry.last_error and "-25" in entry.last_error

    tx = await _wallet_tx(rpc)
    conflicting = tx.copy()
    conflicting.outputs = [TxOut(o.amount_sat - 1, o.script_pubkey) for o in tx.outputs]
    with pytest.raises(BroadcastRefused) as refused:
        await broadcaster.broadcast(conflicting)
    assert refused.value.code == -26
    assert refused.value.txid == conflicting.txid_hex()
    assert [p.txid for p in broadcaster.pending()] == [txid]  # the refused one is not kept


async def test_pending_set_round_trips_through_json(rpc: BitcoinRpc) -> None:
    broadcaster = RpcBroadcaster(rpc, tip_height=await rpc.getblockcount())
    tx = await _wallet_tx(rpc)
    await broadcaster.broadcast(tx, label="funding")
    data = json.loads(json.dumps(broadcaster.to_json()))
    restored = RpcBroadcaster.from_json(rpc, data)
    assert restored.to_json() == broadcaster.to_json()
    data["pending"][0]["txid"] = "00" * 32
    with pytest.raises(ValueError):
        RpcBroadcaster.from_json(rpc, data)


async def test_driver_adapter_never_drops_a_must_confirm_tx(
    rpc: BitcoinRpc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="channel.chain.broadcaster")  # a conflict: INFO
    broadcaster = RpcBroadcaster(rpc, tip_height=await rpc.getblockcount())
    for_driver = broadcaster.for_driver()
    # protocol.driver's interface, checked statically by mypy here.
    from protocol.driver.driver import Broadcaster as DriverBroadcaster

    typed: DriverBroadcaster = for_driver
    tx = await _wallet_tx(rpc)
    conflicting = tx.copy()
    conflicting.outputs = [TxOut(o.amount_sat - 1, o.script_pubkey) for o in tx.outputs]
    await typed.broadcast(conflicting.serialize(), conflicting.txid(), "force close")
    (entry,) = broadcaster.pending()
    assert entry.txid == conflicting.txid_hex() and entry.label == "force close"
    assert entry.last_error is not None and "-26" in entry.last_error
    assert "force close" in caplog.text and "retrying every block" in caplog.text
    await typed.broadcast(tx.serialize(), tx.txid(), "cooperative close")
    assert {p.txid for p in broadcaster.pending()} == {tx.txid_hex(), conflicting.txid_hex()}
    with pytest.raises(ValueError):
        await typed.broadcast(tx.serialize(), conflicting.txid(), "mislabelled")
