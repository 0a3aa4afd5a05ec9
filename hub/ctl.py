"""``chanhubctl``: the operator's CLI, built only on the Admin gRPC API.

Theory of operation. Each command makes one Admin call over TLS (the certificate
pinned from ``--tls-cert``) carrying the admin credential (``x-chanhub-admin``, read
from ``--admin-credential``, a 0600 file made by chanhubd), then prints a rich table,
or the response as JSON with ``--json``. Any failure prints one line on stderr and
exits non-zero (2 for a usage error from click, 1 otherwise).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from proto import admin_pb2, admin_pb2_grpc, client_pb2
from protocol.driver.wire_auth import ADMIN_METADATA_KEY


class Ctl:
    def __init__(self, target: str, tls_cert: Path, credential: Path, as_json: bool) -> None:
        self.as_json = as_json
        try:
            root = tls_cert.read_bytes()
            self.credential = credential.read_text().strip()
        except OSError as exc:
            raise click.ClickException(f"cannot read {exc.filename}: {exc.strerror}") from None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root),
                                      options=[("grpc.ssl_target_name_override", "localhost")])
        self.stub = admin_pb2_grpc.AdminStub(channel)

    def call(self, method: str, request: Message) -> Any:
        try:
            return getattr(self.stub, method)(
                request, metadata=[(ADMIN_METADATA_KEY, self.credential)], timeout=30)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise click.ClickException(f"{method}: {code}: {details}") from None

    def show(self, response: Message, table: Table | None) -> None:
        if self.as_json or table is None:
            click.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True),
                                  indent=2, sort_keys=True))
        else:
            Console().print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rpcserver", default="127.0.0.1:10009", show_default=True,
              help="chanhubd's host:port.")
@click.option("--tls-cert", type=click.Path(path_type=Path), required=True,
              help="chanhubd's TLS certificate (pinned).")
@click.option("--admin-credential", type=click.Path(path_type=Path), required=True,
              help="The admin credential file chanhubd made (mode 0600).")
@click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")
@click.pass_context
def main(ctx: click.Context, rpcserver: str, tls_cert: Path, admin_credential: Path,
         as_json: bool) -> None:
    """chanhubctl: operate a Chanhub hub through its Admin API."""
    ctx.obj = Ctl(rpcserver, tls_cert, admin_credential, as_json)


@main.command()
@click.pass_obj
def info(ctl: Ctl) -> None:
    """The hub: node id, height, fees, clients, channels, balances."""
    r = ctl.call("GetInfo", admin_pb2.GetInfoRequest())
    table = Table(show_header=False)
    for name, value in (("node id", r.hub.hub_node_id.hex()), ("chain", r.hub.chain),
                        ("height", r.hub.block_height),
                        ("fee", f"{r.hub.fee_policy.base_fee_msat} msat + "
                                f"{r.hub.fee_policy.fee_rate_ppm} ppm"),
                        ("clients", f"{r.client_count} ({r.connected_client_count} connected)"),
                        ("open channels", r.open_channel_count),
                        ("hub channel balance", f"{r.hub_channel_balance_msat} msat"),
                        ("on-chain confirmed", f"{r.onchain_confirmed_sat} sat"),
                        ("fees earned", f"{r.fees_earned_msat} msat")):
        table.add_row(name, str(value))
    ctl.show(r, table)


@main.command()
@click.option("--connected", is_flag=True, help="Only clients with an open link.")
@click.pass_obj
def clients(ctl: Ctl, connected: bool) -> None:
    """The hub's clients."""
    r = ctl.call("ListClients", admin_pb2.ListClientsRequest(connected_only=connected))
    table = Table("node id", "connected", "channels", "client msat", "hub msat")
    for c in r.clients:
        table.add_row(c.node_id.hex(), "yes" if c.connected else "no",
                      str(c.open_channel_count), str(c.local_balance_msat),
                      str(c.remote_balance_msat))
    ctl.show(r, table)


