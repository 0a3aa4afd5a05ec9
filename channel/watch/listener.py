"""``WatchSet``: the watches of many channels behind one ``BlockListener``.

Theory of operation. A hub follows one chain for thousands of channels. Handing
every block's transactions to every watch would cost channels x transactions
input comparisons per block; instead the set asks each watch what it looks for
(``ChannelWatch.interest``: its funding outpoint, its funding txid until seen, the
txids whose outputs it follows), indexes that once per block, and gives each watch
only the transactions that touch it (every watch still sees every block: heights
alone make claims valid and HTLCs due). A transaction found for a channel makes its
own txid followed for the rest of the block, so a parent and child in one block
are both found; the watch filters again, exactly. Outputs are collected per
channel; the driver takes them after the follower's sync step (``take_outputs``),
as the ``BlockListener`` contract asks: no I/O inside the calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from channel.tx import OutPoint, Tx
from channel.watch.core import ChannelWatch
from channel.watch.types import WatchOutput


class WatchSet:
    def __init__(self) -> None:
        self.watches: dict[str, ChannelWatch] = {}
        self._outputs: dict[str, list[WatchOutput]] = {}

    def add(self, key: str, watch: ChannelWatch) -> None:
        """Follow ``watch`` under ``key`` (e.g. the channel id in hex)."""
        self.watches[key] = watch

    def remove(self, key: str) -> None:
        self.watches.pop(key, None)

    def take_outputs(self) -> dict[str, list[WatchOutput]]:
        """What each watch returned since the last call, in order; then forgotten."""
        outputs, self._outputs = self._outputs, {}
        return outputs

    def _collect(self, key: str, outputs: list[WatchOutput]) -> None:
        if outputs:
            self._outputs.setdefault(key, []).extend(outputs)

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        by_funding: dict[OutPoint, str] = {}
        by_txid: dict[bytes, str] = {}
        by_parent: dict[bytes, set[str]] = {}
        for key, watch in self.watches.items():
            funding, awaited, parents = watch.interest()
            by_funding[funding] = key
            if awaited is not None:
                by_txid[awaited] = key
            for txid in parents:
                by_parent.setdefault(txid, set()).add(key)
        found: dict[str, list[Tx]] = {}
        for tx in txs:
            keys: set[str] = set()
            txid = tx.txid() if by_txid or by_parent else b""
            if txid in by_txid:
                keys.add(by_txid[txid])
            for txin in tx.inputs:
                if txin.outpoint in by_funding:
                    keys.add(by_funding[txin.outpoint])
                keys |= by_parent.get(txin.outpoint.txid, set())
            for key in keys:
                found.setdefault(key, []).append(tx)
                by_parent.setdefault(txid or tx.txid(), set()).add(key)
        for key, watch in self.watches.items():
            self._collect(key, watch.block_connected(height, block_hash, found.get(key, [])))

    def block_disconnected(self, height: int, block_hash: str) -> None:
        for key, watch in self.watches.items():
            self._collect(key, watch.block_disconnected(height, block_hash))
