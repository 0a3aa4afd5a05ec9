"""``hub.app:open_application``: chanhubd's default application (the real hub).

Theory of operation. From the ``HubConfig`` it opens the bitcoind JSON-RPC client
(cookie file, or user and password), the key source that encrypts secrets at rest
(``key_file`` or ``passphrase_file``) and the ``HubNode``, then attaches the hub's
``ChainServices`` (``HubNode.attach_chain``: one follower feeding the wallet, whose
seed is derived from the hub's node secret, the confirmation tracker and the
broadcaster; its state bundle lives in the hub's store). That single follower gives
the height, rebroadcasts, confirms fundings at ``minimum_depth``, lets the wallet
fund ``RequestInbound`` channels and sweeps after a force close
(``protocol.driver.onchain``). The node (writer, router, chain) runs as the one
service; the daemon drains it on shutdown (``HubNode.drain``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from channel.chain.rpc import BitcoinRpc
from hub.config import ConfigError, HubConfig
from hub.daemon import HubApplication, Service
from hub.node import HubNode, HubSettings
from hub.tls import TlsIdentity
from hub.tower import TowerService, TowerSettings
from protocol.driver.crypto import KeyFile, KeySource, Passphrase

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often the tip is polled (regtest blocks come on demand)


def key_source(config: HubConfig) -> KeySource:
    if config.key_file is not None and config.passphrase_file is not None:
        raise ConfigError("give key_file or passphrase_file, not both")
    if config.key_file is not None:
        return KeyFile(config.path(config.key_file))
    if config.passphrase_file is not None:
        return Passphrase(config.path(config.passphrase_file).read_text().strip())
    raise ConfigError("key_file or passphrase_file is required (secrets are encrypted)")


def bitcoin_rpc(config: HubConfig) -> BitcoinRpc:
    if config.chain_rpc_cookie_file is not None:
        return BitcoinRpc(config.chain_rpc_url,
                          cookie_file=config.path(config.chain_rpc_cookie_file))
    if not config.chain_rpc_user:
        raise ConfigError("chain_rpc_cookie_file or chain_rpc_user/password is required")
    return BitcoinRpc(config.chain_rpc_url, username=config.chain_rpc_user,
                      password=config.chain_rpc_password)


@asynccontextmanager
async def open_application(config: HubConfig, tls: TlsIdentity
                           ) -> AsyncIterator[HubApplication]:
    del tls  # the edge uses it; the business logic does not
    settings = HubSettings.from_config(config, key_source(config))
    async with bitcoin_rpc(config) as rpc:
        await rpc.getblockcount()  # the node answers (a clear error at start, if not)
        node = HubNode.open(settings, height=_no_height, broadcaster=_NoBroadcaster())
        try:
            await node.attach_chain(rpc, poll_interval_s=POLL_SECONDS)
            services: list[Service] = [node]
            if config.tower:
                services.append(tower_service(config, rpc))
            yield HubApplication(hub_node_id=node.hub_node_id, hub_service=node,
                                 admin_service=node.admin, services=services)
        finally:
            node.close()


def _no_height() -> int:
    raise AssertionError("the hub's height comes from its chain once attached")


class _NoBroadcaster:
    """Replaced by the chain's broadcaster in ``attach_chain``, before anything runs."""

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        raise AssertionError("the hub broadcasts through its chain once attached")


def tower_service(config: HubConfig, rpc: BitcoinRpc) -> TowerService:
    """``chanhubd --tower``: the watchtower beside the hub, on the hub's chain, with its
    own listener, node key and store under ``<data dir>/tower`` (docs/tower.md)."""
    host, _, port = config.tower_listen.rpartition(":")
    return TowerService(TowerSettings(
        config.path(Path("tower")), listen_host=host.strip("[]"), listen_port=int(port),
        max_appointments_per_client=config.tower_max_appointments_per_client,
        poll_interval_s=POLL_SECONDS), rpc)
