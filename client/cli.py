"""``chanhub``: the client's command line, built only on the public SDK.

Every command opens the client's store in ``--data-dir`` (a second process on the same
store gets one clear line: the store is in use), connects to the hub over pinned TLS,
does one thing and exits; ``serve`` stays online to receive. Errors: one line on
stderr and exit status 1. ``--json`` prints machine-readable output.

Watchtowers (docs/tower.md): ``init``, ``serve`` and ``tower add`` take ``--tower
HOST:PORT`` with ``--tower-cert FILE`` or ``--tower-fingerprint HEX``; the tower is
registered with first (an unreachable tower or a wrong pin is an error and nothing
is stored), then kept in ``<data dir>/towers.json`` (``client.tower_config``), so
every later command that goes online sends the appointments of its revocations to
every stored tower. That needs ``--bitcoind-rpc`` (the penalties pay our wallet, at
the chain's fee estimate). A command waits up to ``TOWER_DELIVERY_SECONDS`` before it
exits for its appointments to be taken; what is left waits in the tower's outbox for
the next command or ``serve``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
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
from client.tower import TowerClient, TowerError
from client.tower_config import (
    TowerEntry,
    load_towers,
    outbox_dir,
    parse_tower,
    save_towers,
    with_tower,
)
from client.transport import HubPin
from proto import client_pb2
from protocol.driver.crypto import Passphrase
from protocol.driver.db import sqlite_url
from protocol.driver.driver import Broadcaster
from protocol.driver.grpc_bridge import GrpcBridge, open_grpc_bridge
from protocol.driver.wire_auth import cert_der, normalize_fingerprint

#: How long a one-shot command waits, before it exits, for the towers to take the
#: appointments it made (they are durable in the outbox either way).
TOWER_DELIVERY_SECONDS = 15.0


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

    def towers(self) -> list[TowerEntry]:
        return load_towers(self.data_dir)

    def tower_client(self, bridge: GrpcBridge, node_secret: bytes, entry: TowerEntry, *,
                     outbox: Path | None = None) -> TowerClient:
        return TowerClient(bridge, entry.target, node_secret=node_secret, pin=entry.pin(),
                           outbox_dir=outbox or outbox_dir(self.data_dir, entry.target),
                           expected_tower_node_id=entry.node_id())

    async def register_tower(self, entry: TowerEntry) -> dict[str, Any]:
        """Register with the tower of ``entry`` (its pin checked, our node key shown);
        store it in the towers file once it answered. A throwaway outbox: nothing is
        written in the data directory unless the tower took us."""
        secret = node_secret_of(self.store_url, self.key_source)
        with tempfile.TemporaryDirectory() as scratch:
            async with open_grpc_bridge() as bridge:
                tower = self.tower_client(bridge, secret, entry, outbox=Path(scratch))
                try:
                    info = await tower.get_info()
                except TowerError as exc:
                    raise TowerError(exc.code, f"{entry.target}: {exc.details}") from None
                finally:
                    await tower.aclose()
        registered = TowerEntry(entry.target, entry.tls_cert_sha256, entry.tls_cert_pem,
                                bytes(info.tower_node_id).hex())
        save_towers(self.data_dir, with_tower(self.towers(), registered))
        quota = tower.quota
        return {"tower": entry.target, "tower_node_id": registered.tower_node_id,
                "pin": registered.pin_text,
                "appointments": quota.used_appointments if quota else 0,
                "quota": quota.max_appointments if quota else 0}

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncHubClient]:
        """With ``--bitcoind-rpc`` the client follows the chain itself (height, wallet,
        broadcaster); without, the height is the hub's, read once (a command lives
        seconds) and nothing can be funded or broadcast. The stored towers get the
        appointments of every revocation (so they need the chain)."""
        entries = self.towers()
        if entries and self.bitcoind_rpc is None:
            raise errors.InvalidRequest(
                f"{len(entries)} tower(s) set (`chanhub tower list`): give --bitcoind-rpc "
                "so their penalties can pay our wallet")
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
        made: list[TowerClient] = []

        def make_towers(bridge: GrpcBridge, node_secret: bytes) -> Sequence[TowerClient]:
            made.extend(self.tower_client(bridge, node_secret, e) for e in entries)
            return made

        async with rpc, open_grpc_client(
                lambda: ClientNode.open(self.store_url, self.key_source, None),
                self.hub, self.pin(), chain_rpc=rpc, towers=make_towers) as client:
            yield client
            if made:
                await _deliver_appointments(client, made)


async def _deliver_appointments(client: AsyncHubClient, towers: list[TowerClient]) -> None:
    """Before a command exits: let its last updates finish and the hub revoke what
    our last signature replaced (a payment's outcome arrives one revocation before
    the dance ends: exiting then would leave that state with no appointment), then give
    the towers' delivery tasks up to ``TOWER_DELIVERY_SECONDS`` to empty the outboxes."""
    session = client.node.session
    with trio.move_on_after(TOWER_DELIVERY_SECONDS):
        await session.idle()
        while any(d.channel.awaiting_revocation() for d in session.drivers):
            await session.wait_changed()
        await session.idle()
        while any(len(t.outbox) for t in towers):
            await trio.sleep(0.05)  # the outbox is a directory; delivery runs beside us
    for tower in towers:
        if len(tower.outbox):
            click.echo(f"warning: tower {tower.target}: {len(tower.outbox)} appointment(s) "
                       f"not delivered yet ({tower.last_error or 'no answer'}); kept for "
                       "the next command", err=True)


