"""Blockchain, mining, mempool-query and control RPCs (bitcoind's names and shapes)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from regtest.node.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ERROR,
    NodeRpcError,
    TxRejected,
)
from regtest.node.jsonfmt import difficulty, header_json, script_pub_key_json, tx_json
from regtest.node.params import (
    POW_LIMIT_BITS,
    btc,
)
from regtest.node.rpc_methods import expect, parse_hash

if TYPE_CHECKING:
    from regtest.node.chainstate import IndexEntry
    from regtest.node.mempool import MempoolEntry
    from regtest.node.node import Node


def _entry_json(node: Node, entry: IndexEntry, n_tx: int) -> dict[str, Any]:
    chain = node.chain
    active = chain.in_active_chain(entry)
    next_hash = chain.chain[entry.height + 1] if active and entry.height < chain.height else None
    return header_json(
        entry.header,
        block_hash=entry.hash,
        height=entry.height,
        confirmations=chain.height - entry.height + 1 if active else -1,
        mtp=entry.mtp,
        chainwork=entry.chainwork,
        n_tx=n_tx,
        next_hash=next_hash,
    )


def _lookup(node: Node, value: Any, name: str) -> IndexEntry:
    entry = node.chain.index.get(parse_hash(value, name))
    if entry is None:
        raise NodeRpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
    return entry


def getblockchaininfo(node: Node) -> dict[str, Any]:
    chain = node.chain
    tip = chain.tip
    return {
        "chain": "regtest",
        "blocks": chain.height,
        "headers": chain.height,
        "bestblockhash": tip.hash.hex(),
        "difficulty": difficulty(POW_LIMIT_BITS),
        "time": tip.header.time,
        "mediantime": tip.mtp,
        "verificationprogress": 1,
        "initialblockdownload": tip.header.time < node.clock() - 24 * 60 * 60,
        "chainwork": f"{tip.chainwork:064x}",
        "size_on_disk": node.store_size(),
        "pruned": False,
        "warnings": [],
    }


def getblockcount(node: Node) -> int:
    return node.chain.height


def getbestblockhash(node: Node) -> str:
    return node.chain.tip.hash.hex()


def getblockhash(node: Node, height: Any) -> str:
    expect(height, "number")
    if not 0 <= height <= node.chain.height:
        raise NodeRpcError(RPC_INVALID_PARAMETER, "Block height out of range")
    return node.chain.chain[int(height)].hex()


def getblockheader(node: Node, blockhash: Any, verbose: Any = True) -> Any:
    entry = _lookup(node, blockhash, "hash")
    expect(verbose, "bool")
    if not verbose:
        return entry.header.serialize().hex()
    block = node.chain.get_block(entry.hash)
    return _entry_json(node, entry, len(block.transactions))


def getblock(node: Node, blockhash: Any, verbosity: Any = 1) -> Any:
    entry = _lookup(node, blockhash, "blockhash")
    expect(verbosity, "number", "bool")
    level = int(verbosity)
    if level <= 0:
        return node.chain.get_block_bytes(entry.hash).hex()
    block = node.chain.get_block(entry.hash)
    out = _entry_json(node, entry, len(block.transactions))
    out["strippedsize"] = block.stripped_size
    out["size"] = block.size
    out["weight"] = block.weight
    if level == 1:
        out["tx"] = [tx_json(tx)["txid"] for tx in block.transactions]
        return out
    undo = node.chain.block_undo(entry.hash)
    items = []
    pos = 0
    for i, tx in enumerate(block.transactions):
        fee = None
        prevouts = None
        if i > 0 and undo:
            coins = undo[pos : pos + len(tx.vin)]
            pos += len(tx.vin)
            fee = sum(c.value for c in coins) - sum(o.value for o in tx.vout)
            prevouts = coins if level >= 3 else None
        item = tx_json(tx, fee_sat=fee, prevouts=prevouts)
        item["hex"] = tx.serialize(include_witness=True, check_validity=False).hex()
        items.append(item)
    out["tx"] = items
    return out


def invalidateblock(node: Node, blockhash: Any) -> None:
    entry = _lookup(node, blockhash, "blockhash")
    disconnected, connected = node.chain.invalidate(entry)
    node.after_reorg(disconnected, connected)


def reconsiderblock(node: Node, blockhash: Any) -> None:
    entry = _lookup(node, blockhash, "blockhash")
    disconnected, connected = node.chain.reconsider(entry)
    node.after_reorg(disconnected, connected)


def _output_script(output: Any, message: str) -> bytes:
    from regtest.node.node import script_from_address

    expect(output, "string")
    try:
        return script_from_address(output)
    except ValueError:
        raise NodeRpcError(RPC_INVALID_ADDRESS_OR_KEY, message) from None


def generatetoaddress(node: Node, nblocks: Any, address: Any, maxtries: Any = 1000000) -> Any:
    expect(nblocks, "number")
    script = _output_script(address, "Error: Invalid address")
    return [node.generate_block(script).hex() for _ in range(int(nblocks))]


def generateblock(node: Node, output: Any, transactions: Any, submit: Any = True) -> Any:
    from btclib.tx.tx import Tx

    script = _output_script(output, "Error: Invalid address or descriptor")
    expect(transactions, "array")
    txs = []
    for item in transactions:
        expect(item, "string")
        txid = None
        if len(item) == 64:
            try:
                txid = bytes.fromhex(item)
            except ValueError:
                txid = None
        if txid is not None:
            entry = node.mempool.entries.get(txid)
            if entry is None:
                raise NodeRpcError(
                    RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool."
                )
            txs.append(entry.tx)
            continue
        try:
            txs.append(Tx.parse(bytes.fromhex(item), check_validity=False))
        except Exception:
            raise NodeRpcError(
                -22,
                f"Transaction decode failed for {item}. Make sure the tx has at least one input.",
            ) from None
    expect(submit, "bool")
    if not submit:
        block = node.assemble(script, txs)
        try:
            node.chain.validate_block(block, node.chain.tip)
        except TxRejected as exc:
            raise NodeRpcError(RPC_VERIFY_ERROR, f"TestBlockValidity failed: {exc.text}") from None
        from regtest.node.blocks import header_of, serialize_block

        return {"hash": header_of(block).hash.hex(), "hex": serialize_block(block).hex()}
    try:
        block_hash = node.generate_block(script, txs)
    except TxRejected as exc:
        raise NodeRpcError(RPC_VERIFY_ERROR, f"TestBlockValidity failed: {exc.text}") from None
    return {"hash": block_hash.hex()}


def gettxout(node: Node, txid: Any, n: Any, include_mempool: Any = True) -> Any:
    key = (parse_hash(txid, "txid"), int(expect(n, "number")))
    expect(include_mempool, "bool")
    coin = None
    if include_mempool:
        if key in node.mempool.spenders:
            return None
        coin = node.mempool.coin(key)
    confirmations = 0
    if coin is None:
        coin = node.chain.utxo.get(key)
        if coin is None:
            return None
        confirmations = node.chain.height - coin.height + 1
    return {
        "bestblock": node.chain.tip.hash.hex(),
        "confirmations": confirmations,
        "value": btc(coin.value),
        "scriptPubKey": script_pub_key_json(coin.script),
        "coinbase": coin.coinbase,
    }


def mempool_entry_json(node: Node, entry: MempoolEntry) -> dict[str, Any]:
    pool = node.mempool
    ancestors = [pool.entries[t] for t in pool.ancestors_of(entry.parents)]
    descendants = [pool.entries[t] for t in pool.descendants_of(entry.txid)]
    signals = entry.bip125_signal or any(a.bip125_signal for a in ancestors)
    return {
        "vsize": entry.vsize,
        "weight": entry.weight,
        "time": entry.time,
        "height": entry.height,
        "descendantcount": len(descendants) + 1,
        "descendantsize": entry.vsize + sum(d.vsize for d in descendants),
        "ancestorcount": len(ancestors) + 1,
        "ancestorsize": entry.vsize + sum(a.vsize for a in ancestors),
        "wtxid": entry.wtxid.hex(),
        "fees": {
            "base": btc(entry.fee),
            "modified": btc(entry.fee),
            "ancestor": btc(entry.fee + sum(a.fee for a in ancestors)),
            "descendant": btc(entry.fee + sum(d.fee for d in descendants)),
        },
        "depends": sorted(p.hex() for p in entry.parents),
        "spentby": sorted(c.hex() for c in entry.children),
        "bip125-replaceable": signals,
        "unbroadcast": False,
    }


def getrawmempool(node: Node, verbose: Any = False, mempool_sequence: Any = False) -> Any:
    expect(verbose, "bool")
    expect(mempool_sequence, "bool")
    if verbose and mempool_sequence:
        raise NodeRpcError(
            RPC_INVALID_PARAMETER, "Verbose results cannot contain mempool sequence values."
        )
    entries = node.mempool.ordered()
    if verbose:
        return {e.txid.hex(): mempool_entry_json(node, e) for e in entries}
    txids = [e.txid.hex() for e in entries]
    if mempool_sequence:
        return {"txids": txids, "mempool_sequence": node.mempool._seq}
    return txids


def getmempoolentry(node: Node, txid: Any) -> Any:
    entry = node.mempool.entries.get(parse_hash(txid, "parameter 1"))
    if entry is None:
        raise NodeRpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    return mempool_entry_json(node, entry)


def estimatesmartfee(node: Node, conf_target: Any, estimate_mode: Any = "economical") -> Any:
    """What bitcoind answers on a regtest chain without fee history.

    Core's estimator needs transactions it saw enter the mempool and confirm over
    many blocks; a regtest node mined on demand has none of that, and bitcoind then
    answers {"errors": ["Insufficient data or no feerate found"], "blocks": 0}.
    This node answers the same, so a caller's fallback fee rate (which it needs
    against a real regtest bitcoind anyway) is exercised here too.
    """
    expect(conf_target, "number")
    if not 1 <= conf_target <= 1008:
        raise NodeRpcError(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
    expect(estimate_mode, "string")
    if estimate_mode.lower() not in ("unset", "economical", "conservative"):
        raise NodeRpcError(
            RPC_INVALID_PARAMETER,
            "Invalid estimate_mode parameter, must be one of: "
            '"unset", "economical", "conservative"',
        )
    return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}


def uptime(node: Node) -> int:
    return int(time.monotonic() - node.started_at)


def stop(node: Node) -> str:
    node.stop_requested.set()
    return "Bitcoin Core stopping"


METHODS: dict[str, tuple[Any, list[str]]] = {
    "getblockchaininfo": (getblockchaininfo, []),
    "getblockcount": (getblockcount, []),
    "getbestblockhash": (getbestblockhash, []),
    "getblockhash": (getblockhash, ["height"]),
    "getblockheader": (getblockheader, ["blockhash", "verbose"]),
    "getblock": (getblock, ["blockhash", "verbosity"]),
    "invalidateblock": (invalidateblock, ["blockhash"]),
    "reconsiderblock": (reconsiderblock, ["blockhash"]),
    "generatetoaddress": (generatetoaddress, ["nblocks", "address", "maxtries"]),
    "generateblock": (generateblock, ["output", "transactions", "submit"]),
    "gettxout": (gettxout, ["txid", "n", "include_mempool"]),
    "getrawmempool": (getrawmempool, ["verbose", "mempool_sequence"]),
    "getmempoolentry": (getmempoolentry, ["txid"]),
    "estimatesmartfee": (estimatesmartfee, ["conf_target", "estimate_mode"]),
    "uptime": (uptime, []),
    "stop": (stop, []),
}
