"""The small interfaces through which the chain reaches the rest of Chanhub.

Theory of operation (after LDK's `chain::Listen`, `BroadcasterInterface` and
`FeeEstimator`): code that reacts to the chain never polls a node itself. One
`ChainFollower` per process reads blocks from a `ChainSource` and feeds every
registered `BlockListener` in chain order; the wallet, the confirmation tracker,
the broadcaster and each channel's watch are listeners. `Broadcaster` and
`FeeEstimator` are what the driver calls to publish a transaction and to price
one; their test doubles only record calls.

Reorg ordering, the one rule every listener may rely on: when the best chain
changes, the follower first calls `block_disconnected` for each block of the old
branch, the tip first, down to (not including) the fork point, and then
`block_connected` for each block of the new branch in ascending height. So a
listener always sees a consistent chain: the `height` of a connect is its previous
height plus one, the height of a disconnect is its current height, and after a
disconnect of height h its tip is height h - 1.

Identifiers: block hashes and txids cross these interfaces as display-order hex
(what bitcoind prints and what is persisted in JSON); outpoints are
`channel.tx.OutPoint` (internal byte order, as inside transactions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from channel.chain.block import Block, BlockHeader
from channel.tx import Tx


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block by height and display-order hash: a chain position (a checkpoint)."""

    height: int
    hash: str

    def to_json(self) -> dict[str, int | str]:
        return {"height": self.height, "hash": self.hash}

    @classmethod
    def from_json(cls, data: dict[str, int | str]) -> BlockRef:
        height, block_hash = data["height"], data["hash"]
        if not isinstance(height, int) or not isinstance(block_hash, str) or height < 0:
            raise ValueError(f"not a block reference: {data!r}")
        if len(block_hash) != 64 or bytes.fromhex(block_hash).hex() != block_hash:
            raise ValueError(f"not a block hash: {block_hash!r}")
        return cls(height, block_hash)


class ChainSource(Protocol):
    """Where blocks come from (bitcoind's RPC in production: `RpcChainSource`)."""

    async def best_block_hash(self) -> str: ...

    async def block_hash(self, height: int) -> str | None:
        """The hash at `height` on the best chain, or None above the tip."""
        ...

    async def block_header(self, block_hash: str) -> BlockHeader:
        """The header of any block the node knows, stale ones included."""
        ...

    async def blocks_from(self, height: int, max_count: int) -> list[Block]:
        """Up to `max_count` blocks of the best chain from `height` up (fewer at the
        tip, none above it), verified. One batch, so a catch-up of many blocks
        costs two round trips per batch instead of two per block. The caller
        checks that they link (a reorg may happen between the two halves)."""
        ...


class BlockListener(Protocol):
    """Fed by the follower, synchronously and in chain order (see the reorg rule).

    Listeners do no I/O in these calls: they update their state and emit events;
    what they must write is persisted by their owner once the follower's sync step
    has returned (the owner then also persists the follower's tip).
    """

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None: ...

    def block_disconnected(self, height: int, block_hash: str) -> None: ...


class TipListener(Protocol):
    """Told, after each sync step that moved the tip, where the tip now is."""

    async def best_block_updated(self, tip: BlockRef) -> None: ...


class Broadcaster(Protocol):
    async def broadcast(self, tx: Tx, *, label: str = "") -> str:
        """Publish `tx` (and keep publishing it until confirmed); returns its txid."""
        ...


class FeeEstimator(Protocol):
    async def feerate_sat_per_kw(self, conf_target_blocks: int) -> int:
        """Fee rate in satoshis per 1000 weight units, never below the relay floor."""
        ...
