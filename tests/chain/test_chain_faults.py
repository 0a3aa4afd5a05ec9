"""Faults injected into the real node while the follower works: a reorg in the
middle of a sync step, a node that stops answering for a while, and a seeded
random run of payments, sends, blocks and reorgs after which the wallet fed block
by block holds exactly the coins a rescan of the final chain finds."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import trio

from channel.chain import (
    BitcoinRpc,
    Block,
    BlockHeader,
    ChainFollower,
    ChainUnavailable,
    ConfirmationTracker,
    InsufficientFunds,
    OnchainWallet,
    RpcBroadcaster,
    RpcChainSource,
    RpcError,
    checkpoint_at,
)
from channel.tx import Tx
from tests.chain.conftest import RecordingListener


class ChainReplayer:
    """A listener that rebuilds the chain from the calls and checks each one."""

    def __init__(self, height: int, block_hash: str) -> None:
        self.chain = {height: block_hash}
        self.tip = height

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        assert height == self.tip + 1
        self.tip = height
        self.chain[height] = block_hash

    def block_disconnected(self, height: int, block_hash: str) -> None:
        assert height == self.tip and self.chain[height] == block_hash
        del self.chain[height]
        self.tip = height - 1


async def _node_chain(rpc: BitcoinRpc, from_height: int) -> dict[int, str]:
    top = await rpc.getblockcount()
    return {h: await rpc.getblockhash(h) for h in range(from_height, top + 1)}


class ReorgMidSync:
    """The real source, but the node reorganises once, right after the follower
    has read a batch holding one of the `trigger` blocks (which it then connects:
    the next batch no longer links, and it must walk back)."""

    def __init__(self, inner: RpcChainSource, trigger_height_hash: list[str]) -> None:
        self.inner = inner
        self.trigger = trigger_height_hash
        self.fired = False

    async def best_block_hash(self) -> str:
        return await self.inner.best_block_hash()

    async def block_hash(self, height: int) -> str | None:
        return await self.inner.block_hash(height)

    async def block_header(self, block_hash: str) -> BlockHeader:
        return await self.inner.block_header(block_hash)

    async def blocks_from(self, height: int, max_count: int) -> list[Block]:
        blocks = await self.inner.blocks_from(height, max_count)
        if not self.fired and any(b.hash in self.trigger for b in blocks):
            self.fired = True
            rpc = self.inner.rpc
            await rpc.invalidateblock(self.trigger[0])
            for _ in range(len(self.trigger) + 1):
                await rpc.call("generateblock", await rpc.getnewaddress(), [])
        return blocks


async def test_a_reorg_during_the_walk_forward_ends_consistent(rpc: BitcoinRpc) -> None:
    start = await checkpoint_at(RpcChainSource(rpc), await rpc.getblockcount())
    branch = await rpc.generatetoaddress(4, await rpc.getnewaddress())
    source = ReorgMidSync(RpcChainSource(rpc), branch[1:])  # fires after reading branch[1]
    replayer = ChainReplayer(start.height, start.hash)
    recorder = RecordingListener()
    follower = ChainFollower(source, start, listeners=[replayer, recorder], batch_blocks=2)
    await follower.sync_once()
    assert source.fired
    assert replayer.chain == await _node_chain(rpc, start.height)
    kinds = [c[0] for c in recorder.calls]
    assert "disconnect" in kinds  # it saw the stale block it had connected, and undid it


class FlakySource:
    """The real source, failing (as an unreachable node does) while `down`."""

    def __init__(self, inner: RpcChainSource) -> None:
        self.inner = inner
        self.down = False
        self.failures = 0

    def _check(self) -> None:
        if self.down:
            self.failures += 1
            raise ChainUnavailable("node restarting")

    async def best_block_hash(self) -> str:
        self._check()
        return await self.inner.best_block_hash()

    async def block_hash(self, height: int) -> str | None:
        self._check()
        return await self.inner.block_hash(height)

    async def block_header(self, block_hash: str) -> BlockHeader:
        self._check()
        return await self.inner.block_header(block_hash)

    async def blocks_from(self, height: int, max_count: int) -> list[Block]:
        self._check()
        return await self.inner.blocks_from(height, max_count)


async def test_run_survives_a_node_that_is_down_for_a_while(
    rpc: BitcoinRpc, autojump_clock: trio.testing.MockClock
) -> None:
    source = FlakySource(RpcChainSource(rpc))
    start = await checkpoint_at(source.inner, await rpc.getblockcount())
    replayer = ChainReplayer(start.height, start.hash)
    follower = ChainFollower(source, start, listeners=[replayer], poll_interval_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.run)
        source.down = True
        await trio.sleep(60)  # virtual: a dozen failed polls
        assert source.failures >= 10
        hashes = await rpc.generatetoaddress(3, await rpc.getnewaddress())
        source.down = False
        reached = await follower.wait_for_height(start.height + 3)
        assert reached.hash == hashes[-1]
        nursery.cancel_scope.cancel()
    assert replayer.chain == await _node_chain(rpc, start.height)


async def test_random_payments_and_reorgs_leave_the_wallet_equal_to_a_rescan(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    rng = random.Random(20261202)
    seed = bytes(range(100, 132))
    birth = await checkpoint_at(source, await rpc.getblockcount())
    broadcaster = RpcBroadcaster(rpc, tip_height=birth.height)
    wallet = OnchainWallet(seed, birth, broadcaster=broadcaster)
    replayer = ChainReplayer(birth.height, birth.hash)
    tracker = ConfirmationTracker(birth.height)
    recorder = RecordingListener()
    follower = ChainFollower(
        source,
        birth,
        listeners=[wallet, broadcaster, tracker, replayer, recorder],
        tip_listeners=[broadcaster],
    )
    sent: list[str] = []
    reorgs = 0
    for _ in range(60):
        op = rng.choice(["pay", "pay", "send", "mine", "mine", "reorg", "sync"])
        if op == "pay":
            # (the faucet's own coins may be in flux after a reorg)
            with contextlib.suppress(RpcError):
                await rpc.sendtoaddress(wallet.new_address(), rng.randrange(50_000, 5_000_000))
        elif op == "send":
            await follower.sync_once()
            try:
                txid = await wallet.send(
                    await rpc.getnewaddress(), rng.randrange(10_000, 500_000), feerate_per_kw=500
                )
                tracker.watch_tx(txid, 1)
                sent.append(txid)
            except InsufficientFunds:
                pass
        elif op == "mine":
            await rpc.generatetoaddress(rng.randrange(1, 3), await rpc.getnewaddress())
        elif op == "reorg":
            height = await rpc.getblockcount()
            depth = rng.randrange(1, 4)
            if height - depth > birth.height:
                await rpc.invalidateblock(await rpc.getblockhash(height - depth + 1))
                for _ in range(depth + rng.randrange(0, 2)):
                    # half the time the new branch takes the mempool back, half not
                    if rng.random() < 0.5:
                        await rpc.call("generateblock", await rpc.getnewaddress(), [])
                    else:
                        await rpc.generatetoaddress(1, await rpc.getnewaddress())
                reorgs += 1
        else:
            await follower.sync_once()
    await rpc.generatetoaddress(1, await rpc.getnewaddress())
    await follower.sync_once()
    assert reorgs >= 3 and len(sent) >= 2
    assert replayer.chain == await _node_chain(rpc, birth.height)
    in_chain = {t for h in replayer.chain.values() for t in recorder.txids.get(h, [])}
    for txid in sent:
        assert (tracker.depth(txid) > 0) == (txid in in_chain)

    fresh = OnchainWallet(seed, birth)
    await fresh.rescan(source)
    assert fresh.utxos() == wallet.utxos()
    assert fresh.tip == wallet.tip == follower.tip
    # Every coin the wallet holds is unspent on the node's chain, with its amount.
    for utxo in wallet.utxos():
        out = await rpc.gettxout(utxo.outpoint.txid_hex(), utxo.outpoint.index, False)
        assert out is not None and out.value_sat == utxo.amount_sat
