"""Cheats and chain faults the harness injects, so every dispute can be replayed.

TEST-ONLY. Nothing here belongs in a hub or a client: it makes a party publish a
revoked commitment (a breach) and rewrites the chain. It exists so the tests and a
tester at a shell (`chanhub-regtest cheat ...`, `chanhub-regtest reorg ...`) can
make the other side's watch react.

Theory of operation
-------------------
**An old commitment.** A party's store holds, per channel, a snapshot of its
`protocol.Channel`, including its latest commitment signed by the peer. A backup of
the store taken at some moment (`backup_store`) therefore holds the commitment that
was the party's latest *then*; once the channel moved on, that commitment is
revoked. `publish_old_commitment` opens the backup (never the live store: the party
keeps running, or not, as the scenario wants), restores each channel from it, lets
`protocol.commitments.finalize_local` sign the commitment it would force close with
(what `Channel.fail` broadcasts), and sends that
transaction to the node: exactly what a party that restored an old backup and force
closed would broadcast, with no chance for its protocol to refuse. For a client this
is the same as stopping it, putting the old store back (`restore_client_store`) and
running `chanhub close --force`, except that this path needs no link to the hub (a
hub that sees the client is behind would rightly stop it).

Backups are SQLite files. A SQLite store is copied whole with SQLite's online
backup (a consistent copy while its process writes). A PostgreSQL hub store is
copied as the driver's tables (channel snapshots, watches, secrets and the key
check), which is all a cheat needs; it cannot be restored in place.

**A reorg.** `reorg` disconnects the last `depth` blocks (`invalidateblock` on the
first of them: its transactions go back to the mempool) and mines a longer
competing branch (`generateblock` with an explicit transaction list), leaving out
the transactions named in `exclude` and everything spending them. Those stay in
the mempool, unconfirmed: a later `mine` would confirm them again unless told to
exclude them too (`mine_excluding`). The first invalidated block stays invalid, as
in Bitcoin Core, until `reconsiderblock`.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from channel.chain import BitcoinRpc
from protocol import Channel
from protocol.commitments import finalize_local
from protocol.driver.crypto import KeyFile, KeySource, Passphrase
from protocol.driver.db import Database, sqlite_url
from protocol.driver.store import (
    ChannelStore,
    StoredChannel,
    channels_table,
    meta_table,
    open_secret_box,
    secrets_table,
    watches_table,
)
from protocol.driver.writer import GroupWriter
from regtest.harness import (
    CLIENT_PASSPHRASE,
    HUB_KEY_FILE,
    HarnessError,
    HubEndpoint,
    running_client,
)

BACKUP_DIR = "backups"
CLIENT_STORE_FILE = "client.sqlite"
HUB_STORE_FILE = "hub.sqlite"  # chanhubd's default store in its data directory


# ---------------------------------------------------------------------------
# Backups


def backup_path(party_dir: Path, label: str) -> Path:
    if not label or "/" in label or label.startswith("."):
        raise HarnessError(f"a backup label is a plain name, not {label!r}")
    return party_dir / BACKUP_DIR / f"{label}.sqlite"


def backup_store(store_url: str, backup_file: Path) -> Path:
    """Copy the store at `store_url` into the SQLite file `backup_file` (see the
    module docstring); the store's process may be running."""
    backup_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    backup_file.unlink(missing_ok=True)
    url = make_url(store_url)
    if url.get_backend_name() == "sqlite":
        source = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(backup_file)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
    else:
        _copy_driver_tables(store_url, backup_file)
    backup_file.chmod(0o600)
    return backup_file


def _copy_driver_tables(store_url: str, backup_file: Path) -> None:
    target = Database.open(sqlite_url(backup_file), lock_name=None)  # driver tables only
    source = sa.create_engine(store_url)
    try:
        with source.connect() as read, target.engine.begin() as write:
            for table in (meta_table, channels_table, watches_table, secrets_table):
                rows = [dict(row._mapping) for row in read.execute(sa.select(table))]
                write.execute(table.delete())
                if rows:
                    write.execute(table.insert(), rows)
    finally:
        source.dispose()
        target.close()


def hub_store_url_of(hub: HubEndpoint) -> str:
    return hub.store_url or sqlite_url(hub.datadir / HUB_STORE_FILE)


