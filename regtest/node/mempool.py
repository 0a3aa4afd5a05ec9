"""The mempool: acceptance in Bitcoin Core's check order, ancestry, block removal.

Theory of operation.  `accept` runs MemPoolAccept's checks in Core's order
(PreChecks -> PolicyScriptChecks), so the first rule a transaction breaks is
the reason reported, in Core's words.  Inputs are looked up in a view that
is the UTXO set plus the outputs of mempool transactions (a child may spend
an unconfirmed parent); coins created in the mempool count as being at
height tip+1, as Core's MEMPOOL_HEIGHT does for BIP68 and maturity.

A transaction spending an input that a mempool transaction already spends
is a replacement attempt, as in Core v28 (full RBF, the default there):
`replacement.replacement_evictions` applies Core's rules and texts, and a
replacement that passes them evicts its conflicts and their descendants in
the same store transaction that adds it.  Package tests
(`allow_replacement=False`) refuse conflicts with
`bip125-replacement-disallowed`, as Core's testmempoolaccept does.

Chain limits are Core's: 25 ancestors and 25 descendants (each count
including the transaction itself), 101 kvB of ancestors and descendants;
a replacement with exactly one direct conflict gets one more descendant
and that conflict's descendant size as room (Core's RBF carve-out), since
what it replaces leaves.

Entries keep their parents and children inside the mempool, so removal of
a confirmed or conflicted transaction takes its descendants along where
needed, and mining can take entries in arrival order, which is already a
dependency order (a child can only arrive after its parents).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from btclib.tx.tx import Tx

from regtest.node.chainstate import ChainState
from regtest.node.errors import TxRejected
from regtest.node.params import (
    ANCESTOR_LIMIT,
    ANCESTOR_SIZE_LIMIT_VB,
    BLOCK_SCRIPT_FLAGS,
    DESCENDANT_LIMIT,
    DESCENDANT_SIZE_LIMIT_VB,
    MIN_RELAY_FEE_SAT_PER_KVB,
    MIN_STANDARD_TX_NONWITNESS_SIZE,
    STANDARD_SCRIPT_FLAGS,
)
from regtest.node.replacement import check_not_spending_conflicts, replacement_evictions
from regtest.node.storage import Outpoint
from regtest.node.validation import (
    Coin,
    check_sequence_locks,
    check_standard,
    check_standard_inputs,
    check_standard_sigops,
    check_transaction,
    check_tx_inputs,
    is_final,
    sigops_cost,
    txid_of,
    verify_scripts,
    wtxid_of,
)


@dataclass(slots=True)
class MempoolEntry:
    tx: Tx
    txid: bytes
    wtxid: bytes
    fee: int
    vsize: int
    weight: int
    time: int
    height: int
    seq: int
    parents: set[bytes] = field(default_factory=set)
    children: set[bytes] = field(default_factory=set)
    # what accepting this entry evicted (a replacement's conflicts and descendants)
    replaced: list[bytes] = field(default_factory=list)

    @property
    def bip125_signal(self) -> bool:
        return any(tx_in.sequence < 0xFFFFFFFE for tx_in in self.tx.vin)


def sigop_vsize(weight: int, sigops: int) -> int:
    """Core's GetVirtualTransactionSize with the default bytes-per-sigop (20)."""
    return (max(weight, sigops * 20) + 3) // 4


