"""Routed payments through one hub: payments/s, latency, hub CPU per payment, RSS.

    python -m bench.hub_bench [--clients 10,100] [--payments 200] [--concurrency 20]
                              [--stores sqlite,postgresql] [--seed 1]

Theory of operation. Two phases per (store, client count):

1. Setup, in this process: the embedded regtest node, a ``HubNode`` on the store
   under test (SQLite file, or a fresh PostgreSQL schema on 127.0.0.1:5432 database
   ``test``) and ``clients`` ``ClientNode`` parties (each its own node key and SQLite
   store) over memory links. Every client opens one channel (1,000,000 sat, 400,000
   sat pushed to the hub so it can also receive), funded on the regtest node; one
   block confirms them all. Then the hub and the clients close their stores.
2. Measurement: a real ``chanhubd`` process (``python -m hub --application
   bench.hub_bench:open_bench_application``; the repository has no production
   ``hub.app`` yet, so this factory opens ``HubNode`` on the same store, at the
   setup's height, with no chain follower) serves TLS gRPC on loopback. This process
   reopens every client's store and connects it with the SDK (``AsyncHubClient``,
   ``GrpcLinks``: pinned TLS, node-key authentication), all on one bridge. Payments
   (payer and payee drawn at random with ``--seed``; the payee makes a fresh invoice,
   the payer pays it and the time from ``pay`` to its outcome is the latency) run
   ``--concurrency`` at a time. Every update is durable (rule 1) on both sides.

The hub's CPU time (user + system of its process, from /proc) over the measured
payments, divided by their number, is "hub CPU per payment"; peak RSS is the hub's
VmHWM. The clients share the 2 cores with the hub, so the end-to-end rate is a floor
of what the hub alone could do.

Signature floor: the hub process counts its calls of ``channel.signing.sign`` and
``verify`` (every module that imported them is patched, in the hub process only);
the counts over the measured payments, divided by the payments, times the raw
sign/verify time measured here in the same run, is the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from channel import signing
from channel.keys import pubkey_from_secret
from client.node import ClientNode, HubTerms
from client.sdk import AsyncHubClient, GrpcLinks
from client.transport import HubPin
from hub.config import HubConfig
from hub.daemon import HubApplication
from hub.node import HubNode, HubSettings
from hub.tls import TlsIdentity
from protocol.actions import FundingNeeded
from protocol.driver.crypto import Passphrase
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.driver.grpc_bridge import open_grpc_bridge
from protocol.driver.link import memory_link_pair
from protocol.table import ChannelState

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POSTGRES_SERVER = os.environ.get("CHANHUB_TEST_POSTGRES",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# A bench passphrase; scrypt kept cheap (the key derivation is not what is measured).
PASSPHRASE = Passphrase("hub bench passphrase", scrypt_n=2**10)
FUNDING_SAT = 1_000_000
PUSH_MSAT = 400_000_000
WAVE = 20  # channels funded per block
# Modules that did `from channel.signing import sign/verify` (the names the hub calls).
SIGNING_USERS = ("channel.commitment", "channel.closing", "channel.spend",
                 "channel.chain.coinselect", "protocol.routing", "hub.auth")


def settings(store_url: str) -> HubSettings:
    return HubSettings(store_url=store_url, key_source=PASSPHRASE, fee_base_msat=1_000,
                       fee_ppm=1_000, minimum_depth=1, to_self_delay_blocks=6,
                       max_inbound_sat=10_000_000)


class NullBroadcaster:
    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        return


# -- the hub process -------------------------------------------------------------------

HUB_COUNTS = {"sign": 0, "verify": 0, "frames_in": 0, "frames_out": 0}


def _count_frames() -> None:
    """Count the peer frames the hub receives and sends (every link, one counter)."""
    from protocol.driver.peer import PeerSession

    real_receive, real_flush = PeerSession._receive_frame, PeerSession._flush

    def receive_frame(self: PeerSession, frame: Any) -> None:
        HUB_COUNTS["frames_in"] += 1
        real_receive(self, frame)

    async def flush(self: PeerSession, link: Any) -> None:
        per_frame = self.limits.max_messages
        HUB_COUNTS["frames_out"] += -(-len(self._outbox) // per_frame)
        await real_flush(self, link)

    PeerSession._receive_frame = receive_frame  # type: ignore[method-assign]
    PeerSession._flush = flush  # type: ignore[method-assign]


def _count_signatures() -> None:
    import importlib

    real_sign, real_verify = signing.sign, signing.verify

    def sign(secret: bytes, sighash: bytes) -> bytes:
        HUB_COUNTS["sign"] += 1
        return real_sign(secret, sighash)

    def verify(pubkey: bytes, sighash: bytes, signature: bytes) -> bool:
        HUB_COUNTS["verify"] += 1
        return real_verify(pubkey, sighash, signature)

    for name in SIGNING_USERS:
        module = importlib.import_module(name)
        if getattr(module, "sign", None) is real_sign:
            module.sign = sign  # type: ignore[attr-defined]
        if getattr(module, "verify", None) is real_verify:
            module.verify = verify  # type: ignore[attr-defined]


class CountReporter:
    """On SIGUSR1, write the hub's counts (signatures, frames, store transactions,
    forwards parked for the payee's acknowledgement) to the file the load generator
    reads."""

    def __init__(self, path: Path, hub: HubNode) -> None:
        self.path = path
        self.hub = hub

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                tmp = self.path.with_suffix(".tmp")
                stats = self.hub.writer.stats
                tmp.write_text(json.dumps({**HUB_COUNTS, "commits": stats.commits,
                                           "writes": stats.writes,
                                           "parked": self.hub.router.stats.parked}))
                tmp.replace(self.path)


@asynccontextmanager
async def open_bench_application(config: HubConfig, tls: TlsIdentity
                                 ) -> AsyncIterator[HubApplication]:
    """The ``ApplicationFactory`` of the benchmark's chanhubd (see the docstring)."""
    _count_signatures()
    _count_frames()
    height = int(os.environ["HUB_BENCH_HEIGHT"])
    hub = HubNode.open(settings(os.environ["HUB_BENCH_STORE_URL"]), height=lambda: height,
                       broadcaster=NullBroadcaster())
    try:
        reporter = CountReporter(Path(os.environ["HUB_BENCH_COUNTS_FILE"]), hub)
        yield HubApplication(hub.hub_node_id, hub, hub.admin, services=[reporter, hub])
    finally:
        hub.close()


