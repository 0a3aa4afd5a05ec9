"""``chanhub``: the client's command line, built only on the public SDK.

Every command opens the client's store in ``--data-dir`` (a second process on the same
store gets one clear line: the store is in use), connects to the hub over pinned TLS,
does one thing and exits; ``serve`` stays online to receive. Errors: one line on
stderr and exit status 1. ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import trio
from rich.console import Console
from rich.table import Table

from channel.chain.rpc import BitcoinRpc
from channel.commitment import Side
from client import errors
from client.node import ClientNode, node_secret_of, save_hub_terms
from client.sdk import AsyncHubClient, GrpcLinks, OpenProgress, open_grpc_client, terms_of
from client.transport import HubPin
from proto import client_pb2
from protocol.driver.crypto import Passphrase
from protocol.driver.db import sqlite_url
from protocol.driver.driver import Broadcaster
from protocol.driver.grpc_bridge import open_grpc_bridge
from protocol.driver.wire_auth import cert_der, normalize_fingerprint


class _NoBroadcaster:
    """Until the on-chain wallet is wired in, a force close cannot be broadcast here."""

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        return None


class Settings:
    def __init__(self, data_dir: Path, hub: str, tls_cert: str | None,
                 tls_fingerprint: str | None, passphrase: str, as_json: bool,
                 scrypt_n: int, bitcoind_rpc: str | None = None,
                 bitcoind_cookie: str | None = None, bitcoind_user: str | None = None,
                 bitcoind_password: str | None = None) -> None:
        self.data_dir, self.hub, self.as_json = data_dir, hub, as_json
        self.bitcoind_rpc, self.bitcoind_cookie = bitcoind_rpc, bitcoind_cookie
        self.bitcoind_user, self.bitcoind_password = bitcoind_user, bitcoind_password
        self.tls_cert, self.tls_fingerprint = tls_cert, tls_fingerprint
        self.key_source = Passphrase(passphrase, scrypt_n=scrypt_n)

    @property
    def store_url(self) -> str:
        return sqlite_url(self.data_dir / "client.sqlite")

    def pin(self) -> HubPin:
        """The hub's pin, checked here so a bad one is one error line, not a traceback."""
        if self.tls_fingerprint:
            try:
                normalize_fingerprint(self.tls_fingerprint)
            except ValueError as exc:
                raise errors.InvalidRequest(f"--tls-fingerprint: {exc}") from None
            return HubPin.from_fingerprint(self.tls_fingerprint)
        if self.tls_cert:
            try:
                pin = HubPin.from_cert_file(self.tls_cert)
                cert_der(pin.cert_pem or b"")
            except OSError as exc:
                raise errors.InvalidRequest(f"--tls-cert {self.tls_cert}: {exc.strerror}"
                                            ) from None
            except ValueError:
                raise errors.InvalidRequest(f"--tls-cert {self.tls_cert}: not a PEM or DER "
                                            "certificate") from None
            return pin
        raise errors.InvalidRequest("pin the hub: --tls-cert FILE or --tls-fingerprint HEX")

    def open_node(self, height: int = 0) -> ClientNode:
        broadcaster: Broadcaster = _NoBroadcaster()
        return ClientNode.open(self.store_url, self.key_source, None,
                               height=lambda: height, broadcaster=broadcaster)

    async def hub_info(self) -> client_pb2.GetInfoResponse:
        secret = node_secret_of(self.store_url, self.key_source)
        async with open_grpc_bridge() as bridge:
            return await GrpcLinks(bridge, self.hub, node_secret=secret, pin=self.pin()
                                   ).hub_info()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncHubClient]:
        """With ``--bitcoind-rpc`` the client follows the chain itself (height, wallet,
        broadcaster); without, the height is the hub's, read once (a command lives
        seconds) and nothing can be funded or broadcast."""
        if self.bitcoind_rpc is None:
            height = int((await self.hub_info()).block_height)
            async with open_grpc_client(lambda: self.open_node(height), self.hub,
                                        self.pin()) as client:
                yield client
            return
        if self.bitcoind_cookie is None and self.bitcoind_user is None:
            raise errors.InvalidRequest("give --bitcoind-cookie FILE or --bitcoind-user/"
                                        "--bitcoind-password")
        rpc = BitcoinRpc(self.bitcoind_rpc, username=self.bitcoind_user,
                         password=self.bitcoind_password,
                         cookie_file=Path(self.bitcoind_cookie) if self.bitcoind_cookie
                         else None)
        async with rpc, open_grpc_client(
                lambda: ClientNode.open(self.store_url, self.key_source, None),
                self.hub, self.pin(), chain_rpc=rpc) as client:
            yield client


