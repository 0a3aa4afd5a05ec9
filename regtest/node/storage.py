"""Durable node state in one SQLite database (WAL mode).

Theory of operation: every change of chain state is one SQLite transaction.
Connecting a block writes, atomically, the block bytes, its undo data (the
coins it spent), the active-chain row, the UTXO deletions and insertions, the
tx index rows and the removal of its transactions from the saved mempool;
disconnecting does the reverse in one transaction.  SQLite's WAL makes a
commit all-or-nothing across a kill -9, so after a restart the database shows
either the whole block or none of it: a half-written block cannot be seen.
`synchronous=NORMAL` keeps a committed block across a process crash (it may
lose the last commits on power loss, never consistency).

The saved mempool is only a list of raw transactions in arrival order; on
start the node re-validates them against the chain, so it can never hold a
transaction the chain has made invalid.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from regtest.node.validation import Coin

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    prev BLOB NOT NULL,
    height INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    invalid INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL,
    undo BLOB
);
CREATE TABLE IF NOT EXISTS chain (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS utxo (
    txid BLOB NOT NULL, vout INTEGER NOT NULL, value INTEGER NOT NULL,
    script BLOB NOT NULL, height INTEGER NOT NULL, coinbase INTEGER NOT NULL,
    PRIMARY KEY (txid, vout)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS txindex (txid BLOB PRIMARY KEY, block BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mempool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, txid BLOB UNIQUE NOT NULL,
    raw BLOB NOT NULL, time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

Outpoint = tuple[bytes, int]


def encode_undo(coins: list[Coin]) -> bytes:
    """Serialize the coins a block spent, in spending order."""
    parts = []
    for coin in coins:
        parts.append(coin.value.to_bytes(8, "little"))
        parts.append(coin.height.to_bytes(4, "little"))
        parts.append(b"\x01" if coin.coinbase else b"\x00")
        parts.append(len(coin.script).to_bytes(4, "little"))
        parts.append(coin.script)
    return b"".join(parts)


def decode_undo(data: bytes) -> list[Coin]:
    coins = []
    pos = 0
    while pos < len(data):
        value = int.from_bytes(data[pos : pos + 8], "little")
        height = int.from_bytes(data[pos + 8 : pos + 12], "little")
        coinbase = data[pos + 12] == 1
        length = int.from_bytes(data[pos + 13 : pos + 17], "little")
        script = data[pos + 17 : pos + 17 + length]
        pos += 17 + length
        coins.append(Coin(value, script, height, coinbase))
    return coins


class Store:
    """The SQLite file and the statements the chain state and mempool need."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit; nested uses join the outermost one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    # --- blocks and chain ---------------------------------------------------
    def put_block(self, block_hash: bytes, prev: bytes, height: int, seq: int, data: bytes) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO blocks (hash, prev, height, seq, data) VALUES (?,?,?,?,?)",
            (block_hash, prev, height, seq, data),
        )

    def block_rows(self) -> list[tuple[bytes, bytes, int, int, int, bytes]]:
        rows = self.db.execute(
            "SELECT hash, prev, height, seq, invalid, substr(data, 1, 80) FROM blocks ORDER BY seq"
        ).fetchall()
        return [(bytes(r[0]), bytes(r[1]), r[2], r[3], r[4], bytes(r[5])) for r in rows]

    def block_data(self, block_hash: bytes) -> bytes | None:
        row = self.db.execute("SELECT data FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    def block_undo(self, block_hash: bytes) -> list[Coin]:
        row = self.db.execute("SELECT undo FROM blocks WHERE hash=?", (block_hash,)).fetchone()
        return [] if row is None or row[0] is None else decode_undo(bytes(row[0]))

    def set_invalid(self, block_hash: bytes, invalid: bool) -> None:
        self.db.execute("UPDATE blocks SET invalid=? WHERE hash=?", (int(invalid), block_hash))

    def chain_hashes(self) -> list[bytes]:
        rows = self.db.execute("SELECT height, hash FROM chain ORDER BY height").fetchall()
        return [bytes(r[1]) for r in rows]

    def connect(
        self,
        block_hash: bytes,
        height: int,
        undo: list[Coin],
        spent: list[Outpoint],
        created: list[tuple[Outpoint, Coin]],
        txids: list[bytes],
    ) -> None:
        db = self.db
        db.execute("UPDATE blocks SET undo=? WHERE hash=?", (encode_undo(undo), block_hash))
        db.execute("INSERT OR REPLACE INTO chain (height, hash) VALUES (?,?)", (height, block_hash))
        db.executemany("DELETE FROM utxo WHERE txid=? AND vout=?", spent)
        db.executemany(
            "INSERT OR REPLACE INTO utxo VALUES (?,?,?,?,?,?)",
            [(o[0], o[1], c.value, c.script, c.height, int(c.coinbase)) for o, c in created],
        )
        db.executemany(
            "INSERT OR REPLACE INTO txindex VALUES (?,?)", [(t, block_hash) for t in txids]
        )
        db.executemany("DELETE FROM mempool WHERE txid=?", [(t,) for t in txids])

    def disconnect(
        self,
        height: int,
        restored: list[tuple[Outpoint, Coin]],
        removed: list[Outpoint],
        txids: list[bytes],
    ) -> None:
        db = self.db
        db.execute("DELETE FROM chain WHERE height=?", (height,))
        db.executemany("DELETE FROM utxo WHERE txid=? AND vout=?", removed)
        db.executemany(
            "INSERT OR REPLACE INTO utxo VALUES (?,?,?,?,?,?)",
            [(o[0], o[1], c.value, c.script, c.height, int(c.coinbase)) for o, c in restored],
        )
        db.executemany("DELETE FROM txindex WHERE txid=?", [(t,) for t in txids])

    def utxos(self) -> dict[Outpoint, Coin]:
        rows = self.db.execute("SELECT txid, vout, value, script, height, coinbase FROM utxo")
        return {(bytes(r[0]), r[1]): Coin(r[2], bytes(r[3]), r[4], bool(r[5])) for r in rows}

    def txindex(self) -> dict[bytes, bytes]:
        rows = self.db.execute("SELECT txid, block FROM txindex")
        return {bytes(r[0]): bytes(r[1]) for r in rows}

    # --- mempool ---------------------------------------------------------------
    def mempool_add(self, txid: bytes, raw: bytes, time: int) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO mempool (txid, raw, time) VALUES (?,?,?)", (txid, raw, time)
        )

    def mempool_remove(self, txids: list[bytes]) -> None:
        self.db.executemany("DELETE FROM mempool WHERE txid=?", [(t,) for t in txids])

    def mempool_clear(self) -> None:
        self.db.execute("DELETE FROM mempool")

    def mempool_rows(self) -> list[tuple[bytes, int]]:
        rows = self.db.execute("SELECT raw, time FROM mempool ORDER BY seq").fetchall()
        return [(bytes(r[0]), r[1]) for r in rows]

    # --- small counters ------------------------------------------------------------
    def get_meta(self, key: str, default: int = 0) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))
