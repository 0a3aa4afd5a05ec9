"""The node: chain state, mempool and wallet behind one lock, plus mining.

`Node` is the in-process API (others code against it):

    node = Node(datadir, clock=...)      # opens or creates <datadir>/regtest/
    node.call("getblockcount")           # exactly bitcoind's JSON-RPC result
    node.mine(n, address=None)           # block hashes
    node.new_address(); node.send_to_script(script, amount_sat); node.close()

Every public method takes `self.lock`, so the threaded RPC server and test
code can share one node.  Reorgs (invalidateblock, reconsiderblock) hand the
transactions of disconnected blocks back to the mempool, followed by the
previous mempool contents, all re-validated against the new tip (Core's
MaybeUpdateMempoolForReorg, with fee limits bypassed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from btclib.block.block import Block
from btclib.script.script_pub_key import ScriptPubKey
from btclib.tx.tx import Tx

from regtest.node.blocks import (
    ZERO_HASH,
    Header,
    add_commitment,
    build_coinbase,
    grind,
    make_block,
    merkle_root,
)
from regtest.node.chainstate import ChainState
from regtest.node.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_INSUFFICIENT_FUNDS,
    NodeRpcError,
    TxRejected,
)
from regtest.node.mempool import Mempool, MempoolEntry
from regtest.node.params import (
    BLOCK_VERSION,
    MAX_BLOCK_WEIGHT,
    MIN_RELAY_FEE_SAT_PER_KVB,
    POW_LIMIT_BITS,
    block_subsidy,
)
from regtest.node.storage import Store
from regtest.node.validation import txid_of, wtxid_of
from regtest.node.wallet import Wallet, WalletError


def script_from_address(address: str) -> bytes:
    """Decode a regtest address (bcrt1..., or base58 m/n/2) to its scriptPubKey."""
    try:
        spk = ScriptPubKey.from_address(address)
    except Exception as exc:
        raise ValueError(address) from exc
    if address.lower().startswith("bcrt1"):
        return bytes(spk.script)
    if spk.type in ("p2pkh", "p2sh") and spk.network in ("testnet", "regtest", "signet"):
        return bytes(spk.script)
    raise ValueError(address)


class Node:
    def __init__(self, datadir: Path, *, clock: Callable[[], int] | None = None) -> None:
        self.datadir = Path(datadir)
        self.netdir = self.datadir / "regtest"
        self.netdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.clock: Callable[[], int] = clock or (lambda: int(time.time()))
        self.lock = threading.RLock()
        self.store = Store(self.netdir / "chainstate.sqlite")
        self.chain = ChainState(self.store, self.clock)
        self.mempool = Mempool(self.chain)
        self.wallet = Wallet(self.netdir, self.chain, self.mempool)
        self.started_at = time.monotonic()
        self.stop_requested = threading.Event()
        # A crash in the middle of a reorg (one store transaction per block) can
        # leave a more-work valid chain inactive: activate it, as bitcoind does
        # on start-up, before the saved mempool is re-validated against the tip.
        disconnected, connected = self.chain.activate_best_chain()
        self._reload_mempool()
        if disconnected:
            self.after_reorg(disconnected, connected)
        from regtest.node.rpc_methods import RpcMethods  # late: it imports this module

        self._rpc = RpcMethods(self)

    def _reload_mempool(self) -> None:
        from btclib.tx.tx import Tx as _Tx

        rows = self.store.mempool_rows()
        with self.store.transaction():
            self.store.mempool_clear()
            for raw, entry_time in rows:
                try:
                    tx = _Tx.parse(raw, check_validity=False)
                    self.mempool.accept(tx, entry_time, bypass_limits=True)
                except Exception:
                    continue

    # --- the public in-process API ----------------------------------------------
    def call(self, method: str, *params: Any) -> Any:
        """Run one JSON-RPC method with positional params; returns its result."""
        with self.lock:
            return self._rpc.dispatch(method, list(params))

    def call_named(self, method: str, params: list[Any] | dict[str, Any]) -> Any:
        with self.lock:
            return self._rpc.dispatch(method, params)

    def mine(self, nblocks: int, address: str | None = None) -> list[str]:
        with self.lock:
            if address is None:
                address = self.wallet.new_address()
            script = script_from_address(address)
            return [self.generate_block(script).hex() for _ in range(nblocks)]

    def new_address(self) -> str:
        with self.lock:
            return self.wallet.new_address()

    def send_to_script(self, script_pub_key: bytes, amount_sat: int) -> tuple[str, int]:
        with self.lock:
            try:
                tx, vout = self.wallet.create_spend(script_pub_key, amount_sat)
            except WalletError as exc:
                raise NodeRpcError(RPC_WALLET_INSUFFICIENT_FUNDS, str(exc)) from exc
            try:
                self.mempool.accept(tx, self.clock())
            except TxRejected as exc:
                code = RPC_VERIFY_ERROR if exc.missing_inputs else RPC_VERIFY_REJECTED
                raise NodeRpcError(code, exc.text) from exc
            return txid_of(tx).hex(), vout

    def store_size(self) -> int:
        return sum(p.stat().st_size for p in self.netdir.glob("chainstate.sqlite*"))

    def close(self) -> None:
        with self.lock:
            self.store.close()

    # --- mining ---------------------------------------------------------------------
    def block_time(self) -> int:
        return max(self.clock(), self.chain.tip.mtp + 1)

    def assemble(self, script_pub_key: bytes, txs: list[Tx] | None = None) -> Block:
        """Build and solve a block on the tip: given txs, or the mempool's in order."""
        if txs is None:
            txs, fees = self._select_from_mempool()
        else:
            fees = max(self._fees_of(txs), 0)
        height = self.chain.height + 1
        coinbase = build_coinbase(height, script_pub_key, block_subsidy(height) + fees)
        add_commitment(coinbase, [ZERO_HASH, *(wtxid_of(t) for t in txs)])
        all_txs = [coinbase, *txs]
        root, _ = merkle_root([txid_of(t) for t in all_txs])
        header = Header(
            BLOCK_VERSION, self.chain.tip.hash, root, self.block_time(), POW_LIMIT_BITS, 0
        )
        return make_block(grind(header), all_txs)

    def _select_from_mempool(self) -> tuple[list[Tx], int]:
        chosen: list[MempoolEntry] = []
        chosen_ids: set[bytes] = set()
        weight = 4000  # room for the header and coinbase
        for entry in self.mempool.ordered():
            if any(p not in chosen_ids for p in entry.parents):
                continue
            if entry.fee * 1000 < entry.vsize * MIN_RELAY_FEE_SAT_PER_KVB:
                continue  # below -blockmintxfee
            if weight + entry.weight > MAX_BLOCK_WEIGHT:
                continue
            chosen.append(entry)
            chosen_ids.add(entry.txid)
            weight += entry.weight
        return [e.tx for e in chosen], sum(e.fee for e in chosen)

    def generate_block(self, script_pub_key: bytes, txs: list[Tx] | None = None) -> bytes:
        """Mine one block to `script_pub_key` and connect it; returns its hash.

        Raises TxRejected (Core's block reject reason) when `txs` make it invalid.
        """
        block = self.assemble(script_pub_key, txs)
        with self.store.transaction():
            entry = self.chain.add_block(block)
            self.mempool.remove_for_block(block.transactions)
        return entry.hash

    def _fees_of(self, txs: list[Tx]) -> int:
        created: dict[tuple[bytes, int], int] = {}
        fees = 0
        for tx in txs:
            txid = txid_of(tx)
            value_in = 0
            for tx_in in tx.vin:
                key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
                coin = self.chain.utxo.get(key)
                if coin is not None:
                    value_in += coin.value
                elif key in created:
                    value_in += created[key]
                else:
                    mempool_coin = self.mempool.coin(key)
                    value_in += mempool_coin.value if mempool_coin else 0
            fees += value_in - sum(o.value for o in tx.vout)
            for n, tx_out in enumerate(tx.vout):
                created[(txid, n)] = tx_out.value
        return fees

    # --- reorgs -------------------------------------------------------------------------
    def after_reorg(self, disconnected: list[Block], connected: list[Block]) -> None:
        """Re-validate disconnected txs and the old mempool against the new tip."""
        with self.store.transaction():
            old = self.mempool.clear()
            confirmed = {txid_of(tx) for block in connected for tx in block.transactions}
            candidates: list[tuple[Tx, int]] = []
            for block in reversed(disconnected):  # oldest block first
                candidates.extend((tx, self.clock()) for tx in block.transactions[1:])
            candidates.extend((e.tx, e.time) for e in old)
            for tx, entry_time in candidates:
                if txid_of(tx) in confirmed:
                    continue
                try:
                    self.mempool.accept(tx, entry_time, bypass_limits=True)
                except TxRejected:
                    continue

    def find_block(self, block_hash_hex: str) -> Any:
        entry = self.chain.index.get(bytes.fromhex(block_hash_hex))
        if entry is None:
            raise NodeRpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return entry
