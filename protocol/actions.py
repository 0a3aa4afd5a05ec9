"""Actions returned by the state machine: what its driver must do, in order.

The driver (hub or client) executes the list front to back. ``Persist`` must be durable
before the driver executes any later action of the same list: that is how DESIGN rule 1
holds (no commitment signature and no revocation secret leaves the process before the
state that needs it is stored). rust-lightning's ``ChannelMonitorUpdate.update_id`` is
the model for ``update_id``: strictly increasing per channel, so a store can refuse
a stale write and a restart knows which snapshot is newest.

Events (``HtlcReceived``, ``HtlcFulfilled``...) are notifications for the application;
they carry no obligation beyond their order relative to ``Persist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proto import peer_pb2


@dataclass(frozen=True, slots=True)
class Send:
    """Send one message to the peer."""

    message: peer_pb2.PeerMessage


@dataclass(frozen=True, slots=True)
class Persist:
    """Store ``snapshot`` durably (replacing older ones) before any later action."""

    update_id: int
    snapshot: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Watch:
    """Ask the chain watcher to look for a transaction.

    ``kind`` is ``"funding"`` (watch the funding ``outpoint`` for confirmations and
    spends), ``"revoked_commitment"`` (a remote commitment we hold a revocation secret
    for: a breach if it ever confirms) or ``"closing"`` (our cooperative close).
    """

    kind: str
    txid: bytes
    output_index: int | None = None
    commitment_number: int | None = None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Broadcast a fully signed transaction (serialized, segwit form)."""

    raw_tx: bytes
    txid: bytes
    reason: str


# Events for the application -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FundingNeeded:
    """Event (funder): build a funding tx paying ``amount_sat`` to ``script_pubkey``,
    do not broadcast it, and call ``Channel.funding_outpoint()``."""

    script_pubkey: bytes
    amount_sat: int


@dataclass(frozen=True, slots=True)
class FundingSigned:
    """Event (funder): the fundee signed our commitment 0: broadcast the funding tx."""

    funding_txid: bytes


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """Both ``channel_ready`` exchanged: the channel can carry HTLCs."""

    channel_id: bytes


@dataclass(frozen=True, slots=True)
class HtlcReceived:
    """An HTLC the peer offered is irrevocably committed on both sides: safe to act on
    (fulfill if we are the payee, forward if we are a hub)."""

    htlc_id: int
    amount_msat: int
    payment_hash: bytes
    cltv_expiry: int
    onion_routing_packet: bytes


@dataclass(frozen=True, slots=True)
class HtlcFulfilled:
    """An HTLC we offered was fulfilled by the peer: here is the preimage. Emitted as
    soon as the fulfill is received (the preimage is proof of payment at once)."""

    htlc_id: int
    payment_hash: bytes
    payment_preimage: bytes


@dataclass(frozen=True, slots=True)
class HtlcFailed:
    """An HTLC we offered is gone without payment.

    ``reason`` is the peer's encrypted failure reason; ``local_reason`` is set instead
    when the HTLC never got committed (a disconnect reverted it, BOLT #2 "Message
    Retransmission": uncommitted updates are forgotten)."""

    htlc_id: int
    payment_hash: bytes
    reason: bytes = b""
    local_reason: str = ""


@dataclass(frozen=True, slots=True)
class PeerWarning:
    """The peer sent a BOLT #1 ``warning``."""

    text: str


@dataclass(frozen=True, slots=True)
class ChannelFailed:
    """The channel is failed (an ``error`` either way). ``may_broadcast`` is False when
    data loss protection says our latest commitment may be stale: then we must wait for
    the peer to close and sweep our output with ``remote_current_point`` (always a valid
    compressed secp256k1 point, or None when the peer sent none or an invalid one)."""

    reason: str
    may_broadcast: bool
    remote_current_point: bytes | None = None


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The cooperative close was agreed; its transaction was broadcast."""

    closing_txid: bytes
    fee_sat: int


Event = (
    FundingNeeded | FundingSigned | ChannelOpened | HtlcReceived | HtlcFulfilled | HtlcFailed
    | PeerWarning | ChannelFailed | ChannelClosed
)
Action = Send | Persist | Watch | Broadcast | Event
