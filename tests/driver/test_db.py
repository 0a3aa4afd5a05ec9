"""Database.open: the single-process lock, durability settings, migrations of others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio

from protocol.driver.db import Database, StoreError, StoreLocked
from protocol.driver.store import ChannelStore, new_channel_key, open_secret_box
from protocol.driver.writer import GroupWriter
from tests.driver.conftest import TEST_PASSPHRASE

EXTRA = Path(__file__).parent / "extra_migrations"
ROOT = Path(__file__).resolve().parents[2]

_SECOND_PROCESS = """
import sys
from protocol.driver.db import Database, StoreLocked
try:
    Database.open(sys.argv[1])
except StoreLocked as exc:
    print("LOCKED:", exc)
    sys.exit(3)
print("OPENED")
"""


def second_process_opens(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _SECOND_PROCESS, url], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_second_process_gets_a_clear_error(store_url: str) -> None:
    db = Database.open(store_url)
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO driver_meta (name, value) VALUES ('x', 'kept')")
        result = second_process_opens(store_url)
        assert result.returncode == 3, result.stderr
        assert "in use by another process" in result.stdout
        # ... and it changed nothing.
        value = db.read_sync(lambda c: c.exec_driver_sql(
            "SELECT value FROM driver_meta WHERE name = 'x'").scalar_one())
        assert value == "kept"
    finally:
        db.close()
    # Released on close: the next process opens it.
    result = second_process_opens(store_url)
    assert result.returncode == 0 and "OPENED" in result.stdout, result.stderr


def test_the_lock_in_one_process_too(store_url: str) -> None:
    with Database.open(store_url), pytest.raises(StoreLocked):
        Database.open(store_url)
    with Database.open(store_url, lock_name="shard-1"):  # another hub shard
        if "postgresql" in store_url:
            Database.open(store_url, lock_name="shard-2").close()


def test_sqlite_durability_settings(tmp_path: Path) -> None:
    with Database.open(f"sqlite:///{tmp_path / 's.sqlite'}") as db, db.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(StoreError, match="not durable"):
        Database.open("sqlite://")


async def test_callers_add_their_own_branch_and_write_in_one_transaction(
        store_url: str) -> None:
    db = Database.open(store_url, version_locations=[EXTRA])
    heads = db.read_sync(lambda c: {r[0] for r in c.exec_driver_sql(
        "SELECT version_num FROM alembic_version")})
    # driver_0001 is an ancestor of app_0002 (depends_on): alembic records the head.
    assert heads == {"app_0002"}
    payments = sa.Table("app_payments", sa.MetaData(), autoload_with=db.engine)
    store = ChannelStore(db, open_secret_box(db, TEST_PASSPHRASE), GroupWriter(db.engine))
    key = new_channel_key()
    snap = store.snapshot_write(key, b"\x02" * 33, 1, {"state": "normal",
                                                       "channel_id": "01" * 32})

    def both(conn: sa.Connection) -> None:
        snap(conn)
        conn.execute(payments.insert().values(channel_key=key, amount_msat=1_000))

    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.writer.write(both)
        nursery.cancel_scope.cancel()
    db.close()
    # Reopening runs no migration twice.
    with Database.open(store_url, version_locations=[EXTRA]) as db2:
        rows = db2.read_sync(lambda c: c.execute(sa.select(payments)).all())
        assert [(r.channel_key, r.amount_msat) for r in rows] == [(key, 1_000)]
