"""Consensus and mempool rules give bitcoind's verdicts and reject reasons."""

from __future__ import annotations

import pytest

from regtest.node import Node, NodeRpcError
from regtest.pytest_plugin import ManualClock
from tests.regtest import txbuild as tb

FEE = 1_000
LOCKTIME_FAILED = "mandatory-script-verify-flag-failed (Locktime requirement not satisfied)"


def fund(node: Node, script: bytes, amount: int, *, confirm: bool = True) -> tuple[str, int]:
    outpoint = node.send_to_script(script, amount)
    if confirm:
        node.mine(1)
    return outpoint


def rejected(node: Node, raw_hex: str) -> NodeRpcError:
    with pytest.raises(NodeRpcError) as info:
        node.call("sendrawtransaction", raw_hex)
    return info.value


# --- P2WSH 2-of-2 multisig -----------------------------------------------------------
@pytest.fixture
def multisig_coin(regtest_node: Node) -> tuple[str, int, bytes]:
    script = tb.multisig_2of2(tb.key(1), tb.key(2))
    txid, vout = fund(regtest_node, tb.p2wsh(script), 100_000)
    return txid, vout, script


def _multisig_spend(coin: tuple[str, int, bytes], sig_keys: list[int]) -> str:
    txid, vout, script = coin
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 100_000 - FEE)])
    sigs = [tb.sign(tx, 0, script, 100_000, tb.key(n)) for n in sig_keys]
    tb.set_witness(tx, 0, [b"", *sigs, script])
    return tb.raw(tx)


def test_multisig_with_both_signatures_is_accepted_and_mined(
    regtest_node: Node, multisig_coin: tuple[str, int, bytes]
) -> None:
    raw = _multisig_spend(multisig_coin, [1, 2])
    txid = regtest_node.call("sendrawtransaction", raw)
    assert txid in regtest_node.call("getrawmempool")
    block_hash = regtest_node.mine(1)[0]
    assert txid in regtest_node.call("getblock", block_hash)["tx"]
    assert regtest_node.call("getrawmempool") == []


def test_multisig_with_one_signature_is_refused(
    regtest_node: Node, multisig_coin: tuple[str, int, bytes]
) -> None:
    txid, vout, script = multisig_coin
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 100_000 - FEE)])
    tb.set_witness(tx, 0, [b"", tb.sign(tx, 0, script, 100_000, tb.key(1)), b"", script])
    error = rejected(regtest_node, tb.raw(tx))
    # Core (v27/v28) quotes the policy-flag error: NULLFAIL, since sig1 is non-empty
    assert error.code == -26
    assert error.message == (
        "mandatory-script-verify-flag-failed "
        "(Signature must be zero for failed CHECK(MULTI)SIG operation)"
    )
    tb.set_witness(tx, 0, [b"", tb.sign(tx, 0, script, 100_000, tb.key(1)), script])
    error = rejected(regtest_node, tb.raw(tx))
    assert error.message == (
        "mandatory-script-verify-flag-failed (Operation not valid with the current stack size)"
    )


def test_multisig_with_swapped_signatures_is_refused(
    regtest_node: Node, multisig_coin: tuple[str, int, bytes]
) -> None:
    error = rejected(regtest_node, _multisig_spend(multisig_coin, [2, 1]))
    assert (error.code, error.message) == (
        -26,
        "mandatory-script-verify-flag-failed "
        "(Signature must be zero for failed CHECK(MULTI)SIG operation)",
    )


def test_bad_signature_in_a_block_is_refused(
    regtest_node: Node, multisig_coin: tuple[str, int, bytes]
) -> None:
    raw = _multisig_spend(multisig_coin, [2, 1])
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("generateblock", regtest_node.new_address(), [raw])
    assert info.value.code == -25
    assert info.value.message.startswith("TestBlockValidity failed: mandatory-script-verify-flag")
    assert regtest_node.call("getblockcount") == 102  # nothing connected