# -- setup (phase 1) -------------------------------------------------------------------

def terms_of(hub: HubNode) -> HubTerms:
    s = hub.settings
    return HubTerms(hub.hub_node_id, s.fee_base_msat, s.fee_ppm, s.cltv_expiry_delta_blocks)


async def setup(node: Any, store_url: str, client_urls: list[str]) -> HubTerms:
    height: Callable[[], int] = lambda: int(node.call("getblockcount"))  # noqa: E731
    hub = HubNode.open(settings(store_url), height=height, broadcaster=NullBroadcaster())
    terms = terms_of(hub)

    async def fund(driver: ChannelDriver, needed: FundingNeeded) -> None:
        txid_hex, vout = node.send_to_script(needed.script_pubkey, needed.amount_sat)
        driver.funding_outpoint(bytes.fromhex(txid_hex)[::-1], vout)

    async def gettxout(txid_hex: str, vout: int) -> dict[str, Any] | None:
        out = node.call("gettxout", txid_hex, vout)
        if out is None:
            return None
        out["value"] = Decimal(str(out["value"]))
        return dict(out)

    clients = [ClientNode.open(url, PASSPHRASE, terms, height=height,
                               broadcaster=NullBroadcaster(), funder=fund)
               for url in client_urls]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        for client in clients:
            await nursery.start(client.run)
            hub_end, client_end = memory_link_pair()
            nursery.start_soon(hub.on_peer_link, client.node_id, hub_end)
            await nursery.start(client.serve_link, client_end)
        drivers = []
        for start in range(0, len(clients), WAVE):  # the mempool takes 25 chained spends
            wave = [c.open_channel(FUNDING_SAT, PUSH_MSAT) for c in clients[start:start + WAVE]]
            for client, driver in zip(clients[start:start + WAVE], wave, strict=True):
                while driver.channel.d.funding_txid == b"" or \
                        driver.channel.state is not ChannelState.AWAIT_CHANNEL_READY:
                    await client.changed.wait()
                await hub.sessions[client.node_id].idle()
            node.mine(1)
            drivers.extend(wave)
        assert await hub.check_fundings(gettxout) == len(clients)
        for client, driver in zip(clients, drivers, strict=True):
            driver.funding_confirmed()
            while driver.channel.state is not ChannelState.NORMAL:
                await client.changed.wait()
            await hub.sessions[client.node_id].idle()
            await client.session.idle()
        await hub.drain()
        nursery.cancel_scope.cancel()
    for client in clients:
        client.close()
    hub.close()
    return terms


