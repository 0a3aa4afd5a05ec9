"""The tower's gRPC service on loopback with TLS: every call but the challenge needs a
node-key session; a per-client quota refuses (RESOURCE_EXHAUSTED) and stores nothing;
a re-sent locator replaces and costs no quota; malformed appointments are refused;
the store (SQLite and PostgreSQL) survives a restart of the tower."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from channel.chain import BitcoinRpc
from channel.keys import pubkey_from_secret
from client.tower import TowerClient, TowerError
from client.transport import HubPin, HubTransport
from hub.tower import TowerService, TowerSettings
from proto import client_pb2, tower_pb2, tower_pb2_grpc
from protocol.driver.grpc_bridge import GrpcBridge, RpcStatusError, open_grpc_bridge
from protocol.driver.wire_auth import SESSION_METADATA_KEY
from regtest.node import Node
from tests.driver.parties import until
from tests.wire.hubfixture import new_node_secret

QUOTA = 2


def appointment(n: int, blob_bytes: int = 100) -> tower_pb2.Appointment:
    return tower_pb2.Appointment(locator=bytes([n]) * 16, nonce=b"\x00" * 12,
                                 encrypted_blob=bytes([n]) * blob_bytes)


async def running(bridge: GrpcBridge, rpc: BitcoinRpc, data_dir: Path,
                  nursery: trio.Nursery, store_url: str | None = None) -> TowerService:
    tower = TowerService(TowerSettings(data_dir, listen_port=0, max_appointments_per_client=QUOTA,
                                       max_blob_bytes=1_000, store_url=store_url),
                         rpc, bridge, run_follower=False)
    await nursery.start(tower.run)
    return tower


@pytest.fixture
async def rpc(regtest_rpc: Any, autojump_clock: Any) -> AsyncIterator[BitcoinRpc]:
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as client:
        yield client


async def connect(bridge: GrpcBridge, tower: TowerService,
                  node_secret: bytes | None = None) -> HubTransport:
    return await HubTransport.connect(
        bridge, f"127.0.0.1:{tower.port}", node_secret=node_secret or new_node_secret(),
        pin=HubPin(cert_pem=tower.tls.cert_pem), expected_hub_node_id=tower.node_id,
        call_timeout_seconds=None, stub_factory=tower_pb2_grpc.TowerStub)


async def raw_call(bridge: GrpcBridge, tower: TowerService, method: str, request: Any,
                   metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """One call on a fresh connection, no session of ours: its status code."""
    async def call() -> grpc.StatusCode:
        credentials = grpc.ssl_channel_credentials(root_certificates=tower.tls.cert_pem)
        async with grpc.aio.secure_channel(
                f"127.0.0.1:{tower.port}", credentials,
                options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            stub = tower_pb2_grpc.TowerStub(channel)
            try:
                await getattr(stub, method)(request, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    run: Callable[[], Awaitable[grpc.StatusCode]] = call
    return await bridge.run_in_asyncio(run)


async def refused(code: grpc.StatusCode, call: Awaitable[Any]) -> str:
    with pytest.raises(RpcStatusError) as error:
        await call
    assert error.value.code == code, error.value.details
    return error.value.details


async def test_every_call_needs_a_node_key_session(rpc: BitcoinRpc, regtest_node: Node,
                                                   tmp_path: Path) -> None:
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        tower = await running(bridge, rpc, tmp_path / "tower", nursery)
        for method, request in [("Register", tower_pb2.RegisterRequest()),
                                ("SendAppointment", appointment(1)),
                                ("GetInfo", tower_pb2.GetInfoRequest())]:
            assert await raw_call(bridge, tower, method, request) \
                == grpc.StatusCode.UNAUTHENTICATED
            assert await raw_call(bridge, tower, method, request,
                                  ((SESSION_METADATA_KEY, "00" * 32),)) \
                == grpc.StatusCode.UNAUTHENTICATED
        # a wrong answer to a real challenge
        secret = new_node_secret()
        node_id = pubkey_from_secret(secret)
        challenge = await raw_call(bridge, tower, "GetChallenge",
                                   client_pb2.GetChallengeRequest(client_node_id=node_id))
        assert challenge == grpc.StatusCode.OK
        assert await raw_call(bridge, tower, "Authenticate", client_pb2.AuthenticateRequest(
            client_node_id=node_id, nonce=b"\x00" * 32, signature=b"\x00" * 64)) \
            == grpc.StatusCode.UNAUTHENTICATED
        # a session credential is bound to its connection: another one cannot use it
        transport = await connect(bridge, tower, secret)
        stolen = transport._metadata
        assert await raw_call(bridge, tower, "Register", tower_pb2.RegisterRequest(), stolen) \
            == grpc.StatusCode.UNAUTHENTICATED
        assert tower.store is not None and await tower.store.account(node_id) is None
        await transport.aclose()
        nursery.cancel_scope.cancel()


async def test_quota_refuses_and_stores_nothing(rpc: BitcoinRpc, regtest_node: Node,
                                                tmp_path: Path, store_url: str) -> None:
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        tower = await running(bridge, rpc, tmp_path / "tower", nursery, store_url)
        secret = new_node_secret()
        transport = await connect(bridge, tower, secret)
        details = await refused(grpc.StatusCode.FAILED_PRECONDITION,
                                transport.call("SendAppointment", appointment(1)))
        assert "register" in details
        quota = await transport.call("Register", tower_pb2.RegisterRequest())
        assert (quota.max_appointments, quota.used_appointments) == (QUOTA, 0)
        assert (await transport.call("Register", tower_pb2.RegisterRequest())) == quota
        for n in range(1, QUOTA + 1):
            quota = await transport.call("SendAppointment", appointment(n))
            assert quota.used_appointments == n
        # the same locator again replaces, and costs nothing
        quota = await transport.call("SendAppointment", appointment(1, blob_bytes=50))
        assert quota.used_appointments == QUOTA
        details = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                transport.call("SendAppointment", appointment(QUOTA + 1)))
        assert f"quota of {QUOTA}" in details
        assert tower.store is not None
        assert await tower.store.appointments_for(bytes([QUOTA + 1]) * 16) == []
        assert bytes([QUOTA + 1]) * 16 not in tower.watcher.locators  # type: ignore[union-attr]
        stored = await tower.store.appointments_for(bytes([1]) * 16)
        assert [len(a.encrypted_blob) for a in stored] == [50]

        # another client has its own quota
        other = await connect(bridge, tower)
        await other.call("Register", tower_pb2.RegisterRequest())
        assert (await other.call("SendAppointment", appointment(9))).used_appointments == 1

        # malformed or too large: refused, nothing stored
        await refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      other.call("SendAppointment", appointment(8, blob_bytes=1_001)))
        await refused(grpc.StatusCode.INVALID_ARGUMENT, other.call(
            "SendAppointment", tower_pb2.Appointment(locator=b"\x01" * 15, nonce=b"\x00" * 12,
                                                     encrypted_blob=b"\x00" * 20)))
        await refused(grpc.StatusCode.INVALID_ARGUMENT, other.call(
            "SendAppointment", tower_pb2.Appointment(locator=b"\x01" * 16, nonce=b"\x00" * 24,
                                                     encrypted_blob=b"\x00" * 20)))
        info = await other.call("GetInfo", tower_pb2.GetInfoRequest())
        assert info.registered and info.quota.used_appointments == 1
        assert info.tower_node_id == tower.node_id and info.chain == "regtest"
        assert info.block_height == regtest_node.call("getblockcount")
        await transport.aclose()
        await other.aclose()
        nursery.cancel_scope.cancel()

    # a restarted tower has the same identity, accounts and appointments
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        again = await running(bridge, rpc, tmp_path / "tower", nursery, store_url)
        assert again.node_id == tower.node_id
        assert again.tls.fingerprint_sha256 == tower.tls.fingerprint_sha256
        transport = await connect(bridge, again, secret)
        info = await transport.call("GetInfo", tower_pb2.GetInfoRequest())
        assert info.registered and info.quota.used_appointments == QUOTA
        assert again.watcher is not None and bytes([2]) * 16 in again.watcher.locators
        await transport.aclose()
        nursery.cancel_scope.cancel()


async def test_an_appointment_the_tower_never_takes_does_not_block_the_rest(
        rpc: BitcoinRpc, regtest_node: Node, tmp_path: Path) -> None:
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        tower = await running(bridge, rpc, tmp_path / "tower", nursery)
        client = TowerClient(bridge, f"127.0.0.1:{tower.port}", node_secret=new_node_secret(),
                             pin=HubPin(cert_pem=tower.tls.cert_pem),
                             outbox_dir=tmp_path / "outbox", call_timeout_seconds=None)
        await client.enqueue(appointment(1, blob_bytes=1_001))  # above max_blob_bytes
        await client.enqueue(tower_pb2.Appointment(locator=b"\x02" * 15, nonce=b"\x00" * 12,
                                                   encrypted_blob=b"\x00" * 20))  # malformed
        await client.enqueue(appointment(3))
        assert await client.flush() == 1
        assert len(client.outbox) == 0
        refused_files = sorted(p.name for p in (tmp_path / "outbox").glob("*.refused"))
        assert len(refused_files) == 2
        assert tower.store is not None
        assert len(await tower.store.appointments_for(bytes([3]) * 16)) == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_the_client_service_delivers_what_is_queued_while_it_runs(
        rpc: BitcoinRpc, regtest_node: Node, tmp_path: Path) -> None:
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        tower = await running(bridge, rpc, tmp_path / "tower", nursery)
        client = TowerClient(bridge, f"127.0.0.1:{tower.port}", node_secret=new_node_secret(),
                             pin=HubPin(cert_pem=tower.tls.cert_pem),
                             outbox_dir=tmp_path / "outbox", call_timeout_seconds=None)
        await nursery.start(client.run)
        await client.enqueue(appointment(1))
        await until(lambda: client.sent == 1)
        await client.enqueue(appointment(2))
        await until(lambda: client.sent == 2)
        assert len(client.outbox) == 0 and client.quota is not None
        assert client.quota.used_appointments == 2
        nursery.cancel_scope.cancel()


async def test_a_tower_that_is_not_the_pinned_one_gets_nothing(
        rpc: BitcoinRpc, regtest_node: Node, tmp_path: Path) -> None:
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        tower = await running(bridge, rpc, tmp_path / "tower", nursery)
        wrong_node_id = pubkey_from_secret(new_node_secret())
        for n, (pin, node_id) in enumerate([
                (HubPin(cert_pem=tower.tls.cert_pem), wrong_node_id),
                (HubPin.from_fingerprint("ab" * 32), tower.node_id)]):
            client = TowerClient(bridge, f"127.0.0.1:{tower.port}",
                                 node_secret=new_node_secret(), pin=pin,
                                 outbox_dir=tmp_path / f"outbox{n}",
                                 expected_tower_node_id=node_id, call_timeout_seconds=None)
            await client.enqueue(appointment(1))
            with pytest.raises(TowerError, match="not the pinned tower") as error:
                await client.flush()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert len(client.outbox) == 1
        assert tower.store is not None and await tower.store.appointments_for(b"\x01" * 16) == []
        nursery.cancel_scope.cancel()
