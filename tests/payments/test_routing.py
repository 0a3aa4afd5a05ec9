"""protocol/routing.py: the packet and the failure reasons, their refusals, and a
hypothesis barrage at every decoder (only RoutingFormatError, never anything else)."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from coincurve import PrivateKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from channel.keys import pubkey_from_secret
from channel.signing import parse_pubkey, verify
from protocol import routing
from protocol.config import MAX_FAIL_REASON_BYTES, MAX_ONION_ROUTING_PACKET_BYTES
from protocol.routing import (
    PACKET_BYTES,
    Failure,
    FailureCode,
    FailureOrigin,
    PayeePayload,
    RoutingFormatError,
    build_packet,
    decode_failure,
    decode_forward,
    encode_failure,
    open_payee_payload,
)
from tests.payments.keys import (
    EPHEMERAL,
    HUB_ID,
    HUB_SECRET,
    PAYEE_ID,
    PAYEE_SECRET,
    PAYER_ID,
    PAYER_SECRET,
    PAYMENT_HASH,
    PAYMENT_SECRET,
    PREIMAGE,
    ephemeral,
    invoice_packet,
    spontaneous_packet,
)

OTHER_HASH = hashlib.sha256(b"other").digest()


# -- the packet ------------------------------------------------------------------------------

def test_invoice_payment_round_trip() -> None:
    packet = invoice_packet(amount_msat=123_456, cltv=777)
    assert len(packet) == PACKET_BYTES <= MAX_ONION_ROUTING_PACKET_BYTES
    forward = decode_forward(packet)
    assert (forward.payee_node_id, forward.amount_to_forward_msat,
            forward.outgoing_cltv_value, forward.packet) == (PAYEE_ID, 123_456, 777, packet)
    opened = open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)
    assert opened.forward == forward
    assert opened.payload == PayeePayload(123_456, payment_secret=PAYMENT_SECRET)
    assert not opened.payload.spontaneous


def _doc_packet(version: int, plaintext: bytes) -> bytes:
    """docs/payment-format.md section 1, re-implemented from the text alone."""
    ephemeral_pubkey = pubkey_from_secret(EPHEMERAL)
    header = (bytes((version,)) + PAYEE_ID + (0x0A0B0C).to_bytes(8, "big")
              + (0x0D0E).to_bytes(4, "big") + ephemeral_pubkey)
    shared = PrivateKey(EPHEMERAL).ecdh(PAYEE_ID)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"chanhub/onion/v1",
               info=ephemeral_pubkey + PAYEE_ID + PAYMENT_HASH).derive(shared)
    sealed = ChaCha20Poly1305(key).encrypt(bytes(12), plaintext,
                                           b"chanhub/payee-payload/v1" + PAYMENT_HASH + header)
    assert len(header) == 79
    return header + sealed


def test_the_packet_is_what_the_doc_says() -> None:
    refund_of = hashlib.sha256(b"refunded").digest()
    packet = spontaneous_packet(amount_msat=0x0A0B0C, cltv=0x0D0E, refund_of=refund_of,
                                payer_id=PAYER_ID)
    plaintext = (b"\x07" + (0x0A0B0C).to_bytes(8, "big") + bytes(32) + PREIMAGE + refund_of
                 + PAYER_ID)
    assert packet == _doc_packet(2, plaintext)
    assert len(packet) == PACKET_BYTES == 79 + 138 + 16


def test_a_version_1_packet_still_opens_without_a_payer() -> None:
    """What payers sent before the payer's node id: 200 bytes, version 1."""
    refund_of = hashlib.sha256(b"refunded").digest()
    plaintext = (b"\x03" + (0x0A0B0C).to_bytes(8, "big") + bytes(32) + PREIMAGE + refund_of)
    packet = _doc_packet(1, plaintext)
    assert len(packet) == routing.PACKET_BYTES_V1 == 200
    forward = decode_forward(packet)
    assert (forward.payee_node_id, forward.amount_to_forward_msat) == (PAYEE_ID, 0x0A0B0C)
    opened = open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)
    assert opened.payload == PayeePayload(0x0A0B0C, payment_preimage=PREIMAGE,
                                          refund_of_payment_hash=refund_of)
    assert opened.payload.payer_node_id is None
    # version 1 knows no payer flag; and its length is its own
    with pytest.raises(RoutingFormatError, match="flags"):
        open_payee_payload(_doc_packet(1, b"\x05" + plaintext[1:]), payment_hash=PAYMENT_HASH,
                           node_secret=PAYEE_SECRET)
    with pytest.raises(RoutingFormatError, match="version 1 packet must be 200"):
        decode_forward(b"\x01" + invoice_packet()[1:])
    with pytest.raises(RoutingFormatError, match="version 2 packet must be 233"):
        decode_forward(b"\x02" + packet[1:])


