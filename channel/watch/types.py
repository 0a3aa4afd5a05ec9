"""What goes into a channel watch and what comes out of it (values only).

Inputs are the channel's data as the state machine holds it (channel frame:
``Side.LOCAL`` is us): our latest signed commitment, the peer's unrevoked
commitments, the records of its revoked ones, the preimages we know. Outputs are
``Broadcast`` (a fully signed transaction, its deadline, a label) and events.
Every value here converts to and from plain JSON (``codec.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from channel.commitment import CommitmentHtlc
from channel.tx import Tx

# -- constants --------------------------------------------------------------------------

#: Bitcoin Core's MAX_STANDARD_TX_WEIGHT: a heavier transaction is not relayed, so a
#: penalty that would pass it is split (BOLT #5 "MAY ... in several transactions").
MAX_STANDARD_TX_WEIGHT = 400_000

#: The relay floor, 253 sat/kw (1 sat/vB after Core's rounding): every claim pays at
#: least this much whatever the estimator says.
MIN_FEERATE_PER_KW = 253

#: A claim nobody else can take (our to_remote, our delayed outputs after their delay)
#: has no race to lose; its "deadline" is only where fee bumping starts. A week.
RELAXED_DEADLINE_BLOCKS = 1008

#: How long after it becomes valid a claim in a race (an HTLC timeout against the
#: peer's preimage, a penalty against the cheater's delay) should confirm. Six blocks
#: is the usual reorg-safety depth; fees rise as the deadline nears.
URGENT_CLAIM_BLOCKS = 6

#: LDK's ANTI_REORG_DELAY: how deep a transaction must be before a decision that a
#: reorg would make wrong is taken on it (``ClaimBuried``: the hub fails an upstream
#: HTLC back only when its timeout claim is this deep; ``ChannelResolved``). Six
#: blocks is Bitcoin's customary finality; a deeper reorg is not defended against.
ANTI_REORG_DELAY = 6


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """Policy figures of one watch.

    ``offered_htlc_grace_blocks`` and ``fulfilled_htlc_deadline_blocks`` are the state
    machine's (``protocol.config.OFFERED_HTLC_GRACE_BLOCKS`` and
    ``FULFILLED_HTLC_DEADLINE_BLOCKS``; channel/ cannot import protocol/, a test
    checks the defaults agree): an HTLC we offered goes on chain ``grace`` blocks after
    its expiry, one we can fulfill ``deadline`` blocks before its expiry.
    """

    minimum_depth: int = 3
    offered_htlc_grace_blocks: int = 2
    fulfilled_htlc_deadline_blocks: int = 18
    max_tx_weight: int = MAX_STANDARD_TX_WEIGHT
    min_feerate_per_kw: int = MIN_FEERATE_PER_KW


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalCommitment:
    """Our latest commitment, as the peer signed it (what lets us force close).

    Balances exclude HTLCs and are before the fee (``protocol.book.View``); the
    signatures are the peer's 64-byte compact ones from its ``commitment_signed``,
    HTLC ones in output order."""

    commitment_number: int
    local_msat: int
    remote_msat: int
    htlcs: tuple[CommitmentHtlc, ...]
    feerate_per_kw: int
    remote_commitment_signature: bytes
    remote_htlc_signatures: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RemoteCommitment:
    """One of the peer's unrevoked commitments (one or two: the current one and the
    next we signed while its revocation of the current is pending)."""

    commitment_number: int
    per_commitment_point: bytes
    local_msat: int
    remote_msat: int
    htlcs: tuple[CommitmentHtlc, ...]
    feerate_per_kw: int


@dataclass(frozen=True, slots=True)
class RevokedCommitment:
    """The record of a commitment the peer revoked: ``protocol.Watch`` of kind
    ``"revoked_commitment"``, field for field. Its per-commitment secret comes from
    the channel's ``RevocationStore``. ``feerate_per_kw`` is the revoked commitment's
    own feerate (it fixes the HTLC-success/timeout transactions); None for a record
    stored before the Watch carried it."""

    commitment_number: int
    txid: bytes
    htlc_outputs: tuple[tuple[int, CommitmentHtlc], ...]
    to_local_output_index: int | None
    to_local_amount_sat: int
    feerate_per_kw: int | None = None


# -- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Publish ``tx`` (and keep publishing it until it confirms: hand it to the
    ``Broadcaster``). It should confirm by ``deadline_height``. ``replaces`` is the
    txid of the earlier version of this claim (a fee bump, same inputs): the driver
    tells its broadcaster to forget that one."""

    tx: Tx
    deadline_height: int
    label: str
    replaces: bytes | None = None


