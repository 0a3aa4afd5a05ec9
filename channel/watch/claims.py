"""Claims: what the watch wants confirmed, and how each is priced and signed.

A ``Claim`` is either a spend we sign ourselves (``inputs``: penalties, sweeps, HTLC
claims on the peer's commitment), re-signed at a higher feerate as its deadline
nears, or a transaction that is already signed (``presigned``: our HTLC-success/
timeout transactions, whose fee is fixed by BOLT #3 in the legacy format, and the
funding or commitment transaction rebroadcast after a reorg).

Fee policy (BOLT #5 leaves it to us): the rate is the caller's estimate (never below
the floor) times an urgency factor that grows as the deadline nears; a new version
replaces the old one only when it pays enough more to be accepted as a replacement
(BIP125 rules 3 and 4, which Core's full RBF keeps: a higher absolute fee, by at
least the incremental relay fee over the new size), else the old one is sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from channel.errors import TransactionError
from channel.spend import MAX_WITNESS_SIGNATURE_SIZE, SpendableOutput, build_spend_tx
from channel.tx import OutPoint, Tx, varint

#: Core's -incrementalrelayfee (1 sat/vB) in sat/kw, rounded up: a replacement must
#: pay at least this much more per weight of its own size.
INCREMENTAL_RELAY_FEERATE_PER_KW = 250


@dataclass(frozen=True, slots=True)
class Claim:
    """One transaction the watch wants in the chain.

    ``valid_height``: the tip height from which it may be broadcast (the node checks
    locktimes against the next block: an nLockTime L is final once the tip is L, a
    CSV delay d on an output confirmed at c once the tip is c + d - 1).
    """

    label: str
    valid_height: int
    deadline_height: int
    inputs: tuple[SpendableOutput, ...] = ()
    locktime: int = 0
    presigned: Tx | None = None

    @property
    def key(self) -> str:
        """Stable identity across fee bumps: the outpoints it spends."""
        if self.presigned is not None:
            return "tx:" + self.presigned.txid_hex()
        return "spend:" + ",".join(
            sorted(f"{o.outpoint.txid_hex()}:{o.outpoint.index}" for o in self.inputs)
        )

    @property
    def outpoints(self) -> tuple[OutPoint, ...]:
        if self.presigned is not None:
            return tuple(i.outpoint for i in self.presigned.inputs)
        return tuple(o.outpoint for o in self.inputs)

    @property
    def amount_sat(self) -> int:
        return sum(o.amount_sat for o in self.inputs)


def urgency_multiplier(blocks_left: int) -> int:
    """How many times the estimate to pay with ``blocks_left`` blocks to the deadline.

    Far from it the estimate is enough; in the last dozen blocks the rate doubles,
    then more, so that a claim stuck behind a low estimate still confirms in time."""
    if blocks_left > 12:
        return 1
    if blocks_left > 6:
        return 2
    if blocks_left > 2:
        return 4
    return 8


def target_feerate(base_feerate_per_kw: int, deadline_height: int, tip_height: int) -> int:
    return base_feerate_per_kw * urgency_multiplier(deadline_height - tip_height)


def min_replacement_feerate(previous_feerate_per_kw: int) -> int:
    """The lowest rate a new version with the same inputs may pay to replace the old.

    Same inputs and one output: the weight is the same, so the fee scales with the
    rate; a quarter more (as LDK and lnd bump) always covers the incremental fee."""
    return max(previous_feerate_per_kw * 5 // 4, previous_feerate_per_kw
               + INCREMENTAL_RELAY_FEERATE_PER_KW)


def sign_claim(claim: Claim, destination_script_pubkey: bytes, feerate_per_kw: int) -> Tx:
    """The claim's transaction at ``feerate_per_kw`` (TransactionError if the fee
    would leave dust)."""
    if claim.presigned is not None:
        return claim.presigned
    return build_spend_tx(
        claim.inputs, destination_script_pubkey, feerate_per_kw, locktime=claim.locktime
    )


def input_weight(o: SpendableOutput) -> int:
    """Weight of one input of a claim: 41 bytes outside the witness (x4), and the
    witness: item count, the largest signature, the fixed items."""
    items = (MAX_WITNESS_SIGNATURE_SIZE, *(len(x) for x in o.witness_suffix))
    witness = len(varint(len(items))) + sum(len(varint(n)) + n for n in items)
    return 41 * 4 + witness


def split_by_weight(
    outputs: Sequence[SpendableOutput], destination_script_pubkey: bytes, max_weight: int
) -> list[list[SpendableOutput]]:
    """Consecutive groups of ``outputs`` whose transactions each weigh at most
    ``max_weight`` (BOLT #5: a penalty MAY be split; Core relays none above
    400,000 WU). The overhead counts a 3-byte input count and the one output."""
    overhead = 4 * (4 + 3 + 1 + 8 + len(varint(len(destination_script_pubkey)))
                    + len(destination_script_pubkey) + 4) + 2
    groups: list[list[SpendableOutput]] = []
    current: list[SpendableOutput] = []
    weight = overhead
    for o in outputs:
        w = input_weight(o)
        if current and weight + w > max_weight:
            groups.append(current)
            current, weight = [], overhead
        current.append(o)
        weight += w
    if current:
        groups.append(current)
    return groups


def affordable(claim: Claim, destination_script_pubkey: bytes, feerate_per_kw: int) -> bool:
    try:
        sign_claim(claim, destination_script_pubkey, feerate_per_kw)
    except TransactionError:
        return False
    return True
