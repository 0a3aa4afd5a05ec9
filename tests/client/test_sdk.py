"""AsyncHubClient over a real hub: typed results and errors, reconnect by itself,
events gapless across a reconnect; the error mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from client import errors, ledger
from client.node import ClientNode
from client.sdk import AsyncHubClient
from protocol.driver.db import sqlite_url
from protocol.driver.grpc_bridge import RpcStatusError
from protocol.driver.link import FrameLink, memory_link_pair
from protocol.routing import Failure, FailureCode, FailureOrigin, FailureReport
from regtest.node import Node
from tests.client.world import World


def test_status_codes_and_failures_map_to_the_tree() -> None:
    cases = {grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
             grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
             grpc.StatusCode.UNAVAILABLE: errors.HubUnavailable,
             grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
             grpc.StatusCode.INTERNAL: errors.InternalError}
    for code, cls in cases.items():
        mapped = errors.from_status(RpcStatusError(code, "why"))
        assert type(mapped) is cls and "why" in str(mapped)
    report = FailureReport(FailureOrigin.HUB, Failure(FailureCode.PAYEE_OFFLINE))
    assert isinstance(errors.from_failure(report), errors.PayeeOffline)
    with pytest.raises(errors.AuthenticationError), errors.translate():
        raise RpcStatusError(grpc.StatusCode.UNAUTHENTICATED, "no session")


async def test_sdk_pays_reconnects_and_events_are_gapless(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        await world.start_hub(nursery)
        bob = world.open_client("bob")
        await world.start_client(nursery, bob)
        await world.open_channel(bob, 1_000_000, 400_000_000)
        alice_node: ClientNode = world.open_client("alice")
        hub_links: list[FrameLink] = []

        async def connect_link() -> FrameLink:
            hub_end, client_end = memory_link_pair()
            hub_links.append(hub_end)
            nursery.start_soon(world.hub.on_peer_link, alice_node.node_id, hub_end)
            return client_end

        async with AsyncHubClient(alice_node, connect_link) as alice:
            await alice.ready()
            await world.open_channel(alice_node, 1_000_000)
            paid = await alice.pay(idempotency_key="a",
                                   invoice=await bob.add_invoice(5_000_000, "tea"))
            assert paid.state == ledger.SUCCEEDED and paid.fee_msat == 1_000 + 5_000
            seen = [e.sequence async for e in _take(alice.subscribe_events(0), 2)]
            # the hub drops the link: the SDK reconnects by itself and keeps paying
            await hub_links[-1].aclose()
            while alice.reconnects == 0:
                await trio.sleep(0.01)
            await alice.ready()
            again = await alice.pay(idempotency_key="b",
                                    invoice=await bob.add_invoice(6_000_000, "more tea"))
            assert again.state == ledger.SUCCEEDED
            later = [e.sequence async for e in _take(alice.subscribe_events(seen[-1]), 1)]
            assert later == [seen[-1] + 1]
            await world.disconnect(bob)
            with pytest.raises(errors.PayeeOffline):
                await alice.pay(idempotency_key="c",
                                invoice=await bob.add_invoice(1_000_000, "offline"))
            assert (await alice.get_balance()).open_channels == 1
        nursery.cancel_scope.cancel()
    bob.close()
    world.hub.close()


async def _take(events: Any, n: int) -> Any:
    async for event in events:
        yield event
        n -= 1
        if n == 0:
            return