def test_the_payer_node_id_round_trips_and_is_hidden_from_the_hub() -> None:
    packet = invoice_packet(payer_id=PAYER_ID)
    assert PAYER_ID not in packet and PAYER_ID[1:9] not in packet
    opened = open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)
    assert opened.payload.payer_node_id == PAYER_ID
    assert open_payee_payload(invoice_packet(), payment_hash=PAYMENT_HASH,
                              node_secret=PAYEE_SECRET).payload.payer_node_id is None
    with pytest.raises(RoutingFormatError, match="point"):
        invoice_packet(payer_id=b"\x04" + bytes(32))
    with pytest.raises(RoutingFormatError, match="33 bytes"):
        PayeePayload(1, payment_secret=PAYMENT_SECRET, payer_node_id=PAYER_ID[:32])


def test_spontaneous_refund_round_trip() -> None:
    original = hashlib.sha256(b"the original payment").digest()
    packet = spontaneous_packet(amount_msat=5_000, refund_of=original)
    opened = open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)
    assert opened.payload == PayeePayload(5_000, payment_preimage=PREIMAGE,
                                          refund_of_payment_hash=original)
    assert opened.payload.spontaneous


def test_every_packet_has_one_length_and_hides_its_secrets() -> None:
    # The hub sees the same length whatever the payload holds, and none of its secrets.
    packets = [invoice_packet(), spontaneous_packet(), spontaneous_packet(refund_of=OTHER_HASH)]
    assert {len(p) for p in packets} == {PACKET_BYTES}
    for packet in packets:
        for secret in (PAYMENT_SECRET, PREIMAGE, OTHER_HASH):
            assert secret not in packet
            assert secret[:8] not in packet


def test_packets_differ_per_ephemeral_key() -> None:
    assert invoice_packet(ephemeral_secret=ephemeral(1)) != invoice_packet(
        ephemeral_secret=ephemeral(2))
    assert invoice_packet() == invoice_packet()  # deterministic given its inputs


def test_payload_cannot_move_to_another_htlc() -> None:
    packet = invoice_packet()
    with pytest.raises(RoutingFormatError, match="authenticate"):
        open_payee_payload(packet, payment_hash=OTHER_HASH, node_secret=PAYEE_SECRET)


def test_only_the_payee_opens_it() -> None:
    packet = invoice_packet()
    with pytest.raises(RoutingFormatError, match="another node"):
        open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=HUB_SECRET)


def test_a_hub_that_rewrites_the_header_is_caught() -> None:
    # The hub re-signs nothing: it cannot lower the amount or the expiry the payer
    # promised the payee without the payload failing to authenticate.
    packet = invoice_packet(amount_msat=100_000, cltv=500)
    for at, value in ((34 + 7, 0x01), (42 + 3, 0x01)):  # last byte of amount, of cltv
        forged = bytearray(packet)
        forged[at] ^= value
        assert decode_forward(bytes(forged))  # the hub's decoder still reads it
        with pytest.raises(RoutingFormatError):
            open_payee_payload(bytes(forged), payment_hash=PAYMENT_HASH,
                               node_secret=PAYEE_SECRET)


