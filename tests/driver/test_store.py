"""The channel store, the writer and encryption at rest, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import trio

from protocol.actions import Watch
from protocol.driver.crypto import (
    DecryptionError,
    KeyFile,
    KeyFileError,
    Passphrase,
    WrongKey,
    create_key_file,
)
from protocol.driver.db import Database, StoreError
from protocol.driver.store import (
    ChannelKeyConflict,
    ChannelStore,
    StaleUpdate,
    channels_table,
    new_channel_key,
    open_secret_box,
)
from protocol.driver.writer import CommitFailed, GroupWriter, WriterClosed
from tests.driver.conftest import TEST_PASSPHRASE

PEER = b"\x02" + b"\x11" * 32


def snapshot(n: int, *, channel_id: bytes = b"\xaa" * 32) -> dict[str, Any]:
    return {"state": "normal", "channel_id": channel_id.hex(), "channel_seed": "ff" * 32,
            "n": n}


def open_store(url: str, source: Any = TEST_PASSPHRASE) -> tuple[Database, ChannelStore]:
    db = Database.open(url)
    try:
        box = open_secret_box(db, source)
    except BaseException:
        db.close()
        raise
    return db, ChannelStore(db, box, GroupWriter(db.engine))


async def test_snapshots_round_trip_and_stale_update_is_refused(store_url: str) -> None:
    db, store = open_store(store_url)
    key = new_channel_key()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_snapshot(key, PEER, 1, snapshot(1))
        await store.save_snapshot(key, PEER, 2, snapshot(2))
        for stale in (2, 1):
            with pytest.raises(StaleUpdate):
                await store.save_snapshot(key, PEER, stale, snapshot(99))
        with pytest.raises(ChannelKeyConflict):
            await store.save_snapshot(key, b"\x03" * 33, 3, snapshot(3))
        nursery.cancel_scope.cancel()
    db.close()
    db, store = open_store(store_url)
    (loaded,) = store.load_channels()
    assert (loaded.channel_key, loaded.peer_node_id, loaded.update_id) == (key, PEER, 2)
    assert loaded.snapshot == snapshot(2) and loaded.state == "normal"
    assert loaded.channel_id == b"\xaa" * 32
    # The secret is not in the database in clear.
    raw = db.read_sync(lambda c: c.execute(sa.select(channels_table.c.snapshot)).scalar_one())
    assert b"ff" * 32 not in raw and b"channel_seed" not in raw
    db.close()


async def test_watches_are_durable_and_deduplicated(store_url: str) -> None:
    db, store = open_store(store_url)
    key = new_channel_key()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_watch(key, Watch("funding", b"\x01" * 32, output_index=0))
        await store.save_watch(key, Watch("funding", b"\x01" * 32, output_index=0))
        await store.save_watch(key, Watch("revoked_commitment", b"\x02" * 32,
                                          commitment_number=7))
        nursery.cancel_scope.cancel()
    watches = store.load_watches(key)
    assert [(w.kind, w.txid) for w in watches] == [("funding", b"\x01" * 32),
                                                  ("revoked_commitment", b"\x02" * 32)]
    assert watches[1].record["commitment_number"] == 7
    assert watches[1].record["txid"] == "02" * 32
    db.close()


async def test_secrets_sealed_and_never_overwritten(store_url: str) -> None:
    db, store = open_store(store_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_secret("node_seed", b"\x42" * 32)
        with pytest.raises(StoreError):
            await store.save_secret("node_seed", b"\x43" * 32)
        nursery.cancel_scope.cancel()
    assert store.load_secret("node_seed") == b"\x42" * 32
    assert store.load_secret("other") is None
    db.close()


async def test_group_commit_coalesces_concurrent_writers(store_url: str) -> None:
    db, store = open_store(store_url)
    writers = 200
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        async with trio.open_nursery() as inner:
            for i in range(writers):
                inner.start_soon(store.save_snapshot, new_channel_key(), PEER, 1,
                                 snapshot(i, channel_id=i.to_bytes(32, "big")))
        nursery.cancel_scope.cancel()
    stats = store.writer.stats
    assert stats.writes == writers
    # All 200 were queued before the writer thread woke: a handful of commits at most.
    assert stats.commits <= 3, stats
    assert len(store.load_channels()) == writers
    db.close()


def _deferred_fk_table(db: Database) -> sa.Table:
    """A test table whose foreign key is checked only at COMMIT: a real commit failure."""
    meta = sa.MetaData()
    parent = sa.Table("t_parent", meta, sa.Column("id", sa.Integer, primary_key=True))
    child = sa.Table("t_child", meta, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("parent_id", sa.Integer,
                               sa.ForeignKey("t_parent.id", deferrable=True,
                                             initially="DEFERRED")))
    meta.create_all(db.engine)
    del parent
    return child


async def test_failed_commit_fails_the_whole_batch_and_stores_nothing(store_url: str) -> None:
    db, store = open_store(store_url)
    child = _deferred_fk_table(db)
    keys = [new_channel_key() for _ in range(5)]
    outcomes: dict[int, BaseException | None] = {}

    async def save(i: int) -> None:
        try:
            await store.save_snapshot(keys[i], PEER, 1, snapshot(i, channel_id=bytes([i]) * 32))
            outcomes[i] = None
        except CommitFailed as exc:
            outcomes[i] = exc

    async def orphan() -> None:
        with pytest.raises(CommitFailed):
            await store.writer.write(lambda c: c.execute(child.insert().values(id=1,
                                                                               parent_id=999)))

    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        async with trio.open_nursery() as inner:
            for i in range(5):
                inner.start_soon(save, i)
            inner.start_soon(orphan)
        assert all(isinstance(e, CommitFailed) for e in outcomes.values()), outcomes
        assert len(outcomes) == 5
        assert store.load_channels() == []
        assert store.writer.stats.failed_commits == 1
        # The writer goes on: the next batch commits.
        await store.save_snapshot(keys[0], PEER, 1, snapshot(0))
        nursery.cancel_scope.cancel()
    assert [c.channel_key for c in store.load_channels()] == [keys[0]]
    db.close()


async def test_a_raising_write_fails_alone(store_url: str) -> None:
    db, store = open_store(store_url)
    key = new_channel_key()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_snapshot(key, PEER, 5, snapshot(5))
        results: list[str] = []

        async def stale() -> None:
            with pytest.raises(StaleUpdate):
                await store.save_snapshot(key, PEER, 4, snapshot(4))
            results.append("stale refused")

        async def fresh() -> None:
            await store.save_snapshot(new_channel_key(), PEER, 1,
                                      snapshot(1, channel_id=b"\x01" * 32))
            results.append("fresh stored")

        async with trio.open_nursery() as inner:
            inner.start_soon(stale)
            inner.start_soon(fresh)
        assert sorted(results) == ["fresh stored", "stale refused"]
        assert store.writer.stats.failed_commits == 0
        nursery.cancel_scope.cancel()
    assert {c.update_id for c in store.load_channels()} == {5, 1}
    db.close()


async def test_writes_after_the_writer_stopped_are_refused(store_url: str) -> None:
    db, store = open_store(store_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(WriterClosed):
        await store.save_snapshot(new_channel_key(), PEER, 1, snapshot(1))
    db.close()


# -- encryption at rest ------------------------------------------------------------------


async def test_wrong_passphrase_is_refused(store_url: str) -> None:
    db, _ = open_store(store_url)
    db.close()
    with pytest.raises(WrongKey):
        open_store(store_url, Passphrase("not the passphrase", scrypt_n=2**10))
    with pytest.raises(WrongKey):  # keyed by a passphrase, not a key file
        open_store(store_url, KeyFile(Path("/nonexistent")))


async def test_swapped_and_tampered_blobs_are_refused(store_url: str) -> None:
    db, store = open_store(store_url)
    k1, k2 = new_channel_key(), new_channel_key()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_snapshot(k1, PEER, 1, snapshot(1, channel_id=b"\x01" * 32))
        await store.save_snapshot(k1, PEER, 2, snapshot(2, channel_id=b"\x01" * 32))
        await store.save_snapshot(k2, PEER, 1, snapshot(3, channel_id=b"\x02" * 32))
        nursery.cancel_scope.cancel()
    t = channels_table

    def blob(key: bytes) -> bytes:
        return bytes(db.read_sync(lambda c: c.execute(
            sa.select(t.c.snapshot).where(t.c.channel_key == key)).scalar_one()))

    def put(key: bytes, **values: Any) -> None:
        with db.engine.begin() as conn:
            conn.execute(t.update().where(t.c.channel_key == key).values(**values))

    b1, b2 = blob(k1), blob(k2)
    put(k1, snapshot=b2)  # another channel's blob
    with pytest.raises(DecryptionError):
        store.load_channels()
    put(k1, snapshot=b1, update_id=1)  # going back in time: update_id rewritten
    with pytest.raises(DecryptionError):
        store.load_channels()
    flipped = bytearray(b1)
    flipped[20] ^= 1
    put(k1, snapshot=bytes(flipped), update_id=2)
    with pytest.raises(DecryptionError):
        store.load_channels()
    put(k1, snapshot=b1)
    assert len(store.load_channels()) == 2
    db.close()


async def test_key_file(tmp_path: Path, store_url: str) -> None:
    path = tmp_path / "store.key"
    create_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(KeyFileError):
        create_key_file(path)
    db, store = open_store(store_url, KeyFile(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_secret("seed", b"\x07" * 32)
        nursery.cancel_scope.cancel()
    db.close()
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        open_store(store_url, KeyFile(path))
    os.chmod(path, 0o600)
    other = tmp_path / "other.key"
    create_key_file(other)
    with pytest.raises(WrongKey):
        open_store(store_url, KeyFile(other))
    with pytest.raises(WrongKey):
        open_store(store_url, TEST_PASSPHRASE)
    db, store = open_store(store_url, KeyFile(path))
    assert store.load_secret("seed") == b"\x07" * 32
    db.close()


async def test_snapshots_of_a_batch_share_one_statement_and_fail_alone(store_url: str) -> None:
    db, store = open_store(store_url)
    stale_key, foreign_key = new_channel_key(), new_channel_key()
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO driver_channels"):
            statements.append(statement)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.writer.run)
        await store.save_snapshot(stale_key, PEER, 7, snapshot(7, channel_id=b"\x07" * 32))
        await store.save_snapshot(foreign_key, PEER, 1, snapshot(1, channel_id=b"\x08" * 32))
        sa.event.listen(db.engine, "before_cursor_execute", count)
        keys = [new_channel_key() for _ in range(60)]
        outcomes: dict[str, BaseException | None] = {}

        async def save(name: str, key: bytes, peer: bytes, update_id: int, n: int) -> None:
            try:
                await store.save_snapshot(key, peer, update_id,
                                          snapshot(n, channel_id=n.to_bytes(32, "big")))
                outcomes[name] = None
            except StoreError as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as inner:
            for i, key in enumerate(keys[:30]):
                inner.start_soon(save, f"new {i}", key, PEER, 1, 100 + i)
            inner.start_soon(save, "stale", stale_key, PEER, 6, 7)
            inner.start_soon(save, "foreign", foreign_key, b"\x03" * 33, 2, 8)
            for i, key in enumerate(keys[30:]):
                inner.start_soon(save, f"new {30 + i}", key, PEER, 1, 200 + i)
        nursery.cancel_scope.cancel()
    assert isinstance(outcomes.pop("stale"), StaleUpdate)
    assert isinstance(outcomes.pop("foreign"), ChannelKeyConflict)
    assert set(outcomes.values()) == {None} and len(outcomes) == 60
    # 62 snapshots in a handful of statements (one per batch), not 62.
    assert len(statements) <= 4, len(statements)
    stored = {c.channel_key: c for c in store.load_channels()}
    assert len(stored) == 62
    assert stored[stale_key].update_id == 7 and stored[stale_key].snapshot == snapshot(
        7, channel_id=b"\x07" * 32)
    assert stored[foreign_key].peer_node_id == PEER
    db.close()
