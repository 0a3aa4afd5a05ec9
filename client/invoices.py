"""BOLT #11 invoices for regtest, and the payee's acceptance check for an incoming HTLC.

Theory of operation. A payee makes an invoice (``create_invoice``) with the maintained
``bolt11`` package, signed with its node secret: the ``lnbcrt`` prefix and amount, a
timestamp, the payment hash, the payment secret, a description, the expiry, the
minimum final CLTV, its node id (``n``) and the feature bits it requires
(var_onion_optin and payment_secret). The payer decodes it (``decode_invoice``):
the signature is checked against the node id it declares (or the one recovered from
it), and only a low-S signature passes; the network must be regtest; the invoice must
not have expired at ``now``. Everything refused raises ``InvoiceError`` and nothing
else (the third-party parser's own exceptions are converted at that one boundary).
``parse_invoice`` is the same without the network and expiry checks, so the spec's
mainnet examples can be read for their fields.

When the payer's HTLC arrives, the payee opens its packet
(``protocol.routing.open_payee_payload``) and calls ``check_incoming_payment`` with the
HTLC, the opened packet and its invoice record for that payment hash (None if it has
none): the answer is ``Accepted`` (with the preimage to fulfill with) or ``Refused``
(a detailed local reason, and the BOLT #4-shaped ``Failure`` to sign and send back).
It lives here, beside the invoice record it judges, because only a payee runs it.
Following BOLT #4, a wrong payment secret, an unknown payment hash, a wrong amount
and a too-close expiry all go on the wire as ``INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS``
(the hub, which does not know the secret, must not be able to probe which invoices
exist); "expired" and "already paid" are told only to a sender that proved it holds
the invoice (the secret matched).

Pure: the time (``now``, UNIX seconds) and the height come in as arguments, and the
caller draws the random preimage and payment secret.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import bolt11
from bolt11.models.features import Feature, Features, FeatureState
from bolt11.models.tags import Tag, TagChar, Tags

from channel.keys import pubkey_from_secret
from protocol.config import MAX_CLTV_EXPIRY_DELTA_BLOCKS
from protocol.routing import Failure, FailureCode, PayeePacket, same_secret

REGTEST_CURRENCY = "bcrt"  # BOLT #11 prefix lnbcrt
DEFAULT_INVOICE_EXPIRY_SECONDS = 3600  # BOLT #11's default for an absent ``x``
# BOLT #11's default for an absent ``c`` and BOLT #2's ``2R+G+S`` (R=2, G=2, S=12):
# the payee must be able to claim on chain before the hub could time the HTLC out.
DEFAULT_MIN_FINAL_CLTV_EXPIRY_BLOCKS = 18
# bolt11 decodes bit by bit in Python; a bound keeps a hostile string cheap to refuse.
MAX_INVOICE_CHARS = 4096
MAX_DESCRIPTION_BYTES = 639  # one tagged field holds at most 1023 x 5 bits
_MAX_EXPIRY_SECONDS = 2**32 - 1
_MAX_TIMESTAMP = 2**35 - 1  # BOLT #11: 35 bits

# Feature bits (BOLT #9) this payee requires and this payer understands; any other
# even ("compulsory") bit in an invoice means a feature we cannot honour.
_VAR_ONION_OPTIN_BIT = 8
_PAYMENT_SECRET_BIT = 14
_KNOWN_EVEN_BITS = (1 << _VAR_ONION_OPTIN_BIT) | (1 << _PAYMENT_SECRET_BIT)


def _even_bits(features: int) -> int:
    """The compulsory (even-numbered) bits of a feature vector of any length."""
    return features & int("01" * (features.bit_length() // 2 + 1), 2)


class InvoiceError(ValueError):
    """An invoice we refuse to make or to pay: malformed, badly signed, not regtest,
    expired, or asking for what we cannot do."""


@dataclass(frozen=True, slots=True)
class Invoice:
    """A decoded and checked BOLT #11 invoice."""

    bolt11: str
    network: str  # the BOLT #11 currency: "bcrt" for everything decode_invoice returns
    payee_node_id: bytes
    payment_hash: bytes
    payment_secret: bytes
    amount_msat: int | None  # None: the payer chooses
    description: str | None
    # BOLT #11 ``h``: whoever has the long description must check it hashes to this.
    description_hash: bytes | None
    created_at: int  # UNIX seconds
    expiry_seconds: int
    min_final_cltv_expiry_blocks: int
    features: int  # the feature bit vector, bit 0 the least significant

    @property
    def expires_at(self) -> int:
        return self.created_at + self.expiry_seconds

    def expired(self, now: int) -> bool:
        """BOLT #11: after ``timestamp + expiry`` neither side should use it."""
        return now >= self.expires_at


