"""The client's own tables (client/migrations, alembic branch "client") and the
functions that write and read them. Write functions are plain functions of a
Connection, built with everything computed beforehand, because the group writer may
run one more than once (docs/dev/driver-api.md). The event log's sequence is taken as
max + 1 inside the writing transaction: the writer runs transactions one after
another, so sequences are gapless and never reused, across restarts too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

invoices = sa.Table(
    "client_invoices", metadata,
    sa.Column("payment_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("bolt11", sa.Text, nullable=False),
    sa.Column("preimage_blob", sa.LargeBinary, nullable=False),
    sa.Column("amount_msat", sa.BigInteger, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("paid_msat", sa.BigInteger, nullable=False),
    sa.Column("paid_payment_id", sa.String(32), nullable=True),
    sa.Column("created_unix", sa.BigInteger, nullable=False),
    sa.Column("expires_unix", sa.BigInteger, nullable=False),
)

payments = sa.Table(
    "client_payments", metadata,
    sa.Column("payment_id", sa.String(32), primary_key=True),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
    sa.Column("payment_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("counterparty_node_id", sa.LargeBinary(33), nullable=True),  # sent: the payee
    sa.Column("amount_msat", sa.BigInteger, nullable=False),
    sa.Column("fee_msat", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("payment_preimage", sa.LargeBinary(32), nullable=True),
    sa.Column("bolt11", sa.Text, nullable=True),
    sa.Column("packet", sa.LargeBinary, nullable=True),
    sa.Column("channel_key", sa.LargeBinary(16), nullable=True),
    sa.Column("refund_of_payment_id", sa.String(32), nullable=True),
    sa.Column("refunded_msat", sa.BigInteger, nullable=False),
    sa.Column("failure_code", sa.Integer, nullable=False),
    sa.Column("failure_message", sa.Text, nullable=False),
    sa.Column("created_unix", sa.BigInteger, nullable=False),
    sa.Column("resolved_unix", sa.BigInteger, nullable=False),
    # received: the payer's node id as the payer stated it in the packet, unauthenticated
    # (Refund's destination); NULL when not stated (older payers, rows before client_0002)
    sa.Column("payer_node_id", sa.LargeBinary(33), nullable=True),
)

events = sa.Table(
    "client_events", metadata,
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payment_id", sa.String(32), nullable=True),
    sa.Column("amount_msat", sa.BigInteger, nullable=False),
    sa.Column("created_unix", sa.BigInteger, nullable=False),
)

meta = sa.Table(
    "client_meta", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

Write = Callable[[Connection], Any]

SENT = "sent"
RECEIVED = "received"
IN_FLIGHT = "in_flight"
SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One entry of the client's event log."""

    sequence: int
    kind: str  # invoice_paid, payment_succeeded, payment_failed, refund_received, ...
    payment_id: str | None
    amount_msat: int
    created_unix: int


class RefundTooLarge(Exception):
    """Raised inside a write: the refunds would exceed the received amount."""


# The per-payment statements, built once: SQLAlchemy memoizes a statement's cache key
# on the object, so one built per write pays it (and .values()) every time.
_LAST_EVENT = sa.select(sa.func.max(events.c.sequence))
_INSERT_EVENT = events.insert()
_INSERT_PAYMENT = payments.insert()
_UPDATE_PAYMENT = payments.update().where(payments.c.payment_id == sa.bindparam("of_payment"))
_INSERT_INVOICE = invoices.insert()
_INVOICE_PAID = invoices.update().where(invoices.c.payment_hash == sa.bindparam("of_invoice"))


def event_write(kind: str, payment_id: str | None, amount_msat: int, now: int) -> Write:
    def write(conn: Connection) -> int:
        last = conn.execute(_LAST_EVENT).scalar_one_or_none()
        sequence = int(last or 0) + 1
        conn.execute(_INSERT_EVENT, {"sequence": sequence, "kind": kind,
                                     "payment_id": payment_id, "amount_msat": amount_msat,
                                     "created_unix": now})
        return sequence
    return write


def compose(*writes: Write) -> Write:
    """One function running ``writes`` in order in one transaction (all or nothing)."""
    def write(conn: Connection) -> None:
        for w in writes:
            w(conn)
    return write


def payment_insert(row: dict[str, Any]) -> Write:
    frozen = dict(row)
    return lambda conn: conn.execute(_INSERT_PAYMENT, frozen)


def payment_update(payment_id: str, **values: Any) -> Write:
    # The SET clause is the columns named in the parameters.
    params = {**values, "of_payment": payment_id}
    return lambda conn: conn.execute(_UPDATE_PAYMENT, params)


def refund_reserve(original_id: str, amount_msat: int) -> Write:
    """Add ``amount_msat`` to the original's refunded total, refused (RefundTooLarge,
    nothing written) past its amount: checked and recorded in one statement."""
    def write(conn: Connection) -> None:
        done = conn.execute(
            payments.update()
            .where(payments.c.payment_id == original_id,
                   payments.c.refunded_msat + amount_msat <= payments.c.amount_msat)
            .values(refunded_msat=payments.c.refunded_msat + amount_msat))
        if done.rowcount != 1:
            raise RefundTooLarge(original_id)
    return write


def refund_release(original_id: str, amount_msat: int) -> Write:
    return lambda conn: conn.execute(
        payments.update().where(payments.c.payment_id == original_id)
        .values(refunded_msat=payments.c.refunded_msat - amount_msat))


def invoice_insert(row: dict[str, Any]) -> Write:
    frozen = dict(row)
    return lambda conn: conn.execute(_INSERT_INVOICE, frozen)


def invoice_paid(payment_hash: bytes, amount_msat: int, payment_id: str) -> Write:
    params = {"state": "paid", "paid_msat": amount_msat, "paid_payment_id": payment_id,
              "of_invoice": payment_hash}
    return lambda conn: conn.execute(_INVOICE_PAID, params)


def meta_write(name: str, value: str) -> Write:
    def write(conn: Connection) -> None:
        if conn.execute(meta.update().where(meta.c.name == name).values(value=value)
                        ).rowcount == 0:
            conn.execute(meta.insert().values(name=name, value=value))
    return write


def events_after(conn: Connection, after: int, limit: int = 1000) -> list[EventRecord]:
    rows = conn.execute(sa.select(events).where(events.c.sequence > after)
                        .order_by(events.c.sequence).limit(limit)).all()
    return [EventRecord(int(r.sequence), r.kind, r.payment_id, int(r.amount_msat),
                        int(r.created_unix)) for r in rows]


def all_payments(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(
        sa.select(payments).order_by(payments.c.created_unix, payments.c.payment_id)).all()]


def all_invoices(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(
        sa.select(invoices).order_by(invoices.c.created_unix)).all()]
