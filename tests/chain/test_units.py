"""BTC decimals <-> integer satoshis: exact, or refused."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channel.chain.units import MAX_MONEY_SAT, btc_to_sat, sat_to_btc


@given(st.integers(min_value=0, max_value=MAX_MONEY_SAT))
def test_round_trip_is_exact(amount_sat: int) -> None:
    assert btc_to_sat(sat_to_btc(amount_sat)) == amount_sat


def test_bitcoind_formatting() -> None:
    assert str(sat_to_btc(5_000_000_000)) == "50.00000000"
    assert str(sat_to_btc(1_000)) == "0.00001000"
    assert btc_to_sat(Decimal("0.00000001")) == 1
    assert btc_to_sat("12.5") == 1_250_000_000


def test_sub_satoshi_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number of satoshis"):
        btc_to_sat(Decimal("0.000000001"))


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError):
        btc_to_sat(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sat_to_btc(1.0)  # type: ignore[arg-type]
