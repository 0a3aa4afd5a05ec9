"""``hub.app:open_application``: chanhubd's default application (the real hub).

Theory of operation. From the ``HubConfig`` it opens the bitcoind JSON-RPC client
(cookie file, or user and password), the key source that encrypts secrets at rest
(``key_file`` or ``passphrase_file``), an ``RpcBroadcaster`` (adapted to the driver's
``Broadcaster``) and the ``HubNode``. A ``BlockLoop`` service polls the chain tip;
after each new block it updates the height the node reads, lets the broadcaster
rebroadcast what is pending, and calls ``HubNode.check_fundings`` so client
channels become usable at ``minimum_depth``. The node's writer and router run as
the first service; the daemon drains them on shutdown (``HubNode.drain``).

Not yet wired: the hub wallet (``ChainServices``) and so ``RequestInbound``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from channel.chain.broadcaster import RpcBroadcaster
from channel.chain.interfaces import BlockRef
from channel.chain.rpc import BitcoinRpc, ChainError
from hub.config import ConfigError, HubConfig
from hub.daemon import HubApplication
from hub.node import HubNode, HubSettings
from hub.tls import TlsIdentity
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


class BlockLoop:
    """Follows the tip: height for the node, rebroadcasts, funding checks."""

    def __init__(self, rpc: BitcoinRpc, node: HubNode, broadcaster: RpcBroadcaster,
                 height: list[int]) -> None:
        self.rpc, self.node, self.broadcaster, self.height = rpc, node, broadcaster, height

    async def gettxout(self, txid: str, vout: int) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.rpc.call("gettxout", txid, vout, True)
        return result

    async def step(self) -> None:
        tip_height = await self.rpc.getblockcount()
        if tip_height == self.height[0]:
            return
        self.height[0] = tip_height
        await self.broadcaster.best_block_updated(
            BlockRef(tip_height, await self.rpc.getbestblockhash()))
        confirmed = await self.node.check_fundings(self.gettxout)
        if confirmed:
            log.info("height %d: %d client funding(s) confirmed", tip_height, confirmed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            try:
                await self.step()
            except ChainError as exc:  # the node down for a while: keep polling
                log.warning("chain poll failed: %s", exc)
            await trio.sleep(POLL_SECONDS)


@asynccontextmanager
async def open_application(config: HubConfig, tls: TlsIdentity
                           ) -> AsyncIterator[HubApplication]:
    del tls  # the edge uses it; the business logic does not
    settings = HubSettings.from_config(config, key_source(config))
    async with bitcoin_rpc(config) as rpc:
        height = [await rpc.getblockcount()]
        broadcaster = RpcBroadcaster(rpc, tip_height=height[0])
        node = HubNode.open(settings, height=lambda: height[0],
                            broadcaster=broadcaster.for_driver())
        try:
            loop = BlockLoop(rpc, node, broadcaster, height)
            yield HubApplication(hub_node_id=node.hub_node_id, hub_service=node,
                                 admin_service=node.admin, services=[node, loop])
        finally:
            node.close()
