"""chanhubd's configuration: a TOML file, then ``CHANHUB_*`` environment variables,
then command-line flags, each overriding the one before.

Theory of operation. ``HubConfig`` is the one list of options: each field carries its
help text in its metadata, and everything else is derived from it: the TOML key (the
field name, e.g. ``fee_base_msat``), the environment variable (``CHANHUB_`` + the name
upper-cased, e.g. ``CHANHUB_FEE_BASE_MSAT``), the flag (``--fee-base-msat``, made by
``click_options``) and the ``--help`` text. ``load_config`` merges the three layers
into one validated ``HubConfig``; an unknown TOML key, an unparsable value or an
out-of-range one is a ``ConfigError`` naming the option and where it came from, so a
typo never silently falls back to a default.

Relative paths are resolved against the data directory, so a data directory is
self-contained and can be moved whole.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hub.policy import FeePolicy, PolicyError, check_cltv_expiry_delta

ENV_PREFIX = "CHANHUB_"
DEFAULT_DATA_DIR = Path("~/.chanhub/hub")
DEFAULT_CONFIG_FILE = "chanhubd.toml"  # looked for in the data directory


class ConfigError(ValueError):
    """An option that is unknown, unparsable or out of range (says which, and where)."""


@dataclass(frozen=True)
class HubConfig:
    """Every chanhubd option; ``HELP`` documents each (see the module docstring for
    how each is set)."""

    data_dir: Path = DEFAULT_DATA_DIR
    listen: str = "127.0.0.1:10009"
    tls_cert_file: Path = Path("tls.cert")
    tls_key_file: Path = Path("tls.key")
    tls_extra_names: str = ""
    admin_credential_file: Path = Path("admin.credential")
    chain_rpc_url: str = "http://127.0.0.1:18443"
    chain_rpc_cookie_file: Path | None = None
    chain_rpc_user: str = ""
    chain_rpc_password: str = ""
    store_url: str = ""
    passphrase_file: Path | None = None
    key_file: Path | None = None
    fee_base_msat: int = 1000
    fee_ppm: int = 1
    cltv_expiry_delta_blocks: int = 40
    minimum_depth: int = 3
    min_channel_size_sat: int = 20_000
    max_channel_size_sat: int = 16_777_215
    max_inbound_sat: int = 1_000_000
    max_inbound_total_sat: int = 50_000_000
    min_htlc_msat: int = 1
    max_htlc_msat: int = 5_000_000_000
    max_accepted_htlcs: int = 483
    max_channels_per_client: int = 5
    max_frame_bytes: int = 1 << 20
    max_messages_per_frame: int = 1024
    link_window_frames: int = 8
    shutdown_grace_seconds: int = 5
    tower: bool = False
    tower_listen: str = "127.0.0.1:9814"
    tower_max_appointments_per_client: int = 100_000
    log_level: str = "info"

    def path(self, value: Path) -> Path:
        """``value`` resolved against the data directory."""
        return value if value.is_absolute() else self.data_dir / value

    @property
    def fee_policy(self) -> FeePolicy:
        return FeePolicy(self.fee_base_msat, self.fee_ppm)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'hub.sqlite'}"


HELP: dict[str, str] = {
    "data_dir": "Directory for the hub's store, keys, TLS files and admin credential; "
                "relative paths in other options resolve against it.",
    "listen": "host:port the gRPC server (always TLS) listens on.",
    "tls_cert_file": "TLS certificate, made on first start; clients pin it.",
    "tls_key_file": "TLS key, made on first start with mode 0600.",
    "tls_extra_names": "Comma-separated extra host names/IPs for a new certificate, "
                       "besides localhost and 127.0.0.1.",
    "admin_credential_file": "Operator credential, made on first start with mode 0600.",
    "chain_rpc_url": "bitcoind JSON-RPC URL (the embedded regtest node or a real one).",
    "chain_rpc_cookie_file": "bitcoind cookie file, e.g. <bitcoind datadir>/regtest/.cookie.",
    "chain_rpc_user": "bitcoind RPC user, instead of a cookie.",
    "chain_rpc_password": "bitcoind RPC password, instead of a cookie.",
    "store_url": "SQLAlchemy URL of the store; empty = SQLite at <data dir>/hub.sqlite; "
                 "e.g. postgresql+psycopg://postgres@127.0.0.1/chanhub.",
    "passphrase_file": "File holding the passphrase that encrypts the node seed and "
                       "channel snapshots at rest (through scrypt).",
    "key_file": "File (mode 0600) holding the 32-byte key that encrypts secrets at rest, "
                "instead of a passphrase.",
    "fee_base_msat": "Routing fee: fixed part per forwarded payment, in msat.",
    "fee_ppm": "Routing fee: proportional part, in parts per million.",
    "cltv_expiry_delta_blocks": "Blocks between an outgoing HTLC's expiry and the "
                                "incoming one's (at least 34).",
    "minimum_depth": "Confirmations before a funding transaction is usable.",
    "min_channel_size_sat": "Smallest channel the hub accepts or funds, in sat.",
    "max_channel_size_sat": "Largest channel the hub accepts or funds, in sat.",
    "max_inbound_sat": "Most inbound liquidity one RequestInbound may ask for, in sat.",
    "max_inbound_total_sat": "Most the hub's wallet puts into inbound channels still open, "
                             "all clients together, in sat (orders are free: this bounds "
                             "what strangers can lock up).",
    "min_htlc_msat": "Smallest HTLC accepted or forwarded, in msat.",
    "max_htlc_msat": "Largest HTLC accepted or forwarded, in msat.",
    "max_accepted_htlcs": "Most HTLCs in flight per channel and direction (at most 483).",
    "max_channels_per_client": "Most channels one client may have with the hub.",
    "max_frame_bytes": "Largest peer-link frame (and gRPC message) accepted, in bytes.",
    "max_messages_per_frame": "Most protocol messages in one peer-link frame.",
    "link_window_frames": "Frames in flight per peer link and direction (backpressure).",
    "shutdown_grace_seconds": "On SIGTERM, seconds in-flight calls get to finish.",
    "tower": "Also run the watchtower for the hub's clients (docs/tower.md): its own "
             "TLS listener, node key and store under <data dir>/tower.",
    "tower_listen": "host:port of the watchtower's gRPC listener (TLS), with tower.",
    "tower_max_appointments_per_client": "The watchtower's quota of appointments per client.",
    "log_level": "debug, info, warning or error.",
}

FIELDS = {f.name: f for f in dataclasses.fields(HubConfig)}
assert set(HELP) == set(FIELDS), "every option is documented"


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def _field_kind(option: str) -> type:
    annotation = str(FIELDS[option].type)
    for kind in (bool, int, Path):
        if kind.__name__ in annotation:
            return kind
    return str


def _parse(option: str, raw: Any, source: str) -> Any:
    """``raw`` (a TOML value or an environment/flag string) as the option's type."""
    kind = _field_kind(option)
    where = f"{option} (from {source})"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {raw!r} is not a boolean")
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ConfigError(f"{where}: {raw!r} is not an integer")
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r} is not an integer") from None
        if value < 0:
            raise ConfigError(f"{where}: must not be negative")
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: {raw!r} is not a string")
    if kind is Path:
        if raw:
            return Path(raw).expanduser()
        if "None" in str(FIELDS[option].type):
            return None
        raise ConfigError(f"{where}: a path is required")
    return raw


