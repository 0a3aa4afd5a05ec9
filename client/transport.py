"""The client's side of the wire: connect to a hub over pinned TLS, prove the node key,
then make calls and open the peer link from trio.

Theory of operation. A ``HubTransport`` is one gRPC channel (one HTTP/2 connection)
to one hub, living on the process's ``GrpcBridge`` asyncio loop, shared by any number
of transports (a load generator hosts hundreds of clients on one loop thread).

1. ``connect`` pins the hub's certificate (by file, or by SHA-256 fingerprint, then
   the presented certificate becomes the only trusted root:
   ``protocol.driver.wire_auth.pinned_root``), opens the channel, and authenticates:
   ``GetChallenge``, check the challenge names the hub we meant (when its node id is
   known) and us, sign ``challenge_digest`` with the node key, ``Authenticate``. The
   session credential then rides in the metadata of every call. It is bound to this
   connection, so a transport that reconnects authenticates again.
2. ``call`` (and the typed helpers) run one unary rpc and return its response; a
   non-OK status raises ``RpcStatusError(code, details)``, which the SDK maps to its
   ``ChanhubError`` tree in one place. UNAUTHENTICATED (the session expired) makes
   the transport authenticate again and retry once: the hub refuses such a call
   before anything runs, so the retry cannot do anything twice.
3. ``open_peer_link`` returns a ``FrameLink`` once the hub accepted the stream (a
   refusal raises ``RpcStatusError`` right there); ``subscribe_events`` a stream of
   ``Event``s. When the connection or the stream ends, ``receive`` and ``send`` raise
   ``LinkClosed`` (with ``closed_reason`` saying why): the SDK's reconnect logic then
   makes a new transport and a new link and runs channel_reestablish.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from channel.keys import pubkey_from_secret
from channel.signing import sign
from proto import client_pb2, client_pb2_grpc, peer_pb2
from protocol.driver.grpc_bridge import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_WINDOW_MESSAGES,
    BridgedStream,
    GrpcBridge,
    RpcStatusError,
    StreamAborted,
    grpc_options,
)
from protocol.driver.wire_auth import SESSION_METADATA_KEY, challenge_digest, pinned_root

log = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT", bound=Message)

PeerLinkStream = BridgedStream[peer_pb2.PeerFrame, peer_pb2.PeerFrame]
EventStream = BridgedStream[Message, client_pb2.Event]


class HubIdentityMismatch(Exception):
    """The hub answered with another node id than the one expected, or a challenge
    not issued for us: we are not talking to the hub we meant."""


@dataclass(frozen=True)
class HubPin:
    """How the client recognises the hub's certificate: its PEM, or its fingerprint."""

    cert_pem: bytes | None = None
    fingerprint_sha256: str | None = None

    @classmethod
    def from_cert_file(cls, path: str | Path) -> HubPin:
        return cls(cert_pem=Path(path).read_bytes())

    @classmethod
    def from_fingerprint(cls, fingerprint_sha256: str) -> HubPin:
        return cls(fingerprint_sha256=fingerprint_sha256)


def _split_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"hub address {target!r} is not host:port")
    return host.strip("[]"), int(port)


async def _status_error(exc: grpc.aio.AioRpcError) -> RpcStatusError:
    return RpcStatusError(exc.code(), exc.details() or "")