class Mempool:
    def __init__(self, chain: ChainState) -> None:
        self.chain = chain
        self.entries: dict[bytes, MempoolEntry] = {}
        self.by_wtxid: dict[bytes, bytes] = {}
        self.spenders: dict[Outpoint, bytes] = {}
        self._seq = 0

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.entries

    def coin(self, outpoint: Outpoint) -> Coin | None:
        """An output of a mempool tx, as a coin at height tip+1."""
        entry = self.entries.get(outpoint[0])
        if entry is None or outpoint[1] >= len(entry.tx.vout):
            return None
        tx_out = entry.tx.vout[outpoint[1]]
        return Coin(tx_out.value, tx_out.script_pub_key.script, self.chain.height + 1, False)

    def accept(
        self,
        tx: Tx,
        now: int,
        *,
        test_only: bool = False,
        bypass_limits: bool = False,
        allow_replacement: bool = True,
    ) -> MempoolEntry:
        """Validate `tx` for the mempool and (unless `test_only`) add it.

        A replacement that is accepted evicts what it replaces (not when
        `test_only`); `entry.replaced` lists the evicted txids.
        """
        chain = self.chain
        check_transaction(tx)
        if tx.is_coinbase:
            raise TxRejected("coinbase")
        check_standard(tx)
        if len(tx.serialize(include_witness=False, check_validity=False)) < (
            MIN_STANDARD_TX_NONWITNESS_SIZE
        ):
            raise TxRejected("tx-size-small")
        next_height = chain.height + 1
        if not is_final(tx, next_height, chain.tip.mtp):
            raise TxRejected("non-final")
        txid = txid_of(tx)
        wtxid = wtxid_of(tx)
        if wtxid in self.by_wtxid:
            raise TxRejected("txn-already-in-mempool")
        if txid in self.entries:
            raise TxRejected("txn-same-nonwitness-data-in-mempool")
        conflicts: set[bytes] = set()
        for tx_in in tx.vin:
            spender = self.spenders.get((tx_in.prev_out.tx_id, tx_in.prev_out.vout))
            if spender is not None:
                if not allow_replacement:
                    raise TxRejected("bip125-replacement-disallowed")
                conflicts.add(spender)
        coins: list[Coin] = []
        parents: set[bytes] = set()
        for tx_in in tx.vin:
            key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
            coin = chain.utxo.get(key)
            if coin is None:
                coin = self.coin(key)
                if coin is not None:
                    parents.add(key[0])
            if coin is None:
                if any((txid, n) in chain.utxo for n in range(len(tx.vout))):
                    raise TxRejected("txn-already-known")
                raise TxRejected("bad-txns-inputs-missingorspent", missing_inputs=True)
            coins.append(coin)
        if not check_sequence_locks(tx, coins, next_height, chain.tip.mtp, chain.mtp_at):
            raise TxRejected("non-BIP68-final")
        fee = check_tx_inputs(tx, coins, next_height)
        check_standard_inputs(tx, coins)
        sigops = sigops_cost(tx, coins)
        check_standard_sigops(tx, sigops)
        weight = tx.weight
        vsize = sigop_vsize(weight, sigops)
        if not bypass_limits:
            required = (vsize * MIN_RELAY_FEE_SAT_PER_KVB + 999) // 1000
            if fee < required:
                raise TxRejected("min relay fee not met", f"{fee} < {required}")
        ancestors = self.ancestors_of(parents)
        self._check_chain_limits(ancestors, vsize, conflicts)
        check_not_spending_conflicts(txid, ancestors, conflicts)
        evicted: set[bytes] = set()
        if conflicts:
            direct = [self.entries[conflict] for conflict in sorted(conflicts)]
            evicted = replacement_evictions(self, tx, txid, fee, vsize, direct)
        verify_scripts(tx, coins, STANDARD_SCRIPT_FLAGS, BLOCK_SCRIPT_FLAGS)
        self._seq += 1
        entry = MempoolEntry(
            tx, txid, wtxid, fee, vsize, weight, now, chain.height, self._seq, parents
        )
        entry.replaced = sorted(evicted)
        if not test_only:
            with chain.store.transaction():
                for victim in entry.replaced:
                    if victim in self.entries:
                        self.remove(victim)
                self._add(entry)
        return entry

    def _check_chain_limits(
        self, ancestors: set[bytes], vsize: int, conflicts: set[bytes]
    ) -> None:
        """Core's CalculateMemPoolAncestors limits, counts including the new tx."""
        descendant_limit = DESCENDANT_LIMIT
        descendant_size_limit = DESCENDANT_SIZE_LIMIT_VB
        if len(conflicts) == 1:
            # the RBF carve-out: what the one conflict takes along makes room
            (conflict,) = conflicts
            descendant_limit += 1
            descendant_size_limit += self.size_with_descendants(conflict)
        if len(ancestors) + 1 > ANCESTOR_LIMIT:
            raise TxRejected(
                "too-long-mempool-chain",
                f"too many unconfirmed ancestors [limit: {ANCESTOR_LIMIT}]",
            )
        ancestors_size = vsize
        for ancestor in sorted(ancestors):
            ancestors_size += self.entries[ancestor].vsize
            if self.size_with_descendants(ancestor) + vsize > descendant_size_limit:
                raise TxRejected(
                    "too-long-mempool-chain",
                    f"exceeds descendant size limit for tx {ancestor.hex()} "
                    f"[limit: {descendant_size_limit}]",
                )
            if len(self.descendants_of(ancestor)) + 1 + 1 > descendant_limit:
                raise TxRejected(
                    "too-long-mempool-chain",
                    f"too many descendants for tx {ancestor.hex()} [limit: {descendant_limit}]",
                )
            if ancestors_size > ANCESTOR_SIZE_LIMIT_VB:
                raise TxRejected(
                    "too-long-mempool-chain",
                    f"exceeds ancestor size limit [limit: {ANCESTOR_SIZE_LIMIT_VB}]",
                )

    def size_with_descendants(self, txid: bytes) -> int:
        """The vsize of `txid` and all its mempool descendants."""
        return self.entries[txid].vsize + sum(
            self.entries[d].vsize for d in self.descendants_of(txid)
        )

    def _add(self, entry: MempoolEntry) -> None:
        self.entries[entry.txid] = entry
        self.by_wtxid[entry.wtxid] = entry.txid
        for tx_in in entry.tx.vin:
            self.spenders[(tx_in.prev_out.tx_id, tx_in.prev_out.vout)] = entry.txid
        for parent in entry.parents:
            self.entries[parent].children.add(entry.txid)
        # scripts passed the standard flags, a superset of the block flags
        self.chain.script_cache.add(entry.wtxid)
        self.chain.store.mempool_add(
            entry.txid, entry.tx.serialize(True, check_validity=False), entry.time
        )

    def remove(self, txid: bytes) -> list[bytes]:
        """Remove `txid` and all its descendants; returns the removed txids."""
        removed = []
        for victim in [txid, *self.descendants_of(txid)]:
            entry = self.entries.pop(victim, None)
            if entry is None:
                continue
            removed.append(victim)
            del self.by_wtxid[entry.wtxid]
            for tx_in in entry.tx.vin:
                self.spenders.pop((tx_in.prev_out.tx_id, tx_in.prev_out.vout), None)
            for parent in entry.parents:
                if parent in self.entries:
                    self.entries[parent].children.discard(victim)
        self.chain.store.mempool_remove(removed)
        return removed

    def remove_for_block(self, txs: list[Tx]) -> None:
        """Drop what a connected block confirmed, and whatever it conflicts with."""
        for tx in txs[1:]:
            txid = txid_of(tx)
            entry = self.entries.pop(txid, None)
            if entry is not None:
                del self.by_wtxid[entry.wtxid]
                for tx_in in tx.vin:
                    self.spenders.pop((tx_in.prev_out.tx_id, tx_in.prev_out.vout), None)
                for child in entry.children:
                    if child in self.entries:
                        self.entries[child].parents.discard(txid)
            for tx_in in tx.vin:
                conflict = self.spenders.get((tx_in.prev_out.tx_id, tx_in.prev_out.vout))
                if conflict is not None and conflict != txid:
                    self.remove(conflict)

    def clear(self) -> list[MempoolEntry]:
        """Empty the mempool; returns the entries in arrival order."""
        old = sorted(self.entries.values(), key=lambda e: e.seq)
        self.entries.clear()
        self.by_wtxid.clear()
        self.spenders.clear()
        self.chain.store.mempool_clear()
        return old

    def ancestors_of(self, parents: set[bytes]) -> set[bytes]:
        seen: set[bytes] = set()
        stack = list(parents)
        while stack:
            txid = stack.pop()
            if txid in seen or txid not in self.entries:
                continue
            seen.add(txid)
            stack.extend(self.entries[txid].parents)
        return seen

    def descendants_of(self, txid: bytes) -> set[bytes]:
        seen: set[bytes] = set()
        stack = list(self.entries[txid].children) if txid in self.entries else []
        while stack:
            child = stack.pop()
            if child in seen or child not in self.entries:
                continue
            seen.add(child)
            stack.extend(self.entries[child].children)
        return seen

    def ordered(self) -> list[MempoolEntry]:
        """Entries in arrival order, which is a valid dependency order."""
        return sorted(self.entries.values(), key=lambda e: e.seq)
