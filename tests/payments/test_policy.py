"""hub/policy.py: each refusal, the fee formula, and the two properties that keep the
hub from losing money on a forward, over random inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.policy import (
    DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS,
    MIN_CLTV_EXPIRY_DELTA_BLOCKS,
    FeePolicy,
    IncomingHtlc,
    OutgoingChannel,
    OutgoingHtlc,
    PolicyError,
    check_cltv_expiry_delta,
    decide_forward,
)
from protocol.config import MAX_CLTV_EXPIRY_DELTA_BLOCKS, MIN_CLTV_EXPIRY_MARGIN_BLOCKS
from protocol.routing import (
    FINAL_CLTV_SLACK_BLOCKS,
    Failure,
    FailureCode,
    ForwardInstructions,
    decode_forward,
    route_terms,
)
from tests.payments.keys import PAYEE_ID, PAYMENT_HASH, invoice_packet

HEIGHT = 1_000
DELTA = DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS
POLICY = FeePolicy(base_msat=1_000, fee_ppm=2_500)
OPEN = OutgoingChannel(online=True, available_msat=10**9, htlc_minimum_msat=1)
ROOMY = OutgoingChannel(online=True, available_msat=2**64, htlc_minimum_msat=1)


def forward_for(amount_msat: int, cltv: int) -> ForwardInstructions:
    return decode_forward(invoice_packet(amount_msat=amount_msat, cltv=cltv))


def decide(incoming_msat: int, incoming_cltv: int, forward: ForwardInstructions,
           outgoing: OutgoingChannel | None = OPEN, policy: FeePolicy = POLICY,
           height: int = HEIGHT) -> OutgoingHtlc | Failure:
    return decide_forward(incoming=IncomingHtlc(incoming_msat, incoming_cltv, PAYMENT_HASH),
                          forward=forward, fee_policy=policy, cltv_expiry_delta_blocks=DELTA,
                          height=height, outgoing=outgoing)


def test_fee_formula_and_rounding() -> None:
    assert POLICY.fee_msat(0) == 1_000
    assert POLICY.fee_msat(1_000_000) == 1_000 + 2_500
    assert POLICY.fee_msat(399) == 1_000  # 399 * 2500 / 1e6 = 0.9975, rounded down
    assert POLICY.fee_msat(400) == 1_001
    assert FeePolicy(0, 0).fee_msat(10**12) == 0


@pytest.mark.parametrize("base, ppm", [(-1, 0), (0, -1), (2**32, 0), (0, 2**32), (True, 0)])
def test_fee_policy_bounds(base: int, ppm: int) -> None:
    with pytest.raises(PolicyError):
        FeePolicy(base, ppm)


def test_cltv_delta_bounds() -> None:
    assert check_cltv_expiry_delta(DELTA) == DELTA
    assert check_cltv_expiry_delta(MIN_CLTV_EXPIRY_DELTA_BLOCKS) == MIN_CLTV_EXPIRY_DELTA_BLOCKS
    # BOLT #2's 3R+2G+2S with R=2, G=2, S=12 (docs/payment-format.md), and our default.
    assert (MIN_CLTV_EXPIRY_DELTA_BLOCKS, DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS) == (34, 40)
    assert check_cltv_expiry_delta(1008) == 1008
    for bad in (MIN_CLTV_EXPIRY_DELTA_BLOCKS - 1, 0, -5, 1009, 10_000):
        with pytest.raises(PolicyError):
            check_cltv_expiry_delta(bad)


def test_forwards_exactly_what_the_payer_asked() -> None:
    forward = forward_for(100_000, HEIGHT + 50)
    fee = POLICY.fee_msat(100_000)
    out = decide(100_000 + fee, HEIGHT + 50 + DELTA, forward)
    assert out == OutgoingHtlc(PAYEE_ID, 100_000, HEIGHT + 50, PAYMENT_HASH, forward.packet)


def test_overpayment_is_kept_not_forwarded() -> None:
    out = decide(500_000, HEIGHT + 50 + DELTA + 10, forward_for(100_000, HEIGHT + 50))
    assert isinstance(out, OutgoingHtlc) and out.amount_msat == 100_000


def test_each_refusal() -> None:
    amount, cltv = 100_000, HEIGHT + 50
    fee = POLICY.fee_msat(amount)
    forward = forward_for(amount, cltv)
    good_in, good_cltv = amount + fee, cltv + DELTA
    assert decide(good_in, good_cltv, forward, outgoing=None) == Failure(FailureCode.UNKNOWN_PAYEE)
    assert decide(good_in, good_cltv, forward,
                  outgoing=OutgoingChannel(True, 10**9, amount + 1)) == Failure(
        FailureCode.AMOUNT_BELOW_MINIMUM, htlc_msat=good_in, htlc_minimum_msat=amount + 1)
    assert decide(good_in - 1, good_cltv, forward) == Failure(
        FailureCode.FEE_INSUFFICIENT, htlc_msat=good_in - 1, fee_base_msat=1_000, fee_ppm=2_500)
    assert decide(good_in, good_cltv - 1, forward) == Failure(
        FailureCode.INCORRECT_CLTV_EXPIRY, cltv_expiry=good_cltv - 1,
        cltv_expiry_delta_blocks=DELTA)
    soon = forward_for(amount, HEIGHT + MIN_CLTV_EXPIRY_MARGIN_BLOCKS)
    assert decide(good_in, soon.outgoing_cltv_value + DELTA, soon) == Failure(
        FailureCode.EXPIRY_TOO_SOON, height=HEIGHT)
    far = forward_for(amount, HEIGHT + MAX_CLTV_EXPIRY_DELTA_BLOCKS + 1)
    assert decide(good_in, far.outgoing_cltv_value + DELTA, far) == Failure(
        FailureCode.EXPIRY_TOO_FAR, height=HEIGHT)
    assert decide(good_in, good_cltv, forward,
                  outgoing=OutgoingChannel(False, 10**9, 1)) == Failure(FailureCode.PAYEE_OFFLINE)
    assert decide(good_in, good_cltv, forward,
                  outgoing=OutgoingChannel(True, amount - 1, 1)) == Failure(
        FailureCode.INSUFFICIENT_CAPACITY)
    # At the boundaries it forwards.
    assert isinstance(decide(good_in, good_cltv, forward,
                             outgoing=OutgoingChannel(True, amount, amount)), OutgoingHtlc)
    just = forward_for(amount, HEIGHT + MIN_CLTV_EXPIRY_MARGIN_BLOCKS + 1)
    assert isinstance(decide(good_in, just.outgoing_cltv_value + DELTA, just), OutgoingHtlc)


def test_payer_mistakes_are_reported_before_the_payees_state() -> None:
    # An underpaying payer learns about its fee, not that the payee is offline.
    forward = forward_for(100_000, HEIGHT + 50)
    offline = OutgoingChannel(False, 0, 1)
    result = decide(100_000, HEIGHT + 50 + DELTA, forward, outgoing=offline)
    assert isinstance(result, Failure) and result.code is FailureCode.FEE_INSUFFICIENT


amounts = st.integers(1, 2**64 - 1)
heights = st.integers(1, 800_000)


@given(forward_msat=amounts, incoming_msat=st.integers(0, 2**65),
       out_cltv_offset=st.integers(-20, 3_000), incoming_cltv_offset=st.integers(-100, 3_200),
       base=st.integers(0, 2**32 - 1), ppm=st.integers(0, 2**32 - 1), height=heights,
       online=st.booleans(), available=st.integers(0, 2**64), minimum=st.integers(0, 10**6))
def test_never_forwards_more_than_received_less_fee_nor_too_late(
        forward_msat: int, incoming_msat: int, out_cltv_offset: int, incoming_cltv_offset: int,
        base: int, ppm: int, height: int, online: bool, available: int, minimum: int) -> None:
    out_cltv = max(1, height + out_cltv_offset)
    incoming_cltv = max(1, out_cltv + incoming_cltv_offset)
    policy = FeePolicy(base, ppm)
    forward = forward_for(forward_msat, out_cltv)
    result = decide(incoming_msat, incoming_cltv, forward,
                    outgoing=OutgoingChannel(online, available, minimum), policy=policy,
                    height=height)
    if isinstance(result, OutgoingHtlc):
        assert result.amount_msat + policy.fee_msat(result.amount_msat) <= incoming_msat
        assert result.cltv_expiry <= incoming_cltv - DELTA
        assert result.cltv_expiry > height + MIN_CLTV_EXPIRY_MARGIN_BLOCKS
        assert result.amount_msat <= available and online
        assert result.payment_hash == PAYMENT_HASH
        assert result.onion_routing_packet == forward.packet
    else:
        assert isinstance(result, Failure)
    # And the converse: everything a forward needs holds -> it forwards.
    fits = (incoming_msat >= forward_msat + policy.fee_msat(forward_msat)
            and out_cltv <= incoming_cltv - DELTA
            and height + MIN_CLTV_EXPIRY_MARGIN_BLOCKS < out_cltv
            <= height + MAX_CLTV_EXPIRY_DELTA_BLOCKS
            and online and forward_msat <= available and forward_msat >= minimum)
    assert isinstance(result, OutgoingHtlc) == fits


@given(amount=st.integers(1, 2**50), min_final=st.integers(1, 500), height=heights,
       base=st.integers(0, 2**32 - 1), ppm=st.integers(0, 2**32 - 1),
       delta=st.integers(MIN_CLTV_EXPIRY_DELTA_BLOCKS, 1008))
def test_the_payers_terms_are_what_the_hub_accepts(amount: int, min_final: int, height: int,
                                                  base: int, ppm: int, delta: int) -> None:
    terms = route_terms(amount_msat=amount, min_final_cltv_expiry_blocks=min_final,
                        height=height, base_msat=base, fee_ppm=ppm,
                        cltv_expiry_delta_blocks=delta)
    policy = FeePolicy(base, ppm)
    assert terms.fee_msat == policy.fee_msat(amount)
    assert terms.htlc_amount_msat == amount + terms.fee_msat
    forward = forward_for(terms.amount_to_forward_msat, terms.outgoing_cltv_value)
    # Accepted at the payer's height and while the slack lasts (blocks mined meanwhile)...
    for mined in range(FINAL_CLTV_SLACK_BLOCKS + 1):
        out = decide_forward(
            incoming=IncomingHtlc(terms.htlc_amount_msat, terms.htlc_cltv_expiry, PAYMENT_HASH),
            forward=forward, fee_policy=policy, cltv_expiry_delta_blocks=delta,
            height=height + mined, outgoing=ROOMY)
        assert isinstance(out, OutgoingHtlc)
        assert out.cltv_expiry >= height + mined + min_final  # the payee's check holds
    # ...and one millisatoshi less is refused.
    short = decide_forward(
        incoming=IncomingHtlc(terms.htlc_amount_msat - 1, terms.htlc_cltv_expiry, PAYMENT_HASH),
        forward=forward, fee_policy=policy, cltv_expiry_delta_blocks=delta, height=height,
        outgoing=ROOMY)
    assert isinstance(short, Failure) and short.code is FailureCode.FEE_INSUFFICIENT