def backup_client(client_dir: Path, label: str) -> Path:
    """Snapshot the client store of `client_dir` now, as backup `label`."""
    return backup_store(sqlite_url(client_dir / CLIENT_STORE_FILE),
                        backup_path(client_dir, label))


def backup_hub(hub: HubEndpoint, label: str) -> Path:
    """Snapshot the hub's store now, as backup `label` (in the hub's data directory)."""
    return backup_store(hub_store_url_of(hub), backup_path(hub.datadir, label))


def restore_client_store(client_dir: Path, label: str) -> None:
    """Put backup `label` back as the client's store (the client must be stopped): the
    next `start_client` serves the old state, as a user restoring an old backup."""
    if running_client(client_dir) is not None:
        raise HarnessError(f"stop the client in {client_dir} before restoring its store")
    backup = backup_path(client_dir, label)
    if not backup.exists():
        raise HarnessError(f"no backup {label!r} in {client_dir}")
    store = client_dir / CLIENT_STORE_FILE
    for leftover in (Path(f"{store}-wal"), Path(f"{store}-shm")):
        leftover.unlink(missing_ok=True)  # the live store's log must not replay onto it
    shutil.copyfile(backup, store)
    store.chmod(0o600)


# ---------------------------------------------------------------------------
# Publishing the old commitment


@dataclass(frozen=True)
class StoredCommitment:
    """One channel of a store: its latest local commitment (signed by the peer)."""

    channel_id: bytes
    peer_node_id: bytes
    state: str
    commitment_number: int
    htlc_outputs: int  # HTLCs in flight with an output on that commitment
    raw_tx: bytes | None  # None: nothing signed to publish (not funded, data loss...)
    txid: str | None


def client_key_source() -> KeySource:
    return Passphrase(CLIENT_PASSPHRASE)


def hub_key_source(hub_dir: Path) -> KeySource:
    return KeyFile(hub_dir / HUB_KEY_FILE)


def stored_commitments(backup_file: Path, key_source: KeySource) -> list[StoredCommitment]:
    """Every channel in the SQLite store `backup_file` with the commitment its party
    would force close with (read only; the file is a backup, never a live store)."""
    if not backup_file.exists():
        raise HarnessError(f"no backup {backup_file}")
    # Not Database.open: a whole client or hub store carries alembic revisions of its
    # own, which the driver's migrations do not know; nothing is migrated or written.
    db = Database(sa.create_engine(sqlite_url(backup_file)), None)
    try:
        store = ChannelStore(db, open_secret_box(db, key_source), GroupWriter(db.engine))
        return [_commitment_of(stored) for stored in store.load_channels()]
    finally:
        db.close()


def _commitment_of(stored: StoredChannel) -> StoredCommitment:
    """The channel's latest local commitment, signed as its force close would sign it
    (`protocol.commitments.finalize_local`, what `Channel.fail` broadcasts), in any
    state: a cheater's backup may hold a channel already failed or closing."""
    channel = Channel.restore(stored.snapshot)
    number = channel.d.local_ctn
    signature = channel.d.local_commit_signature
    if not signature:  # not funded yet: no commitment signed by the peer
        return StoredCommitment(stored.channel_id, stored.peer_node_id, stored.state, number,
                                0, None, None)
    commitment = channel.build_local(number)
    tx = finalize_local(channel.static, channel.secrets, commitment, signature)
    return StoredCommitment(stored.channel_id, stored.peer_node_id, stored.state, number,
                            len(commitment.htlc_outputs), tx.serialize(), tx.txid_hex())


async def publish_old_commitment(rpc: BitcoinRpc, backup_file: Path, key_source: KeySource,
                                 *, channel_id: bytes | None = None
                                 ) -> list[StoredCommitment]:
    """Broadcast the commitment of every channel (or `channel_id`) in `backup_file`;
    returns what was sent. TEST-ONLY: this is how the harness makes a party cheat."""
    chosen = [c for c in stored_commitments(backup_file, key_source)
              if c.raw_tx is not None and (channel_id is None or c.channel_id == channel_id)]
    if not chosen:
        raise HarnessError(f"no signed commitment {'of that channel ' if channel_id else ''}"
                           f"in {backup_file}")
    for commitment in chosen:
        assert commitment.raw_tx is not None
        await rpc.sendrawtransaction(commitment.raw_tx)
    return chosen


# ---------------------------------------------------------------------------
# The chain: reorgs and mining that leaves transactions out


