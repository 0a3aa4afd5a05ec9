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
- `client_processes`: a factory starting `chanhub serve` clients of that hub
  (`client_processes("alice", via_proxy=True)`: behind a link proxy that `cut_link`
  can drop; `tower=tower_process`: registered with that watchtower through
  `chanhub init --tower`, so it sends its appointments there).
- `tower_process`: `chanhub-tower` as a separate process on `node_process`; a
  `TowerEndpoint` (target, TLS fingerprint, node id).
- `regtest_faults`: a `Faults` helper over those processes, to replay the dispute
  scenarios (docs/testing-scenarios.md): open a client's channel, back up a party's
  store and publish its old commitment, inbound liquidity toward a client, invoices
  and payments in the background, cut/refuse/accept a client's link, pause,
  resume, kill and restart a client, reorg the chain, mine leaving transactions out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from channel.chain import BitcoinRpc
from regtest import cheat, proxy
from regtest.harness import (
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    TowerEndpoint,
    chain_if_towers,
    chanhub_command,
    client_env,
    drop_postgres_schema,
    free_port,
    hub_store_url,
    kill_client,
    pause_client,
    resume_client,
    run_chanhub,
    start_client,
    start_hub,
    start_node,
    start_tower,
    stop_client,
    stop_hub,
    stop_node,
    stop_tower,
)
from regtest.network import (
    client_offline,
    fund_hub_wallet,
    open_client_channel,
    request_client_inbound,
)
from regtest.node import Node, RpcServer

T = TypeVar("T")

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
def tower_process(tmp_path: Path, node_process: NodeEndpoint) -> Iterator[TowerEndpoint]:
    """`chanhub-tower` as a separate process on `node_process` (polls the chain every
    0.2 s), stopped with SIGTERM after the test."""
    datadir = tmp_path / "tower-process"
    try:
        yield start_tower(datadir, node_process)
    finally:
        stop_tower(datadir)


class ClientFactory:
    """`client_processes(name, via_proxy=False, tower=None)`: start `chanhub serve` for a
    new client of the hub (own data directory, store and keys; registered with `tower`
    if given); `started` lists their dirs."""

    def __init__(self, root: Path, hub: HubEndpoint, node: NodeEndpoint) -> None:
        self.root, self.hub, self.node = root, hub, node
        self.started: list[Path] = []

    def __call__(self, name: str, *, via_proxy: bool = False,
                 tower: TowerEndpoint | None = None) -> ClientEndpoint:
        datadir = self.root / name
        if datadir not in self.started:
            self.started.append(datadir)
        return start_client(datadir, self.hub, self.node, via_proxy=via_proxy, tower=tower)

    def stop_all(self) -> None:
        for datadir in self.started:
            stop_client(datadir)
            proxy.stop_proxy(datadir)


@pytest.fixture
def client_processes(tmp_path: Path, node_process: NodeEndpoint, hub_process: HubEndpoint
                     ) -> Iterator[ClientFactory]:
    """A factory: `client_processes("alice")` starts `chanhub serve` for a new client
    of `hub_process`; all (and their link proxies) stop after the test."""
    factory = ClientFactory(tmp_path / "clients", hub_process, node_process)
    try:
        yield factory
    finally:
        factory.stop_all()


