"""The node's checks at their boundaries: each test fails if the check is lost or moved by one.

What a mutation run found unguarded (issue 11): the second input's script,
an exception out of the script engine, duplicate inputs, the minimum relay
fee, a block confirming a conflict of a mempool transaction, finality with
mixed sequences, the 512-second unit of time-based relative locks, and the
chain limits (25 ancestors, 25 descendants, each counting the transaction).
"""

from __future__ import annotations

import pytest
from btclib.script.engine import verify_input
from btclib.tx.tx import Tx

from regtest.node import Node, NodeRpcError, validation
from regtest.node.errors import TxRejected
from regtest.pytest_plugin import ManualClock
from tests.regtest import txbuild as tb
from tests.regtest.test_replacement import OWNER, fund_many, pay, refusal, send

SEQUENCE_FINAL = 0xFFFFFFFF


def test_an_invalid_second_input_is_refused_in_mempool_and_block(regtest_node: Node) -> None:
    first, second = fund_many(regtest_node, [50_000, 50_000])
    tx = pay([(first, 50_000, OWNER), (second, 50_000, OWNER)], [(7, 98_000)])
    good = tx.vin[1].script_witness
    tb.sign_p2wpkh(tx, 1, 50_000, tb.key(9))  # the wrong key for input 1
    code, message = refusal(regtest_node, tx)
    # P2WPKH runs DUP HASH160 <hash> EQUALVERIFY CHECKSIG: another key fails the EQUALVERIFY
    assert (code, message) == (
        -26,
        "mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation)",
    )
    with pytest.raises(TxRejected) as rejected:
        regtest_node.mempool.accept(tx, 0, test_only=True)
    assert rejected.value.input_index == 1
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("generateblock", regtest_node.new_address(), [tb.raw(tx)])
    assert info.value.message.startswith("TestBlockValidity failed: mandatory-script-verify")
    assert regtest_node.call("getrawmempool") == []
    tx.vin[1].script_witness = good
    assert send(regtest_node, tx) == tb.txid(tx)


