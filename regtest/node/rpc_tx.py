"""Raw-transaction RPCs: getrawtransaction, decoderawtransaction,
sendrawtransaction, testmempoolaccept (bitcoind's processing order, §2.6-2.9)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from btclib.tx.tx import Tx

from regtest.node.errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_UTXO_SET,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    NodeRpcError,
    TxRejected,
)
from regtest.node.jsonfmt import tx_json
from regtest.node.params import (
    COIN,
    DEFAULT_MAX_FEE_RATE_SAT_PER_KVB,
    btc,
    sat_from_btc,
)
from regtest.node.rpc_methods import expect, parse_hash
from regtest.node.validation import txid_of

if TYPE_CHECKING:
    from regtest.node.node import Node

GENESIS_COINBASE = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


def decode_tx(hexstring: Any) -> Tx | None:
    """Core's DecodeHexTx: hex, then the extended (witness) serialization."""
    expect(hexstring, "string")
    try:
        data = bytes.fromhex(hexstring)
        tx = Tx.parse(data, check_validity=False)
    except Exception:
        return None
    if not tx.vin:
        return None
    return tx


def _max_fee_rate(value: Any) -> int:
    if value is None:
        return DEFAULT_MAX_FEE_RATE_SAT_PER_KVB
    try:
        rate = sat_from_btc(value)
    except ValueError as exc:
        raise NodeRpcError(-3, str(exc)) from None
    if rate >= COIN:
        raise NodeRpcError(
            RPC_INVALID_PARAMETER, "Fee rates larger than or equal to 1BTC/kvB are not accepted"
        )
    return rate


def getrawtransaction(node: Node, txid: Any, verbosity: Any = 0, blockhash: Any = None) -> Any:
    tx_hash = parse_hash(txid, "parameter 1")
    if txid == GENESIS_COINBASE:
        raise NodeRpcError(
            RPC_INVALID_ADDRESS_OR_KEY,
            "The genesis block coinbase is not considered an ordinary transaction and cannot be "
            "retrieved",
        )
    expect(verbosity, "number", "bool")
    level = int(verbosity)
    chain = node.chain
    block_entry = None
    if blockhash is not None:
        block_entry = chain.index.get(parse_hash(blockhash, "parameter 3"))
        if block_entry is None:
            raise NodeRpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
    tx = None
    if block_entry is None:
        mempool_entry = node.mempool.entries.get(tx_hash)
        if mempool_entry is not None:
            tx = mempool_entry.tx
        elif tx_hash in chain.txindex:
            block_entry = chain.index[chain.txindex[tx_hash]]
    position = -1
    if tx is None and block_entry is not None:
        block = chain.get_block(block_entry.hash)
        for i, candidate in enumerate(block.transactions):
            if txid_of(candidate) == tx_hash:
                tx, position = candidate, i
                break
    if tx is None:
        if blockhash is not None:
            message = (
                "No such transaction found in the provided block. Use gettransaction for "
                "wallet transactions."
            )
        else:
            message = (
                "No such mempool or blockchain transaction. Use gettransaction for wallet "
                "transactions."
            )
        raise NodeRpcError(RPC_INVALID_ADDRESS_OR_KEY, message)
    raw = tx.serialize(include_witness=True, check_validity=False).hex()
    if level <= 0:
        return raw
    fee = None
    prevouts = None
    if level >= 2 and block_entry is not None and position > 0:
        undo = chain.block_undo(block_entry.hash)
        block = chain.get_block(block_entry.hash)
        start = sum(len(t.vin) for t in block.transactions[1:position])
        prevouts = undo[start : start + len(tx.vin)]
        fee = sum(c.value for c in prevouts) - sum(o.value for o in tx.vout)
    body = tx_json(tx, fee_sat=fee, prevouts=prevouts)
    out: dict[str, Any] = {}
    if blockhash is not None and block_entry is not None:
        out["in_active_chain"] = chain.in_active_chain(block_entry)
    out.update(body)
    out["hex"] = raw
    if block_entry is not None:
        out["blockhash"] = block_entry.hash.hex()
        if chain.in_active_chain(block_entry):
            out["confirmations"] = chain.height - block_entry.height + 1
            out["time"] = block_entry.header.time
            out["blocktime"] = block_entry.header.time
        else:
            out["confirmations"] = 0
    return out


def decoderawtransaction(node: Node, hexstring: Any, iswitness: Any = None) -> Any:
    tx = decode_tx(hexstring)
    if tx is None:
        raise NodeRpcError(RPC_DESERIALIZATION_ERROR, "TX decode failed")
    return tx_json(tx)


