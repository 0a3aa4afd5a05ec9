"""A real gRPC edge on loopback, with real TLS and authentication, in front of a small
recording service (the hub's business logic is not under test here, the wire is).

``RecordingHubService`` implements ``hub.edge.HubService``: it records every call with
the authenticated caller, keeps each peer link it is handed so a test can drive the
hub's end, and serves events from an in-memory per-client log.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from channel.keys import pubkey_from_secret
from client.transport import HubPin, HubTransport
from hub.auth import AdminCredential, Authenticator
from hub.config import HubConfig
from hub.daemon import HubApplication
from hub.edge import AdminService, EdgeConfig, EventSender, GrpcEdge, PermissionDeniedError
from hub.tls import TlsIdentity, load_or_create_tls
from proto import admin_pb2, client_pb2
from protocol.driver.grpc_bridge import GrpcBridge, open_grpc_bridge
from protocol.driver.link import FrameLink, LinkClosed


def new_node_secret() -> bytes:
    while True:
        secret = secrets.token_bytes(32)
        try:
            pubkey_from_secret(secret)
            return secret
        except ValueError:
            continue


@dataclass
class RecordingHubService:
    hub_node_id: bytes
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    links: dict[bytes, FrameLink] = field(default_factory=dict)
    link_arrived: trio.Event = field(default_factory=trio.Event)
    links_opened: int = 0
    channel_owner: dict[bytes, bytes] = field(default_factory=dict)  # channel_id -> node
    events: dict[bytes, list[client_pb2.Event]] = field(default_factory=dict)
    read_links: bool = True  # False: hold links without reading (backpressure tests)
    received: dict[bytes, list[object]] = field(default_factory=dict)
    frame_received: trio.Event = field(default_factory=trio.Event)
    get_info_gate: trio.Event | None = None  # set: get_info waits for it (in-flight tests)
    get_info_entered: trio.Event = field(default_factory=trio.Event)

    async def get_info(self, client_node_id: bytes) -> client_pb2.GetInfoResponse:
        self.calls.append(("get_info", client_node_id))
        self.get_info_entered.set()
        if self.get_info_gate is not None:
            await self.get_info_gate.wait()
        return client_pb2.GetInfoResponse(hub_node_id=self.hub_node_id, chain="regtest",
                                          peer_link_open=client_node_id in self.links)

    async def request_inbound(self, client_node_id: bytes,
                              request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder:
        self.calls.append(("request_inbound", client_node_id))
        return client_pb2.InboundOrder(order_id="o-" + client_node_id.hex()[:8],
                                       request=request)

    async def get_inbound_order(self, client_node_id: bytes,
                                request: client_pb2.GetInboundOrderRequest
                                ) -> client_pb2.InboundOrder:
        self.calls.append(("get_inbound_order", client_node_id))
        return client_pb2.InboundOrder(order_id=request.order_id)

    async def list_channels(self, client_node_id: bytes,
                            request: client_pb2.ListChannelsRequest
                            ) -> client_pb2.ListChannelsResponse:
        self.calls.append(("list_channels", client_node_id))
        return client_pb2.ListChannelsResponse(channels=[
            client_pb2.Channel(channel_id=channel_id, client_node_id=owner)
            for channel_id, owner in self.channel_owner.items() if owner == client_node_id])

    async def list_payments(self, client_node_id: bytes,
                            request: client_pb2.ListPaymentsRequest
                            ) -> client_pb2.ListPaymentsResponse:
        self.calls.append(("list_payments", client_node_id))
        # A cursor naming another client's data: what a service must refuse.
        if request.cursor and request.cursor != client_node_id.hex():
            raise PermissionDeniedError("cursor of another client")
        return client_pb2.ListPaymentsResponse()

    async def subscribe_events(self, client_node_id: bytes,
                               request: client_pb2.SubscribeEventsRequest,
                               events: EventSender) -> None:
        self.calls.append(("subscribe_events", client_node_id))
        try:
            for event in self.events.get(client_node_id, []):
                if event.sequence > request.after_sequence:
                    await events.send(event)
            await trio.sleep_forever()
        except LinkClosed:
            return

    async def on_peer_link(self, client_node_id: bytes, link: FrameLink) -> None:
        self.links[client_node_id] = link
        self.links_opened += 1
        self.link_arrived.set()
        self.link_arrived = trio.Event()
        if not self.read_links:
            await trio.sleep_forever()
        try:
            while True:
                frame = await link.receive()
                self.received.setdefault(client_node_id, []).append(frame)
                self.frame_received.set()
                self.frame_received = trio.Event()
        except LinkClosed:
            if self.links.get(client_node_id) is link:
                del self.links[client_node_id]


@dataclass
class RecordingAdminService:
    calls: list[str] = field(default_factory=list)

    async def get_info(self) -> admin_pb2.GetInfoResponse:
        self.calls.append("get_info")
        return admin_pb2.GetInfoResponse(client_count=7)

    async def list_clients(self, request: admin_pb2.ListClientsRequest
                           ) -> admin_pb2.ListClientsResponse:
        self.calls.append("list_clients")
        return admin_pb2.ListClientsResponse()

    async def list_channels(self, request: admin_pb2.ListChannelsRequest
                            ) -> client_pb2.ListChannelsResponse:
        self.calls.append("list_channels")
        return client_pb2.ListChannelsResponse()

    async def list_payments(self, request: admin_pb2.ListPaymentsRequest
                            ) -> admin_pb2.ListPaymentsResponse:
        self.calls.append("list_payments")
        return admin_pb2.ListPaymentsResponse()

    async def set_fee_policy(self, request: admin_pb2.SetFeePolicyRequest
                             ) -> client_pb2.FeePolicy:
        self.calls.append("set_fee_policy")
        return request.fee_policy

    async def close_channel(self, request: client_pb2.CloseChannelRequest
                            ) -> client_pb2.CloseChannelResponse:
        self.calls.append("close_channel")
        return client_pb2.CloseChannelResponse()


@dataclass
class RunningHub:
    bridge: GrpcBridge
    edge: GrpcEdge
    tls: TlsIdentity
    service: RecordingHubService
    admin: RecordingAdminService
    admin_secret: str
    hub_node_id: bytes
    clock: list[float]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.edge.port}"

    @property
    def pin(self) -> HubPin:
        return HubPin(cert_pem=self.tls.cert_pem)

    async def connect(self, node_secret: bytes | None = None, **kwargs: object) -> HubTransport:
        return await HubTransport.connect(
            self.bridge, self.target, node_secret=node_secret or new_node_secret(),
            pin=self.pin, expected_hub_node_id=self.hub_node_id, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def running_hub(data_dir: Path, config: EdgeConfig | None = None,
                      admin_service: AdminService | None = None) -> AsyncIterator[RunningHub]:
    """An edge on an ephemeral loopback port; the fake clock (Unix seconds) drives the
    authenticator's expiries."""
    hub_secret = new_node_secret()
    hub_node_id = pubkey_from_secret(hub_secret)
    tls = load_or_create_tls(data_dir / "tls.cert", data_dir / "tls.key")
    admin_credential = AdminCredential.load_or_create(data_dir / "admin.credential")
    clock = [1_800_000_000.0]
    authenticator = Authenticator(hub_node_id, clock=lambda: clock[0])
    service = RecordingHubService(hub_node_id)
    admin = RecordingAdminService()
    async with open_grpc_bridge() as bridge, trio.open_nursery() as nursery:
        edge = GrpcEdge(bridge=bridge, tls=tls, authenticator=authenticator,
                        admin_credential=admin_credential, hub_service=service,
                        admin_service=admin_service or admin, config=config)
        await nursery.start(edge.run)
        try:
            yield RunningHub(bridge, edge, tls, service, admin,
                             (data_dir / "admin.credential").read_text().strip(),
                             hub_node_id, clock)
        finally:
            await edge.stop()