def test_a_header_pointed_at_another_payee_is_caught() -> None:
    other_secret = hashlib.sha256(b"other payee").digest()
    packet = bytearray(invoice_packet())
    packet[1:34] = pubkey_from_secret(other_secret)
    with pytest.raises(RoutingFormatError):
        open_payee_payload(bytes(packet), payment_hash=PAYMENT_HASH, node_secret=other_secret)


def _seal(plaintext: bytes, payment_hash: bytes = PAYMENT_HASH) -> bytes:
    """A packet around an arbitrary plaintext: how a hostile payer makes odd payloads."""
    good = invoice_packet(payment_hash=payment_hash)
    header = good[:79]
    ephemeral_pubkey = header[46:79]
    shared = PrivateKey(EPHEMERAL).ecdh(PAYEE_ID)  # coincurve's own, as a cross-check
    key = routing._payload_key(shared, ephemeral_pubkey, PAYEE_ID, payment_hash)
    return header + ChaCha20Poly1305(key).encrypt(
        bytes(12), plaintext, routing._associated_data(header, payment_hash))


def _plaintext(flags: int, total: int = 100_000, secret: bytes = bytes(32),
               preimage: bytes = bytes(32), refund: bytes = bytes(32),
               payer: bytes = bytes(33)) -> bytes:
    return bytes((flags,)) + total.to_bytes(8, "big") + secret + preimage + refund + payer


def test_sealed_helper_matches_the_real_encoder() -> None:
    assert _seal(_plaintext(0, secret=PAYMENT_SECRET)) == invoice_packet()
    assert _seal(_plaintext(4, secret=PAYMENT_SECRET, payer=PAYER_ID)) == invoice_packet(
        payer_id=PAYER_ID)


@pytest.mark.parametrize("plaintext, match", [
    (_plaintext(0x08, secret=PAYMENT_SECRET), "flags"),
    (_plaintext(0x00, secret=PAYMENT_SECRET, payer=PAYER_ID), "payer bytes"),
    (_plaintext(0x04, secret=PAYMENT_SECRET), "payer_node_id"),
    (_plaintext(0x04, secret=PAYMENT_SECRET, payer=b"\x04" + PAYER_ID[1:]), "payer_node_id"),
    (_plaintext(0x00, secret=PAYMENT_SECRET, preimage=PREIMAGE), "both"),
    (_plaintext(0x01, secret=PAYMENT_SECRET, preimage=PREIMAGE), "both"),
    (_plaintext(0x01, preimage=PREIMAGE, refund=OTHER_HASH), "refund bytes"),
    (_plaintext(0x02, secret=PAYMENT_SECRET, refund=OTHER_HASH), "spontaneous"),
    (_plaintext(0x00, total=0, secret=PAYMENT_SECRET), "total_amount"),
])
def test_non_canonical_payloads_are_refused(plaintext: bytes, match: str) -> None:
    with pytest.raises(RoutingFormatError, match=match):
        open_payee_payload(_seal(plaintext), payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)


@pytest.mark.parametrize("kwargs, match", [
    ({"amount_to_forward_msat": 0}, "amount"),
    ({"amount_to_forward_msat": 2**64}, "amount"),
    ({"outgoing_cltv_value": 0}, "height"),
    ({"outgoing_cltv_value": 500_000_000}, "height"),
    ({"payee_node_id": b"\x04" + bytes(32)}, "point"),
    ({"payment_hash": bytes(31)}, "32 bytes"),
    ({"ephemeral_secret": bytes(32)}, "secret"),
])
def test_build_refuses_what_could_not_be_decoded(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "payee_node_id": PAYEE_ID, "amount_to_forward_msat": 1_000, "outgoing_cltv_value": 500,
        "payment_hash": PAYMENT_HASH, "ephemeral_secret": EPHEMERAL,
        "payload": PayeePayload(1_000, payment_secret=PAYMENT_SECRET)}
    args.update(kwargs)
    with pytest.raises(RoutingFormatError, match=match):
        build_packet(**args)  # type: ignore[arg-type]


