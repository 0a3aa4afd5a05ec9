"""The per-client event log: durable, gapless sequence numbers, streamed with no gap
and no duplicate across reconnects and hub restarts.

Theory of operation. An event is a ``client_pb2.Event`` row of ``hub_events`` keyed by
(client node id, sequence). ``EventLog.append_fn`` returns a write function that the
caller composes with the state change the event reports (same transaction): it reads
the client's highest sequence and inserts the next one. Only the one writer thread
runs write functions, and each client is owned by one hub process, so "max + 1"
inside the transaction is gapless: a savepoint or commit that fails takes its
sequence with it, and the next event gets that number instead. No sequence is
cached outside the store, so a restart cannot skip or reuse one.

``subscribe`` is a cursor over the table: it reads every stored event above the
cursor, sends them, and waits for ``notify(client)`` (called after the write
holding new events committed) to read again. A notification that arrives while a
read is running is kept (the waiter's ``trio.Event`` is replaced only before the
read), so a live event is never missed; the cursor makes duplicates impossible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
import trio

from hub.edge import EventSender
from hub.ledger import WriteFn, events
from proto import client_pb2
from protocol.driver.db import Database

READ_BATCH = 500
# Built once: SQLAlchemy memoizes a statement's cache key on the object, so a write
# that builds its statement afresh pays that (and .values()) on every event.
_LAST_SEQUENCE = (sa.select(sa.func.max(events.c.sequence))
                  .where(events.c.client_node_id == sa.bindparam("of_client")))
_INSERT_EVENT = events.insert()


def event_kind(event: client_pb2.Event) -> str:
    return event.WhichOneof("body") or ""


class EventLog:
    def __init__(self, db: Database, now_unix: Callable[[], int]) -> None:
        self.db = db
        self.now_unix = now_unix
        self._changed: dict[bytes, trio.Event] = {}

    def append_fn(self, client_node_id: bytes, bodies: Sequence[client_pb2.Event]
                  ) -> WriteFn:
        """A write function storing ``bodies`` (sequence left 0) as the client's next
        events, in order."""
        created = self.now_unix()
        prepared = [(event_kind(body), body) for body in bodies]

        def write(conn: sa.Connection) -> list[int]:
            last = conn.execute(_LAST_SEQUENCE, {"of_client": client_node_id}).scalar()
            sequence = int(last or 0)
            rows, assigned = [], []
            for kind, body in prepared:
                sequence += 1
                assigned.append(sequence)
                stored = client_pb2.Event()
                stored.CopyFrom(body)
                stored.sequence = sequence
                stored.created_at_unix = created
                rows.append({"client_node_id": client_node_id, "sequence": sequence,
                             "created_at_unix": created, "kind": kind,
                             "body": stored.SerializeToString()})
            if rows:
                conn.execute(_INSERT_EVENT, rows)
            return assigned

        return write

    def notify(self, client_node_id: bytes) -> None:
        """New events of this client are durable: wake its subscribers."""
        changed = self._changed.pop(client_node_id, None)
        if changed is not None:
            changed.set()

    def read_after(self, conn: sa.Connection, client_node_id: bytes, after_sequence: int,
                   limit: int = READ_BATCH) -> list[client_pb2.Event]:
        rows = conn.execute(sa.select(events.c.body)
                            .where(events.c.client_node_id == client_node_id)
                            .where(events.c.sequence > after_sequence)
                            .order_by(events.c.sequence).limit(limit))
        return [client_pb2.Event.FromString(bytes(r[0])) for r in rows]

    async def stored_after(self, client_node_id: bytes, after_sequence: int
                           ) -> list[client_pb2.Event]:
        return await self.db.read(
            lambda conn: self.read_after(conn, client_node_id, after_sequence))

    async def subscribe(self, client_node_id: bytes, after_sequence: int,
                        sender: EventSender) -> None:
        """Stream events ``after_sequence + 1, ...`` until ``sender.send`` raises
        (``LinkClosed``, which propagates to the edge)."""
        cursor = after_sequence
        while True:
            changed = self._changed.setdefault(client_node_id, trio.Event())
            batch = await self.stored_after(client_node_id, cursor)
            for event in batch:
                await sender.send(event)
                cursor = event.sequence
            if len(batch) < READ_BATCH:
                await changed.wait()