class Faults:
    """The harness's cheats and faults on `node_process`, `hub_process` and the
    clients of `client_processes`, as plain calls for a test (TEST-ONLY).

    A party is "hub" or a client's `ClientEndpoint`/data directory. Waits on real
    processes poll with a bound (`wait_until`), never sleep blindly."""

    def __init__(self, node: NodeEndpoint, hub: HubEndpoint, clients: ClientFactory) -> None:
        self.node, self.hub, self.clients = node, hub, clients

    def rpc_call(self, action: Callable[[BitcoinRpc], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self.node.rpc() as rpc:
                return await action(rpc)

        return trio.run(run)

    # -- channels and old commitments ------------------------------------------------

    def open_channel(self, client: ClientEndpoint, amount_sat: int) -> bytes:
        return open_client_channel(client.datadir, self.hub, self.node, amount_sat)

    def inbound(self, client: ClientEndpoint, amount_sat: int) -> bytes:
        """A channel of `amount_sat` the hub funds toward the client (its wallet is
        funded from the faucet first): what the client can receive."""
        fund_hub_wallet(self.hub, self.node, amount_sat + 100_000)
        return request_client_inbound(client.datadir, self.hub, self.node, amount_sat)

    def invoice(self, client: ClientEndpoint, amount_msat: int) -> str:
        """A BOLT #11 invoice of the client (stopped for the command, started again)."""
        with client_offline(client.datadir, self.hub, self.node):
            return str(json.loads(run_chanhub(
                client.datadir, self.hub, "--json", "invoice", str(amount_msat),
                node=chain_if_towers(client.datadir, self.node)))["invoice"])

    def start_payment(self, payer: ClientEndpoint, bolt11: str, idempotency_key: str
                      ) -> subprocess.Popen[str]:
        """Stop the payer's `serve` and run `chanhub --json pay` in the background (it
        holds the payer's store until the payment ends); `communicate()` it after."""
        stop_client(payer.datadir)
        return subprocess.Popen(
            chanhub_command(payer.datadir, self.hub, "--json", "pay", bolt11,
                            "--idempotency-key", idempotency_key,
                            node=chain_if_towers(payer.datadir, self.node)),
            env=client_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    def _party(self, party: ClientEndpoint | str) -> tuple[Path, Any]:
        if party == "hub":
            return self.hub.datadir, cheat.hub_key_source(self.hub.datadir)
        assert isinstance(party, ClientEndpoint)
        return party.datadir, cheat.client_key_source()

    def backup(self, party: ClientEndpoint | str, label: str) -> list[cheat.StoredCommitment]:
        """Snapshot the party's store now as `label`; its channels as stored."""
        if party == "hub":
            backup = cheat.backup_hub(self.hub, label)
        else:
            assert isinstance(party, ClientEndpoint)
            backup = cheat.backup_client(party.datadir, label)
        return cheat.stored_commitments(backup, self._party(party)[1])

    def publish_old_commitment(self, party: ClientEndpoint | str, label: str, *,
                               channel_id: bytes | None = None, mine_blocks: int = 0
                               ) -> list[cheat.StoredCommitment]:
        """The party broadcasts the commitment(s) of backup `label` (then mine)."""
        party_dir, key_source = self._party(party)

        async def publish(rpc: BitcoinRpc) -> list[cheat.StoredCommitment]:
            sent = await cheat.publish_old_commitment(
                rpc, cheat.backup_path(party_dir, label), key_source, channel_id=channel_id)
            if mine_blocks:
                await rpc.generatetoaddress(mine_blocks, await rpc.getnewaddress())
            return sent

        return self.rpc_call(publish)

    def revoke_by_failed_payment(self, client: ClientEndpoint, amount_msat: int = 1_000_000
                                 ) -> str:
        """Move the client's channel on by two commitments without moving money: it pays
        its own invoice, which the hub cannot forward (no liquidity toward the payee:
        the client's side holds it all), so the HTLC is added and failed back. Every
        backup taken before then holds a revoked commitment. Returns the CLI's error."""
        chain = chain_if_towers(client.datadir, self.node)
        with client_offline(client.datadir, self.hub, self.node):
            shown = json.loads(run_chanhub(client.datadir, self.hub, "--json", "invoice",
                                           str(amount_msat), node=chain))
            try:
                run_chanhub(client.datadir, self.hub, "pay", str(shown["invoice"]),
                            "--idempotency-key", f"revoke-{time.monotonic_ns()}",
                            node=chain)
            except HarnessError as refused:
                return str(refused)
        raise AssertionError("the self-payment succeeded: the channel has liquidity "
                             "toward the client")

    # -- links ----------------------------------------------------------------------------

    def cut_link(self, client: ClientEndpoint, *, refuse_s: float | None = None
                 ) -> dict[str, Any]:
        return proxy.cut_link(client.datadir, refuse_s=refuse_s)

    def refuse_links(self, client: ClientEndpoint) -> dict[str, Any]:
        return proxy.refuse_links(client.datadir)

    def accept_links(self, client: ClientEndpoint) -> dict[str, Any]:
        return proxy.accept_links(client.datadir)

    def link_status(self, client: ClientEndpoint) -> dict[str, Any]:
        return proxy.proxy_status(client.datadir)

    # -- processes ----------------------------------------------------------------------

    def pause(self, client: ClientEndpoint) -> None:
        pause_client(client.datadir)

    def resume(self, client: ClientEndpoint) -> None:
        resume_client(client.datadir)

    def kill(self, client: ClientEndpoint) -> None:
        if not kill_client(client.datadir):
            raise HarnessError(f"no client is running in {client.datadir}")

    def restart(self, client: ClientEndpoint) -> ClientEndpoint:
        """Start the client again on its store (after `kill` or `stop_client`)."""
        return start_client(client.datadir, self.hub, self.node)

    # -- the chain ------------------------------------------------------------------------

    def reorg(self, depth: int, *, exclude: Sequence[str] = (), extra_blocks: int = 1
              ) -> cheat.Reorg:
        return self.rpc_call(lambda rpc: cheat.reorg(rpc, depth, exclude=exclude,
                                                     extra_blocks=extra_blocks))

    def mine(self, nblocks: int, *, exclude: Sequence[str] = ()) -> list[str]:
        async def mine(rpc: BitcoinRpc) -> list[str]:
            hashes, _ = await cheat.mine_excluding(rpc, nblocks, exclude)
            return hashes

        return self.rpc_call(mine)


def wait_until(condition: Callable[[], T], *, timeout_s: float = 60.0,
               what: str = "the condition") -> T:
    """Poll a real process's observable state (every 0.1 s) until `condition()` is
    truthy; fail after `timeout_s` real seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.1)  # polling a real subprocess, with a bound (common rules)


@pytest.fixture
def regtest_faults(node_process: NodeEndpoint, hub_process: HubEndpoint,
                   client_processes: ClientFactory) -> Faults:
    """`Faults` over this test's node, hub and `client_processes` clients."""
    return Faults(node_process, hub_process, client_processes)
