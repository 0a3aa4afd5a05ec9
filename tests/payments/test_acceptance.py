"""client/invoices.py ``check_incoming_payment``: the payee's verdict on an HTLC, one
test per refusal, the order that keeps the hub from probing, and a property: Accepted
only when every condition holds."""

from __future__ import annotations

import functools
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from client.invoices import (
    Accepted,
    Invoice,
    InvoiceRecord,
    RefusalReason,
    Refused,
    check_incoming_payment,
    create_invoice,
)
from protocol.routing import (
    Failure,
    FailureCode,
    ForwardInstructions,
    PayeePacket,
    PayeePayload,
    decode_forward,
    open_payee_payload,
)
from tests.payments.keys import (
    PAYEE_SECRET,
    PAYMENT_HASH,
    PAYMENT_SECRET,
    PREIMAGE,
    invoice_packet,
    spontaneous_packet,
)

NOW = 1_700_000_000
HEIGHT = 800
AMOUNT = 100_000
CLTV = HEIGHT + 18


@functools.cache  # bolt11 is slow; invoices are values
def make_invoice(amount_msat: int | None = AMOUNT, expiry_seconds: int = 3600,
                 min_final: int = 18) -> Invoice:
    return create_invoice(node_secret=PAYEE_SECRET, payment_hash=PAYMENT_HASH,
                          payment_secret=PAYMENT_SECRET, amount_msat=amount_msat,
                          description="test", now=NOW, expiry_seconds=expiry_seconds,
                          min_final_cltv_expiry_blocks=min_final)


RECORD = InvoiceRecord(make_invoice(), PREIMAGE)


def opened(packet: bytes) -> PayeePacket:
    return open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)


def check(packet: PayeePacket, *, amount_msat: int = AMOUNT, cltv_expiry: int = CLTV,
          invoice: InvoiceRecord | None = RECORD, now: int = NOW + 1,
          height: int = HEIGHT, payment_hash: bytes = PAYMENT_HASH) -> Accepted | Refused:
    return check_incoming_payment(amount_msat=amount_msat, cltv_expiry=cltv_expiry,
                                  payment_hash=payment_hash, packet=packet, invoice=invoice,
                                  now=now, height=height)


def reason_of(result: Accepted | Refused) -> RefusalReason:
    assert isinstance(result, Refused), result
    return result.reason


GOOD = opened(invoice_packet(amount_msat=AMOUNT, cltv=CLTV))
UNKNOWN_DETAILS = Failure(FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=AMOUNT,
                          height=HEIGHT)


def test_accepts_a_good_payment() -> None:
    assert check(GOOD) == Accepted(PREIMAGE, AMOUNT, None)


def test_wrong_payment_secret() -> None:
    wrong = opened(invoice_packet(amount_msat=AMOUNT, cltv=CLTV, secret=bytes(range(32))))
    result = check(wrong)
    assert result == Refused(RefusalReason.WRONG_PAYMENT_SECRET, UNKNOWN_DETAILS)


def test_unknown_payment_hash() -> None:
    assert check(GOOD, invoice=None) == Refused(RefusalReason.UNKNOWN_PAYMENT_HASH,
                                                UNKNOWN_DETAILS)
    # A record for another payment is no record for this one.
    other = InvoiceRecord(create_invoice(
        node_secret=PAYEE_SECRET, payment_hash=hashlib.sha256(b"x").digest(),
        payment_secret=PAYMENT_SECRET, amount_msat=AMOUNT, description="", now=NOW), PREIMAGE)
    assert reason_of(check(GOOD, invoice=other)) is RefusalReason.UNKNOWN_PAYMENT_HASH


def test_already_paid_and_expired() -> None:
    paid = InvoiceRecord(RECORD.invoice, PREIMAGE, paid=True)
    assert check(GOOD, invoice=paid) == Refused(RefusalReason.ALREADY_PAID,
                                                Failure(FailureCode.ALREADY_PAID))
    assert check(GOOD, now=RECORD.invoice.expires_at) == Refused(
        RefusalReason.INVOICE_EXPIRED, Failure(FailureCode.INVOICE_EXPIRED))
    assert isinstance(check(GOOD, now=RECORD.invoice.expires_at - 1), Accepted)


def test_a_sender_without_the_secret_learns_nothing_about_the_invoice() -> None:
    # Paid, expired and underpaid: with a wrong secret, only the generic answer.
    wrong = opened(invoice_packet(amount_msat=1, cltv=CLTV, secret=bytes(32)))
    paid = InvoiceRecord(RECORD.invoice, PREIMAGE, paid=True)
    result = check(wrong, invoice=paid, amount_msat=1, now=NOW + 10**6)
    assert isinstance(result, Refused)
    assert result.reason is RefusalReason.WRONG_PAYMENT_SECRET
    assert result.failure.code is FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS


def test_amount_bounds() -> None:
    for amount, reason in ((AMOUNT - 1, RefusalReason.AMOUNT_BELOW_INVOICE),
                           (2 * AMOUNT + 1, RefusalReason.AMOUNT_ABOVE_TWICE_INVOICE)):
        packet = opened(invoice_packet(amount_msat=amount, cltv=CLTV))
        assert check(packet, amount_msat=amount) == Refused(reason, Failure(
            FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=amount, height=HEIGHT))
    for amount in (AMOUNT, 2 * AMOUNT):
        packet = opened(invoice_packet(amount_msat=amount, cltv=CLTV))
        assert isinstance(check(packet, amount_msat=amount), Accepted)


