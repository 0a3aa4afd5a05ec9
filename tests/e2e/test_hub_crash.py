"""Crash safety (issue 9, item 14): kill -9 the hub at seeded points while 200
payments run, restart it on the same data directory and port each time.

The hub is a real ``chanhubd`` process (the default application, ``hub.app``) on a
regtest node process, on SQLite and on PostgreSQL. The clients are full SDK parties
hosted in this process (``AsyncHubClient`` over gRPC, each ``ClientNode`` with its own
store, keys and chain follower, channels funded from its own wallet); they reconnect
by themselves after every kill.

Kill points are a seeded schedule, never a timer: "after payment k was issued" plus a
stage observed in this process (the HTLC merely queued at the payer; the payee
holding it; the payer holding its outcome), so a run is reproducible as far as a
real process allows. Other payments (a window of them) are in flight at every kill.

At the end, with everything settled: each payment is succeeded or failed exactly
once at the payer, consistent at the payee and at the hub (Admin ListPayments); the
channel balances of both sides plus the hub's fees are conserved to the msat; every
client's event log at the hub was streamed across the restarts with no gap and no
duplicate, one resolution event per payment.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

import client.sdk
from channel.chain import BitcoinRpc
from channel.keys import pubkey_from_secret
from client import errors, ledger
from client.node import ClientNode, node_secret_of
from client.sdk import AsyncHubClient, GrpcLinks
from client.transport import HubPin, HubTransport
from hub.admin_transport import AdminTransport
from proto import admin_pb2, client_pb2
from protocol.driver.crypto import Passphrase
from protocol.driver.db import sqlite_url
from protocol.driver.grpc_bridge import GrpcBridge, RpcStatusError, open_grpc_bridge
from protocol.driver.link import LinkClosed
from protocol.routing import FailureCode
from protocol.table import LinkState
from regtest.harness import HarnessError, HubEndpoint, NodeEndpoint, kill_hub, start_hub

log = logging.getLogger(__name__)

# Another schedule: CHANHUB_CRASH_SEED=<n> (the figures name the seed of each run).
SEED = int(os.environ.get("CHANHUB_CRASH_SEED", "20261203"))
PAYMENTS = 200
KILLS = 20  # the issue asks for at least 20; each costs a chanhubd start (imports: 1-5 s)
WINDOW = 8  # payments in flight at once (so every kill catches several mid-way)
CLIENTS = ("alice", "bob", "carol", "dave")
FAUCET_SAT = 3_000_000
FUNDING_SAT = 2_000_000
PUSH_MSAT = 800_000_000  # the hub's side of each channel: what it can forward to that client
# Above the dust limit of an HTLC at 2,500 sat/kw (about 2,200 sat): the channel caps
# its dust exposure at 5,000,000 msat, and a window of dust HTLCs would reach that
# (the SDK then refuses the payment before recording it, a case this test is not about).
MIN_AMOUNT_MSAT = 3_000_000
MAX_AMOUNT_MSAT = 12_000_000
STAGES = ("queued", "at_payee", "resolved")
UNKNOWN_PAYEE = pubkey_from_secret(hashlib.sha256(b"a node the hub never met").digest())
PASSPHRASE = Passphrase("crash test client", scrypt_n=2**10)
RUN_SECONDS = 300  # the whole scenario; a stall fails instead of hanging the suite
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(params=["sqlite", "postgres"])
def hub_store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK's reconnect backoff, shortened: a restart takes about a second here, and
    the default (0.5 s doubling) would add several seconds per kill."""
    monkeypatch.setattr(client.sdk, "INITIAL_BACKOFF_SECONDS", 0.05)
    monkeypatch.setattr(client.sdk, "MAX_BACKOFF_SECONDS", 0.2)
    yield


@dataclass(frozen=True)
class PaymentSpec:
    index: int
    payer: str
    payee: str | None  # None: a node id the hub does not know (fails at the hub)
    amount_msat: int
    spontaneous: bool

    @property
    def key(self) -> str:
        return f"payment-{self.index}"


def plan(rng: random.Random) -> tuple[list[PaymentSpec], dict[int, str]]:
    specs = []
    for index in range(PAYMENTS):
        payer = rng.choice(CLIENTS)
        unknown = rng.random() < 0.08
        payee = None if unknown else rng.choice([c for c in CLIENTS if c != payer])
        amount_msat = rng.randrange(MIN_AMOUNT_MSAT, MAX_AMOUNT_MSAT)
        specs.append(PaymentSpec(index, payer, payee, amount_msat,
                                 spontaneous=unknown or rng.random() < 0.25))
    points = sorted(rng.sample(range(5, PAYMENTS - 5), KILLS))
    return specs, {k: rng.choice(STAGES) for k in points}


