"""`chanhub-regtest`: run and drive the embedded regtest node from a shell.

    chanhub-regtest node start|stop|status
    chanhub-regtest mine N [--address ADDRESS]
    chanhub-regtest fund ADDRESS AMOUNT_BTC [--confirm]
    chanhub-regtest up --clients N [--store sqlite|postgres] [--channel-sat SAT]
                       [--inbound-sat SAT] [--no-proxy] [--tower]
    chanhub-regtest down | status | env NAME

Faults and cheats on a network (TEST-ONLY; docs/testing-scenarios.md):

    chanhub-regtest client stop|kill|start|pause|resume NAME
    chanhub-regtest client open|inbound NAME AMOUNT_SAT
    chanhub-regtest link cut NAME [--refuse-for SECONDS] | refuse NAME | accept NAME | status NAME
    chanhub-regtest cheat backup PARTY LABEL       (PARTY: hub or a client's name)
    chanhub-regtest cheat publish PARTY LABEL [--channel ID] [--mine N]
    chanhub-regtest cheat restore NAME LABEL
    chanhub-regtest reorg DEPTH [--exclude TXID]... [--extra N]
    chanhub-regtest mine N [--exclude TXID]...

`up` starts a whole network (regtest/network.py): the node, a hub (chanhubd) and N
funded clients (`chanhub serve`), each a separate process, and prints how to reach
each. Its node lives in `<datadir>/node`; `mine`, `fund`, `reorg` and `node status`
given the network's directory reach that node.

Every command works on one data directory (`--datadir`, or $CHANHUB_REGTEST_DIR,
default ~/.chanhub/regtest). The node is a separate process that outlives the
command; commands other than `start` reach it over its JSON-RPC port with the
cookie it wrote, through the same client the hub uses. Errors print one line and
exit non-zero.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from channel.chain import BitcoinRpc, ChainError, btc_to_sat, sat_to_btc
from protocol.driver.crypto import KeySource
from regtest import cheat, harness, proxy
from regtest import network as regtest_network
from regtest.harness import (
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    running_node,
    start_node,
    stop_node,
)

T = TypeVar("T")


def default_datadir() -> Path:
    configured = os.environ.get("CHANHUB_REGTEST_DIR")
    return Path(configured) if configured else Path.home() / ".chanhub" / "regtest"


def _endpoint(datadir: Path) -> NodeEndpoint:
    if (datadir / regtest_network.NETWORK_FILE).exists():
        datadir = regtest_network.Network(datadir).node_dir  # a network's own node
    endpoint = running_node(datadir)
    if endpoint is None:
        raise click.ClickException(
            f"no node is running in {datadir}; start one with `chanhub-regtest node start`"
        )
    return endpoint


def _with_rpc(datadir: Path, action: Callable[[BitcoinRpc], Awaitable[T]]) -> T:
    async def run() -> T:
        async with _endpoint(datadir).rpc() as rpc:
            return await action(rpc)

    try:
        return trio.run(run)
    except ChainError as exc:
        raise click.ClickException(str(exc)) from exc


datadir_option = click.option(
    "--datadir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_datadir,
    show_default="$CHANHUB_REGTEST_DIR or ~/.chanhub/regtest",
    help="Where the node keeps its chain, wallet and cookie.",
)


@click.group()
def main() -> None:
    """Run and drive Chanhub's embedded Bitcoin regtest node."""


@main.group()
def node() -> None:
    """Start, stop and inspect the node process."""


@node.command("start")
@datadir_option
@click.option("--port", type=click.IntRange(1, 65535), default=18443, show_default=True)
def node_start(datadir: Path, port: int) -> None:
    """Start the node in the background."""
    try:
        endpoint = start_node(datadir, port=port)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"node running at {endpoint.url} (cookie {endpoint.cookie_file})")


@node.command("stop")
@datadir_option
def node_stop(datadir: Path) -> None:
    """Stop the node cleanly."""
    if not stop_node(datadir):
        raise click.ClickException(f"no node is running in {datadir}")
    click.echo("node stopped")


