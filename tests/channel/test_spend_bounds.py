"""spend.py at its boundaries: the fee is reckoned on the largest signature, a claim
must leave at least the dust threshold, and the two sequences are what BOLT #5 claims
need (final for preimage and revocation spends, 0xFFFFFFFE to keep nLockTime on)."""

from __future__ import annotations

import dataclasses

import pytest

from channel import scripts
from channel.errors import TransactionError
from channel.spend import (
    CLAIM_DUST_LIMIT_SAT,
    MAX_WITNESS_SIGNATURE_SIZE,
    SEQUENCE_FINAL,
    SEQUENCE_LOCKTIME_ENABLED,
    SpendableOutput,
    build_spend_tx,
)
from channel.tx import OutPoint

KEY = b"\x03" * 32
DEST = scripts.p2wpkh(bytes.fromhex("02" + "11" * 32))
FEERATE = 2_500


def output(amount_sat: int, index: int = 0, sequence: int = SEQUENCE_FINAL) -> SpendableOutput:
    wscript = b"\x51"  # OP_TRUE: the signature is not checked here, only the fee
    return SpendableOutput(OutPoint(b"\x07" * 32, index), amount_sat, wscript, KEY,
                           (b"\x01", wscript), sequence=sequence)


def fee_of(amount_sat: int) -> int:
    tx = build_spend_tx([output(amount_sat)], DEST, FEERATE)
    return amount_sat - tx.outputs[0].amount_sat


def test_fee_is_reckoned_on_the_largest_signature() -> None:
    assert MAX_WITNESS_SIGNATURE_SIZE == 73  # 72-byte strict DER + sighash type byte
    tx = build_spend_tx([output(100_000)], DEST, FEERATE)
    probe = tx.copy()
    probe.inputs[0].witness[0] = b"\x00" * MAX_WITNESS_SIGNATURE_SIZE
    assert 100_000 - tx.outputs[0].amount_sat == -(-FEERATE * probe.weight() // 1000)
    assert probe.weight() >= tx.weight()


def test_a_claim_must_leave_the_dust_threshold() -> None:
    assert CLAIM_DUST_LIMIT_SAT == 546
    fee = fee_of(1_000_000)
    at = build_spend_tx([output(CLAIM_DUST_LIMIT_SAT + fee)], DEST, FEERATE)
    assert at.outputs[0].amount_sat == CLAIM_DUST_LIMIT_SAT
    with pytest.raises(TransactionError, match="leaves"):
        build_spend_tx([output(CLAIM_DUST_LIMIT_SAT - 1 + fee)], DEST, FEERATE)
    with pytest.raises(TransactionError, match="nothing to spend"):
        build_spend_tx([], DEST, FEERATE)


def test_sequences_and_locktime_are_passed_through() -> None:
    assert (SEQUENCE_FINAL, SEQUENCE_LOCKTIME_ENABLED) == (0xFFFFFFFF, 0xFFFFFFFE)
    tx = build_spend_tx([output(100_000, 0), output(100_000, 1, SEQUENCE_LOCKTIME_ENABLED)],
                        DEST, FEERATE, locktime=777)
    assert [i.sequence for i in tx.inputs] == [SEQUENCE_FINAL, SEQUENCE_LOCKTIME_ENABLED]
    assert tx.locktime == 777 and tx.version == 2
    assert [o.script_pubkey for o in tx.outputs] == [DEST]


def test_defaults_no_locktime_and_frozen_outputs() -> None:
    tx = build_spend_tx([output(100_000)], DEST, FEERATE)
    assert tx.locktime == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        output(1).amount_sat = 2  # type: ignore[misc]
