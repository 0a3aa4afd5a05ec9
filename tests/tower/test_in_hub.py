"""``chanhubd --tower``: the hub's daemon runs a ``TowerService`` among its application's
services (what hub/app.py does when ``config.tower`` is set: the tower's own TLS
listener, node key and store under ``<hub data dir>/tower``, the hub's chain RPC); a
client reaches it, and the daemon's shutdown stops it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from channel.chain import BitcoinRpc
from channel.keys import pubkey_from_secret
from client.tower import TowerClient
from client.transport import HubPin
from hub.app import tower_service
from hub.config import HubConfig
from hub.daemon import Daemon, HubApplication
from hub.tls import TlsIdentity
from hub.tower import TowerService
from protocol.driver.grpc_bridge import open_grpc_bridge
from regtest.node import Node
from tests.driver.parties import until
from tests.wire.hubfixture import RecordingAdminService, RecordingHubService, new_node_secret


async def test_the_hub_daemon_runs_a_tower_for_its_clients(
        regtest_node: Node, regtest_rpc: Any, tmp_path: Path, autojump_clock: Any) -> None:
    towers: list[TowerService] = []
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path),
                          timeout_s=None) as rpc:

        @asynccontextmanager
        async def factory(config: HubConfig, tls: TlsIdentity
                          ) -> AsyncIterator[HubApplication]:
            hub_node_id = pubkey_from_secret(new_node_secret())
            tower = tower_service(config, rpc)  # what hub/app.py runs with config.tower
            towers.append(tower)
            yield HubApplication(hub_node_id, RecordingHubService(hub_node_id),
                                 RecordingAdminService(), [tower])

        daemon = Daemon(HubConfig(data_dir=tmp_path / "hub", listen="127.0.0.1:0", tower=True,
                                  tower_listen="127.0.0.1:0",
                                  tower_max_appointments_per_client=7), factory)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            (tower,) = towers
            assert (tmp_path / "hub" / "tower" / "tower.key").stat().st_mode & 0o777 == 0o600
            async with open_grpc_bridge() as bridge:
                client = TowerClient(bridge, f"127.0.0.1:{tower.port}",
                                     node_secret=new_node_secret(),
                                     pin=HubPin(cert_pem=tower.tls.cert_pem),
                                     outbox_dir=tmp_path / "client-outbox",
                                     expected_tower_node_id=tower.node_id,
                                     call_timeout_seconds=None)
                info = await client.get_info()
                assert info.registered and info.chain == "regtest"
                assert info.quota.max_appointments == 7  # the hub's tower_* options
                assert tower.settings.data_dir == tmp_path / "hub" / "tower"
                # the tower follows the chain by itself inside the hub
                regtest_node.mine(2)
                assert tower.follower is not None
                target = int(regtest_node.call("getblockcount"))
                await until(lambda: tower.follower is not None
                            and tower.follower.tip.height == target)
                await client.aclose()
            daemon.request_shutdown()
        assert daemon.stopped.is_set()