@node.command("status")
@datadir_option
def node_status(datadir: Path) -> None:
    """Print height, tip, mempool size and the faucet balance."""

    async def status(rpc: BitcoinRpc) -> dict[str, Any]:
        info = await rpc.getblockchaininfo()
        return {
            "chain": info["chain"],
            "blocks": info["blocks"],
            "bestblockhash": info["bestblockhash"],
            "mempool": len(await rpc.getrawmempool()),
            "balance_sat": await rpc.getbalance_sat(),
        }

    result = _with_rpc(datadir, status)
    endpoint = _endpoint(datadir)
    click.echo(f"url:       {endpoint.url}")
    click.echo(f"chain:     {result['chain']}")
    click.echo(f"height:    {result['blocks']}")
    click.echo(f"tip:       {result['bestblockhash']}")
    click.echo(f"mempool:   {result['mempool']} transactions")
    click.echo(f"faucet:    {sat_to_btc(result['balance_sat'])} BTC")


@main.command("mine")
@click.argument("nblocks", type=click.IntRange(1, 10_000))
@click.option("--address", help="Pay the coinbase here (default: a new faucet address).")
@click.option("--exclude", multiple=True, metavar="TXID",
              help="Leave this mempool transaction (and what spends it) out; repeatable.")
@datadir_option
def mine(nblocks: int, address: str | None, exclude: tuple[str, ...], datadir: Path) -> None:
    """Mine NBLOCKS blocks now."""

    async def generate(rpc: BitcoinRpc) -> tuple[list[str], int]:
        target = address or await rpc.getnewaddress()
        if exclude:
            hashes, _ = await cheat.mine_excluding(rpc, nblocks, exclude, address=target)
        else:
            hashes = await rpc.generatetoaddress(nblocks, target)
        return hashes, await rpc.getblockcount()

    hashes, height = _with_rpc(datadir, generate)
    click.echo(f"mined {len(hashes)} block(s); height {height}, tip {hashes[-1]}")


@main.command("reorg")
@click.argument("depth", type=click.IntRange(1, 1_000))
@click.option("--exclude", multiple=True, metavar="TXID",
              help="Leave this transaction (and what spends it) out of the new branch; "
              "it stays in the mempool. Repeatable.")
@click.option("--extra", type=click.IntRange(1, 1_000), default=1, show_default=True,
              help="How many blocks longer the new branch is.")
@datadir_option
def reorg_(depth: int, exclude: tuple[str, ...], extra: int, datadir: Path) -> None:
    """Replace the last DEPTH blocks with a longer competing branch (TEST-ONLY)."""

    async def run(rpc: BitcoinRpc) -> tuple[cheat.Reorg, int]:
        done = await cheat.reorg(rpc, depth, exclude=exclude, extra_blocks=extra)
        return done, await rpc.getblockcount()

    try:
        done, height = _with_rpc(datadir, run)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"reorg: {len(done.disconnected)} block(s) after height {done.fork_height} "
               f"replaced by {depth + extra}; height {height}, tip {done.new_tip}")
    for txid in done.excluded:
        click.echo(f"left out (in the mempool): {txid}")


@main.command("fund")
@click.argument("address")
@click.argument("amount_btc")
@click.option("--confirm", is_flag=True, help="Mine a block so the payment confirms.")
@datadir_option
def fund(address: str, amount_btc: str, confirm: bool, datadir: Path) -> None:
    """Send AMOUNT_BTC from the node's faucet wallet to ADDRESS."""
    try:
        amount_sat = btc_to_sat(Decimal(amount_btc))
    except (InvalidOperation, ValueError) as exc:
        raise click.ClickException(f"invalid amount {amount_btc!r}: {exc}") from exc
    if amount_sat <= 0:
        raise click.ClickException("the amount must be positive")

    async def send(rpc: BitcoinRpc) -> str:
        txid = await rpc.sendtoaddress(address, amount_sat)
        if confirm:
            await rpc.generatetoaddress(1, await rpc.getnewaddress())
        return txid

    txid = _with_rpc(datadir, send)
    state = "confirmed" if confirm else "in the mempool"
    click.echo(f"sent {sat_to_btc(amount_sat)} BTC to {address}: {txid} ({state})")


