"""``chanhub-tower`` (also ``python -m hub.tower``): the watchtower's command line.

Settings come from flags, else ``CHANHUB_TOWER_<FLAG>`` environment variables (e.g.
``CHANHUB_TOWER_CHAIN_RPC_URL``), else the TOML file ``--config`` (default
``<data dir>/chanhub-tower.toml`` when it exists; keys are the flag names with
underscores, e.g. ``chain_rpc_cookie_file = "..."``), else the defaults ``--help``
shows. On start it prints one JSON line to stdout, ``{"listen": ..., "port": ...,
"tower_node_id": ..., "tls_cert_sha256": ..., "tls_cert_file": ...}``: what a client
needs to reach and pin it. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import trio

from channel.chain.rpc import BitcoinRpc, ChainError
from hub.tls import TlsError, load_or_create_tls
from hub.tower.service import (
    DEFAULT_MAX_APPOINTMENTS,
    DEFAULT_MAX_BLOB_BYTES,
    TowerConfigError,
    TowerService,
    TowerSettings,
    TowerStarted,
)
from protocol.driver.db import StoreError

DEFAULT_DATA_DIR = Path("~/.chanhub/tower").expanduser()
CONFIG_FILE = "chanhub-tower.toml"


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not host:port", param_hint="--listen")
    return host.strip("[]") or "127.0.0.1", int(port)


def _rpc(url: str, cookie_file: Path | None, user: str | None,
         password: str | None) -> BitcoinRpc:
    if cookie_file is not None:
        return BitcoinRpc(url, cookie_file=cookie_file)
    if user is None or password is None:
        raise click.ClickException("--chain-rpc-cookie-file or --chain-rpc-user and "
                                   "--chain-rpc-password are required")
    return BitcoinRpc(url, username=user, password=password)


async def _serve(settings: TowerSettings, rpc: BitcoinRpc) -> None:
    async with rpc, trio.open_nursery() as nursery:
        service = TowerService(settings, rpc)
        started: TowerStarted = await nursery.start(service.run)
        click.echo(json.dumps({
            "listen": f"{settings.listen_host}:{settings.listen_port}",
            "port": started.port, "tower_node_id": started.tower_node_id.hex(),
            "tls_cert_sha256": started.tls_fingerprint_sha256,
            "tls_cert_file": str(started.tls_cert_file),
        }))
        sys.stdout.flush()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def _toml_defaults(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Load the TOML file into click's default map (flags and env vars override it)."""
    data_dir = Path(ctx.params.get("data_dir") or DEFAULT_DATA_DIR)
    path = value or (data_dir / CONFIG_FILE)
    if value is None and not path.exists():
        return None
    try:
        ctx.default_map = {k.replace("-", "_"): v
                           for k, v in tomllib.loads(path.read_text()).items()}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from exc
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "auto_envvar_prefix": "CHANHUB_TOWER",
                                 "max_content_width": 100})
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_DATA_DIR, show_default=True, is_eager=True, show_envvar=True,
              help="Node key, TLS files and (by default) the SQLite store live here.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=_toml_defaults, is_eager=True, expose_value=False,
              help=f"TOML file [default <data dir>/{CONFIG_FILE} if it exists].")
@click.option("--listen", default="127.0.0.1:9814", show_default=True, show_envvar=True,
              help="host:port of the gRPC listener (TLS).")
@click.option("--store-url", default=None, show_envvar=True,
              help="SQLAlchemy URL (postgresql+psycopg://...) [default SQLite in the data dir].")
@click.option("--chain-rpc-url", default="http://127.0.0.1:18443", show_default=True,
              show_envvar=True, help="bitcoind JSON-RPC URL (the embedded node or a real one).")
@click.option("--chain-rpc-cookie-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, show_envvar=True, help="bitcoind cookie file.")
@click.option("--chain-rpc-user", default=None, show_envvar=True,
              help="bitcoind RPC user, instead of a cookie.")
@click.option("--chain-rpc-password", default=None, show_envvar=True,
              help="bitcoind RPC password, instead of a cookie.")
@click.option("--max-appointments-per-client", type=click.IntRange(min=1),
              default=DEFAULT_MAX_APPOINTMENTS, show_default=True, show_envvar=True,
              help="Quota of stored appointments per client (RESOURCE_EXHAUSTED beyond).")
@click.option("--max-blob-bytes", type=click.IntRange(min=64, max=1_000_000),
              default=DEFAULT_MAX_BLOB_BYTES, show_default=True, show_envvar=True,
              help="Largest encrypted appointment accepted.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0,
              show_default=True, show_envvar=True, help="Seconds between chain polls.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, show_envvar=True)
@click.option("--print-fingerprint", is_flag=True,
              help="Make the TLS files if missing, print the certificate's SHA-256 "
              "fingerprint (what clients pin) and exit.")
def main(data_dir: Path, listen: str, store_url: str | None, chain_rpc_url: str,
         chain_rpc_cookie_file: Path | None, chain_rpc_user: str | None,
         chain_rpc_password: str | None, max_appointments_per_client: int,
         max_blob_bytes: int, poll_interval: float, log_level: str,
         print_fingerprint: bool, **_: Any) -> None:
    """chanhub-tower: the Chanhub watchtower."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = data_dir.expanduser()
    if print_fingerprint:
        try:
            tls = load_or_create_tls(data_dir / "tls.cert", data_dir / "tls.key")
        except TlsError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(tls.fingerprint_sha256)
        return
    host, port = _split_listen(listen)
    settings = TowerSettings(data_dir, listen_host=host, listen_port=port, store_url=store_url,
                             max_appointments_per_client=max_appointments_per_client,
                             max_blob_bytes=max_blob_bytes, poll_interval_s=poll_interval)
    rpc = _rpc(chain_rpc_url, chain_rpc_cookie_file, chain_rpc_user, chain_rpc_password)
    try:
        trio.run(_serve, settings, rpc)
    except BaseException as exc:  # trio wraps a service's error in exception groups
        cause = _first_leaf(exc)
        if isinstance(cause, (ChainError, StoreError, TlsError, TowerConfigError, OSError)):
            raise click.ClickException(f"{type(cause).__name__}: {cause}") from exc
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    main()