def _run(ctx: click.Context, action: Callable[[Settings], Any]) -> None:
    """Run one command: its result printed (``--json`` or a table), or one error line."""
    settings: Settings = ctx.obj
    try:
        result = trio.run(action, settings)
    except (errors.ChanhubError, BaseExceptionGroup) as exc:
        error = _chanhub_error(exc)
        if error is None:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if result is None:
        return
    if settings.as_json:
        click.echo(json.dumps(result, default=lambda v: v.hex() if isinstance(v, bytes)
                              else str(v)))
        return
    rows = result if isinstance(result, list) else [result]
    if rows and isinstance(rows[0], dict):
        table = Table(*rows[0].keys())
        for row in rows:
            table.add_row(*[v.hex() if isinstance(v, bytes) else str(v) for v in row.values()])
        Console().print(table)


def _chanhub_error(exc: BaseException) -> errors.ChanhubError | None:
    """The ChanhubError behind ``exc`` (trio nurseries wrap errors in groups)."""
    if isinstance(exc, errors.ChanhubError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _chanhub_error(inner)
            if found is not None:
                return found
    return None


@click.group()
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="CHANHUB_DATA_DIR",
              default=Path.home() / ".chanhub", show_default=True,
              help="Where the client's store lives.")
@click.option("--hub", envvar="CHANHUB_HUB", default="127.0.0.1:10009", show_default=True,
              help="The hub's gRPC address.")
@click.option("--tls-cert", envvar="CHANHUB_TLS_CERT", help="The hub's certificate to pin.")
@click.option("--tls-fingerprint", envvar="CHANHUB_TLS_FINGERPRINT",
              help="The SHA-256 fingerprint of the hub's certificate to pin.")
@click.option("--passphrase", envvar="CHANHUB_PASSPHRASE", prompt=True, hide_input=True,
              help="Encrypts the client's keys at rest (or CHANHUB_PASSPHRASE).")
@click.option("--scrypt-n", type=int, default=2**15, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--bitcoind-rpc", envvar="CHANHUB_BITCOIND_RPC",
              help="Our own bitcoind's JSON-RPC URL (wallet, open, close need it).")
@click.option("--bitcoind-cookie", envvar="CHANHUB_BITCOIND_COOKIE",
              help="Its cookie file (<datadir>/regtest/.cookie).")
@click.option("--bitcoind-user", envvar="CHANHUB_BITCOIND_USER")
@click.option("--bitcoind-password", envvar="CHANHUB_BITCOIND_PASSWORD")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, hub: str, tls_cert: str | None,
         tls_fingerprint: str | None, passphrase: str, scrypt_n: int, as_json: bool,
         bitcoind_rpc: str | None, bitcoind_cookie: str | None, bitcoind_user: str | None,
         bitcoind_password: str | None) -> None:
    """chanhub: pay and get paid through a Chanhub hub."""
    ctx.obj = Settings(data_dir, hub, tls_cert, tls_fingerprint, passphrase, as_json, scrypt_n,
                       bitcoind_rpc, bitcoind_cookie, bitcoind_user, bitcoind_password)


@main.group()
def wallet() -> None:
    """The client's on-chain wallet (needs --bitcoind-rpc)."""


@wallet.command("address")
@click.pass_context
def wallet_address(ctx: click.Context) -> None:
    """A fresh receive address."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            return {"address": await client.wallet_address()}
    _run(ctx, action)


@wallet.command("balance")
@click.pass_context
def wallet_balance(ctx: click.Context) -> None:
    """Confirmed, unconfirmed and reserved satoshis."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            return asdict(await client.wallet_balance())
    _run(ctx, action)


