"""Pay's max_fee_msat (refused before any HTLC, nothing recorded, exact at the boundary)
and timeout_seconds (the wait for the channel to the hub before the HTLC is offered),
through the SDK over a real hub in-process; the gRPC status of the new errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from client import errors, ledger
from client.node import ClientNode
from client.sdk import AsyncHubClient
from protocol.driver.db import sqlite_url
from protocol.driver.link import FrameLink, memory_link_pair
from protocol.routing import forwarding_fee_msat
from regtest.node import Node
from tests.client.world import World

AMOUNT_MSAT = 1_234_567  # its proportional fee rounds down: 1,234.567 -> 1,234


def hub_fee(world: World, amount_msat: int) -> int:
    terms = world.terms()
    return forwarding_fee_msat(amount_msat, base_msat=terms.base_fee_msat,
                               fee_ppm=terms.fee_ppm)


def test_the_new_errors_have_their_grpc_status() -> None:
    fee = errors.FeeAboveMaximum("fee", fee_msat=2, max_fee_msat=1)
    assert errors.status_of(fee) is grpc.StatusCode.FAILED_PRECONDITION
    assert (fee.fee_msat, fee.max_fee_msat) == (2, 1)
    assert errors.status_of(errors.RefundDestinationUnknown("who")) is \
        grpc.StatusCode.FAILED_PRECONDITION
    assert errors.status_of(errors.HubUnavailable("down")) is grpc.StatusCode.UNAVAILABLE
    assert errors.status_of(errors.InvoiceError("bad")) is grpc.StatusCode.INVALID_ARGUMENT
    assert errors.status_of(errors.PayeeOffline("gone")) is grpc.StatusCode.ABORTED

    def leaves(cls: type[errors.ChanhubError]) -> list[type[errors.ChanhubError]]:
        return [cls] + [c for sub in cls.__subclasses__() for c in leaves(sub)]
    # every error of the tree has a status of its own line (others fall back to INTERNAL)
    for cls in leaves(errors.ChanhubError)[1:]:
        if cls.__module__ == errors.__name__:
            assert any(base in errors._STATUS_OF for base in cls.__mro__), cls


async def _sdk_world(world: World, nursery: trio.Nursery
                     ) -> tuple[ClientNode, ClientNode, list[FrameLink]]:
    await world.start_hub(nursery)
    bob = world.open_client("bob")
    await world.start_client(nursery, bob)
    await world.open_channel(bob, 1_000_000, 400_000_000)
    alice_node: ClientNode = world.open_client("alice")
    return alice_node, bob, []


async def test_max_fee_exactly_the_fee_pays_one_below_is_refused_with_nothing_recorded(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice_node, bob, hub_links = await _sdk_world(world, nursery)

        async def connect_link() -> FrameLink:
            hub_end, client_end = memory_link_pair()
            hub_links.append(hub_end)
            nursery.start_soon(world.hub.on_peer_link, alice_node.node_id, hub_end)
            return client_end

        async with AsyncHubClient(alice_node, connect_link) as alice:
            await alice.ready()
            await world.open_channel(alice_node, 1_000_000)
            fee = hub_fee(world, AMOUNT_MSAT)
            assert fee == 1_000 + 1_234  # the world's hub: 1,000 msat + 1,000 ppm
            invoice = await bob.add_invoice(AMOUNT_MSAT, "boundary")
            balance = alice_node.balance_msat()
            events = await alice_node.events_after(0)
            stored = alice_node.db.read_sync(ledger.all_payments)
            for max_fee in (fee - 1, 0):
                with pytest.raises(errors.FeeAboveMaximum) as refused:
                    await alice.pay(idempotency_key="k", invoice=invoice, max_fee_msat=max_fee)
                assert (refused.value.fee_msat, refused.value.max_fee_msat) == (fee, max_fee)
                assert str(fee) in str(refused.value)
            with pytest.raises(errors.FeeAboveMaximum):  # spontaneous payments too
                await alice.pay(idempotency_key="s", payee_node_id=bob.node_id,
                                amount_msat=AMOUNT_MSAT, max_fee_msat=fee - 1)
            with pytest.raises(errors.InvalidRequest):
                await alice.pay(idempotency_key="n", invoice=invoice, max_fee_msat=-1)
            # nothing recorded, nothing offered: the key is still free
            await alice_node.session.idle()
            assert alice_node.payments() == []
            assert alice_node.db.read_sync(ledger.all_payments) == stored
            assert await alice_node.events_after(0) == events
            assert alice_node.balance_msat() == balance
            assert all(not d.channel.d.book.htlcs for d in alice_node.open_drivers())
            assert not bob.payments()
            # the same key, a max equal to the fee: paid, and the fee is the one bounded
            paid = await alice.pay(idempotency_key="k", invoice=invoice, max_fee_msat=fee)
            assert paid.state == ledger.SUCCEEDED and paid.fee_msat == fee
            await alice_node.session.idle()
            await world.hub.drain()
            assert alice_node.balance_msat() == balance - AMOUNT_MSAT - fee
            # a refund is bounded the same way
            received = next(p for p in bob.payments() if p["direction"] == ledger.RECEIVED)
            with pytest.raises(errors.FeeAboveMaximum):
                await bob.refund(received["payment_id"], 1_000, idempotency_key="r",
                                 max_fee_msat=hub_fee(world, 1_000) - 1)
            assert [p["direction"] for p in bob.payments()] == [ledger.RECEIVED]
        nursery.cancel_scope.cancel()
    bob.close()
    world.hub.close()


async def test_timeout_bounds_the_wait_for_the_hub_before_the_htlc_is_offered(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        alice, bob = world.open_client("alice"), world.open_client("bob")
        for client, push in ((alice, 0), (bob, 400_000_000)):
            await world.start_client(nursery, client)
            await world.open_channel(client, 1_000_000, push)
        await world.disconnect(alice)
        # no timeout: refused at once, as before
        started = trio.current_time()
        with pytest.raises(errors.HubUnavailable):
            await alice.pay(idempotency_key="now", payee_node_id=bob.node_id,
                            amount_msat=2_000_000)
        assert trio.current_time() == started
        # a timeout the hub does not come back within: refused after it, nothing recorded
        with pytest.raises(errors.HubUnavailable):
            await alice.pay(idempotency_key="later", payee_node_id=bob.node_id,
                            amount_msat=2_000_000, timeout_seconds=5)
        assert trio.current_time() - started >= 5
        assert alice.payments() == [] and "later" not in alice._by_key
        # the hub comes back within the timeout: the HTLC is offered then, and pays
        waited_from = trio.current_time()

        async def reconnect_soon() -> None:
            await trio.sleep(3)
            await world.connect(nursery, alice)

        nursery.start_soon(reconnect_soon)
        # No finite bound here: under the autojumping clock any deadline fires as soon as
        # every task waits, the store's writer thread included, so a 60 s bound could
        # end the reestablish that follows the reconnect (it did, 1 run in 6).
        row = await alice.pay(idempotency_key="later", payee_node_id=bob.node_id,
                              amount_msat=2_000_000, timeout_seconds=math.inf)
        assert trio.current_time() - waited_from >= 3
        done = await alice.wait_payment(row["payment_id"])
        assert done["state"] == ledger.SUCCEEDED, done["failure_message"]
        with pytest.raises(errors.InvalidRequest):
            await alice.pay(idempotency_key="neg", payee_node_id=bob.node_id,
                            amount_msat=1, timeout_seconds=-1)
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()