def test_a_script_engine_exception_is_a_refusal_not_a_crash(
    regtest_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: btclib raising something other than ScriptError on input 1."""
    first, second = fund_many(regtest_node, [50_000, 50_000])
    tx = pay([(first, 50_000, OWNER), (second, 50_000, OWNER)], [(7, 98_000)])

    def engine_bug(prevouts: list[object], tx_: Tx, i: int, *args: object) -> None:
        if i == 1:
            raise IndexError("engine bug")
        verify_input(prevouts, tx_, i, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(validation, "verify_input", engine_bug)
    assert refusal(regtest_node, tx) == (
        -26,
        "mandatory-script-verify-flag-failed (unknown error)",
    )
    with pytest.raises(TxRejected) as rejected:
        regtest_node.mempool.accept(tx, 0)
    assert (rejected.value.script_error, rejected.value.input_index) == ("UNKNOWN_ERROR", 1)
    assert regtest_node.call("getrawmempool") == []
    monkeypatch.undo()
    assert send(regtest_node, tx) == tb.txid(tx)


def test_duplicate_inputs_are_refused(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [50_000])
    tx = pay([(coin, 50_000, OWNER), (coin, 50_000, OWNER)], [(7, 90_000)])
    assert refusal(regtest_node, tx) == (-26, "bad-txns-inputs-duplicate")
    with pytest.raises(NodeRpcError) as info:
        regtest_node.call("generateblock", regtest_node.new_address(), [tb.raw(tx)])
    assert info.value.message.startswith("TestBlockValidity failed: bad-txns-inputs-duplicate")


def test_minimum_relay_fee_on_both_sides(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [50_000])
    vsize = pay([(coin, 50_000, OWNER)], [(7, 49_000)]).vsize
    short = pay([(coin, 50_000, OWNER)], [(7, 50_000 - vsize + 1)])  # 1 sat/vB less 1 sat
    assert short.vsize == vsize
    assert refusal(regtest_node, short) == (
        -26,
        f"min relay fee not met, {vsize - 1} < {vsize}",
    )
    exact = pay([(coin, 50_000, OWNER)], [(7, 50_000 - vsize)])
    assert send(regtest_node, exact) == tb.txid(exact)


def test_a_block_confirming_a_conflict_evicts_the_mempool_spend(regtest_node: Node) -> None:
    coin, unrelated_coin = fund_many(regtest_node, [50_000, 50_000])
    waiting = send(regtest_node, pay([(coin, 50_000, OWNER)], [(7, 49_000)]))
    child = send(regtest_node, pay([((waiting, 0), 49_000, 7)], [(8, 48_000)]))
    assert set(regtest_node.call("getrawmempool")) == {waiting, child}
    unrelated = send(regtest_node, pay([(unrelated_coin, 50_000, OWNER)], [(8, 49_000)]))
    conflict = pay([(coin, 50_000, OWNER)], [(9, 49_500)])  # a lower fee: mined anyway
    block = regtest_node.call("generateblock", regtest_node.new_address(), [tb.raw(conflict)])
    assert tb.txid(conflict) in regtest_node.call("getblock", block["hash"])["tx"]
    assert regtest_node.call("getrawmempool") == [unrelated]
    assert regtest_node.call("gettxout", waiting, 0) is None


def _two_input_spend(node: Node, lock_offset: int, sequences: tuple[int, int]) -> Tx:
    """A spend of two fresh coins, its lock time `lock_offset` from the next block's height."""
    first, second = fund_many(node, [50_000, 50_000])
    lock_time = node.call("getblockcount") + 1 + lock_offset
    tx = tb.spend([first, second], [(tb.p2wpkh(tb.key(7)), 98_000)], lock_time=lock_time)
    for i, sequence in enumerate(sequences):
        tx.vin[i].sequence = sequence
    tb.sign_p2wpkh(tx, 0, 50_000, tb.key(OWNER))
    tb.sign_p2wpkh(tx, 1, 50_000, tb.key(OWNER))
    return tx


@pytest.mark.parametrize(
    ("sequences", "final"),
    [
        ((SEQUENCE_FINAL, SEQUENCE_FINAL), True),
        ((SEQUENCE_FINAL, SEQUENCE_FINAL - 1), False),
        ((SEQUENCE_FINAL - 1, SEQUENCE_FINAL), False),
    ],
)
def test_finality_with_mixed_sequences(
    regtest_node: Node, sequences: tuple[int, int], final: bool
) -> None:
    """A lock time in the future binds unless every input's sequence is final."""
    tx = _two_input_spend(regtest_node, 10, sequences)
    if final:
        assert send(regtest_node, tx) == tb.txid(tx)
    else:
        assert refusal(regtest_node, tx) == (-26, "non-final")


@pytest.mark.parametrize(("lock_offset", "final"), [(0, False), (-1, True)])
def test_lock_time_height_boundary(regtest_node: Node, lock_offset: int, final: bool) -> None:
    """IsFinalTx: a lock time below the next block's height is final, equal to it is not."""
    tx = _two_input_spend(regtest_node, lock_offset, (0, SEQUENCE_FINAL - 1))
    if final:
        assert send(regtest_node, tx) == tb.txid(tx)
    else:
        assert refusal(regtest_node, tx) == (-26, "non-final")


def test_time_locks_count_in_units_of_512_seconds(
    regtest_node: Node, regtest_clock: ManualClock
) -> None:
    """One unit of a time-based relative lock is 512 s: 511 s after the coin is too early."""
    chain = regtest_node.chain
    base = chain.tip.mtp + 10_000
    for i in range(11):  # eleven blocks one second apart: the medians are known
        regtest_clock.now = base + i
        regtest_node.mine(1)
    regtest_clock.now = base + 11
    (coin,) = fund_many(regtest_node, [50_000])
    coin_time = chain.mtp_at(chain.height - 1)  # BIP68 counts from the block before
    assert coin_time == base + 5
    sequence = (1 << 22) | 1  # one unit
    tx = pay([(coin, 50_000, OWNER)], [(7, 49_000)], sequence=sequence)
    regtest_clock.now = coin_time + 511
    regtest_node.mine(6)  # six of the last eleven at coin_time + 511: that is the median
    assert chain.tip.mtp == coin_time + 511
    assert refusal(regtest_node, tx) == (-26, "non-BIP68-final")
    regtest_clock.now = coin_time + 512
    regtest_node.mine(6)
    assert chain.tip.mtp == coin_time + 512
    assert send(regtest_node, tx) == tb.txid(tx)


def test_ancestor_limit_counts_the_transaction_itself(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [1_000_000])
    outpoint, value, key = coin, 1_000_000, OWNER
    for _ in range(25):  # 25 in a chain: the last has 24 ancestors
        value -= 1_000
        txid = send(regtest_node, pay([(outpoint, value + 1_000, key)], [(7, value)]))
        outpoint, key = (txid, 0), 7
    tx = pay([(outpoint, value, 7)], [(7, value - 1_000)])
    assert refusal(regtest_node, tx) == (
        -26,
        "too-long-mempool-chain, too many unconfirmed ancestors [limit: 25]",
    )


def test_descendant_limit_counts_the_root_and_the_newcomer(regtest_node: Node) -> None:
    (coin,) = fund_many(regtest_node, [1_000_000])
    root = send(regtest_node, pay([(coin, 1_000_000, OWNER)], [(7, 30_000)] * 25))
    for n in range(24):  # the root and 24 children: 25
        send(regtest_node, pay([((root, n), 30_000, 7)], [(8, 29_000)]))
    extra = pay([((root, 24), 30_000, 7)], [(8, 29_000)])
    assert refusal(regtest_node, extra) == (
        -26,
        f"too-long-mempool-chain, too many descendants for tx {root} [limit: 25]",
    )