def _validate(config: HubConfig) -> HubConfig:
    try:
        config.fee_policy  # noqa: B018  (FeePolicy checks its bounds)
        check_cltv_expiry_delta(config.cltv_expiry_delta_blocks)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("listen", "tower_listen"):
        value = getattr(config, name)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{name}: {value!r} is not host:port")
    if config.min_channel_size_sat > config.max_channel_size_sat:
        raise ConfigError("min_channel_size_sat is above max_channel_size_sat")
    if config.min_htlc_msat > config.max_htlc_msat:
        raise ConfigError("min_htlc_msat is above max_htlc_msat")
    if not 1 <= config.max_accepted_htlcs <= 483:
        raise ConfigError("max_accepted_htlcs must be in [1, 483] (BOLT #2)")
    if config.link_window_frames < 1 or config.max_messages_per_frame < 1:
        raise ConfigError("link_window_frames and max_messages_per_frame must be >= 1")
    if config.max_frame_bytes < 64 * 1024:
        raise ConfigError("max_frame_bytes must be at least 65536 (one commitment_signed)")
    if config.passphrase_file is not None and config.key_file is not None:
        raise ConfigError("set passphrase_file or key_file, not both")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {config.log_level!r} is not debug/info/warning/error")
    if config.tower_max_appointments_per_client < 1:
        raise ConfigError("tower_max_appointments_per_client must be >= 1")
    return config


def load_config(config_file: Path | None, environ: Mapping[str, str],
                flags: Mapping[str, Any]) -> HubConfig:
    """Merge the layers: defaults < TOML ``config_file`` < ``environ`` (``CHANHUB_*``)
    < ``flags`` (option name -> raw value; None = not given). Without an explicit
    file, ``<data dir>/chanhubd.toml`` is read if it exists, the data directory
    coming from the flags or the environment."""
    values: dict[str, Any] = {}
    env_values = {name: _parse(name, environ[env_name(name)], env_name(name))
                  for name in FIELDS if env_name(name) in environ}
    flag_values = {name: _parse(name, raw, "--" + name.replace("_", "-"))
                   for name, raw in flags.items() if raw is not None}
    unknown_flags = set(flags) - set(FIELDS)
    if unknown_flags:
        raise ConfigError(f"unknown options: {sorted(unknown_flags)}")
    if config_file is None:
        data_dir = flag_values.get("data_dir") or env_values.get("data_dir") or DEFAULT_DATA_DIR
        candidate = Path(data_dir).expanduser() / DEFAULT_CONFIG_FILE
        config_file = candidate if candidate.exists() else None
    if config_file is not None:
        try:
            document = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        for key, raw in document.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"config file {config_file}: unknown option {key!r}")
            values[name] = _parse(name, raw, str(config_file))
    values.update(env_values)
    values.update(flag_values)
    if "data_dir" in values and values["data_dir"] is None:
        del values["data_dir"]
    config = HubConfig(**values)
    config = dataclasses.replace(config, data_dir=config.data_dir.expanduser())
    return _validate(config)


def click_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with one flag per option (default None, so ``flags``
    tells given from not given); the help shows the env variable and the default."""
    for name in reversed(list(FIELDS)):
        spec = FIELDS[name]
        kind = _field_kind(name)
        default = spec.default
        help_text = (f"{HELP[name]} [env {env_name(name)}; "
                     f"default {default if default not in ('', None) else 'none'}]")
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            command = click.option(f"{flag}/--no-{name.replace('_', '-')}", name,
                                   default=None, help=help_text)(command)
        else:
            command = click.option(flag, name, default=None, type=str,
                                   help=help_text)(command)
    return command
