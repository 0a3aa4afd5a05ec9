"""A hub and SDK client parties for the tests (helper, not a test)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from client.node import ClientNode, HubTerms
from hub.node import HubNode
from protocol.actions import FundingNeeded
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.driver.link import FrameLink, memory_link_pair
from protocol.table import ChannelState
from tests.driver.conftest import TEST_PASSPHRASE
from tests.hub.parties import NullBroadcaster, hub_settings


def under_autojump(client: ClientNode) -> ClientNode:
    """``client.ready`` waits without a deadline: under the autojumping MockClock every
    deadline fires as soon as all tasks wait, a store write on the writer thread
    included, so a 30 s bound would end a re-establish that is merely writing."""
    client.ready_timeout_seconds = math.inf
    client.acknowledgement_wait_seconds = math.inf
    return client


def is_normal(driver: ChannelDriver) -> bool:
    return driver.channel.state is ChannelState.NORMAL


@dataclass
class World:
    node: Any  # regtest node
    tmp: Path
    hub_url: str
    hub: HubNode = field(init=False)
    scopes: dict[bytes, trio.CancelScope] = field(default_factory=dict)
    run_scopes: dict[bytes, trio.CancelScope] = field(default_factory=dict)
    links: dict[bytes, FrameLink] = field(default_factory=dict)

    def height(self) -> int:
        return int(self.node.call("getblockcount"))

    def terms(self) -> HubTerms:
        s = self.hub.settings
        return HubTerms(self.hub.hub_node_id, s.fee_base_msat, s.fee_ppm,
                        s.cltv_expiry_delta_blocks)

    async def start_hub(self, nursery: trio.Nursery) -> None:
        self.hub = HubNode.open(hub_settings(self.hub_url), height=self.height,
                                broadcaster=NullBroadcaster())
        await nursery.start(self.hub.run)

    def client_url(self, name: str) -> str:
        return sqlite_url(self.tmp / f"{name}.sqlite")

    def open_client(self, name: str, url: str | None = None) -> ClientNode:
        async def fund(driver: ChannelDriver, needed: FundingNeeded) -> None:
            txid_hex, vout = self.node.send_to_script(needed.script_pubkey, needed.amount_sat)
            driver.funding_outpoint(bytes.fromhex(txid_hex)[::-1], vout)

        return under_autojump(
            ClientNode.open(url or self.client_url(name), TEST_PASSPHRASE, self.terms(),
                            height=self.height, broadcaster=NullBroadcaster(), funder=fund))

    async def start_client(self, nursery: trio.Nursery, client: ClientNode) -> None:
        run_scope = trio.CancelScope()
        self.run_scopes[client.node_id] = run_scope

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with run_scope:
                await client.run(task_status=task_status)

        await nursery.start(run)
        await self.connect(nursery, client)
        await under_autojump(client).ready()

    async def connect(self, nursery: trio.Nursery, client: ClientNode) -> None:
        hub_end, client_end = memory_link_pair()
        scope = trio.CancelScope()
        self.scopes[client.node_id] = scope
        self.links[client.node_id] = client_end

        async def both(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(self.hub.on_peer_link, client.node_id, hub_end)
                    await inner.start(client.serve_link, client_end)
                    task_status.started()

        await nursery.start(both)

    async def disconnect(self, client: ClientNode) -> None:
        """The link closes (both sessions end normally and mark their channels down).
        Cancelling PeerSession.run instead would leave the channels marked up on a
        session object that is reused: protocol/driver/peer.py calls disconnected()
        only after a normal end."""
        await self.links[client.node_id].aclose()
        while client.session.connected or self.hub.sessions[client.node_id].connected:
            await trio.sleep(0.01)

    async def stop_client(self, client: ClientNode) -> None:
        """Like the client process ending: links and writer stop, the store closes."""
        await self.disconnect(client)
        self.run_scopes[client.node_id].cancel()
        await trio.sleep(0)
        client.close()

    async def open_channel(self, client: ClientNode, funding_sat: int,
                           push_msat: int = 0) -> ChannelDriver:
        driver = client.open_channel(funding_sat, push_msat)
        while driver.channel.d.funding_txid == b"" or \
                driver.channel.state is not ChannelState.AWAIT_CHANNEL_READY:
            await client.changed.wait()
        await self.hub.sessions[client.node_id].idle()
        self.node.mine(self.hub.settings.minimum_depth)
        assert await self.hub.check_fundings(self.gettxout) >= 1
        driver.funding_confirmed()
        while not is_normal(driver):
            await client.changed.wait()
        await self.hub.sessions[client.node_id].idle()
        return driver

    async def gettxout(self, txid_hex: str, vout: int) -> dict[str, Any] | None:
        out = self.node.call("gettxout", txid_hex, vout)
        if out is None:
            return None
        out["value"] = Decimal(str(out["value"]))
        return dict(out)