def test_payload_value_rules() -> None:
    with pytest.raises(RoutingFormatError):
        PayeePayload(1, payment_secret=PAYMENT_SECRET, payment_preimage=PREIMAGE)
    with pytest.raises(RoutingFormatError):
        PayeePayload(1)
    with pytest.raises(RoutingFormatError):
        PayeePayload(1, payment_secret=PAYMENT_SECRET, refund_of_payment_hash=OTHER_HASH)
    with pytest.raises(RoutingFormatError):
        PayeePayload(1, payment_secret=bytes(31))


def _off_curve() -> bytes:
    """A 33-byte string with a valid prefix whose x has no point on the curve."""
    for x in range(1, 100):
        candidate = b"\x02" + x.to_bytes(32, "big")
        try:
            parse_pubkey(candidate)
        except ValueError:
            return candidate
    raise AssertionError("no off-curve x below 100")


def test_off_curve_keys_pass_the_hubs_shape_check_but_never_open() -> None:
    good = invoice_packet()
    for at in (1, 46):  # payee node id, ephemeral key
        packet = good[:at] + _off_curve() + good[at + 33:]
        assert decode_forward(packet)  # the hub finds no such client / does not care
        with pytest.raises(RoutingFormatError):
            open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)
    with pytest.raises(RoutingFormatError, match="point"):
        build_packet(payee_node_id=_off_curve(), amount_to_forward_msat=1,
                     outgoing_cltv_value=500, payment_hash=PAYMENT_HASH,
                     payload=PayeePayload(1, payment_secret=PAYMENT_SECRET),
                     ephemeral_secret=EPHEMERAL)


@pytest.mark.parametrize("packet, match", [
    (b"", "bytes"),
    (invoice_packet()[:-1], "bytes"),
    (invoice_packet() + b"\x00", "bytes"),
    (bytes(MAX_ONION_ROUTING_PACKET_BYTES + 1), "bytes"),
    (b"\x03" + invoice_packet()[1:], "version"),
    (invoice_packet()[:1] + b"\x05" + invoice_packet()[2:], "point"),
    (invoice_packet()[:34] + bytes(8) + invoice_packet()[42:], "zero"),
    (invoice_packet()[:42] + (500_000_000).to_bytes(4, "big") + invoice_packet()[46:], "height"),
])
def test_decode_forward_refusals(packet: bytes, match: str) -> None:
    with pytest.raises(RoutingFormatError, match=match):
        decode_forward(packet)


# -- failures --------------------------------------------------------------------------------

FAILURES = [
    Failure(FailureCode.INVALID_ONION_PAYLOAD),
    Failure(FailureCode.UNKNOWN_PAYEE),
    Failure(FailureCode.PAYEE_OFFLINE),
    Failure(FailureCode.INSUFFICIENT_CAPACITY),
    Failure(FailureCode.AMOUNT_BELOW_MINIMUM, htlc_msat=5, htlc_minimum_msat=1_000),
    Failure(FailureCode.FEE_INSUFFICIENT, htlc_msat=2**64 - 1, fee_base_msat=2**32 - 1,
            fee_ppm=0),
    Failure(FailureCode.INCORRECT_CLTV_EXPIRY, cltv_expiry=600, cltv_expiry_delta_blocks=40),
    Failure(FailureCode.EXPIRY_TOO_SOON, height=450),
    Failure(FailureCode.EXPIRY_TOO_FAR, height=450),
    Failure(FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=100_000, height=450),
    Failure(FailureCode.FINAL_INCORRECT_CLTV_EXPIRY, cltv_expiry=480),
    Failure(FailureCode.FINAL_INCORRECT_HTLC_AMOUNT, htlc_msat=99_999),
    Failure(FailureCode.INVOICE_EXPIRED),
    Failure(FailureCode.ALREADY_PAID),
    Failure(FailureCode.TEMPORARY_FAILURE),
    Failure(FailureCode.PERMANENT_FAILURE),
]


def test_every_code_has_an_example() -> None:
    assert {f.code for f in FAILURES} == set(FailureCode)


