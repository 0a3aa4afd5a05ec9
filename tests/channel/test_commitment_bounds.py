"""commitment.py at its boundaries: the 48-bit commitment number, value types that
stay immutable (issue 11, "Tests that notice when a check is lost")."""

from __future__ import annotations

import dataclasses

import pytest

from channel.commitment import (
    MAX_COMMITMENT_NUMBER,
    CommitmentHtlc,
    Side,
    build_commitment,
    commitment_number_from_tx,
    obscured_commitment_number,
)
from channel.errors import TransactionError
from tests.channel.test_channel_units import LOCAL, STATIC


def test_commitment_number_is_48_bits_and_round_trips() -> None:
    assert MAX_COMMITMENT_NUMBER == 2**48 - 1
    for number in (0, 1, 42, MAX_COMMITMENT_NUMBER):
        commitment = build_commitment(
            STATIC, Side.LOCAL, number, LOCAL.per_commitment_point(0), 600_000_000,
            400_000_000, [], 253,
        )
        assert commitment_number_from_tx(STATIC, commitment.tx) == number
        assert obscured_commitment_number(STATIC, number) < 2**48
    for wrong in (-1, MAX_COMMITMENT_NUMBER + 1):
        with pytest.raises(TransactionError, match="48 bits"):
            obscured_commitment_number(STATIC, wrong)


def test_value_types_are_immutable() -> None:
    htlc = CommitmentHtlc(Side.LOCAL, 0, 1_000_000, b"\x00" * 32, 500)
    with pytest.raises(dataclasses.FrozenInstanceError):
        htlc.amount_msat = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        STATIC.local.dust_limit_sat = 1  # type: ignore[misc]
