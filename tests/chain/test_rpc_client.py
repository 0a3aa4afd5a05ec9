"""The chain client against the embedded node over real HTTP on loopback.

The node's RPC server runs in a thread of this process (fixture `regtest_rpc`);
the client is the one the hub and the SDK use. These tests use trio's real clock:
they wait on real sockets, and an autojumping clock would fire the client's
timeouts at once.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from channel.chain import (
    BitcoinRpc,
    ChainUnavailable,
    RpcAuthError,
    RpcError,
    btc_to_sat,
)
from channel.chain.rpc import RPC_INVALID_ADDRESS_OR_KEY, RPC_METHOD_NOT_FOUND


def _client(server: Any) -> BitcoinRpc:
    return BitcoinRpc(server.url, cookie_file=Path(server.cookie_path), timeout_s=10)


async def test_blockchain_info_and_heights(regtest_rpc: Any) -> None:
    async with _client(regtest_rpc) as rpc:
        info = await rpc.getblockchaininfo()
        assert info["chain"] == "regtest"
        height = await rpc.getblockcount()
        assert height == info["blocks"] >= 101
        assert await rpc.getblockhash(height) == await rpc.getbestblockhash()
        address = await rpc.getnewaddress()
        assert address.startswith("bcrt1")
        hashes = await rpc.generatetoaddress(2, address)
        assert len(hashes) == 2
        assert await rpc.getblockcount() == height + 2
        block = await rpc.getblock(hashes[-1], 1)
        assert block["height"] == height + 2
        assert block["hash"] == hashes[-1]


async def test_send_confirm_and_read_back_in_satoshis(regtest_rpc: Any) -> None:
    async with _client(regtest_rpc) as rpc:
        balance_before = await rpc.getbalance_sat()
        assert balance_before > 0
        address = await rpc.getnewaddress()
        txid = await rpc.sendtoaddress(address, 123_456_789)
        assert txid in await rpc.getrawmempool()
        entry = await rpc.getmempoolentry(txid)
        assert entry["vsize"] > 0
        raw = await rpc.getrawtransaction(txid)
        decoded = await rpc.getrawtransaction_verbose(txid)
        assert decoded["txid"] == txid and decoded["hex"] == raw.hex()
        vout = next(
            out["n"] for out in decoded["vout"] if out["scriptPubKey"].get("address") == address
        )
        unconfirmed = await rpc.gettxout(txid, vout)
        assert unconfirmed is not None and unconfirmed.confirmations == 0
        await rpc.generatetoaddress(1, address)
        confirmed = await rpc.gettxout(txid, vout)
        assert confirmed is not None
        assert confirmed.value_sat == 123_456_789
        assert confirmed.confirmations == 1
        assert txid not in await rpc.getrawmempool()
        # Replaying a confirmed transaction is refused as bitcoind does (-27).
        with pytest.raises(RpcError) as replay:
            await rpc.sendrawtransaction(raw)
        assert replay.value.code == -27


async def test_testmempoolaccept_reports_reject_reason(regtest_rpc: Any) -> None:
    async with _client(regtest_rpc) as rpc:
        txid = await rpc.sendtoaddress(await rpc.getnewaddress(), 10_000)
        raw = await rpc.getrawtransaction(txid)
        (result,) = await rpc.testmempoolaccept([raw])
        assert result.txid == txid
        assert not result.allowed
        assert result.reject_reason == "txn-already-in-mempool"


async def test_no_fee_estimate_without_fee_history(regtest_rpc: Any) -> None:
    # As bitcoind on a regtest chain: callers fall back to a configured fee rate.
    async with _client(regtest_rpc) as rpc:
        assert await rpc.estimatesmartfee_sat_per_kvb(6) is None


async def test_rpc_errors_carry_bitcoind_codes(regtest_rpc: Any) -> None:
    async with _client(regtest_rpc) as rpc:
        with pytest.raises(RpcError) as unknown_method:
            await rpc.call("nosuchmethod")
        assert unknown_method.value.code == RPC_METHOD_NOT_FOUND
        assert unknown_method.value.message == "Method not found"
        with pytest.raises(RpcError) as unknown_tx:
            await rpc.getrawtransaction("00" * 32)
        assert unknown_tx.value.code == RPC_INVALID_ADDRESS_OR_KEY
        assert await rpc.gettxout("00" * 32, 0) is None


async def test_wrong_credentials_are_an_auth_error(regtest_rpc: Any) -> None:
    async with BitcoinRpc(regtest_rpc.url, username="__cookie__", password="wrong") as rpc:
        with pytest.raises(RpcAuthError):
            await rpc.getblockcount()


async def test_unreachable_node_is_chain_unavailable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:00")
    async with BitcoinRpc(f"http://127.0.0.1:{closed_port}/", cookie_file=cookie) as rpc:
        with pytest.raises(ChainUnavailable):
            await rpc.getblockcount()


def test_amounts_are_parsed_as_decimals() -> None:
    # The client parses replies with Decimal; btc_to_sat refuses floats outright,
    # so a float slipping through would fail loudly here rather than round.
    assert btc_to_sat("0.00000001") == 1


async def test_a_batch_answers_each_call_in_order_errors_in_place(regtest_rpc: Any) -> None:
    async with _client(regtest_rpc) as rpc:
        height = await rpc.getblockcount()
        results = await rpc.call_batch(
            [("getblockhash", [height]), ("getblockhash", [height + 1]), ("getblockcount", [])]
        )
        assert results[0] == await rpc.getbestblockhash()
        assert isinstance(results[1], RpcError) and results[1].code == -8
        assert results[2] == height
        assert await rpc.call_batch([]) == []
        # The ids keep counting after a batch: a single call still matches its reply.
        assert await rpc.getblockcount() == height
