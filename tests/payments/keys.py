"""Fixed keys and builders shared by the payment tests (deterministic: no randomness)."""

from __future__ import annotations

import hashlib

from channel.keys import pubkey_from_secret
from protocol.routing import PayeePayload, build_packet

PAYER_SECRET = hashlib.sha256(b"payer").digest()
HUB_SECRET = hashlib.sha256(b"hub").digest()
PAYEE_SECRET = hashlib.sha256(b"payee").digest()
HUB_ID = pubkey_from_secret(HUB_SECRET)
PAYEE_ID = pubkey_from_secret(PAYEE_SECRET)
PAYER_ID = pubkey_from_secret(PAYER_SECRET)

PREIMAGE = hashlib.sha256(b"preimage").digest()
PAYMENT_HASH = hashlib.sha256(PREIMAGE).digest()
PAYMENT_SECRET = hashlib.sha256(b"payment secret").digest()
EPHEMERAL = hashlib.sha256(b"ephemeral").digest()


def ephemeral(n: int) -> bytes:
    return hashlib.sha256(b"ephemeral %d" % n).digest()


def invoice_packet(amount_msat: int = 100_000, cltv: int = 500,
                   payment_hash: bytes = PAYMENT_HASH, secret: bytes = PAYMENT_SECRET,
                   total_msat: int | None = None, ephemeral_secret: bytes = EPHEMERAL,
                   payee_id: bytes = PAYEE_ID, payer_id: bytes | None = None) -> bytes:
    return build_packet(
        payee_node_id=payee_id, amount_to_forward_msat=amount_msat, outgoing_cltv_value=cltv,
        payment_hash=payment_hash,
        payload=PayeePayload(total_msat or amount_msat, payment_secret=secret,
                             payer_node_id=payer_id),
        ephemeral_secret=ephemeral_secret)


def spontaneous_packet(amount_msat: int = 100_000, cltv: int = 500,
                       preimage: bytes = PREIMAGE, refund_of: bytes | None = None,
                       ephemeral_secret: bytes = EPHEMERAL,
                       payer_id: bytes | None = None) -> bytes:
    return build_packet(
        payee_node_id=PAYEE_ID, amount_to_forward_msat=amount_msat, outgoing_cltv_value=cltv,
        payment_hash=hashlib.sha256(preimage).digest(),
        payload=PayeePayload(amount_msat, payment_preimage=preimage,
                             refund_of_payment_hash=refund_of, payer_node_id=payer_id),
        ephemeral_secret=ephemeral_secret)