# -- measurement (phase 2) -------------------------------------------------------------

def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def read_counts(pid: int, path: Path) -> dict[str, int]:
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists() or path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise RuntimeError("the hub did not report its signature counts")
        time.sleep(0.01)
    counts: dict[str, int] = json.loads(path.read_text())
    return counts


async def measure(started: dict[str, Any], pid: int, counts_file: Path, terms: HubTerms,
                  client_urls: list[str], height: int, payments: int, concurrency: int,
                  seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    target = f"127.0.0.1:{started['port']}"
    pin = HubPin.from_cert_file(started["tls_cert_file"])
    async with open_grpc_bridge() as bridge, contextlib.AsyncExitStack() as stack:
        sdks: list[AsyncHubClient] = []
        for url in client_urls:  # entered here: each SDK's nursery nests in this task
            node = ClientNode.open(url, PASSPHRASE, terms, height=lambda: height,
                                   broadcaster=NullBroadcaster())
            links = GrpcLinks(bridge, target, node_secret=node.node_secret, pin=pin,
                              hub_node_id=terms.hub_node_id)
            sdks.append(await stack.enter_async_context(AsyncHubClient(node, links)))
        for sdk in sdks:
            await sdk.ready()
        pairs = []
        for _ in range(payments + concurrency):
            payer, payee = rng.sample(range(len(sdks)), 2)
            pairs.append((payer, payee, rng.randrange(10_000_000, 20_000_000)))
        latencies: list[float] = []

        async def pay(i: int) -> None:
            payer, payee, amount_msat = pairs[i]
            invoice = await sdks[payee].add_invoice(amount_msat, f"bench {i}")
            t0 = time.perf_counter()
            paid = await sdks[payer].pay(idempotency_key=f"bench-{i}", invoice=invoice)
            latencies.append(time.perf_counter() - t0)
            assert paid.state == "succeeded", paid

        async def run_many(first: int, count: int) -> None:
            queue = iter(range(first, first + count))

            async def worker() -> None:
                for i in queue:
                    await pay(i)

            async with trio.open_nursery() as workers:
                for _ in range(concurrency):
                    workers.start_soon(worker)

        counts_warm_up = read_counts(pid, counts_file)
        await run_many(0, concurrency)  # warm up: every code path once, caches filled
        latencies.clear()
        counts0 = read_counts(pid, counts_file)
        cpu0, t0 = proc_cpu_seconds(pid), time.perf_counter()
        await run_many(concurrency, payments)
        elapsed = time.perf_counter() - t0
        hub_cpu = proc_cpu_seconds(pid) - cpu0
        counts1 = read_counts(pid, counts_file)
    latencies.sort()
    return dict(rate=payments / elapsed, p50=statistics.median(latencies),
                p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                hub_cpu_per_payment=hub_cpu / payments, hub_util=hub_cpu / elapsed,
                **{key: (counts1[key] - counts0[key]) / payments
                   for key in ("sign", "verify", "frames_in", "frames_out", "commits",
                               "writes", "parked")},
                parked_in_warm_up=counts0["parked"] - counts_warm_up["parked"],
                peak_rss_mb=proc_peak_rss_mb(pid))


def raw_signature_seconds(batches: int = 5, rounds: int = 500) -> tuple[float, float]:
    """Best of ``batches``: the machine is shared, the floor is the unloaded figure."""
    secret = os.urandom(32)
    pubkey = pubkey_from_secret(secret)
    best_sign = best_verify = float("inf")
    for _ in range(batches):
        digests = [os.urandom(32) for _ in range(rounds)]
        t0 = time.perf_counter()
        sigs = [signing.sign(secret, d) for d in digests]
        best_sign = min(best_sign, (time.perf_counter() - t0) / rounds)
        t0 = time.perf_counter()
        for d, s in zip(digests, sigs, strict=True):
            assert signing.verify(pubkey, d, s)
        best_verify = min(best_verify, (time.perf_counter() - t0) / rounds)
    return best_sign, best_verify


# Extra py-spy options, e.g. PY_SPY_ARGS=--gil to sample only the thread holding the GIL
# (Python CPU, without the threads that wait).
PROFILE_EXTRA = os.environ.get("PY_SPY_ARGS", "").split()


def py_spy() -> str:
    """py-spy: $PY_SPY, else the venv's, else one on PATH (it may live in a venv of its
    own, e.g. /tmp/spyenv/bin/py-spy)."""
    import shutil

    for candidate in (os.environ.get("PY_SPY"), str(REPO / ".venv/bin/py-spy"),
                      shutil.which("py-spy"), "/tmp/spyenv/bin/py-spy"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("py-spy not found: set PY_SPY or install it")


def run_one(store: str, clients: int, payments: int, concurrency: int, seed: int,
            profile: Path | None) -> dict[str, float]:
    from regtest.node import Node
    from regtest.pytest_plugin import ManualClock

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        node = Node(tmp / "node", clock=ManualClock())
        schema = None
        admin = None
        try:
            node.mine(101)
            if store == "sqlite":
                store_url = sqlite_url(tmp / "hub.sqlite")
            else:
                schema = f"hub_bench_{uuid.uuid4().hex[:12]}"
                admin = sa.create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
                store_url = f"{POSTGRES_SERVER}?options=-csearch_path%3D{schema}"
            client_urls = [sqlite_url(tmp / f"client{i}.sqlite") for i in range(clients)]
            t0 = time.perf_counter()
            terms = trio.run(setup, node, store_url, client_urls)
            setup_s = time.perf_counter() - t0
            height = int(node.call("getblockcount"))
            counts_file = tmp / "counts.json"
            env = {**os.environ, "PYTHONPATH": str(REPO), "HUB_BENCH_STORE_URL": store_url,
                   "HUB_BENCH_HEIGHT": str(height), "HUB_BENCH_COUNTS_FILE": str(counts_file)}
            command = [sys.executable, "-m", "hub", "--application",
                       "bench.hub_bench:open_bench_application", "--data-dir",
                       str(tmp / "hubdata"), "--listen", "127.0.0.1:0", "--log-level",
                       os.environ.get("HUB_BENCH_LOG_LEVEL", "warning")]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True,
                                       cwd=REPO)
            spy = None
            try:
                assert process.stdout is not None
                started = json.loads(process.stdout.readline())
                if profile is not None:
                    spy = subprocess.Popen([py_spy(), "record", "-p",
                                            str(process.pid), "-o", str(profile), "-f", "raw",
                                            "-r", "200", *PROFILE_EXTRA],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                result = trio.run(measure, started, process.pid, counts_file, terms,
                                  client_urls, height, payments, concurrency, seed)
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                process.terminate()
                process.wait(timeout=60)
            result["setup_s"] = setup_s
            return result
        finally:
            node.close()
            if admin is not None:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                admin.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,100")
    parser.add_argument("--payments", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy raw (collapsed) profile of the hub, first run only")
    args = parser.parse_args(argv if argv is not None else [])
    sign_s, verify_s = raw_signature_seconds()
    print(f"raw libsecp256k1: sign {sign_s * 1e6:.1f} us, verify {verify_s * 1e6:.1f} us")
    print("| store | clients | payments/s | p50 ms | p99 ms | hub CPU/payment us | "
          "hub CPU % | signs+verifies/payment (hub) | signature floor us | peak hub RSS MB | "
          "hub frames in+out/payment | hub store commits (writes)/payment | "
          "forwards parked % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    profile = args.profile
    for store in args.stores.split(","):
        for clients in (int(c) for c in args.clients.split(",")):
            r = run_one(store, clients, args.payments, args.concurrency, args.seed,
                        profile)
            profile = None
            floor = r["sign"] * sign_s + r["verify"] * verify_s
            print(f"| {store} | {clients} | {r['rate']:,.1f} | {r['p50'] * 1e3:.0f} | "
                  f"{r['p99'] * 1e3:.0f} | {r['hub_cpu_per_payment'] * 1e6:,.0f} | "
                  f"{r['hub_util'] * 100:.0f} | {r['sign']:.1f} + {r['verify']:.1f} | "
                  f"{floor * 1e6:.0f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['frames_in']:.1f} + {r['frames_out']:.1f} | "
                  f"{r['commits']:.1f} ({r['writes']:.1f}) | {r['parked'] * 100:.0f} |"
                  f"  (setup {r['setup_s']:.0f} s; forwards parked in the warm-up: "
                  f"{r['parked_in_warm_up']:.0f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
