"""SDK parties paying each other through a real hub: invoices, idempotency, refusals,
refunds, restart, and the event log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from client import errors, ledger
from client.node import ClientNode
from protocol.driver.db import sqlite_url
from protocol.routing import FailureCode
from regtest.node import Node
from tests.client.world import World

FUNDING_SAT = 1_000_000
PUSH_MSAT = 400_000_000  # Bob's channel gives the hub liquidity toward him


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "hub.sqlite")
    url: str = request.getfixturevalue("postgres_url")
    return url


def fee(amount_msat: int) -> int:
    return 1_000 + amount_msat * 1_000 // 1_000_000


async def setup(world: World, nursery: trio.Nursery) -> tuple[ClientNode, ClientNode]:
    await world.start_hub(nursery)
    alice, bob = world.open_client("alice"), world.open_client("bob")
    for client, push in ((alice, 0), (bob, PUSH_MSAT)):
        await world.start_client(nursery, client)
        await world.open_channel(client, FUNDING_SAT, push)
    return alice, bob


async def test_pay_invoice_once_per_key_and_refuse_a_second_payment(
        hub_url: str, regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, hub_url)
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        a0, b0 = alice.balance_msat(), bob.balance_msat()
        bolt11 = await bob.add_invoice(50_000_000, "coffee")
        started = await alice.pay(idempotency_key="k1", bolt11=bolt11)
        done = await alice.wait_payment(started["payment_id"])
        assert done["state"] == ledger.SUCCEEDED and len(done["payment_preimage"]) == 32
        assert done["fee_msat"] == fee(50_000_000)
        # the same key: the same payment, nothing sent again
        again = await alice.pay(idempotency_key="k1", bolt11=bolt11)
        assert again["payment_id"] == started["payment_id"]
        # a new key for a paid invoice: refused here, nothing sent
        with pytest.raises(errors.AlreadyPaid):
            await alice.pay(idempotency_key="k2", bolt11=bolt11)
        await alice.session.idle()
        await bob.session.idle()
        await world.hub.drain()
        assert alice.balance_msat() == a0 - 50_000_000 - fee(50_000_000)
        assert bob.balance_msat() == b0 + 50_000_000
        kinds = [e.kind for e in await bob.events_after(0)]
        assert kinds.count("invoice_paid") == 1
        seqs = [e.sequence for e in await alice.events_after(0)]
        assert seqs == list(range(1, len(seqs) + 1))
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


async def test_refusals_change_nothing(
        hub_url: str, regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, hub_url)
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        a0 = alice.balance_msat()
        with pytest.raises(errors.InsufficientBalance):
            await alice.pay(idempotency_key="big", bolt11=await bob.add_invoice(
                FUNDING_SAT * 1000, "too much"))
        with pytest.raises(errors.InvoiceError):
            await alice.pay(idempotency_key="junk", bolt11="lnbcrt1notaninvoice")
        expiring = await bob.add_invoice(1_000_000, "soon", expiry_seconds=1)
        now = alice.clock
        alice.clock = lambda: 2**40  # far future: the invoice has expired
        with pytest.raises(errors.InvoiceError):
            await alice.pay(idempotency_key="late", bolt11=expiring)
        assert "big" not in alice._by_key and "late" not in alice._by_key
        assert alice.balance_msat() == a0
        # payee offline: the hub fails it back, typed
        await world.disconnect(bob)
        alice.clock = now
        started = await alice.pay(idempotency_key="offline",
                                  bolt11=await bob.add_invoice(1_000_000, "offline"))
        done = await alice.wait_payment(started["payment_id"])
        assert done["state"] == ledger.FAILED
        assert done["failure_code"] == FailureCode.PAYEE_OFFLINE
        await alice.session.idle()
        await world.hub.drain()
        assert alice.balance_msat() == a0
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


async def test_refund_partial_then_more_than_received_refused(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        bolt11 = await bob.add_invoice(300_000_000, "refundable")
        sent = await alice.wait_payment(
            (await alice.pay(idempotency_key="r", bolt11=bolt11))["payment_id"])
        assert sent["state"] == ledger.SUCCEEDED
        received = next(p for p in bob.payments() if p["direction"] == ledger.RECEIVED)
        refund = await bob.refund(received["payment_id"], 4_000_000, idempotency_key="ref1",
                                  payer_node_id=alice.node_id)
        refunded = await bob.wait_payment(refund["payment_id"])
        assert refunded["state"] == ledger.SUCCEEDED, refunded["failure_message"]
        assert refunded["refund_of_payment_id"] == received["payment_id"]
        with pytest.raises(errors.RefundExceedsReceived):
            await bob.refund(received["payment_id"], 296_000_001, idempotency_key="ref2",
                             payer_node_id=alice.node_id)
        assert "refund_received" in [e.kind for e in await alice.events_after(0)]
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


async def test_restart_restores_from_the_store_and_keeps_paying(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        bolt11 = await bob.add_invoice(10_000_000, "before restart")
        sent = await alice.wait_payment(
            (await alice.pay(idempotency_key="r", bolt11=bolt11))["payment_id"])
        # Alice restarts from her store and pays again
        await alice.session.idle()
        cursor = (await alice.events_after(0))[-1].sequence
        await world.stop_client(alice)
        with pytest.raises(errors.StoreLocked):
            held = world.open_client("bob")  # the second opener of a store is refused
            held.close()
        alice = world.open_client("alice")
        await world.start_client(nursery, alice)
        assert alice.payments()[0]["state"] == ledger.SUCCEEDED
        again = await alice.pay(idempotency_key="r", bolt11=bolt11)
        assert again["payment_id"] == sent["payment_id"]  # the key survived the restart
        bolt11b = await bob.add_invoice(2_000_000, "after restart")
        after = await alice.wait_payment(
            (await alice.pay(idempotency_key="r2", bolt11=bolt11b))["payment_id"])
        assert after["state"] == ledger.SUCCEEDED
        events = await alice.events_after(cursor)
        assert events and events[0].sequence == cursor + 1
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()
