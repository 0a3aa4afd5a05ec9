"""The hub's gRPC edge: the Hub and Admin services of proto/, over TLS, with every
caller authenticated, delegating to trio-side service objects.

Theory of operation. ``GrpcEdge.run`` starts a ``grpc.aio`` server on the bridge's
asyncio loop (``protocol.driver.grpc_bridge``; one loop thread for the whole process,
no thread per client). Each rpc handler runs on that loop and does only three things:

1. authenticate: the challenge/answer rpcs are answered right there by
   ``hub.auth.Authenticator`` (no business logic involved); every other Hub rpc needs
   a session credential bound to its connection, every Admin rpc the admin
   credential. A refusal aborts the call with UNAUTHENTICATED (RESOURCE_EXHAUSTED
   when the challenge table is full) before anything crosses into trio, so it
   changes nothing;
2. cross into trio: unary rpcs await the matching ``HubService`` / ``AdminService``
   method, run as a trio task (``GrpcBridge.run_in_trio``), with the caller's node id
   as first argument; the method's ``RpcStatusError`` (``InvalidArgument``,
   ``NotFound``, ... below) becomes the call's status, any other exception INTERNAL
   (logged, details withheld);
3. stream: ``PeerLink`` hands a ``BridgedStream`` (a ``FrameLink``) to
   ``HubService.on_peer_link(client_node_id, link)``, a trio task that owns the link
   until it returns; ``SubscribeEvents`` hands an ``EventSender`` to
   ``HubService.subscribe_events``. Both are pumped on the loop with a credit window.
   A second link from the same client replaces (aborts) the first, so a client that
   reconnects before the hub noticed its old connection died is not refused.

Shutdown (``stop``, on SIGTERM): stop accepting calls and connections, close every
link and subscription (what was queued is still flushed), give in-flight unary calls
``grace_seconds`` to finish, then abort what remains.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from hub.auth import (
    AdminCredential,
    Authenticator,
    AuthError,
    PermissionDenied,
    TooManyChallenges,
)
from hub.tls import TlsIdentity
from proto import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, peer_pb2
from protocol.driver.grpc_bridge import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_WINDOW_MESSAGES,
    BridgeClosed,
    BridgedStream,
    GrpcBridge,
    RpcStatusError,
    StreamAborted,
    grpc_options,
)
from protocol.driver.link import FrameLink
from protocol.driver.wire_auth import ADMIN_METADATA_KEY, SESSION_METADATA_KEY

log = logging.getLogger(__name__)

T = TypeVar("T")

# ----------------------------------------------------------------------------------
# What the hub's business logic implements (router, payments, channels, store).
# ----------------------------------------------------------------------------------


class EventSender(Protocol):
    """A subscriber's stream: ``send`` waits while the subscriber is slow (credit
    window) and raises ``LinkClosed`` once it is gone."""

    async def send(self, message: client_pb2.Event) -> None: ...


class HubService(Protocol):
    """The Hub service's business logic, run in trio. ``client_node_id`` is always
    the authenticated caller; a request naming something of another client's must
    raise ``PermissionDeniedError``."""

    async def get_info(self, client_node_id: bytes) -> client_pb2.GetInfoResponse: ...

    async def request_inbound(self, client_node_id: bytes,
                              request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder: ...

    async def get_inbound_order(self, client_node_id: bytes,
                                request: client_pb2.GetInboundOrderRequest
                                ) -> client_pb2.InboundOrder: ...

    async def list_channels(self, client_node_id: bytes,
                            request: client_pb2.ListChannelsRequest
                            ) -> client_pb2.ListChannelsResponse: ...

    async def list_payments(self, client_node_id: bytes,
                            request: client_pb2.ListPaymentsRequest
                            ) -> client_pb2.ListPaymentsResponse: ...

    async def subscribe_events(self, client_node_id: bytes,
                               request: client_pb2.SubscribeEventsRequest,
                               events: EventSender) -> None:
        """Send the stored events after ``request.after_sequence``, then live ones,
        until ``events.send`` raises ``LinkClosed`` (then return). Cancelled when the
        subscriber goes away, so it holds no state that a cancellation would break."""

    async def on_peer_link(self, client_node_id: bytes, link: FrameLink) -> None:
        """Own the client's peer link until it ends (``LinkClosed``) or is replaced;
        returning closes it."""


class AdminService(Protocol):
    """The Admin service's business logic, run in trio (the caller is the operator)."""

    async def get_info(self) -> admin_pb2.GetInfoResponse: ...

    async def list_clients(self, request: admin_pb2.ListClientsRequest
                           ) -> admin_pb2.ListClientsResponse: ...

    async def list_channels(self, request: admin_pb2.ListChannelsRequest
                            ) -> client_pb2.ListChannelsResponse: ...

    async def list_payments(self, request: admin_pb2.ListPaymentsRequest
                            ) -> admin_pb2.ListPaymentsResponse: ...

    async def set_fee_policy(self, request: admin_pb2.SetFeePolicyRequest
                             ) -> client_pb2.FeePolicy: ...

    async def close_channel(self, request: client_pb2.CloseChannelRequest
                            ) -> client_pb2.CloseChannelResponse: ...

    async def new_wallet_address(self) -> admin_pb2.NewWalletAddressResponse: ...

    async def get_wallet_balance(self) -> admin_pb2.WalletBalance: ...


