"""The faucet wallet answers as bitcoind's: address types, dust, listunspent fields."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from btclib.script.sig_hash import PrecomputedTxData
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut

from regtest.node import Node, NodeRpcError
from regtest.node.keys import HARDENED, ExtendedKey, WalletKey
from regtest.node.node import script_from_address
from regtest.node.params import btc
from regtest.node.validation import Coin
from tests.regtest import txbuild as tb

ADDRESS_SHAPES = {
    "legacy": (r"[mn][1-9A-HJ-NP-Za-km-z]{25,34}", "pkh", 44),
    "p2sh-segwit": (r"2[1-9A-HJ-NP-Za-km-z]{25,34}", "sh(wpkh", 49),
    "bech32": (r"bcrt1q[02-9ac-hj-np-z]{38}", "wpkh", 84),
    "bech32m": (r"bcrt1p[02-9ac-hj-np-z]{58}", "tr", 86),
}


def test_bip32_derivation_matches_bip32_and_bip86_vectors() -> None:
    # BIP32 test vector 1: the master's fingerprint and m/0h's public key
    master = ExtendedKey.from_seed(bytes.fromhex("000102030405060708090a0b0c0d0e0f"))
    assert master.fingerprint.hex() == "3442193e"
    assert master.child(HARDENED).pubkey.hex() == (
        "035a784662a4a20a65bf6aab9ae98a6c068a81c52e4b032c0fb5400c706cfccc56"
    )
    # BIP86: "abandon" x 11 + "about", m/86h/0h/0h/0/0, internal and output keys
    seed = bytes.fromhex(
        "5eb00bbddcf069084889a8ab9155568165f5c453ccb85e70811aaed6f6da5fc1"
        "9a5ac40b389cd370d086206dec8aa6c43daea6690f20ad3d8d48b2d2ce9e38e4"
    )
    node = ExtendedKey.from_seed(seed)
    for n in (86 + HARDENED, HARDENED, HARDENED, 0, 0):
        node = node.child(n)
    from coincurve import PrivateKey

    key = WalletKey("bech32m", PrivateKey(node.secret.to_bytes(32, "big")), "")
    assert key.pubkey[1:].hex() == (
        "cc8a4bc64d897bddc5fbc2f670f7a8ba0b386779106cf1223c6fc5d7cd6fc115"
    )
    assert key.script.hex() == (
        "5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c"
    )


@pytest.mark.parametrize("address_type", list(ADDRESS_SHAPES))
def test_getnewaddress_types_are_funded_listed_and_spent(
    regtest_node: Node, address_type: str
) -> None:
    pattern, desc_head, purpose = ADDRESS_SHAPES[address_type]
    address = regtest_node.call("getnewaddress", "", address_type)
    assert re.fullmatch(pattern, address), address
    txid = regtest_node.call("sendtoaddress", address, "0.001")
    regtest_node.mine(1)
    (item,) = [u for u in regtest_node.call("listunspent") if u["address"] == address]
    assert (item["txid"], item["amount"]) == (txid, Decimal("0.00100000"))
    fingerprint = regtest_node.wallet.keychain.fingerprint
    origin = rf"\[{fingerprint}/{purpose}h/1h/0h/0/\d+\]"
    key_hex = "[0-9a-f]{64}" if address_type == "bech32m" else "0[23][0-9a-f]{64}"
    assert re.fullmatch(
        re.escape(desc_head + "(") + origin + key_hex + r"\)+#[0-9a-z]{8}", item["desc"]
    ), item["desc"]
    (parent,) = item["parent_descs"]
    assert parent.startswith(f"{desc_head}([{fingerprint}/{purpose}h/1h/0h]tpub")
    assert ("redeemScript" in item) == (address_type == "p2sh-segwit")
    assert list(item)[:4] == ["txid", "vout", "address", "label"]

    # the wallet signs a spend of that output, which the node accepts
    script = script_from_address(address)
    key = regtest_node.wallet.key_of(script)
    assert key is not None
    tx = Tx(
        2,
        0,
        [TxIn(OutPoint(bytes.fromhex(txid), item["vout"], check_validity=False))],
        [TxOut(99_000, tb.p2wpkh(tb.key(3)), check_validity=False)],
        check_validity=False,
    )
    prevouts = [TxOut(100_000, script, check_validity=False)]
    key.sign(tx, 0, prevouts, PrecomputedTxData(tx, prevouts))
    assert regtest_node.call("sendrawtransaction", tb.raw(tx)) == tx.id.hex()


def test_unknown_address_type(regtest_node: Node) -> None:
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("getnewaddress", "", "p2wsh")
    assert (info.value.code, info.value.message) == (-5, "Unknown address type 'p2wsh'")


@pytest.mark.parametrize(
    ("address_type", "threshold_sat"), [("bech32", 294), ("legacy", 546), ("p2sh-segwit", 540)]
)
def test_sendtoaddress_dust_is_too_small_and_builds_nothing(
    regtest_node: Node, address_type: str, threshold_sat: int
) -> None:
    address = regtest_node.call("getnewaddress", "", address_type)
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("sendtoaddress", address, btc(threshold_sat - 1))
    assert (info.value.code, info.value.message) == (-6, "Transaction amount too small")
    assert regtest_node.call("getrawmempool") == []
    txid = regtest_node.call("sendtoaddress", address, btc(threshold_sat))
    assert regtest_node.call("getrawmempool") == [txid]


def item_fees(mempool_entry: dict[str, Any]) -> int:
    return int(mempool_entry["fees"]["base"] * 100_000_000)


def test_listunspent_ancestry_of_unconfirmed_outputs(regtest_node: Node) -> None:
    first = regtest_node.call("sendtoaddress", regtest_node.call("getnewaddress"), "1")
    first_entry = regtest_node.call("getmempoolentry", first)
    unconfirmed = [u for u in regtest_node.call("listunspent", 0) if u["confirmations"] == 0]
    assert unconfirmed and all(u["txid"] == first for u in unconfirmed)
    for item in unconfirmed:
        assert item["ancestorcount"] == 1
        assert item["ancestorsize"] == first_entry["vsize"]
        assert item["ancestorfees"] == item_fees(first_entry)
        assert isinstance(item["ancestorfees"], int)
        keys = list(item)
        assert keys.index("confirmations") + 1 == keys.index("ancestorcount")
    # a child of the unconfirmed output, signed by the wallet: two ancestors' worth
    parent = unconfirmed[0]
    script = bytes.fromhex(parent["scriptPubKey"])
    value = int(parent["amount"] * 100_000_000)
    key = regtest_node.wallet.key_of(script)
    assert key is not None
    child = Tx(
        2,
        0,
        [TxIn(OutPoint(bytes.fromhex(first), parent["vout"], check_validity=False))],
        [TxOut(value - 1_000, script, check_validity=False)],
        check_validity=False,
    )
    prevouts = [TxOut(value, script, check_validity=False)]
    key.sign(child, 0, prevouts, PrecomputedTxData(child, prevouts))
    second = regtest_node.call("sendrawtransaction", tb.raw(child))
    second_entry = regtest_node.call("getmempoolentry", second)
    (item,) = [u for u in regtest_node.call("listunspent", 0) if u["txid"] == second]
    assert item["ancestorcount"] == 2
    assert item["ancestorsize"] == first_entry["vsize"] + second_entry["vsize"]
    assert item["ancestorfees"] == item_fees(first_entry) + 1_000
    confirmed = regtest_node.call("listunspent")
    assert all("ancestorcount" not in u for u in confirmed)


def test_old_datadir_keys_stay_visible(regtest_node: Node) -> None:
    """A wallet from before BIP32 (a `wallet_keys` counter) still sees its P2WPKH coins."""
    wallet = regtest_node.wallet
    old_key = wallet._pre_bip32_key(0)
    assert not wallet.owns(old_key.script)
    txid, vout = regtest_node.send_to_script(old_key.script, 50_000)
    regtest_node.mine(1)
    regtest_node.store.set_meta("wallet_keys", 1)
    datadir, clock = regtest_node.datadir, regtest_node.clock
    regtest_node.close()
    reopened = Node(datadir, clock=clock)
    try:
        assert reopened.wallet.owns(old_key.script)
        coin = next(c for c in reopened.wallet.coins() if c.outpoint == (bytes.fromhex(txid), vout))
        assert coin.coin == Coin(50_000, old_key.script, reopened.chain.height, False)
        assert coin.key.descriptor.startswith("wpkh(0")
    finally:
        reopened.close()
