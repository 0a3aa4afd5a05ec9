"""Chain state: block index, active chain, UTXO set, tx index; block connection.

Theory of operation.  Every block the node has accepted is in `index` (an
`IndexEntry` per block hash, kept in memory, its bytes in the store).  The
active chain is `chain`, a list of hashes by height.  The UTXO set and the
tx index describe exactly the active chain and live both in memory (for
speed) and in the store (for restart); they change only in `_connect` and
`_disconnect_tip`, and each of those is one store transaction, so memory and
disk move together block by block.

Connecting a block first validates it completely against the current tip
without touching any state (`validate_block`, Core's CheckBlock +
ContextualCheckBlock + ConnectBlock rules), then applies it.  Scripts of a
transaction the mempool already verified under the standard flags (a
superset of the block flags) are not run again: `script_cache` is Core's
script execution cache, keyed by wtxid.

`activate_best_chain` moves the tip to the valid block with the most work
(ties to the block seen first), disconnecting to the fork and connecting up;
`invalidateblock` and `reconsiderblock` are flag changes followed by it.
The caller (the node) puts the transactions of disconnected blocks back into
the mempool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from btclib.block.block import Block
from btclib.block.genesis import genesis_block

from regtest.node.blocks import (
    Header,
    find_commitment,
    header_of,
    merkle_root,
    parse_block,
    serialize_block,
    target_from_bits,
    witness_commitment,
)
from regtest.node.errors import TxRejected
from regtest.node.params import (
    BLOCK_SCRIPT_FLAGS,
    BLOCK_WORK,
    MAX_BLOCK_SIGOPS_COST,
    MAX_BLOCK_WEIGHT,
    MAX_FUTURE_BLOCK_TIME,
    MEDIAN_TIME_SPAN,
    POW_LIMIT_BITS,
    block_subsidy,
)
from regtest.node.storage import Outpoint, Store
from regtest.node.validation import (
    Coin,
    check_sequence_locks,
    check_transaction,
    check_tx_inputs,
    is_final,
    sigops_cost,
    txid_of,
    verify_scripts,
    wtxid_of,
)


@dataclass(slots=True)
class IndexEntry:
    """One known block: header, height, work, validity, median time past."""

    hash: bytes
    header: Header
    height: int
    seq: int
    chainwork: int
    mtp: int
    invalid: bool = False


class ChainState:
    def __init__(self, store: Store, clock: Callable[[], int]) -> None:
        self.store = store
        self.clock = clock
        self.index: dict[bytes, IndexEntry] = {}
        self.chain: list[bytes] = []
        self.script_cache: set[bytes] = set()
        rows = store.block_rows()
        if not rows:
            self._init_genesis()
            rows = store.block_rows()
        for block_hash, _prev, height, seq, invalid, header_bytes in rows:
            header = Header.parse(header_bytes)
            prev_entry = self.index.get(header.prev)
            work = (prev_entry.chainwork if prev_entry else 0) + BLOCK_WORK
            entry = IndexEntry(block_hash, header, height, seq, work, 0, bool(invalid))
            entry.mtp = self._mtp_for(entry)
            self.index[block_hash] = entry
        self.chain = store.chain_hashes()
        self._seq = max((e.seq for e in self.index.values()), default=0)
        self.utxo: dict[Outpoint, Coin] = store.utxos()
        self.txindex: dict[bytes, bytes] = store.txindex()

    def _init_genesis(self) -> None:
        block = genesis_block("regtest")
        data = serialize_block(block)
        block_hash = header_of(block).hash
        with self.store.transaction():
            self.store.put_block(block_hash, b"\x00" * 32, 0, 0, data)
            # the genesis coinbase is not spendable and not in the UTXO set
            self.store.connect(block_hash, 0, [], [], [], [])

    # --- reading ------------------------------------------------------------------
    @property
    def tip(self) -> IndexEntry:
        return self.index[self.chain[-1]]

    @property
    def height(self) -> int:
        return len(self.chain) - 1

    def in_active_chain(self, entry: IndexEntry) -> bool:
        return entry.height < len(self.chain) and self.chain[entry.height] == entry.hash

    def mtp_at(self, height: int) -> int:
        return self.index[self.chain[height]].mtp

    def _mtp_for(self, entry: IndexEntry) -> int:
        times: list[int] = []
        cursor: IndexEntry | None = entry
        while cursor is not None and len(times) < MEDIAN_TIME_SPAN:
            times.append(cursor.header.time)
            cursor = self.index.get(cursor.header.prev)
        times.sort()
        return times[len(times) // 2]

    def get_block(self, block_hash: bytes) -> Block:
        data = self.store.block_data(block_hash)
        if data is None:
            raise KeyError(block_hash.hex())
        return parse_block(data)

    def get_block_bytes(self, block_hash: bytes) -> bytes:
        data = self.store.block_data(block_hash)
        if data is None:
            raise KeyError(block_hash.hex())
        return data

    def block_undo(self, block_hash: bytes) -> list[Coin]:
        return self.store.block_undo(block_hash)

    # --- validation -------------------------------------------------------------------
    def validate_block(self, block: Block, prev: IndexEntry) -> tuple[list[Coin], list[bytes]]:
        """All consensus rules for `block` on top of `prev` (which must be the tip).

        Returns the spent coins (undo data, in spending order) and the txids.
        Raises TxRejected with Core's block reject reason.
        """
        header = header_of(block)
        height = prev.height + 1
        # header checks (CheckBlockHeader, ContextualCheckBlockHeader)
        if header.bits != POW_LIMIT_BITS:
            raise TxRejected("bad-diffbits", "incorrect proof of work")
        if int.from_bytes(header.hash, "big") > target_from_bits(header.bits):
            raise TxRejected("high-hash", "proof of work failed")
        if header.time <= prev.mtp:
            raise TxRejected("time-too-old", "block's timestamp is too early")
        if header.time > self.clock() + MAX_FUTURE_BLOCK_TIME:
            raise TxRejected("time-too-new", "block timestamp too far in the future")
        if header.version < 4:
            raise TxRejected(
                f"bad-version(0x{header.version & 0xFFFFFFFF:08x})", "rejected nVersion block"
            )
        txs = block.transactions
        # CheckBlock
        txids = [txid_of(tx) for tx in txs]
        root, mutated = merkle_root(txids)
        if root != header.merkle_root:
            raise TxRejected("bad-txnmrklroot", "hashMerkleRoot mismatch")
        if mutated:
            raise TxRejected("bad-txns-duplicate", "duplicate transaction")
        if not txs or not txs[0].is_coinbase:
            raise TxRejected("bad-cb-missing", "first tx is not coinbase")
        if any(tx.is_coinbase for tx in txs[1:]):
            raise TxRejected("bad-cb-multiple", "more than one coinbase")
        for tx, txid in zip(txs, txids, strict=True):
            try:
                check_transaction(tx)
            except TxRejected as exc:
                raise TxRejected(
                    exc.reason,
                    f"Transaction check failed (tx hash {txid.hex()}) {exc.debug}".rstrip(),
                ) from exc
        # ContextualCheckBlock
        for tx in txs:
            if not is_final(tx, height, prev.mtp):
                raise TxRejected("bad-txns-nonfinal", "non-final transaction")
        expected_sig = _height_push(height)
        if txs[0].vin[0].script_sig[: len(expected_sig)] != expected_sig:
            raise TxRejected("bad-cb-height", "block height mismatch in coinbase")
        commitment = find_commitment(txs[0])
        if commitment is not None:
            stack = txs[0].vin[0].script_witness.stack
            if len(stack) != 1 or len(stack[0]) != 32:
                raise TxRejected("bad-witness-nonce-size", "invalid witness reserved value size")
            wtxids = [wtxid_of(tx) for tx in txs]
            if witness_commitment(wtxids, bytes(stack[0])) != commitment:
                raise TxRejected("bad-witness-merkle-match", "witness merkle commitment mismatch")
        elif any(tx.is_segwit for tx in txs):
            raise TxRejected("unexpected-witness", "unexpected witness data found")
        if block.weight > MAX_BLOCK_WEIGHT:
            raise TxRejected("bad-blk-weight", "weight limit failed")
        # ConnectBlock
        created: dict[Outpoint, Coin] = {}
        spent: set[Outpoint] = set()
        undo: list[Coin] = []
        fees = 0
        sigops = 0
        for i, (tx, txid) in enumerate(zip(txs, txids, strict=True)):
            coins: list[Coin] = []
            if i > 0:
                for tx_in in tx.vin:
                    key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
                    coin = created.get(key) or self.utxo.get(key)
                    if coin is None or key in spent:
                        raise TxRejected(
                            "bad-txns-inputs-missingorspent",
                            f"CheckTxInputs: inputs missing/spent in transaction {txid.hex()}",
                        )
                    coins.append(coin)
                fees += check_tx_inputs(tx, coins, height)
                if not check_sequence_locks(tx, coins, height, prev.mtp, self.mtp_at):
                    raise TxRejected("bad-txns-nonfinal", "contains a non-BIP68-final transaction")
            sigops += sigops_cost(tx, coins)
            if sigops > MAX_BLOCK_SIGOPS_COST:
                raise TxRejected("bad-blk-sigops", "too many sigops")
            if i > 0:
                if wtxid_of(tx) not in self.script_cache:
                    verify_scripts(tx, coins, BLOCK_SCRIPT_FLAGS)
                for tx_in, coin in zip(tx.vin, coins, strict=True):
                    spent.add((tx_in.prev_out.tx_id, tx_in.prev_out.vout))
                    undo.append(coin)
            for n, tx_out in enumerate(tx.vout):
                created[(txid, n)] = Coin(
                    tx_out.value, tx_out.script_pub_key.script, height, i == 0
                )
        reward = block_subsidy(height) + fees
        if sum(o.value for o in txs[0].vout) > reward:
            raise TxRejected("bad-cb-amount", "coinbase pays too much")
        return undo, txids

    # --- changing the chain -----------------------------------------------------------
    def add_block(self, block: Block) -> IndexEntry:
        """Validate `block` on the tip, store it and connect it (one transaction)."""
        prev = self.tip
        header = header_of(block)
        if header.prev != prev.hash:
            raise TxRejected("bad-prevblk", "block does not connect to the tip")
        undo, txids = self.validate_block(block, prev)
        entry = IndexEntry(
            header.hash, header, prev.height + 1, self._next_seq(), prev.chainwork + BLOCK_WORK, 0
        )
        entry.mtp = self._mtp_for_new(entry, prev)
        with self.store.transaction():
            self.store.put_block(
                entry.hash, header.prev, entry.height, entry.seq, serialize_block(block)
            )
            self._apply_connect(entry, block, undo, txids)
        self.index[entry.hash] = entry
        return entry

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _mtp_for_new(self, entry: IndexEntry, prev: IndexEntry) -> int:
        times = [entry.header.time]
        cursor: IndexEntry | None = prev
        while cursor is not None and len(times) < MEDIAN_TIME_SPAN:
            times.append(cursor.header.time)
            cursor = self.index.get(cursor.header.prev)
        times.sort()
        return times[len(times) // 2]

    def _apply_connect(
        self, entry: IndexEntry, block: Block, undo: list[Coin], txids: list[bytes]
    ) -> None:
        spent: list[Outpoint] = []
        created: list[tuple[Outpoint, Coin]] = []
        for i, (tx, txid) in enumerate(zip(block.transactions, txids, strict=True)):
            if i > 0:
                for tx_in in tx.vin:
                    key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
                    spent.append(key)
            for n, tx_out in enumerate(tx.vout):
                script = tx_out.script_pub_key.script
                if script[:1] == b"\x6a":
                    continue  # provably unspendable: never enters the UTXO set
                created.append(((txid, n), Coin(tx_out.value, script, entry.height, i == 0)))
        # outputs spent inside the same block never reach the UTXO set
        created_keys = {k for k, _ in created}
        spent_set = set(spent)
        created = [(k, c) for k, c in created if k not in spent_set]
        spent_outside = [k for k in spent if k not in created_keys]
        self.store.connect(entry.hash, entry.height, undo, spent_outside, created, txids)
        for key in spent_outside:
            del self.utxo[key]
        for key, coin in created:
            self.utxo[key] = coin
        for txid in txids:
            self.txindex[txid] = entry.hash
        self.chain.append(entry.hash)

    def disconnect_tip(self) -> Block:
        """Undo the tip block (one store transaction); returns it."""
        entry = self.tip
        block = self.get_block(entry.hash)
        undo = self.store.block_undo(entry.hash)
        txids = [txid_of(tx) for tx in block.transactions]
        removed: list[Outpoint] = []
        restored: list[tuple[Outpoint, Coin]] = []
        created_here = set()
        for tx, txid in zip(block.transactions, txids, strict=True):
            for n in range(len(tx.vout)):
                removed.append((txid, n))
                created_here.add((txid, n))
        pos = 0
        for tx in block.transactions[1:]:
            for tx_in in tx.vin:
                key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
                if key not in created_here:
                    restored.append((key, undo[pos]))
                pos += 1
        with self.store.transaction():
            self.store.disconnect(entry.height, restored, removed, txids)
        for key in removed:
            self.utxo.pop(key, None)
        for key, coin in restored:
            self.utxo[key] = coin
        for txid in txids:
            self.txindex.pop(txid, None)
        self.chain.pop()
        return block

    def _connect_known(self, entry: IndexEntry) -> Block:
        block = self.get_block(entry.hash)
        undo, txids = self.validate_block(block, self.tip)
        with self.store.transaction():
            self._apply_connect(entry, block, undo, txids)
        return block

    def _chain_invalid(self, entry: IndexEntry) -> bool:
        cursor: IndexEntry | None = entry
        while cursor is not None:
            if cursor.invalid:
                return True
            if self.in_active_chain(cursor):
                return False
            cursor = self.index.get(cursor.header.prev)
        return False

    def activate_best_chain(self) -> tuple[list[Block], list[Block]]:
        """Reorganize to the most-work valid chain; returns (disconnected, connected)."""
        disconnected: list[Block] = []
        connected: list[Block] = []
        while True:
            candidates = [e for e in self.index.values() if not self._chain_invalid(e)]
            best = max(candidates, key=lambda e: (e.chainwork, -e.seq))
            if best.hash == self.tip.hash or best.chainwork <= self.tip.chainwork:
                return disconnected, connected
            path = []
            cursor = best
            while not self.in_active_chain(cursor):
                path.append(cursor)
                cursor = self.index[cursor.header.prev]
            while self.tip.hash != cursor.hash:
                disconnected.append(self.disconnect_tip())
            for entry in reversed(path):
                try:
                    connected.append(self._connect_known(entry))
                except TxRejected:
                    self._set_invalid(entry, True)
                    break

    def _set_invalid(self, entry: IndexEntry, invalid: bool) -> None:
        entry.invalid = invalid
        with self.store.transaction():
            self.store.set_invalid(entry.hash, invalid)

    def invalidate(self, entry: IndexEntry) -> tuple[list[Block], list[Block]]:
        disconnected: list[Block] = []
        while self.in_active_chain(entry) and entry.height > 0:
            disconnected.append(self.disconnect_tip())
        self._set_invalid(entry, True)
        more_disconnected, connected = self.activate_best_chain()
        return disconnected + more_disconnected, connected

    def reconsider(self, entry: IndexEntry) -> tuple[list[Block], list[Block]]:
        for other in self.index.values():
            if other.invalid and (
                self._is_ancestor(other, entry) or self._is_ancestor(entry, other)
            ):
                self._set_invalid(other, False)
        return self.activate_best_chain()

    def _is_ancestor(self, ancestor: IndexEntry, entry: IndexEntry) -> bool:
        cursor: IndexEntry | None = entry
        while cursor is not None and cursor.height >= ancestor.height:
            if cursor.hash == ancestor.hash:
                return True
            cursor = self.index.get(cursor.header.prev)
        return False


def _height_push(height: int) -> bytes:
    """`CScript() << height` (BIP34 prefix of the coinbase scriptSig)."""
    if height == 0:
        return b"\x00"
    if 1 <= height <= 16:
        return bytes([0x50 + height])
    num = height.to_bytes((height.bit_length() + 8) // 8, "little")
    return bytes([len(num)]) + num
