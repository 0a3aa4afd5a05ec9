"""The hub crashes mid-payment and restarts from its store: every forward is
reconciled, nobody loses a millisatoshi, and the event log has no gap and no
duplicate across the restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from hub import ledger
from proto import client_pb2
from protocol.driver.db import sqlite_url
from protocol.driver.link import LinkClosed
from protocol.routing import FailureCode, FailureReport
from regtest.node import Node
from tests.hub.parties import Net
from tests.hub.test_routing import FUNDING_SAT, PUSH_MSAT, fee


class Collector:
    """An EventSender: keeps what it is sent; ``closed`` makes it raise LinkClosed."""

    def __init__(self) -> None:
        self.events: list[client_pb2.Event] = []
        self.closed = False
        self.changed = trio.Event()

    async def send(self, message: client_pb2.Event) -> None:
        if self.closed:
            raise LinkClosed("gone")
        self.events.append(message)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.events) < count:
            await self.changed.wait()


async def test_restart_with_the_payee_holding_then_settling(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        a0, b0 = alice.balance_msat(), bob.balance_msat()
        bob.online_payee = False  # Bob sits on what he receives
        held = [alice.pay(bob, 7_000_000 + i, f"held {i}") for i in range(5)]
        await bob.wait_for(lambda: sum(len(d.channel.received_htlcs())
                                       for d in bob.session.drivers) == 5)
        in_flight = await net.hub.db.read(ledger.load_in_flight)
        assert len(in_flight) == 5
        await net.restart_hub(nursery)
        assert len(net.hub.router.by_outgoing) == 5  # reconciled: still pending at Bob
        bob.online_payee = True
        await bob.session.idle()
        # Bob's link came back after reestablish; now he settles what he held.
        await net.link_up(bob)
        bob.settle_held()
        await alice.wait_for(lambda: all(h in alice.outcomes for h in held))
        assert all(alice.outcomes[h] == bob.issued[h][0] for h in held)
        await net.hub.drain()
        await alice.session.idle()
        await bob.session.idle()
        paid = sum(7_000_000 + i for i in range(5))
        fees = sum(fee(7_000_000 + i) for i in range(5))
        assert alice.balance_msat() == a0 - paid - fees
        assert bob.balance_msat() == b0 + paid
        records = await net.hub.db.read(lambda c: ledger.list_forwards(c, limit=100))
        assert [r.state for r in records] == [ledger.SUCCEEDED] * 5
        nursery.cancel_scope.cancel()
    net.hub.close()


async def test_restart_with_the_payee_gone_fails_back_and_events_have_no_gap(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        a0 = alice.balance_msat()
        first = Collector()
        nursery.start_soon(net.hub.subscribe_events, alice.node_id,
                           client_pb2.SubscribeEventsRequest(after_sequence=0), first)
        ok = alice.pay(bob, 9_000_000, "before")
        await alice.wait_for(lambda: ok in alice.outcomes)
        await first.wait_for(2)  # channel_opened, payment_succeeded
        assert [e.sequence for e in first.events] == [1, 2]
        assert first.events[0].WhichOneof("body") == "channel_opened"
        assert first.events[1].payment_succeeded.payment.payment_preimage == alice.outcomes[ok]
        first.closed = True
        bob.online_payee = False
        held = alice.pay(bob, 8_000_000, "held")
        await bob.wait_for(lambda: bool(bob.session.drivers[0].channel.received_htlcs()))
        # The hub crashes; Bob never comes back (his HTLC is not settled by him).
        net.clients.pop("bob")
        await net.restart_hub(nursery)
        await net.link_up(alice)
        second = Collector()
        nursery.start_soon(net.hub.subscribe_events, alice.node_id,
                           client_pb2.SubscribeEventsRequest(after_sequence=2), second)
        # The outgoing HTLC is still on Bob's channel: the hub must not fail Alice's
        # back while Bob could still claim it.
        await net.hub.drain()
        assert held not in alice.outcomes
        # A new payment while Bob is offline fails at once, typed.
        offline = alice.pay(bob, 1_000_000, "offline")
        await alice.wait_for(lambda: offline in alice.outcomes)
        report = alice.outcomes[offline]
        assert isinstance(report, FailureReport)
        assert report.failure.code is FailureCode.PAYEE_OFFLINE
        await second.wait_for(1)
        assert [e.sequence for e in second.events] == [3]
        assert second.events[0].payment_failed.payment.failure_reason == (
            client_pb2.FAILURE_REASON_PAYEE_OFFLINE)
        await net.hub.drain()
        await alice.session.idle()
        # Alice paid the first payment and its fee; the held one is still locked.
        assert alice.balance_msat() == a0 - 9_000_000 - fee(9_000_000) - 8_000_000 - fee(
            8_000_000)
        nursery.cancel_scope.cancel()
    net.hub.close()
