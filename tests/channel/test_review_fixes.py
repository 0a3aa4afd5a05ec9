"""Regression tests for defects found in review of channel/ (each failed before its fix)."""

from __future__ import annotations

import hashlib

from channel import scripts
from channel.keys import pubkey_from_secret
from channel.spend import SpendableOutput, build_spend_tx
from channel.tx import OutPoint


def _p2wpkh_output(i: int) -> tuple[SpendableOutput, bytes]:
    secret = hashlib.sha256(b"review key %d" % i).digest()
    pub = pubkey_from_secret(secret)
    outpoint = OutPoint(hashlib.sha256(b"review txid %d" % i).digest(), i % 3)
    spend = SpendableOutput(outpoint, 100_000, scripts.p2wpkh_script_code(pub), secret, (pub,))
    return spend, scripts.p2wpkh(pub)


def test_claim_fee_is_never_below_the_requested_feerate() -> None:
    # BOLT #5 claims pay ``feerate_per_kw`` on their weight: the fee must not be
    # rounded down below feerate * weight / 1000 (it was, by up to 1 sat).
    for i in range(40):
        spend, dest = _p2wpkh_output(i)
        for feerate in (253, 300, 1_001, 2_500, 7_777):
            tx = build_spend_tx([spend], dest, feerate)
            fee = spend.amount_sat - tx.outputs[0].amount_sat
            assert fee * 1000 >= feerate * tx.weight(), (i, feerate, fee, tx.weight())