def _decode(reason: bytes, payment_hash: bytes = PAYMENT_HASH,
            packet: bytes | None = None) -> routing.FailureReport:
    return decode_failure(reason, payment_hash=payment_hash,
                          onion_routing_packet=invoice_packet() if packet is None else packet,
                          hub_node_id=HUB_ID, payee_node_id=PAYEE_ID)


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: f.code.name)
@pytest.mark.parametrize("origin", list(FailureOrigin))
def test_failure_round_trip(failure: Failure, origin: FailureOrigin) -> None:
    secret = HUB_SECRET if origin is FailureOrigin.HUB else PAYEE_SECRET
    reason = encode_failure(failure, origin=origin, payment_hash=PAYMENT_HASH,
                            onion_routing_packet=invoice_packet(), node_secret=secret)
    assert len(reason) <= MAX_FAIL_REASON_BYTES
    assert _decode(reason) == routing.FailureReport(origin, failure)


def test_every_failure_reads_as_one_line() -> None:
    for failure in FAILURES:
        text = routing.FailureReport(FailureOrigin.HUB, failure).describe()
        assert text.startswith("hub: ") and "\n" not in text and "None" not in text
    fee = routing.FailureReport(FailureOrigin.HUB, FAILURES[5]).describe()
    assert fee == f"hub: fee too low: the hub charges {2**32 - 1} msat + 0 ppm"


def test_codes_are_bolt4s_numbers() -> None:
    # The wire values are a format (docs/payment-format.md): BOLT #4's where it has one.
    assert {c.name: int(c) for c in FailureCode} == {
        "INVALID_ONION_PAYLOAD": 0x4016, "UNKNOWN_PAYEE": 0x400A, "PAYEE_OFFLINE": 0x1014,
        "INSUFFICIENT_CAPACITY": 0x1007, "AMOUNT_BELOW_MINIMUM": 0x100B,
        "FEE_INSUFFICIENT": 0x100C, "INCORRECT_CLTV_EXPIRY": 0x100D,
        "EXPIRY_TOO_SOON": 0x100E, "EXPIRY_TOO_FAR": 0x0015,
        "INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS": 0x400F,
        "FINAL_INCORRECT_CLTV_EXPIRY": 0x0012, "FINAL_INCORRECT_HTLC_AMOUNT": 0x0013,
        "INVOICE_EXPIRED": 0x4081, "ALREADY_PAID": 0x4082, "TEMPORARY_FAILURE": 0x2002,
        "PERMANENT_FAILURE": 0x6002}


def test_each_codes_data_is_as_documented() -> None:
    # docs/payment-format.md section 5: the fields of each code, in order, big-endian.
    widths = {FailureCode.AMOUNT_BELOW_MINIMUM: (8, 8), FailureCode.FEE_INSUFFICIENT: (8, 4, 4),
              FailureCode.INCORRECT_CLTV_EXPIRY: (4, 2), FailureCode.EXPIRY_TOO_SOON: (4,),
              FailureCode.EXPIRY_TOO_FAR: (4,),
              FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS: (8, 4),
              FailureCode.FINAL_INCORRECT_CLTV_EXPIRY: (4,),
              FailureCode.FINAL_INCORRECT_HTLC_AMOUNT: (8,)}
    for failure in FAILURES:
        reason = encode_failure(failure, origin=FailureOrigin.HUB, payment_hash=PAYMENT_HASH,
                                onion_routing_packet=b"", node_secret=HUB_SECRET)
        fields = [v for v in (failure.htlc_msat, failure.htlc_minimum_msat,
                              failure.fee_base_msat, failure.fee_ppm, failure.cltv_expiry,
                              failure.cltv_expiry_delta_blocks, failure.height) if v is not None]
        data = b"".join(v.to_bytes(w, "big")
                        for v, w in zip(fields, widths.get(failure.code, ()), strict=True))
        assert reason[:-64] == (b"\x01\x01" + int(failure.code).to_bytes(2, "big")
                                + len(data).to_bytes(2, "big") + data), failure.code