@main.command()
@click.option("--client", "client_hex", default="", help="Only this client's (node id hex).")
@click.pass_obj
def channels(ctl: Ctl, client_hex: str) -> None:
    """Every channel (or one client's)."""
    r = ctl.call("ListChannels", admin_pb2.ListChannelsRequest(
        client_node_id=_hex(client_hex, "--client")))
    table = Table("channel id", "client", "state", "capacity sat", "client msat", "hub msat",
                  "htlcs")
    for c in r.channels:
        table.add_row(c.channel_id.hex(), c.client_node_id.hex()[:16],
                      client_pb2.ChannelState.Name(c.state).removeprefix("CHANNEL_STATE_"),
                      str(c.capacity_sat), str(c.local_balance_msat),
                      str(c.remote_balance_msat), str(c.pending_htlc_count))
    ctl.show(r, table)


@main.command()
@click.option("--client", "client_hex", default="", help="Only this client's (node id hex).")
@click.option("--limit", default=100, show_default=True)
@click.pass_obj
def payments(ctl: Ctl, client_hex: str, limit: int) -> None:
    """Forwarded payments, oldest first."""
    r = ctl.call("ListPayments", admin_pb2.ListPaymentsRequest(
        client_node_id=_hex(client_hex, "--client"),
        filter=client_pb2.ListPaymentsRequest(limit=limit)))
    table = Table("payment id", "state", "in msat", "out msat", "fee msat", "reason")
    for f in r.forwards:
        table.add_row(f.payment_id, client_pb2.PaymentState.Name(f.state).removeprefix(
            "PAYMENT_STATE_"), str(f.amount_in_msat), str(f.amount_out_msat), str(f.fee_msat),
            client_pb2.FailureReason.Name(f.failure_reason).removeprefix("FAILURE_REASON_"))
    ctl.show(r, table)


@main.command()
@click.option("--base-msat", type=click.IntRange(0), required=True)
@click.option("--ppm", type=click.IntRange(0), required=True)
@click.pass_obj
def fees(ctl: Ctl, base_msat: int, ppm: int) -> None:
    """Set the routing fee policy (persisted)."""
    r = ctl.call("SetFeePolicy", admin_pb2.SetFeePolicyRequest(
        fee_policy=client_pb2.FeePolicy(base_fee_msat=base_msat, fee_rate_ppm=ppm)))
    ctl.show(r, None)


@main.command()
@click.argument("channel_id")
@click.option("--force", is_flag=True, help="Broadcast the latest commitment.")
@click.pass_obj
def close(ctl: Ctl, channel_id: str, force: bool) -> None:
    """Close a channel, cooperatively or by force."""
    r = ctl.call("CloseChannel", client_pb2.CloseChannelRequest(
        channel_id=_hex(channel_id, "CHANNEL_ID"), force=force))
    ctl.show(r, None)


@main.group()
def wallet() -> None:
    """The hub's on-chain wallet (it funds inbound channels)."""


@wallet.command("address")
@click.pass_obj
def wallet_address(ctl: Ctl) -> None:
    """A fresh receive address of the hub's wallet."""
    r = ctl.call("NewWalletAddress", admin_pb2.NewWalletAddressRequest())
    if ctl.as_json:
        ctl.show(r, None)
    else:
        click.echo(r.address)


@wallet.command("balance")
@click.pass_obj
def wallet_balance(ctl: Ctl) -> None:
    """The hub's wallet balance in satoshi."""
    r = ctl.call("GetWalletBalance", admin_pb2.GetWalletBalanceRequest())
    table = Table(show_header=False)
    for name, value in (("confirmed", r.confirmed_sat), ("unconfirmed", r.unconfirmed_sat),
                        ("reserved", r.reserved_sat)):
        table.add_row(name, f"{value} sat")
    ctl.show(r, table)


def _hex(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not hex", param_hint=name) from None


if __name__ == "__main__":
    sys.exit(main())
