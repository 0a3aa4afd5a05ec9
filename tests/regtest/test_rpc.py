"""bitcoind's JSON-RPC over real HTTP on loopback: envelopes, auth, codes, shapes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx

from regtest.node import RpcServer
from tests.regtest import txbuild as tb


def post(server: RpcServer, body: Any, *, auth: bool = True) -> httpx.Response:
    user, password = server.cookie_path.read_text().split(":")
    return httpx.post(
        server.url,
        content=json.dumps(body),
        auth=(user, password) if auth else None,
    )


def rpc(server: RpcServer, method: str, *params: Any) -> Any:
    reply = post(server, {"method": method, "params": list(params), "id": 1})
    assert reply.status_code == 200, reply.text
    return json.loads(reply.text, parse_float=Decimal)["result"]


def error_of(server: RpcServer, method: str, *params: Any) -> tuple[int, int, str]:
    reply = post(server, {"method": method, "params": list(params), "id": 7})
    body = reply.json()
    assert body["result"] is None and body["id"] == 7
    return reply.status_code, body["error"]["code"], body["error"]["message"]


def test_cookie_file_and_auth(regtest_rpc: RpcServer) -> None:
    cookie = regtest_rpc.cookie_path
    assert cookie == regtest_rpc.node.datadir / "regtest" / ".cookie"
    assert cookie.stat().st_mode & 0o777 == 0o600
    assert cookie.read_text().startswith("__cookie__:") and len(cookie.read_text()) == 75
    reply = post(regtest_rpc, {"method": "getblockcount", "id": 1}, auth=False)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == 'Basic realm="jsonrpc"'
    assert httpx.get(regtest_rpc.url).status_code in (401, 405)


def test_envelopes_legacy_and_v2(regtest_rpc: RpcServer) -> None:
    reply = post(regtest_rpc, {"method": "getblockcount", "id": "a"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.text == '{"result":101,"error":null,"id":"a"}\n'
    reply = post(regtest_rpc, {"jsonrpc": "2.0", "method": "getblockcount", "id": 3})
    assert reply.json() == {"jsonrpc": "2.0", "result": 101, "id": 3}
    reply = post(regtest_rpc, {"jsonrpc": "2.0", "method": "nosuch", "id": 3})
    assert reply.status_code == 200
    assert reply.json()["error"] == {"code": -32601, "message": "Method not found"}
    reply = post(regtest_rpc, {"jsonrpc": "2.0", "method": "getblockcount"})
    assert reply.status_code == 204 and reply.text == ""
    reply = post(regtest_rpc, [{"method": "getblockcount", "id": 1}, {"method": "x", "id": 2}])
    assert reply.status_code == 200
    assert [item["id"] for item in reply.json()] == [1, 2]
    user, password = regtest_rpc.cookie_path.read_text().split(":")
    reply = httpx.post(regtest_rpc.url, content=b"{nope", auth=(user, password))
    assert reply.status_code == 500
    assert reply.json()["error"] == {"code": -32700, "message": "Parse error"}


def test_named_params(regtest_rpc: RpcServer) -> None:
    reply = post(regtest_rpc, {"method": "getblockhash", "params": {"height": 0}, "id": 1})
    assert reply.json()["result"] == (
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    )
    reply = post(regtest_rpc, {"method": "getblockhash", "params": {"hight": 0}, "id": 1})
    assert reply.json()["error"] == {"code": -8, "message": "Unknown named parameter hight"}


def test_error_codes_and_messages(regtest_rpc: RpcServer) -> None:
    assert error_of(regtest_rpc, "nosuchmethod") == (404, -32601, "Method not found")
    assert error_of(regtest_rpc, "getblockhash", 1000) == (500, -8, "Block height out of range")
    assert error_of(regtest_rpc, "getblock", "00" * 32) == (500, -5, "Block not found")
    assert error_of(regtest_rpc, "getblock", "xyz") == (
        500, -8, "blockhash must be of length 64 (not 3, for 'xyz')"
    )
    assert error_of(regtest_rpc, "getrawtransaction", "11" * 32) == (
        500, -5,
        "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
    )
    assert error_of(regtest_rpc, "getmempoolentry", "11" * 32) == (
        500, -5, "Transaction not in mempool"
    )
    assert error_of(regtest_rpc, "sendrawtransaction", "zz") == (
        500, -22, "TX decode failed. Make sure the tx has at least one input."
    )
    # -25: the input does not exist
    tx = tb.spend([("22" * 32, 0)], [(tb.p2wpkh(tb.key(1)), 1000)])
    tb.sign_p2wpkh(tx, 0, 5000, tb.key(1))
    assert error_of(regtest_rpc, "sendrawtransaction", tb.raw(tx)) == (
        500, -25, "bad-txns-inputs-missingorspent"
    )


def test_send_confirm_and_rpc_shapes(regtest_rpc: RpcServer) -> None:
    address = rpc(regtest_rpc, "getnewaddress")
    assert address.startswith("bcrt1q") and len(address) == 44
    assert rpc(regtest_rpc, "getbalance") == Decimal("50.00000000")
    txid = rpc(regtest_rpc, "sendtoaddress", address, "1.25")
    entry = rpc(regtest_rpc, "getmempoolentry", txid)
    assert list(entry) == [
        "vsize", "weight", "time", "height", "descendantcount", "descendantsize",
        "ancestorcount", "ancestorsize", "wtxid", "fees", "depends", "spentby",
        "bip125-replaceable", "unbroadcast",
    ]
    raw = rpc(regtest_rpc, "getrawtransaction", txid)
    decoded = rpc(regtest_rpc, "decoderawtransaction", raw)
    assert decoded["txid"] == txid and "hex" not in decoded
    pay = next(o for o in decoded["vout"] if o["scriptPubKey"].get("address") == address)
    assert pay["value"] == Decimal("1.25000000")
    assert pay["scriptPubKey"]["type"] == "witness_v0_keyhash"
    assert pay["scriptPubKey"]["desc"].startswith(f"addr({address})#")
    # amounts travel as JSON numbers with exactly 8 decimals
    reply = post(regtest_rpc, {"method": "getbalance", "id": 1})
    assert '"result":49.99997180,' in reply.text  # own unconfirmed change counts
    [block_hash] = rpc(regtest_rpc, "generatetoaddress", 1, address)
    assert rpc(regtest_rpc, "getblock", block_hash, 0) == raw_block(regtest_rpc, block_hash)
    block1 = rpc(regtest_rpc, "getblock", block_hash, 1)
    assert list(block1)[:13] == [
        "hash", "confirmations", "height", "version", "versionHex", "merkleroot", "time",
        "mediantime", "nonce", "bits", "difficulty", "chainwork", "nTx",
    ]
    assert list(block1)[-4:] == ["strippedsize", "size", "weight", "tx"]
    assert block1["tx"][1] == txid and block1["bits"] == "207fffff"
    assert block1["chainwork"] == f"{2 * 103:064x}"
    block2 = rpc(regtest_rpc, "getblock", block_hash, 2)
    coinbase, spend = block2["tx"]
    assert "fee" not in coinbase and spend["fee"] == Decimal(entry["fees"]["base"])
    assert list(spend)[-2:] == ["fee", "hex"]
    assert coinbase["vout"][-1]["scriptPubKey"]["hex"].startswith("6a24aa21a9ed")
    assert coinbase["vin"][0]["coinbase"].endswith("00")
    verbose = rpc(regtest_rpc, "getrawtransaction", txid, 1)
    assert verbose["blockhash"] == block_hash and verbose["confirmations"] == 1
    out = rpc(regtest_rpc, "gettxout", txid, pay["n"])
    assert out["confirmations"] == 1 and out["value"] == Decimal("1.25000000")
    assert out["coinbase"] is False
    info = rpc(regtest_rpc, "getblockchaininfo")
    assert info["blocks"] == 102 and info["bestblockhash"] == block_hash
    fee = rpc(regtest_rpc, "estimatesmartfee", 6)
    assert fee == {"errors": ["Insufficient data or no feerate found"], "blocks": 0}


def raw_block(server: RpcServer, block_hash: str) -> str:
    node = server.node
    return node.chain.get_block_bytes(bytes.fromhex(block_hash)).hex()


def test_sendrawtransaction_rejects_with_26_and_27(regtest_rpc: RpcServer) -> None:
    node = regtest_rpc.node
    coin = node.send_to_script(tb.p2wpkh(tb.key(1)), 60_000)
    tx = tb.spend([coin], [(tb.p2wpkh(tb.key(2)), 70_000)])
    tb.sign_p2wpkh(tx, 0, 60_000, tb.key(1))
    assert error_of(regtest_rpc, "sendrawtransaction", tb.raw(tx)) == (
        500, -26, "bad-txns-in-belowout, value in (0.0006) < value out (0.0007)"
    )
    tx = tb.spend([coin], [(tb.p2wpkh(tb.key(2)), 59_000)])
    tb.sign_p2wpkh(tx, 0, 60_000, tb.key(1))
    accepted = rpc(regtest_rpc, "testmempoolaccept", [tb.raw(tx)])[0]
    assert accepted["allowed"] is True and accepted["vsize"] == 110
    assert accepted["fees"]["base"] == Decimal("0.00001000")
    rpc(regtest_rpc, "sendrawtransaction", tb.raw(tx))
    node.mine(1)
    assert error_of(regtest_rpc, "sendrawtransaction", tb.raw(tx)) == (
        500, -27, "Transaction outputs already in utxo set"
    )
