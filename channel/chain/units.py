"""Conversions between bitcoind's BTC decimals and the integer satoshis we compute in.

Rule 3 of DESIGN.md: amounts are integers. bitcoind's JSON carries BTC with
eight decimals; these two functions are the only place that crosses over, and
they refuse anything that is not a whole number of satoshis rather than round.
"""

from __future__ import annotations

from decimal import Decimal

SAT_PER_BTC = 100_000_000
MAX_MONEY_SAT = 21_000_000 * SAT_PER_BTC


def btc_to_sat(amount_btc: Decimal | int | str) -> int:
    """Exact BTC (as bitcoind prints it) to satoshis; refuses sub-satoshi values."""
    if isinstance(amount_btc, float):
        raise TypeError("BTC amounts must be Decimal, never float")
    value = Decimal(amount_btc) * SAT_PER_BTC
    if value != value.to_integral_value():
        raise ValueError(f"{amount_btc} BTC is not a whole number of satoshis")
    return int(value)


def sat_to_btc(amount_sat: int) -> Decimal:
    """Satoshis to BTC with bitcoind's eight decimals."""
    if not isinstance(amount_sat, int) or isinstance(amount_sat, bool):
        raise TypeError("satoshi amounts are integers")
    return (Decimal(amount_sat) / SAT_PER_BTC).quantize(Decimal("0.00000001"))