def test_amountless_invoice_takes_any_amount() -> None:
    record = InvoiceRecord(make_invoice(amount_msat=None), PREIMAGE)
    packet = opened(invoice_packet(amount_msat=1, cltv=CLTV))
    assert check(packet, amount_msat=1, invoice=record) == Accepted(PREIMAGE, 1, None)


def test_cltv_too_soon_for_min_final() -> None:
    record = InvoiceRecord(make_invoice(min_final=30), PREIMAGE)
    soon = opened(invoice_packet(amount_msat=AMOUNT, cltv=HEIGHT + 29))
    assert reason_of(check(soon, cltv_expiry=HEIGHT + 29, invoice=record)) is (
        RefusalReason.CLTV_TOO_SOON)
    enough = opened(invoice_packet(amount_msat=AMOUNT, cltv=HEIGHT + 30))
    assert isinstance(check(enough, cltv_expiry=HEIGHT + 30, invoice=record), Accepted)


def test_what_the_hub_delivered_must_match_what_the_payer_promised() -> None:
    assert check(GOOD, amount_msat=AMOUNT - 1) == Refused(
        RefusalReason.AMOUNT_BELOW_FORWARD,
        Failure(FailureCode.FINAL_INCORRECT_HTLC_AMOUNT, htlc_msat=AMOUNT - 1))
    assert check(GOOD, cltv_expiry=CLTV - 1) == Refused(
        RefusalReason.CLTV_BELOW_FORWARD,
        Failure(FailureCode.FINAL_INCORRECT_CLTV_EXPIRY, cltv_expiry=CLTV - 1))
    # More than asked for is the payer's (or the hub's) gift, within the invoice's 2x.
    assert isinstance(check(GOOD, amount_msat=AMOUNT + 5, cltv_expiry=CLTV + 5), Accepted)


def test_multi_part_is_refused() -> None:
    part = opened(invoice_packet(amount_msat=AMOUNT, cltv=CLTV, total_msat=2 * AMOUNT))
    assert reason_of(check(part)) is RefusalReason.MULTI_PART_UNSUPPORTED


def test_spontaneous_payment_and_refund_link() -> None:
    original = hashlib.sha256(b"original").digest()
    packet = opened(spontaneous_packet(amount_msat=AMOUNT, cltv=CLTV, refund_of=original))
    assert check(packet, invoice=None) == Accepted(PREIMAGE, AMOUNT, original)
    soon = opened(spontaneous_packet(amount_msat=AMOUNT, cltv=HEIGHT + 17))
    assert reason_of(check(soon, invoice=None, cltv_expiry=HEIGHT + 17)) is (
        RefusalReason.CLTV_TOO_SOON)


def test_spontaneous_preimage_must_match() -> None:
    # open_payee_payload already binds the payload to the hash it was built for; the
    # check holds even for a packet handed over some other way.
    forward = decode_forward(spontaneous_packet(amount_msat=AMOUNT, cltv=CLTV))
    bad = PayeePacket(forward, PayeePayload(AMOUNT, payment_preimage=bytes(32)))
    assert reason_of(check(bad, invoice=None)) is RefusalReason.PREIMAGE_MISMATCH
    # ...and a spontaneous payment on a hash the payee invoiced is refused too.
    good = opened(spontaneous_packet(amount_msat=AMOUNT, cltv=CLTV))
    assert reason_of(check(good, invoice=RECORD)) is RefusalReason.PREIMAGE_MISMATCH


@given(asked=st.integers(1, 4 * AMOUNT), delivered_extra=st.integers(-10, 10),
       cltv_offset=st.integers(-5, 40), delivered_cltv_extra=st.integers(-3, 3),
       secret_ok=st.booleans(), paid=st.booleans(), age=st.integers(0, 7200),
       min_final=st.integers(1, 40))
def test_accepted_only_when_everything_holds(asked: int, delivered_extra: int, cltv_offset: int,
                                             delivered_cltv_extra: int, secret_ok: bool,
                                             paid: bool, age: int, min_final: int) -> None:
    cltv = max(1, HEIGHT + cltv_offset)
    delivered = max(1, asked + delivered_extra)
    delivered_cltv = max(1, cltv + delivered_cltv_extra)
    record = InvoiceRecord(make_invoice(min_final=min_final), PREIMAGE, paid=paid)
    packet = PayeePacket(
        ForwardInstructions(b"", asked, cltv, b"", b""),
        PayeePayload(asked, payment_secret=PAYMENT_SECRET if secret_ok else bytes(32)))
    result = check(packet, amount_msat=delivered, cltv_expiry=delivered_cltv, invoice=record,
                   now=NOW + age)
    holds = (delivered >= asked and delivered_cltv >= cltv and secret_ok and not paid
             and age < 3600 and AMOUNT <= delivered <= 2 * AMOUNT
             and delivered_cltv >= HEIGHT + min_final)
    assert isinstance(result, Accepted) == holds
    if isinstance(result, Accepted):
        assert result.payment_preimage == PREIMAGE and result.amount_msat == delivered