@main.command("up")
@click.option("--clients", "client_count", type=click.IntRange(0, 100), default=2,
              show_default=True, help="How many clients to start.")
@click.option("--channel-sat", type=click.IntRange(0), default=0, show_default=True,
              help="Open a channel of this size from each client to the hub (0: none).")
@click.option("--inbound-sat", type=click.IntRange(0), default=0, show_default=True,
              help="Have the hub open a channel of this size toward each client (0: none).")
@click.option("--proxy/--no-proxy", default=True, show_default=True,
              help="Route each client's link through its own proxy (`link cut` needs it).")
@click.option("--store", type=click.Choice(["sqlite", "postgres"]), default="sqlite",
              show_default=True, help="The hub's store (postgres: a schema of its own on "
              "127.0.0.1:5432, database test).")
@click.option("--hub-application", default=None, metavar="MODULE:FUNCTION",
              help="chanhubd's --application (default: chanhubd's own).")
@click.option("--tower", is_flag=True,
              help="Start a watchtower (chanhub-tower) and register every client with it.")
@datadir_option
def up(client_count: int, channel_sat: int, inbound_sat: int, proxy: bool, store: str,
       hub_application: str | None, tower: bool, datadir: Path) -> None:
    """Start the node, a hub and N funded clients, each a separate process."""
    try:
        started = regtest_network.up(datadir, clients=client_count, store=store,
                                     hub_application=hub_application, proxy=proxy,
                                     channel_sat=channel_sat, inbound_sat=inbound_sat,
                                     tower=tower)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in regtest_network.describe(started):
        click.echo(line)
    click.echo(f"stop everything with: chanhub-regtest down --datadir {datadir}")


@main.command("down")
@datadir_option
def down(datadir: Path) -> None:
    """Stop every process `up` started (clients, the hub, the tower, then the node)."""
    try:
        stopped = regtest_network.down(datadir)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@main.command("status")
@datadir_option
def status(datadir: Path) -> None:
    """Print what of the network `up` started is running, and how to reach it."""
    try:
        loaded = regtest_network.Network.load(datadir)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in regtest_network.describe(loaded):
        click.echo(line)


@main.command("env")
@click.argument("name")
@datadir_option
def env(name: str, datadir: Path) -> None:
    """Print the `export CHANHUB_...` lines that make `chanhub` act as client NAME
    (`eval "$(chanhub-regtest env alice)"`). Stop the client first to run a one-shot
    command: its `serve` holds the store."""
    network = _network(datadir)
    _client_dir(network, name)
    variables = _harness_call(lambda: regtest_network.client_shell_env(network, name))
    for variable, value in variables.items():
        click.echo(f"export {variable}={shlex.quote(value)}")


# ---------------------------------------------------------------------------
# Faults and cheats on a network `up` started (docs/testing-scenarios.md)


def _network(datadir: Path) -> regtest_network.Network:
    try:
        return regtest_network.Network.load(datadir)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc


def _client_dir(network: regtest_network.Network, name: str) -> Path:
    if name not in network.client_names:
        known = ", ".join(network.client_names) or "none"
        raise click.ClickException(f"no client {name!r} in this network (clients: {known})")
    return network.client_dir(name)


def _running_hub(network: regtest_network.Network) -> HubEndpoint:
    hub = network.hub()
    if hub is None:
        raise click.ClickException("the network's hub is not running")
    return hub


def _harness_call(action: Callable[[], T]) -> T:
    try:
        return action()
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group("client")
def client_group() -> None:
    """Stop, kill, freeze and restart a client process of the network."""


@client_group.command("stop")
@click.argument("name")
@datadir_option
def client_stop(name: str, datadir: Path) -> None:
    """SIGTERM the client (a clean exit)."""
    if not harness.stop_client(_client_dir(_network(datadir), name)):
        raise click.ClickException(f"{name} is not running")
    click.echo(f"{name} stopped")


