"""The chain follower: polls a node and feeds listeners every block, reorgs included.

Theory of operation
-------------------
The follower holds one position, its tip (`BlockRef`), which starts at a
checkpoint its owner persisted (the tip the listeners had when they last saved
their state). One sync step (`sync_once`) brings the tip to the node's best
block:

1. Ask the node for its best hash. Equal to our tip: nothing to do (one RPC, the
   common poll).
2. Walk back: while the node's hash at our tip height is not our tip hash (or
   the node is shorter than that), our tip is on a stale branch. Disconnect it:
   every listener's `block_disconnected(height, hash)`, tip first, then step to
   its parent (known from the blocks we connected, or from the stale header,
   which bitcoind keeps). This is also how a reorg that happened while we were
   down is found: the checkpoint itself is checked first.
3. Walk forward: fetch the blocks from tip height + 1 on, `batch_blocks` at a
   time (two JSON-RPC batches: their hashes, then the raw blocks, each verified
   by `Block.parse`), and for each whose parent is our tip, hand it to every
   listener's `block_connected(height, hash, txs)` and advance. If a parent is
   not our tip, the node reorganised while we read: go back to 2.

This is LDK's documented ordering (all disconnects, tip first, down to the fork
point, then the connects in ascending order), block by block, so a listener
never sees a gap. The genesis block is never disconnected; a checkpoint the node
cannot walk back from (another network) is a `ChainMismatch`.

After a step that moved the tip, every `TipListener` is awaited with the new tip
(the broadcaster rebroadcasts there; the owner persists listener state and the
tip there). `run()` is the trio service: one sync, `task_status.started(tip)`,
then a sync every `poll_interval_s`; a node that is down is retried on the next
poll, so a restart of bitcoind costs nothing but a gap in time.

A listener that raises (a store error, a bug) does not stop the follower, and
with it every other listener: the step ends with a `ListenerError`, logged at
ERROR with its traceback by `run()`, and the next poll retries from where it
failed. The follower keeps each listener's own position (the last block it
took), so the retry hands the failed block to the listener that raised and to
those after it, never again to one that already took it; a tip listener that
raised is awaited again with the tip (and only the ones not done with it). If
the chain moved meanwhile, a listener left one block ahead on a block that is no
longer the node's gets its disconnect first, and one left one block behind (a
disconnect it took before another failed) gets the block again if it is still
the node's, so every listener sees one consistent sequence.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from channel.chain.block import Block, BlockHeader, BlockParseError
from channel.chain.interfaces import BlockListener, BlockRef, ChainSource, TipListener
from channel.chain.rpc import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    BitcoinRpc,
    ChainError,
    RpcError,
)
from channel.tx import Tx

log = logging.getLogger(__name__)

#: How many recent (hash -> parent) links the follower keeps, so that walking
#: back over a reorg of up to this depth needs no header fetch. Deeper reorgs
#: still work; they fetch the stale headers from the node.
PARENT_CACHE_SIZE = 2016


class ChainMismatch(ChainError):
    """The checkpoint is not on the node's chain at all (walked back to genesis)."""


class ListenerError(ChainError):
    """A listener raised while the follower fed it; `listener` is the one, `what` the
    call (e.g. "block_connected 105 <hash>"), `__cause__` what it raised. The
    follower retries it (see above). A listener's own `ChainError` is raised as it
    is, with a note, and retried the same way."""

    def __init__(self, listener: object, what: str, cause: Exception) -> None:
        super().__init__(f"{type(listener).__name__} failed in {what}: {cause!r}")
        self.listener = listener
        self.what = what


