"""The confirmation tracker: depth of watched transactions, spends of watched
outpoints, and their reversal when a reorg takes their block away.

Theory of operation. A `BlockListener` fed by the follower. It keeps, for each
watched txid, the block that holds it on the best chain (if any) and whether
`TxConfirmed` has been told; for each watched outpoint, the block and tx that
spent it. Each connected block is searched for watched txids and spent
outpoints; then every included watch whose depth (tip height - its height + 1)
reached its `min_depth` and was not yet told is told. A disconnected block
un-includes what it held, and a `TxConfirmed` or `OutpointSpent` already told for
it is reversed with `TxUnconfirmed` / `OutpointUnspent`. A reorg that only
shortens the chain above a confirmed tx does not reverse it: the tx is still in
the best chain, and if its depth was enough once, the channel logic (a funding
lock-in, a sweep) has acted on it; only losing its block undoes that (as LDK's
`transaction_unconfirmed`). A watch may name the output it expects
(`expect_output`): a mined tx without exactly that output is told as `TxMismatch`
and never counts as confirmed.

Events are handed to `on_event` as they happen, inside the follower's sync step
(so they must not do I/O: push to a trio memory channel with `send_nowait`, or
queue), and are also kept for `drain_events()`; an owner uses one or the other.

Watches must exist before their block is connected: the tracker sees the chain
from the follower's tip on, never the past. Its state (watches and what they
saw) is exported with `to_json()` and persisted with the follower's tip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from channel.tx import OutPoint, Tx, TxOut


@dataclass(frozen=True, slots=True)
class TxConfirmed:
    txid: str
    height: int
    block_hash: str
    depth: int


@dataclass(frozen=True, slots=True)
class TxUnconfirmed:
    txid: str
    height: int
    block_hash: str


@dataclass(frozen=True, slots=True)
class TxMismatch:
    """The watched txid was mined, but its output is not the one expected (a
    funder naming a funding outpoint that pays another script or amount)."""

    txid: str
    height: int
    block_hash: str
    reason: str


@dataclass(frozen=True, slots=True)
class OutpointSpent:
    outpoint: OutPoint
    spending_tx: Tx
    height: int
    block_hash: str


@dataclass(frozen=True, slots=True)
class OutpointUnspent:
    outpoint: OutPoint
    spending_txid: str
    height: int
    block_hash: str


ChainEvent = TxConfirmed | TxUnconfirmed | TxMismatch | OutpointSpent | OutpointUnspent


@dataclass(slots=True)
class _TxWatch:
    min_depth: int
    height: int | None = None
    block_hash: str | None = None
    told: bool = False
    expected: tuple[int, TxOut] | None = None


@dataclass(slots=True)
class _SpendWatch:
    height: int | None = None
    block_hash: str | None = None
    spending_tx: Tx | None = None


class ConfirmationTracker:
    """Watches txids to a depth and outpoints for their spend (a BlockListener)."""

    def __init__(
        self, tip_height: int, *, on_event: Callable[[ChainEvent], None] | None = None
    ) -> None:
        self.tip_height = tip_height
        self.on_event = on_event
        self._txs: dict[str, _TxWatch] = {}
        self._spends: dict[OutPoint, _SpendWatch] = {}
        self._events: list[ChainEvent] = []

    # -- watches ---------------------------------------------------------------

    def watch_tx(
        self,
        txid: str,
        min_depth: int,
        *,
        expect_output: tuple[int, TxOut] | None = None,
        included: tuple[int, str] | None = None,
    ) -> None:
        """Tell `TxConfirmed` once `txid` is `min_depth` deep (1: in a block).

        With `expect_output=(index, TxOut(amount_sat, script_pubkey))`, the mined
        tx must have exactly that output (BOLT #2: the fundee checks the funding
        output before it counts confirmations); if not, `TxMismatch` is told
        instead and the tx never counts as confirmed.

        `included=(height, block_hash)`: the tx is already in that block of the best
        chain (known from an `OutpointSpent` event, which the tracker emits for the
        block it connects, so a watch added on it comes one block too late to be
        found). A later disconnect of that block un-includes it as usual.
        """
        if min_depth < 1:
            raise ValueError("min_depth is at least 1")
        _check_txid(txid)
        existing = self._txs.get(txid)
        if existing is None:
            existing = self._txs[txid] = _TxWatch(min_depth, expected=expect_output)
        else:
            existing.min_depth = min_depth
        if included is not None and existing.height is None:
            existing.height, existing.block_hash = included
        self._tell_deep_enough()

    def is_watched(self, txid: str) -> bool:
        return txid in self._txs

    def unwatch_tx(self, txid: str) -> None:
        self._txs.pop(txid, None)

    def watch_outpoint(self, outpoint: OutPoint) -> None:
        """Tell `OutpointSpent` when a block spends `outpoint`."""
        self._spends.setdefault(outpoint, _SpendWatch())

    def unwatch_outpoint(self, outpoint: OutPoint) -> None:
        self._spends.pop(outpoint, None)

    def depth(self, txid: str) -> int:
        """How deep `txid` is on the best chain (0: not in it, or not watched)."""
        watch = self._txs.get(txid)
        if watch is None or watch.height is None:
            return 0
        return self.tip_height - watch.height + 1

    def spender(self, outpoint: OutPoint) -> Tx | None:
        watch = self._spends.get(outpoint)
        return None if watch is None else watch.spending_tx

    def drain_events(self) -> list[ChainEvent]:
        events, self._events = self._events, []
        return events

    # -- BlockListener ------------------------------------------------------------

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        self.tip_height = height
        for tx in txs:
            txid = tx.txid_hex()
            watch = self._txs.get(txid)
            if watch is not None and watch.height is None:
                mismatch = _mismatch(tx, watch.expected)
                if mismatch is not None:
                    self._emit(TxMismatch(txid, height, block_hash, mismatch))
                else:
                    watch.height, watch.block_hash = height, block_hash
            for txin in tx.inputs:
                spend = self._spends.get(txin.outpoint)
                if spend is not None and spend.height is None:
                    spend.height, spend.block_hash, spend.spending_tx = height, block_hash, tx
                    self._emit(OutpointSpent(txin.outpoint, tx, height, block_hash))
        self._tell_deep_enough()

    def block_disconnected(self, height: int, block_hash: str) -> None:
        self.tip_height = height - 1
        for txid, watch in self._txs.items():
            if watch.height is not None and watch.block_hash == block_hash:
                if watch.told:
                    self._emit(TxUnconfirmed(txid, height, block_hash))
                watch.height = watch.block_hash = None
                watch.told = False
        for outpoint, spend in self._spends.items():
            if spend.height is not None and spend.block_hash == block_hash:
                assert spend.spending_tx is not None
                self._emit(
                    OutpointUnspent(outpoint, spend.spending_tx.txid_hex(), height, block_hash)
                )
                spend.height = spend.block_hash = spend.spending_tx = None

    # -- internals -------------------------------------------------------------------

    def _tell_deep_enough(self) -> None:
        for txid, watch in self._txs.items():
            if watch.height is None or watch.told:
                continue
            depth = self.tip_height - watch.height + 1
            if depth >= watch.min_depth:
                assert watch.block_hash is not None
                watch.told = True
                self._emit(TxConfirmed(txid, watch.height, watch.block_hash, depth))

    def _emit(self, event: ChainEvent) -> None:
        self._events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # -- persistence -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "tip_height": self.tip_height,
            "txs": {
                txid: {
                    "min_depth": w.min_depth,
                    "height": w.height,
                    "block_hash": w.block_hash,
                    "told": w.told,
                    "expected": None
                    if w.expected is None
                    else {
                        "index": w.expected[0],
                        "amount_sat": w.expected[1].amount_sat,
                        "script_pubkey": w.expected[1].script_pubkey.hex(),
                    },
                }
                for txid, w in self._txs.items()
            },
            "outpoints": [
                {
                    "txid": outpoint.txid_hex(),
                    "index": outpoint.index,
                    "height": s.height,
                    "block_hash": s.block_hash,
                    "spending_tx": None
                    if s.spending_tx is None
                    else s.spending_tx.serialize().hex(),
                }
                for outpoint, s in self._spends.items()
            ],
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], *, on_event: Callable[[ChainEvent], None] | None = None
    ) -> ConfirmationTracker:
        tracker = cls(int(data["tip_height"]), on_event=on_event)
        for txid, w in data["txs"].items():
            _check_txid(txid)
            expected = w.get("expected")
            tracker._txs[txid] = _TxWatch(
                int(w["min_depth"]),
                w["height"],
                w["block_hash"],
                bool(w["told"]),
                None
                if expected is None
                else (
                    int(expected["index"]),
                    TxOut(int(expected["amount_sat"]), bytes.fromhex(expected["script_pubkey"])),
                ),
            )
        for s in data["outpoints"]:
            spending = (
                None if s["spending_tx"] is None else Tx.parse(bytes.fromhex(s["spending_tx"]))
            )
            tracker._spends[OutPoint.from_display(s["txid"], int(s["index"]))] = _SpendWatch(
                s["height"], s["block_hash"], spending
            )
        return tracker


def _mismatch(tx: Tx, expected: tuple[int, TxOut] | None) -> str | None:
    if expected is None:
        return None
    index, output = expected
    if index >= len(tx.outputs):
        return f"no output {index}"
    found = tx.outputs[index]
    if found.script_pubkey != output.script_pubkey:
        return f"output {index} pays another script"
    if found.amount_sat != output.amount_sat:
        return f"output {index} pays {found.amount_sat} sat, not {output.amount_sat}"
    return None


def _check_txid(txid: str) -> None:
    """Display-order hex, lowercase, as bitcoind prints it (so lookups match)."""
    if len(txid) != 64 or bytes.fromhex(txid).hex() != txid:
        raise ValueError(f"not a txid: {txid!r}")
