"""Full replacement (RBF) as Bitcoin Core v28: who replaces whom, and Core's refusals.

Each refusal is checked with sendrawtransaction's exact code and text, and
each acceptance by what left the mempool (the conflict and its descendants)
and what can no longer be spent (the replaced transactions' outputs).
"""

from __future__ import annotations

import pytest
from btclib.tx.tx import Tx

from regtest.node import Node, NodeRpcError
from regtest.node.params import format_money
from regtest.node.replacement import format_fee_rate
from tests.regtest import txbuild as tb

OWNER = 6  # the key every test coin pays to


def fund_many(node: Node, amounts: list[int]) -> list[tuple[str, int]]:
    """Confirmed P2WPKH coins of key OWNER, one per amount."""
    coins = [node.send_to_script(tb.p2wpkh(tb.key(OWNER)), amount) for amount in amounts]
    node.mine(1)
    return coins


def pay(
    inputs: list[tuple[tuple[str, int], int, int]],
    outputs: list[tuple[int, int]],
    *,
    sequence: int = 0xFFFFFFFD,
) -> Tx:
    """A signed spend: inputs (outpoint, amount, key), outputs (key, value)."""
    tx = tb.spend(
        [outpoint for outpoint, _, _ in inputs],
        [(tb.p2wpkh(tb.key(k)), value) for k, value in outputs],
        sequence=sequence,
    )
    for i, (_, amount, k) in enumerate(inputs):
        tb.sign_p2wpkh(tx, i, amount, tb.key(k))
    return tx


def send(node: Node, tx: Tx) -> str:
    txid: str = node.call("sendrawtransaction", tb.raw(tx))
    return txid


def refusal(node: Node, tx: Tx) -> tuple[int, str]:
    with pytest.raises(NodeRpcError) as info:
        node.call("sendrawtransaction", tb.raw(tx))
    return info.value.code, info.value.message


def vsize_of(node: Node, tx: Tx) -> int:
    result = node.call("testmempoolaccept", [tb.raw(tx)])[0]
    assert result["allowed"], result
    size: int = result["vsize"]
    return size


def test_higher_fee_replacement_evicts_the_original_and_its_descendants(
    regtest_node: Node,
) -> None:
    (coin,) = fund_many(regtest_node, [100_000])
    # the original does not signal BIP125: full RBF replaces it all the same
    original = pay([(coin, 100_000, OWNER)], [(7, 99_000)], sequence=0xFFFFFFFE)
    original_txid = send(regtest_node, original)
    child = pay([((original_txid, 0), 99_000, 7)], [(8, 98_000)])
    child_txid = send(regtest_node, child)
    grandchild = pay([((child_txid, 0), 98_000, 8)], [(9, 97_000)])
    grandchild_txid = send(regtest_node, grandchild)

    replacement = pay([(coin, 100_000, OWNER)], [(10, 95_000)])
    assert regtest_node.call("testmempoolaccept", [tb.raw(replacement)])[0]["allowed"]
    # a test does not evict
    assert original_txid in regtest_node.call("getrawmempool")
    replacement_txid = send(regtest_node, replacement)

    assert regtest_node.call("getrawmempool") == [replacement_txid]
    for gone in (original_txid, child_txid, grandchild_txid):
        with pytest.raises(NodeRpcError) as info:
            regtest_node.call("getmempoolentry", gone)
        assert info.value.code == -5
        assert regtest_node.call("gettxout", gone, 0) is None
    # the replaced transactions' outputs are spendable no more
    orphan = pay([((child_txid, 0), 98_000, 8)], [(9, 96_000)])
    assert refusal(regtest_node, orphan) == (-25, "bad-txns-inputs-missingorspent")
    again = pay([((original_txid, 0), 99_000, 7)], [(8, 97_500)])
    assert refusal(regtest_node, again) == (-25, "bad-txns-inputs-missingorspent")
    # and the original itself is now the one that must pay to come back
    code, message = refusal(regtest_node, original)
    assert code == -26 and message.startswith("insufficient fee, rejecting replacement")

    block_hash = regtest_node.mine(1)[0]
    assert replacement_txid in regtest_node.call("getblock", block_hash)["tx"]
    assert refusal(regtest_node, original) == (-25, "bad-txns-inputs-missingorspent")