class RpcChainSource:
    """`ChainSource` over bitcoind's JSON-RPC (or the embedded node's)."""

    def __init__(self, rpc: BitcoinRpc) -> None:
        self.rpc = rpc

    async def best_block_hash(self) -> str:
        return await self.rpc.getbestblockhash()

    async def block_hash(self, height: int) -> str | None:
        try:
            return await self.rpc.getblockhash(height)
        except RpcError as exc:
            if exc.code == RPC_INVALID_PARAMETER:  # "Block height out of range"
                return None
            raise

    async def block_header(self, block_hash: str) -> BlockHeader:
        with _as_parse_error(block_hash):
            header = BlockHeader.parse(await self.rpc.getblockheader_raw(block_hash))
        if header.hash != block_hash:
            raise BlockParseError(f"asked for header {block_hash}, got {header.hash}")
        return header

    async def block(self, block_hash: str) -> Block:
        with _as_parse_error(block_hash):
            raw = await self.rpc.getrawblock(block_hash)
        return Block.parse(raw, expected_hash=block_hash)

    async def blocks_from(self, height: int, max_count: int) -> list[Block]:
        hashes: list[str] = []
        answers = await self.rpc.call_batch(
            [("getblockhash", [h]) for h in range(height, height + max_count)]
        )
        for answer in answers:
            if isinstance(answer, RpcError):
                if answer.code == RPC_INVALID_PARAMETER:  # above the tip: stop here
                    break
                raise answer
            hashes.append(str(answer))
        if not hashes:
            return []
        raws = await self.rpc.call_batch([("getblock", [h, 0]) for h in hashes])
        blocks = []
        for block_hash, raw in zip(hashes, raws, strict=True):
            if isinstance(raw, RpcError):
                raise raw
            with _as_parse_error(block_hash):
                raw_bytes = bytes.fromhex(raw)
            blocks.append(Block.parse(raw_bytes, expected_hash=block_hash))
        return blocks


@contextmanager
def _as_parse_error(what: str) -> Iterator[None]:
    # A node answering something that is not hex (a bug, a proxy's error page)
    # is a chain error the follower retries, not a crash of the service.
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise BlockParseError(f"{what}: the node's answer is not a block: {exc}") from exc


