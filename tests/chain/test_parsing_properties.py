"""Properties of the pure pieces: the block parser on any transactions and any
truncation, BlockRef's JSON refusals, and coin selection's fee and amount
arithmetic (signatures checked against channel/'s verify)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.chain.block import Block, BlockParseError, merkle_root
from channel.chain.coinselect import (
    DUST_LIMIT_SAT,
    Coin,
    InsufficientFunds,
    build_signed_tx,
    fee_for_weight,
)
from channel.chain.interfaces import BlockRef
from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh, p2wpkh_script_code
from channel.sighash import bip143_sighash
from channel.signing import compact_signature, verify
from channel.tx import OutPoint, Tx, TxIn, TxOut, sha256d, varint

_txin = st.builds(
    TxIn,
    st.builds(OutPoint, st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1)),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=40),
    st.lists(st.binary(max_size=40), max_size=2),
)
_txout = st.builds(TxOut, st.integers(0, 2**63 - 1), st.binary(max_size=40))
_tx = st.builds(
    Tx,
    st.integers(-(2**31), 2**31 - 1),
    st.lists(_txin, min_size=1, max_size=3),
    st.lists(_txout, min_size=1, max_size=3),
    st.integers(0, 2**32 - 1),
)


# The parser has few branches; a few hundred blocks cover them, where the suite's
# default of 1000 examples of nested transactions costs tens of seconds here.
_PARSER_EXAMPLES = settings(max_examples=250)


def _block_bytes(txs: list[Tx]) -> bytes:
    root = merkle_root([tx.txid() for tx in txs])
    header = struct.pack("<i32s32sIII", 0x20000000, b"\x11" * 32, root, 1_700_000_000, 0, 7)
    return header + varint(len(txs)) + b"".join(tx.serialize() for tx in txs)


@_PARSER_EXAMPLES
@given(st.lists(_tx, min_size=1, max_size=4))
def test_blocks_of_any_transactions_parse_back(txs: list[Tx]) -> None:
    raw = _block_bytes(txs)
    block = Block.parse(raw, expected_hash=sha256d(raw[:80])[::-1].hex())
    assert [tx.serialize() for tx in block.txs] == [tx.serialize() for tx in txs]
    assert block.prev_hash == (b"\x11" * 32)[::-1].hex()


@_PARSER_EXAMPLES
@given(st.lists(_tx, min_size=1, max_size=3), st.data())
def test_any_truncation_is_a_parse_error(txs: list[Tx], data: st.DataObject) -> None:
    raw = _block_bytes(txs)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(BlockParseError):
        Block.parse(raw[:cut])


@_PARSER_EXAMPLES
@given(st.lists(_tx, min_size=1, max_size=3), st.data())
def test_mutated_blocks_raise_only_parse_errors(txs: list[Tx], data: st.DataObject) -> None:
    raw = bytearray(_block_bytes(txs))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    # Whatever the bytes, the parser answers with a block or a BlockParseError:
    # never an IndexError, KeyError or a hang that a hostile node could cause.
    with contextlib.suppress(BlockParseError):
        Block.parse(bytes(raw))


def test_blockref_json_refusals() -> None:
    good = BlockRef(5, "ab" * 32)
    assert BlockRef.from_json(good.to_json()) == good
    for bad in (
        {"height": -1, "hash": "ab" * 32},
        {"height": "5", "hash": "ab" * 32},
        {"height": 5, "hash": "AB" * 32},
        {"height": 5, "hash": "ab" * 31},
    ):
        with pytest.raises(ValueError):
            BlockRef.from_json(bad)  # type: ignore[arg-type]


_secrets = [bytes([i + 1]) * 32 for i in range(6)]


@_PARSER_EXAMPLES
@given(
    st.lists(st.integers(1_000, 5_000_000), min_size=1, max_size=6),
    st.integers(DUST_LIMIT_SAT, 6_000_000),
    st.integers(253, 20_000),
)
def test_coin_selection_pays_exactly_and_never_underpays_the_fee(
    amounts: list[int], pay_sat: int, feerate_per_kw: int
) -> None:
    coins = [
        Coin(OutPoint(bytes([i]) * 32, i), amount, _secrets[i], pubkey_from_secret(_secrets[i]))
        for i, amount in enumerate(amounts)
    ]
    destination = TxOut(pay_sat, b"\x00\x20" + bytes(32))
    change_script = p2wpkh(pubkey_from_secret(b"\x09" * 32))
    try:
        tx, used = build_signed_tx(coins, [destination], change_script, feerate_per_kw)
    except InsufficientFunds as short:
        assert short.available_sat == sum(amounts)
        assert short.needed_sat > short.available_sat
        return
    input_sat = sum(c.amount_sat for c in used)
    fee_sat = input_sat - sum(o.amount_sat for o in tx.outputs)
    assert destination in tx.outputs
    assert fee_sat >= fee_for_weight(tx.weight(), feerate_per_kw)
    change = [o for o in tx.outputs if o.script_pubkey == change_script]
    if change:
        assert change[0].amount_sat >= DUST_LIMIT_SAT
        # with change, the fee is what the estimate asked: within the signature slack
        assert fee_sat <= fee_for_weight(tx.weight() + 4 * len(used), feerate_per_kw)
    else:
        # no change only when change would have been dust: the leftover that went
        # to the fee is below the dust limit plus the fee of a change output
        # (31 bytes, 124 weight units) and the signature-size slack
        with_change_weight = tx.weight() + 124 + 4 * len(used)
        assert fee_sat < DUST_LIMIT_SAT + fee_for_weight(with_change_weight, feerate_per_kw)
    by_outpoint = {c.outpoint: c for c in used}
    for i, txin in enumerate(tx.inputs):
        coin = by_outpoint[txin.outpoint]
        signature, pubkey = txin.witness
        assert pubkey == coin.pubkey
        digest = bip143_sighash(tx, i, p2wpkh_script_code(pubkey), coin.amount_sat)
        assert verify(pubkey, digest, compact_signature(signature[:-1]))


def test_long_scripts_and_witnesses_use_multibyte_lengths() -> None:
    # Lengths of 253 and more are CompactSize 0xfd + 2 bytes: what a real
    # commitment's witness script or a large output script needs.
    tx = Tx(
        2,
        [TxIn(OutPoint(b"\x01" * 32, 0), 0, b"\x51" * 300, [b"\x02" * 70_000, b"\x03" * 300])],
        [TxOut(1, b"\x6a" * 253), TxOut(2, b"\x00\x14" + bytes(20))],
        0,
    )
    raw = _block_bytes([tx] * 253)  # 253 transactions: a 0xfd count too
    block = Block.parse(raw)
    assert len(block.txs) == 253 and block.txs[0].serialize() == tx.serialize()
