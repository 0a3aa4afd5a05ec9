"""The client's tower hook (client/node.py ``use_towers``, the SDK's ``towers=``):
every ``Watch("revoked_commitment")`` the client's driver makes durable becomes an
appointment on the tower, without the application doing anything per revocation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regtest.node import Node
from tests.driver.test_enforce import network, revoke_one_state
from tests.tower.test_breach import World, world  # noqa: F401 (the fixture)


async def test_each_revocation_of_a_client_with_towers_reaches_the_tower(
        world: World, regtest_node: Node, regtest_rpc: Any,  # noqa: F811
        tmp_path: Path) -> None:
    async with network(regtest_node, regtest_rpc, tmp_path) as net:
        tower = world.client(net.alice.node_secret, "alice")
        net.alice.use_towers([tower])
        assert len(tower.outbox) == 0
        await revoke_one_state(net)  # alice revokes her commitment 0
        assert len(tower.outbox) == 1
        assert await tower.flush() == 1
        info = await tower.get_info()
        assert info.registered and info.quota.used_appointments == 1
        await tower.aclose()
