"""What a routed HTLC carries, payer -> hub -> payee, and what a failure says back.

Theory of operation. Chanhub is hub-and-spoke: every payment crosses exactly one hub,
so BOLT #4's layered Sphinx onion (one layer per hop, 1,366 bytes, 20 hops) would be
all padding. Instead the payer's ``update_add_htlc.onion_routing_packet`` is one
fixed-size packet of ``PACKET_BYTES`` (233) bytes in two parts (version 2; a version 1
packet, 200 bytes without the payer's node id, still decodes and opens):

- a header the hub reads in the clear: the payee's node id, the amount and the CLTV
  expiry the hub is asked to forward, and the payer's ephemeral public key;
- a payee payload the hub cannot read or change: ChaCha20-Poly1305 under a key that
  HKDF-SHA256 derives from ECDH(ephemeral key, payee node key), holding the payment
  secret (or, for a spontaneous payment, the preimage), the total amount, an
  optional "refund of payment X" link and the payer's node id (where the payee sends
  a refund; nothing binds it to the payer's channel: see ``PayeePayload``). The
  AEAD's associated data is the header and the HTLC's payment hash, so the payee
  detects a header the hub rewrote, and a payload cannot be moved onto another HTLC.

The hub forwards the packet byte for byte in the outgoing HTLC (same payment hash);
the payee opens it with its node secret. Every payload has the same length whatever it
holds, so the hub cannot tell an invoice payment from a spontaneous one or a refund.
``docs/payment-format.md`` draws the layout byte by byte.

Failures (``update_fail_htlc.reason``) are a small typed set (``FailureCode``, BOLT #4's
numbers where BOLT #4 has the case) with a few integer fields per code. The payer
shares no onion key with the hub, so instead of BOLT #4's per-hop HMAC every failure
is signed (compact ECDSA) by the node that produced it, the hub or the payee, over its
origin, the payment hash and the SHA-256 of the exact onion packet of the HTLC it
fails. The payer knows both node ids (GetInfo, the invoice) and the packet it built,
so it can tell who refused, and a failure cannot be replayed onto another payment or
another attempt (each attempt has a fresh ephemeral key, hence another packet). What
this does not give: the hub can still fail any HTLC with a reason of its own choosing
(truthful or not), withhold the payee's failure and send its own instead, or delay;
failures are not confidential (the hub reads the payee's). It cannot forge or alter
a payee failure.

The payer's amounts and expiries (``route_terms``) and the fee formula
(``forwarding_fee_msat``) live here too: the payer's SDK computes exactly what the hub's
policy (hub/policy.py) checks, and client/ never imports hub/.

Decoders (``decode_forward``, ``open_payee_payload``, ``decode_failure``) refuse every
malformed, non-canonical or unauthenticated input with ``RoutingFormatError`` and
nothing else. Pure: randomness (the ephemeral secret) comes in as an argument.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field

from coincurve import PublicKey
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from channel.keys import pubkey_from_secret
from channel.signing import (
    is_compressed_pubkey_encoding,
    parse_pubkey,
    parsed_pubkey,
    sign,
    verify,
)
from protocol.config import (
    CLTV_EXPIRY_LOCKTIME_THRESHOLD,
    MAX_FAIL_REASON_BYTES,
    MIN_CLTV_EXPIRY_MARGIN_BLOCKS,
)

PACKET_VERSION = 2  # what build_packet writes; version 1 packets still decode
FAILURE_VERSION = 1

_HEADER = 1 + 33 + 8 + 4 + 33  # version, payee node id, amount, cltv, ephemeral key
_PLAINTEXT_V1 = 1 + 8 + 32 + 32 + 32  # flags, total amount, secret, preimage, refund link
_PLAINTEXT = _PLAINTEXT_V1 + 33  # version 2: and the payer's node id
_TAG = 16  # Poly1305
PACKET_BYTES = _HEADER + _PLAINTEXT + _TAG  # 233: one hop needs none of BOLT #4's padding
PACKET_BYTES_V1 = _HEADER + _PLAINTEXT_V1 + _TAG  # 200: older payers' packets
_PACKET_BYTES_OF_VERSION = {1: PACKET_BYTES_V1, 2: PACKET_BYTES}

_FLAG_SPONTANEOUS = 0x01
_FLAG_REFUND = 0x02
_FLAG_PAYER = 0x04  # version 2 only
_FLAGS_OF_VERSION = {1: _FLAG_SPONTANEOUS | _FLAG_REFUND,
                     2: _FLAG_SPONTANEOUS | _FLAG_REFUND | _FLAG_PAYER}
_ZERO33 = bytes(33)
_ZERO32 = bytes(32)
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 order
_NONCE = bytes(12)  # the key is fresh per ephemeral key and payment hash: one message per key
_U64_MAX = 2**64 - 1

_KDF_SALT = b"chanhub/onion/v1"
_AD_TAG = b"chanhub/payee-payload/v1"
_FAILURE_TAG = b"chanhub/failure/v1"


class RoutingFormatError(ValueError):
    """A packet, payload or failure reason that is malformed, non-canonical, not for
    us, or not authentic. The only exception the decoders raise."""


# -- the packet ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardInstructions:
    """The header: what the payer asks the hub to do. ``packet`` is the whole packet,
    which the hub forwards unchanged."""

    payee_node_id: bytes
    amount_to_forward_msat: int
    outgoing_cltv_value: int
    ephemeral_pubkey: bytes
    packet: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PayeePayload:
    """What only the payee reads.

    An invoice payment has ``payment_secret`` (from the invoice) and no preimage; a
    spontaneous payment has ``payment_preimage`` and no secret, and only a spontaneous
    payment may carry ``refund_of_payment_hash`` (the payment hash of the payment it
    refunds). ``total_amount_msat`` is the payment's total (no multi-part payments:
    the payee expects it to equal the forwarded amount).

    ``payer_node_id`` is the payer's node id as the payer states it, where the payee's
    ``Refund`` sends money back (None: not stated, as in every version 1 packet).
    Nothing binds it to the channel the HTLC came from: the hub cannot read or change
    it (AEAD), but a payer can name any node, so a refund goes to whoever the payer
    said. That costs the payee nothing it did not accept to pay: a refund is bounded
    by what the payment brought in."""

    total_amount_msat: int
    payment_secret: bytes | None = None
    payment_preimage: bytes | None = None
    refund_of_payment_hash: bytes | None = None
    payer_node_id: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 < self.total_amount_msat <= _U64_MAX:
            raise RoutingFormatError(f"total_amount_msat {self.total_amount_msat} out of range")
        if (self.payment_secret is None) == (self.payment_preimage is None):
            raise RoutingFormatError("exactly one of payment_secret and payment_preimage")
        for name in ("payment_secret", "payment_preimage", "refund_of_payment_hash"):
            value = getattr(self, name)
            if value is not None and len(value) != 32:
                raise RoutingFormatError(f"{name} must be 32 bytes")
        if self.refund_of_payment_hash is not None and self.payment_preimage is None:
            raise RoutingFormatError("a refund is a spontaneous payment (it carries the preimage)")
        if self.payer_node_id is not None and len(self.payer_node_id) != 33:
            raise RoutingFormatError("payer_node_id must be 33 bytes")

    @property
    def spontaneous(self) -> bool:
        return self.payment_preimage is not None


@dataclass(frozen=True, slots=True)
class PayeePacket:
    """An opened packet: the header and the decrypted payload."""

    forward: ForwardInstructions
    payload: PayeePayload


def _payload_key(shared_secret: bytes, ephemeral_pubkey: bytes, payee_node_id: bytes,
                 payment_hash: bytes) -> bytes:
    # The payment hash in ``info`` makes the key differ per HTLC even if a caller were
    # to reuse an ephemeral secret, so the constant nonce never meets one key twice
    # for two payment hashes.
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_KDF_SALT,
               info=ephemeral_pubkey + payee_node_id + payment_hash)
    return kdf.derive(shared_secret)


def _associated_data(header: bytes, payment_hash: bytes) -> bytes:
    return _AD_TAG + payment_hash + header


def _ecdh(secret: bytes, pubkey: bytes) -> bytes:
    """libsecp256k1's ECDH: SHA-256 of the compressed shared point (what coincurve's
    ``PrivateKey.ecdh`` returns), without building a ``PrivateKey``, which would derive
    two public keys this never needs (it doubled the payee's cost)."""
    try:
        point = parse_pubkey(pubkey)
    except ValueError:
        raise RoutingFormatError("not a compressed secp256k1 point") from None
    out = ffi.new("unsigned char[32]")
    if len(secret) != 32 or not lib.secp256k1_ecdh(GLOBAL_CONTEXT.ctx, out, point, secret,
                                                   ffi.NULL, ffi.NULL):
        raise RoutingFormatError("not a secp256k1 secret")
    return bytes(ffi.buffer(out, 32))


def _check_point(value: bytes, name: str) -> None:
    try:
        parsed_pubkey(value)  # cached: the payer checks node ids it pays again and again
    except ValueError:
        raise RoutingFormatError(f"{name} is not a compressed secp256k1 point") from None


def _check_point_encoding(value: bytes, name: str) -> None:
    if not is_compressed_pubkey_encoding(value):
        raise RoutingFormatError(f"{name} is not a compressed point encoding")


def build_packet(*, payee_node_id: bytes, amount_to_forward_msat: int,
                 outgoing_cltv_value: int, payment_hash: bytes, payload: PayeePayload,
                 ephemeral_secret: bytes) -> bytes:
    """The payer's ``onion_routing_packet`` (``PACKET_BYTES`` long).

    ``ephemeral_secret`` must be 32 fresh random bytes for every packet (the caller
    draws them: this module takes no randomness of its own); reusing one lets the
    hub link the two payments. Raises RoutingFormatError on arguments that could not
    be decoded back (bad key, amount or expiry out of range)."""
    if len(payment_hash) != 32:
        raise RoutingFormatError("payment_hash must be 32 bytes")
    _check_point(payee_node_id, "payee_node_id")
    if payload.payer_node_id is not None:
        _check_point(payload.payer_node_id, "payer_node_id")
    if not 0 < amount_to_forward_msat <= _U64_MAX:
        raise RoutingFormatError(f"amount_to_forward_msat {amount_to_forward_msat} out of range")
    if not 0 < outgoing_cltv_value < CLTV_EXPIRY_LOCKTIME_THRESHOLD:
        raise RoutingFormatError(f"outgoing_cltv_value {outgoing_cltv_value} is not a height")
    # Not ``pubkey_from_secret``: its cache is for long-lived keys, and an ephemeral
    # secret must not linger in memory after its one packet.
    if len(ephemeral_secret) != 32 or not 0 < int.from_bytes(ephemeral_secret, "big") < _N:
        raise RoutingFormatError("ephemeral_secret is not a secp256k1 secret")
    ephemeral_pubkey = PublicKey.from_valid_secret(ephemeral_secret).format()
    shared_secret = _ecdh(ephemeral_secret, payee_node_id)
    header = (bytes((PACKET_VERSION,)) + payee_node_id
              + amount_to_forward_msat.to_bytes(8, "big")
              + outgoing_cltv_value.to_bytes(4, "big") + ephemeral_pubkey)
    flags = ((_FLAG_SPONTANEOUS if payload.spontaneous else 0)
             | (_FLAG_REFUND if payload.refund_of_payment_hash is not None else 0)
             | (_FLAG_PAYER if payload.payer_node_id is not None else 0))
    plaintext = (bytes((flags,)) + payload.total_amount_msat.to_bytes(8, "big")
                 + (payload.payment_secret or _ZERO32) + (payload.payment_preimage or _ZERO32)
                 + (payload.refund_of_payment_hash or _ZERO32)
                 + (payload.payer_node_id or _ZERO33))
    key = _payload_key(shared_secret, ephemeral_pubkey, payee_node_id, payment_hash)
    sealed = ChaCha20Poly1305(key).encrypt(_NONCE, plaintext,
                                           _associated_data(header, payment_hash))
    return header + sealed


def decode_forward(packet: bytes) -> ForwardInstructions:
    """The header, as the hub reads it. Checks the shape only: the hub's policy
    (hub/policy.py) judges the amounts and expiries, and the keys are checked for
    their encoding, not for being on the curve (see below)."""
    if not isinstance(packet, bytes) or len(packet) not in (PACKET_BYTES_V1, PACKET_BYTES):
        raise RoutingFormatError(f"packet must be {PACKET_BYTES_V1} or {PACKET_BYTES} bytes")
    expected_bytes = _PACKET_BYTES_OF_VERSION.get(packet[0])
    if expected_bytes is None:
        raise RoutingFormatError(f"unknown packet version {packet[0]}")
    if len(packet) != expected_bytes:
        raise RoutingFormatError(f"a version {packet[0]} packet must be {expected_bytes} bytes")
    payee_node_id = packet[1:34]
    amount_to_forward_msat = int.from_bytes(packet[34:42], "big")
    outgoing_cltv_value = int.from_bytes(packet[42:46], "big")
    ephemeral_pubkey = packet[46:79]
    # Encodings only, not curve membership: on the hub's hot path a full parse of two
    # points costs more than the rest of the forward; the hub looks the payee up among
    # its clients (whose ids are valid points) and the payee's ECDH refuses an
    # ephemeral key off the curve.
    _check_point_encoding(payee_node_id, "payee_node_id")
    _check_point_encoding(ephemeral_pubkey, "ephemeral key")
    if amount_to_forward_msat == 0:
        raise RoutingFormatError("amount_to_forward_msat is zero")
    if not 0 < outgoing_cltv_value < CLTV_EXPIRY_LOCKTIME_THRESHOLD:
        raise RoutingFormatError(f"outgoing_cltv_value {outgoing_cltv_value} is not a height")
    return ForwardInstructions(payee_node_id, amount_to_forward_msat, outgoing_cltv_value,
                               ephemeral_pubkey, packet)


def open_payee_payload(packet: bytes, *, payment_hash: bytes, node_secret: bytes) -> PayeePacket:
    """The payee's side: the header and the decrypted payload of an HTLC's packet.

    Refused (RoutingFormatError): a packet for another node, one whose header or
    payload was altered, one built for another payment hash, a non-canonical payload
    (a field its flags say is absent but that is not zero), or a payer node id that
    is not a point. A version 1 packet opens with ``payer_node_id`` None."""
    forward = decode_forward(packet)
    if len(payment_hash) != 32:
        raise RoutingFormatError("payment_hash must be 32 bytes")
    try:
        node_id = pubkey_from_secret(node_secret)  # cached: the payee's one node key
    except ValueError:
        raise RoutingFormatError("node_secret is not a secp256k1 secret") from None
    if node_id != forward.payee_node_id:
        raise RoutingFormatError("packet is for another node")
    shared_secret = _ecdh(node_secret, forward.ephemeral_pubkey)
    key = _payload_key(shared_secret, forward.ephemeral_pubkey, forward.payee_node_id,
                       payment_hash)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(
            _NONCE, packet[_HEADER:], _associated_data(packet[:_HEADER], payment_hash))
    except InvalidTag:
        raise RoutingFormatError("payee payload does not authenticate") from None
    flags, rest = plaintext[0], plaintext[1:]
    total_amount_msat = int.from_bytes(rest[:8], "big")
    secret, preimage, refund = rest[8:40], rest[40:72], rest[72:104]
    payer = rest[104:137]  # empty in a version 1 payload
    if flags & ~_FLAGS_OF_VERSION[packet[0]]:
        raise RoutingFormatError(f"unknown payload flags {flags:#x}")
    spontaneous = bool(flags & _FLAG_SPONTANEOUS)
    # Canonical: an absent field is zeros (so one payload has exactly one encoding).
    if (spontaneous and secret != _ZERO32) or (not spontaneous and preimage != _ZERO32):
        raise RoutingFormatError("payload carries both a payment secret and a preimage")
    if not flags & _FLAG_REFUND and refund != _ZERO32:
        raise RoutingFormatError("payload has refund bytes without the refund flag")
    if flags & _FLAG_PAYER:
        try:
            parse_pubkey(payer)  # not the cached parse: anyone may put any bytes here
        except ValueError:
            raise RoutingFormatError("payer_node_id is not a compressed secp256k1 point") from None
    elif payer not in (b"", _ZERO33):
        raise RoutingFormatError("payload has payer bytes without the payer flag")
    payload = PayeePayload(total_amount_msat,
                           payment_secret=None if spontaneous else secret,
                           payment_preimage=preimage if spontaneous else None,
                           refund_of_payment_hash=refund if flags & _FLAG_REFUND else None,
                           payer_node_id=payer if flags & _FLAG_PAYER else None)
    return PayeePacket(forward, payload)


# -- the payer's terms ------------------------------------------------------------------------

# Blocks the payer adds above the payee's min_final_cltv_expiry: blocks mined while the
# payment crosses the hub must not push the HTLC below what the payee accepts.
FINAL_CLTV_SLACK_BLOCKS = 2


def forwarding_fee_msat(amount_to_forward_msat: int, *, base_msat: int, fee_ppm: int) -> int:
    """The hub's fee for forwarding ``amount_to_forward_msat``: ``base_msat +
    amount_to_forward_msat * fee_ppm // 1_000_000``, rounded down (BOLT #7's formula).
    Here, shared, because the payer (client/) computes what the hub (hub/) checks."""
    return base_msat + amount_to_forward_msat * fee_ppm // 1_000_000


@dataclass(frozen=True, slots=True)
class RouteTerms:
    """What the payer puts in its packet and in its HTLC to the hub."""

    amount_to_forward_msat: int  # what the payee receives
    outgoing_cltv_value: int  # the payee's HTLC expiry
    htlc_amount_msat: int  # the payer's HTLC to the hub: amount + fee
    htlc_cltv_expiry: int  # the payer's HTLC to the hub: outgoing expiry + the hub's delta
    fee_msat: int


def route_terms(*, amount_msat: int, min_final_cltv_expiry_blocks: int, height: int,
                base_msat: int, fee_ppm: int, cltv_expiry_delta_blocks: int) -> RouteTerms:
    """The amounts and expiries of a payment of ``amount_msat`` at ``height`` through a
    hub with this fee policy and CLTV delta (GetInfo), to a payee that asks for
    ``min_final_cltv_expiry_blocks`` (the invoice's ``c``; 18 when spontaneous)."""
    # Never at or below the channels' floor (height + MIN_CLTV_EXPIRY_MARGIN_BLOCKS),
    # even for a payee that asks for less.
    final_blocks = max(min_final_cltv_expiry_blocks, MIN_CLTV_EXPIRY_MARGIN_BLOCKS + 1)
    outgoing_cltv_value = height + final_blocks + FINAL_CLTV_SLACK_BLOCKS
    fee = forwarding_fee_msat(amount_msat, base_msat=base_msat, fee_ppm=fee_ppm)
    return RouteTerms(amount_msat, outgoing_cltv_value, amount_msat + fee,
                      outgoing_cltv_value + cltv_expiry_delta_blocks, fee)


# -- failures --------------------------------------------------------------------------------

PERM = 0x4000  # BOLT #4: permanent, retrying the same payment will not help
NODE = 0x2000  # BOLT #4: the failing node itself
UPDATE = 0x1000  # BOLT #4: about the (outgoing) channel


class FailureCode(enum.IntEnum):
    """Why an HTLC failed. Values are BOLT #4's ``failure_code`` where BOLT #4 has the
    case; the three chanhub additions sit in the unused 0x80 range."""

    # from the hub
    INVALID_ONION_PAYLOAD = PERM | 22  # the packet does not decode
    UNKNOWN_PAYEE = PERM | 10  # BOLT #4 unknown_next_peer: no client with that node id
    PAYEE_OFFLINE = UPDATE | 20  # BOLT #4 channel_disabled: the payee's link is down
    INSUFFICIENT_CAPACITY = UPDATE | 7  # BOLT #4 temporary_channel_failure: no liquidity
    AMOUNT_BELOW_MINIMUM = UPDATE | 11
    FEE_INSUFFICIENT = UPDATE | 12
    INCORRECT_CLTV_EXPIRY = UPDATE | 13  # outgoing expiry not a CLTV delta below incoming
    EXPIRY_TOO_SOON = UPDATE | 14
    EXPIRY_TOO_FAR = 21
    # from the payee
    INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = PERM | 15
    FINAL_INCORRECT_CLTV_EXPIRY = 18  # the hub shortened the expiry the payer asked for
    FINAL_INCORRECT_HTLC_AMOUNT = 19  # the hub forwarded less than the payer asked for
    INVOICE_EXPIRED = PERM | 0x81
    ALREADY_PAID = PERM | 0x82
    # from either
    TEMPORARY_FAILURE = NODE | 2  # BOLT #4 temporary_node_failure (also: timed out)
    PERMANENT_FAILURE = PERM | NODE | 2  # BOLT #4 permanent_node_failure

    @property
    def permanent(self) -> bool:
        """Retrying the same payment (same amount, same payee) will fail again."""
        return bool(self & PERM)


class FailureOrigin(enum.IntEnum):
    HUB = 1
    PAYEE = 2


# Each code's fields, in wire order, with their widths in bytes (all big-endian).
_FIELDS: dict[FailureCode, tuple[tuple[str, int], ...]] = {
    FailureCode.AMOUNT_BELOW_MINIMUM: (("htlc_msat", 8), ("htlc_minimum_msat", 8)),
    FailureCode.FEE_INSUFFICIENT: (("htlc_msat", 8), ("fee_base_msat", 4), ("fee_ppm", 4)),
    FailureCode.INCORRECT_CLTV_EXPIRY: (("cltv_expiry", 4), ("cltv_expiry_delta_blocks", 2)),
    FailureCode.EXPIRY_TOO_SOON: (("height", 4),),
    FailureCode.EXPIRY_TOO_FAR: (("height", 4),),
    FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS: (("htlc_msat", 8), ("height", 4)),
    FailureCode.FINAL_INCORRECT_CLTV_EXPIRY: (("cltv_expiry", 4),),
    FailureCode.FINAL_INCORRECT_HTLC_AMOUNT: (("htlc_msat", 8),),
}
_FIELD_NAMES = ("htlc_msat", "htlc_minimum_msat", "fee_base_msat", "fee_ppm", "cltv_expiry",
                "cltv_expiry_delta_blocks", "height")


@dataclass(frozen=True, slots=True)
class Failure:
    """One failure reason: a code and exactly the fields ``_FIELDS`` gives that code
    (the others None). ``htlc_msat`` is the amount of the HTLC that failed;
    ``fee_base_msat``/``fee_ppm``/``htlc_minimum_msat``/``cltv_expiry_delta_blocks``
    the hub's current policy, so the payer can retry with what it needs."""

    code: FailureCode
    htlc_msat: int | None = None
    htlc_minimum_msat: int | None = None
    fee_base_msat: int | None = None
    fee_ppm: int | None = None
    cltv_expiry: int | None = None
    cltv_expiry_delta_blocks: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        widths = dict(_FIELDS.get(self.code, ()))
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if name not in widths:
                if value is not None:
                    raise RoutingFormatError(f"{self.code.name} has no field {name}")
            elif not isinstance(value, int) or not 0 <= value < 1 << (8 * widths[name]):
                raise RoutingFormatError(f"{self.code.name}.{name} = {value!r} out of range")


@dataclass(frozen=True, slots=True)
class FailureReport:
    """A decoded, authenticated failure: who sent it and what it says."""

    origin: FailureOrigin
    failure: Failure

    def describe(self) -> str:
        """One line for a person: who refused, and why (the CLI's error line)."""
        f = self.failure
        text = _DESCRIPTIONS[f.code].format(
            htlc_msat=f.htlc_msat, htlc_minimum_msat=f.htlc_minimum_msat,
            fee_base_msat=f.fee_base_msat, fee_ppm=f.fee_ppm, cltv_expiry=f.cltv_expiry,
            cltv_expiry_delta_blocks=f.cltv_expiry_delta_blocks, height=f.height)
        return f"{self.origin.name.lower()}: {text}"


_DESCRIPTIONS: dict[FailureCode, str] = {
    FailureCode.INVALID_ONION_PAYLOAD: "the payment packet could not be read",
    FailureCode.UNKNOWN_PAYEE: "the payee is not a client of this hub",
    FailureCode.PAYEE_OFFLINE: "the payee is offline",
    FailureCode.INSUFFICIENT_CAPACITY: "not enough liquidity toward the payee",
    FailureCode.AMOUNT_BELOW_MINIMUM:
        "amount below the payee channel's minimum of {htlc_minimum_msat} msat",
    FailureCode.FEE_INSUFFICIENT:
        "fee too low: the hub charges {fee_base_msat} msat + {fee_ppm} ppm",
    FailureCode.INCORRECT_CLTV_EXPIRY:
        "expiry too close to the incoming one: the hub needs {cltv_expiry_delta_blocks} blocks",
    FailureCode.EXPIRY_TOO_SOON: "expiry too soon at height {height}",
    FailureCode.EXPIRY_TOO_FAR: "expiry too far beyond height {height}",
    FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:
        "incorrect or unknown payment details (wrong secret, amount or expiry, or no such "
        "invoice)",
    FailureCode.FINAL_INCORRECT_CLTV_EXPIRY: "the hub shortened the expiry the payer set",
    FailureCode.FINAL_INCORRECT_HTLC_AMOUNT: "the hub forwarded less than the payer set",
    FailureCode.INVOICE_EXPIRED: "the invoice has expired",
    FailureCode.ALREADY_PAID: "the invoice is already paid",
    FailureCode.TEMPORARY_FAILURE: "temporary failure (or timed out); try again later",
    FailureCode.PERMANENT_FAILURE: "permanent failure",
}


def _failure_digest(origin_node_id: bytes, payment_hash: bytes, onion_routing_packet: bytes,
                    body: bytes) -> bytes:
    return hashlib.sha256(_FAILURE_TAG + origin_node_id + payment_hash
                          + hashlib.sha256(onion_routing_packet).digest() + body).digest()


def encode_failure(failure: Failure, *, origin: FailureOrigin, payment_hash: bytes,
                   onion_routing_packet: bytes, node_secret: bytes) -> bytes:
    """``update_fail_htlc.reason`` for the HTLC with this payment hash and onion
    packet (whatever bytes it carried, even undecodable ones), signed with the
    origin's node secret."""
    if len(payment_hash) != 32:
        raise RoutingFormatError("payment_hash must be 32 bytes")
    data = b"".join(int(getattr(failure, name)).to_bytes(width, "big")
                    for name, width in _FIELDS.get(failure.code, ()))
    body = (bytes((FAILURE_VERSION, origin)) + int(failure.code).to_bytes(2, "big")
            + len(data).to_bytes(2, "big") + data)
    try:
        origin_node_id = pubkey_from_secret(node_secret)
    except ValueError:
        raise RoutingFormatError("node_secret is not a secp256k1 secret") from None
    digest = _failure_digest(origin_node_id, payment_hash, onion_routing_packet, body)
    return body + sign(node_secret, digest)


def decode_failure(reason: bytes, *, payment_hash: bytes, onion_routing_packet: bytes,
                   hub_node_id: bytes, payee_node_id: bytes) -> FailureReport:
    """The payer's (or relaying hub's) reading of ``update_fail_htlc.reason`` for its
    HTLC with ``payment_hash`` and ``onion_routing_packet``: refused unless signed by
    the node its origin names (the hub's node id from GetInfo, the payee's from the
    invoice or the packet)."""
    if not isinstance(reason, bytes) or not 70 <= len(reason) <= MAX_FAIL_REASON_BYTES:
        raise RoutingFormatError("failure reason has the wrong length")
    version, origin_byte = reason[0], reason[1]
    code_value = int.from_bytes(reason[2:4], "big")
    data_len = int.from_bytes(reason[4:6], "big")
    if version != FAILURE_VERSION:
        raise RoutingFormatError(f"unknown failure version {version}")
    if origin_byte not in FailureOrigin._value2member_map_:
        raise RoutingFormatError(f"unknown failure origin {origin_byte}")
    if code_value not in FailureCode._value2member_map_:
        raise RoutingFormatError(f"unknown failure code {code_value:#06x}")
    origin, code = FailureOrigin(origin_byte), FailureCode(code_value)
    fields = _FIELDS.get(code, ())
    if data_len != sum(width for _, width in fields) or len(reason) != 6 + data_len + 64:
        raise RoutingFormatError(f"{code.name} has the wrong data length")
    values: dict[str, int] = {}
    at = 6
    for name, width in fields:
        values[name] = int.from_bytes(reason[at:at + width], "big")
        at += width
    signer = hub_node_id if origin is FailureOrigin.HUB else payee_node_id
    digest = _failure_digest(signer, payment_hash, onion_routing_packet, reason[:at])
    if not verify(signer, digest, reason[at:]):
        raise RoutingFormatError(f"failure not signed by the {origin.name.lower()}")
    return FailureReport(origin, Failure(code, **values))


def same_secret(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two secrets (payment secrets, preimages)."""
    return hmac.compare_digest(a, b)
