"""A whole regtest network on loopback: the node, one hub and N clients, each its own
process (what `chanhub-regtest up|down|status` runs).

Theory of operation
-------------------
One directory holds everything: `node/` (the chain), `hub/` (chanhubd's data
directory: store, TLS files, admin credential, key file) and `clients/<name>/`
(each client's own store and keys). `up` starts the node and mines the faucet's
first coins, starts the hub on the node, then each client (`chanhub serve`,
`regtest.harness.start_client`, following the node's chain itself), funds each
client's wallet from the faucet and mines so the coins confirm; with
`channel_sat`, each client then opens a channel of that size to the hub, and with
`inbound_sat` the hub (its wallet funded from the faucet) opens one of that size
toward each client, so clients can pay each other. By
default each client reaches the hub through its own link proxy
(`regtest/proxy.py`), so a tester can cut that client's link
(`chanhub-regtest link cut NAME`). With `tower`, a watchtower (`chanhub-tower`,
`tower/`) starts on the node before the clients, and each client registers with it
(`chanhub init --tower`), so it punishes a cheating hub while a client is offline.
What was started is written to `network.json`
as it goes, so `down` (from any shell) stops exactly what `up` started, clients
first (and their proxies), then the hub (SIGTERM: it drains), the tower, then the
node; and a
failed `up` leaves nothing running (it stops what it started before raising).

The channel helpers at the end (`open_client_channel`, `request_client_inbound`,
`fund_hub_wallet`, `client_offline`) drive the `chanhub` and `chanhubctl` CLIs of
running processes, as a tester would; `up`, `chanhub-regtest client open|inbound` and
the pytest plugin's `regtest_faults` use them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.config import HubConfig
from regtest.harness import (
    CLIENT_LOG_FILE,
    CLIENT_PASSPHRASE,
    CLIENT_PASSPHRASE_ENV,
    CLIENT_WALLET_FILE,
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    TowerEndpoint,
    chanhub_command,
    client_env,
    client_towers,
    file_tail,
    free_port,
    hub_store_url,
    run_chanhub,
    running_client,
    running_hub,
    running_node,
    running_tower,
    start_client,
    start_hub,
    start_node,
    start_tower,
    stop_client,
    stop_hub,
    stop_node,
    stop_tower,
)
from regtest.proxy import running_proxy, stop_proxy

NETWORK_FILE = "network.json"
CLIENT_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
DEFAULT_CLIENT_FUNDS_SAT = 100_000_000  # 1 BTC each from the faucet
MATURITY_BLOCKS = 101  # coinbase outputs mature after 100 blocks
NO_WALLET = "unknown"


def client_name(index: int) -> str:
    return CLIENT_NAMES[index] if index < len(CLIENT_NAMES) else f"client{index + 1}"


@dataclass
class Network:
    """What `up` started (and `down` stops)."""

    datadir: Path
    store: str = "sqlite"
    client_names: list[str] = field(default_factory=list)
    tower: bool = False

    @property
    def node_dir(self) -> Path:
        return self.datadir / "node"

    @property
    def hub_dir(self) -> Path:
        return self.datadir / "hub"

    @property
    def tower_dir(self) -> Path:
        return self.datadir / "tower"

    def client_dir(self, name: str) -> Path:
        return self.datadir / "clients" / name

    def save(self) -> None:
        (self.datadir / NETWORK_FILE).write_text(json.dumps(
            {"store": self.store, "clients": self.client_names, "tower": self.tower}))

    @classmethod
    def load(cls, datadir: Path) -> Network:
        try:
            data = json.loads((datadir / NETWORK_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise HarnessError(f"no network in {datadir} (start one with "
                               "`chanhub-regtest up`)") from exc
        return cls(datadir, str(data["store"]), [str(n) for n in data["clients"]],
                   bool(data.get("tower", False)))

    def node(self) -> NodeEndpoint | None:
        return running_node(self.node_dir)

    def hub(self) -> HubEndpoint | None:
        return running_hub(self.hub_dir)

    def client(self, name: str) -> ClientEndpoint | None:
        return running_client(self.client_dir(name))

    def tower_endpoint(self) -> TowerEndpoint | None:
        return running_tower(self.tower_dir) if self.tower else None


async def _mine_faucet(node: NodeEndpoint, blocks: int) -> None:
    async with node.rpc() as rpc:
        await rpc.generatetoaddress(blocks, await rpc.getnewaddress())


async def _fund(node: NodeEndpoint, addresses: list[str], amount_sat: int) -> None:
    async with node.rpc() as rpc:
        for address in addresses:
            await rpc.sendtoaddress(address, amount_sat)
        await rpc.generatetoaddress(1, await rpc.getnewaddress())


def up(datadir: Path, *, clients: int, store: str = "sqlite",
       client_funds_sat: int = DEFAULT_CLIENT_FUNDS_SAT,
       hub_options: dict[str, str] | None = None, node_port: int | None = None,
       hub_application: str | None = None, proxy: bool = True,
       channel_sat: int = 0, inbound_sat: int = 0, tower: bool = False) -> Network:
    """Start node, hub and `clients` funded clients (each behind its link proxy unless
    `proxy` is False; each with a channel of `channel_sat` it funds if not 0, and one of
    `inbound_sat` the hub funds toward it if not 0; all registered with a watchtower
    process started first if `tower`); see the module docstring."""
    import trio

    datadir.mkdir(parents=True, exist_ok=True)
    if (datadir / NETWORK_FILE).exists() and running_node(datadir / "node") is not None:
        raise HarnessError(f"a network is already running in {datadir} "
                           "(`chanhub-regtest down` first)")
    network = Network(datadir, store, tower=tower)
    network.save()
    try:
        node = start_node(network.node_dir, port=node_port or free_port())
        trio.run(_mine_faucet, node, MATURITY_BLOCKS)
        hub = start_hub(network.hub_dir, node,
                        store_url=hub_store_url(network.hub_dir, store),
                        application=hub_application,
                        options={"minimum_depth": "1",
                                 # room for every client's order, however many asked for
                                 **({"max_inbound_total_sat": str(max(
                                     clients * inbound_sat,
                                     HubConfig.max_inbound_total_sat))} if inbound_sat
                                    else {}),
                                 **(hub_options or {})})
        watchtower = start_tower(network.tower_dir, node) if tower else None
        addresses = []
        for index in range(clients):
            name = client_name(index)
            client = start_client(network.client_dir(name), hub, node, via_proxy=proxy,
                                  tower=watchtower)
            network.client_names.append(name)
            network.save()
            if client.wallet_address is not None:
                addresses.append(client.wallet_address)
        if addresses:
            trio.run(_fund, node, addresses, client_funds_sat)
        if channel_sat:
            for name in network.client_names:
                open_client_channel(network.client_dir(name), hub, node, channel_sat,
                                    fund_sat=0)
        if inbound_sat and network.client_names:
            fund_hub_wallet(hub, node, len(network.client_names) * (inbound_sat + 100_000))
            for name in network.client_names:
                request_client_inbound(network.client_dir(name), hub, node, inbound_sat)
    except BaseException:
        down(datadir)
        raise
    return network


def down(datadir: Path) -> list[str]:
    """Stop every process of the network in `datadir`: clients, hub, node. Returns
    what was stopped (names)."""
    network = Network.load(datadir)
    stopped = [name for name in network.client_names if stop_client(network.client_dir(name))]
    for name in network.client_names:
        stop_proxy(network.client_dir(name))
    if stop_hub(network.hub_dir):
        stopped.append("hub")
    if stop_tower(network.tower_dir):
        stopped.append("tower")
    if stop_node(network.node_dir):
        stopped.append("node")
    return stopped


def describe(network: Network) -> list[str]:
    """How to reach each part, one line per fact (what `up` and `status` print)."""
    lines: list[str] = []
    node = network.node()
    lines.append(f"node:   {'running at ' + node.url if node else 'stopped'}"
                 + (f" (cookie {node.cookie_file})" if node else ""))
    hub = network.hub()
    if hub is None:
        lines.append("hub:    stopped")
    else:
        lines += [
            f"hub:    running at {hub.target} (pid {hub.pid}, store "
            f"{hub.store_url or 'sqlite in ' + str(hub.datadir)})",
            f"        node id          {hub.hub_node_id.hex()}",
            f"        TLS cert         {hub.tls_cert_file} (sha256 {hub.tls_cert_sha256})",
            f"        admin credential {hub.admin_credential_file}",
        ]
    if network.tower:
        tower = network.tower_endpoint()
        lines += [f"tower:  running at {tower.target} (pid {tower.pid}), node id "
                  f"{tower.tower_node_id.hex()}",
                  f"        TLS cert         {tower.tls_cert_file} (sha256 "
                  f"{tower.tls_cert_sha256})"] if tower else ["tower:  stopped"]
    for name in network.client_names:
        client = network.client(name)
        if client is None:
            lines.append(f"{name + ':':<8}stopped (data dir {network.client_dir(name)})")
            continue
        hint = client.command_hint
        if node is not None and client_towers(client.datadir):
            # a client with towers needs the chain for every online command
            hint = hint.replace(" <command>", f" --bitcoind-rpc {node.url} --bitcoind-cookie "
                                              f"{node.cookie_file} <command>")
        lines += [
            f"{name + ':':<8}online (pid {client.pid}), node id {client.node_id.hex()}",
            f"        data dir {client.datadir}",
            f"        wallet   {client.wallet_address or NO_WALLET}",
            f"        use      {hint}",
        ]
        proxy = running_proxy(client.datadir)
        if proxy is not None:
            lines.append(f"        link     via proxy {proxy.target} (cut it: chanhub-regtest "
                         f"link cut {name} --datadir {network.datadir})")
    return lines


def client_shell_env(network: Network, name: str) -> dict[str, str]:
    """The `CHANHUB_*` variables that make a plain `chanhub` command act as client
    `name` (what `chanhub-regtest env` prints): its data directory, the address it
    dials (its link proxy if it has one running, else the hub), the hub's certificate
    and the harness passphrase; the node's RPC and cookie too for a client with
    towers (its online commands need the chain). Works while the client is stopped:
    that is when a one-shot command may open its store."""
    hub = network.hub()
    if hub is None:
        raise HarnessError("the network's hub is not running")
    datadir = network.client_dir(name)
    proxy = running_proxy(datadir)
    env = {"CHANHUB_DATA_DIR": str(datadir),
           "CHANHUB_HUB": proxy.target if proxy is not None else hub.target,
           "CHANHUB_TLS_CERT": str(hub.tls_cert_file),
           CLIENT_PASSPHRASE_ENV: CLIENT_PASSPHRASE}
    node = network.node()
    if node is not None and client_towers(datadir):
        env["CHANHUB_BITCOIND_RPC"] = node.url
        env["CHANHUB_BITCOIND_COOKIE"] = str(node.cookie_file)
    return env


# ---------------------------------------------------------------------------
# Channels of harness clients: opened from their wallets, or funded by the hub


def open_client_channel(datadir: Path, hub: HubEndpoint, node: NodeEndpoint, amount_sat: int,
                        *, fund_sat: int | None = None, timeout_s: float = 120.0) -> bytes:
    """Open a channel of `amount_sat` from the client of `datadir` to the hub, funded
    from the client's wallet, and return its channel id once both sides use it.

    The faucet sends `fund_sat` (None: the amount plus 100,000 sat for fees; 0: nothing,
    the wallet has coins already) to the client's wallet and mines it. `chanhub open`
    needs the client's store, so a serving client is stopped for it and started again
    after. The command announces on stderr when the funding transaction is broadcast;
    then one block is mined (the harness's hub uses depth 1) and the command returns
    once the channel is open."""
    import trio

    address = (datadir / CLIENT_WALLET_FILE).read_text()
    if fund_sat != 0:
        trio.run(_fund, node, [address], fund_sat or amount_sat + 100_000)
    with client_offline(datadir, hub, node):
        return _open(datadir, hub, node, amount_sat, timeout_s)


@contextlib.contextmanager
def client_offline(datadir: Path, hub: HubEndpoint, node: NodeEndpoint) -> Iterator[None]:
    """One-shot `chanhub` commands need the client's store, which `chanhub serve` holds:
    stop a serving client for the block and start it again after (also when the block
    failed, so a refused command leaves the client as it found it)."""
    was_serving = running_client(datadir) is not None
    if was_serving:
        stop_client(datadir)
    try:
        yield
    finally:
        if was_serving:
            start_client(datadir, hub, node)


def _open(datadir: Path, hub: HubEndpoint, node: NodeEndpoint, amount_sat: int,
          timeout_s: float) -> bytes:
    import trio

    command = chanhub_command(datadir, hub, "--json", "open", str(amount_sat), node=node)
    log_file = datadir / CLIENT_LOG_FILE
    with log_file.open("ab") as log:
        opening = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True,
                                   env=client_env())
        assert opening.stdout is not None and opening.stderr is not None
        mined = False
        # Its progress lines (stderr) are read to the end, so it never writes into a
        # closed pipe; the block is mined once the funding tx is out.
        while True:
            readable, _, _ = select.select([opening.stderr], [], [], timeout_s)
            if not readable:
                opening.kill()
                opening.wait()
                raise HarnessError(f"chanhub open stalled for {timeout_s:.0f} s; last log "
                                   f"lines:\n{file_tail(log_file)}")
            line = opening.stderr.readline()
            if not line:
                break
            log.write(line)
            log.flush()
            if not mined and line.startswith((b"broadcast", b"confirming")):
                trio.run(_mine_faucet, node, 1)
                mined = True
        out = opening.stdout.read()
        opening.wait(timeout=timeout_s)
    if opening.returncode != 0:
        raise HarnessError(f"chanhub open exited (code {opening.returncode}); last log "
                           f"lines:\n{file_tail(log_file)}")
    return bytes.fromhex(json.loads(out)["channel_id"])


def run_chanhubctl(hub: HubEndpoint, *args: str, timeout_s: float = 60.0) -> Any:
    """Run one `chanhubctl --json` command on `hub` as its operator; its JSON answer, or
    a `HarnessError` with its one-line error."""
    done = subprocess.run(
        [sys.executable, "-m", "hub.ctl", "--rpcserver", hub.target,
         "--tls-cert", str(hub.tls_cert_file),
         "--admin-credential", str(hub.admin_credential_file), "--json", *args],
        capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        check=False)
    if done.returncode != 0:
        raise HarnessError(f"chanhubctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return json.loads(done.stdout)


def _until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll a real process's state every 0.2 s until `condition()`; HarnessError after
    `timeout_s` (chanhubd and the clients follow the node once a second)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.2)  # bounded polling of a real subprocess


def fund_hub_wallet(hub: HubEndpoint, node: NodeEndpoint, amount_sat: int, *,
                    timeout_s: float = 60.0) -> int:
    """The faucet pays `amount_sat` to the hub's wallet (`chanhubctl wallet address`), one
    block is mined, and this returns the hub's confirmed balance once it has seen it."""
    import trio

    def confirmed() -> int:
        return int(run_chanhubctl(hub, "wallet", "balance").get("confirmed_sat", 0))

    before = confirmed()
    address = str(run_chanhubctl(hub, "wallet", "address")["address"])
    trio.run(_fund, node, [address], amount_sat)
    _until(lambda: confirmed() >= before + amount_sat, timeout_s=timeout_s,
           what="the hub's wallet seeing its coins")
    return confirmed()


def request_client_inbound(datadir: Path, hub: HubEndpoint, node: NodeEndpoint,
                           amount_sat: int, *, timeout_s: float = 120.0) -> bytes:
    """The client of `datadir` asks the hub for a channel of `amount_sat` the hub funds
    (`chanhub inbound`: what the client can then receive); the hub's wallet must hold
    it (`fund_hub_wallet`). Once the hub broadcast its funding, one block is mined; this
    returns the channel id once it is open. A serving client is stopped for the
    one-shot commands and started again after."""
    with client_offline(datadir, hub, node):
        return _inbound(datadir, hub, node, amount_sat, timeout_s)


def _inbound(datadir: Path, hub: HubEndpoint, node: NodeEndpoint, amount_sat: int,
             timeout_s: float) -> bytes:
    import trio

    key = os.urandom(8).hex()
    order = ["--json", "inbound", str(amount_sat), "--idempotency-key", key]
    started = json.loads(run_chanhub(datadir, hub, *order, "--no-wait", node=node,
                                     timeout_s=timeout_s))
    if started["state"] == "failed":
        raise HarnessError(f"the hub refused inbound: {started['failure_reason']}")

    async def mempool() -> list[str]:
        async with node.rpc() as rpc:
            return await rpc.getrawmempool()

    _until(lambda: bool(trio.run(mempool)), timeout_s=timeout_s,
           what="the hub broadcasting the inbound funding")
    trio.run(_mine_faucet, node, 1)
    done = json.loads(run_chanhub(datadir, hub, *order, node=node, timeout_s=timeout_s))
    if done["state"] != "completed":
        raise HarnessError(f"inbound order {done['order_id']}: {done['state']} "
                           f"{done.get('failure_reason', '')}")
    return bytes.fromhex(str(done["channel_id"]))
