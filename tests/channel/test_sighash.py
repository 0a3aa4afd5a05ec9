"""Our serializer and BIP143 sighash against btclib on random transactions, and the
HTLC fast path against the generic BIP143 path."""

from __future__ import annotations

from btclib.script import sig_hash
from btclib.tx.tx import Tx as BtclibTx
from btclib.tx.tx_out import TxOut as BtclibTxOut
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from channel import scripts
from channel.htlc import HtlcSighasher, build_htlc_tx, second_stage_script_pubkey
from channel.sighash import Bip143Precomputed, bip143_sighash, legacy_sighash
from channel.tx import OutPoint, Tx, TxIn, TxOut

HASH_TYPES = [0x01, 0x02, 0x03, 0x81, 0x82, 0x83]
pubkeys = st.binary(min_size=32, max_size=32).map(lambda b: b"\x02" + b)
amounts = st.integers(min_value=0, max_value=3_000_000 * 10**8)  # six sum below 21M BTC


@st.composite
def transactions(draw: st.DrawFn) -> tuple[Tx, list[bytes], list[int], bool]:
    """A random tx; each input spends a P2WSH (random witness script) or P2WPKH."""
    n_in = draw(st.integers(1, 6))
    txids = draw(
        st.lists(st.binary(min_size=32, max_size=32), min_size=n_in, max_size=n_in, unique=True)
    )
    witness_scripts, prevout_amounts, inputs = [], [], []
    for txid in txids:
        if draw(st.booleans()):
            wscript = scripts.to_local_script(
                draw(pubkeys), draw(st.integers(1, 2**16)), draw(pubkeys)
            )
            witness = [draw(st.binary(min_size=71, max_size=73)), wscript]
            script = wscript
        else:
            key = draw(pubkeys)
            witness = [draw(st.binary(min_size=71, max_size=73)), key]
            script = key  # marker: P2WPKH, the pubkey itself
        inputs.append(
            TxIn(
                OutPoint(txid, draw(st.integers(0, 2**32 - 1))),
                draw(st.integers(0, 2**32 - 1)),
                b"",
                witness,
            )
        )
        witness_scripts.append(script)
        prevout_amounts.append(draw(amounts))
    outputs = [
        TxOut(draw(amounts), draw(st.binary(min_size=1, max_size=60)))
        for _ in range(draw(st.integers(1, 6)))
    ]
    tx = Tx(draw(st.sampled_from([1, 2])), inputs, outputs, draw(st.integers(0, 2**32 - 1)))
    return tx, witness_scripts, prevout_amounts, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(transactions(), st.data())
def test_bip143_matches_btclib(
    case: tuple[Tx, list[bytes], list[int], bool], data: st.DataObject
) -> None:
    tx, witness_scripts, prevout_amounts, use_precomputed = case
    btx = BtclibTx.parse(tx.serialize())
    assert btx.serialize(include_witness=True) == tx.serialize()
    assert btx.id == tx.txid()[::-1]
    prevouts = [
        BtclibTxOut(
            amount,
            scripts.p2wpkh(s) if len(s) == 33 else scripts.p2wsh(s),
        )
        for s, amount in zip(witness_scripts, prevout_amounts, strict=True)
    ]
    precomputed = Bip143Precomputed(tx) if use_precomputed else None
    index = data.draw(st.integers(0, len(tx.inputs) - 1))
    hash_type = data.draw(st.sampled_from(HASH_TYPES))
    script = witness_scripts[index]
    code = scripts.p2wpkh_script_code(script) if len(script) == 33 else script
    ours = bip143_sighash(tx, index, code, prevout_amounts[index], hash_type, precomputed)
    assert ours == sig_hash.from_tx(prevouts, btx, index, hash_type)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_tx_parse_roundtrip(data: st.DataObject) -> None:
    tx, *_ = data.draw(transactions())
    if data.draw(st.booleans()):
        for txin in tx.inputs:
            txin.witness = []
    raw = tx.serialize()
    assert Tx.parse(raw).serialize() == raw
    assert Tx.parse(raw).txid() == tx.txid()


def test_legacy_sighash_matches_btclib() -> None:
    pubkey_hash_script = b"\x76\xa9\x14" + b"\x07" * 20 + b"\x88\xac"
    tx = Tx(
        2,
        [TxIn(OutPoint(b"\x01" * 32, 0), 0xFFFFFFFF), TxIn(OutPoint(b"\x02" * 32, 3), 5)],
        [TxOut(1234, b"\x00\x14" + b"\x09" * 20)],
        7,
    )
    btx = BtclibTx.parse(tx.serialize())
    for i in range(2):
        assert legacy_sighash(tx, i, pubkey_hash_script) == sig_hash.legacy(
            pubkey_hash_script, btx, i, sig_hash.ALL
        )


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 500),
    st.integers(1000, 10**9),
    st.booleans(),
    st.integers(0, 499_999_999),
    st.integers(0, 100_000),
    pubkeys,
    pubkeys,
    pubkeys,
    st.binary(min_size=32, max_size=32),
)
def test_htlc_fast_sighash_matches_generic(
    txid: bytes,
    index: int,
    amount_sat: int,
    offered: bool,
    cltv_expiry: int,
    feerate_per_kw: int,
    revocation: bytes,
    local_key: bytes,
    remote_key: bytes,
    payment_hash: bytes,
) -> None:
    fee = (703 if not offered else 663) * feerate_per_kw // 1000
    assume(amount_sat > fee)  # an untrimmed HTLC always covers its fee
    out_spk = second_stage_script_pubkey(revocation, 144, local_key)
    hs = scripts.HtlcScripts(revocation, local_key, remote_key)
    wscript = hs.offered(payment_hash) if offered else hs.received(payment_hash, cltv_expiry)
    tx = build_htlc_tx(txid, index, amount_sat, offered, cltv_expiry, out_spk, feerate_per_kw)
    fast = HtlcSighasher(txid, out_spk, feerate_per_kw).sighash(
        index, wscript, amount_sat, offered, cltv_expiry
    )
    assert fast == bip143_sighash(tx, 0, wscript, amount_sat)


def test_sighash_single_without_a_matching_output_matches_btclib() -> None:
    """BIP143: SIGHASH_SINGLE for an input whose index has no output signs a zero
    hashOutputs; the index right past the last output is the boundary."""
    wscript = scripts.to_local_script(b"\x02" + b"\x05" * 32, 144, b"\x03" + b"\x06" * 32)
    tx = Tx(
        2,
        [TxIn(OutPoint(bytes([i]) * 32, i), 0xFFFFFFFD, b"", [b"\x30" * 72, wscript])
         for i in range(3)],
        [TxOut(50_000, scripts.p2wsh(wscript))],
        0,
    )
    btx = BtclibTx.parse(tx.serialize())
    prevouts = [BtclibTxOut(70_000, scripts.p2wsh(wscript)) for _ in range(3)]
    for hash_type in (0x03, 0x83):
        for index in (0, 1, 2):
            ours = bip143_sighash(tx, index, wscript, 70_000, hash_type)
            assert ours == sig_hash.from_tx(prevouts, btx, index, hash_type), (hash_type, index)