@wallet.command("send")
@click.argument("address")
@click.argument("amount_sat", type=int)
@click.pass_context
def wallet_send(ctx: click.Context, address: str, amount_sat: int) -> None:
    """Pay AMOUNT_SAT on chain to ADDRESS."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            return {"txid": await client.wallet_send(address, amount_sat)}
    _run(ctx, action)


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the client's store and keys, and record the hub's terms."""
    async def action(s: Settings) -> dict[str, Any]:
        s.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(s.data_dir, 0o700)
        info = await s.hub_info()
        terms = terms_of(info)
        save_hub_terms(s.store_url, terms)
        return {"hub_node_id": terms.hub_node_id, "base_fee_msat": terms.base_fee_msat,
                "fee_ppm": terms.fee_ppm}
    _run(ctx, action)


@main.command()
@click.argument("amount_msat", type=int)
@click.option("--description", default="")
@click.option("--expiry", "expiry_seconds", type=int, default=3600)
@click.pass_context
def invoice(ctx: click.Context, amount_msat: int, description: str, expiry_seconds: int
            ) -> None:
    """Make a BOLT #11 invoice (stay online with `serve` to be paid)."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            return {"invoice": await client.add_invoice(amount_msat, description,
                                                        expiry_seconds)}
    _run(ctx, action)


@main.command()
@click.argument("bolt11")
@click.option("--idempotency-key", required=True,
              help="The same key never pays twice (retry with the same key).")
@click.pass_context
def pay(ctx: click.Context, bolt11: str, idempotency_key: str) -> None:
    """Pay an invoice and wait for the outcome."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            await client.ready()
            return asdict(await client.pay(idempotency_key=idempotency_key, invoice=bolt11))
    _run(ctx, action)


@main.command()
@click.pass_context
def balance(ctx: click.Context) -> None:
    """Our balance in open channels."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            await client.ready()
            return asdict(await client.get_balance())
    _run(ctx, action)


@main.command()
@click.pass_context
def history(ctx: click.Context) -> None:
    """Every payment, sent and received."""
    async def action(s: Settings) -> list[dict[str, Any]]:
        node = s.open_node()
        try:
            return [{k: v for k, v in p.items() if k not in ("packet", "payment_preimage")}
                    for p in node.payments()]
        finally:
            node.close()
    _run(ctx, action)


@main.command()
@click.argument("payment_id")
@click.argument("amount_msat", type=int)
@click.option("--to", "payer_node_id", required=True,
              help="The payer's node id (hex): the packet does not reveal it.")
@click.option("--idempotency-key", required=True)
@click.pass_context
def refund(ctx: click.Context, payment_id: str, amount_msat: int, payer_node_id: str,
           idempotency_key: str) -> None:
    """Send all or part of a received payment back to its payer."""
    async def action(s: Settings) -> dict[str, Any]:
        try:
            payer = bytes.fromhex(payer_node_id)
        except ValueError as exc:
            raise errors.InvalidRequest("--to must be a hex node id") from exc
        async with s.client() as client:
            await client.ready()
            return asdict(await client.refund(payment_id, amount_msat,
                                              idempotency_key=idempotency_key,
                                              payer_node_id=payer))
    _run(ctx, action)


@main.command()
@click.option("--after", type=int, default=0, help="Events after this sequence.")
@click.pass_context
def events(ctx: click.Context, after: int) -> None:
    """The client's event log (stored; `serve` follows it live)."""
    async def action(s: Settings) -> list[dict[str, Any]]:
        node = s.open_node()
        try:
            return [asdict(e) for e in await node.events_after(after)]
        finally:
            node.close()
    _run(ctx, action)


