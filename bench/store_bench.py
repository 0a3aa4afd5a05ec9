"""Group commit throughput of the channel store, on SQLite and PostgreSQL.

    python -m bench.store_bench [--writes 2000] [--writers 1 10 100 1000] [--postgres URL]

``writers`` trio tasks (think: channels) each store snapshots one after another, each
waiting for its own commit before the next (a channel cannot move on before its
Persist is durable), all through one ``GroupWriter``. A snapshot is a realistic
channel snapshot (about 4 KB of JSON: a channel with 10 HTLCs in flight), sealed with
AES-GCM, written with the stale-update check, exactly as the driver writes it.

Printed per store and concurrency: commits/s, durable writes/s, writes per commit
(how many updates one fsync covers), and the writer thread's time per commit. With
one writer every write is its own commit: that line is the fsync floor of the disk.

SQLite runs in a temporary directory with WAL and synchronous=FULL; PostgreSQL on a
fresh schema of the given server (default: the local test server), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from protocol.driver.crypto import Passphrase
from protocol.driver.db import Database, sqlite_url
from protocol.driver.store import ChannelStore, new_channel_key, open_secret_box
from protocol.driver.writer import GroupWriter

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def sample_snapshot(channel_key: bytes, update_id: int) -> dict[str, Any]:
    """About the size of a real snapshot with 10 HTLCs in flight."""
    htlcs = [{"htlc_id": i, "amount_msat": 10_000_000 + i, "payment_hash": os.urandom(32).hex(),
              "cltv_expiry": 500 + i, "offered_by": "local", "onion_routing_packet": "00" * 64,
              "add": {"local_ctn": update_id, "remote_ctn": update_id}, "removal": None}
             for i in range(10)]
    return {"version": 1, "state": "normal", "channel_id": channel_key.hex() * 2,
            "channel_seed": os.urandom(32).hex(), "update_id": update_id,
            "remote_secrets": os.urandom(48 * 33).hex(), "book": {"htlcs": htlcs}}


async def run_round(store: ChannelStore, writers: int, total_writes: int) -> dict[str, float]:
    per_writer = max(1, total_writes // writers)
    keys = [new_channel_key() for _ in range(writers)]
    peer = b"\x02" + os.urandom(32)
    # Built in advance: the bench measures the store, not the JSON of the sample.
    snapshots = {k: sample_snapshot(k, 1) for k in keys}
    stats = store.writer.stats
    commits0, writes0, seconds0 = stats.commits, stats.writes, stats.commit_seconds

    async def channel(key: bytes) -> None:
        for update_id in range(1, per_writer + 1):
            await store.save_snapshot(key, peer, update_id, snapshots[key])

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(channel, key)
    elapsed = time.perf_counter() - started
    commits = stats.commits - commits0
    writes = stats.writes - writes0
    return {"writers": writers, "writes": writes, "commits": commits,
            "commits_per_s": commits / elapsed, "writes_per_s": writes / elapsed,
            "writes_per_commit": writes / commits,
            "ms_per_commit": 1000 * (stats.commit_seconds - seconds0) / commits}


async def bench_store(url: str, writer_counts: list[int], total_writes: int
                      ) -> list[dict[str, float]]:
    db = Database.open(url)
    try:
        store = ChannelStore(db, open_secret_box(db, Passphrase("bench", scrypt_n=2**10)),
                             GroupWriter(db.engine))
        results = []
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer.run)
            for writers in writer_counts:
                writes = total_writes if writers > 1 else min(total_writes, 300)
                results.append(await run_round(store, writers, max(writes, writers)))
            nursery.cancel_scope.cancel()
        return results
    finally:
        db.close()


def print_results(name: str, results: list[dict[str, float]]) -> None:
    print(f"{name}:")
    print(f"  {'writers':>8} {'writes':>7} {'commits':>8} {'commits/s':>10} "
          f"{'writes/s':>9} {'writes/commit':>14} {'ms/commit':>10}")
    for r in results:
        print(f"  {r['writers']:>8.0f} {r['writes']:>7.0f} {r['commits']:>8.0f} "
              f"{r['commits_per_s']:>10.0f} {r['writes_per_s']:>9.0f} "
              f"{r['writes_per_commit']:>14.1f} {r['ms_per_commit']:>10.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2_000)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="server URL ('' to skip PostgreSQL)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = trio.run(bench_store, sqlite_url(Path(tmp) / "bench.sqlite"),
                           args.writers, args.writes)
    print_results("SQLite (WAL, synchronous=FULL)", results)
    if not args.postgres:
        return
    schema = f"store_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = f"{args.postgres}?options=-csearch_path%3D{schema}"
        print_results("PostgreSQL (synchronous_commit=on)",
                      trio.run(bench_store, url, args.writers, args.writes))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    main()
