"""payer -> hub -> payee through two real channel state machines (tests/protocol's
ChannelPair: payer=a/hub=b on the first, hub=a/payee=b on the second), with the real
packet, policy, invoice and acceptance check, and failures signed and relayed back.

What this shows: the formats fit what ``protocol/`` carries (the packet in
``update_add_htlc.onion_routing_packet``, the failure in ``update_fail_htlc.reason``),
the hub keeps exactly its fee, and the payer can tell a payee's refusal from the hub's.
The daemon's router (hub/) is what will run these steps for real."""

from __future__ import annotations

import hashlib

from channel.commitment import Side
from client.invoices import (
    Accepted,
    InvoiceRecord,
    Refused,
    check_incoming_payment,
    create_invoice,
    decode_invoice,
)
from hub.policy import (
    DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS,
    FeePolicy,
    IncomingHtlc,
    OutgoingChannel,
    OutgoingHtlc,
    decide_forward,
)
from protocol.actions import Action, HtlcFailed, HtlcFulfilled, HtlcReceived, Send
from protocol.routing import (
    Failure,
    FailureCode,
    FailureOrigin,
    FailureReport,
    PayeePayload,
    build_packet,
    decode_failure,
    decode_forward,
    encode_failure,
    open_payee_payload,
    route_terms,
)
from tests.payments.keys import HUB_ID, HUB_SECRET, PAYEE_ID, PAYEE_SECRET, ephemeral
from tests.protocol.pair import ChannelPair, Party

NOW = 1_700_000_000
FEES = FeePolicy(base_msat=1_000, fee_ppm=1_000)
DELTA = DEFAULT_CLTV_EXPIRY_DELTA_BLOCKS


class Network:
    def __init__(self) -> None:
        self.payer_hub = ChannelPair()  # a = payer, b = hub
        self.hub_payee = ChannelPair()  # a = hub, b = payee
        self.height = self.payer_hub.height
        assert self.hub_payee.height == self.height
        self.records: dict[bytes, InvoiceRecord] = {}
        self.payee_online = True
        self.attempt = 0

    def invoice(self, n: int, amount_msat: int) -> str:
        preimage = hashlib.sha256(b"preimage %d" % n).digest()
        invoice = create_invoice(
            node_secret=PAYEE_SECRET, payment_hash=hashlib.sha256(preimage).digest(),
            payment_secret=hashlib.sha256(b"secret %d" % n).digest(), amount_msat=amount_msat,
            description=f"invoice {n}", now=NOW)
        self.records[invoice.payment_hash] = InvoiceRecord(invoice, preimage)
        return invoice.bolt11

    def pay(self, bolt11: str, *, secret: bytes | None = None) -> bytes | FailureReport:
        """The payer's SDK, then the hub's router, then the payee: one attempt."""
        invoice = decode_invoice(bolt11, now=NOW + 10)
        assert invoice.amount_msat is not None and invoice.payee_node_id == PAYEE_ID
        self.attempt += 1
        terms = route_terms(amount_msat=invoice.amount_msat,
                            min_final_cltv_expiry_blocks=invoice.min_final_cltv_expiry_blocks,
                            height=self.height, base_msat=FEES.base_msat,
                            fee_ppm=FEES.fee_ppm, cltv_expiry_delta_blocks=DELTA)
        packet = build_packet(
            payee_node_id=invoice.payee_node_id,
            amount_to_forward_msat=terms.amount_to_forward_msat,
            outgoing_cltv_value=terms.outgoing_cltv_value, payment_hash=invoice.payment_hash,
            payload=PayeePayload(invoice.amount_msat,
                                 payment_secret=secret or invoice.payment_secret),
            ephemeral_secret=ephemeral(self.attempt))
        p1 = self.payer_hub
        added = p1.do("a", lambda c: c.add_htlc(terms.htlc_amount_msat, invoice.payment_hash,
                                                terms.htlc_cltv_expiry, height=self.height,
                                                onion_routing_packet=packet))
        htlc_id = _added_id(added)
        p1.settle()
        received = p1.events_of("b", HtlcReceived)[-1]

        # The hub's router.
        forward = decode_forward(received.onion_routing_packet)
        decision = decide_forward(
            incoming=IncomingHtlc(received.amount_msat, received.cltv_expiry,
                                  received.payment_hash),
            forward=forward, fee_policy=FEES, cltv_expiry_delta_blocks=DELTA,
            height=self.height,
            outgoing=OutgoingChannel(online=self.payee_online, available_msat=10**10,
                                     htlc_minimum_msat=1))
        if isinstance(decision, Failure):
            reason = encode_failure(decision, origin=FailureOrigin.HUB,
                                    payment_hash=received.payment_hash,
                                    onion_routing_packet=received.onion_routing_packet,
                                    node_secret=HUB_SECRET)
            p1.do("b", lambda c: c.fail_htlc(received.htlc_id, reason))
        else:
            self._through_payee(decision, received)
        p1.settle()

        # The payer's SDK reads the outcome.
        fulfilled = [e for e in p1.events_of("a", HtlcFulfilled) if e.htlc_id == htlc_id]
        if fulfilled:
            return bytes(fulfilled[0].payment_preimage)
        [failed] = [e for e in p1.events_of("a", HtlcFailed) if e.htlc_id == htlc_id]
        assert failed.payment_hash == invoice.payment_hash
        return decode_failure(failed.reason, payment_hash=invoice.payment_hash,
                              onion_routing_packet=packet, hub_node_id=HUB_ID,
                              payee_node_id=invoice.payee_node_id)

    def _through_payee(self, out: OutgoingHtlc, incoming: HtlcReceived) -> None:
        p1, p2 = self.payer_hub, self.hub_payee
        added = p2.do("a", lambda c: c.add_htlc(
            out.amount_msat, out.payment_hash, out.cltv_expiry, height=self.height,
            onion_routing_packet=out.onion_routing_packet))
        out_id = _added_id(added)
        p2.settle()
        at_payee = p2.events_of("b", HtlcReceived)[-1]
        opened = open_payee_payload(at_payee.onion_routing_packet,
                                    payment_hash=at_payee.payment_hash, node_secret=PAYEE_SECRET)
        verdict = check_incoming_payment(
            amount_msat=at_payee.amount_msat, cltv_expiry=at_payee.cltv_expiry,
            payment_hash=at_payee.payment_hash, packet=opened,
            invoice=self.records.get(at_payee.payment_hash), now=NOW + 20, height=self.height)
        if isinstance(verdict, Accepted):
            record = self.records[at_payee.payment_hash]
            self.records[at_payee.payment_hash] = InvoiceRecord(record.invoice,
                                                                record.payment_preimage, True)
            p2.do("b", lambda c: c.fulfill_htlc(at_payee.htlc_id, verdict.payment_preimage))
        else:
            assert isinstance(verdict, Refused)
            reason = encode_failure(verdict.failure, origin=FailureOrigin.PAYEE,
                                    payment_hash=at_payee.payment_hash,
                                    onion_routing_packet=at_payee.onion_routing_packet,
                                    node_secret=PAYEE_SECRET)
            p2.do("b", lambda c: c.fail_htlc(at_payee.htlc_id, reason))
        p2.settle()
        # The hub settles the incoming side the way the outgoing one went.
        done = [e for e in p2.events_of("a", HtlcFulfilled) if e.htlc_id == out_id]
        if done:
            p1.do("b", lambda c: c.fulfill_htlc(incoming.htlc_id, done[0].payment_preimage))
            return
        [failed] = [e for e in p2.events_of("a", HtlcFailed) if e.htlc_id == out_id]
        # The hub can check the payee's failure before relaying it unchanged.
        decode_failure(failed.reason, payment_hash=out.payment_hash,
                       onion_routing_packet=out.onion_routing_packet, hub_node_id=HUB_ID,
                       payee_node_id=PAYEE_ID)
        p1.do("b", lambda c: c.fail_htlc(incoming.htlc_id, failed.reason))