@client_group.command("kill")
@click.argument("name")
@datadir_option
def client_kill(name: str, datadir: Path) -> None:
    """SIGKILL the client (kill -9: nothing flushed)."""
    if not harness.kill_client(_client_dir(_network(datadir), name)):
        raise click.ClickException(f"{name} is not running")
    click.echo(f"{name} killed")


@client_group.command("start")
@click.argument("name")
@datadir_option
def client_start(name: str, datadir: Path) -> None:
    """Start the client again on its store (after stop or kill)."""
    network = _network(datadir)
    client_dir = _client_dir(network, name)
    hub, node = _running_hub(network), _endpoint(datadir)
    client = _harness_call(lambda: harness.start_client(client_dir, hub, node))
    click.echo(f"{name} online (pid {client.pid}) via {client.hub_target}")


@client_group.command("pause")
@click.argument("name")
@datadir_option
def client_pause(name: str, datadir: Path) -> None:
    """SIGSTOP the client: frozen, its link open but silent, until `resume`."""
    client_dir = _client_dir(_network(datadir), name)
    client = _harness_call(lambda: harness.pause_client(client_dir))
    click.echo(f"{name} paused (pid {client.pid}); continue it with: chanhub-regtest "
               f"client resume {name}")


@client_group.command("resume")
@click.argument("name")
@datadir_option
def client_resume(name: str, datadir: Path) -> None:
    """SIGCONT a paused client."""
    client_dir = _client_dir(_network(datadir), name)
    client = _harness_call(lambda: harness.resume_client(client_dir))
    click.echo(f"{name} resumed (pid {client.pid})")


@client_group.command("open")
@click.argument("name")
@click.argument("amount_sat", type=click.IntRange(1))
@datadir_option
def client_open(name: str, amount_sat: int, datadir: Path) -> None:
    """Open a channel of AMOUNT_SAT from the client to the hub (faucet-funded, mined)."""
    network = _network(datadir)
    client_dir = _client_dir(network, name)
    hub, node = _running_hub(network), _endpoint(datadir)
    channel_id = _harness_call(lambda: regtest_network.open_client_channel(
        client_dir, hub, node, amount_sat))
    funding = _harness_call(lambda: _with_rpc(
        datadir, lambda rpc: cheat.funding_txid(rpc, channel_id)))
    click.echo(f"{name}: channel {channel_id.hex()} open ({amount_sat} sat), "
               f"funding tx {funding}")


@client_group.command("inbound")
@click.argument("name")
@click.argument("amount_sat", type=click.IntRange(1))
@datadir_option
def client_inbound(name: str, amount_sat: int, datadir: Path) -> None:
    """A channel of AMOUNT_SAT the hub funds toward the client (faucet -> hub wallet)."""
    network = _network(datadir)
    client_dir = _client_dir(network, name)
    hub, node = _running_hub(network), _endpoint(datadir)

    def inbound() -> bytes:
        regtest_network.fund_hub_wallet(hub, node, amount_sat + 100_000)
        return regtest_network.request_client_inbound(client_dir, hub, node, amount_sat)

    channel_id = _harness_call(inbound)
    click.echo(f"{name}: channel {channel_id.hex()} open, {amount_sat} sat receivable")


@main.group("link")
def link_group() -> None:
    """Cut or block a client's link to the hub (its proxy; `up` starts one per client)."""


def _show_link(name: str, status: dict[str, Any]) -> None:
    click.echo(f"{name}: {status['open']} open connection(s), {status['accepted']} accepted, "
               f"{status['refused']} refused, {status['cuts']} cut(s); "
               f"{'refusing' if status['refusing'] else 'accepting'} new connections")


@link_group.command("cut")
@click.argument("name")
@click.option("--refuse-for", "refuse_s", type=click.FloatRange(0, min_open=True),
              default=None, help="Also refuse new connections for this many seconds.")
@datadir_option
def link_cut(name: str, refuse_s: float | None, datadir: Path) -> None:
    """Drop the client's current connections to the hub now (mid-payment if one runs)."""
    client_dir = _client_dir(_network(datadir), name)
    _show_link(name, _harness_call(lambda: proxy.cut_link(client_dir, refuse_s=refuse_s)))


