"""A listener that raises (a store error, say) does not stop the follower: the failure
is logged at ERROR, the same block is delivered again on the next poll to the
listener that raised and to those after it, never again to one that already took
it, and the follower goes on. Against the embedded regtest node; the trio service
under an autojumping MockClock."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from channel.chain import BitcoinRpc
from channel.chain.follower import ChainFollower, ListenerError, RpcChainSource
from channel.chain.interfaces import BlockRef
from channel.tx import Tx
from tests.chain.conftest import RecordingListener


class StoreError(Exception):
    """What a listener's own store might raise."""


class FlakyListener(RecordingListener):
    """Raises on its next ``failures`` calls (of the kinds in ``on``), then works;
    ``calls`` records only what it took."""

    def __init__(self, failures: int, on: tuple[str, ...] = ("connect",)) -> None:
        super().__init__()
        self.failures = failures
        self.on = on
        self.attempts: list[tuple[str, int, str]] = []

    def _maybe_fail(self, call: tuple[str, int, str]) -> None:
        self.attempts.append(call)
        if call[0] in self.on and self.failures > 0:
            self.failures -= 1
            raise StoreError(f"database is locked ({call[0]} {call[1]})")

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        self._maybe_fail(("connect", height, block_hash))
        super().block_connected(height, block_hash, txs)

    def block_disconnected(self, height: int, block_hash: str) -> None:
        self._maybe_fail(("disconnect", height, block_hash))
        super().block_disconnected(height, block_hash)


class FlakyTipListener:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.taken: list[BlockRef] = []
        self.attempts = 0

    async def best_block_updated(self, tip: BlockRef) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("could not persist the chain state")
        self.taken.append(tip)


class TipRecorder:
    def __init__(self) -> None:
        self.taken: list[BlockRef] = []

    async def best_block_updated(self, tip: BlockRef) -> None:
        self.taken.append(tip)


async def _tip(rpc: BitcoinRpc) -> BlockRef:
    return BlockRef(await rpc.getblockcount(), await rpc.getbestblockhash())


async def test_a_listener_failing_twice_gets_the_same_block_and_the_follower_goes_on(
    rpc: BitcoinRpc, source: RpcChainSource, autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = await _tip(rpc)
    before, after = RecordingListener(), RecordingListener()
    flaky = FlakyListener(failures=2)
    tips = TipRecorder()
    follower = ChainFollower(source, start, listeners=[before, flaky, after],
                             tip_listeners=[tips], poll_interval_s=10.0)
    miner = await rpc.getnewaddress()
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.run)
        with caplog.at_level(logging.ERROR, logger="channel.chain.follower"):
            hashes = await rpc.generatetoaddress(2, miner)
            assert (await follower.wait_for_height(start.height + 2)).hash == hashes[1]
        more = await rpc.generatetoaddress(1, miner)  # and it keeps following
        await follower.wait_for_height(start.height + 3)
        nursery.cancel_scope.cancel()

    blocks = [*hashes, *more]
    expected = [("connect", start.height + 1 + i, h) for i, h in enumerate(blocks)]
    # Every listener took every block once, in order: none skipped, none twice.
    assert before.calls == flaky.calls == after.calls == expected
    # The flaky one was offered the first block three times (failed twice).
    assert flaky.attempts == [expected[0]] * 3 + expected[1:]
    assert follower.listener_failures == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "FlakyListener failed in block_connected" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is StoreError
    assert tips.taken[-1] == BlockRef(start.height + 3, more[0])
    assert follower.tip == BlockRef(start.height + 3, more[0])


async def test_a_failing_tip_listener_is_retried_with_the_tip_alone(
    rpc: BitcoinRpc, source: RpcChainSource, autojump_clock: trio.testing.MockClock,
) -> None:
    """The owner's persist (the last tip listener) fails twice: it is awaited again
    with the same tip; the tip listener before it is not, and no block is fed again;
    wait_for_height returns only once the persist has run."""
    start = await _tip(rpc)
    blocks = RecordingListener()
    first, persist = TipRecorder(), FlakyTipListener(failures=2)
    follower = ChainFollower(source, start, listeners=[blocks],
                             tip_listeners=[first, persist], poll_interval_s=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.run)
        hashes = await rpc.generatetoaddress(1, await rpc.getnewaddress())
        reached = await follower.wait_for_height(start.height + 1)
        nursery.cancel_scope.cancel()
    tip = BlockRef(start.height + 1, hashes[0])
    assert reached == tip
    assert persist.attempts == 3 and persist.taken == [tip]
    assert first.taken == [tip]
    assert blocks.calls == [("connect", start.height + 1, hashes[0])]


async def test_sync_once_raises_the_listener_error_and_the_next_one_resumes(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    start = await _tip(rpc)
    before, flaky = RecordingListener(), FlakyListener(failures=1)
    follower = ChainFollower(source, start, listeners=[before, flaky])
    hashes = await rpc.generatetoaddress(3, await rpc.getnewaddress())
    with pytest.raises(ListenerError) as exc:
        await follower.sync_once()
    assert exc.value.listener is flaky and isinstance(exc.value.__cause__, StoreError)
    assert follower.tip == start and len(before.calls) == 1
    result = await follower.sync_once()
    assert result.connected == 3 and follower.tip == BlockRef(start.height + 3, hashes[2])
    assert before.calls == flaky.calls == [
        ("connect", start.height + 1 + i, h) for i, h in enumerate(hashes)]


async def test_a_reorg_after_a_failure_gives_each_listener_one_consistent_story(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    """The first listener took block B, the second failed on it; then B is reorged
    out. The first gets B's disconnect, the second never sees B; both get B'."""
    start = await _tip(rpc)
    before, flaky = RecordingListener(), FlakyListener(failures=1)
    follower = ChainFollower(source, start, listeners=[before, flaky])
    old = await rpc.generatetoaddress(1, await rpc.getnewaddress())
    with pytest.raises(ListenerError):
        await follower.sync_once()
    await rpc.invalidateblock(old[0])
    new = await rpc.generatetoaddress(1, await rpc.getnewaddress())
    await follower.sync_once()
    h = start.height + 1
    assert before.calls == [("connect", h, old[0]), ("disconnect", h, old[0]),
                            ("connect", h, new[0])]
    assert flaky.calls == [("connect", h, new[0])]
    assert follower.tip == BlockRef(h, new[0])


async def test_a_failed_disconnect_is_retried_and_undone_if_the_block_comes_back(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    """A disconnect the first listener took and the second failed: retried while the
    block is stale; if the node makes it best again, the first gets it back."""
    start = await _tip(rpc)
    before, flaky = RecordingListener(), FlakyListener(failures=2, on=("disconnect",))
    follower = ChainFollower(source, start, listeners=[before, flaky])
    block = (await rpc.generatetoaddress(1, await rpc.getnewaddress()))[0]
    await follower.sync_once()
    h = start.height + 1
    await rpc.invalidateblock(block)
    with pytest.raises(ListenerError):
        await follower.sync_once()
    with pytest.raises(ListenerError):
        await follower.sync_once()  # retried: the same disconnect, for flaky alone
    assert before.calls == [("connect", h, block), ("disconnect", h, block)]
    assert flaky.attempts == [("connect", h, block)] + [("disconnect", h, block)] * 2
    await rpc.call("reconsiderblock", block)  # the block is best again
    result = await follower.sync_once()
    assert before.calls == [("connect", h, block), ("disconnect", h, block),
                            ("connect", h, block)]
    assert flaky.calls == [("connect", h, block)]
    assert follower.tip == BlockRef(h, block) and not result.moved
