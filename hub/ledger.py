"""The hub's ledger: its own tables (alembic branch ``hub``, hub/migrations) and the
functions that write and read them.

Theory of operation. Every write here is a plain function of a SQLAlchemy
``Connection`` (a "write function"), built on the trio side from values computed
there, run by the one ``GroupWriter`` thread, so that the router can compose a
ledger write with a channel snapshot into ONE transaction:

- ``HubChannelStore.attach(channel_key, fn)`` queues ``fn`` to run inside the next
  snapshot write of that channel (same savepoint, same commit). The router attaches
  a new forward record to the outgoing channel right after ``add_htlc``: no snapshot
  of that channel holding the outgoing HTLC can be durable without the record, so
  after any crash an outgoing HTLC always has its record (the record without the
  HTLC is the harmless case: "never added", failed back by ``Router.reconcile``).
- resolutions (preimage, failure) are submitted to the writer and awaited before the
  incoming HTLC is settled (``Router``).

A forward is one row of ``hub_forwards`` per incoming HTLC, keyed by a random
``payment_id`` (16 bytes, hex), unique across hub processes sharing one store. Its
``state`` is ``in_flight``, ``succeeded`` (preimage and fee set) or ``failed``
(``failure_reason``: client.proto's ``FailureReason``; ``failure_blob``: the exact
``update_fail_htlc.reason`` sent back, so a restart fails back the same bytes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from hub.policy import FeePolicy
from protocol.driver.store import ChannelStore

metadata = sa.MetaData()

clients = sa.Table(
    "hub_clients", metadata,
    sa.Column("node_id", sa.LargeBinary(33), primary_key=True),
    sa.Column("first_seen_unix", sa.BigInteger, nullable=False),
    sa.Column("last_seen_unix", sa.BigInteger, nullable=False),
)

forwards = sa.Table(
    "hub_forwards", metadata,
    sa.Column("payment_id", sa.String(32), primary_key=True),
    sa.Column("payer_node_id", sa.LargeBinary(33), nullable=False),
    sa.Column("incoming_channel_key", sa.LargeBinary(16), nullable=False),
    sa.Column("incoming_htlc_id", sa.BigInteger, nullable=False),
    sa.Column("payee_node_id", sa.LargeBinary(33), nullable=True),
    sa.Column("outgoing_channel_key", sa.LargeBinary(16), nullable=True),
    sa.Column("outgoing_htlc_id", sa.BigInteger, nullable=True),
    sa.Column("payment_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("amount_in_msat", sa.BigInteger, nullable=False),
    sa.Column("amount_out_msat", sa.BigInteger, nullable=False),
    sa.Column("cltv_in", sa.BigInteger, nullable=False),
    sa.Column("cltv_out", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("payment_preimage", sa.LargeBinary(32), nullable=True),
    sa.Column("fee_msat", sa.BigInteger, nullable=False),
    sa.Column("failure_reason", sa.Integer, nullable=False),
    sa.Column("failure_message", sa.Text, nullable=False),
    sa.Column("failure_blob", sa.LargeBinary, nullable=True),
    sa.Column("created_at_unix", sa.BigInteger, nullable=False),
    sa.Column("resolved_at_unix", sa.BigInteger, nullable=False),
)

events = sa.Table(
    "hub_events", metadata,
    sa.Column("client_node_id", sa.LargeBinary(33), primary_key=True),
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("created_at_unix", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

settings = sa.Table(
    "hub_settings", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

inbound_orders = sa.Table(
    "hub_inbound_orders", metadata,
    sa.Column("order_id", sa.String(32), primary_key=True),
    sa.Column("client_node_id", sa.LargeBinary(33), nullable=False),
    sa.Column("idempotency_key", sa.String(64), nullable=False),
    sa.Column("request", sa.LargeBinary, nullable=False),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("channel_key", sa.LargeBinary(16), nullable=True),
    sa.Column("failure_reason", sa.Text, nullable=False),
    sa.Column("created_at_unix", sa.BigInteger, nullable=False),
)

WriteFn = Callable[[sa.Connection], Any]

IN_FLIGHT = "in_flight"
SUCCEEDED = "succeeded"
FAILED = "failed"


def new_payment_id() -> str:
    """16 random bytes: unique across hub processes without coordination."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class ForwardRecord:
    payment_id: str
    payer_node_id: bytes
    incoming_channel_key: bytes
    incoming_htlc_id: int
    payee_node_id: bytes | None
    outgoing_channel_key: bytes | None
    outgoing_htlc_id: int | None
    payment_hash: bytes
    amount_in_msat: int
    amount_out_msat: int
    cltv_in: int
    cltv_out: int
    state: str
    created_at_unix: int
    payment_preimage: bytes | None = None
    fee_msat: int = 0
    failure_reason: int = 0
    failure_message: str = ""
    failure_blob: bytes | None = None
    resolved_at_unix: int = 0

    @property
    def incoming(self) -> tuple[bytes, int]:
        return self.incoming_channel_key, self.incoming_htlc_id

    @property
    def outgoing(self) -> tuple[bytes, int] | None:
        if self.outgoing_channel_key is None or self.outgoing_htlc_id is None:
            return None
        return self.outgoing_channel_key, self.outgoing_htlc_id

    def succeeded(self, preimage: bytes, now_unix: int) -> ForwardRecord:
        return replace(self, state=SUCCEEDED, payment_preimage=preimage,
                       fee_msat=self.amount_in_msat - self.amount_out_msat,
                       resolved_at_unix=now_unix)

    def failed(self, reason: int, message: str, blob: bytes, now_unix: int) -> ForwardRecord:
        return replace(self, state=FAILED, failure_reason=reason, failure_message=message,
                       failure_blob=blob, resolved_at_unix=now_unix)

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FORWARD_COLUMNS}


