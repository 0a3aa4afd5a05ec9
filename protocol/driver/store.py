"""The channel store: encrypted channel snapshots, their watches, node secrets.

Theory of operation
-------------------
Tables (created by the ``driver_0001`` migration; see docs/dev/driver-api.md):

- ``driver_channels``: one row per channel, keyed by a *channel key*: 16 random
  bytes chosen when the channel is created (``new_channel_key``), so it is unique
  across hub processes sharing one PostgreSQL store and stable while the channel's
  BOLT id changes from the temporary id to the funding-derived one. The row holds the
  peer's node id, the current channel id, the latest ``update_id``, the state (in
  clear, for listings) and the snapshot, JSON then sealed with AES-GCM under
  associated data (channel key, update_id) (``protocol.driver.crypto``).
- ``driver_watches``: every ``Watch`` action, durable, per channel (deduplicated by
  kind and txid), so the chain side can be re-armed after a restart. The record is
  ``watch.to_record()`` when the action has one, else its dataclass fields with bytes
  as hex.
- ``driver_secrets``: named secrets (node seeds), sealed, bound to their names.
- ``driver_meta``: how the store's key is derived (scrypt salt and cost) and a check
  blob that recognises the right key.

Writes are *functions of a Connection* (``snapshot_write``, ``watch_write``,
``secret_write``): hand them to the ``GroupWriter`` alone (``save_snapshot`` ...),
or inside a function of your own that also writes your rows, so both commit in the
same transaction. A snapshot whose ``update_id`` is not above the stored one is
refused (``StaleUpdate``) and changes nothing: a restart never goes back in time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Connection

from protocol.driver.crypto import (
    KeyFile,
    KeySource,
    Passphrase,
    ScryptParams,
    SecretBox,
    WrongKey,
    key_from_passphrase,
    read_key_file,
    secret_aad,
    snapshot_aad,
)
from protocol.driver.db import Database, StoreError
from protocol.driver.writer import GroupWriter

CHANNEL_KEY_BYTES = 16

_meta = sa.MetaData()
channels_table = sa.Table(
    "driver_channels", _meta,
    sa.Column("channel_key", sa.LargeBinary(16), primary_key=True),
    sa.Column("peer_node_id", sa.LargeBinary(33), nullable=False),
    sa.Column("channel_id", sa.LargeBinary(32), nullable=False),
    sa.Column("update_id", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("snapshot", sa.LargeBinary, nullable=False),
)
watches_table = sa.Table(
    "driver_watches", _meta,
    sa.Column("watch_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel_key", sa.LargeBinary(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("txid", sa.LargeBinary(32), nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)
secrets_table = sa.Table(
    "driver_secrets", _meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)
meta_table = sa.Table(
    "driver_meta", _meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_KEY_META = "store_key"

# The hot path as plain SQL, valid on SQLite (>= 3.35) and PostgreSQL alike: prebuilt text()
# skips building and cache-keying a Core expression per write (a third of the
# writer thread's time before).
# One statement, one round trip: insert, or update if the stored update_id is lower
# and the peer the same; RETURNING says whether it happened (else: stale or foreign).
_UPSERT_SNAPSHOT = sa.text(
    "INSERT INTO driver_channels (channel_key, peer_node_id, channel_id, update_id, state, "
    "snapshot) VALUES (:channel_key, :peer_node_id, :channel_id, :update_id, :state, "
    ":snapshot) ON CONFLICT (channel_key) DO UPDATE SET channel_id = excluded.channel_id, "
    "update_id = excluded.update_id, state = excluded.state, snapshot = excluded.snapshot "
    "WHERE driver_channels.update_id < excluded.update_id "
    "AND driver_channels.peer_node_id = excluded.peer_node_id RETURNING update_id")
_SELECT_SNAPSHOT_OWNER = sa.text(
    "SELECT update_id, peer_node_id FROM driver_channels WHERE channel_key = :channel_key")
_INSERT_WATCH = sa.text(
    "INSERT INTO driver_watches (channel_key, kind, txid, record) "
    "VALUES (:channel_key, :kind, :txid, :record) ON CONFLICT DO NOTHING")


class StaleUpdate(StoreError):
    """A snapshot whose update_id is not above the stored one (refused, nothing written)."""


class ChannelKeyConflict(StoreError):
    """The channel key is stored for another peer."""


def new_channel_key() -> bytes:
    return os.urandom(CHANNEL_KEY_BYTES)


@dataclass(frozen=True)
class StoredChannel:
    channel_key: bytes
    peer_node_id: bytes
    channel_id: bytes
    update_id: int
    state: str
    snapshot: dict[str, Any]


@dataclass(frozen=True)
class StoredWatch:
    channel_key: bytes
    kind: str
    txid: bytes
    record: dict[str, Any]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def watch_record(watch: Any) -> dict[str, Any]:
    """The JSON-able record of a ``Watch`` action: ``to_record()`` if it has one, else
    its dataclass fields with bytes hex-encoded."""
    to_record = getattr(watch, "to_record", None)
    if callable(to_record):
        record = to_record()
        if not isinstance(record, dict):
            raise TypeError("Watch.to_record() must return a dict")
        return _jsonable(record)  # type: ignore[no-any-return]
    return _jsonable(dataclasses.asdict(watch))  # type: ignore[no-any-return]


def open_secret_box(db: Database, source: KeySource) -> SecretBox:
    """The store's key: made on first open (salt or key-file check stored), verified
    on every later open (``WrongKey``). Runs before the writer starts."""
    with db.engine.begin() as conn:
        row = conn.execute(sa.select(meta_table.c.value)
                           .where(meta_table.c.name == _KEY_META)).scalar_one_or_none()
        stored = json.loads(row) if row is not None else None
        kind = "scrypt" if isinstance(source, Passphrase) else "key_file"
        if stored is not None and stored["kind"] != kind:
            raise WrongKey(f"this store is keyed by {stored['kind']}, not {kind}")
        if isinstance(source, Passphrase):
            params = (ScryptParams.from_record(stored["params"]) if stored is not None
                      else ScryptParams.fresh(source.scrypt_n))
            box = SecretBox(key_from_passphrase(source.passphrase, params))
        else:
            assert isinstance(source, KeyFile)
            box = SecretBox(read_key_file(source.path))
        if stored is not None:
            box.verify_check_blob(bytes.fromhex(stored["check"]))
            return box
        record: dict[str, Any] = {"kind": kind, "check": box.check_blob().hex()}
        if isinstance(source, Passphrase):
            record["params"] = params.to_record()
        conn.execute(meta_table.insert().values(name=_KEY_META, value=json.dumps(record)))
        return box


def _refusal(params: dict[str, Any], stored: Any) -> StoreError:
    channel_key = params["channel_key"]
    if bytes(stored.peer_node_id) != params["peer_node_id"]:
        return ChannelKeyConflict(f"channel {channel_key.hex()} belongs to another peer")
    return StaleUpdate(f"channel {channel_key.hex()}: update_id {params['update_id']} is not "
                       f"above the stored {stored.update_id}")


@functools.lru_cache(maxsize=64)
def _upsert_many(rows: int) -> sa.TextClause:
    values = ", ".join(f"(:channel_key_{i}, :peer_node_id_{i}, :channel_id_{i}, "
                       f":update_id_{i}, :state_{i}, :snapshot_{i})" for i in range(rows))
    return sa.text(_UPSERT_SNAPSHOT.text.replace(
        "VALUES (:channel_key, :peer_node_id, :channel_id, :update_id, :state, :snapshot)",
        f"VALUES {values}").replace("RETURNING update_id", "RETURNING channel_key"))


class SnapshotWrite:
    """The write function of one sealed snapshot (call it with a Connection).

    The group writer merges consecutive ``SnapshotWrite``s of a batch into one
    multi-row upsert (``run_many``): one statement and one round trip for a whole
    batch of channels, each row still refused alone when stale."""

    __slots__ = ("params",)
    MERGE_LIMIT = 500  # rows per statement: 3,000 parameters, far below SQLite's 32,766

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @property
    def merge_key(self) -> bytes:
        key: bytes = self.params["channel_key"]
        return key

    def __call__(self, conn: Connection) -> None:
        if conn.execute(_UPSERT_SNAPSHOT, self.params).first() is not None:
            return
        raise _refusal(self.params, conn.execute(_SELECT_SNAPSHOT_OWNER, self.params).one())

    @staticmethod
    def run_many(conn: Connection, writes: list[SnapshotWrite]) -> list[BaseException | None]:
        """One statement for ``writes`` (distinct channel keys); a stale or foreign row
        is left untouched by the statement itself and reported in its place."""
        params: dict[str, Any] = {}
        for i, write in enumerate(writes):
            for name, value in write.params.items():
                params[f"{name}_{i}"] = value
        done = {bytes(row[0]) for row in conn.execute(_upsert_many(len(writes)), params)}
        out: list[BaseException | None] = []
        for write in writes:
            if write.merge_key in done:
                out.append(None)
            else:
                out.append(_refusal(write.params, conn.execute(_SELECT_SNAPSHOT_OWNER,
                                                               write.params).one()))
        return out


class ChannelStore:
    """Channel snapshots, watches and secrets over one ``Database`` and its writer."""

    def __init__(self, db: Database, box: SecretBox, writer: GroupWriter) -> None:
        self.db = db
        self.box = box
        self.writer = writer

    # -- write functions (compose them into your own transaction) ---------------------

    def snapshot_write(self, channel_key: bytes, peer_node_id: bytes, update_id: int,
                       snapshot: dict[str, Any]) -> Callable[[Connection], None]:
        """Encrypts now (on the caller's thread); the returned function stores it."""
        if len(channel_key) != CHANNEL_KEY_BYTES:
            raise ValueError("channel_key must be 16 bytes")
        # Every update writes one: orjson gives the bytes json.dumps(separators=(",",
        # ":")) would (str keys, ints, strings, lists), at a thirtieth of the time.
        blob = self.box.seal(orjson.dumps(snapshot, option=orjson.OPT_NON_STR_KEYS),
                             snapshot_aad(channel_key, update_id))
        channel_id = bytes.fromhex(snapshot.get("channel_id") or "") or bytes.fromhex(
            snapshot.get("temporary_channel_id") or "")
        state = str(snapshot.get("state", ""))
        return SnapshotWrite({"channel_key": channel_key, "peer_node_id": peer_node_id,
                              "channel_id": channel_id, "update_id": update_id,
                              "state": state, "snapshot": blob})

    def watch_write(self, channel_key: bytes, watch: Any) -> Callable[[Connection], None]:
        record = watch_record(watch)
        kind = str(record.get("kind", type(watch).__name__))
        txid = bytes.fromhex(str(record.get("txid", "")))
        text = json.dumps(record, sort_keys=True)

        params = {"channel_key": channel_key, "kind": kind, "txid": txid, "record": text}

        def write(conn: Connection) -> None:
            conn.execute(_INSERT_WATCH, params)

        return write

    def secret_write(self, name: str, secret: bytes) -> Callable[[Connection], None]:
        blob = self.box.seal(secret, secret_aad(name))

        def write(conn: Connection) -> None:
            exists = conn.execute(sa.select(secrets_table.c.name)
                                  .where(secrets_table.c.name == name)).first()
            if exists is not None:
                raise StoreError(f"secret {name!r} exists; secrets are never overwritten")
            conn.execute(secrets_table.insert().values(name=name, blob=blob))

        return write

    # -- the same, through the writer ---------------------------------------------------

    async def save_snapshot(self, channel_key: bytes, peer_node_id: bytes, update_id: int,
                            snapshot: dict[str, Any]) -> None:
        await self.writer.write(self.snapshot_write(channel_key, peer_node_id, update_id,
                                                    snapshot))

    async def save_watch(self, channel_key: bytes, watch: Any) -> None:
        await self.writer.write(self.watch_write(channel_key, watch))

    async def save_secret(self, name: str, secret: bytes) -> None:
        await self.writer.write(self.secret_write(name, secret))

    # -- reads ---------------------------------------------------------------------------

    def load_channels(self, peer_node_id: bytes | None = None) -> list[StoredChannel]:
        """Every channel (or one peer's), decrypted. ``DecryptionError`` if any blob was
        tampered with or moved: nothing is returned then."""
        t = channels_table
        query = sa.select(t).order_by(t.c.channel_key)
        if peer_node_id is not None:
            query = query.where(t.c.peer_node_id == peer_node_id)
        rows = self.db.read_sync(lambda conn: conn.execute(query).all())
        out = []
        for row in rows:
            plain = self.box.open(row.snapshot, snapshot_aad(row.channel_key, row.update_id))
            out.append(StoredChannel(row.channel_key, row.peer_node_id, row.channel_id,
                                     row.update_id, row.state, json.loads(plain)))
        return out

    def load_watches(self, channel_key: bytes | None = None) -> list[StoredWatch]:
        t = watches_table
        query = sa.select(t).order_by(t.c.watch_id)
        if channel_key is not None:
            query = query.where(t.c.channel_key == channel_key)
        rows = self.db.read_sync(lambda conn: conn.execute(query).all())
        return [StoredWatch(r.channel_key, r.kind, r.txid, json.loads(r.record)) for r in rows]

    def load_secret(self, name: str) -> bytes | None:
        blob = self.db.read_sync(lambda conn: conn.execute(
            sa.select(secrets_table.c.blob).where(secrets_table.c.name == name)
        ).scalar_one_or_none())
        return None if blob is None else self.box.open(blob, secret_aad(name))
