"""The operator's side of the wire: call the Admin service from trio (what
``chanhubctl`` is built on).

Like the client transport (``client/transport.py``, which the hub may not import),
it pins the hub's certificate (file or SHA-256 fingerprint,
``protocol.driver.wire_auth.pinned_root``) and runs on the process's
``GrpcBridge``; instead of a node-key session it sends the admin credential (the
contents of the hub's 0600 ``admin.credential`` file) as metadata on every call. A
non-OK status raises ``RpcStatusError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import trio
from google.protobuf.message import Message

from hub.tls import read_private_file
from proto import admin_pb2_grpc
from protocol.driver.grpc_bridge import GrpcBridge, RpcStatusError, grpc_options
from protocol.driver.wire_auth import ADMIN_METADATA_KEY, pinned_root


class AdminTransport:
    """One connection to a hub's Admin service. ``await AdminTransport.connect(...)``,
    then ``await transport.call("ListClients", request)``; ``aclose`` when done."""

    def __init__(self, bridge: GrpcBridge, channel: grpc.aio.Channel, credential: str,
                 timeout_seconds: float | None) -> None:
        self.bridge = bridge
        self._channel = channel
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._metadata = ((ADMIN_METADATA_KEY, credential),)
        self._timeout = timeout_seconds

    @classmethod
    async def connect(cls, bridge: GrpcBridge, target: str, *, credential_file: Path,
                      cert_pem: bytes | None = None, fingerprint: str | None = None,
                      timeout_seconds: float | None = 30.0) -> AdminTransport:
        host, _, port = target.rpartition(":")
        credential = read_private_file(credential_file).decode().strip()
        if cert_pem is not None:
            root = pinned_root(host.strip("[]"), int(port), cert_pem=cert_pem)
        else:
            root = await trio.to_thread.run_sync(
                lambda: pinned_root(host.strip("[]"), int(port), fingerprint=fingerprint))

        async def make_channel() -> grpc.aio.Channel:
            options = [*grpc_options(), ("grpc.ssl_target_name_override", "localhost")]
            return grpc.aio.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root), options=options)

        return cls(bridge, await bridge.run_in_asyncio(make_channel), credential,
                   timeout_seconds)

    async def call(self, method_name: str, request: Message) -> Any:
        method = getattr(self._stub, method_name)
        metadata, timeout = self._metadata, self._timeout

        async def invoke() -> Any:
            try:
                return await method(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise RpcStatusError(exc.code(), exc.details() or "") from None

        return await self.bridge.run_in_asyncio(invoke)

    async def aclose(self) -> None:
        channel = self._channel

        async def close() -> None:
            await channel.close(grace=None)

        await self.bridge.run_in_asyncio(close)

    async def __aenter__(self) -> AdminTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
