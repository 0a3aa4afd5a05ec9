"""`chanhub-regtest`: run and drive the embedded regtest node from a shell.

    chanhub-regtest node start|stop|status
    chanhub-regtest mine N [--address ADDRESS]
    chanhub-regtest fund ADDRESS AMOUNT_BTC [--confirm]
    chanhub-regtest up --clients N [--store sqlite|postgres]
    chanhub-regtest down | status

`up` starts a whole network (regtest/network.py): the node, a hub (chanhubd) and N
funded clients (`chanhub serve`), each a separate process, and prints how to reach
each; its node lives in `<datadir>/node`, so `mine` and `fund` take
`--datadir <datadir>/node` to reach it.

Every command works on one data directory (`--datadir`, or $CHANHUB_REGTEST_DIR,
default ~/.chanhub/regtest). The node is a separate process that outlives the
command; commands other than `start` reach it over its JSON-RPC port with the
cookie it wrote, through the same client the hub uses. Errors print one line and
exit non-zero.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from channel.chain import BitcoinRpc, ChainError, btc_to_sat, sat_to_btc
from regtest import network as regtest_network
from regtest.harness import HarnessError, NodeEndpoint, running_node, start_node, stop_node

T = TypeVar("T")


def default_datadir() -> Path:
    configured = os.environ.get("CHANHUB_REGTEST_DIR")
    return Path(configured) if configured else Path.home() / ".chanhub" / "regtest"


def _endpoint(datadir: Path) -> NodeEndpoint:
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
@datadir_option
def mine(nblocks: int, address: str | None, datadir: Path) -> None:
    """Mine NBLOCKS blocks now."""

    async def generate(rpc: BitcoinRpc) -> tuple[list[str], int]:
        target = address or await rpc.getnewaddress()
        hashes = await rpc.generatetoaddress(nblocks, target)
        return hashes, await rpc.getblockcount()

    hashes, height = _with_rpc(datadir, generate)
    click.echo(f"mined {len(hashes)} block(s); height {height}, tip {hashes[-1]}")


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
@click.option("--store", type=click.Choice(["sqlite", "postgres"]), default="sqlite",
              show_default=True, help="The hub's store (postgres: a schema of its own on "
              "127.0.0.1:5432, database test).")
@click.option("--hub-application", default=None, metavar="MODULE:FUNCTION",
              help="chanhubd's --application (default: chanhubd's own).")
@datadir_option
def up(client_count: int, store: str, hub_application: str | None, datadir: Path) -> None:
    """Start the node, a hub and N funded clients, each a separate process."""
    try:
        started = regtest_network.up(datadir, clients=client_count, store=store,
                                     hub_application=hub_application)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in regtest_network.describe(started):
        click.echo(line)
    click.echo(f"stop everything with: chanhub-regtest down --datadir {datadir}")


@main.command("down")
@datadir_option
def down(datadir: Path) -> None:
    """Stop every process `up` started (clients, then the hub, then the node)."""
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


if __name__ == "__main__":
    main()