def _feature_vector() -> Features:
    return Features.from_feature_list({Feature.var_onion_optin: FeatureState.required,
                                       Feature.payment_secret: FeatureState.required})


def create_invoice(*, node_secret: bytes, payment_hash: bytes, payment_secret: bytes,
                   amount_msat: int | None, description: str, now: int,
                   expiry_seconds: int = DEFAULT_INVOICE_EXPIRY_SECONDS,
                   min_final_cltv_expiry_blocks: int = DEFAULT_MIN_FINAL_CLTV_EXPIRY_BLOCKS,
                   ) -> Invoice:
    """A signed ``lnbcrt`` invoice. ``payment_hash`` is SHA-256 of the preimage the
    payee keeps; ``payment_secret`` 32 random bytes of its own."""
    if len(payment_hash) != 32 or len(payment_secret) != 32:
        raise InvoiceError("payment_hash and payment_secret must be 32 bytes")
    if amount_msat is not None and not (isinstance(amount_msat, int) and 0 < amount_msat < 2**63):
        raise InvoiceError(f"amount_msat {amount_msat!r} must be positive (or None)")
    if len(description.encode()) > MAX_DESCRIPTION_BYTES:
        raise InvoiceError(f"description longer than {MAX_DESCRIPTION_BYTES} bytes")
    if not 0 < expiry_seconds <= _MAX_EXPIRY_SECONDS:
        raise InvoiceError(f"expiry_seconds {expiry_seconds} out of range")
    if not 0 < min_final_cltv_expiry_blocks <= MAX_CLTV_EXPIRY_DELTA_BLOCKS:
        raise InvoiceError(f"min_final_cltv_expiry_blocks {min_final_cltv_expiry_blocks} "
                           "out of range")
    if not 0 < now <= _MAX_TIMESTAMP:
        raise InvoiceError(f"timestamp {now} out of range")
    try:
        payee = pubkey_from_secret(node_secret)
    except ValueError:
        raise InvoiceError("node_secret is not a secp256k1 secret") from None
    tags = Tags([
        Tag(TagChar.payment_hash, payment_hash.hex()),
        Tag(TagChar.payment_secret, payment_secret.hex()),
        Tag(TagChar.description, description),
        Tag(TagChar.expire_time, expiry_seconds),
        Tag(TagChar.min_final_cltv_expiry, min_final_cltv_expiry_blocks),
        Tag(TagChar.payee, payee.hex()),
        Tag(TagChar.features, _feature_vector()),
    ])
    unsigned = bolt11.Bolt11(
        currency=REGTEST_CURRENCY, date=now, tags=tags,
        amount_msat=None if amount_msat is None else bolt11.MilliSatoshi(amount_msat))
    text = bolt11.encode(unsigned, private_key=node_secret.hex(), keep_payee=True, strict=True)
    # Not parse_invoice(text): bolt11's decoder costs more than its encoder (4 ms CPU);
    # the tests check that decoding gives back exactly this.
    return Invoice(bolt11=text, network=REGTEST_CURRENCY, payee_node_id=payee,
                   payment_hash=payment_hash, payment_secret=payment_secret,
                   amount_msat=amount_msat, description=description, description_hash=None,
                   created_at=now, expiry_seconds=expiry_seconds,
                   min_final_cltv_expiry_blocks=min_final_cltv_expiry_blocks,
                   features=_KNOWN_EVEN_BITS)


def _hrp_amount(text: str) -> str:
    hrp = text[: text.rfind("1")]
    for currency in ("bcrt", "bc", "tbs", "tb"):  # longest first, as BOLT #11's readers
        if hrp.startswith("ln" + currency):
            return hrp[2 + len(currency):]
    raise InvoiceError("unknown invoice prefix")