@main.command("open")
@click.argument("amount_sat", type=int)
@click.option("--no-wait", is_flag=True, help="Return once the funding tx is broadcast.")
@click.pass_context
def open_(ctx: click.Context, amount_sat: int, no_wait: bool) -> None:
    """Open a channel of AMOUNT_SAT funded from the wallet; by default wait until it is
    open (minimum depth), showing each step."""
    async def action(s: Settings) -> dict[str, Any]:
        console = Console(stderr=True)

        def progress(step: OpenProgress) -> None:
            console.print(f"[bold]{step.stage}[/bold] channel {step.channel_id.hex()[:16]}"
                          f"  funding {step.funding_txid or '-'}"
                          f"  {step.depth}/{step.minimum_depth} confirmations")

        async with s.client() as client:
            await client.ready()
            channel_id = await client.open_channel(amount_sat, wait=not no_wait,
                                                   progress=progress)
            return {"channel_id": channel_id}
    _run(ctx, action)


@main.command()
@click.argument("amount_sat", type=int)
@click.option("--idempotency-key", default="",
              help="The same key returns the same order (default: a new one).")
@click.option("--confirmations", type=click.IntRange(0), default=0,
              help="Confirmations we require (the hub may require more).")
@click.option("--no-wait", is_flag=True,
              help="Return once the channel is signed (the hub then broadcasts its funding).")
@click.pass_context
def inbound(ctx: click.Context, amount_sat: int, idempotency_key: str, confirmations: int,
            no_wait: bool) -> None:
    """Ask the hub for a channel it funds with AMOUNT_SAT toward us (what we can then
    receive); by default wait until it is open. Needs --bitcoind-rpc (we confirm the
    hub's funding from our own chain)."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            await client.ready()
            order = await client.request_inbound(
                amount_sat, idempotency_key=idempotency_key or os.urandom(16).hex(),
                required_confirmations=confirmations, wait=not no_wait)
            return asdict(order)
    _run(ctx, action)


@main.command()
@click.argument("channel_id")
@click.option("--force", is_flag=True,
              help="Broadcast our latest commitment instead of negotiating.")
@click.pass_context
def close(ctx: click.Context, channel_id: str, force: bool) -> None:
    """Close CHANNEL_ID (hex): cooperatively, or --force."""
    async def action(s: Settings) -> dict[str, Any]:
        try:
            cid = bytes.fromhex(channel_id)
        except ValueError as exc:
            raise errors.InvalidRequest("CHANNEL_ID must be hex") from exc
        async with s.client() as client:
            await client.ready()
            await client.close_channel(channel_id=cid, force=force)
            return {"channel_id": cid, "force": force}
    _run(ctx, action)


@main.command()
@click.pass_context
def channels(ctx: click.Context) -> None:
    """Our channels with the hub, from our own store."""
    async def action(s: Settings) -> list[dict[str, Any]]:
        node = s.open_node()
        try:
            return [{"channel_id": d.channel_id, "state": d.channel.state.value,
                     "local_msat": int(d.channel.latest_view(Side.LOCAL).local_msat),
                     "remote_msat": int(d.channel.latest_view(Side.LOCAL).remote_msat)}
                    for d in node.session.drivers]
        finally:
            node.close()
    _run(ctx, action)


@main.command()
@click.option("--after", type=int, default=None,
              help="Print events after this sequence (default: only new ones).")
@click.option("--until-paid", "count", type=int, default=0,
              help="Exit after this many invoices were paid (0: run until stopped).")
@click.pass_context
def serve(ctx: click.Context, after: int | None, count: int) -> None:
    """Stay online to receive payments, printing each event as a JSON line."""
    async def action(s: Settings) -> None:
        async with s.client() as client:
            await client.ready()
            cursor = await client.last_event_sequence() if after is None else after
            click.echo(f"online; events after {cursor}", err=True)
            paid = 0
            async for event in client.subscribe_events(cursor):
                click.echo(json.dumps({"event": event.kind, "sequence": event.sequence,
                                       "payment_id": event.payment_id,
                                       "amount_msat": event.amount_msat}))
                paid += event.kind == "invoice_paid"
                if count and paid >= count:
                    return
    _run(ctx, action)


if __name__ == "__main__":
    main()
