"""The database under a channel party: engine, durability settings, migrations, lock.

Theory of operation
-------------------
``Database.open(url)`` is the one way a hub or a client gets at its store:

1. **Engine.** SQLAlchemy 2.x from a URL. ``sqlite:///path`` (the embedded default)
   gets ``journal_mode=WAL`` (readers never block the writer), ``synchronous=FULL``
   (a commit is on the platter before it returns, so DESIGN rule 1 holds through a
   power loss, not only a crash), ``foreign_keys=ON`` and a busy timeout; pysqlite's
   own transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself
   (the documented pysqlite recipe), so a transaction is exactly what the code says.
   ``postgresql+psycopg://...`` is the production store (psycopg 3; PostgreSQL's
   default ``synchronous_commit=on`` is the same promise).
2. **Lock.** One process at a time per store (a client store must never see two
   writers; two hub processes sharing one PostgreSQL store each lock their own
   ``lock_name``). SQLite: ``flock`` on ``<path>.lock`` holding our pid; PostgreSQL:
   ``pg_try_advisory_lock`` on a connection held open for the life of the store. The
   kernel / the server drops either lock when the process dies, even by kill -9, so a
   crash never leaves a store locked. A second process gets ``StoreLocked``, and has
   touched nothing (the lock is taken before migrations run).
3. **Migrations.** alembic, run programmatically (no alembic.ini): the driver's own
   revisions live in ``protocol/driver/migrations/versions`` on the branch ``driver``;
   the hub and the client pass their own ``version_locations`` (a folder of revision
   files, each root with its own ``branch_labels`` and ``depends_on="driver_0001"``),
   and ``open`` upgrades every branch to its head (``heads``) in one transaction.

Writes go through ``protocol.driver.writer.GroupWriter`` (one writer thread); reads
from trio use ``Database.read`` (a pooled connection in a worker thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
# Seconds SQLite waits for a lock held by a reader's checkpoint before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """Base class of the store errors."""


class StoreLocked(StoreError):
    """Another process holds this store."""


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # The writer asks for IMMEDIATE: it takes the write lock at BEGIN, so a
        # batch never fails halfway on a lock upgrade.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLocked(f"store {path.with_suffix('')} is in use by another "
                              f"process (pid {holder})") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


class _AdvisoryLock:
    def __init__(self, engine: Engine, lock_name: str) -> None:
        self._conn = engine.connect()
        try:
            schema = self._conn.execute(text("select current_schema()")).scalar_one()
            digest = hashlib.sha256(f"chanhub|{lock_name}|{schema}".encode()).digest()
            self.key = int.from_bytes(digest[:8], "big", signed=True)
            got = self._conn.execute(text("select pg_try_advisory_lock(:k)"),
                                     {"k": self.key}).scalar_one()
            self._conn.commit()  # session-level lock: survives the transaction
        except BaseException:
            self._conn.close()
            raise
        if not got:
            self._conn.close()
            raise StoreLocked(f"store {engine.url.render_as_string(hide_password=True)} "
                              f"({lock_name!r}, schema {schema}) is in use by another process")

    def release(self) -> None:
        if not self._conn.closed:
            self._conn.close()  # ending the session drops the advisory lock


def migrate(connection: Connection, version_locations: Sequence[Path | str] = ()) -> None:
    """Upgrade every branch (the driver's and the callers') to its head."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    locations = [str(MIGRATIONS / "versions"), *(str(p) for p in version_locations)]
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(locations))
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


class Database:
    """An open, locked, migrated store. Use ``Database.open``; ``close()`` at the end."""

    def __init__(self, engine: Engine, lock: _FileLock | _AdvisoryLock | None) -> None:
        self.engine = engine
        self._lock = lock

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @classmethod
    def open(cls, url: str, *, lock_name: str | None = "store",
             version_locations: Sequence[Path | str] = ()) -> Database:
        """Engine, lock (``lock_name=None``: no lock, for read-only tools), migrations.

        Raises ``StoreLocked`` if another process holds the store."""
        parsed = make_url(url)
        lock: _FileLock | _AdvisoryLock | None = None
        if parsed.get_backend_name() == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise StoreError("an in-memory SQLite store is not durable; give a path")
            engine = _sqlite_engine(url)
            if lock_name is not None:
                lock = _FileLock(Path(parsed.database + ".lock"))
        else:
            engine = create_engine(url, pool_pre_ping=True)
            try:
                if lock_name is not None:
                    lock = _AdvisoryLock(engine, lock_name)
            except BaseException:
                engine.dispose()
                raise
        db = cls(engine, lock)
        try:
            with engine.begin() as conn:
                migrate(conn, version_locations)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def connect_read(self) -> Iterator[Connection]:
        """A connection in a transaction that is rolled back at the end (reads only)."""
        with self.engine.connect() as conn:
            try:
                yield conn
            finally:
                conn.rollback()

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.connect_read() as conn:
            return fn(conn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in a worker thread; for reads from trio code."""
        return await trio.to_thread.run_sync(self.read_sync, fn)