class HubTransport:
    """One authenticated connection to a hub (see the module docstring). Make it with
    ``HubTransport.connect``; close it with ``aclose`` (or ``async with``)."""

    def __init__(self, bridge: GrpcBridge, channel: grpc.aio.Channel, *, node_secret: bytes,
                 max_message_bytes: int, window_messages: int,
                 call_timeout_seconds: float | None,
                 stub_factory: Callable[[grpc.aio.Channel], Any] = client_pb2_grpc.HubStub
                 ) -> None:
        self.bridge = bridge
        self._channel = channel
        # Any service with the Hub's GetChallenge/Authenticate (the Tower too).
        self._stub = stub_factory(channel)
        self._node_secret = node_secret
        self.node_id = pubkey_from_secret(node_secret)
        self.hub_node_id: bytes | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._max_message_bytes = max_message_bytes
        self._window = window_messages
        self._timeout = call_timeout_seconds
        self._streams: set[BridgedStream[Any, Any]] = set()
        self._closed = False

    @classmethod
    async def connect(cls, bridge: GrpcBridge, target: str, *, node_secret: bytes,
                      pin: HubPin, expected_hub_node_id: bytes | None = None,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      window_messages: int = DEFAULT_WINDOW_MESSAGES,
                      call_timeout_seconds: float | None = 30.0,
                      stub_factory: Callable[[grpc.aio.Channel], Any] = client_pb2_grpc.HubStub
                      ) -> HubTransport:
        """Connect to ``target`` ("host:port"), pinning the hub's certificate, and
        authenticate with ``node_secret``. Raises ``PinMismatch`` (wrong certificate),
        ``RpcStatusError`` (refused, or unreachable: UNAVAILABLE),
        ``HubIdentityMismatch``. ``stub_factory`` names the service (default the
        Hub; ``tower_pb2_grpc.TowerStub`` for a watchtower, which authenticates
        alike)."""
        host, port = _split_target(target)
        if pin.cert_pem is not None:
            root = pinned_root(host, port, cert_pem=pin.cert_pem)  # no I/O: no thread
        else:
            root = await trio.to_thread.run_sync(
                lambda: pinned_root(host, port, fingerprint=pin.fingerprint_sha256))

        async def make_channel() -> grpc.aio.Channel:
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            # The pinned certificate is the only root, so the name check adds nothing;
            # override it so a hub reached by any address verifies against its pin.
            options = [*grpc_options(max_message_bytes),
                       ("grpc.ssl_target_name_override", "localhost")]
            return grpc.aio.secure_channel(target, credentials, options=options)

        channel = await bridge.run_in_asyncio(make_channel)
        transport = cls(bridge, channel, node_secret=node_secret,
                        max_message_bytes=max_message_bytes, window_messages=window_messages,
                        call_timeout_seconds=call_timeout_seconds, stub_factory=stub_factory)
        try:
            await transport.authenticate(expected_hub_node_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                await transport.aclose()
            raise
        return transport

    async def __aenter__(self) -> HubTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def authenticate(self, expected_hub_node_id: bytes | None = None) -> None:
        """Answer a fresh challenge with the node key; later calls carry the session."""
        challenge = await self._unary(self._stub.GetChallenge,
                                      client_pb2.GetChallengeRequest(client_node_id=self.node_id),
                                      authenticated=False)
        expected = expected_hub_node_id or self.hub_node_id
        if expected is not None and challenge.hub_node_id != expected:
            raise HubIdentityMismatch("the hub's node id is not the expected one")
        if challenge.client_node_id != self.node_id:
            raise HubIdentityMismatch("the challenge was not issued for our node id")
        digest = challenge_digest(challenge.hub_node_id, self.node_id, challenge.nonce,
                                  challenge.expires_at_unix)
        session = await self._unary(self._stub.Authenticate, client_pb2.AuthenticateRequest(
            client_node_id=self.node_id, nonce=challenge.nonce,
            signature=sign(self._node_secret, digest)), authenticated=False)
        self.hub_node_id = challenge.hub_node_id
        self._metadata = ((SESSION_METADATA_KEY, session.session_credential.hex()),)

    # -- unary calls ---------------------------------------------------------------------

    async def _unary(self, method: Callable[..., Any], request: Message, *,
                     authenticated: bool = True) -> Any:
        timeout = self._timeout

        async def invoke(metadata: tuple[tuple[str, str], ...]) -> Any:
            try:
                return await method(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise await _status_error(exc) from None

        if not authenticated:
            return await self.bridge.run_in_asyncio(invoke, ())
        try:
            return await self.bridge.run_in_asyncio(invoke, self._metadata)
        except RpcStatusError as error:
            if error.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
        # The session expired (or the hub restarted): the hub refused the call before
        # anything ran, so authenticating again and retrying once is safe.
        await self.authenticate()
        return await self.bridge.run_in_asyncio(invoke, self._metadata)

    async def call(self, method_name: str, request: Message) -> Any:
        """Any unary rpc of the Hub service by name, e.g. ``call("GetInfo", req)``."""
        return await self._unary(getattr(self._stub, method_name), request)

    async def get_info(self) -> client_pb2.GetInfoResponse:
        result: client_pb2.GetInfoResponse = await self._unary(
            self._stub.GetInfo, client_pb2.GetInfoRequest())
        return result

    async def request_inbound(self, request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder:
        result: client_pb2.InboundOrder = await self._unary(self._stub.RequestInbound, request)
        return result

    async def get_inbound_order(self, order_id: str) -> client_pb2.InboundOrder:
        result: client_pb2.InboundOrder = await self._unary(
            self._stub.GetInboundOrder, client_pb2.GetInboundOrderRequest(order_id=order_id))
        return result

    async def list_channels(self, request: client_pb2.ListChannelsRequest | None = None
                            ) -> client_pb2.ListChannelsResponse:
        result: client_pb2.ListChannelsResponse = await self._unary(
            self._stub.ListChannels, request or client_pb2.ListChannelsRequest())
        return result

    async def list_payments(self, request: client_pb2.ListPaymentsRequest | None = None
                            ) -> client_pb2.ListPaymentsResponse:
        result: client_pb2.ListPaymentsResponse = await self._unary(
            self._stub.ListPayments, request or client_pb2.ListPaymentsRequest())
        return result

    # -- streams -------------------------------------------------------------------------

    async def _open_stream(self, stream: BridgedStream[Any, Any],
                           start_call: Callable[[], Any], *, writing: bool) -> None:
        async def start() -> None:
            call = start_call()
            # The hub sends its initial metadata once it accepted the stream; a refused
            # stream ends with its status instead.
            await call.initial_metadata()
            if call.done():
                code = await call.code()
                raise RpcStatusError(code, await call.details() or "")
            self.bridge.loop.create_task(self._pump(stream, call, writing=writing))
            self.bridge.to_trio(self._streams.add, stream)

        try:
            await self.bridge.run_in_asyncio(start)
        except BaseException:
            stream.fail("stream refused")
            raise

    async def _pump(self, stream: BridgedStream[Any, Any], call: Any, *, writing: bool) -> None:
        try:
            if writing:
                await stream.pump(call.read, call.write, call.done_writing)
            else:
                await stream.pump(call.read, None)
        except StreamAborted:
            call.cancel()
        finally:
            if not call.done():
                call.cancel()
            self.bridge.to_trio(self._streams.discard, stream)

    def _new_stream(self) -> BridgedStream[Any, Any]:
        return BridgedStream(self.bridge, window_messages=self._window,
                             max_message_bytes=self._max_message_bytes)

    async def _open_with_reauth(self, start_call: Callable[[], Any], *,
                                writing: bool) -> BridgedStream[Any, Any]:
        stream = self._new_stream()
        try:
            await self._open_stream(stream, start_call, writing=writing)
            return stream
        except RpcStatusError as error:
            if error.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
        await self.authenticate()  # as in _unary: refused before anything ran
        stream = self._new_stream()
        await self._open_stream(stream, start_call, writing=writing)
        return stream

    async def open_peer_link(self) -> PeerLinkStream:
        """The peer link (a ``FrameLink``), once the hub accepted it. A new link
        replaces any earlier one of this client on the hub."""
        link: PeerLinkStream = await self._open_with_reauth(
            lambda: self._stub.PeerLink(None, metadata=self._metadata), writing=True)
        return link

    async def subscribe_events(self, after_sequence: int = 0) -> EventStream:
        """The hub's events for us after ``after_sequence``: ``receive()`` each;
        ``LinkClosed`` when the stream ends; ``aclose()`` to stop."""
        request = client_pb2.SubscribeEventsRequest(after_sequence=after_sequence)
        events: EventStream = await self._open_with_reauth(
            lambda: self._stub.SubscribeEvents(request, metadata=self._metadata),
            writing=False)
        return events

    async def aclose(self, grace_seconds: float = 5.0) -> None:
        """Close every stream (flushing what was sent), then the connection."""
        if self._closed:
            return
        self._closed = True
        streams = list(self._streams)
        for stream in streams:
            stream.close_nowait()
        with trio.move_on_after(grace_seconds):
            for stream in streams:
                await stream.wait_closed()
        channel = self._channel

        async def close() -> None:
            await channel.close(grace=None)

        close_channel: Callable[[], Awaitable[None]] = close
        await self.bridge.run_in_asyncio(close_channel)
