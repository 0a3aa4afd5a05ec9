"""SDK clients paying through a real HubNode behind the real gRPC edge on loopback:
pinned TLS, node-key authentication, the peer link as the SDK's link. Real time
(the gRPC edge runs on its asyncio thread), bounded by fail_after."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from client import errors, ledger
from client.sdk import AsyncHubClient, GrpcLinks, HubClient, Payment, open_grpc_client
from client.transport import HubPin
from hub.auth import AdminCredential, Authenticator
from hub.edge import GrpcEdge
from hub.tls import load_or_create_tls
from protocol.driver.db import sqlite_url
from protocol.driver.grpc_bridge import open_grpc_bridge
from regtest.node import Node
from tests.client.world import World


async def test_pay_over_grpc_with_tls_and_a_wrong_pin_refused(
        regtest_node: Node, tmp_path: Path) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    with trio.fail_after(60):
        async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
            await world.start_hub(nursery)
            tls = load_or_create_tls(tmp_path / "tls.cert", tmp_path / "tls.key")
            edge = GrpcEdge(bridge=bridge, tls=tls,
                            authenticator=Authenticator(world.hub.hub_node_id),
                            admin_credential=AdminCredential.load_or_create(
                                tmp_path / "admin.credential"),
                            hub_service=world.hub, admin_service=world.hub.admin)
            await nursery.start(edge.run)
            target = f"127.0.0.1:{edge.port}"
            pin = HubPin.from_cert_file(tmp_path / "tls.cert")
            alice_node, bob_node = world.open_client("alice"), world.open_client("bob")
            alice_links = GrpcLinks(bridge, target, node_secret=alice_node.node_secret,
                                    pin=pin, hub_node_id=world.hub.hub_node_id)
            bob_links = GrpcLinks(bridge, target, node_secret=bob_node.node_secret,
                                  pin=pin, hub_node_id=world.hub.hub_node_id)
            assert await alice_links.hub_terms() == world.terms()
            other = load_or_create_tls(tmp_path / "other.cert", tmp_path / "other.key")
            wrong = GrpcLinks(bridge, target, node_secret=alice_node.node_secret,
                              pin=HubPin(cert_pem=other.cert_pem))
            with pytest.raises(errors.HubIdentityError):
                await wrong.connect()
            async with AsyncHubClient(bob_node, bob_links) as bob:
                async with AsyncHubClient(alice_node, alice_links) as alice:
                    await alice.ready()
                    await bob.ready()
                    await world.open_channel(alice_node, 1_000_000)
                    await world.open_channel(bob_node, 1_000_000, 400_000_000)
                    # 20 payments in flight at once (above dust: HTLCs stay on chain)
                    invoices = [await bob.add_invoice(10_000_000 + i, f"grpc {i}")
                                for i in range(20)]
                    paid: list[Payment] = []

                    async def one(i: int) -> None:
                        paid.append(await alice.pay(idempotency_key=f"g{i}",
                                                    invoice=invoices[i]))

                    async with trio.open_nursery() as many:
                        for i in range(20):
                            many.start_soon(one, i)
                    assert all(p.state == ledger.SUCCEEDED for p in paid)
                    received = [p for p in await bob.list_payments()
                                if p.direction == "received"]
                    assert len(received) == 20
                await alice_links.aclose()
                # Alice's process ends; the synchronous SDK reopens her store (restore)
                # in a thread with its own trio loop and bridge, and pays again.
                sync_alice = HubClient(lambda: open_grpc_client(
                    lambda: world.open_client("alice"), target, pin, world.hub.hub_node_id))
                invoice = await bob.add_invoice(7_000_000, "sync")

                def pay_sync() -> Payment:
                    with sync_alice as client:
                        client.ready()
                        assert client.get_balance().open_channels == 1
                        return client.pay(idempotency_key="sync", invoice=invoice)

                assert (await trio.to_thread.run_sync(pay_sync)).state == ledger.SUCCEEDED
            await bob_links.aclose()
            await edge.stop()
            nursery.cancel_scope.cancel()
    world.hub.close()
