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
(`chanhub-regtest link cut NAME`). What was started is written to `network.json`
as it goes, so `down` (from any shell) stops exactly what `up` started, clients
first (and their proxies), then the hub (SIGTERM: it drains), then the node; and a
failed `up` leaves nothing running (it stops what it started before raising).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from regtest.harness import (
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    free_port,
    fund_hub_wallet,
    hub_store_url,
    open_client_channel,
    request_client_inbound,
    running_client,
    running_hub,
    running_node,
    start_client,
    start_hub,
    start_node,
    stop_client,
    stop_hub,
    stop_node,
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

    @property
    def node_dir(self) -> Path:
        return self.datadir / "node"

    @property
    def hub_dir(self) -> Path:
        return self.datadir / "hub"

    def client_dir(self, name: str) -> Path:
        return self.datadir / "clients" / name

    def save(self) -> None:
        (self.datadir / NETWORK_FILE).write_text(json.dumps(
            {"store": self.store, "clients": self.client_names}))

    @classmethod
    def load(cls, datadir: Path) -> Network:
        try:
            data = json.loads((datadir / NETWORK_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise HarnessError(f"no network in {datadir} (start one with "
                               "`chanhub-regtest up`)") from exc
        return cls(datadir, str(data["store"]), [str(n) for n in data["clients"]])

    def node(self) -> NodeEndpoint | None:
        return running_node(self.node_dir)

    def hub(self) -> HubEndpoint | None:
        return running_hub(self.hub_dir)

    def client(self, name: str) -> ClientEndpoint | None:
        return running_client(self.client_dir(name))


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
       channel_sat: int = 0, inbound_sat: int = 0) -> Network:
    """Start node, hub and `clients` funded clients (each behind its link proxy unless
    `proxy` is False; each with a channel of `channel_sat` it funds if not 0, and one of
    `inbound_sat` the hub funds toward it if not 0); see the module docstring."""
    import trio

    datadir.mkdir(parents=True, exist_ok=True)
    if (datadir / NETWORK_FILE).exists() and running_node(datadir / "node") is not None:
        raise HarnessError(f"a network is already running in {datadir} "
                           "(`chanhub-regtest down` first)")
    network = Network(datadir, store)
    network.save()
    try:
        node = start_node(network.node_dir, port=node_port or free_port())
        trio.run(_mine_faucet, node, MATURITY_BLOCKS)
        hub = start_hub(network.hub_dir, node,
                        store_url=hub_store_url(network.hub_dir, store),
                        application=hub_application,
                        options={"minimum_depth": "1", **(hub_options or {})})
        addresses = []
        for index in range(clients):
            name = client_name(index)
            client = start_client(network.client_dir(name), hub, node, via_proxy=proxy)
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
    for name in network.client_names:
        client = network.client(name)
        if client is None:
            lines.append(f"{name + ':':<8}stopped (data dir {network.client_dir(name)})")
            continue
        lines += [
            f"{name + ':':<8}online (pid {client.pid}), node id {client.node_id.hex()}",
            f"        data dir {client.datadir}",
            f"        wallet   {client.wallet_address or NO_WALLET}",
            f"        use      {client.command_hint}",
        ]
        proxy = running_proxy(client.datadir)
        if proxy is not None:
            lines.append(f"        link     via proxy {proxy.target} (cut it: chanhub-regtest "
                         f"link cut {name} --datadir {network.datadir})")
    return lines
