"""``TowerService``: the watchtower as one trio service, for ``chanhub-tower`` and for
``chanhubd --tower`` (the hub runs it in its own nursery, on its own bridge and chain).

Theory of operation. ``run`` opens the store (``TowerStore``), loads the tower's node
key and TLS identity from its data directory (made on first start, mode 0600, as the
hub's), restores the broadcaster and the chain position of the last run (or starts at
the node's tip: a new tower has nothing to look for in the past), starts the
``ChainFollower`` feeding the broadcaster and the ``TowerWatcher``, then serves
proto/tower.proto on its own TLS listener through the grpc.aio bridge. Each rpc
handler authenticates on the asyncio loop (``hub.auth.Authenticator``: the hub's
challenge/answer, its session credential bound to the connection; anything else is
UNAUTHENTICATED before it reaches trio), then runs the matching ``TowerService``
method in trio.

After every sync step the follower's tip and the broadcaster's pending set are
written beside the watcher's state, so a restart rebroadcasts what was pending and
rescans the blocks it had not finished.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import trio

from channel.chain.broadcaster import RpcBroadcaster
from channel.chain.follower import ChainFollower, RpcChainSource, checkpoint_at
from channel.chain.interfaces import BlockRef
from channel.chain.rpc import BitcoinRpc
from channel.keys import pubkey_from_secret
from hub.auth import Authenticator
from hub.edge import (
    ResourceExhausted,
    answer_authenticate,
    answer_get_challenge,
    caller_node_id,
)
from hub.tls import (
    PrivateFileError,
    TlsIdentity,
    load_or_create_tls,
    read_private_file,
    write_private_file,
)
from hub.tower.store import NotRegistered, QuotaExceeded, TowerStore
from hub.tower.watcher import TowerWatcher
from proto import client_pb2, tower_pb2, tower_pb2_grpc
from protocol.driver.appointment import LOCATOR_BYTES, NONCE_BYTES, TAG_BYTES
from protocol.driver.db import sqlite_url
from protocol.driver.grpc_bridge import (
    DEFAULT_MAX_MESSAGE_BYTES,
    BridgeClosed,
    GrpcBridge,
    RpcStatusError,
    grpc_options,
    open_grpc_bridge,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

NODE_KEY_FILE = "tower.key"
CHAIN_STATE_KEY = "chain"
#: A kit for a commitment near BOLT #2's maximum of 483 HTLCs measures 428,746 bytes
#: sealed (482 HTLCs: one combined penalty, 483 single-output penalties, 482
#: second-stage penalties; docs/tower.md); 512 KiB holds it and stays under gRPC's
#: 1 MiB message bound.
DEFAULT_MAX_BLOB_BYTES = 512 * 1024
DEFAULT_MAX_APPOINTMENTS = 100_000


class TowerConfigError(Exception):
    """The tower's files or settings are unusable."""


@dataclass(frozen=True)
class TowerSettings:
    """What a tower is configured with (``chanhub-tower`` flags, or the hub's)."""

    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 9814
    store_url: str | None = None  # default: sqlite at <data_dir>/tower.sqlite
    max_appointments_per_client: int = DEFAULT_MAX_APPOINTMENTS
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    poll_interval_s: float = 1.0
    confirm_depth: int = 6

    @property
    def effective_store_url(self) -> str:
        return self.store_url or sqlite_url(self.data_dir / "tower.sqlite")


def load_or_create_node_key(path: Path) -> bytes:
    """The tower's node secret (32 bytes, hex in a 0600 file made on first start)."""
    if not path.exists():
        while True:
            fresh = secrets.token_bytes(32)
            try:
                pubkey_from_secret(fresh)
                break
            except ValueError:
                continue
        write_private_file(path, fresh.hex().encode() + b"\n")
    try:
        secret = bytes.fromhex(read_private_file(path).decode().strip())
        pubkey_from_secret(secret)
    except (PrivateFileError, ValueError, UnicodeDecodeError) as exc:
        raise TowerConfigError(f"tower node key {path}: {exc}") from exc
    return secret


@dataclass(frozen=True)
class TowerStarted:
    port: int
    tower_node_id: bytes
    tls_fingerprint_sha256: str
    tls_cert_file: Path