def test_a_failure_byte_for_byte() -> None:
    reason = encode_failure(Failure(FailureCode.FEE_INSUFFICIENT, htlc_msat=0x0102,
                                    fee_base_msat=3, fee_ppm=4),
                            origin=FailureOrigin.HUB, payment_hash=PAYMENT_HASH,
                            onion_routing_packet=b"", node_secret=HUB_SECRET)
    assert reason[:22].hex() == ("01" "01" "100c" "0010" "0000000000000102" "00000003"
                                 "00000004")
    assert len(reason) == 22 + 64
    digest = hashlib.sha256(b"chanhub/failure/v1" + HUB_ID + PAYMENT_HASH
                            + hashlib.sha256(b"").digest() + reason[:22]).digest()
    assert verify(HUB_ID, digest, reason[22:])


def test_permanent_flag() -> None:
    assert FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS.permanent
    assert FailureCode.UNKNOWN_PAYEE.permanent
    assert not FailureCode.PAYEE_OFFLINE.permanent
    assert not FailureCode.FEE_INSUFFICIENT.permanent


def test_negative_fields_and_bad_keys_are_refused() -> None:
    with pytest.raises(RoutingFormatError):
        Failure(FailureCode.EXPIRY_TOO_SOON, height=-1)
    with pytest.raises(RoutingFormatError, match="secret"):
        encode_failure(Failure(FailureCode.PAYEE_OFFLINE), origin=FailureOrigin.HUB,
                       payment_hash=PAYMENT_HASH, onion_routing_packet=b"",
                       node_secret=bytes(32))
    with pytest.raises(RoutingFormatError, match="32 bytes"):
        encode_failure(Failure(FailureCode.PAYEE_OFFLINE), origin=FailureOrigin.HUB,
                       payment_hash=bytes(31), onion_routing_packet=b"",
                       node_secret=HUB_SECRET)
    with pytest.raises(RoutingFormatError, match="secret"):
        open_payee_payload(invoice_packet(), payment_hash=PAYMENT_HASH, node_secret=bytes(32))
    with pytest.raises(RoutingFormatError, match="32 bytes"):
        open_payee_payload(invoice_packet(), payment_hash=bytes(31), node_secret=PAYEE_SECRET)


def test_failure_fields_must_match_the_code() -> None:
    with pytest.raises(RoutingFormatError):
        Failure(FailureCode.FEE_INSUFFICIENT, htlc_msat=1)  # missing fields
    with pytest.raises(RoutingFormatError):
        Failure(FailureCode.PAYEE_OFFLINE, height=1)  # a field the code does not have
    with pytest.raises(RoutingFormatError):
        Failure(FailureCode.EXPIRY_TOO_SOON, height=2**32)  # wider than its field


def _hub_failure(packet: bytes | None = None, node_secret: bytes = HUB_SECRET,
                 origin: FailureOrigin = FailureOrigin.HUB) -> bytes:
    return encode_failure(Failure(FailureCode.PAYEE_OFFLINE), origin=origin,
                          payment_hash=PAYMENT_HASH,
                          onion_routing_packet=invoice_packet() if packet is None else packet,
                          node_secret=node_secret)


def test_a_failure_is_bound_to_its_payment_and_attempt() -> None:
    reason = _hub_failure()
    with pytest.raises(RoutingFormatError, match="signed"):
        _decode(reason, payment_hash=OTHER_HASH)
    # The same payment retried with a fresh ephemeral key is another attempt.
    with pytest.raises(RoutingFormatError, match="signed"):
        _decode(reason, packet=invoice_packet(ephemeral_secret=ephemeral(9)))


def test_the_hub_cannot_pass_its_failure_off_as_the_payees() -> None:
    forged = _hub_failure(origin=FailureOrigin.PAYEE)  # hub key, payee origin
    with pytest.raises(RoutingFormatError, match="payee"):
        _decode(forged)
    # ...nor alter one the payee signed (here: PAYEE_OFFLINE -> INVOICE_EXPIRED).
    genuine = bytearray(_hub_failure(node_secret=PAYEE_SECRET, origin=FailureOrigin.PAYEE))
    genuine[2:4] = int(FailureCode.INVOICE_EXPIRED).to_bytes(2, "big")
    with pytest.raises(RoutingFormatError):
        _decode(bytes(genuine))


