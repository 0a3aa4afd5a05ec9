"""pytest fixtures for the embedded regtest node.

Register with `pytest_plugins = ["regtest.pytest_plugin"]` (tests/conftest.py).

- `regtest_clock`: a `ManualClock` (unix seconds, advanced by hand) the node
  mines with, so block times are deterministic.
- `regtest_node`: a fresh `Node` in tmp_path with 101 blocks mined to its own
  wallet (50 BTC spendable).  The chain is built once per session and its
  datadir copied for each test, so the fixture costs a file copy.
- `regtest_rpc`: that node served by `RpcServer` on 127.0.0.1, ephemeral port,
  cookie auth; yields the started server (`.url`, `.port`, `.cookie_path`).
- `node_process`: the node as a separate process (`regtest.harness.start_node`),
  101 blocks mined; a `NodeEndpoint`.
- `hub_process`: chanhubd as a separate process on it (`start_hub`); a
  `HubEndpoint` (target, TLS fingerprint and cert, admin credential, node id).
  `hub_application` and `hub_store` ("sqlite"/"postgres") are fixtures to override.
- `client_processes`: a factory starting `chanhub serve` clients of that hub.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regtest.harness import (
    ClientEndpoint,
    HubEndpoint,
    NodeEndpoint,
    drop_postgres_schema,
    free_port,
    hub_store_url,
    start_client,
    start_hub,
    start_node,
    stop_client,
    stop_hub,
    stop_node,
)
from regtest.node import Node, RpcServer

# 2023-11-14: recent enough that the node is out of "initial block download"
GENESIS_CLOCK = 1_700_000_000


class ManualClock:
    """A clock for tests: `clock()` returns `now`; `advance(s)` moves it."""

    def __init__(self, now: int = GENESIS_CLOCK) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def _regtest_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    datadir = tmp_path_factory.mktemp("regtest-template")
    node = Node(datadir, clock=ManualClock())
    try:
        node.mine(101)
    finally:
        node.close()
    return datadir


@pytest.fixture
def regtest_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def regtest_node(
    _regtest_template: Path, tmp_path: Path, regtest_clock: ManualClock
) -> Iterator[Node]:
    datadir = tmp_path / "node"
    shutil.copytree(_regtest_template, datadir)
    node = Node(datadir, clock=regtest_clock)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def regtest_rpc(regtest_node: Node) -> Iterator[RpcServer]:
    server = RpcServer(regtest_node, host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Processes on loopback: a node process and a chanhubd process on it.


@pytest.fixture
def hub_application() -> str | None:
    """chanhubd's `--application` for `hub_process` (None: chanhubd's default, the
    real hub). Override this fixture to run another application factory."""
    return None


@pytest.fixture
def hub_store() -> str:
    """The hub's store for `hub_process`: "sqlite" or "postgres" (override, or
    parametrize indirectly, to run on both)."""
    return "sqlite"


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeEndpoint]:
    """The regtest node as a separate process (ephemeral port), 101 blocks mined."""
    import trio

    datadir = tmp_path / "node-process"
    endpoint = start_node(datadir, port=free_port())
    try:
        async def mature() -> None:
            async with endpoint.rpc() as rpc:
                await rpc.generatetoaddress(101, await rpc.getnewaddress())

        trio.run(mature)
        yield endpoint
    finally:
        stop_node(datadir)


@pytest.fixture
def hub_process(tmp_path: Path, node_process: NodeEndpoint, hub_application: str | None,
                hub_store: str) -> Iterator[HubEndpoint]:
    """chanhubd as a separate process on `node_process` (funding usable at depth 1),
    stopped with SIGTERM after the test (a PostgreSQL schema of its own is dropped)."""
    datadir = tmp_path / "hub-process"
    store_url = hub_store_url(datadir, hub_store)
    try:
        yield start_hub(datadir, node_process, store_url=store_url,
                        application=hub_application, options={"minimum_depth": "1"})
    finally:
        stop_hub(datadir)
        if hub_store == "postgres":
            drop_postgres_schema(datadir)


@pytest.fixture
def client_processes(tmp_path: Path, node_process: NodeEndpoint, hub_process: HubEndpoint
                     ) -> Iterator[Callable[[str], ClientEndpoint]]:
    """A factory: `client_processes("alice")` starts `chanhub serve` for a new client
    of `hub_process` (own data directory, store and keys); all stop after the test."""
    started: list[Path] = []

    def start(name: str) -> ClientEndpoint:
        datadir = tmp_path / "clients" / name
        started.append(datadir)
        return start_client(datadir, hub_process, node_process)

    try:
        yield start
    finally:
        for datadir in started:
            stop_client(datadir)