@dataclass(frozen=True)
class Issued:
    payment_id: str
    payment_hash: bytes


@dataclass
class Party:
    name: str
    node: ClientNode
    sdk: AsyncHubClient
    hub_events: list[client_pb2.Event] = field(default_factory=list)
    subscriptions: int = 0
    streamed: trio.Event = field(default_factory=trio.Event)  # set on each new hub event

    def add_hub_event(self, event: client_pb2.Event) -> None:
        self.hub_events.append(event)
        self.streamed.set()
        self.streamed = trio.Event()


class Hub:
    """The chanhubd process: kill -9 and restart on the same data directory and port."""

    def __init__(self, endpoint: HubEndpoint, node: NodeEndpoint) -> None:
        self.endpoint, self.node = endpoint, node
        self.kills = 0
        self.restart_seconds: list[float] = []
        self.up = trio.Event()
        self.up.set()

    @property
    def pin(self) -> HubPin:
        return HubPin.from_cert_file(self.endpoint.tls_cert_file)

    async def kill_and_restart(self) -> None:
        self.up = trio.Event()
        assert await trio.to_thread.run_sync(kill_hub, self.endpoint.datadir)
        self.kills += 1
        started = time.monotonic()
        options = {"minimum_depth": "1", "listen": self.endpoint.target}
        for attempt in range(20):
            try:
                again = await trio.to_thread.run_sync(lambda: start_hub(
                    self.endpoint.datadir, self.node, store_url=self.endpoint.store_url,
                    options=options))
                break
            except HarnessError as exc:
                # The old process's store lock (PostgreSQL's advisory lock) or port can
                # outlive it by a moment: a bounded retry.
                if attempt == 19 or ("in use" not in str(exc) and "bind" not in str(exc)):
                    raise
                await trio.sleep(0.1)
        assert again.port == self.endpoint.port
        assert again.hub_node_id == self.endpoint.hub_node_id
        self.endpoint = again
        self.restart_seconds.append(time.monotonic() - started)
        self.up.set()

    async def admin(self, bridge: GrpcBridge, method: str, request: Any) -> Any:
        async with await AdminTransport.connect(
                bridge, self.endpoint.target, credential_file=self.endpoint.admin_credential_file,
                cert_pem=self.endpoint.tls_cert_file.read_bytes()) as admin:
            return await admin.call(method, request)


async def follow_hub_events(bridge: GrpcBridge, hub: Hub, party: Party) -> None:
    """The client's event log at the hub, streamed from the last sequence seen,
    resubscribing after every kill (the test's own reader: the SDK has none yet)."""
    while True:
        cursor = party.hub_events[-1].sequence if party.hub_events else 0
        try:
            transport = await HubTransport.connect(bridge, hub.endpoint.target,
                                                   node_secret=party.node.node_secret,
                                                   pin=hub.pin)
        except (RpcStatusError, LinkClosed):
            await hub.up.wait()
            await trio.sleep(0.05)  # a real process coming up: retry
            continue
        try:
            stream = await transport.subscribe_events(cursor)
            party.subscriptions += 1
            while True:
                party.add_hub_event(await stream.receive())
        except (RpcStatusError, LinkClosed):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose(grace_seconds=0.5)
        await hub.up.wait()


async def open_party(stack: contextlib.AsyncExitStack, bridge: GrpcBridge,
                     rpc: BitcoinRpc, hub: Hub, tmp_path: Path, name: str) -> Party:
    url = sqlite_url(tmp_path / f"{name}.sqlite")
    links = GrpcLinks(bridge, hub.endpoint.target, node_secret=node_secret_of(url, PASSPHRASE),
                      pin=hub.pin, hub_node_id=hub.endpoint.hub_node_id)
    node = ClientNode.open(url, PASSPHRASE, await links.hub_terms())
    stack.push_async_callback(links.aclose)
    await node.attach_chain(rpc, poll_interval_s=0.2)
    sdk = await stack.enter_async_context(AsyncHubClient(node, links))
    return Party(name, node, sdk)


def state_of(node: ClientNode, payment_id: str) -> str:
    return str(next(r["state"] for r in node.payments() if r["payment_id"] == payment_id))


