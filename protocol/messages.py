"""Building and checking peer messages (proto/peer.proto, BOLT #2 field meanings).

``event_of`` names the table event a ``PeerMessage`` triggers (its oneof field name);
``check_shape`` refuses malformed messages (wrong byte lengths) before any rule looks at
their content (DESIGN rule 4: "malformed protobuf").
"""

from __future__ import annotations

from typing import Any

from proto import peer_pb2
from protocol.config import MAX_FAIL_REASON_BYTES, MAX_ONION_ROUTING_PACKET_BYTES
from protocol.errors import Disposition, RemoteProtocolError
from protocol.table import Event

PeerMessage = peer_pb2.PeerMessage

ZERO32 = bytes(32)

# Fixed byte lengths per field name (a present field must have exactly this length).
_LENGTHS: dict[str, int] = {
    "channel_id": 32, "temporary_channel_id": 32, "chain_hash": 32, "funding_txid": 32,
    "payment_hash": 32, "payment_preimage": 32, "per_commitment_secret": 32,
    "your_last_per_commitment_secret": 32,
    "signature": 64,
    "funding_pubkey": 33, "revocation_basepoint": 33, "payment_basepoint": 33,
    "delayed_payment_basepoint": 33, "htlc_basepoint": 33, "first_per_commitment_point": 33,
    "second_per_commitment_point": 33, "next_per_commitment_point": 33,
    "my_current_per_commitment_point": 33,
}
# Byte fields that may be empty (absent).
_OPTIONAL = {"my_current_per_commitment_point", "channel_id"}


def wrap(**body: Any) -> PeerMessage:
    """``wrap(update_fee=peer_pb2.UpdateFee(...))`` -> PeerMessage."""
    return PeerMessage(**body)


def body_of(msg: PeerMessage) -> tuple[str, Any]:
    name = msg.WhichOneof("body")
    if name is None:
        raise RemoteProtocolError("empty PeerMessage", Disposition.WARN)
    return name, getattr(msg, name)


def event_of(msg: PeerMessage) -> Event:
    name, _ = body_of(msg)
    return Event(name)


def check_shape(msg: PeerMessage) -> None:
    """Refuse a message whose fixed-size fields have the wrong length, absent (empty)
    ones included: proto3 cannot tell an empty bytes field from a missing one, and a
    missing funding_txid, say, is as malformed as a short one. The two variable-size
    fields the channel stores until an HTLC is settled (an add's onion, a fail's
    reason) are capped (``protocol.config``): every Persist rewrites the snapshot that
    holds them, so an unbounded one would let a peer make each commit write megabytes
    (issue 11, finding 7). No honest node sends more: the refusal fails the channel."""
    name, body = body_of(msg)
    for field in body.DESCRIPTOR.fields:
        want = _LENGTHS.get(field.name)
        if want is None or field.is_repeated:
            continue
        value = getattr(body, field.name)
        if not isinstance(value, bytes):
            continue
        if len(value) != want and not (field.name in _OPTIONAL and not value):
            raise RemoteProtocolError(
                f"malformed {name}: {field.name} is {len(value)} bytes, expected {want}",
                Disposition.WARN)
    if name == "update_add_htlc" and len(body.onion_routing_packet) > \
            MAX_ONION_ROUTING_PACKET_BYTES:
        raise RemoteProtocolError(
            f"update_add_htlc: onion_routing_packet of {len(body.onion_routing_packet)} "
            f"bytes (BOLT #4: {MAX_ONION_ROUTING_PACKET_BYTES})", Disposition.CLOSE)
    if name == "update_fail_htlc" and len(body.reason) > MAX_FAIL_REASON_BYTES:
        raise RemoteProtocolError(
            f"update_fail_htlc: reason of {len(body.reason)} bytes (at most "
            f"{MAX_FAIL_REASON_BYTES})", Disposition.CLOSE)
    if name == "commitment_signed":
        for sig in body.htlc_signatures:
            if len(sig) != 64:
                raise RemoteProtocolError("malformed commitment_signed: htlc signature length",
                                          Disposition.WARN)
    if name == "commitment_signed" and len(body.signature) != 64:
        raise RemoteProtocolError("malformed commitment_signed: no signature", Disposition.WARN)


def check_channel_id(msg: PeerMessage, channel_id: bytes) -> None:
    """Refuse a message naming another channel than ``channel_id`` (DESIGN rule 4:
    "unknown channel"). Messages of the opening that name a ``temporary_channel_id``
    are checked by their handlers. BOLT #1: an ``error``/``warning`` with an all-zero
    (or no) channel_id concerns every channel with the peer; one naming a channel we
    do not know "MUST ignore the message"."""
    name, body = body_of(msg)
    if "channel_id" not in body.DESCRIPTOR.fields_by_name or body.channel_id == channel_id:
        return
    if name in ("error", "warning"):
        if body.channel_id in (b"", ZERO32):
            return
        raise RemoteProtocolError(f"{name} for another channel", Disposition.IGNORE)
    raise RemoteProtocolError(f"{name} for another channel", Disposition.WARN)


def channel_id_from_outpoint(funding_txid: bytes, output_index: int) -> bytes:
    """BOLT #2 "Definition of channel_id": funding_txid XOR funding_output_index, the
    index big-endian in the last two bytes."""
    tail = int.from_bytes(funding_txid[30:], "big") ^ output_index
    return funding_txid[:30] + tail.to_bytes(2, "big")


def error(channel_id: bytes, text: str) -> PeerMessage:
    return wrap(error=peer_pb2.Error(channel_id=channel_id, data=text.encode()))


def warning(channel_id: bytes, text: str) -> PeerMessage:
    return wrap(warning=peer_pb2.Warning(channel_id=channel_id, data=text.encode()))
