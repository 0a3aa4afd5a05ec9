"""The fee estimator: the real node's "no estimate" answer takes the fallback;
the unit conversion, floor and ceiling on exact integers."""

from __future__ import annotations

import pytest

from channel.chain import BitcoinRpc
from channel.chain.fees import (
    FEERATE_FLOOR_SAT_PER_KW,
    RpcFeeEstimator,
    feerate_from_estimate,
    sat_per_kvb_to_sat_per_kw,
)


async def test_node_without_estimate_gives_the_fallback(rpc: BitcoinRpc) -> None:
    fees = RpcFeeEstimator(rpc, fallback_sat_per_kw=2_500)
    assert await fees.feerate_sat_per_kw(6) == 2_500
    assert fees.last_source == "fallback"


async def test_fallback_below_the_floor_is_raised_to_it(rpc: BitcoinRpc) -> None:
    fees = RpcFeeEstimator(rpc, fallback_sat_per_kw=100)
    assert await fees.feerate_sat_per_kw(1) == FEERATE_FLOOR_SAT_PER_KW == 253


async def test_conf_target_outside_bitcoinds_range_is_refused(rpc: BitcoinRpc) -> None:
    fees = RpcFeeEstimator(rpc, fallback_sat_per_kw=2_500)
    with pytest.raises(ValueError):
        await fees.feerate_sat_per_kw(0)
    with pytest.raises(ValueError):
        await fees.feerate_sat_per_kw(1009)


async def test_bad_configuration_is_refused(rpc: BitcoinRpc) -> None:
    with pytest.raises(ValueError):
        RpcFeeEstimator(rpc, fallback_sat_per_kw=0)
    with pytest.raises(ValueError):
        RpcFeeEstimator(rpc, fallback_sat_per_kw=1_000, ceiling_sat_per_kw=200)


def test_sat_per_kvb_is_a_quarter_in_sat_per_kw() -> None:
    assert sat_per_kvb_to_sat_per_kw(1_000) == 250
    assert sat_per_kvb_to_sat_per_kw(10_003) == 2_500  # rounded down, integers only
    with pytest.raises(ValueError):
        sat_per_kvb_to_sat_per_kw(-1)


def test_node_estimate_is_converted_floored_and_capped() -> None:
    assert feerate_from_estimate(20_000, fallback_sat_per_kw=1) == 5_000
    assert feerate_from_estimate(1_000, fallback_sat_per_kw=9_999) == 253  # 250 -> floor
    assert feerate_from_estimate(None, fallback_sat_per_kw=9_999) == 9_999
    assert feerate_from_estimate(10**9, fallback_sat_per_kw=1, ceiling_sat_per_kw=50_000) == 50_000
