"""``chanhubd`` (also ``python -m hub``): the hub daemon's command line.

Every option of ``hub.config.HubConfig`` is a flag here (``--help`` lists each, with
its environment variable and default); ``--config FILE`` names the TOML file
(default ``<data dir>/chanhubd.toml`` when it exists). On start the daemon prints
one JSON line to stdout, ``{"listen": ..., "port": ..., "tls_cert_sha256": ...,
"hub_node_id": ..., "tls_cert_file": ..., "admin_credential_file": ...}``, so a
harness (or a person) knows where and how to reach it.

The hub's business logic is loaded from ``--application MODULE:FUNCTION`` (default
``hub.app:open_application``), an ``hub.daemon.ApplicationFactory``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
import trio

from hub.config import ConfigError, HubConfig, click_options, load_config
from hub.daemon import ApplicationFactory, DaemonStarted, prepare_files, serve

DEFAULT_APPLICATION = "hub.app:open_application"


def load_application(spec: str) -> ApplicationFactory:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory: ApplicationFactory = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load the hub application {spec!r}: {exc}") from exc
    return factory


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML configuration file [default <data dir>/chanhubd.toml "
              "if it exists]. Environment variables override it, flags override both.")
@click.option("--application", default=DEFAULT_APPLICATION, show_default=True,
              help="The hub's business logic, MODULE:FUNCTION (an ApplicationFactory).")
@click.option("--print-fingerprint", is_flag=True,
              help="Make the TLS files if missing, print the certificate's SHA-256 "
              "fingerprint (what clients pin) and exit.")
@click_options
def main(config_file: Path | None, application: str, print_fingerprint: bool,
         **flags: Any) -> None:
    """chanhubd: the Chanhub payment channel hub daemon."""
    try:
        config: HubConfig = load_config(config_file, os.environ, flags)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if print_fingerprint:
        tls, _ = prepare_files(config)
        click.echo(tls.fingerprint_sha256)
        return
    factory = load_application(application)

    def announce(started: DaemonStarted) -> None:
        click.echo(json.dumps({
            "listen": config.listen, "port": started.port,
            "tls_cert_sha256": started.tls_fingerprint_sha256,
            "hub_node_id": started.hub_node_id.hex(),
            "tls_cert_file": str(config.path(config.tls_cert_file)),
            "admin_credential_file": str(config.path(config.admin_credential_file)),
        }), nl=True)
        sys.stdout.flush()

    trio.run(serve, config, factory, announce)


if __name__ == "__main__":
    main()
