"""The faucet wallet's RPCs: getnewaddress, getbalance, listunspent, sendtoaddress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from regtest.node.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_METHOD_DEPRECATED,
    RPC_TYPE_ERROR,
    NodeRpcError,
)
from regtest.node.jsonfmt import with_checksum
from regtest.node.params import btc, sat_from_btc
from regtest.node.rpc_methods import expect

if TYPE_CHECKING:
    from regtest.node.node import Node


def getnewaddress(node: Node, label: Any = "", address_type: Any = "bech32") -> str:
    expect(label, "string")
    expect(address_type, "string")
    try:
        return node.wallet.new_address(address_type)
    except ValueError:
        raise NodeRpcError(
            RPC_INVALID_ADDRESS_OR_KEY, f"Unknown address type '{address_type}'"
        ) from None


def _ancestry(node: Node, txid: bytes) -> tuple[int, int, int] | None:
    """Core's getTransactionAncestry: count, vsize and fees with ancestors, itself included."""
    entry = node.mempool.entries.get(txid)
    if entry is None:
        return None
    ancestors = [node.mempool.entries[a] for a in node.mempool.ancestors_of(entry.parents)]
    return (
        1 + len(ancestors),
        entry.vsize + sum(a.vsize for a in ancestors),
        entry.fee + sum(a.fee for a in ancestors),
    )


def getbalance(
    node: Node,
    dummy: Any = "*",
    minconf: Any = 0,
    include_watchonly: Any = None,
    avoid_reuse: Any = True,
) -> Any:
    if dummy != "*":
        raise NodeRpcError(
            RPC_METHOD_DEPRECATED, 'dummy first argument must be excluded or set to "*".'
        )
    expect(minconf, "number")
    coins = node.wallet.coins()
    return btc(sum(c.coin.value for c in coins if c.confirmations >= minconf))


def listunspent(
    node: Node,
    minconf: Any = 1,
    maxconf: Any = 9999999,
    addresses: Any = None,
    include_unsafe: Any = True,
    query_options: Any = None,
) -> Any:
    expect(minconf, "number")
    expect(maxconf, "number")
    wanted: set[str] | None = None
    if addresses is not None:
        expect(addresses, "array")
        wanted = set()
        from regtest.node.node import script_from_address

        for address in addresses:
            try:
                script_from_address(address)
            except ValueError:
                raise NodeRpcError(
                    RPC_INVALID_ADDRESS_OR_KEY, f"Invalid Bitcoin address: {address}"
                ) from None
            if address in wanted:
                raise NodeRpcError(
                    RPC_INVALID_PARAMETER, f"Invalid parameter, duplicated address: {address}"
                )
            wanted.add(address)
    options = query_options or {}
    include_immature = bool(options.get("include_immature_coinbase", False))
    out = []
    for wallet_coin in node.wallet.coins(include_immature=include_immature):
        if not minconf <= wallet_coin.confirmations <= maxconf:
            continue
        key = wallet_coin.key
        address = key.address
        if wanted is not None and address not in wanted:
            continue
        item: dict[str, Any] = {
            "txid": wallet_coin.outpoint[0].hex(),
            "vout": wallet_coin.outpoint[1],
            "address": address,
            "label": "",
        }
        if key.redeem_script is not None:
            item["redeemScript"] = key.redeem_script.hex()
        item["scriptPubKey"] = wallet_coin.coin.script.hex()
        item["amount"] = btc(wallet_coin.coin.value)
        item["confirmations"] = wallet_coin.confirmations
        ancestry = None if wallet_coin.confirmations else _ancestry(node, wallet_coin.outpoint[0])
        if ancestry is not None:
            item["ancestorcount"], item["ancestorsize"], item["ancestorfees"] = ancestry
        item["spendable"] = True
        item["solvable"] = True
        item["desc"] = with_checksum(key.descriptor)
        item["parent_descs"] = [with_checksum(key.parent_desc)] if key.parent_desc else []
        item["safe"] = True
        out.append(item)
    return out


def sendtoaddress(
    node: Node,
    address: Any,
    amount: Any,
    comment: Any = None,
    comment_to: Any = None,
    subtractfeefromamount: Any = False,
    replaceable: Any = None,
    conf_target: Any = None,
    estimate_mode: Any = None,
    avoid_reuse: Any = None,
    fee_rate: Any = None,
    verbose: Any = False,
) -> Any:
    from regtest.node.node import script_from_address

    expect(address, "string")
    try:
        script = script_from_address(address)
    except ValueError:
        raise NodeRpcError(
            RPC_INVALID_ADDRESS_OR_KEY, f"Invalid Bitcoin address: {address}"
        ) from None
    try:
        amount_sat = sat_from_btc(amount)
    except ValueError as exc:
        raise NodeRpcError(RPC_TYPE_ERROR, str(exc)) from None
    if amount_sat <= 0:
        raise NodeRpcError(RPC_TYPE_ERROR, "Invalid amount for send")
    txid, _vout = node.send_to_script(script, amount_sat)
    if verbose:
        return {"txid": txid, "fee_reason": "Fallback fee"}
    return txid


METHODS: dict[str, tuple[Any, list[str]]] = {
    "getnewaddress": (getnewaddress, ["label", "address_type"]),
    "getbalance": (getbalance, ["dummy", "minconf", "include_watchonly", "avoid_reuse"]),
    "listunspent": (
        listunspent,
        ["minconf", "maxconf", "addresses", "include_unsafe", "query_options"],
    ),
    "sendtoaddress": (
        sendtoaddress,
        [
            "address",
            "amount",
            "comment",
            "comment_to",
            "subtractfeefromamount",
            "replaceable",
            "conf_target",
            "estimate_mode",
            "avoid_reuse",
            "fee_rate",
            "verbose",
        ],
    ),
}
