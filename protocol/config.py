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

# BOLT #2 update_add_htlc, the funder's "fee spike buffer": it "SHOULD NOT offer
# amount_msat if, after adding that HTLC to its commitment transaction, its remaining
# balance doesn't allow it to pay the commitment transaction fee when receiving or
# sending a future additional non-dust HTLC while maintaining its channel reserve. It is
# recommended that this 'fee spike buffer' can handle twice the current feerate_per_kw".
# So the funder keeps, besides its reserve, the fee at 2x the feerate of a commitment with
# every HTLC, its new one and one more (core-lightning and rust-lightning do the same).
# The same buffer is what the non-funder's adds crossing the funder's on the wire may use
# (how many it may have unacknowledged: ``protocol.rules``, module docstring).
FEE_SPIKE_FEERATE_MULTIPLE = 2
FEE_SPIKE_EXTRA_HTLCS = 1
# The non-funder's adds that may cross the funder's on the wire are paid by the funder's
# headroom: besides its fee spike buffer, the funder keeps the fee of as many more HTLCs
# as 1/20 of its balance above its reserve pays for (at most the HTLCs it accepts), and
# the non-funder keeps its adds the funder has not acknowledged within that. A funder
# spends 95% of its balance in one go (its fee spike buffer at high feerates), and the
# other side can still put a burst of HTLCs in flight (``protocol.rules``, module
# docstring, for the rule and the figures).
FEE_CROSSING_SHARE_DIVISOR = 20

# BOLT #4: an onion_routing_packet is exactly 1,366 bytes (version, 33-byte key, 1,300
# bytes of hop payloads, 32-byte HMAC). We also accept none (b"": the last hop of a
# regtest payment carries no onion); anything longer is refused: it would be stored in
# every snapshot until the HTLC is settled.
MAX_ONION_ROUTING_PACKET_BYTES = 1366

# update_fail_htlc.reason is an onion-encrypted failure message. BOLT #4 pads the
# failure to 256 bytes, so the encrypted reason of a spec-conformant node is 292
# bytes (32 HMAC + 2 length + 256 + 2 pad length); 1,024 leaves room for the larger
# padding some implementations use and still keeps a hostile peer from making every
# snapshot (and every Persist rewriting it) grow by megabytes per failed HTLC.
MAX_FAIL_REASON_BYTES = 1024

# When to give up on the peer and go on chain for an HTLC (BOLT #2 "cltv_expiry_delta
# Selection", BOLT #5). An HTLC we offered: once its cltv_expiry has passed by G blocks
# the peer can still claim it with the preimage, and upstream our incoming HTLC is
# running out; the spec's "1 or 2 blocks is reasonable": we take 2.
OFFERED_HTLC_GRACE_BLOCKS = 2
# An HTLC the peer offered and we fulfilled: the preimage must be on chain before the
# peer's timeout path opens at cltv_expiry. The spec's deadline is 2R+G+S blocks before
# the expiry, "18 blocks is reasonable" (R = 2 for a reorg, G = 2 grace, S = 12 for the
# commitment and the HTLC-success to confirm).
FULFILLED_HTLC_DEADLINE_BLOCKS = 18

# A cooperative close whose transaction has not confirmed this many blocks after we
# agreed to it is abandoned for a force close (issue 11, finding 5): a day of blocks,
# enough for a feerate spike to pass, short enough that the funds are not frozen.
CLOSING_CONFIRM_DEADLINE_BLOCKS = 144

# Bitcoin Core's default minimum relay fee: 1 sat per virtual byte, i.e. 250 sat/kw.
# A closing transaction paying less is never relayed (BOLT #2 closing_signed; issue 11,
# finding 5): the negotiated fee never goes below weight/4 sat.
MIN_RELAY_FEE_SAT_PER_VBYTE = 1

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
    # BOLT #2 option_shutdown_anysegwit (feature bits 26/27): accept a shutdown script
    # of any segwit version 1-16 (P2TR...). Off by default: a script our node or the
    # peer's cannot yet spend or relay would leave the close unspendable.
    option_shutdown_anysegwit: bool = False

    def __post_init__(self) -> None:
        problem = config_problem(self)
        if problem is not None:
            raise InvalidConfig(problem)


class InvalidConfig(ValueError):
    """A ``LocalConfig`` the protocol forbids us to announce (BOLT #2 open_channel /
    accept_channel "sending node" requirements) or that contradicts itself."""


def config_problem(cfg: LocalConfig) -> str | None:
    """What is wrong with ``cfg``, or None. BOLT #2 binds what we announce:
    max_accepted_htlcs at most 483, dust_limit_satoshis at least 354,
    channel_reserve_satoshis at least our own dust_limit_satoshis (and the peer's,
    checked at open), to_self_delay a 16-bit relative lock-time in blocks."""
    if not 1 <= cfg.max_accepted_htlcs <= MAX_ACCEPTED_HTLCS_LIMIT:
        return f"max_accepted_htlcs {cfg.max_accepted_htlcs} not in [1, 483]"
    if cfg.dust_limit_sat < MIN_DUST_LIMIT_SAT:
        return f"dust_limit_sat {cfg.dust_limit_sat} below {MIN_DUST_LIMIT_SAT}"
    if cfg.channel_reserve_sat < cfg.dust_limit_sat:
        return (f"channel_reserve_sat {cfg.channel_reserve_sat} below dust_limit_sat "
                f"{cfg.dust_limit_sat}")
    if cfg.htlc_minimum_msat < 1:
        return "htlc_minimum_msat must be at least 1"
    if cfg.max_htlc_value_in_flight_msat < 1:
        return "max_htlc_value_in_flight_msat must be at least 1"
    if not 1 <= cfg.to_self_delay <= 0xFFFF:
        return f"to_self_delay {cfg.to_self_delay} not a 16-bit block count"
    if cfg.to_self_delay > cfg.max_to_self_delay:
        return "to_self_delay above max_to_self_delay (we would refuse our own demand)"
    if cfg.minimum_depth < 1:
        return "minimum_depth must be at least 1 (an unconfirmed funding can be replaced)"
    if cfg.min_feerate_per_kw < MIN_FEERATE_PER_KW:
        return f"min_feerate_per_kw below {MIN_FEERATE_PER_KW} (would not relay)"
    if cfg.max_feerate_per_kw < cfg.min_feerate_per_kw:
        return "max_feerate_per_kw below min_feerate_per_kw"
    if cfg.max_dust_htlc_exposure_msat < 0 or cfg.min_funding_sat < 1:
        return "negative max_dust_htlc_exposure_msat or min_funding_sat below 1"
    if cfg.closing_feerate_per_kw is not None and cfg.closing_feerate_per_kw < 1:
        return "closing_feerate_per_kw must be positive"
    return None


def fee_upper_bound_sat(feerate_per_kw: int, htlc_outputs: int) -> int:
    """Commitment fee if no HTLC were trimmed (BOLT #3 "Fee Calculation")."""
    return feerate_per_kw * (COMMITMENT_BASE_WEIGHT + HTLC_OUTPUT_WEIGHT * htlc_outputs) // 1000