async def fund_and_open(parties: list[Party], rpc: BitcoinRpc) -> None:
    for party in parties:
        address = await party.sdk.wallet_address()
        await rpc.call("sendtoaddress", address, str(Decimal(FAUCET_SAT) / 100_000_000))
    await rpc.generatetoaddress(1, await rpc.getnewaddress())
    height = await rpc.getblockcount()
    for party in parties:
        assert party.node.chain is not None
        await party.node.chain.follower.wait_for_height(height)
        assert (await party.sdk.wallet_balance()).confirmed_sat == FAUCET_SAT
        await party.sdk.ready()
        await party.sdk.open_channel(FUNDING_SAT, push_msat=PUSH_MSAT, wait=False)
    await rpc.generatetoaddress(1, await rpc.getnewaddress())
    for party in parties:
        while not party.node.open_drivers():  # the hub's block loop sees the depth too
            await party.node.changed.wait()


async def first_of(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:
            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


def balances(parties: list[Party]) -> int:
    return sum(p.node.balance_msat() for p in parties)


async def hub_side_msat(bridge: GrpcBridge, hub: Hub) -> tuple[int, int, int]:
    """(the hub's side of every channel, the clients' side as the hub sees it, pending
    HTLCs), from Admin ListChannels."""
    listed = await hub.admin(bridge, "ListChannels", admin_pb2.ListChannelsRequest())
    return (sum(c.remote_balance_msat for c in listed.channels),
            sum(c.local_balance_msat for c in listed.channels),
            sum(c.pending_htlc_count for c in listed.channels))


def settled(party: Party) -> bool:
    return all(d.channel.link is LinkState.UP and not d.channel.d.book.htlcs
               for d in party.node.open_drivers())


@pytest.mark.slow
async def test_kill_9_the_hub_while_200_payments_run(
        hub_process: HubEndpoint, node_process: NodeEndpoint, hub_store: str,
        tmp_path: Path, fast_reconnect: None) -> None:
    began = time.monotonic()
    specs, kill_points = plan(random.Random(SEED))
    hub = Hub(hub_process, node_process)
    issued: dict[str, Issued] = {}
    stage_counts = dict.fromkeys(STAGES, 0)
    with trio.fail_after(RUN_SECONDS):
        async with open_grpc_bridge() as bridge, node_process.rpc() as rpc, \
                contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            parties = {name: await open_party(stack, bridge, rpc, hub, tmp_path, name)
                       for name in CLIENTS}
            everyone = list(parties.values())
            for party in everyone:
                nursery.start_soon(follow_hub_events, bridge, hub, party)
            await fund_and_open(everyone, rpc)
            for party in everyone:
                await party.sdk.ready()
            hub_start, clients_as_hub_sees, _ = await hub_side_msat(bridge, hub)
            clients_start = balances(everyone)
            assert clients_as_hub_sees == clients_start

            window = trio.Semaphore(WINDOW)

            async def watch(spec: PaymentSpec, payment_id: str) -> None:
                await parties[spec.payer].node.wait_payment(payment_id)
                window.release()

            for spec in specs:
                await window.acquire()
                payment = await issue(parties, spec)
                issued[spec.key] = payment
                nursery.start_soon(watch, spec, payment.payment_id)
                stage = kill_points.get(spec.index)
                if stage is not None:
                    await reach(parties, spec, payment, stage)
                    stage_counts[stage] += 1
                    await hub.kill_and_restart()
            for _ in range(WINDOW):
                await window.acquire()  # every payment resolved at its payer
            # Let the last settlements finish on both sides.
            while True:
                hub_end, clients_as_hub_sees, pending = await hub_side_msat(bridge, hub)
                if not pending and all(settled(p) for p in everyone):
                    break
                await trio.sleep(0.1)  # polling the hub process, bounded by fail_after
            clients_end = balances(everyone)
            forwards = list((await hub.admin(
                bridge, "ListPayments", admin_pb2.ListPaymentsRequest(
                    filter=client_pb2.ListPaymentsRequest(limit=1000)))).forwards)
            info = await hub.admin(bridge, "GetInfo", admin_pb2.GetInfoRequest())
            for party in everyone:
                # What the hub stores for the client (one event per outcome, read afresh)
                # is exactly what it streamed across the restarts.
                stored = await stored_hub_events(bridge, hub, party,
                                                 expected_hub_events(party, forwards))
                assert len(stored) == expected_hub_events(party, forwards), party.name
                while len(party.hub_events) < len(stored):
                    await party.streamed.wait()
                assert [e.SerializeToString() for e in party.hub_events] == \
                    [e.SerializeToString() for e in stored], party.name

            check_outcomes(specs, parties, forwards)
            fees_msat = sum(r["fee_msat"] for p in everyone for r in p.node.payments()
                            if r["direction"] == ledger.SENT and r["state"] == ledger.SUCCEEDED)
            assert info.fees_earned_msat == fees_msat
            assert clients_as_hub_sees == clients_end  # both sides of every channel agree
            assert hub_end - hub_start == fees_msat
            assert clients_start - clients_end == fees_msat
            assert clients_end + hub_end == clients_start + hub_start
            check_event_logs(parties)
            outcomes = [next(r for r in parties[s.payer].node.payments()
                             if r["payment_id"] == issued[s.key].payment_id) for s in specs]
            succeeded = sum(r["state"] == ledger.SUCCEEDED for r in outcomes)
            failures = collections.Counter(failure_kind(r) for r in outcomes
                                           if r["state"] == ledger.FAILED)
            nursery.cancel_scope.cancel()

    FIGURES[hub_store] = dict(seed=SEED, kills=hub.kills, stages=stage_counts, succeeded=succeeded,
                              failed=PAYMENTS - succeeded,
                              failures=dict(failures),
                              fees_msat=fees_msat,
                              restart_s_mean=round(statistics.mean(hub.restart_seconds), 2),
                              restart_s_max=round(max(hub.restart_seconds), 2),
                              subscriptions=sum(p.subscriptions for p in everyone),
                              wall_s=round(time.monotonic() - began, 1))
    print(f"\nhub crash figures ({hub_store}): {FIGURES[hub_store]}")
    assert hub.kills == KILLS


async def issue(parties: dict[str, Party], spec: PaymentSpec) -> Issued:
    """Start the payment (not waiting for its outcome); while the hub is restarting the
    SDK refuses it before recording anything, and the same key is tried again."""
    payer = parties[spec.payer].sdk
    payee = parties[spec.payee] if spec.payee is not None else None
    invoice = None
    if not spec.spontaneous and payee is not None:
        invoice = await payee.sdk.add_invoice(spec.amount_msat, spec.key)
    payee_id = payee.node.node_id if payee is not None else UNKNOWN_PAYEE
    while True:
        try:
            if invoice is not None:
                paid = await payer.pay(idempotency_key=spec.key, invoice=invoice, wait=False)
            else:
                paid = await payer.pay(idempotency_key=spec.key, payee_node_id=payee_id,
                                       amount_msat=spec.amount_msat, wait=False)
            return Issued(paid.payment_id, paid.payment_hash)
        except errors.HubUnavailable:
            await payer.ready()


async def reach(parties: dict[str, Party], spec: PaymentSpec, payment: Issued,
                stage: str) -> None:
    """Wait for the kill point's stage: "queued" (at once: the HTLC may not have left
    the payer), "at_payee" (the payee holds the HTLC, or it failed before), "resolved"
    (the payer has the outcome; the hub is mid-settlement of the incoming HTLC)."""
    payer = parties[spec.payer].node
    if stage == "at_payee" and spec.payee is not None:
        payee = parties[spec.payee]
        while payment.payment_hash not in {
                h[2] for d in payee.node.session.drivers for h in d.channel.received_htlcs()
        } and state_of(payer, payment.payment_id) == ledger.IN_FLIGHT:
            await first_of(payee.node.changed, payer.changed)
    elif stage == "resolved":
        await payer.wait_payment(payment.payment_id)


async def stored_hub_events(bridge: GrpcBridge, hub: Hub, party: Party, count: int
                            ) -> list[client_pb2.Event]:
    """The client's first ``count`` events as the hub stores them (a fresh subscription
    from 0), and any more it sends within a moment (there should be none)."""
    out: list[client_pb2.Event] = []
    async with await HubTransport.connect(bridge, hub.endpoint.target,
                                          node_secret=party.node.node_secret,
                                          pin=hub.pin) as transport:
        stream = await transport.subscribe_events(0)
        while len(out) < count:
            out.append(await stream.receive())
        with trio.move_on_after(0.3):
            while True:
                out.append(await stream.receive())
    return out


def expected_hub_events(party: Party, forwards: list[admin_pb2.Forward]) -> int:
    """channel_opened, one resolution per payment it sent that reached the hub, one
    invoice_paid per payment it received."""
    node_id = party.node.node_id
    return 1 + sum(f.payer_node_id == node_id for f in forwards) + sum(
        f.payee_node_id == node_id and f.state == client_pb2.PAYMENT_STATE_SUCCEEDED
        for f in forwards)


def failure_kind(row: dict[str, Any]) -> str:
    """For the figures: the failure code, and for a local failure its reason."""
    code = FailureCode(row["failure_code"]).name
    message = str(row["failure_message"])
    return f"{code} ({message})" if "hub" not in message and "payee" not in message else code


def check_outcomes(specs: list[PaymentSpec], parties: dict[str, Party], forwards: Any
                   ) -> None:
    """Asserts every payment's outcome: at the payer, at the payee and at the hub, where
    each payment that reached it has one record (an incoming HTLC routed twice once
    paid the payee and failed the payer: ``hub/router.py``, decided once)."""
    by_hash: dict[bytes, list[Any]] = {}
    for forward in forwards:
        by_hash.setdefault(bytes(forward.payment_hash), []).append(forward)
    for spec in specs:
        payer = parties[spec.payer].node
        sent = [r for r in payer.payments() if r["idempotency_key"] == spec.key]
        assert len(sent) == 1, f"{spec.key}: {len(sent)} records at the payer"
        row = sent[0]
        assert row["state"] in (ledger.SUCCEEDED, ledger.FAILED), f"{spec.key}: {row['state']}"
        payment_hash = row["payment_hash"]
        received = [r for p in parties.values() for r in p.node.payments()
                    if r["direction"] == ledger.RECEIVED and r["payment_hash"] == payment_hash]
        at_hub = by_hash.get(payment_hash, [])
        hub_states = [f.state for f in at_hub]
        if row["state"] == ledger.SUCCEEDED:
            assert spec.payee is not None
            assert len(received) == 1 and received[0]["amount_msat"] == spec.amount_msat, \
                f"{spec.key}: succeeded at the payer, {received} at the payee"
            assert hub_states == [client_pb2.PAYMENT_STATE_SUCCEEDED], \
                f"{spec.key}: succeeded at the payer, {hub_states} at the hub"
            assert at_hub[0].fee_msat == row["fee_msat"]
        else:
            assert not received, (f"{spec.key} ({spec}): failed at the payer "
                                  f"({row['failure_code']}, {row['failure_message']!r}), "
                                  f"received by the payee; at the hub {at_hub}")
            # a forward the hub never stored (the HTLC never reached it) is no record
            summary = [(f.payment_id[:8], f.state, f.failure_reason, f.created_at_unix)
                       for f in at_hub]
            assert hub_states in ([], [client_pb2.PAYMENT_STATE_FAILED]), (
                f"{spec.key} ({spec.payer} -> {spec.payee}, {row['failure_message']!r}): "
                f"failed at the payer, at the hub (id, state, reason, created) {summary}")
            if spec.payee is None:
                assert row["failure_code"] != 0
    assert sum(len(v) for v in by_hash.values()) == len(forwards)
    assert not [f for f in forwards if f.state == client_pb2.PAYMENT_STATE_IN_FLIGHT]


def check_event_logs(parties: dict[str, Party]) -> None:
    for party in parties.values():
        sequences = [e.sequence for e in party.hub_events]
        assert sequences == list(range(1, len(sequences) + 1)), \
            f"{party.name}: hub events {sequences}"
        resolutions = [e for e in party.hub_events
                       if e.WhichOneof("body") in ("payment_succeeded", "payment_failed")]
        hashes = [bytes(e.payment_succeeded.payment.payment_hash
                        if e.HasField("payment_succeeded")
                        else e.payment_failed.payment.payment_hash) for e in resolutions]
        twice = {h.hex()[:16] for h in hashes if hashes.count(h) > 1}
        assert not twice, f"{party.name}: payments resolved twice: {twice}"
        own = party.node.db.read_sync(lambda conn: ledger.events_after(conn, 0))
        assert [e.sequence for e in own] == list(range(1, len(own) + 1))
        per_payment: dict[str, int] = {}
        for event in own:
            if event.kind in ("payment_succeeded", "payment_failed") and event.payment_id:
                per_payment[event.payment_id] = per_payment.get(event.payment_id, 0) + 1
        mine = [r for r in party.node.payments() if r["direction"] == ledger.SENT]
        assert sorted(per_payment) == sorted(r["payment_id"] for r in mine)
        assert set(per_payment.values()) <= {1}
        # The hub told the payer only of its own payments, each once (checked above).
        strangers = set(hashes) - {r["payment_hash"] for r in mine}
        assert not strangers, f"{party.name}: told of payments not its own: {strangers}"