def test_a_third_party_cannot_sign_for_the_hub() -> None:
    with pytest.raises(RoutingFormatError, match="hub"):
        _decode(_hub_failure(node_secret=PAYER_SECRET))


@pytest.mark.parametrize("mutate, match", [
    (lambda r: b"\x02" + r[1:], "version"),
    (lambda r: r[:1] + b"\x03" + r[2:], "origin"),
    (lambda r: r[:2] + b"\x7f\xff" + r[4:], "code"),
    (lambda r: r[:4] + b"\x00\x01" + r[6:], "length"),
    (lambda r: r[:-1], "length|signed"),
    (lambda r: r + b"\x00", "length|signed"),
    (lambda r: r[:10], "length"),
])
def test_decode_failure_refusals(mutate: object, match: str) -> None:
    with pytest.raises(RoutingFormatError, match=match):
        _decode(mutate(_hub_failure()))  # type: ignore[operator]


def test_relayed_payee_failure_verifies_for_the_hub_too() -> None:
    # The hub forwards the payee's reason unchanged; it can check it before relaying.
    packet = invoice_packet()
    reason = encode_failure(Failure(FailureCode.ALREADY_PAID), origin=FailureOrigin.PAYEE,
                            payment_hash=PAYMENT_HASH, onion_routing_packet=packet,
                            node_secret=PAYEE_SECRET)
    assert _decode(reason, packet=packet).origin is FailureOrigin.PAYEE


# -- the barrage: every decoder, random and mutated input, one error type --------------------

VALID_PACKETS = [invoice_packet(), spontaneous_packet(), spontaneous_packet(refund_of=OTHER_HASH),
                 invoice_packet(payer_id=PAYER_ID)]
VALID_REASONS = [encode_failure(f, origin=FailureOrigin.HUB, payment_hash=PAYMENT_HASH,
                                onion_routing_packet=VALID_PACKETS[0], node_secret=HUB_SECRET)
                 for f in FAILURES]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "extend", "splice"]))
        if kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.sampled_from([0, 1, 2, 3, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=40))
        elif kind == "splice" and data:
            at = draw(st.integers(0, len(data) - 1))
            chunk = draw(st.binary(min_size=1, max_size=40))
            data[at:at + len(chunk)] = chunk
    return bytes(data)


packets = st.one_of(st.binary(max_size=1500), st.binary(min_size=PACKET_BYTES,
                                                        max_size=PACKET_BYTES),
                    st.binary(min_size=routing.PACKET_BYTES_V1,
                              max_size=routing.PACKET_BYTES_V1),
                    mutated(VALID_PACKETS))
reasons = st.one_of(st.binary(max_size=1100), st.binary(min_size=70, max_size=100),
                    mutated(VALID_REASONS))


@given(packets)
def test_decoders_refuse_hostile_packets_with_one_error(packet: bytes) -> None:
    for decode in (lambda: decode_forward(packet),
                   lambda: open_payee_payload(packet, payment_hash=PAYMENT_HASH,
                                              node_secret=PAYEE_SECRET)):
        with contextlib.suppress(RoutingFormatError):
            decode()
    if packet not in VALID_PACKETS:
        # Every byte of a packet is authenticated: no mutation opens.
        with pytest.raises(RoutingFormatError):
            open_payee_payload(packet, payment_hash=PAYMENT_HASH, node_secret=PAYEE_SECRET)


@given(reasons)
def test_decode_failure_refuses_hostile_reasons_with_one_error(reason: bytes) -> None:
    if reason in VALID_REASONS:
        assert _decode(reason, packet=VALID_PACKETS[0]).origin is FailureOrigin.HUB
        return
    # Every byte is signed: no mutation of a genuine reason decodes.
    with pytest.raises(RoutingFormatError):
        _decode(reason, packet=VALID_PACKETS[0])