def _run(ctx: click.Context, action: Callable[[Settings], Any], *, bare: str | None = None
         ) -> None:
    """Run one command: its result printed (``--json`` or a table), or one error line.
    ``bare``: without ``--json``, print only that field of the result, as is (an
    invoice: a table would wrap it, and ``INVOICE=$(chanhub invoice ...)`` takes it)."""
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
    if bare is not None and not settings.as_json:
        click.echo(result[bare])
        return
    _print(settings, result)


def _print(settings: Settings, result: Any) -> None:
    if settings.as_json:
        click.echo(json.dumps(result, default=lambda v: v.hex() if isinstance(v, bytes)
                              else str(v)))
        return
    if isinstance(result, dict):
        # One record: a field per line, which an 80-column terminal shows whole (a
        # payment's dozen columns, two of them 64 hex digits, would be wrapped).
        table = Table("field")
        table.add_column("value", overflow="fold")  # hashes whole, over two lines if need be
        for name, value in result.items():
            table.add_row(name, _cell(value))
        Console().print(table)
        return
    if isinstance(result, list) and result and isinstance(result[0], dict):
        table = Table(*result[0].keys())
        for row in result:
            table.add_row(*[_cell(v) for v in row.values()])
        Console().print(table)


def _cell(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


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


F = Callable[..., Any]


def tower_options(command: F) -> F:
    """``--tower HOST:PORT`` and its pin: one tower per command (``chanhub tower add``
    adds more; every stored tower is used)."""
    command = click.option("--tower-fingerprint", metavar="HEX",
                           help="The SHA-256 fingerprint of the tower's certificate.")(command)
    command = click.option("--tower-cert", metavar="FILE",
                           help="The tower's certificate (PEM) to pin.")(command)
    return click.option("--tower", "tower_target", metavar="HOST:PORT",
                        help="Register with this watchtower and keep it for later "
                             "commands (pin it with --tower-cert or --tower-fingerprint)."
                        )(command)


def _tower_entry(target: str | None, cert: str | None, fingerprint: str | None
                 ) -> TowerEntry | None:
    """The tower given on the command line, checked before anything else runs."""
    if target is None:
        if cert is not None or fingerprint is not None:
            raise errors.InvalidRequest("--tower-cert/--tower-fingerprint need --tower "
                                        "HOST:PORT")
        return None
    return parse_tower(target, cert, fingerprint)


@main.command()
@tower_options
@click.pass_context
def init(ctx: click.Context, tower_target: str | None, tower_cert: str | None,
         tower_fingerprint: str | None) -> None:
    """Create the client's store and keys, and record the hub's terms (and register
    with a watchtower: --tower)."""
    async def action(s: Settings) -> dict[str, Any]:
        entry = _tower_entry(tower_target, tower_cert, tower_fingerprint)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(s.data_dir, 0o700)
        info = await s.hub_info()
        terms = terms_of(info)
        tower = await s.register_tower(entry) if entry is not None else None
        save_hub_terms(s.store_url, terms)
        shown: dict[str, Any] = {"hub_node_id": terms.hub_node_id,
                                 "base_fee_msat": terms.base_fee_msat,
                                 "fee_ppm": terms.fee_ppm}
        if tower is not None:
            shown["tower"] = tower["tower"]
        return shown
    _run(ctx, action)


@main.group("tower")
def tower_group() -> None:
    """The watchtowers that punish a cheating hub while we are offline."""


@tower_group.command("add")
@click.argument("target", metavar="HOST:PORT")
@click.option("--cert", "cert_file", metavar="FILE", help="The tower's certificate (PEM).")
@click.option("--fingerprint", metavar="HEX", help="Its certificate's SHA-256 fingerprint.")
@click.pass_context
def tower_add(ctx: click.Context, target: str, cert_file: str | None,
              fingerprint: str | None) -> None:
    """Register with the tower at HOST:PORT and use it from now on (replaces the pin of
    a tower already at that address)."""
    async def action(s: Settings) -> dict[str, Any]:
        return await s.register_tower(parse_tower(target, cert_file, fingerprint))
    _run(ctx, action)


@tower_group.command("list")
@click.pass_context
def tower_list(ctx: click.Context) -> None:
    """The stored towers, each asked how many of our appointments it keeps; `pending`
    are those not delivered yet. Exit status 1 if a tower did not answer."""
    async def action(s: Settings) -> list[dict[str, Any]]:
        entries = s.towers()
        if not entries:
            return []
        secret = node_secret_of(s.store_url, s.key_source)
        rows: list[dict[str, Any]] = []
        failed: list[TowerError] = []
        async with open_grpc_bridge() as bridge:
            for entry in entries:
                tower = s.tower_client(bridge, secret, entry)
                row: dict[str, Any] = {"tower": entry.target,
                                       "tower_node_id": entry.tower_node_id,
                                       "pin": entry.pin_text}
                try:
                    info = await tower.get_info()
                    quota = tower.quota
                    row.update(registered=bool(info.registered),
                               appointments=quota.used_appointments if quota else 0,
                               quota=quota.max_appointments if quota else 0,
                               height=int(info.block_height), status="ok")
                except TowerError as exc:
                    failed.append(TowerError(exc.code, f"{entry.target}: {exc.details}"))
                    row.update(registered=None, appointments=None, quota=None, height=None,
                               status=str(exc))
                finally:
                    await tower.aclose()
                row["pending"] = len(tower.outbox)
                rows.append(row)
        if failed:
            _print(s, rows)
            raise TowerError(failed[0].code, "; ".join(e.details for e in failed))
        return rows
    _run(ctx, action)


@tower_group.command("remove")
@click.argument("target", metavar="HOST:PORT")
@click.pass_context
def tower_remove(ctx: click.Context, target: str) -> None:
    """Stop using the tower at HOST:PORT (what it stores stays there; appointments not
    yet delivered stay in its outbox)."""
    async def action(s: Settings) -> dict[str, Any]:
        entries = s.towers()
        kept = [e for e in entries if e.target != target]
        if len(kept) == len(entries):
            raise errors.NotFound(f"no tower at {target} (`chanhub tower list`)")
        save_towers(s.data_dir, kept)
        return {"removed": target, "towers": len(kept)}
    _run(ctx, action)


@main.command()
@click.argument("amount_msat", type=int)
@click.option("--description", default="")
@click.option("--expiry", "expiry_seconds", type=int, default=3600)
@click.pass_context
def invoice(ctx: click.Context, amount_msat: int, description: str, expiry_seconds: int
            ) -> None:
    """Make a BOLT #11 invoice and print it (stay online with `serve` to be paid)."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            return {"invoice": await client.add_invoice(amount_msat, description,
                                                        expiry_seconds)}
    _run(ctx, action, bare="invoice")


@main.command()
@click.argument("bolt11")
@click.option("--idempotency-key", required=True,
              help="The same key never pays twice (retry with the same key).")
@click.option("--max-fee-msat", type=click.IntRange(0), default=None,
              help="Refuse before paying if the hub's fee is above this (default: no limit).")
@click.pass_context
def pay(ctx: click.Context, bolt11: str, idempotency_key: str,
        max_fee_msat: int | None) -> None:
    """Pay an invoice and wait for the outcome."""
    async def action(s: Settings) -> dict[str, Any]:
        async with s.client() as client:
            await client.ready()
            return asdict(await client.pay(idempotency_key=idempotency_key, invoice=bolt11,
                                           max_fee_msat=max_fee_msat))
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
@click.option("--to", "payer_node_id", default=None,
              help="The payer's node id (hex); by default the one the payer stated in the "
                   "payment (a payment from an older payer stated none: then required).")
@click.option("--idempotency-key", required=True)
@click.pass_context
def refund(ctx: click.Context, payment_id: str, amount_msat: int, payer_node_id: str | None,
           idempotency_key: str) -> None:
    """Send all or part of a received payment back to its payer."""
    async def action(s: Settings) -> dict[str, Any]:
        try:
            payer = bytes.fromhex(payer_node_id) if payer_node_id is not None else None
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
                     "remote_msat": int(d.channel.latest_view(Side.LOCAL).remote_msat),
                     "feerate_per_kw": d.channel.d.book.base_feerate_per_kw}
                    for d in node.session.drivers]
        finally:
            node.close()
    _run(ctx, action)


@main.command()
@click.option("--after", type=int, default=None,
              help="Print events after this sequence (default: only new ones).")
@click.option("--until-paid", "count", type=int, default=0,
              help="Exit after this many invoices were paid (0: run until stopped).")
@tower_options
@click.pass_context
def serve(ctx: click.Context, after: int | None, count: int, tower_target: str | None,
          tower_cert: str | None, tower_fingerprint: str | None) -> None:
    """Stay online to receive payments, printing each event as a JSON line (and
    register with a watchtower first: --tower)."""
    async def action(s: Settings) -> None:
        entry = _tower_entry(tower_target, tower_cert, tower_fingerprint)
        if entry is not None:
            if s.bitcoind_rpc is None:
                raise errors.InvalidRequest("--tower needs --bitcoind-rpc (the penalties "
                                            "pay our wallet)")
            await s.register_tower(entry)
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