@link_group.command("refuse")
@click.argument("name")
@datadir_option
def link_refuse(name: str, datadir: Path) -> None:
    """Refuse the client's new connections (current ones stay) until `accept`."""
    client_dir = _client_dir(_network(datadir), name)
    _show_link(name, _harness_call(lambda: proxy.refuse_links(client_dir)))


@link_group.command("accept")
@click.argument("name")
@datadir_option
def link_accept(name: str, datadir: Path) -> None:
    """Forward the client's new connections again."""
    client_dir = _client_dir(_network(datadir), name)
    _show_link(name, _harness_call(lambda: proxy.accept_links(client_dir)))


@link_group.command("status")
@click.argument("name")
@datadir_option
def link_status(name: str, datadir: Path) -> None:
    """Connections of the client's link proxy."""
    client_dir = _client_dir(_network(datadir), name)
    _show_link(name, _harness_call(lambda: proxy.proxy_status(client_dir)))


@main.group("cheat")
def cheat_group() -> None:
    """TEST-ONLY: make a party publish an old (revoked) commitment."""


def _party(network: regtest_network.Network, party: str) -> tuple[Path, KeySource]:
    if party == "hub":
        return network.hub_dir, cheat.hub_key_source(network.hub_dir)
    return _client_dir(network, party), cheat.client_key_source()


@cheat_group.command("backup")
@click.argument("party")
@click.argument("label")
@datadir_option
def cheat_backup(party: str, label: str, datadir: Path) -> None:
    """Snapshot PARTY's store now (hub or a client's name) as backup LABEL."""
    network = _network(datadir)
    if party == "hub":
        hub = _running_hub(network)
        backup = _harness_call(lambda: cheat.backup_hub(hub, label))
    else:
        client_dir = _client_dir(network, party)
        backup = _harness_call(lambda: cheat.backup_client(client_dir, label))
    _, key_source = _party(network, party)
    for c in cheat.stored_commitments(backup, key_source):
        click.echo(f"{party}: channel {c.channel_id.hex()} {c.state}, commitment "
                   f"{c.commitment_number}")
    click.echo(f"backup {label!r} of {party}: {backup}")


@cheat_group.command("publish")
@click.argument("party")
@click.argument("label")
@click.option("--channel", "channel_hex", default=None, help="Only this channel (hex id).")
@click.option("--mine", "mine_blocks", type=click.IntRange(0), default=0, show_default=True,
              help="Mine this many blocks after broadcasting.")
@datadir_option
def cheat_publish(party: str, label: str, channel_hex: str | None, mine_blocks: int,
                  datadir: Path) -> None:
    """Broadcast the commitment PARTY held in backup LABEL (a breach once revoked)."""
    network = _network(datadir)
    party_dir, key_source = _party(network, party)
    channel_id = None
    if channel_hex is not None:
        try:
            channel_id = bytes.fromhex(channel_hex)
        except ValueError as exc:
            raise click.ClickException("--channel must be hex") from exc

    async def publish(rpc: BitcoinRpc) -> list[cheat.StoredCommitment]:
        sent = await cheat.publish_old_commitment(
            rpc, cheat.backup_path(party_dir, label), key_source, channel_id=channel_id)
        if mine_blocks:
            await rpc.generatetoaddress(mine_blocks, await rpc.getnewaddress())
        return sent

    try:
        sent = _with_rpc(datadir, publish)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    for c in sent:
        click.echo(f"{party} published commitment {c.commitment_number} of channel "
                   f"{c.channel_id.hex()}: {c.txid}")


@cheat_group.command("restore")
@click.argument("name")
@click.argument("label")
@datadir_option
def cheat_restore(name: str, label: str, datadir: Path) -> None:
    """Put a stopped client's backup LABEL back as its store (start it after)."""
    client_dir = _client_dir(_network(datadir), name)
    _harness_call(lambda: cheat.restore_client_store(client_dir, label))
    click.echo(f"{name}: store restored from backup {label!r}; start it with: "
               f"chanhub-regtest client start {name}")


if __name__ == "__main__":
    main()