def _added_id(actions: list[Action]) -> int:
    [send] = [a for a in actions if isinstance(a, Send)]
    return int(send.message.update_add_htlc.id)


def _balances(net: Network) -> tuple[int, int, int]:
    """Payer, hub (both its channels) and payee balances in their own commitments."""
    def local(party: Party) -> int:
        return int(party.channel.latest_view(Side.LOCAL).local_msat)
    return (local(net.payer_hub.a), local(net.payer_hub.b) + local(net.hub_payee.a),
            local(net.hub_payee.b))


def test_a_paid_invoice_moves_the_amount_and_the_hub_keeps_its_fee() -> None:
    net = Network()
    before = _balances(net)
    amount = 25_000_000
    bolt11 = net.invoice(1, amount)
    preimage = net.pay(bolt11)
    assert preimage == net.records[decode_invoice(bolt11, now=NOW).payment_hash].payment_preimage
    after = _balances(net)
    fee = FEES.fee_msat(amount)
    assert after[0] == before[0] - amount - fee
    assert after[1] == before[1] + fee
    assert after[2] == before[2] + amount


def test_the_same_invoice_twice_is_refused_by_the_payee() -> None:
    net = Network()
    bolt11 = net.invoice(2, 1_000_000)
    assert isinstance(net.pay(bolt11), bytes)
    report = net.pay(bolt11)
    assert report == FailureReport(FailureOrigin.PAYEE, Failure(FailureCode.ALREADY_PAID))


def test_a_wrong_secret_comes_back_as_the_payees_unknown_payment_details() -> None:
    net = Network()
    report = net.pay(net.invoice(3, 1_000_000), secret=bytes(range(32)))
    assert isinstance(report, FailureReport)
    assert report.origin is FailureOrigin.PAYEE
    assert report.failure.code is FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
    assert report.failure.htlc_msat == 1_000_000


def test_payee_offline_comes_back_from_the_hub() -> None:
    net = Network()
    net.payee_online = False
    before = _balances(net)
    report = net.pay(net.invoice(4, 1_000_000))
    assert report == FailureReport(FailureOrigin.HUB, Failure(FailureCode.PAYEE_OFFLINE))
    assert _balances(net) == before

