"""The broadcaster: publish a transaction, and keep publishing it until it is
confirmed to a depth.

Theory of operation. A transaction that matters (a funding, a close, a sweep, a
penalty) must reach a block even if the node forgets it: a reorg can leave it
out of the new branch and a node restarted without its mempool, or one that
evicted it under load, will not relay it again. So the broadcaster remembers
every transaction it was given and sends it again after every sync step that
moved the tip, until it is `confirm_depth` deep in the best chain; then it
forgets it. It is a `BlockListener` (to see the txids in blocks, and their
blocks disconnected) and a `TipListener` (to rebroadcast once per new tip).

How bitcoind's answers are read (codes from src/rpc/protocol.h, reasons from
validation.cpp):
- success, or already known: the txid; -27 "Transaction already in block
  chain"/"Transaction outputs already in utxo set", and the reasons
  "txn-already-known" / "txn-already-in-mempool";
- not yet: -25 "bad-txns-inputs-missingorspent" / "Missing inputs" (a parent
  not yet confirmed or not yet broadcast), -26 "non-final" (nLockTime not yet
  reached) and "non-BIP68-final" (a CSV delay not yet passed). The tx stays
  pending with the reason in `last_error` and is retried on the next block.
  (Missing inputs can also mean a conflicting spend confirmed: see below.)
- anything else is a refusal: `BroadcastRefused` with bitcoind's code and
  reason, and the tx is not kept (it would be refused again).
- a node that cannot be reached: `ChainUnavailable` from `broadcast`, with the
  tx kept, so it goes out on the next block; a rebroadcast failure is logged.

A conflict: a tx whose input a *different* confirmed tx spends (the peer's
commitment confirmed instead of ours, a cheater's HTLC tx instead of our claim)
cannot confirm while that block stands. It is not sent again while the conflict
is in the best chain (the node would only answer "missing inputs" every block),
and once the conflict is `confirm_depth` deep it is forgotten, logged at INFO; a
reorg that disconnects the conflict makes it pending again. A refusal because a
conflicting tx is in the *mempool* (replacement refused: our own commitment
re-sent while the peer's is unconfirmed) is the normal life of a channel's
transactions, logged at INFO, not as an error; `BroadcastRefused.mempool_conflict`
names that case.

The pending set lives in memory; `pending()` / `to_json()` expose it so that
the owner persists it with the follower's tip, and `from_json` restores it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from channel.chain.interfaces import BlockRef
from channel.chain.rpc import (
    RPC_VERIFY_ALREADY_IN_CHAIN,
    BitcoinRpc,
    ChainError,
    ChainUnavailable,
    RpcError,
)
from channel.tx import Tx

log = logging.getLogger(__name__)

_ALREADY_KNOWN_REASONS = ("txn-already-known", "txn-already-in-mempool")
# Replacement refused (Core v28 full RBF, src/policy/rbf.cpp) or, before RBF, the
# plain conflict: another tx spending one of our inputs is in the mempool.
_MEMPOOL_CONFLICT_REASONS = (
    "insufficient fee",
    "rejecting replacement",
    "txn-mempool-conflict",
    "too many potential replacements",
)
_NOT_YET_REASONS = (
    "missingorspent",
    "missing inputs",
    "missing-inputs",
    "non-final",
    "non-bip68-final",
)


class BroadcastRefused(ChainError):
    """The node refused the transaction for good (bitcoind's code and reason)."""

    def __init__(self, txid: str, code: int, reason: str) -> None:
        super().__init__(f"transaction {txid} refused: {reason} (code {code})")
        self.txid = txid
        self.code = code
        self.reason = reason

    @property
    def mempool_conflict(self) -> bool:
        """Refused because a conflicting tx is in the mempool (see the module docstring)."""
        reason = self.reason.lower()
        return any(r in reason for r in _MEMPOOL_CONFLICT_REASONS)


@dataclass(slots=True)
class PendingTx:
    txid: str
    raw_tx: bytes
    label: str
    confirmed_height: int | None = None
    last_error: str | None = None
    # Height of the block holding a different tx that spends one of our inputs.
    conflict_height: int | None = None

    def spent_outpoints(self) -> set[tuple[bytes, int]]:
        return {(i.outpoint.txid, i.outpoint.index) for i in Tx.parse(self.raw_tx).inputs}

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid,
            "raw_tx": self.raw_tx.hex(),
            "label": self.label,
            "confirmed_height": self.confirmed_height,
            "last_error": self.last_error,
            "conflict_height": self.conflict_height,
        }