@dataclass
class RecordingService:
    """A ``hub.daemon.Service`` that records its start and drain."""

    name: str
    log: list[str]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.log.append(f"start {self.name}")
        task_status.started()
        await trio.sleep_forever()

    async def drain(self) -> None:
        self.log.append(f"drain {self.name}")


@asynccontextmanager
async def open_test_application(config: HubConfig, tls: TlsIdentity
                                ) -> AsyncIterator[HubApplication]:
    """An ``ApplicationFactory`` around the recording services (for daemon tests,
    in process and as ``python -m hub --application tests.wire.hubfixture:...``)."""
    hub_node_id = pubkey_from_secret(new_node_secret())
    log: list[str] = []
    yield HubApplication(hub_node_id, RecordingHubService(hub_node_id),
                         RecordingAdminService(),
                         [RecordingService("store", log), RecordingService("router", log)])


@dataclass
class StuckDrain:
    """A service whose drain never ends (the second-signal test)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def drain(self) -> None:
        print("drain stuck", file=sys.stderr, flush=True)
        await trio.sleep_forever()


@asynccontextmanager
async def open_stuck_application(config: HubConfig, tls: TlsIdentity
                                 ) -> AsyncIterator[HubApplication]:
    hub_node_id = pubkey_from_secret(new_node_secret())
    yield HubApplication(hub_node_id, RecordingHubService(hub_node_id),
                         RecordingAdminService(), [StuckDrain()])