_FORWARD_COLUMNS = tuple(c.name for c in forwards.columns)


def forward_from_row(row: Any) -> ForwardRecord:
    values: dict[str, Any] = {name: (bytes(v) if isinstance(v, memoryview) else v)
                              for name, v in row._mapping.items()}
    return ForwardRecord(**values)


# -- write functions ----------------------------------------------------------------------


# The forward statements, built once (SQLAlchemy memoizes a statement's cache key on
# the object: one built per write pays it, and .values(), every time).
_FORWARD_EXISTS = sa.select(forwards.c.payment_id).where(
    forwards.c.payment_id == sa.bindparam("of_payment"))
_INSERT_FORWARD = forwards.insert()
_RESOLUTION_COLUMNS = ("state", "payment_preimage", "fee_msat", "failure_reason",
                       "failure_message", "failure_blob", "resolved_at_unix")
_RESOLVE_FORWARD = (forwards.update()
                    .where(forwards.c.payment_id == sa.bindparam("of_payment"))
                    .where(forwards.c.state == IN_FLIGHT)
                    .values({name: sa.bindparam(f"new_{name}")
                             for name in _RESOLUTION_COLUMNS}))


def insert_forward(record: ForwardRecord) -> WriteFn:
    """Insert the record unless it is there already: a resolution can reach the store
    before the record attached to a snapshot does, and this write must never raise
    inside that snapshot's transaction."""
    row = record.row()
    key = {"of_payment": record.payment_id}

    def write(conn: sa.Connection) -> None:
        if conn.execute(_FORWARD_EXISTS, key).first() is None:
            conn.execute(_INSERT_FORWARD, row)

    return write


def resolve_forward(record: ForwardRecord) -> WriteFn:
    """Store the outcome; only an in-flight record changes (a resolution is final)."""
    row = record.row()
    params = {f"new_{name}": row[name] for name in _RESOLUTION_COLUMNS}
    params["of_payment"] = record.payment_id

    def write(conn: sa.Connection) -> None:
        conn.execute(_RESOLVE_FORWARD, params)

    return write


def upsert_forward(record: ForwardRecord) -> WriteFn:
    """Insert the record, or resolve it if it is already there (a failure decided
    before the record had reached the store)."""
    insert, resolve = insert_forward(record), resolve_forward(record)

    def write(conn: sa.Connection) -> None:
        insert(conn)
        resolve(conn)

    return write


def touch_client(node_id: bytes, now_unix: int) -> WriteFn:
    def write(conn: sa.Connection) -> None:
        updated = conn.execute(clients.update().where(clients.c.node_id == node_id)
                               .values(last_seen_unix=now_unix)).rowcount
        if not updated:
            conn.execute(clients.insert().values(node_id=node_id, first_seen_unix=now_unix,
                                                 last_seen_unix=now_unix))

    return write


FEE_POLICY = "fee_policy"


def set_fee_policy(policy: FeePolicy) -> WriteFn:
    value = json.dumps({"base_msat": policy.base_msat, "fee_ppm": policy.fee_ppm})

    def write(conn: sa.Connection) -> None:
        updated = conn.execute(settings.update().where(settings.c.name == FEE_POLICY)
                               .values(value=value)).rowcount
        if not updated:
            conn.execute(settings.insert().values(name=FEE_POLICY, value=value))

    return write


