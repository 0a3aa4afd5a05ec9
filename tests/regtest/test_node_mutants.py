"""Boundaries of the embedded node that its other tests left unpinned: each test here
kills a survivor of the regtest/node mutation sample (docs/mutation.md), with the value
Bitcoin Core itself has (its regtest chain parameters, policy and RPC behaviour)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from regtest.node import Node, NodeRpcError
from regtest.node.blocks import merkle_root, target_from_bits
from regtest.node.jsonfmt import descriptor_checksum, difficulty
from regtest.node.node import script_from_address
from regtest.node.params import (
    COIN,
    POW_LIMIT_BITS,
    WALLET_FEE_RATE_SAT_PER_KVB,
    block_subsidy,
    sat_from_btc,
)
from regtest.pytest_plugin import ManualClock
from tests.regtest import txbuild as tb

FEE = 1_000


def coin_of(node: Node, k: int, amount: int) -> tuple[str, int]:
    outpoint = node.send_to_script(tb.p2wpkh(tb.key(k)), amount)
    node.mine(1)
    return outpoint


def signed_spend(node: Node, outputs: list[tuple[bytes, int]], *, version: int = 2,
                 amount: int = 100_000) -> str:
    """A valid one-input spend of a fresh P2WPKH coin of ``amount`` sat."""
    outpoint = coin_of(node, 1, amount)
    tx = tb.spend([outpoint], outputs, version=version)
    tb.sign_p2wpkh(tx, 0, amount, tb.key(1))
    return tb.raw(tx)


def allowed(node: Node, raw_hex: str) -> tuple[bool, str]:
    (result,) = node.call("testmempoolaccept", [raw_hex])
    return bool(result["allowed"]), str(result.get("reject-reason", ""))


def test_regtest_pow_limit_and_difficulty() -> None:
    """Core's regtest powLimit (0x7fffff << 232) and getdifficulty (printed to 16
    significant digits, as UniValue does)."""
    assert target_from_bits(POW_LIMIT_BITS) == 0x7FFFFF << (8 * 29)
    assert f"{difficulty(POW_LIMIT_BITS):.16g}" == "4.656542373906925e-10"


def test_a_block_hash_above_the_target_is_refused(regtest_node: Node) -> None:
    from regtest.node.blocks import header_of

    tip = regtest_node.call("getblockcount")
    block = regtest_node.assemble(tb.p2wpkh(tb.key(9)), [])
    header = block.header
    target = target_from_bits(header_of(block).bits)
    for nonce in range(header.nonce + 1, header.nonce + 200):
        header.nonce = nonce
        if int.from_bytes(header_of(block).hash, "big") > target:
            break
    else:
        raise AssertionError("no nonce above the target in 200 tries")
    with pytest.raises(Exception, match="high-hash"):
        regtest_node.chain.add_block(block)
    assert regtest_node.call("getblockcount") == tip


def test_merkle_root_flags_a_duplicated_pair() -> None:
    """CVE-2012-2459: two equal hashes side by side from the first pair on are
    'mutated'; an odd last hash duplicated by the algorithm itself is not."""
    a, b, c = (hashlib.sha256(bytes([n])).digest() for n in range(3))
    assert merkle_root([a, a])[1] is True
    assert merkle_root([a, b])[1] is False
    assert merkle_root([a, b, c])[1] is False
    assert merkle_root([a, b, c, c])[1] is True


def test_descriptor_checksum_bip380_vector() -> None:
    assert descriptor_checksum("raw(deadbeef)") == "89f8spxm"


def test_subsidy_halves_at_block_150() -> None:
    assert block_subsidy(149) == 50 * COIN
    assert block_subsidy(150) == 25 * COIN


def test_burning_more_than_maxburnamount_is_refused(regtest_node: Node) -> None:
    """An OP_RETURN output carrying value: sendrawtransaction refuses it unless
    maxburnamount allows that much (Core's default 0)."""
    back = tb.p2wpkh(tb.key(2))
    raw = signed_spend(regtest_node, [(b"\x6a\x01\x00", 1), (back, 100_000 - FEE - 1)])
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("sendrawtransaction", raw)
    assert info.value.code == -25
    assert "maxburnamount" in info.value.message
    regtest_node.call("sendrawtransaction", raw, 0.1, 0.00000001)


@pytest.mark.parametrize("version,ok", [(0, False), (1, True), (3, True), (4, False)])
def test_standard_transaction_versions(regtest_node: Node, version: int, ok: bool) -> None:
    raw = signed_spend(regtest_node, [(tb.p2wpkh(tb.key(2)), 100_000 - FEE)], version=version)
    accepted, reason = allowed(regtest_node, raw)
    assert accepted is ok, reason
    if not ok:
        assert reason == "version"


@pytest.mark.parametrize("script_len,ok", [(83, True), (84, False)])
def test_op_return_relay_size(regtest_node: Node, script_len: int, ok: bool) -> None:
    """Core v28's -datacarriersize 83: the whole OP_RETURN script, opcode included."""
    payload = b"\x00" * (script_len - 3)
    script = b"\x6a\x4c" + bytes([len(payload)]) + payload
    assert len(script) == script_len
    raw = signed_spend(regtest_node, [(script, 0), (tb.p2wpkh(tb.key(2)), 100_000 - FEE)])
    accepted, reason = allowed(regtest_node, raw)
    assert accepted is ok, reason
    if not ok:
        assert reason == "scriptpubkey"


def test_undo_of_a_block_spending_two_coins_restores_both(regtest_node: Node) -> None:
    """invalidateblock reads the block's undo data back from storage: every spent coin,
    not only the first, comes back with its value and script."""
    first, second = coin_of(regtest_node, 3, 70_000), coin_of(regtest_node, 4, 80_000)
    tx = tb.spend([first, second], [(tb.p2wpkh(tb.key(5)), 150_000 - FEE)])
    tb.sign_p2wpkh(tx, 0, 70_000, tb.key(3))
    tb.sign_p2wpkh(tx, 1, 80_000, tb.key(4))
    regtest_node.call("sendrawtransaction", tb.raw(tx))
    (block_hash,) = regtest_node.mine(1)
    assert regtest_node.call("gettxout", first[0], first[1]) is None
    regtest_node.call("invalidateblock", block_hash)
    for (txid, n), amount, k in ((first, 70_000, 3), (second, 80_000, 4)):
        out = regtest_node.call("gettxout", txid, n, False)  # the tx is back in the mempool
        assert out is not None, (txid, n)
        assert round(float(out["value"]) * COIN) == amount
        assert out["scriptPubKey"]["hex"] == tb.p2wpkh(tb.key(k)).hex()


def test_wallet_fee_covers_a_p2sh_segwit_input(tmp_path: Path) -> None:
    """The wallet's fee estimate counts a p2sh-segwit input at its largest, 91 vB (Core's
    figure: 64 bytes outside the witness, 108 in it): the fee paid reaches the wallet's
    own rate over the signed transaction's real size."""
    node = Node(tmp_path / "node", clock=lambda: 1_700_000_000)
    try:
        miner = tb.key(7)
        for _ in range(101):
            node.generate_block(tb.p2wpkh(miner))
        cb_txid = node.call("getblock", node.call("getblockhash", 1))["tx"][0]
        address = node.call("getnewaddress", "", "p2sh-segwit")
        wallet_spk = script_from_address(address)
        subsidy = block_subsidy(1)
        tx = tb.spend([(cb_txid, 0)], [(wallet_spk, 1_000_000),
                                       (tb.p2wpkh(miner), subsidy - 1_000_000 - FEE)])
        tb.sign_p2wpkh(tx, 0, subsidy, miner)
        node.call("sendrawtransaction", tb.raw(tx))
        node.mine(1, address)  # the coinbase is immature: the wallet can spend only ours
        txid = node.call("sendtoaddress", node.call("getnewaddress", "", "bech32"), 0.001)
        entry = node.call("getmempoolentry", txid)
        fee_sat = round(float(entry["fees"]["base"]) * COIN)
        assert fee_sat * 1000 >= entry["vsize"] * WALLET_FEE_RATE_SAT_PER_KVB
    finally:
        node.close()


# --- survivors of the seed 22 sample -------------------------------------------------------


def test_gettxout_past_the_last_output_of_a_mempool_tx_is_null(regtest_node: Node) -> None:
    raw = signed_spend(regtest_node, [(tb.p2wpkh(tb.key(2)), 100_000 - FEE)])
    txid = regtest_node.call("sendrawtransaction", raw)
    assert regtest_node.call("gettxout", txid, 0) is not None
    assert regtest_node.call("gettxout", txid, 1) is None  # one output: index 1 is past it


def test_median_time_past_spans_eleven_blocks(regtest_node: Node,
                                              regtest_clock: ManualClock) -> None:
    """Core's GetMedianTimePast: the median of the last 11 block times (not 12)."""
    base = regtest_node.call("getblock", regtest_node.call("getbestblockhash"))["time"]
    regtest_clock.now = base + 100_000  # one late block, then eleven earlier ones
    regtest_node.mine(1)
    for k in range(1, 12):
        regtest_clock.now = base + 10 * k  # above the MTP, below the late block
        regtest_node.mine(1)
    height = regtest_node.call("getblockcount")
    times = [regtest_node.call("getblock", regtest_node.call("getblockhash", h))["time"]
             for h in range(height - 11, height + 1)]
    median_11, median_12 = sorted(times[1:])[5], sorted(times)[6]
    assert median_11 != median_12  # the chain tells the two spans apart
    assert regtest_node.call("getblockchaininfo")["mediantime"] == median_11


@pytest.mark.parametrize("late_sec,ibd", [(24 * 60 * 60, False), (24 * 60 * 60 + 1, True)])
def test_initial_block_download_after_a_day_without_blocks(
        regtest_node: Node, regtest_clock: ManualClock, late_sec: int, ibd: bool) -> None:
    """Core: initialblockdownload while the tip is more than 24 h older than now."""
    tip_time = regtest_node.call("getblock", regtest_node.call("getbestblockhash"))["time"]
    regtest_clock.now = tip_time + late_sec
    assert regtest_node.call("getblockchaininfo")["initialblockdownload"] is ibd


def test_getblock_verbosity_3_has_the_prevouts(regtest_node: Node) -> None:
    raw = signed_spend(regtest_node, [(tb.p2wpkh(tb.key(2)), 100_000 - FEE)])
    regtest_node.call("sendrawtransaction", raw)
    (block_hash,) = regtest_node.mine(1)
    spend = regtest_node.call("getblock", block_hash, 3)["tx"][1]
    assert round(float(spend["vin"][0]["prevout"]["value"]) * COIN) == 100_000
    assert "prevout" not in regtest_node.call("getblock", block_hash, 2)["tx"][1]["vin"][0]


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_an_amount_of_another_json_type_is_refused_with_cores_text(value: object) -> None:
    with pytest.raises(ValueError, match=r"^Amount is not a number or string$"):
        sat_from_btc(value)


@pytest.mark.parametrize("fee_delta,ok", [(0, True), (-1, False)])
def test_min_relay_fee_on_a_transaction_of_a_thousand_vbytes(regtest_node: Node,
                                                             fee_delta: int,
                                                             ok: bool) -> None:
    """1,000 sat/kvB: below 1,000 vB one sat/kvB less rounds to the same fee, so the
    boundary shows only on a larger transaction (here about 1,050 vB)."""
    amount = 1_000_000
    outputs = [(tb.p2wpkh(tb.key(20 + n)), 20_000) for n in range(33)]
    probe = signed_spend(regtest_node, [*outputs, (tb.p2wpkh(tb.key(2)), 10_000)],
                         amount=amount)
    (result,) = regtest_node.call("testmempoolaccept", [probe])
    vsize = result["vsize"]
    assert vsize >= 1_000
    change = amount - 33 * 20_000 - vsize - fee_delta  # fee = vsize sat (1 sat/vB)
    raw = signed_spend(regtest_node, [*outputs, (tb.p2wpkh(tb.key(2)), change)],
                       amount=amount)
    accepted, reason = allowed(regtest_node, raw)
    assert accepted is ok, reason
    if not ok:
        assert reason.startswith("min relay fee not met")


@pytest.mark.parametrize("ahead_sec,ok", [(2 * 60 * 60, True), (2 * 60 * 60 + 1, False)])
def test_block_time_at_most_two_hours_ahead(regtest_node: Node, regtest_clock: ManualClock,
                                            ahead_sec: int, ok: bool) -> None:
    """Core's MAX_FUTURE_BLOCK_TIME: a block may be 2 h ahead of our clock, not more. The
    node's miner stamps at least MTP + 1, so a clock set back makes a block from the
    future."""
    block_time = regtest_node.call("getblockchaininfo")["mediantime"] + 1
    regtest_clock.now = block_time - ahead_sec
    tip = regtest_node.call("getblockcount")
    if ok:
        regtest_node.mine(1)
        assert regtest_node.call("getblockcount") == tip + 1
    else:
        with pytest.raises(Exception, match="time-too-new"):
            regtest_node.mine(1)
        assert regtest_node.call("getblockcount") == tip


def test_testmempoolaccept_maxfeerate_zero_disables_the_check(regtest_node: Node) -> None:
    """Core: maxfeerate 0 means no limit; a positive one below the rate refuses. For one
    transaction and for a package (two unrelated ones, judged in order)."""
    raws = [signed_spend(regtest_node, [(tb.p2wpkh(tb.key(2)), 50_000)]) for _ in range(2)]
    for batch in ([raws[0]], raws):
        results = regtest_node.call("testmempoolaccept", batch, 0)
        assert [r["allowed"] for r in results] == [True] * len(batch)
        results = regtest_node.call("testmempoolaccept", batch, 0.001)
        assert [r.get("reject-reason") for r in results] == ["max-fee-exceeded"] * len(batch)


def test_getrawtransaction_fee_and_prevouts_only_at_verbosity_2(regtest_node: Node) -> None:
    raw = signed_spend(regtest_node, [(tb.p2wpkh(tb.key(2)), 100_000 - FEE)])
    txid = regtest_node.call("sendrawtransaction", raw)
    regtest_node.mine(1)
    plain = regtest_node.call("getrawtransaction", txid, 1)
    assert "fee" not in plain and "prevout" not in plain["vin"][0]
    full = regtest_node.call("getrawtransaction", txid, 2)
    assert round(float(full["fee"]) * COIN) == FEE
    assert round(float(full["vin"][0]["prevout"]["value"]) * COIN) == 100_000


def test_sendtoaddress_refuses_a_zero_amount(regtest_node: Node) -> None:
    address = regtest_node.call("getnewaddress")
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("sendtoaddress", address, 0)
    assert (info.value.code, info.value.message) == (-3, "Invalid amount for send")


def test_a_batch_leaves_out_the_replies_to_notifications(regtest_node: Node) -> None:
    """Core (JSON-RPC 2.0): a request without "id" is a notification and gets no reply;
    a batch of notifications only is answered 204 with no body."""
    import json

    from regtest.node.server import RpcServer

    server = RpcServer(regtest_node, host="127.0.0.1", port=0)
    note = {"jsonrpc": "2.0", "method": "getblockcount", "params": []}
    call = {"jsonrpc": "2.0", "method": "getblockcount", "params": [], "id": 7}
    mixed = server.handle_body(json.dumps([note, call]).encode())
    assert mixed.status == 200 and mixed.body is not None
    assert [r["id"] for r in json.loads(mixed.body)] == [7]
    only_notes = server.handle_body(json.dumps([note, note]).encode())
    assert (only_notes.status, only_notes.body) == (204, None)


def test_a_body_neither_object_nor_array_is_a_500(regtest_node: Node) -> None:
    """Core: "Top-level object parse error" (RPC_PARSE_ERROR, HTTP 500)."""
    import json

    from regtest.node.server import RpcServer

    reply = RpcServer(regtest_node, host="127.0.0.1", port=0).handle_body(b"42")
    assert reply.status == 500 and reply.body is not None
    body = json.loads(reply.body)
    assert body["error"]["code"] == -32700
    assert "id" in body and body["id"] is None  # Core answers "id": null


def test_coins_restored_by_invalidateblock_survive_a_restart(
        regtest_node: Node, regtest_clock: ManualClock) -> None:
    """The coins a disconnected block gave back are written to the store under their
    own outpoints: a restarted node still has them."""
    coin = coin_of(regtest_node, 3, 70_000)
    tx = tb.spend([coin], [(tb.p2wpkh(tb.key(5)), 70_000 - FEE)])
    tb.sign_p2wpkh(tx, 0, 70_000, tb.key(3))
    regtest_node.call("sendrawtransaction", tb.raw(tx))
    (block_hash,) = regtest_node.mine(1)
    regtest_node.call("invalidateblock", block_hash)
    regtest_node.close()
    reopened = Node(regtest_node.datadir, clock=regtest_clock)
    try:
        out = reopened.call("gettxout", coin[0], coin[1], False)
        assert out is not None and round(float(out["value"]) * COIN) == 70_000
    finally:
        reopened.close()


def test_a_failed_transaction_after_a_committed_one_rolls_back(regtest_node: Node) -> None:
    store = regtest_node.store
    with store.transaction():
        pass
    (before,) = store.db.execute("SELECT COUNT(*) FROM utxo").fetchone()
    with pytest.raises(RuntimeError), store.transaction():
        store.db.execute("DELETE FROM utxo")
        raise RuntimeError("crash inside the transaction")
    assert store.db.execute("SELECT COUNT(*) FROM utxo").fetchone() == (before,)


def test_close_releases_the_database(tmp_path: Path) -> None:
    import sqlite3

    node = Node(tmp_path / "node", clock=lambda: 1_700_000_000)
    node.close()
    with pytest.raises(sqlite3.ProgrammingError):
        node.store.db.execute("SELECT 1")


def test_a_transaction_over_the_block_weight_is_oversize(regtest_node: Node) -> None:
    """CheckTransaction's bad-txns-oversize (stripped size x 4 > 4,000,000) comes before
    any policy check (which would say tx-size)."""
    big = b"\x6a" + b"\x00" * 1_000_000
    tx = tb.spend([("11" * 32, 0)], [(big, 0)])
    accepted, reason = allowed(regtest_node, tb.raw(tx))
    assert not accepted and reason == "bad-txns-oversize"


def test_two_op_returns_are_refused(regtest_node: Node) -> None:
    raw = signed_spend(regtest_node, [(b"\x6a\x01\x01", 0), (b"\x6a\x01\x02", 0),
                                      (tb.p2wpkh(tb.key(2)), 100_000 - FEE)])
    accepted, reason = allowed(regtest_node, raw)
    assert not accepted and reason == "multi-op-return"


def test_time_lock_of_a_coin_from_block_1_counts_from_the_genesis_mtp(tmp_path: Path) -> None:
    """BIP68: a time-based relative lock counts from the MTP of the block BEFORE the
    coin's (for a block-1 coin: the genesis block, 2011). 512 s have long passed since
    then, though not since block 1 (mined at this test's clock, 2023)."""
    node = Node(tmp_path / "node", clock=lambda: 1_700_000_000)
    try:
        miner = tb.key(7)
        for _ in range(101):
            node.generate_block(tb.p2wpkh(miner))
        cb_txid = node.call("getblock", node.call("getblockhash", 1))["tx"][0]
        subsidy = block_subsidy(1)
        tx = tb.spend([(cb_txid, 0)], [(tb.p2wpkh(miner), subsidy - FEE)],
                      sequence=(1 << 22) | 1)  # type flag: one unit of 512 s
        tb.sign_p2wpkh(tx, 0, subsidy, miner)
        accepted, reason = allowed(node, tb.raw(tx))
        assert accepted, reason
    finally:
        node.close()
