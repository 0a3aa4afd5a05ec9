"""The hub's forwarding decision, as one pure function.

Theory of operation. When an HTLC from a payer is irrevocably committed
(``protocol.HtlcReceived``), the router decodes its packet
(``protocol.routing.decode_forward``; a packet that does not decode fails back with
``INVALID_ONION_PAYLOAD``), looks up the payee's channel, and asks ``decide_forward``
what to do. The answer is either the ``OutgoingHtlc`` to offer the payee, or the
``Failure`` to fail the incoming HTLC back with (signed by the router with
``protocol.routing.encode_failure``). Nothing here reads a clock or a database: the
height, the fee policy and the outgoing channel's state come in as arguments.

The payer names the amount to forward and the outgoing expiry in the packet; the hub
only checks them, never computes them, so the payee's amount and expiry are exactly
what the payer promised it (the payee checks that too). The checks make a loss on a
forward impossible by construction:

- amount: ``incoming.amount_msat >= amount_to_forward_msat + fee_msat(amount_to_forward_msat)``;
  the outgoing HTLC carries ``amount_to_forward_msat`` and the hub keeps the rest
  (its fee, plus whatever the payer overpaid);
- expiry: ``outgoing_cltv_value <= incoming.cltv_expiry - cltv_expiry_delta_blocks``,
  so after the payee claims the outgoing HTLC at the last possible block the hub
  still has ``cltv_expiry_delta_blocks`` to claim the incoming one on chain
  (``DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS`` says how many and why);
- the outgoing expiry must also be acceptable to the payee's channel
  (``protocol.config``: more than ``MIN_CLTV_EXPIRY_MARGIN_BLOCKS`` above the height,
  at most ``MAX_CLTV_EXPIRY_DELTA_BLOCKS`` beyond it), else the offer would be refused.

Order of checks: what the payer got wrong (fee, expiry, minimum) before the state of
the payee's channel, so a payer learns nothing about a payee's link or liquidity from
a payment it could not have made anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.config import MAX_CLTV_EXPIRY_DELTA_BLOCKS, MIN_CLTV_EXPIRY_MARGIN_BLOCKS
from protocol.routing import Failure, FailureCode, ForwardInstructions, forwarding_fee_msat

# BOLT #2 "Risks With HTLC Timeouts": a forwarding node needs ``3R + 2G + 2S`` blocks
# between its outgoing and its incoming expiry: R reorganisation depth, G grace
# blocks before it gives up on an unresponsive peer and goes on chain, S blocks for a
# broadcast transaction to confirm. The worst case: the payee claims the outgoing
# HTLC on chain at the outgoing expiry (the hub sees it up to G + S + R blocks
# later), the payer does not answer the off-chain fulfill (G more blocks), then the
# hub's commitment and HTLC-success transactions must confirm (S blocks, plus R when
# a reorganisation replays it) and be R deep before the incoming expiry, after which
# the payer could take the HTLC back with its timeout path. BOLT #2 advises R=2,
# G=2 and S=12 at least (34 blocks), S=12 because these legacy non-anchor
# commitments carry a fee fixed when signed and cannot be bumped. We take S=15 for
# margin: 3*2 + 2*2 + 2*15 = 40 blocks, and refuse a configured delta below 34.
# Against the chain code's deadlines (protocol/config.py): the outgoing HTLC is timed
# out on chain OFFERED_HTLC_GRACE_BLOCKS (2) after its expiry, the preimage is known
# by 2 + S + R, and the incoming claim starts FULFILLED_HTLC_DEADLINE_BLOCKS (18)
# before the incoming expiry: 2 + S + 2 <= delta - 18, so 40 tolerates S up to 18.
DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS = 40
MIN_CLTV_EXPIRY_DELTA_BLOCKS = 34
# Ceiling on an operator's delta: a payer's expiry must leave room under the 2016
# blocks a channel accepts for the delta plus the payee's final CLTV.
MAX_CLTV_EXPIRY_DELTA_BLOCKS_CONFIG = 1008

# BOLT #7 carries the fee policy in u32 fields; we keep the same bounds so every
# policy can be shown in GetInfo and in a BOLT #11 route hint.
_U32_MAX = 2**32 - 1


class PolicyError(ValueError):
    """An operator's fee policy or CLTV delta that the hub refuses to run with."""