class TowerService:
    """The watchtower (see the module docstring). ``await nursery.start(service.run)``
    returns a ``TowerStarted``; cancel the nursery to stop it."""

    def __init__(self, settings: TowerSettings, rpc: BitcoinRpc,
                 bridge: GrpcBridge | None = None, *,
                 clock: Callable[[], float] = time.time, run_follower: bool = True) -> None:
        # No bridge given (``chanhubd --tower``, whose application is made before the
        # daemon's bridge exists): ``run`` opens its own, one more asyncio thread.
        self.settings, self.rpc, self._given_bridge, self.clock = settings, rpc, bridge, clock
        self._bridge: GrpcBridge | None = bridge
        # Tests drive the chain by hand (``sync``) instead of the follower's polling.
        self.run_follower = run_follower
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.node_secret = load_or_create_node_key(settings.data_dir / NODE_KEY_FILE)
        self.node_id = pubkey_from_secret(self.node_secret)
        self.tls: TlsIdentity = load_or_create_tls(settings.data_dir / "tls.cert",
                                                   settings.data_dir / "tls.key")
        self.authenticator = Authenticator(self.node_id, clock=clock)
        self.store: TowerStore | None = None
        self.watcher: TowerWatcher | None = None
        self.follower: ChainFollower | None = None
        self.broadcaster: RpcBroadcaster | None = None
        self.chain = ""
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def bridge(self) -> GrpcBridge:
        assert self._bridge is not None, "not running"
        return self._bridge

    async def run(self, *, task_status: trio.TaskStatus[TowerStarted] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if self._given_bridge is not None:
            await self._run(task_status)
            return
        async with open_grpc_bridge("tower-grpc-asyncio") as bridge:
            self._bridge = bridge
            try:
                await self._run(task_status)
            finally:
                self._bridge = None

    async def _run(self, task_status: trio.TaskStatus[TowerStarted]) -> None:
        settings = self.settings
        store = self.store = await trio.to_thread.run_sync(
            TowerStore.open, settings.effective_store_url)
        server: grpc.aio.Server | None = None
        try:
            self.chain = str((await self.rpc.getblockchaininfo())["chain"])
            source = RpcChainSource(self.rpc)
            saved = store.get_json(CHAIN_STATE_KEY)
            if saved is None:
                tip = await checkpoint_at(source, await self.rpc.getblockcount())
                broadcaster = RpcBroadcaster(self.rpc, tip_height=tip.height,
                                             confirm_depth=settings.confirm_depth)
                # Stored now, not at the first new block: a tower stopped before any
                # block came must resume here, not at a later tip past a breach.
                await store.put_json(CHAIN_STATE_KEY, {"tip": tip.to_json(),
                                                       "broadcaster": broadcaster.to_json()})
            else:
                tip = BlockRef.from_json(saved["tip"])
                broadcaster = RpcBroadcaster.from_json(self.rpc, saved["broadcaster"],
                                                       confirm_depth=settings.confirm_depth)
            self.broadcaster = broadcaster
            watcher = self.watcher = TowerWatcher(store, broadcaster)
            await watcher.load()
            self.follower = ChainFollower(
                source, tip, listeners=[broadcaster, watcher],
                tip_listeners=[broadcaster, watcher, self],
                poll_interval_s=settings.poll_interval_s)
            server, port = await self.bridge.run_in_asyncio(self._start_server)
            self.port = port
            async with trio.open_nursery() as nursery:
                if self.run_follower:
                    await nursery.start(self.follower.run)
                else:
                    await self.follower.sync_once()
                log.info("tower %s listening on %s:%d", self.node_id.hex(),
                         settings.listen_host, port)
                task_status.started(TowerStarted(port, self.node_id,
                                                 self.tls.fingerprint_sha256, self.tls.cert_path))
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if server is not None:
                    await self.bridge.run_in_asyncio(server.stop, 1.0)
                await trio.to_thread.run_sync(store.close)

    async def sync(self) -> None:
        """One chain sync step now (tests, and after a block the caller knows of)."""
        assert self.follower is not None, "not running"
        await self.follower.sync_once()

    async def best_block_updated(self, tip: BlockRef) -> None:
        """Last tip listener: the chain position and broadcaster are durable."""
        assert self.store is not None and self.broadcaster is not None
        await self.store.put_json(CHAIN_STATE_KEY, {"tip": tip.to_json(),
                                                    "broadcaster": self.broadcaster.to_json()})

    async def _start_server(self) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=grpc_options(DEFAULT_MAX_MESSAGE_BYTES, server=True))
        tower_pb2_grpc.add_TowerServicer_to_server(_TowerServicer(self), server)
        address = f"{self.settings.listen_host}:{self.settings.listen_port}"
        port = server.add_secure_port(address, self.tls.server_credentials())
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        return server, port

    # -- the rpcs (trio side; ``client_node_id`` is the authenticated caller) ----------------

    def _quota(self, max_appointments: int, used: int) -> tower_pb2.Quota:
        return tower_pb2.Quota(max_appointments=max_appointments, used_appointments=used,
                               max_blob_bytes=self.settings.max_blob_bytes)

    async def register(self, client_node_id: bytes) -> tower_pb2.Quota:
        assert self.store is not None
        account = await self.store.register(client_node_id,
                                            self.settings.max_appointments_per_client,
                                            int(self.clock()))
        return self._quota(account.max_appointments, account.used_appointments)

    async def send_appointment(self, client_node_id: bytes,
                               appointment: tower_pb2.Appointment) -> tower_pb2.Quota:
        assert self.store is not None and self.watcher is not None
        if len(appointment.locator) != LOCATOR_BYTES:
            raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"locator must be {LOCATOR_BYTES} bytes")
        if len(appointment.nonce) != NONCE_BYTES:
            raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"nonce must be {NONCE_BYTES} bytes")
        if len(appointment.encrypted_blob) < TAG_BYTES:
            raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, "blob shorter than its tag")
        if len(appointment.encrypted_blob) > self.settings.max_blob_bytes:
            raise ResourceExhausted(f"blob of {len(appointment.encrypted_blob)} bytes above "
                                    f"the tower's {self.settings.max_blob_bytes}")
        try:
            account = await self.store.store_appointment(
                client_node_id, bytes(appointment.locator), bytes(appointment.nonce),
                bytes(appointment.encrypted_blob), int(self.clock()))
        except NotRegistered as exc:
            raise RpcStatusError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        except QuotaExceeded as exc:
            raise ResourceExhausted(str(exc)) from None
        self.watcher.add_locator(bytes(appointment.locator))
        return self._quota(account.max_appointments, account.used_appointments)

    async def get_info(self, client_node_id: bytes) -> tower_pb2.GetInfoResponse:
        assert self.store is not None and self.follower is not None
        account = await self.store.account(client_node_id)
        quota = (self._quota(0, 0) if account is None
                 else self._quota(account.max_appointments, account.used_appointments))
        return tower_pb2.GetInfoResponse(tower_node_id=self.node_id, chain=self.chain,
                                         block_height=self.follower.tip.height,
                                         registered=account is not None, quota=quota)