def parse_invoice(text: str) -> Invoice:
    """Decode and check the signature and the fields, on any network, at any time."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_INVOICE_CHARS:
        raise InvoiceError("not an invoice string of a sane length")
    if not text.isascii() or (text != text.lower() and text != text.upper()):
        raise InvoiceError("mixed-case or non-ASCII invoice (BIP-173 forbids it)")
    text = text.lower()
    amount = _hrp_amount(text)
    # BOLT #11: a ``p`` amount must end in 0 (bolt11 would silently truncate it).
    if amount.endswith("p") and not amount[:-1].endswith("0"):
        raise InvoiceError("sub-millisatoshi amount")
    try:
        decoded = bolt11.decode(text)  # not strict: an absent ``c`` means 18 (BOLT #11)
        payee_hex = decoded.payee
        if payee_hex is None or decoded.signature is None:
            raise InvoiceError("no payee node id")
        # bolt11 recovers the key (no ``n``) without judging S; libsecp256k1's verify
        # refuses high-S, so every accepted signature has one encoding.
        decoded.signature.verify(payee_hex)
        features_tag = decoded.tags.get(TagChar.features)
        features = int(features_tag.data.data.uint) if features_tag and len(
            features_tag.data.data) else 0
        description_hash = decoded.description_hash
        invoice = Invoice(
            bolt11=text,
            network=decoded.currency,
            payee_node_id=bytes.fromhex(payee_hex),
            payment_hash=bytes.fromhex(decoded.payment_hash),
            payment_secret=bytes.fromhex(decoded.payment_secret or ""),
            amount_msat=None if decoded.amount_msat is None else int(decoded.amount_msat),
            description=decoded.description,
            description_hash=None if description_hash is None else bytes.fromhex(description_hash),
            created_at=int(decoded.date),
            expiry_seconds=int(decoded.expiry),
            min_final_cltv_expiry_blocks=int(decoded.min_final_cltv_expiry),
            features=features,
        )
    except InvoiceError:
        raise
    except Exception as exc:  # the third-party parser raises anything: convert it here
        raise InvoiceError(f"invalid invoice: {type(exc).__name__}: {exc}") from None
    if len(invoice.payment_hash) != 32 or len(invoice.payment_secret) != 32:
        raise InvoiceError("payment hash or payment secret missing")
    if _even_bits(features) & ~_KNOWN_EVEN_BITS:
        raise InvoiceError(f"invoice requires unknown features {features:#x}")
    if invoice.amount_msat is not None and invoice.amount_msat <= 0:
        raise InvoiceError("zero amount")
    return invoice


def decode_invoice(text: str, *, now: int) -> Invoice:
    """What the payer's SDK calls before paying: ``parse_invoice`` plus regtest only
    (``lnbcrt``; ``lnbc``/``lntb``/``lntbs`` refused) and not expired at ``now``."""
    invoice = parse_invoice(text)
    if invoice.network != REGTEST_CURRENCY:
        raise InvoiceError(f"invoice is for network {invoice.network!r}, not regtest")
    if invoice.expired(now):
        raise InvoiceError(f"invoice expired at {invoice.expires_at} (now {now})")
    if invoice.min_final_cltv_expiry_blocks > MAX_CLTV_EXPIRY_DELTA_BLOCKS:
        raise InvoiceError("invoice asks for a final CLTV no channel accepts")
    return invoice


# -- the payee's acceptance check ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    """What the payee stores per invoice: the invoice, its preimage, whether paid."""

    invoice: Invoice
    payment_preimage: bytes
    paid: bool = False


class RefusalReason(enum.Enum):
    """Why the payee refused an HTLC (local detail; the wire gets ``Failure``)."""

    UNKNOWN_PAYMENT_HASH = "unknown payment hash"
    WRONG_PAYMENT_SECRET = "wrong payment secret"
    PREIMAGE_MISMATCH = "spontaneous payment whose preimage does not match the hash"
    AMOUNT_BELOW_FORWARD = "the hub forwarded less than the payer asked"
    CLTV_BELOW_FORWARD = "the hub forwarded an earlier expiry than the payer asked"
    MULTI_PART_UNSUPPORTED = "total amount differs from the forwarded amount"
    AMOUNT_BELOW_INVOICE = "amount below the invoice amount"
    AMOUNT_ABOVE_TWICE_INVOICE = "amount above twice the invoice amount"
    INVOICE_EXPIRED = "invoice expired"
    ALREADY_PAID = "invoice already paid"
    CLTV_TOO_SOON = "expiry too close for the invoice's min_final_cltv_expiry"


@dataclass(frozen=True, slots=True)
class Accepted:
    """Fulfill the HTLC with ``payment_preimage``."""

    payment_preimage: bytes
    amount_msat: int
    refund_of_payment_hash: bytes | None


@dataclass(frozen=True, slots=True)
class Refused:
    """Fail the HTLC with ``failure`` (sign it with ``protocol.routing.encode_failure``,
    origin PAYEE)."""

    reason: RefusalReason
    failure: Failure


def check_incoming_payment(*, amount_msat: int, cltv_expiry: int, payment_hash: bytes,
                           packet: PayeePacket, invoice: InvoiceRecord | None, now: int,
                           height: int,
                           spontaneous_min_final_cltv_expiry_blocks: int =
                           DEFAULT_MIN_FINAL_CLTV_EXPIRY_BLOCKS) -> Accepted | Refused:
    """Accept or refuse a received HTLC (BOLT #4 "final node" requirements, plus the
    invoice's). ``invoice`` is the payee's record for ``payment_hash``, None if it
    has none; a spontaneous payment (preimage in the payload) needs none. Idempotence
    of spontaneous payments (the same hash twice) is the caller's, who stores them.

    ``InvoiceRecord.paid`` must be true from the moment the caller accepted one HTLC
    for the invoice (stored durably before it fulfills), not only once that HTLC is
    settled: two HTLCs for one invoice may arrive in the same batch, and the second
    must be refused as already paid."""

    def refuse(reason: RefusalReason, failure: Failure | None = None) -> Refused:
        return Refused(reason, failure or Failure(
            FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=amount_msat,
            height=height))

    forward, payload = packet.forward, packet.payload
    # What the payer promised the payee, checked against what the hub delivered.
    if amount_msat < forward.amount_to_forward_msat:
        return refuse(RefusalReason.AMOUNT_BELOW_FORWARD,
                      Failure(FailureCode.FINAL_INCORRECT_HTLC_AMOUNT, htlc_msat=amount_msat))
    if cltv_expiry < forward.outgoing_cltv_value:
        return refuse(RefusalReason.CLTV_BELOW_FORWARD,
                      Failure(FailureCode.FINAL_INCORRECT_CLTV_EXPIRY, cltv_expiry=cltv_expiry))
    if payload.total_amount_msat != forward.amount_to_forward_msat:
        return refuse(RefusalReason.MULTI_PART_UNSUPPORTED)

    if payload.payment_preimage is not None:
        if invoice is not None or hashlib.sha256(payload.payment_preimage).digest() != payment_hash:
            return refuse(RefusalReason.PREIMAGE_MISMATCH)
        if cltv_expiry < height + spontaneous_min_final_cltv_expiry_blocks:
            return refuse(RefusalReason.CLTV_TOO_SOON)
        return Accepted(payload.payment_preimage, amount_msat, payload.refund_of_payment_hash)

    if invoice is None or invoice.invoice.payment_hash != payment_hash:
        return refuse(RefusalReason.UNKNOWN_PAYMENT_HASH)
    assert payload.payment_secret is not None  # PayeePayload holds a secret or a preimage
    if not same_secret(payload.payment_secret, invoice.invoice.payment_secret):
        return refuse(RefusalReason.WRONG_PAYMENT_SECRET)
    if invoice.paid:
        return refuse(RefusalReason.ALREADY_PAID, Failure(FailureCode.ALREADY_PAID))
    if invoice.invoice.expired(now):
        return refuse(RefusalReason.INVOICE_EXPIRED, Failure(FailureCode.INVOICE_EXPIRED))
    wanted = invoice.invoice.amount_msat
    if wanted is not None and amount_msat < wanted:
        return refuse(RefusalReason.AMOUNT_BELOW_INVOICE)
    if wanted is not None and amount_msat > 2 * wanted:
        return refuse(RefusalReason.AMOUNT_ABOVE_TWICE_INVOICE)
    if cltv_expiry < height + invoice.invoice.min_final_cltv_expiry_blocks:
        return refuse(RefusalReason.CLTV_TOO_SOON)
    return Accepted(invoice.payment_preimage, amount_msat, None)
