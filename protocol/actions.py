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

from channel.commitment import CommitmentHtlc, Side
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


WATCH_KINDS = ("funding", "revoked_commitment", "closing")


@dataclass(frozen=True, slots=True)
class Watch:
    """Ask the chain watcher to look for a transaction; each kind says what to check.

    - ``"funding"``: the funding outpoint (``txid``, ``output_index``). Before counting
      confirmations the driver MUST check that this output exists and pays exactly
      ``script_pubkey`` (the 2-of-2 P2WSH) with ``amount_sat``: the funder names the
      outpoint, and a fundee that trusted it could wait for a channel that is not
      there, or one smaller than agreed. Then: confirmations (``minimum_depth``) and
      any spend of it.
    - ``"revoked_commitment"``: a commitment of the peer's that it has just revoked
      (``commitment_number``); if ``txid`` ever confirms it is a breach. The action
      carries everything a penalty needs besides the per-commitment secret (which is
      in the channel's revocation store, ``Channel.revocations``): its HTLC outputs as
      ``(output_index, CommitmentHtlc)`` in the channel frame (``offered_by`` LOCAL =
      us), and its ``to_local`` output (``to_local_output_index``,
      ``to_local_amount_sat``; None/0 when trimmed). The channel forgets that
      commitment's HTLCs right after, so the driver must store this record durably:
      in every action list the Watch comes before the ``Persist`` that forgets them.
    - ``"closing"``: our agreed cooperative close. If it has not confirmed by
      ``deadline_height`` (a fee too low to relay, or a peer that never broadcast and
      a mempool that forgot it), the driver calls ``Channel.fail()``: the latest
      commitment is still valid while the funding output is unspent, so the funds do
      not stay frozen (issue 11, finding 5).

    ``feerate_per_kw`` (``"revoked_commitment"`` only): the revoked commitment's own
    feerate, which fixes its HTLC-success/timeout transactions (a watchtower's kit
    signs the penalties on their outputs in advance). None in records stored before
    the field existed: the reader then takes the feerate from the channel's book.

    ``to_record()``/``from_record()`` give a JSON-ready dict, for stores and towers.
    """

    kind: str
    txid: bytes
    output_index: int | None = None
    commitment_number: int | None = None
    script_pubkey: bytes = b""
    amount_sat: int = 0
    htlc_outputs: tuple[tuple[int, CommitmentHtlc], ...] = ()
    to_local_output_index: int | None = None
    to_local_amount_sat: int = 0
    deadline_height: int | None = None
    feerate_per_kw: int | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "txid": self.txid.hex(),
            "output_index": self.output_index,
            "commitment_number": self.commitment_number,
            "script_pubkey": self.script_pubkey.hex(),
            "amount_sat": self.amount_sat,
            "htlc_outputs": [
                [index, {"offered_by": h.offered_by.value, "htlc_id": h.htlc_id,
                         "amount_msat": h.amount_msat, "payment_hash": h.payment_hash.hex(),
                         "cltv_expiry": h.cltv_expiry}]
                for index, h in self.htlc_outputs],
            "to_local_output_index": self.to_local_output_index,
            "to_local_amount_sat": self.to_local_amount_sat,
            "deadline_height": self.deadline_height,
            "feerate_per_kw": self.feerate_per_kw,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Watch:
        """Inverse of ``to_record``; raises ValueError on a malformed record."""
        try:
            kind = str(record["kind"])
            if kind not in WATCH_KINDS:
                raise ValueError(f"unknown watch kind {kind!r}")
            htlcs = tuple(
                (int(index), CommitmentHtlc(Side(h["offered_by"]), int(h["htlc_id"]),
                                            int(h["amount_msat"]),
                                            bytes.fromhex(h["payment_hash"]),
                                            int(h["cltv_expiry"])))
                for index, h in record["htlc_outputs"])
            return cls(
                kind=kind,
                txid=bytes.fromhex(record["txid"]),
                output_index=_opt_int(record["output_index"]),
                commitment_number=_opt_int(record["commitment_number"]),
                script_pubkey=bytes.fromhex(record["script_pubkey"]),
                amount_sat=int(record["amount_sat"]),
                htlc_outputs=htlcs,
                to_local_output_index=_opt_int(record["to_local_output_index"]),
                to_local_amount_sat=int(record["to_local_amount_sat"]),
                deadline_height=_opt_int(record["deadline_height"]),
                feerate_per_kw=_opt_int(record.get("feerate_per_kw")),  # absent: older
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed watch record: {exc!r}") from exc


def _opt_int(x: Any) -> int | None:
    return None if x is None else int(x)


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
class HtlcDeadline:
    """Go on chain for this HTLC by ``deadline_height`` unless it is settled first.

    The driver keeps the latest deadline per ``(offered_by_us, htlc_id)`` and, at a
    block of that height or above, calls ``Channel.fail()`` if the HTLC is still in
    ``Channel.onchain_deadlines()`` (the same figures, recomputed from the state, so
    a restarted driver loses none). Emitted when we offer an HTLC (BOLT #2
    "cltv_expiry_delta Selection": an offered HTLC is timed out on chain ``G`` blocks
    after its ``cltv_expiry``, ``protocol.config.OFFERED_HTLC_GRACE_BLOCKS``) and
    when we fulfill one the peer offered (the preimage must reach the chain before
    the peer can time it out: ``cltv_expiry`` minus
    ``protocol.config.FULFILLED_HTLC_DEADLINE_BLOCKS``)."""

    htlc_id: int
    offered_by_us: bool
    payment_hash: bytes
    deadline_height: int


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
    | HtlcDeadline | PeerWarning | ChannelFailed | ChannelClosed
)
Action = Send | Persist | Watch | Broadcast | Event