def test_equal_fee_replacement_is_refused_with_cores_feerate_text(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [100_000])
    original_txid = send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    vsize = regtest_node.call("getmempoolentry", original_txid)["vsize"]
    # Same fee, the same size but for the signature, whose DER encoding may differ by a
    # byte (r or s below 2^255; the coin, so the sighash, changes with the run): so each
    # rate is from its own vsize (the test failed once on a 110 vs 109 vB pair).
    same_fee = pay([(coin, 100_000, OWNER)], [(8, 99_000)])
    new_vsize = int(regtest_node.call("decoderawtransaction", tb.raw(same_fee))["vsize"])
    assert abs(new_vsize - vsize) <= 1
    old_rate = format_fee_rate(1000 * 1000 // vsize)
    new_rate = format_fee_rate(1000 * 1000 // new_vsize)
    assert refusal(regtest_node, same_fee) == (
        -26,
        f"insufficient fee, rejecting replacement {tb.txid(same_fee)}; "
        f"new feerate {new_rate} <= old feerate {old_rate}",
    )
    assert regtest_node.call("getrawmempool") == [original_txid]


def test_lower_feerate_with_more_fee_is_refused(regtest_node: Node) -> None:
    coin, extra = fund_many(regtest_node, [100_000, 50_000])
    original_txid = send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    original_vsize = regtest_node.call("getmempoolentry", original_txid)["vsize"]
    # one more (confirmed) input: 1,100 sat of fee on about twice the size
    bigger = pay([(coin, 100_000, OWNER), (extra, 50_000, OWNER)], [(8, 148_900)])
    code, message = refusal(regtest_node, bigger)
    assert code == -26
    bigger_vsize = bigger.vsize
    assert message == (
        f"insufficient fee, rejecting replacement {tb.txid(bigger)}; new feerate "
        f"{format_fee_rate(1100 * 1000 // bigger_vsize)} <= old feerate "
        f"{format_fee_rate(1000 * 1000 // original_vsize)}"
    )


def test_replacement_must_pay_for_the_descendants_it_evicts(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [100_000])
    original_txid = send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    # a child paying 20,000 sat makes the package worth 21,000
    send(regtest_node, pay([((original_txid, 0), 99_000, 7)], [(8, 79_000)]))
    replacement = pay([(coin, 100_000, OWNER)], [(9, 95_000)])  # 5,000 sat: higher feerate
    assert refusal(regtest_node, replacement) == (
        -26,
        f"insufficient fee, rejecting replacement {tb.txid(replacement)}, less fees than "
        f"conflicting txs; {format_money(5_000)} < {format_money(21_000)}",
    )
    # one satoshi short of the package's fees, then exactly them (but nothing for relay)
    short = pay([(coin, 100_000, OWNER)], [(9, 100_000 - 20_999)])
    assert refusal(regtest_node, short) == (
        -26,
        f"insufficient fee, rejecting replacement {tb.txid(short)}, less fees than "
        f"conflicting txs; {format_money(20_999)} < {format_money(21_000)}",
    )
    level = pay([(coin, 100_000, OWNER)], [(9, 100_000 - 21_000)])
    assert refusal(regtest_node, level) == (
        -26,
        f"insufficient fee, rejecting replacement {tb.txid(level)}, not enough additional "
        f"fees to relay; 0.00 < {format_money(level.vsize)}",
    )


def test_replacement_must_add_the_incremental_relay_fee_on_its_size(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [100_000])
    send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    vsize = pay([(coin, 100_000, OWNER)], [(8, 98_000)]).vsize
    # one satoshi short of paying 1 sat/vB on its own size on top of the 1,000 evicted
    short = pay([(coin, 100_000, OWNER)], [(8, 99_000 - vsize + 1)])
    assert short.vsize == vsize
    assert refusal(regtest_node, short) == (
        -26,
        f"insufficient fee, rejecting replacement {tb.txid(short)}, not enough additional "
        f"fees to relay; {format_money(vsize - 1)} < {format_money(vsize)}",
    )
    enough = pay([(coin, 100_000, OWNER)], [(8, 99_000 - vsize)])
    assert send(regtest_node, enough) == tb.txid(enough)


def _fan_out(node: Node, coin: tuple[str, int], children: int) -> None:
    """An original paying `children` outputs, each spent by its own child."""
    outputs = max(children, 1)
    value = (300_000 - 2_000) // outputs  # the original pays about 2,000 sat
    parent = pay([(coin, 300_000, OWNER)], [(7, value)] * outputs)
    parent_txid = send(node, parent)
    for n in range(children):
        send(node, pay([((parent_txid, n), value, 7)], [(8, value - 200)]))


def test_at_most_100_evictions(regtest_node: Node) -> None:
    coins = fund_many(regtest_node, [300_000] * 6)
    # four originals with 24 children each (25 apiece) and one with none: 101 in all
    for coin in coins[:4]:
        _fan_out(regtest_node, coin, 24)
    _fan_out(regtest_node, coins[4], 0)
    assert len(regtest_node.call("getrawmempool")) == 101
    inputs = [(coin, 300_000, OWNER) for coin in coins[:5]]
    too_many = pay(inputs, [(9, 1_400_000)])
    assert refusal(regtest_node, too_many) == (
        -26,
        f"too many potential replacements, rejecting replacement {tb.txid(too_many)}; "
        "too many potential replacements (101 > 100)",
    )
    # exactly 100 is allowed: leave out the fifth original
    hundred = pay([(coin, 300_000, OWNER) for coin in coins[:4]], [(9, 1_100_000)])
    hundred_txid = send(regtest_node, hundred)
    mempool = regtest_node.call("getrawmempool")
    assert hundred_txid in mempool and len(mempool) == 2  # with the fifth original


def test_replacement_may_not_add_unconfirmed_inputs(regtest_node: Node) -> None:
    coin, other = fund_many(regtest_node, [100_000, 100_000])
    send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    unrelated_txid = send(regtest_node, pay([(other, 100_000, OWNER)], [(8, 99_000)]))
    replacement = pay([(coin, 100_000, OWNER), ((unrelated_txid, 0), 99_000, 8)], [(9, 189_000)])
    assert refusal(regtest_node, replacement) == (
        -26,
        f"replacement-adds-unconfirmed, replacement {tb.txid(replacement)} adds unconfirmed "
        "input, idx 1",
    )


def test_a_transaction_may_not_spend_what_it_replaces(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [100_000])
    original = pay([(coin, 100_000, OWNER)], [(7, 50_000), (7, 49_000)])
    original_txid = send(regtest_node, original)
    # spends the original's coin (a conflict) and the original's own output 0
    cheat = pay([(coin, 100_000, OWNER), ((original_txid, 0), 50_000, 7)], [(9, 140_000)])
    assert refusal(regtest_node, cheat) == (
        -26,
        f"bad-txns-spends-conflicting-tx, {tb.txid(cheat)} spends conflicting transaction "
        f"{original_txid}",
    )


def test_package_test_refuses_replacement(regtest_node: Node) -> None:
    coin, other = fund_many(regtest_node, [100_000, 100_000])
    send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    replacement = pay([(coin, 100_000, OWNER)], [(8, 90_000)])
    unrelated = pay([(other, 100_000, OWNER)], [(8, 99_000)])
    results = regtest_node.call("testmempoolaccept", [tb.raw(unrelated), tb.raw(replacement)])
    assert results[1]["reject-reason"] == "bip125-replacement-disallowed"
    assert len(regtest_node.call("getrawmempool")) == 1


def test_replacement_survives_a_restart(regtest_node: Node, tmp_path: object) -> None:
    (coin,) = fund_many(regtest_node, [100_000])
    send(regtest_node, pay([(coin, 100_000, OWNER)], [(7, 99_000)]))
    replacement_txid = send(regtest_node, pay([(coin, 100_000, OWNER)], [(8, 95_000)]))
    datadir, clock = regtest_node.datadir, regtest_node.clock
    regtest_node.close()
    reopened = Node(datadir, clock=clock)
    try:
        assert reopened.call("getrawmempool") == [replacement_txid]
    finally:
        reopened.close()