@dataclass(frozen=True, slots=True)
class FundingConfirmed:
    """The funding transaction is in the chain at ``height``."""

    txid: bytes
    height: int


@dataclass(frozen=True, slots=True)
class FundingDepthReached:
    """The funding transaction has ``minimum_depth`` confirmations: the channel may be
    used (``Channel.funding_confirmed``). Reversed by a reorg below that depth: the
    channel is then unusable until it is deep again, never lost."""

    txid: bytes
    height: int


@dataclass(frozen=True, slots=True)
class ChannelClosedOnChain:
    """The funding output was spent at ``height``. ``kind``: ``"cooperative"``,
    ``"local"`` (our commitment), ``"remote"`` (the peer's latest), ``"revoked"``
    (a breach: penalties follow), ``"unknown"`` (a commitment we have no data for:
    only to_remote is claimed)."""

    txid: bytes
    height: int
    kind: str
    commitment_number: int


@dataclass(frozen=True, slots=True)
class PreimageLearned:
    """The peer claimed an HTLC on chain with its preimage (BOLT #5: "MUST extract
    the payment preimage"): settle the upstream HTLC with it."""

    payment_hash: bytes
    payment_preimage: bytes
    txid: bytes
    height: int


@dataclass(frozen=True, slots=True)
class ClaimConfirmed:
    """A claim of ours (``label``) confirmed in ``txid`` at ``height``."""

    label: str
    txid: bytes
    height: int
    amount_sat: int


@dataclass(frozen=True, slots=True)
class ClaimBuried:
    """The claim ``label`` confirmed in ``txid`` at ``height`` is ``ANTI_REORG_DELAY``
    deep (at tip ``buried_height``): a decision a reorg could undo may be taken on it
    now (the hub fails the upstream HTLC of an ``htlc_timeout`` claim back). Reversed
    only by a reorg deeper than that."""

    label: str
    txid: bytes
    height: int
    buried_height: int


@dataclass(frozen=True, slots=True)
class ChannelResolved:
    """The close ``txid`` is over: every output of it we could claim is claimed or
    lost (or left as uneconomical), no HTLC output is open, and the last of those
    transactions is ``ANTI_REORG_DELAY`` deep (at tip ``height``). The driver calls
    ``Channel.resolved()``; the watch may be dropped once it is buried deeper still."""

    txid: bytes
    height: int


@dataclass(frozen=True, slots=True)
class OutputLost:
    """An output we could claim was taken by the peer (``txid``): a race lost, e.g. an
    HTLC we offered claimed with its preimage, or one we received timed out."""

    label: str
    txid: bytes
    height: int


@dataclass(frozen=True, slots=True)
class GoOnChain:
    """An HTLC is not resolved off chain and its on-chain deadline has come: the
    driver calls ``Channel.fail()`` (BOLT #2 "cltv_expiry_delta Selection")."""

    offered_by_us: bool
    htlc_id: int
    payment_hash: bytes
    deadline_height: int


@dataclass(frozen=True, slots=True)
class ClaimUneconomical:
    """A claim whose fee at the floor feerate would leave less than the dust limit:
    left alone (BOLT #5 "MAY ... not claim" outputs not worth their fee)."""

    label: str
    amount_sat: int
    feerate_per_kw: int


@dataclass(frozen=True, slots=True)
class Reversed:
    """An event reported earlier no longer holds: the block it came from was
    disconnected. ``event`` is the one reported."""

    event: WatchEvent


WatchEvent = (
    FundingConfirmed | FundingDepthReached | ChannelClosedOnChain | PreimageLearned
    | ClaimConfirmed | ClaimBuried | ChannelResolved | OutputLost | GoOnChain
    | ClaimUneconomical
)
#: Events never reversed: a decision taken on them (fail the channel, leave an output)
#: stays right after a reorg.
STICKY_EVENTS = (GoOnChain, ClaimUneconomical)

WatchOutput = Broadcast | WatchEvent | Reversed