# -- reads (in a worker thread through Database.read / read_sync) --------------------------


def load_fee_policy(conn: sa.Connection) -> FeePolicy | None:
    value = conn.execute(sa.select(settings.c.value)
                         .where(settings.c.name == FEE_POLICY)).scalar()
    if value is None:
        return None
    data = json.loads(value)
    return FeePolicy(int(data["base_msat"]), int(data["fee_ppm"]))


def load_in_flight(conn: sa.Connection) -> list[ForwardRecord]:
    rows = conn.execute(sa.select(forwards).where(forwards.c.state == IN_FLIGHT)
                        .order_by(forwards.c.created_at_unix, forwards.c.payment_id))
    return [forward_from_row(r) for r in rows]


def load_forwards_for_incoming(conn: sa.Connection, channel_key: bytes
                               ) -> dict[int, ForwardRecord]:
    """The latest record per incoming HTLC id of one channel (an id that came back
    after a reverted add has an older, resolved record too)."""
    rows = conn.execute(sa.select(forwards)
                        .where(forwards.c.incoming_channel_key == channel_key)
                        .order_by(forwards.c.created_at_unix))
    out: dict[int, ForwardRecord] = {}
    for row in rows:
        record = forward_from_row(row)
        previous = out.get(record.incoming_htlc_id)
        if previous is None or previous.state != IN_FLIGHT:
            out[record.incoming_htlc_id] = record
    return out


def list_forwards(conn: sa.Connection, *, client_node_id: bytes | None = None,
                  direction: str | None = None, states: tuple[str, ...] = (),
                  after_payment: tuple[int, str] | None = None, limit: int = 100
                  ) -> list[ForwardRecord]:
    """Oldest first. ``direction`` "sent" (client paid) / "received" / None (both)."""
    query = sa.select(forwards)
    if client_node_id is not None:
        sent = forwards.c.payer_node_id == client_node_id
        received = forwards.c.payee_node_id == client_node_id
        query = query.where(sent if direction == "sent" else received
                            if direction == "received" else sa.or_(sent, received))
    if states:
        query = query.where(forwards.c.state.in_(states))
    if after_payment is not None:
        created, payment_id = after_payment
        query = query.where(sa.or_(
            forwards.c.created_at_unix > created,
            sa.and_(forwards.c.created_at_unix == created,
                    forwards.c.payment_id > payment_id)))
    query = query.order_by(forwards.c.created_at_unix, forwards.c.payment_id).limit(limit)
    return [forward_from_row(r) for r in conn.execute(query)]


def fees_earned_msat(conn: sa.Connection) -> int:
    total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(forwards.c.fee_msat), 0))
                         .where(forwards.c.state == SUCCEEDED)).scalar()
    return int(total or 0)


def list_clients(conn: sa.Connection) -> list[tuple[bytes, int, int]]:
    rows = conn.execute(sa.select(clients.c.node_id, clients.c.first_seen_unix,
                                  clients.c.last_seen_unix)
                        .order_by(clients.c.first_seen_unix, clients.c.node_id))
    return [(bytes(r[0]), int(r[1]), int(r[2])) for r in rows]


# -- composing ledger rows with channel snapshots ----------------------------------------


class HubChannelStore(ChannelStore):
    """A ``ChannelStore`` whose snapshot writes carry the ledger rows attached to that
    channel (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attached: dict[bytes, list[WriteFn]] = {}

    def attach(self, channel_key: bytes, fn: WriteFn) -> None:
        self._attached.setdefault(channel_key, []).append(fn)

    def attached_count(self, channel_key: bytes) -> int:
        return len(self._attached.get(channel_key, ()))

    def flush_attached(self, channel_key: bytes) -> list[WriteFn]:
        """Take the rows attached to a channel (to write them on their own, e.g. when
        the channel will write no snapshot soon)."""
        return self._attached.pop(channel_key, [])

    def snapshot_write(self, channel_key: bytes, peer_node_id: bytes, update_id: int,
                       snapshot: dict[str, Any]) -> Callable[[sa.Connection], None]:
        inner = super().snapshot_write(channel_key, peer_node_id, update_id, snapshot)
        attached = self._attached.pop(channel_key, [])
        if not attached:
            return inner

        def write(conn: sa.Connection) -> None:
            for fn in attached:
                fn(conn)
            inner(conn)

        return write
