"""A payee's received HTLCs that were not answered when they arrived: after a restart
they are answered once the channel is re-established (an answer while the link is
still reestablishing is refused by the channel), and a fulfill refused after the
receipt is stored neither escapes the event handler nor loses the receipt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from client import ledger
from client.node import ClientNode
from protocol.actions import Event, HtlcReceived
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.table import ChannelState
from regtest.node import Node
from tests.client.test_payments import setup
from tests.client.world import World
from tests.driver.parties import until

AMOUNT_MSAT = 10_000_000


async def restart(world: World, nursery: trio.Nursery, client: ClientNode) -> None:
    """``World.start_client``, waiting for the reestablish with ``until`` (real-time
    bound): ``ready``'s trio-time bound passes early under autojump while the hub's
    store writes run in their thread."""
    run_scope = world.run_scopes[client.node_id] = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with run_scope:
            await client.run(task_status=task_status)

    await nursery.start(run)
    await world.connect(nursery, client)
    await until(lambda: client.session.connected and client.channels_up())


def received(client: ClientNode) -> list[dict[str, Any]]:
    return [p for p in client.payments() if p["direction"] == ledger.RECEIVED]


@pytest.mark.parametrize("receipt_stored", [True, False])
async def test_a_payee_restarted_with_a_held_htlc_answers_it_after_reestablish(
        receipt_stored: bool, regtest_node: Node, tmp_path: Path, autojump_clock: Any
) -> None:
    """Bob dies after storing the receipt, his fulfill queued but never committed (or
    before storing it): restarted, he answers once the channel is re-established."""
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        bolt11 = await bob.add_invoice(AMOUNT_MSAT, "held over a restart")
        crashed = trio.Event()
        original = bob.ctx.on_event

        async def crash_on_receipt(driver: ChannelDriver, event: Event) -> None:
            if isinstance(event, HtlcReceived):  # Bob dies before his answer is committed
                if receipt_stored:
                    await original(driver, event)  # receipt durable, fulfill queued
                world.scopes[bob.node_id].cancel()
                world.run_scopes[bob.node_id].cancel()
                crashed.set()
                await trio.sleep_forever()
            await original(driver, event)

        bob.ctx.on_event = crash_on_receipt
        started = await alice.pay(idempotency_key="held", bolt11=bolt11)
        await crashed.wait()
        await until(lambda: not bob.session.connected)
        await until(lambda: not world.hub.sessions[bob.node_id].connected)
        bob.close()
        assert alice.payments()[0]["state"] == ledger.IN_FLIGHT
        # Bob starts again: the HTLC is in his channel, unanswered, and nothing received
        bob = world.open_client("bob")
        assert [h[0] for d in bob.session.drivers for h in d.channel.received_htlcs()] == [0]
        assert len(received(bob)) == (1 if receipt_stored else 0)
        await restart(world, nursery, bob)
        await until(lambda: alice.payments()[0]["state"] != ledger.IN_FLIGHT)
        done = await alice.wait_payment(started["payment_id"])
        assert done["state"] == ledger.SUCCEEDED
        assert [p["amount_msat"] for p in received(bob)] == [AMOUNT_MSAT]
        await bob.session.idle()
        await world.hub.drain()
        assert all(not d.channel.received_htlcs() for d in bob.session.drivers)
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


async def test_a_fulfill_refused_after_the_receipt_is_stored_does_not_escape(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    """The channel fails (the hub's error, our watch's deadline) while the receipt is
    being written: the fulfill is refused; the receipt is kept, Bob's node runs on."""
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        bolt11 = await bob.add_invoice(AMOUNT_MSAT, "failed during the receipt")
        original = bob.ctx.on_event
        failed = trio.Event()

        async def fail_meanwhile(driver: ChannelDriver) -> None:
            driver.fail("the channel failed while the receipt was written")
            failed.set()

        async def receipt_then_failure(driver: ChannelDriver, event: Event) -> None:
            if isinstance(event, HtlcReceived):
                nursery.start_soon(fail_meanwhile, driver)  # runs at the receipt's await
            await original(driver, event)

        bob.ctx.on_event = receipt_then_failure
        await alice.pay(idempotency_key="failing", bolt11=bolt11)
        await failed.wait()
        await until(lambda: len(received(bob)) == 1)
        await bob.session.idle()
        driver = bob.session.drivers[0]
        assert driver.channel.state is ChannelState.FAILED
        assert [(p["amount_msat"], p["state"]) for p in received(bob)] == \
            [(AMOUNT_MSAT, ledger.SUCCEEDED)]
        # the receipt is durable: Bob's store holds it after a restart
        await world.stop_client(bob)
        bob = world.open_client("bob")
        assert [p["amount_msat"] for p in received(bob)] == [AMOUNT_MSAT]
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()