def sendrawtransaction(
    node: Node, hexstring: Any, maxfeerate: Any = None, maxburnamount: Any = None
) -> str:
    tx = decode_tx(hexstring)
    if tx is None:
        raise NodeRpcError(
            RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input."
        )
    max_rate = _max_fee_rate(maxfeerate)
    max_burn = 0 if maxburnamount is None else sat_from_btc(maxburnamount)
    for tx_out in tx.vout:
        script = tx_out.script_pub_key.script
        if script[:1] == b"\x6a" and tx_out.value > max_burn:
            raise NodeRpcError(
                RPC_VERIFY_ERROR,
                "Unspendable output exceeds maximum configured by user (maxburnamount)",
            )
    txid = txid_of(tx)
    if any((txid, n) in node.chain.utxo for n in range(len(tx.vout))):
        raise NodeRpcError(
            RPC_VERIFY_ALREADY_IN_UTXO_SET, "Transaction outputs already in utxo set"
        )
    if txid in node.mempool.entries:
        return txid.hex()
    try:
        entry = node.mempool.accept(tx, node.clock(), test_only=True)
        if max_rate and entry.fee * 1000 > max_rate * entry.vsize:
            raise NodeRpcError(
                RPC_VERIFY_ERROR,
                "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
            )
        node.mempool.accept(tx, node.clock())
    except TxRejected as exc:
        code = RPC_VERIFY_ERROR if exc.missing_inputs else RPC_VERIFY_REJECTED
        raise NodeRpcError(code, exc.text) from None
    return txid.hex()


def testmempoolaccept(node: Node, rawtxs: Any, maxfeerate: Any = None) -> Any:
    expect(rawtxs, "array")
    if not 1 <= len(rawtxs) <= 25:
        raise NodeRpcError(
            RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions."
        )
    max_rate = _max_fee_rate(maxfeerate)
    txs = []
    for raw in rawtxs:
        tx = decode_tx(raw)
        if tx is None:
            raise NodeRpcError(
                RPC_DESERIALIZATION_ERROR,
                f"TX decode failed: {raw} Make sure the tx has at least one input.",
            )
        txs.append(tx)
    if len(txs) > 1:
        return _test_package(node, txs, max_rate)
    tx = txs[0]
    result: dict[str, Any] = {"txid": txid_of(tx).hex(), "wtxid": ""}
    from regtest.node.validation import wtxid_of

    result["wtxid"] = wtxid_of(tx).hex()
    try:
        entry = node.mempool.accept(tx, node.clock(), test_only=True)
    except TxRejected as exc:
        result["allowed"] = False
        result["reject-reason"] = "missing-inputs" if exc.missing_inputs else exc.reason
        return [result]
    if max_rate and entry.fee * 1000 > max_rate * entry.vsize:
        result["allowed"] = False
        result["reject-reason"] = "max-fee-exceeded"
        return [result]
    result["allowed"] = True
    result["vsize"] = entry.vsize
    result["fees"] = {
        "base": btc(entry.fee),
        "effective-feerate": btc(entry.fee * 1000 // entry.vsize),
        "effective-includes": [entry.wtxid.hex()],
    }
    return [result]


def _test_package(node: Node, txs: list[Tx], max_rate: int) -> list[dict[str, Any]]:
    """A package is judged by accepting it in order into a scratch copy of the mempool."""
    from regtest.node.validation import wtxid_of

    results: list[dict[str, Any]] = []
    accepted: list[bytes] = []
    failed = False
    try:
        with node.store.transaction():
            for tx in txs:
                item: dict[str, Any] = {"txid": txid_of(tx).hex(), "wtxid": wtxid_of(tx).hex()}
                results.append(item)
                if failed:
                    continue
                try:
                    entry = node.mempool.accept(tx, node.clock(), allow_replacement=False)
                except TxRejected as exc:
                    failed = True
                    item["package-error"] = "package-not-validated"
                    item["allowed"] = False
                    item["reject-reason"] = "missing-inputs" if exc.missing_inputs else exc.reason
                    continue
                accepted.append(entry.txid)
                item["allowed"] = True
                item["vsize"] = entry.vsize
                item["fees"] = {
                    "base": btc(entry.fee),
                    "effective-feerate": btc(entry.fee * 1000 // entry.vsize),
                    "effective-includes": [entry.wtxid.hex()],
                }
                if max_rate and entry.fee * 1000 > max_rate * entry.vsize:
                    item["allowed"] = False
                    item["reject-reason"] = "max-fee-exceeded"
            raise _Rollback
    except _Rollback:
        pass
    for txid in reversed(accepted):
        node.mempool.remove(txid)
    return results


class _Rollback(Exception):
    """Undo the scratch acceptance of a package in the store."""


METHODS: dict[str, tuple[Any, list[str]]] = {
    "getrawtransaction": (getrawtransaction, ["txid", "verbosity", "blockhash"]),
    "decoderawtransaction": (decoderawtransaction, ["hexstring", "iswitness"]),
    "sendrawtransaction": (sendrawtransaction, ["hexstring", "maxfeerate", "maxburnamount"]),
    "testmempoolaccept": (testmempoolaccept, ["rawtxs", "maxfeerate"]),
}