@dataclass(frozen=True, slots=True)
class FeePolicy:
    """The hub's forwarding fee: ``base_msat + amount_msat * fee_ppm // 1_000_000``.

    Integer arithmetic; the proportional part is rounded down (floor), in the payer's
    favour, as BOLT #7's ``fee_base_msat + amount_to_forward *
    fee_proportional_millionths / 1000000`` is computed by every implementation. The
    formula itself is ``protocol.routing.forwarding_fee_msat``, which the payer's SDK
    uses too (``route_terms``): client/ never imports hub/."""

    base_msat: int
    fee_ppm: int

    def __post_init__(self) -> None:
        for name in ("base_msat", "fee_ppm"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32_MAX:
                raise PolicyError(f"{name} {value!r} must be an integer in [0, {_U32_MAX}]")

    def fee_msat(self, amount_to_forward_msat: int) -> int:
        return forwarding_fee_msat(amount_to_forward_msat, base_msat=self.base_msat,
                                   fee_ppm=self.fee_ppm)


def check_cltv_expiry_delta(cltv_expiry_delta_blocks: int) -> int:
    """The operator's CLTV delta, if the hub can run with it (PolicyError if not)."""
    if not (isinstance(cltv_expiry_delta_blocks, int)
            and MIN_CLTV_EXPIRY_DELTA_BLOCKS <= cltv_expiry_delta_blocks
            <= MAX_CLTV_EXPIRY_DELTA_BLOCKS_CONFIG):
        raise PolicyError(
            f"cltv_expiry_delta_blocks {cltv_expiry_delta_blocks!r} must be in "
            f"[{MIN_CLTV_EXPIRY_DELTA_BLOCKS}, {MAX_CLTV_EXPIRY_DELTA_BLOCKS_CONFIG}]")
    return cltv_expiry_delta_blocks


@dataclass(frozen=True, slots=True)
class IncomingHtlc:
    """The payer's HTLC, irrevocably committed on the payer's channel."""

    amount_msat: int
    cltv_expiry: int
    payment_hash: bytes


@dataclass(frozen=True, slots=True)
class OutgoingChannel:
    """The hub's channel to the payee, as the router sees it now.

    ``available_msat``: what the hub can still offer on it (its balance less reserve,
    fees and HTLCs in flight, within the peer's max_htlc_value_in_flight and HTLC
    count; the channel state machine's figure). ``htlc_minimum_msat``: the payee's
    ``htlc_minimum_msat``."""

    online: bool
    available_msat: int
    htlc_minimum_msat: int


@dataclass(frozen=True, slots=True)
class OutgoingHtlc:
    """What to offer the payee: same payment hash, the payer's packet unchanged."""

    payee_node_id: bytes
    amount_msat: int
    cltv_expiry: int
    payment_hash: bytes
    onion_routing_packet: bytes


def decide_forward(*, incoming: IncomingHtlc, forward: ForwardInstructions,
                   fee_policy: FeePolicy, cltv_expiry_delta_blocks: int, height: int,
                   outgoing: OutgoingChannel | None) -> OutgoingHtlc | Failure:
    """Forward or fail. ``outgoing`` is None when the payee is no client of this hub
    (or has no open channel with it)."""
    amount = forward.amount_to_forward_msat
    expiry = forward.outgoing_cltv_value
    if outgoing is None:
        return Failure(FailureCode.UNKNOWN_PAYEE)
    if amount < outgoing.htlc_minimum_msat:
        return Failure(FailureCode.AMOUNT_BELOW_MINIMUM, htlc_msat=incoming.amount_msat,
                       htlc_minimum_msat=outgoing.htlc_minimum_msat)
    if incoming.amount_msat < amount + fee_policy.fee_msat(amount):
        return Failure(FailureCode.FEE_INSUFFICIENT, htlc_msat=incoming.amount_msat,
                       fee_base_msat=fee_policy.base_msat, fee_ppm=fee_policy.fee_ppm)
    if expiry > incoming.cltv_expiry - cltv_expiry_delta_blocks:
        return Failure(FailureCode.INCORRECT_CLTV_EXPIRY, cltv_expiry=incoming.cltv_expiry,
                       cltv_expiry_delta_blocks=cltv_expiry_delta_blocks)
    if expiry <= height + MIN_CLTV_EXPIRY_MARGIN_BLOCKS:
        return Failure(FailureCode.EXPIRY_TOO_SOON, height=height)
    if expiry > height + MAX_CLTV_EXPIRY_DELTA_BLOCKS:
        return Failure(FailureCode.EXPIRY_TOO_FAR, height=height)
    if not outgoing.online:
        return Failure(FailureCode.PAYEE_OFFLINE)
    if amount > outgoing.available_msat:
        return Failure(FailureCode.INSUFFICIENT_CAPACITY)
    return OutgoingHtlc(forward.payee_node_id, amount, expiry, incoming.payment_hash,
                        forward.packet)
