"""chanhubd: one trio root nursery running the hub's services and the gRPC edge.

Theory of operation (STYLE.md, "trio"). ``Daemon.run`` prepares the data directory
(mode 0700), the TLS identity and the admin credential, opens the process's one gRPC
bridge, then asks the application factory for the hub's business logic: an async
context manager yielding a ``HubApplication`` (the store, router, chain follower...
are opened and closed by it). Inside one root nursery every service of the
application is started in order with ``nursery.start(service.run)``, each calling
``task_status.started()`` when ready, then the edge last, so no call arrives before
what serves it is ready.

Shutdown (``request_shutdown``, SIGTERM or SIGINT in ``serve``; a second signal
cancels at once): the edge first
stops accepting calls and connections, closes every peer link (queued frames are
flushed) and gives in-flight calls ``shutdown_grace_seconds``; then each service
that can ``drain`` (finish its writes in flight) does, last started first; then the
root nursery is cancelled and the application context closes. Nothing here holds
state that must survive: rule 1 makes every update durable before it is sent, so
a restart (or a kill -9) resumes from the store.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

from hub.auth import AdminCredential, Authenticator
from hub.config import HubConfig
from hub.edge import AdminService, EdgeConfig, GrpcEdge, HubService
from hub.tls import TlsIdentity, load_or_create_tls
from protocol.driver.grpc_bridge import open_grpc_bridge

log = logging.getLogger(__name__)


class Service(Protocol):
    """A long-running part of the hub (router, chain follower, sweeper, metrics...)."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                  ) -> None: ...


@runtime_checkable
class Drainable(Protocol):
    """A service with writes in flight to finish before it is cancelled."""

    async def drain(self) -> None: ...


@dataclass
class HubApplication:
    """What the hub's business logic hands the daemon."""

    hub_node_id: bytes  # 33-byte compressed node public key (from the node seed)
    hub_service: HubService
    admin_service: AdminService
    services: Sequence[Service] = field(default_factory=list)  # started in this order


ApplicationFactory = Callable[[HubConfig, TlsIdentity],
                              AbstractAsyncContextManager[HubApplication]]


def edge_config(config: HubConfig) -> EdgeConfig:
    host, port = config.listen_host_port
    return EdgeConfig(listen_host=host, listen_port=port,
                      max_message_bytes=config.max_frame_bytes,
                      max_messages_per_frame=config.max_messages_per_frame,
                      window_messages=config.link_window_frames,
                      grace_seconds=float(config.shutdown_grace_seconds))


@dataclass(frozen=True)
class DaemonStarted:
    """What ``Daemon.run`` reports once serving."""

    port: int
    tls_fingerprint_sha256: str
    hub_node_id: bytes


def prepare_files(config: HubConfig) -> tuple[TlsIdentity, AdminCredential]:
    """The data directory, TLS identity and admin credential (made if missing)."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    extra = tuple(n.strip() for n in config.tls_extra_names.split(",") if n.strip())
    tls = load_or_create_tls(config.path(config.tls_cert_file),
                             config.path(config.tls_key_file), extra)
    admin = AdminCredential.load_or_create(config.path(config.admin_credential_file))
    return tls, admin


class Daemon:
    def __init__(self, config: HubConfig, application_factory: ApplicationFactory) -> None:
        self.config = config
        self._factory = application_factory
        self._shutdown = trio.Event()
        self.stopped = trio.Event()  # set when run() has returned
        self.edge: GrpcEdge | None = None

    def request_shutdown(self) -> None:
        self._shutdown.set()

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    async def run(self, *, task_status: trio.TaskStatus[DaemonStarted] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            await self._run(task_status)
        finally:
            self.stopped.set()

    async def _run(self, task_status: trio.TaskStatus[DaemonStarted]) -> None:
        tls, admin_credential = prepare_files(self.config)
        async with (open_grpc_bridge() as bridge, self._factory(self.config, tls) as app,
                    trio.open_nursery() as root):
            for service in app.services:
                await root.start(service.run)
            edge = GrpcEdge(bridge=bridge, tls=tls,
                            authenticator=Authenticator(app.hub_node_id),
                            admin_credential=admin_credential,
                            hub_service=app.hub_service, admin_service=app.admin_service,
                            config=edge_config(self.config))
            self.edge = edge
            port = await root.start(edge.run)
            log.info("chanhubd serving on %s:%d", edge.config.listen_host, port)
            task_status.started(DaemonStarted(port, tls.fingerprint_sha256, app.hub_node_id))
            await self._shutdown.wait()
            log.info("shutting down: closing the edge")
            await edge.stop()
            for service in reversed(app.services):
                if isinstance(service, Drainable):
                    await service.drain()
            root.cancel_scope.cancel()


async def serve(config: HubConfig, application_factory: ApplicationFactory,
                on_started: Callable[[DaemonStarted], None]) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down as described above."""
    daemon = Daemon(config, application_factory)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(daemon.run)
            on_started(started)

            async def wait_for_signal() -> None:
                async for signum in signals:
                    if not daemon.shutdown_requested:
                        log.info("signal %d: shutting down", signum)
                        daemon.request_shutdown()
                    else:  # a second signal: stop waiting for the graceful path
                        log.warning("signal %d again: cancelling", signum)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(wait_for_signal)
            await daemon.stopped.wait()
            nursery.cancel_scope.cancel()  # daemon.run returned: stop listening for signals