# --- relative and absolute lock-times -------------------------------------------------------
def test_csv_output_refused_one_block_early_accepted_at_maturity(regtest_node: Node) -> None:
    delay = 5
    script = tb.csv_script(delay, tb.key(3))
    txid, vout = fund(regtest_node, tb.p2wsh(script), 50_000)
    confirmed_height = regtest_node.call("getblockcount")
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 50_000 - FEE)], sequence=delay)
    tb.set_witness(tx, 0, [tb.sign(tx, 0, script, 50_000, tb.key(3)), script])
    # a block at height confirmed_height + delay may include it: the mempool judges tip + 1
    regtest_node.mine(delay - 2)
    error = rejected(regtest_node, tb.raw(tx))
    assert (error.code, error.message) == (-26, "non-BIP68-final")
    result = regtest_node.call("testmempoolaccept", [tb.raw(tx)])[0]
    assert result["allowed"] is False and result["reject-reason"] == "non-BIP68-final"
    regtest_node.mine(1)
    assert regtest_node.call("getblockcount") + 1 == confirmed_height + delay
    assert regtest_node.call("sendrawtransaction", tb.raw(tx)) == tb.txid(tx)


def test_csv_script_refuses_a_sequence_below_its_delay(regtest_node: Node) -> None:
    script = tb.csv_script(5, tb.key(3))
    txid, vout = fund(regtest_node, tb.p2wsh(script), 50_000)
    regtest_node.mine(10)
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 50_000 - FEE)], sequence=4)
    tb.set_witness(tx, 0, [tb.sign(tx, 0, script, 50_000, tb.key(3)), script])
    error = rejected(regtest_node, tb.raw(tx))
    assert error.message == LOCKTIME_FAILED


def test_time_based_csv_uses_median_time_past(
    regtest_node: Node, regtest_clock: ManualClock
) -> None:
    units = 2  # 2 * 512 seconds
    sequence = (1 << 22) | units
    script = tb.csv_script(sequence, tb.key(4))
    txid, vout = fund(regtest_node, tb.p2wsh(script), 50_000)
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 50_000 - FEE)], sequence=sequence)
    tb.set_witness(tx, 0, [tb.sign(tx, 0, script, 50_000, tb.key(4)), script])
    assert rejected(regtest_node, tb.raw(tx)).message == "non-BIP68-final"
    for _ in range(12):  # move the median time past well beyond 1024 s
        regtest_clock.advance(200)
        regtest_node.mine(1)
    assert regtest_node.call("sendrawtransaction", tb.raw(tx)) == tb.txid(tx)


def test_cltv_output_refused_one_block_early_accepted_at_height(regtest_node: Node) -> None:
    lock_height = regtest_node.call("getblockcount") + 6
    script = tb.cltv_script(lock_height, tb.key(5))
    txid, vout = fund(regtest_node, tb.p2wsh(script), 50_000)
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 50_000 - FEE)],
                  lock_time=lock_height, sequence=0xFFFFFFFE)
    tb.set_witness(tx, 0, [tb.sign(tx, 0, script, 50_000, tb.key(5)), script])
    regtest_node.mine(lock_height - 1 - regtest_node.call("getblockcount"))
    assert regtest_node.call("getblockcount") == lock_height - 1
    error = rejected(regtest_node, tb.raw(tx))
    assert (error.code, error.message) == (-26, "non-final")
    regtest_node.mine(1)
    assert regtest_node.call("sendrawtransaction", tb.raw(tx)) == tb.txid(tx)


def test_cltv_script_refuses_a_lock_time_below_its_own(regtest_node: Node) -> None:
    lock_height = regtest_node.call("getblockcount") + 3
    script = tb.cltv_script(lock_height, tb.key(5))
    txid, vout = fund(regtest_node, tb.p2wsh(script), 50_000)
    regtest_node.mine(5)
    tx = tb.spend([(txid, vout)], [(tb.p2wpkh(tb.key(9)), 50_000 - FEE)],
                  lock_time=lock_height - 1, sequence=0xFFFFFFFE)
    tb.set_witness(tx, 0, [tb.sign(tx, 0, script, 50_000, tb.key(5)), script])
    error = rejected(regtest_node, tb.raw(tx))
    assert error.message == LOCKTIME_FAILED


# --- double spends, maturity, inflation ---------------------------------------------------
def _p2wpkh_coin(node: Node, amount: int = 80_000) -> tuple[str, int]:
    return fund(node, tb.p2wpkh(tb.key(6)), amount)