# The errors a service method raises to answer with a status (one class per code).


class InvalidArgument(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, details)


class NotFound(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, details)


class AlreadyExists(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.ALREADY_EXISTS, details)


class FailedPrecondition(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details)


class PermissionDeniedError(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.PERMISSION_DENIED, details)


class ResourceExhausted(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, details)


class Unavailable(RpcStatusError):
    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, details)


# ----------------------------------------------------------------------------------
# The edge.
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0 = any free port (tests); chanhubd's default is in config
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_messages_per_frame: int = 1024
    window_messages: int = DEFAULT_WINDOW_MESSAGES
    grace_seconds: float = 5.0
    max_concurrent_streams: int = 16


def _metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


async def _abort_auth(context: grpc.aio.ServicerContext[Any, Any], error: AuthError) -> None:
    if isinstance(error, PermissionDenied):
        code = grpc.StatusCode.PERMISSION_DENIED
    elif isinstance(error, TooManyChallenges):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        code = grpc.StatusCode.UNAUTHENTICATED
    await context.abort(code, str(error))


async def caller_node_id(authenticator: Authenticator,
                         context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """The node id a call's session credential is bound to, or abort the call. Shared
    by every service that logs clients in by their node key (the hub, the tower)."""
    credential_hex = _metadata_value(context, SESSION_METADATA_KEY)
    try:
        try:
            credential = bytes.fromhex(credential_hex) if credential_hex else None
        except ValueError:
            credential = None
        return authenticator.session_for(credential, context.peer())
    except AuthError as error:
        await _abort_auth(context, error)
        raise  # unreachable: abort raises


async def answer_get_challenge(authenticator: Authenticator,
                               request: client_pb2.GetChallengeRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> client_pb2.Challenge:
    """``GetChallenge`` of a node-key login (hub.auth, step 1)."""
    try:
        challenge = authenticator.issue_challenge(request.client_node_id)
    except AuthError as error:
        await _abort_auth(context, error)
    return client_pb2.Challenge(hub_node_id=challenge.hub_node_id,
                                client_node_id=challenge.client_node_id,
                                nonce=challenge.nonce,
                                expires_at_unix=challenge.expires_at_unix)


async def answer_authenticate(authenticator: Authenticator,
                              request: client_pb2.AuthenticateRequest,
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> client_pb2.Session:
    """``Authenticate`` of a node-key login (hub.auth, step 2)."""
    try:
        grant = authenticator.authenticate(request.client_node_id, request.nonce,
                                           request.signature, context.peer())
    except AuthError as error:
        await _abort_auth(context, error)
    return client_pb2.Session(session_credential=grant.credential,
                              expires_at_unix=grant.expires_at_unix)


class GrpcEdge:
    """The gRPC server of one hub process (see the module docstring)."""

    def __init__(self, *, bridge: GrpcBridge, tls: TlsIdentity, authenticator: Authenticator,
                 admin_credential: AdminCredential, hub_service: HubService,
                 admin_service: AdminService, config: EdgeConfig | None = None) -> None:
        self.config = config or EdgeConfig()
        self.bridge = bridge
        self.tls = tls
        self.authenticator = authenticator
        self.admin_credential = admin_credential
        self.hub_service = hub_service
        self.admin_service = admin_service
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self.stopping = False
        # trio side: the open link per client, and every open stream (for shutdown)
        self._links: dict[bytes, BridgedStream[peer_pb2.PeerFrame, peer_pb2.PeerFrame]] = {}
        self._streams: set[BridgedStream[Any, Any]] = set()

    # -- lifecycle (trio) --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until ``stop`` (or cancellation), then shut down gracefully.
        ``task_status.started`` gets the bound port."""
        self._server, port = await self.bridge.run_in_asyncio(self._start_server)
        self.port = port
        task_status.started(port)
        try:
            await self._stop_requested.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown()

    async def stop(self) -> None:
        """Stop accepting, close links, let in-flight calls finish; returns when done."""
        self._stop_requested.set()
        await self._stopped.wait()

    def connected_clients(self) -> list[bytes]:
        """Node ids with an open peer link now."""
        return list(self._links)

    async def _shutdown(self) -> None:
        self.stopping = True
        for stream in list(self._streams):
            stream.close_nowait()
        server = self._server
        if server is not None:
            with contextlib.suppress(BridgeClosed):
                await self.bridge.run_in_asyncio(server.stop, self.config.grace_seconds)
        self._stopped.set()

    async def _start_server(self) -> tuple[grpc.aio.Server, int]:
        options = [*grpc_options(self.config.max_message_bytes, server=True),
                   ("grpc.max_concurrent_streams", self.config.max_concurrent_streams)]
        server = grpc.aio.server(options=options)
        client_pb2_grpc.add_HubServicer_to_server(_HubServicer(self), server)
        admin_pb2_grpc.add_AdminServicer_to_server(_AdminServicer(self), server)
        port = server.add_secure_port(f"{self.config.listen_host}:{self.config.listen_port}",
                                      self.tls.server_credentials())
        if port == 0:
            raise OSError(f"cannot listen on {self.config.listen_host}:"
                          f"{self.config.listen_port}")
        await server.start()
        return server, port

    # -- asyncio side helpers ----------------------------------------------------------

    async def client_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """The authenticated node id of a Hub call, or abort it."""
        return await caller_node_id(self.authenticator, context)

    async def check_admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            self.admin_credential.check(_metadata_value(context, ADMIN_METADATA_KEY))
        except AuthError as error:
            await _abort_auth(context, error)

    async def call(self, context: grpc.aio.ServicerContext[Any, Any],
                   fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a trio-side service method for this call; its errors become statuses."""
        try:
            return await self.bridge.run_in_trio(fn, *args)
        except RpcStatusError as error:
            await context.abort(error.code, error.details)
        except BridgeClosed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub is shutting down")
        except Exception:
            log.exception("service method %r failed", fn)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")

    async def pump(self, context: grpc.aio.ServicerContext[Any, Any],
                   stream: BridgedStream[Any, Any], *, reading: bool) -> None:
        try:
            await stream.pump(context.read if reading else None, context.write)
        except StreamAborted as error:
            await context.abort(error.code, error.details)

    def check_frame(self, frame: peer_pb2.PeerFrame) -> None:
        if len(frame.messages) > self.config.max_messages_per_frame:
            raise StreamAborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"frame of {len(frame.messages)} messages above the bound "
                                f"{self.config.max_messages_per_frame}")

    def new_stream(self, check: Callable[[Any], None] | None = None
                   ) -> BridgedStream[Any, Any]:
        return BridgedStream(self.bridge, window_messages=self.config.window_messages,
                             max_message_bytes=self.config.max_message_bytes,
                             check_received=check)

    # -- trio side tasks ---------------------------------------------------------------

    async def run_link(self, client_node_id: bytes,
                       link: BridgedStream[peer_pb2.PeerFrame, peer_pb2.PeerFrame]) -> None:
        if self.stopping:
            link.close_nowait()
            return
        previous = self._links.get(client_node_id)
        self._links[client_node_id] = link
        self._streams.add(link)
        if previous is not None:
            previous.abort()
        try:
            await self.hub_service.on_peer_link(client_node_id, link)
        finally:
            if self._links.get(client_node_id) is link:
                del self._links[client_node_id]
            self._streams.discard(link)
            link.close_nowait()

    async def run_subscription(self, client_node_id: bytes,
                               request: client_pb2.SubscribeEventsRequest,
                               stream: BridgedStream[client_pb2.Event, Message]) -> None:
        if self.stopping:
            stream.close_nowait()
            return
        self._streams.add(stream)
        try:
            async with trio.open_nursery() as nursery:
                async def cancel_when_gone() -> None:
                    # A subscriber that leaves while the service waits for the next
                    # event would otherwise keep its task until that event.
                    await stream.wait_closed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_when_gone)
                await self.hub_service.subscribe_events(client_node_id, request, stream)
                nursery.cancel_scope.cancel()
        finally:
            self._streams.discard(stream)
            stream.close_nowait()


Context = grpc.aio.ServicerContext[Any, Any]


class _HubServicer(client_pb2_grpc.HubServicer):
    """chanhub.client.Hub on the asyncio loop; see the module docstring."""

    def __init__(self, edge: GrpcEdge) -> None:
        self._edge = edge
        self._service = edge.hub_service

    async def GetChallenge(self, request: client_pb2.GetChallengeRequest,
                           context: Context) -> client_pb2.Challenge:
        return await answer_get_challenge(self._edge.authenticator, request, context)

    async def Authenticate(self, request: client_pb2.AuthenticateRequest,
                           context: Context) -> client_pb2.Session:
        return await answer_authenticate(self._edge.authenticator, request, context)

    async def GetInfo(self, request: client_pb2.GetInfoRequest,
                      context: Context) -> client_pb2.GetInfoResponse:
        node = await self._edge.client_of(context)
        return await self._edge.call(context, self._service.get_info, node)

    async def RequestInbound(self, request: client_pb2.RequestInboundRequest,
                             context: Context) -> client_pb2.InboundOrder:
        node = await self._edge.client_of(context)
        return await self._edge.call(context, self._service.request_inbound, node, request)

    async def GetInboundOrder(self, request: client_pb2.GetInboundOrderRequest,
                              context: Context) -> client_pb2.InboundOrder:
        node = await self._edge.client_of(context)
        return await self._edge.call(context, self._service.get_inbound_order, node, request)

    async def ListChannels(self, request: client_pb2.ListChannelsRequest,
                           context: Context) -> client_pb2.ListChannelsResponse:
        node = await self._edge.client_of(context)
        return await self._edge.call(context, self._service.list_channels, node, request)

    async def ListPayments(self, request: client_pb2.ListPaymentsRequest,
                           context: Context) -> client_pb2.ListPaymentsResponse:
        node = await self._edge.client_of(context)
        return await self._edge.call(context, self._service.list_payments, node, request)

    async def SubscribeEvents(self, request: client_pb2.SubscribeEventsRequest,  # type: ignore[override]
                              context: Context) -> None:
        node = await self._edge.client_of(context)
        stream = self._edge.new_stream()
        if not self._edge.bridge.spawn_in_trio(self._edge.run_subscription, node, request,
                                               stream):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub is shutting down")
        await context.send_initial_metadata(())  # tells the client the stream is accepted
        await self._edge.pump(context, stream, reading=False)

    async def PeerLink(self, request_iterator: Any, context: Context) -> None:  # type: ignore[override]
        node = await self._edge.client_of(context)
        if self._edge.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub is shutting down")
        link = self._edge.new_stream(self._edge.check_frame)
        if not self._edge.bridge.spawn_in_trio(self._edge.run_link, node, link):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub is shutting down")
        await context.send_initial_metadata(())  # tells the client the link is accepted
        await self._edge.pump(context, link, reading=True)


class _AdminServicer(admin_pb2_grpc.AdminServicer):
    """chanhub.admin.Admin on the asyncio loop: the admin credential, then trio."""

    def __init__(self, edge: GrpcEdge) -> None:
        self._edge = edge
        self._service = edge.admin_service

    async def _run(self, context: Context, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        await self._edge.check_admin(context)
        return await self._edge.call(context, fn, *args)

    async def GetInfo(self, request: admin_pb2.GetInfoRequest,
                      context: Context) -> admin_pb2.GetInfoResponse:
        return await self._run(context, self._service.get_info)

    async def ListClients(self, request: admin_pb2.ListClientsRequest,
                          context: Context) -> admin_pb2.ListClientsResponse:
        return await self._run(context, self._service.list_clients, request)

    async def ListChannels(self, request: admin_pb2.ListChannelsRequest,
                           context: Context) -> client_pb2.ListChannelsResponse:
        return await self._run(context, self._service.list_channels, request)

    async def ListPayments(self, request: admin_pb2.ListPaymentsRequest,
                           context: Context) -> admin_pb2.ListPaymentsResponse:
        return await self._run(context, self._service.list_payments, request)

    async def SetFeePolicy(self, request: admin_pb2.SetFeePolicyRequest,
                           context: Context) -> client_pb2.FeePolicy:
        return await self._run(context, self._service.set_fee_policy, request)

    async def CloseChannel(self, request: client_pb2.CloseChannelRequest,
                           context: Context) -> client_pb2.CloseChannelResponse:
        return await self._run(context, self._service.close_channel, request)

    async def NewWalletAddress(self, request: admin_pb2.NewWalletAddressRequest,
                               context: Context) -> admin_pb2.NewWalletAddressResponse:
        return await self._run(context, self._service.new_wallet_address)

    async def GetWalletBalance(self, request: admin_pb2.GetWalletBalanceRequest,
                               context: Context) -> admin_pb2.WalletBalance:
        return await self._run(context, self._service.get_wallet_balance)