def funding_candidates(channel_id: bytes) -> list[tuple[str, int]]:
    """The (txid, output index) pairs a channel id can come from: BOLT #2 xors the
    funding output index into the last two bytes of the funding txid (internal order).
    The harness's channels have at most two outputs in their funding transaction, so
    two candidates remain; the chain tells which one exists."""
    out = []
    for index in (0, 1):
        mask = index.to_bytes(2, "big")
        txid = channel_id[:30] + bytes(a ^ b for a, b in zip(channel_id[30:], mask,
                                                              strict=True))
        out.append((txid[::-1].hex(), index))
    return out


async def funding_txid(rpc: BitcoinRpc, channel_id: bytes) -> str:
    """The txid of the channel's funding transaction, found on the node."""
    from channel.chain import ChainError

    for txid, index in funding_candidates(channel_id):
        try:
            tx = await rpc.getrawtransaction_verbose(txid)
        except ChainError:
            continue
        if len(tx["vout"]) > index:
            return txid
    raise HarnessError(f"no funding transaction of channel {channel_id.hex()} on the node")


@dataclass(frozen=True)
class Reorg:
    old_tip: str
    new_tip: str
    fork_height: int  # the last block both branches share
    disconnected: list[str]
    excluded: list[str]  # txids left out of the new branch (still in the mempool)


async def mine_excluding(rpc: BitcoinRpc, nblocks: int, exclude: Iterable[str] = (), *,
                         address: str | None = None) -> tuple[list[str], list[str]]:
    """Mine `nblocks` blocks; the first takes the whole mempool except `exclude` and
    what spends it, the others are empty (so the excluded stay out). Returns the block
    hashes and the txids left out."""
    target = address or await rpc.getnewaddress()
    chosen, left_out = await _mempool_without(rpc, set(exclude))
    hashes = []
    for index in range(nblocks):
        block = await rpc.call("generateblock", target, chosen if index == 0 else [])
        hashes.append(str(block["hash"]))
    return hashes, left_out


async def _mempool_without(rpc: BitcoinRpc, exclude: set[str]) -> tuple[list[str], list[str]]:
    """The mempool's txids in an order a block may hold them (parents first), without
    `exclude` and their descendants; and the txids left out."""
    pool: dict[str, list[str]] = {}
    for txid in await rpc.getrawmempool():
        entry = await rpc.getmempoolentry(txid)
        pool[txid] = [str(p) for p in entry["depends"]]
    out = {t for t in exclude if t in pool}
    changed = True
    while changed:
        changed = False
        for txid, parents in pool.items():
            if txid not in out and any(p in out for p in parents):
                out.add(txid)
                changed = True
    ordered: list[str] = []
    placed: set[str] = set()

    def place(txid: str) -> None:
        if txid in placed:
            return
        for parent in pool[txid]:
            place(parent)
        placed.add(txid)
        ordered.append(txid)

    for txid in sorted(pool):
        if txid not in out:
            place(txid)
    return ordered, sorted(out)


async def reorg(rpc: BitcoinRpc, depth: int, *, exclude: Sequence[str] = (),
                extra_blocks: int = 1, address: str | None = None) -> Reorg:
    """Replace the last `depth` blocks with a branch of `depth + extra_blocks` blocks
    that leaves out `exclude` (txids) and their descendants; see the module docstring."""
    if depth < 1 or extra_blocks < 1:
        raise HarnessError("a reorg disconnects at least one block and mines a longer branch")
    old_tip = await rpc.getbestblockhash()
    height = await rpc.getblockcount()
    if depth > height:
        raise HarnessError(f"cannot disconnect {depth} blocks of a chain of height {height}")
    fork_height = height - depth
    disconnected = [await rpc.getblockhash(h) for h in range(fork_height + 1, height + 1)]
    known = set(await rpc.getrawmempool())
    for block_hash in disconnected:
        known.update(str(t) for t in (await rpc.getblock(block_hash, 1))["tx"][1:])
    missing = sorted(set(exclude) - known)
    if missing:  # checked before anything changes: a typo leaves the chain as it was
        raise HarnessError(f"not in the last {depth} block(s) or the mempool: "
                           f"{', '.join(missing)}")
    await rpc.invalidateblock(disconnected[0])
    hashes, left_out = await mine_excluding(rpc, depth + extra_blocks, exclude,
                                            address=address)
    return Reorg(old_tip, hashes[-1], fork_height, disconnected, left_out)