class RpcBroadcaster:
    """`Broadcaster` over sendrawtransaction that rebroadcasts until confirmed."""

    def __init__(self, rpc: BitcoinRpc, *, tip_height: int, confirm_depth: int = 6) -> None:
        if confirm_depth < 1:
            raise ValueError("confirm_depth is at least 1")
        self.rpc = rpc
        self.tip_height = tip_height
        self.confirm_depth = confirm_depth
        self._pending: dict[str, PendingTx] = {}
        self.rebroadcasts = 0

    def pending(self) -> list[PendingTx]:
        return list(self._pending.values())

    def forget(self, txid: str) -> None:
        """Stop rebroadcasting `txid` (e.g. a conflicting spend won)."""
        self._pending.pop(txid, None)

    async def broadcast(self, tx: Tx, *, label: str = "", keep_if_refused: bool = False) -> str:
        """Send `tx` now and keep it until `confirm_depth` deep; returns its txid.

        A refusal raises `BroadcastRefused`; the tx is then forgotten unless
        `keep_if_refused` (a commitment or penalty that must confirm: a fee below
        the mempool minimum now may relay later, so it is retried every block).
        """
        txid = tx.txid_hex()
        entry = self._pending.get(txid)
        if entry is None:
            entry = PendingTx(txid, tx.serialize(), label)
        try:
            await self._send(entry)
        except BroadcastRefused as exc:
            if keep_if_refused:
                entry.last_error = f"{exc.reason} (code {exc.code})"
                self._pending[txid] = entry
            else:
                self._pending.pop(txid, None)
            raise
        except ChainUnavailable:
            self._pending[txid] = entry
            raise
        self._pending[txid] = entry
        return txid

    async def _send(self, entry: PendingTx) -> None:
        try:
            await self.rpc.sendrawtransaction(entry.raw_tx)
        except RpcError as exc:
            reason = exc.message.lower()
            if exc.code == RPC_VERIFY_ALREADY_IN_CHAIN or any(
                r in reason for r in _ALREADY_KNOWN_REASONS
            ):
                entry.last_error = None
                return
            if any(r in reason for r in _NOT_YET_REASONS):
                entry.last_error = f"{exc.message} (code {exc.code})"
                return
            raise BroadcastRefused(entry.txid, exc.code, exc.message) from exc
        entry.last_error = None

    def for_driver(self) -> ActionBroadcaster:
        """This broadcaster behind protocol.driver's `Broadcaster` interface."""
        return ActionBroadcaster(self)

    # -- BlockListener / TipListener -------------------------------------------------

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        self.tip_height = height
        if self._pending:
            for tx in txs:
                entry = self._pending.get(tx.txid_hex())
                if entry is not None and entry.confirmed_height is None:
                    entry.confirmed_height = height
            self._mark_conflicts(height, txs)
        for entry in list(self._pending.values()):
            if (entry.confirmed_height is not None
                    and height - entry.confirmed_height + 1 >= self.confirm_depth):
                del self._pending[entry.txid]
            elif (entry.confirmed_height is None and entry.conflict_height is not None
                    and height - entry.conflict_height + 1 >= self.confirm_depth):
                log.info("%s (%s) forgotten: a conflicting spend is %d deep", entry.txid,
                         entry.label, self.confirm_depth)
                del self._pending[entry.txid]

    def _mark_conflicts(self, height: int, txs: Sequence[Tx]) -> None:
        spenders: dict[tuple[bytes, int], str] = {}
        for tx in txs:
            txid = tx.txid_hex()
            for txin in tx.inputs:
                spenders[(txin.outpoint.txid, txin.outpoint.index)] = txid
        for entry in self._pending.values():
            if entry.confirmed_height is not None or entry.conflict_height is not None:
                continue
            if any(spenders.get(o, entry.txid) != entry.txid for o in entry.spent_outpoints()):
                entry.conflict_height = height

    def block_disconnected(self, height: int, block_hash: str) -> None:
        self.tip_height = height - 1
        for entry in self._pending.values():
            if entry.confirmed_height == height:
                entry.confirmed_height = None
            if entry.conflict_height == height:
                entry.conflict_height = None

    async def best_block_updated(self, tip: BlockRef) -> None:
        """Send again every pending tx that is not in the best chain."""
        for entry in list(self._pending.values()):
            if entry.confirmed_height is not None or entry.conflict_height is not None:
                continue
            try:
                await self._send(entry)
                self.rebroadcasts += 1
            except BroadcastRefused as exc:
                # Refused now though accepted before: a conflicting spend won, or
                # policy changed. Keep it (the owner decides) but say why.
                entry.last_error = f"{exc.reason} (code {exc.code})"
                log.log(logging.INFO if exc.mempool_conflict else logging.WARNING,
                        "rebroadcast of %s (%s) refused: %s", entry.txid, entry.label, exc)
            except ChainUnavailable as exc:
                log.warning("rebroadcast of %s deferred: %s", entry.txid, exc)
                return

    # -- persistence -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "tip_height": self.tip_height,
            "pending": [e.to_json() for e in self._pending.values()],
        }

    @classmethod
    def from_json(
        cls, rpc: BitcoinRpc, data: dict[str, Any], *, confirm_depth: int = 6
    ) -> RpcBroadcaster:
        broadcaster = cls(rpc, tip_height=int(data["tip_height"]), confirm_depth=confirm_depth)
        for item in data["pending"]:
            raw = bytes.fromhex(item["raw_tx"])
            txid = Tx.parse(raw).txid_hex()
            if txid != item["txid"]:
                raise ValueError(f"pending entry {item['txid']} holds transaction {txid}")
            broadcaster._pending[txid] = PendingTx(
                txid, raw, str(item["label"]), item["confirmed_height"], item["last_error"],
                item.get("conflict_height"),  # absent in bundles written before it
            )
        return broadcaster


class ActionBroadcaster:
    """protocol.driver's `Broadcaster` (`broadcast(raw_tx, txid, reason)`, internal
    byte order txid, never raising for the chain's sake) over `RpcBroadcaster`.

    A channel's Broadcast action carries a transaction that must confirm (a
    force-close commitment, a cooperative close, a penalty), so nothing is
    dropped: a node that is down, a tx not yet valid or a refusal all leave it
    pending, retried on every block, with the reason in `last_error` and logged.
    Only a tx whose bytes are not the txid named is a programming error
    (ValueError).
    """

    def __init__(self, inner: RpcBroadcaster) -> None:
        self.inner = inner

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        tx = Tx.parse(raw_tx)
        if tx.txid() != txid:
            raise ValueError(f"{reason}: the transaction is not {txid[::-1].hex()}")
        try:
            await self.inner.broadcast(tx, label=reason, keep_if_refused=True)
        except BroadcastRefused as exc:
            log.log(logging.INFO if exc.mempool_conflict else logging.ERROR,
                    "%s: %s; retrying every block", reason, exc)
        except ChainUnavailable as exc:
            log.warning("%s: node unreachable (%s); retrying every block", reason, exc)
