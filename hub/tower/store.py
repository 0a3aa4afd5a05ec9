"""The tower's store: clients and their quotas, sealed appointments by locator, and
the watcher's state (``tower_meta``: chain position, broadcaster, breaches found).

One tower process writes it (``Database.open`` locks it, ``lock_name="tower"``), and
its writes are few (one per appointment, one per block that changed something), so
each is its own transaction in a worker thread, serialised by one trio lock: the
quota check and the insert it allows are one transaction, so a client's concurrent
calls can never store more than its quota.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import trio
from sqlalchemy import Connection

from protocol.driver.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")

_metadata = sa.MetaData()
clients = sa.Table(
    "tower_clients", _metadata,
    sa.Column("node_id", sa.LargeBinary(33), primary_key=True),
    sa.Column("max_appointments", sa.BigInteger, nullable=False),
    sa.Column("registered_unix", sa.BigInteger, nullable=False),
)
appointments = sa.Table(
    "tower_appointments", _metadata,
    sa.Column("client_node_id", sa.LargeBinary(33), primary_key=True),
    sa.Column("locator", sa.LargeBinary(16), primary_key=True),
    sa.Column("nonce", sa.LargeBinary(12), nullable=False),
    sa.Column("encrypted_blob", sa.LargeBinary, nullable=False),
    sa.Column("stored_unix", sa.BigInteger, nullable=False),
)
meta = sa.Table(
    "tower_meta", _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class NotRegistered(Exception):
    """The client has not called Register."""


class QuotaExceeded(Exception):
    """The client's quota of appointments is used up."""


@dataclass(frozen=True)
class Account:
    node_id: bytes
    max_appointments: int
    used_appointments: int


@dataclass(frozen=True)
class StoredAppointment:
    client_node_id: bytes
    locator: bytes
    nonce: bytes
    encrypted_blob: bytes


class TowerStore:
    """See the module docstring. ``open`` it; ``close`` it at the end."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = trio.Lock()

    @classmethod
    def open(cls, url: str) -> TowerStore:
        return cls(Database.open(url, lock_name="tower", version_locations=[MIGRATIONS]))

    def close(self) -> None:
        self.db.close()

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            # IMMEDIATE: the write lock is taken at BEGIN (SQLite), as the group writer does.
            with self.db.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, \
                    conn.begin():
                return fn(conn)

        async with self._lock:
            return await trio.to_thread.run_sync(run)

    # -- clients -------------------------------------------------------------------------

    @staticmethod
    def _account(conn: Connection, node_id: bytes) -> Account | None:
        row = conn.execute(sa.select(clients.c.max_appointments)
                           .where(clients.c.node_id == node_id)).first()
        if row is None:
            return None
        used = conn.execute(sa.select(sa.func.count()).select_from(appointments)
                            .where(appointments.c.client_node_id == node_id)).scalar_one()
        return Account(node_id, int(row[0]), int(used))

    async def account(self, node_id: bytes) -> Account | None:
        return await self.db.read(lambda conn: self._account(conn, node_id))

    async def register(self, node_id: bytes, max_appointments: int, now_unix: int) -> Account:
        """The client's account, made on first call (later calls change nothing)."""
        def run(conn: Connection) -> Account:
            account = self._account(conn, node_id)
            if account is None:
                conn.execute(clients.insert().values(node_id=node_id,
                                                     max_appointments=max_appointments,
                                                     registered_unix=now_unix))
                account = Account(node_id, max_appointments, 0)
            return account

        return await self._write(run)

    # -- appointments --------------------------------------------------------------------

    async def store_appointment(self, node_id: bytes, locator: bytes, nonce: bytes,
                                encrypted_blob: bytes, now_unix: int) -> Account:
        """Store (or replace, same locator) one appointment within the client's quota.
        Raises ``NotRegistered``, ``QuotaExceeded`` (nothing stored)."""
        def run(conn: Connection) -> Account:
            account = self._account(conn, node_id)
            if account is None:
                raise NotRegistered("register with the tower first")
            key = (appointments.c.client_node_id == node_id) & (
                appointments.c.locator == locator)
            exists = conn.execute(sa.select(appointments.c.locator).where(key)).first()
            values = dict(nonce=nonce, encrypted_blob=encrypted_blob, stored_unix=now_unix)
            if exists is not None:
                conn.execute(appointments.update().where(key).values(**values))
                return account
            if account.used_appointments >= account.max_appointments:
                raise QuotaExceeded(f"quota of {account.max_appointments} appointments "
                                    "used up")
            conn.execute(appointments.insert().values(client_node_id=node_id,
                                                      locator=locator, **values))
            return Account(node_id, account.max_appointments, account.used_appointments + 1)

        return await self._write(run)

    async def appointments_for(self, locator: bytes) -> list[StoredAppointment]:
        """Every client's appointment under ``locator`` (normally one)."""
        def run(conn: Connection) -> list[StoredAppointment]:
            rows = conn.execute(sa.select(appointments.c.client_node_id, appointments.c.nonce,
                                          appointments.c.encrypted_blob)
                                .where(appointments.c.locator == locator)).all()
            return [StoredAppointment(bytes(r[0]), locator, bytes(r[1]), bytes(r[2]))
                    for r in rows]

        return await self.db.read(run)

    def all_locators(self) -> set[bytes]:
        """Every stored locator (the watcher's in-memory index, loaded at start)."""
        return self.db.read_sync(lambda conn: {
            bytes(r[0]) for r in conn.execute(sa.select(appointments.c.locator).distinct())})

    # -- named values --------------------------------------------------------------------

    def get_json(self, name: str) -> Any:
        row = self.db.read_sync(lambda conn: conn.execute(
            sa.select(meta.c.value).where(meta.c.name == name)).first())
        return None if row is None else json.loads(row[0])

    async def put_json(self, name: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True)

        def run(conn: Connection) -> None:
            updated = conn.execute(meta.update().where(meta.c.name == name).values(value=text))
            if updated.rowcount == 0:
                conn.execute(meta.insert().values(name=name, value=text))

        await self._write(run)
