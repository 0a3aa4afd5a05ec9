"""The chain follower against the embedded regtest node: new blocks, reorgs made
with invalidateblock and a competing chain, a reorg while the follower was down,
and the trio service under an autojumping MockClock."""

from __future__ import annotations

import pytest
import trio

from channel.chain import BitcoinRpc
from channel.chain.block import Block, BlockParseError
from channel.chain.follower import (
    ChainFollower,
    ChainMismatch,
    RpcChainSource,
    checkpoint_at,
)
from channel.chain.interfaces import BlockRef
from tests.chain.conftest import RecordingListener


async def _tip(source: RpcChainSource) -> BlockRef:
    best = await source.best_block_hash()
    height = await source.rpc.getblockcount()
    return BlockRef(height, best)


async def test_follows_new_blocks_with_their_transactions(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await _tip(source)
    listener = RecordingListener()
    follower = ChainFollower(source, start, listeners=[listener])
    assert not (await follower.sync_once()).moved

    address = await rpc.getnewaddress()
    txid = await rpc.sendtoaddress(address, 50_000)
    hashes = await rpc.generatetoaddress(3, address)
    result = await follower.sync_once()
    assert (result.connected, result.disconnected) == (3, 0)
    assert listener.calls == [
        ("connect", start.height + i + 1, block_hash) for i, block_hash in enumerate(hashes)
    ]
    assert txid in listener.txids[hashes[0]]
    assert follower.tip == BlockRef(start.height + 3, hashes[-1])


async def test_reorg_disconnects_tip_first_then_connects_the_new_branch(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await _tip(source)
    listener = RecordingListener()
    follower = ChainFollower(source, start, listeners=[listener])
    miner = await rpc.getnewaddress()
    old_branch = await rpc.generatetoaddress(3, miner)
    await follower.sync_once()
    listener.calls.clear()

    # Replace the last two blocks with a longer competing branch of three.
    await rpc.invalidateblock(old_branch[1])
    new_branch = await rpc.generatetoaddress(3, await rpc.getnewaddress())
    result = await follower.sync_once()
    assert (result.disconnected, result.connected) == (2, 3)
    h = start.height
    assert listener.calls == [
        ("disconnect", h + 3, old_branch[2]),
        ("disconnect", h + 2, old_branch[1]),
        ("connect", h + 2, new_branch[0]),
        ("connect", h + 3, new_branch[1]),
        ("connect", h + 4, new_branch[2]),
    ]
    assert follower.tip == BlockRef(h + 4, new_branch[2])


async def test_shorter_chain_after_invalidate_is_followed_down(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await _tip(source)
    listener = RecordingListener()
    follower = ChainFollower(source, start, listeners=[listener])
    hashes = await rpc.generatetoaddress(2, await rpc.getnewaddress())
    await follower.sync_once()
    await rpc.invalidateblock(hashes[0])
    result = await follower.sync_once()
    assert (result.disconnected, result.connected) == (2, 0)
    assert follower.tip == start


async def test_reorg_while_down_is_found_from_the_checkpoint(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await _tip(source)
    first = ChainFollower(source, start)
    old_branch = await rpc.generatetoaddress(2, await rpc.getnewaddress())
    await first.sync_once()
    checkpoint = first.tip  # what the listeners persisted before "going down"

    await rpc.invalidateblock(old_branch[0])
    new_branch = await rpc.generatetoaddress(3, await rpc.getnewaddress())

    listener = RecordingListener()
    # A fresh follower knows no parents: walking back reads the stale headers.
    restarted = ChainFollower(RpcChainSource(rpc), checkpoint, listeners=[listener])
    await restarted.sync_once()
    h = start.height
    assert listener.calls == [
        ("disconnect", h + 2, old_branch[1]),
        ("disconnect", h + 1, old_branch[0]),
        ("connect", h + 1, new_branch[0]),
        ("connect", h + 2, new_branch[1]),
        ("connect", h + 3, new_branch[2]),
    ]


async def test_resumes_from_a_checkpoint_below_the_tip(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    tip = await _tip(source)
    listener = RecordingListener()
    follower = ChainFollower(
        source, await checkpoint_at(source, tip.height - 5), listeners=[listener]
    )
    await follower.sync_once()
    assert [c[1] for c in listener.calls] == list(range(tip.height - 4, tip.height + 1))
    assert all(c[0] == "connect" for c in listener.calls)
    assert follower.tip == tip


async def test_checkpoint_of_another_chain_is_a_mismatch(source: RpcChainSource) -> None:
    follower = ChainFollower(source, BlockRef(5, "11" * 32))
    with pytest.raises(ChainMismatch):
        await follower.sync_once()


async def test_run_reports_started_when_caught_up_and_follows_by_polling(
    rpc: BitcoinRpc, source: RpcChainSource, autojump_clock: trio.testing.MockClock
) -> None:
    tip = await _tip(source)
    listener = RecordingListener()
    follower = ChainFollower(
        source,
        await checkpoint_at(source, tip.height - 2),
        listeners=[listener],
        poll_interval_s=30.0,
    )
    async with trio.open_nursery() as nursery:
        started_at = await nursery.start(follower.run)
        assert started_at == tip and len(listener.calls) == 2
        before = trio.current_time()
        hashes = await rpc.generatetoaddress(2, await rpc.getnewaddress())
        reached = await follower.wait_for_height(tip.height + 2)
        assert reached == BlockRef(tip.height + 2, hashes[-1])
        # Only virtual time passed, in whole poll intervals (the clock also jumps
        # while this test's own RPC calls wait on the socket, so how many varies).
        elapsed = trio.current_time() - before
        assert elapsed >= 30.0 and elapsed % 30.0 == 0
        nursery.cancel_scope.cancel()


async def test_blocks_are_verified_before_they_are_believed(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    block_hash = await rpc.getbestblockhash()
    raw = await rpc.getrawblock(block_hash)
    block = Block.parse(raw, expected_hash=block_hash)
    assert block.hash == block_hash
    with pytest.raises(BlockParseError):
        Block.parse(raw, expected_hash="00" * 32)
    tampered = bytearray(raw)
    tampered[-1] ^= 1  # the last locktime: that txid, so the merkle root, changes
    with pytest.raises(BlockParseError):
        Block.parse(bytes(tampered))
    with pytest.raises(BlockParseError):
        Block.parse(raw + b"\x00")
    with pytest.raises(BlockParseError):
        Block.parse(raw[:-1])


async def test_blocks_from_stops_at_the_tip(rpc: BitcoinRpc, source: RpcChainSource) -> None:
    height = await rpc.getblockcount()
    blocks = await source.blocks_from(height - 2, 8)
    assert [b.hash for b in blocks] == [
        await rpc.getblockhash(h) for h in range(height - 2, height + 1)
    ]
    assert await source.blocks_from(height + 1, 8) == []
    follower = ChainFollower(source, await checkpoint_at(source, 0), batch_blocks=7)
    result = await follower.sync_once()
    assert result.connected == height and follower.tip == await _tip(source)


async def test_listeners_can_be_removed_and_counters_count(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await _tip(source)
    kept, removed = RecordingListener(), RecordingListener()
    follower = ChainFollower(source, start, listeners=[kept, removed])
    follower.remove_listener(removed)
    hashes = await rpc.generatetoaddress(2, await rpc.getnewaddress())
    await follower.sync_once()
    await rpc.invalidateblock(hashes[0])
    await follower.sync_once()
    assert len(kept.calls) == 4 and removed.calls == []
    assert (follower.blocks_connected, follower.blocks_disconnected) == (2, 2)
    with pytest.raises(ValueError):
        ChainFollower(source, start, poll_interval_s=0)
    with pytest.raises(ValueError):
        ChainFollower(source, start, batch_blocks=0)
