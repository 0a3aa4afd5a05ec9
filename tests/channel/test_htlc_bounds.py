"""htlc.py at its boundaries: trimming (BOLT #3 "Trimmed Outputs": an HTLC is trimmed
when its amount, rounded down to the satoshi, is below dust_limit + its second-stage
fee) and an HTLC transaction that must leave something after its fee."""

from __future__ import annotations

import pytest

from channel import htlc
from channel.errors import TransactionError
from channel.tx import Tx

DUST_SAT = 546
SECOND_STAGE_SPK = b"\x00\x20" + b"\x02" * 32
FEERATE = 5_000  # BOLT #3's example: timeout fee 3,315 sat, success fee 3,515 sat


def test_second_stage_fees_follow_bolt3() -> None:
    assert htlc.htlc_timeout_fee_sat(FEERATE) == 3_315
    assert htlc.htlc_success_fee_sat(FEERATE) == 3_515
    assert htlc.commitment_weight(2) == 724 + 2 * 172
    assert htlc.weight_fee_sat(1_068, FEERATE) == 5_340
    assert htlc.weight_fee_sat(999, 1) == 0  # rounded down


@pytest.mark.parametrize(("offered", "fee_sat"), [(True, 3_315), (False, 3_515)])
def test_trimmed_below_dust_plus_fee_not_at_it(offered: bool, fee_sat: int) -> None:
    at_msat = (DUST_SAT + fee_sat) * 1000
    assert not htlc.htlc_is_trimmed(at_msat, offered, DUST_SAT, FEERATE)
    assert htlc.htlc_is_trimmed(at_msat - 1, offered, DUST_SAT, FEERATE)  # rounds down
    assert not htlc.htlc_is_trimmed(at_msat + 999, offered, DUST_SAT, FEERATE)


@pytest.mark.parametrize(("offered", "fee_sat"), [(True, 3_315), (False, 3_515)])
def test_htlc_tx_must_leave_something_after_its_fee(offered: bool, fee_sat: int) -> None:
    def build(amount_sat: int) -> Tx:
        return htlc.build_htlc_tx(b"\x01" * 32, 3, amount_sat, offered, 600, SECOND_STAGE_SPK,
                                  FEERATE)

    with pytest.raises(TransactionError, match="second-stage fee"):
        build(fee_sat)
    tx = build(fee_sat + 1)
    assert [o.amount_sat for o in tx.outputs] == [1]
    assert tx.locktime == (600 if offered else 0)
    assert tx.version == 2 and [i.sequence for i in tx.inputs] == [0]
    assert tx.inputs[0].outpoint.index == 3