@contextmanager
def _listener_call(listener: object, what: str) -> Iterator[None]:
    # Anything a listener raises is a ListenerError, but for a ChainError of its own
    # (the wallet's "rescan"): its type is its meaning, so it stays; either way the
    # listener's position has not moved, so the next step retries the same call.
    try:
        yield
    except ListenerError:
        raise
    except ChainError as exc:
        exc.add_note(f"raised by {type(listener).__name__} in {what}")
        exc.from_listener = True  # type: ignore[attr-defined]
        raise
    except Exception as exc:
        raise ListenerError(listener, what, exc) from exc


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync step did."""

    disconnected: int
    connected: int
    tip: BlockRef

    @property
    def moved(self) -> bool:
        return bool(self.disconnected or self.connected)


async def checkpoint_at(source: ChainSource, height: int) -> BlockRef:
    """The node's block at `height` as a checkpoint (e.g. a wallet's birth height
    minus one); `ChainError` if the node is not that high."""
    block_hash = await source.block_hash(height)
    if block_hash is None:
        raise ChainError(f"the node has no block at height {height}")
    return BlockRef(height, block_hash)


class ChainFollower:
    """Follows the best chain of `source` from `checkpoint`, feeding listeners."""

    def __init__(
        self,
        source: ChainSource,
        checkpoint: BlockRef,
        *,
        listeners: Iterable[BlockListener] = (),
        tip_listeners: Iterable[TipListener] = (),
        poll_interval_s: float = 1.0,
        batch_blocks: int = 8,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        if batch_blocks < 1:
            raise ValueError("batch_blocks is at least 1")
        self.source = source
        self.poll_interval_s = poll_interval_s
        # Blocks fetched per round trip while catching up: a few, so a mainnet
        # catch-up holds at most batch_blocks x 4 MB in memory at once.
        self.batch_blocks = batch_blocks
        self._tip = checkpoint
        # The tip as of the end of the last completed sync step (listeners and
        # tip listeners done); `_tip` moves block by block inside a step.
        self._synced_tip = checkpoint
        self._listeners: list[BlockListener] = list(listeners)
        self._tip_listeners: list[TipListener] = list(tip_listeners)
        # Each listener's position (by id): the last block it took. Equal to `_tip`
        # except after a listener failure, by one block (module docstring).
        self._positions: dict[int, BlockRef] = {id(x): checkpoint for x in self._listeners}
        self._tip_taken: dict[int, BlockRef] = {id(x): checkpoint for x in self._tip_listeners}
        self._parents: OrderedDict[str, str] = OrderedDict()
        self._lock = trio.Lock()
        self._height_waiters: list[tuple[int, trio.Event]] = []
        self.blocks_connected = 0
        self.blocks_disconnected = 0
        self.listener_failures = 0  # counted by run(), for metrics

    @property
    def tip(self) -> BlockRef:
        return self._tip

    def add_listener(self, listener: BlockListener) -> None:
        """Register a listener; it sees blocks from the current tip on."""
        self._listeners.append(listener)
        self._positions[id(listener)] = self._tip

    def remove_listener(self, listener: BlockListener) -> None:
        self._listeners.remove(listener)
        self._positions.pop(id(listener), None)

    def add_tip_listener(self, listener: TipListener) -> None:
        self._tip_listeners.append(listener)
        self._tip_taken[id(listener)] = self._tip

    def remove_tip_listener(self, listener: TipListener) -> None:
        self._tip_listeners.remove(listener)
        self._tip_taken.pop(id(listener), None)

    async def run(
        self, *, task_status: trio.TaskStatus[BlockRef] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The service: catch up, report started with the tip, then poll forever.

        The first sync must succeed (a node that is down at start, or a listener
        that fails there, is the caller's error to see); later failures are logged
        and retried on the next poll: a listener's at ERROR with its traceback.
        """
        await self.sync_once()
        task_status.started(self._tip)
        while True:
            await trio.sleep(self.poll_interval_s)
            try:
                await self.sync_once()
            except ChainError as exc:
                if isinstance(exc, ListenerError) or getattr(exc, "from_listener", False):
                    self.listener_failures += 1
                    log.error("chain listener failed (the follower keeps running; retrying "
                              "in %ss, the same block again): %s", self.poll_interval_s, exc,
                              exc_info=exc.__cause__ or exc)
                else:
                    log.warning("chain sync failed, retrying in %ss: %s",
                                self.poll_interval_s, exc)

    async def wait_for_height(self, height: int) -> BlockRef:
        """Return once a sync step that reached `height` or above has finished,
        tip listeners included (so the owner's persist has run); needs `run()`."""
        if self._synced_tip.height < height:
            event = trio.Event()
            self._height_waiters.append((height, event))
            await event.wait()
        return self._synced_tip

    async def sync_once(self) -> SyncResult:
        """One step to the node's best block (see the module docstring)."""
        async with self._lock:
            disconnected = connected = 0
            best = await self.source.best_block_hash()
            await self._settle()
            if best != self._tip.hash:
                while True:
                    disconnected += await self._walk_back()
                    added, consistent = await self._walk_forward()
                    connected += added
                    if consistent:
                        break
            result = SyncResult(disconnected, connected, self._tip)
            pending = [x for x in self._tip_listeners if self._tip_taken.get(id(x)) != self._tip]
            if pending:
                for tip_listener in pending:
                    with _listener_call(tip_listener, f"best_block_updated {self._tip}"):
                        await tip_listener.best_block_updated(self._tip)
                    self._tip_taken[id(tip_listener)] = self._tip
            if self._synced_tip != self._tip:
                self._synced_tip = self._tip
                self._wake_waiters()
            return result

    # -- feeding one listener -----------------------------------------------------

    def _connect(self, listener: BlockListener, ref: BlockRef, txs: Sequence[Tx]) -> None:
        with _listener_call(listener, f"block_connected {ref.height} {ref.hash}"):
            listener.block_connected(ref.height, ref.hash, txs)
        self._positions[id(listener)] = ref

    def _disconnect(self, listener: BlockListener, ref: BlockRef, parent: BlockRef) -> None:
        with _listener_call(listener, f"block_disconnected {ref.height} {ref.hash}"):
            listener.block_disconnected(ref.height, ref.hash)
        self._positions[id(listener)] = parent

    async def _settle(self) -> None:
        """Bring every listener a failure left one block off back to our tip, or leave
        it where the walk that follows skips it (module docstring)."""
        tip = self._tip
        for listener in list(self._listeners):
            position = self._positions.get(id(listener), tip)
            if position == tip:
                continue
            if position.height == tip.height + 1:  # took a block the others did not
                if await self.source.block_hash(position.height) != position.hash:
                    self._disconnect(listener, position, tip)
            elif position.height == tip.height - 1:  # took a disconnect the others did not
                blocks = await self.source.blocks_from(tip.height, 1)
                if blocks and blocks[0].hash == tip.hash:
                    self._connect(listener, tip, blocks[0].txs)
            else:  # cannot happen: the follower moves one block at a time
                raise AssertionError(f"listener at {position}, follower at {tip}")

    async def _walk_back(self) -> int:
        count = 0
        while await self.source.block_hash(self._tip.height) != self._tip.hash:
            tip = self._tip
            if tip.height == 0:
                raise ChainMismatch(f"block {tip.hash} is not on the node's chain")
            parent = self._parents.get(tip.hash)
            if parent is None:
                try:
                    parent = (await self.source.block_header(tip.hash)).prev_hash
                except RpcError as exc:
                    if exc.code != RPC_INVALID_ADDRESS_OR_KEY:
                        raise
                    raise ChainMismatch(f"the node does not know block {tip.hash}") from exc
            parent_ref = BlockRef(tip.height - 1, parent)
            for listener in list(self._listeners):
                position = self._positions.get(id(listener), tip)
                if position == parent_ref:
                    continue  # took this disconnect before another listener failed
                if position.height == tip.height + 1:  # ahead on a block now stale
                    self._disconnect(listener, position, tip)
                self._disconnect(listener, tip, parent_ref)
            self._parents.pop(tip.hash, None)
            self._tip = parent_ref
            self.blocks_disconnected += 1
            count += 1
        return count

    async def _walk_forward(self) -> tuple[int, bool]:
        """Connect blocks until the node has no more; False if a parent mismatched."""
        count = 0
        while True:
            first_height = self._tip.height + 1
            blocks = await self.source.blocks_from(first_height, self.batch_blocks)
            for offset, block in enumerate(blocks):
                if block.prev_hash != self._tip.hash:
                    return count, False
                ref = BlockRef(first_height + offset, block.hash)
                for listener in list(self._listeners):
                    position = self._positions.get(id(listener), self._tip)
                    if position == ref:
                        continue  # took this block before another listener failed
                    if position.height < self._tip.height:  # the chain moved back
                        raise ChainError("a listener is a block behind (the node "  # and
                                         "reorganised twice during this step): retry")
                    if position != self._tip:  # ahead on another block, now stale
                        self._disconnect(listener, position, self._tip)
                    self._connect(listener, ref, block.txs)
                self._remember_parent(block.hash, block.prev_hash)
                self._tip = ref
                self.blocks_connected += 1
                count += 1
            if len(blocks) < self.batch_blocks:
                # At the node's tip as of this batch; newer blocks wait for the
                # next poll rather than cost one more round trip now.
                return count, True

    def _remember_parent(self, block_hash: str, parent: str) -> None:
        self._parents[block_hash] = parent
        if len(self._parents) > PARENT_CACHE_SIZE:
            self._parents.popitem(last=False)

    def _wake_waiters(self) -> None:
        still_waiting = []
        for height, event in self._height_waiters:
            if self._synced_tip.height >= height:
                event.set()
            else:
                still_waiting.append((height, event))
        self._height_waiters = still_waiting
