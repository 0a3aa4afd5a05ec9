"""Our side's channel policy and the protocol constants, each with the reason for its value.

``LocalConfig`` is what we announce in ``open_channel``/``accept_channel`` (what we demand
of the peer) plus local acceptance policy that never goes on the wire (CLTV bounds,
dust exposure, feerate bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

# BOLT #2: "cltv_expiry ... MUST be less than 500000000" -- values from 500000000 up
# are Unix times in nLockTime; we only deal in block heights.
CLTV_EXPIRY_LOCKTIME_THRESHOLD = 500_000_000

# An HTLC whose expiry is this close to the current height leaves no time to fulfill
# it, forward it and, if the peer stalls, claim it on chain before the timeout path
# opens (BOLT #2 "cltv_expiry_delta Selection": the receiver needs time to react).
# Anything at or below ``height + MIN_CLTV_EXPIRY_MARGIN_BLOCKS`` is refused.
MIN_CLTV_EXPIRY_MARGIN_BLOCKS = 3

# Funds locked in an HTLC expiring far in the future are a griefing vector (BOLT #4
# suggests refusing expiries too far out). Two weeks of blocks, the value lnd and
# eclair use for "max cltv expiry".
MAX_CLTV_EXPIRY_DELTA_BLOCKS = 2016

# BOLT #2: dust_limit_satoshis below 354 would let a commitment carry outputs that
# standardness rules refuse to relay.
MIN_DUST_LIMIT_SAT = 354

# BOLT #2: max_accepted_htlcs MUST NOT exceed 483 (a commitment with more HTLC outputs
# could not be spent by a penalty transaction within standard size limits).
MAX_ACCEPTED_HTLCS_LIMIT = 483

# Bitcoin's money supply (21 million BTC): no funding output can be larger.
MAX_MONEY_SAT = 21_000_000 * 100_000_000

# BOLT #3 floor: 253 sat/kw is 1 sat/vbyte rounded up; less does not relay.
MIN_FEERATE_PER_KW = 253

# BOLT #3 weights: a commitment with no HTLC output weighs 724, each HTLC output 172.
# Used for a fee *upper bound* that ignores trimming (trimming only lowers the fee), so
# an affordability check made with it holds for every commitment the pending updates
# can produce.
COMMITMENT_BASE_WEIGHT = 724
HTLC_OUTPUT_WEIGHT = 172

# Our default witness-size estimate for the cooperative closing transaction: two
# signatures (73 bytes each with sighash), the 71-byte 2-of-2 script, counts.
CLOSING_WITNESS_WEIGHT = 222


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """Our channel parameters and acceptance policy.

    The first group is announced to the peer and binds the PEER: the reserve it must
    keep, the HTLCs we accept from it, the CSV delay on its ``to_local``.
    """

    dust_limit_sat: int = 546
    max_htlc_value_in_flight_msat: int = 2**63 - 1
    channel_reserve_sat: int = 10_000
    htlc_minimum_msat: int = 1
    to_self_delay: int = 144
    max_accepted_htlcs: int = 30
    minimum_depth: int = 3
    # Local-only policy.
    max_to_self_delay: int = 2016  # the longest delay we let the peer impose on us
    min_funding_sat: int = 20_000
    max_dust_htlc_exposure_msat: int = 5_000_000  # BOLT #2 max_dust_htlc_exposure_msat
    min_feerate_per_kw: int = MIN_FEERATE_PER_KW
    max_feerate_per_kw: int = 100_000
    # Our preferred closing feerate; None means the latest commitment feerate.
    closing_feerate_per_kw: int | None = None


def fee_upper_bound_sat(feerate_per_kw: int, htlc_outputs: int) -> int:
    """Commitment fee if no HTLC were trimmed (BOLT #3 "Fee Calculation")."""
    return feerate_per_kw * (COMMITMENT_BASE_WEIGHT + HTLC_OUTPUT_WEIGHT * htlc_outputs) // 1000
