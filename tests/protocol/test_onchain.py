"""The transactions the state machine broadcasts really spend the funding output:
checked with btclib's script engine (the one the regtest node validates with)."""

from __future__ import annotations

from btclib.script.engine import verify_input
from btclib.script.engine.flags import ScriptFlag
from btclib.tx.tx import Tx as BtclibTx
from btclib.tx.tx_out import TxOut as BtclibTxOut

from protocol.actions import Broadcast
from tests.protocol.pair import ChannelPair, preimage_of

FLAGS = ScriptFlag.P2SH | ScriptFlag.WITNESS | ScriptFlag.STRICTENC | ScriptFlag.LOW_S \
    | ScriptFlag.NULLDUMMY | ScriptFlag.DERSIG | ScriptFlag.WITNESS_PUBKEYTYPE \
    | ScriptFlag.NULLFAIL | ScriptFlag.CLEANSTACK


def assert_spends_funding(pair: ChannelPair, bc: Broadcast) -> None:
    static = pair.a.channel.static
    prevout = BtclibTxOut(static.funding_sat, static.funding_script_pubkey)
    tx = BtclibTx.parse(bc.raw_tx)
    verify_input([prevout], tx, 0, FLAGS)  # raises ScriptError if the witness is wrong
    assert len(tx.vin) == 1


def test_cooperative_close_tx_is_valid() -> None:
    pair = ChannelPair()
    htlc_id = pair.add("a", 5_000_000, 1)
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(htlc_id, preimage_of(1)))
    pair.settle()
    pair.do("a", lambda c: c.shutdown())
    pair.settle()
    assert_spends_funding(pair, pair.a.broadcasts[0])


def test_force_close_commitment_is_valid() -> None:
    pair = ChannelPair()
    pair.add("a", 5_000_000, 1)
    pair.add("b", 700_000, 2)
    pair.settle()
    pair.do("b", lambda c: c.fail("test"))
    assert_spends_funding(pair, pair.b.broadcasts[0])


def test_a_corrupted_witness_is_caught() -> None:
    import pytest
    from btclib.exceptions import BTClibValueError
    from btclib.script.engine import ScriptError

    from channel.tx import Tx

    pair = ChannelPair()
    pair.do("b", lambda c: c.fail("test"))
    tx = Tx.parse(pair.b.broadcasts[0].raw_tx)
    sig = tx.inputs[0].witness[1]
    tx.inputs[0].witness[1] = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
    with pytest.raises((ScriptError, BTClibValueError)):
        assert_spends_funding(pair, Broadcast(tx.serialize(), b"", ""))