def _pay(coin: tuple[str, int], amount: int, out_value: int, to: int) -> str:
    tx = tb.spend([coin], [(tb.p2wpkh(tb.key(to)), out_value)])
    tb.sign_p2wpkh(tx, 0, amount, tb.key(6))
    return tb.raw(tx)


def test_double_spend_refused_in_mempool_and_after_confirmation(regtest_node: Node) -> None:
    coin = _p2wpkh_coin(regtest_node)
    first = _pay(coin, 80_000, 79_000, to=7)
    second = _pay(coin, 80_000, 79_500, to=8)  # a lower fee: no replacement
    first_txid = regtest_node.call("sendrawtransaction", first)
    assert regtest_node.call("sendrawtransaction", first) == first_txid  # already in: fine
    error = rejected(regtest_node, second)
    assert error.code == -26
    assert error.message.startswith("insufficient fee, rejecting replacement")
    regtest_node.mine(1)
    error = rejected(regtest_node, second)
    assert (error.code, error.message) == (-25, "bad-txns-inputs-missingorspent")
    error = rejected(regtest_node, first)
    assert (error.code, error.message) == (-27, "Transaction outputs already in utxo set")
    result = regtest_node.call("testmempoolaccept", [second])[0]
    assert result["reject-reason"] == "missing-inputs"


def test_double_spend_inside_one_block_is_refused(regtest_node: Node) -> None:
    coin = _p2wpkh_coin(regtest_node)
    first = _pay(coin, 80_000, 79_000, to=7)
    second = _pay(coin, 80_000, 78_000, to=8)
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("generateblock", regtest_node.new_address(), [first, second])
    assert info.value.message.startswith(
        "TestBlockValidity failed: bad-txns-inputs-missingorspent"
    )


def test_immature_coinbase_spend_refused(regtest_node: Node) -> None:
    address = tb_address(regtest_node, tb.key(6))
    block_hash = regtest_node.mine(1, address)[0]
    coinbase = regtest_node.call("getblock", block_hash, 2)["tx"][0]
    value = 50 * 100_000_000
    tx = tb.spend([(coinbase["txid"], 0)], [(tb.p2wpkh(tb.key(7)), value - FEE)])
    tb.sign_p2wpkh(tx, 0, value, tb.key(6))
    error = rejected(regtest_node, tb.raw(tx))
    assert (error.code, error.message) == (
        -26,
        "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 1",
    )
    regtest_node.mine(98)
    assert rejected(regtest_node, tb.raw(tx)).message.endswith("depth 99")
    regtest_node.mine(1)  # a block at coinbase height + 100 may spend it
    assert regtest_node.call("sendrawtransaction", tb.raw(tx)) == tb.txid(tx)


def tb_address(node: Node, k: object) -> str:
    from btclib import b32
    from btclib.hashes import hash160

    assert hasattr(k, "public_key")
    return str(b32.address_from_witness(0, hash160(tb.pub(k)), "regtest"))  # type: ignore[arg-type]


def test_value_creation_refused(regtest_node: Node) -> None:
    coin = _p2wpkh_coin(regtest_node)
    error = rejected(regtest_node, _pay(coin, 80_000, 90_000, to=7))
    assert (error.code, error.message) == (
        -26,
        "bad-txns-in-belowout, value in (0.0008) < value out (0.0009)",
    )


def test_child_of_unconfirmed_parent_is_accepted_and_mined_in_order(regtest_node: Node) -> None:
    coin = regtest_node.send_to_script(tb.p2wpkh(tb.key(6)), 80_000)
    parent = tb.spend([coin], [(tb.p2wpkh(tb.key(6)), 79_000)])
    tb.sign_p2wpkh(parent, 0, 80_000, tb.key(6))
    regtest_node.call("sendrawtransaction", tb.raw(parent))
    child = tb.spend([(tb.txid(parent), 0)], [(tb.p2wpkh(tb.key(7)), 78_000)])
    tb.sign_p2wpkh(child, 0, 79_000, tb.key(6))
    regtest_node.call("sendrawtransaction", tb.raw(child))
    entry = regtest_node.call("getmempoolentry", tb.txid(child))
    assert entry["depends"] == [tb.txid(parent)] and entry["ancestorcount"] == 3
    block = regtest_node.call("getblock", regtest_node.mine(1)[0])
    assert block["tx"][1:] == [coin[0], tb.txid(parent), tb.txid(child)]