Context = grpc.aio.ServicerContext[Any, Any]


class _TowerServicer(tower_pb2_grpc.TowerServicer):
    """chanhub.tower.Tower on the asyncio loop: authenticate, then run in trio."""

    def __init__(self, service: TowerService) -> None:
        self._service = service
        self._auth = service.authenticator

    async def _call(self, context: Context, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        node = await caller_node_id(self._auth, context)
        try:
            return await self._service.bridge.run_in_trio(fn, node, *args)
        except RpcStatusError as error:
            await context.abort(error.code, error.details)
        except BridgeClosed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tower is shutting down")
        except Exception:
            log.exception("tower method %r failed", fn)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: abort raises")

    async def GetChallenge(self, request: client_pb2.GetChallengeRequest,
                           context: Context) -> client_pb2.Challenge:
        return await answer_get_challenge(self._auth, request, context)

    async def Authenticate(self, request: client_pb2.AuthenticateRequest,
                           context: Context) -> client_pb2.Session:
        return await answer_authenticate(self._auth, request, context)

    async def Register(self, request: tower_pb2.RegisterRequest,
                       context: Context) -> tower_pb2.Quota:
        return await self._call(context, self._service.register)

    async def SendAppointment(self, request: tower_pb2.Appointment,
                              context: Context) -> tower_pb2.Quota:
        return await self._call(context, self._service.send_appointment, request)

    async def GetInfo(self, request: tower_pb2.GetInfoRequest,
                      context: Context) -> tower_pb2.GetInfoResponse:
        return await self._call(context, self._service.get_info)
