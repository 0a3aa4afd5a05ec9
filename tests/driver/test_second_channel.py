"""A second channel opened on a link that already carried an accepted one.

The accepting session indexed each inbound driver under the channel id it had before
its open_channel (none: b""), so the next open_channel found a channel "exists" and
the ValueError ended the link: in `make demo`, a client's second channel with the hub
never got past negotiation."""

from __future__ import annotations

from typing import Any

import trio

from channel.scripts import p2wpkh
from protocol import Channel
from protocol.actions import FundingNeeded
from protocol.driver.driver import ChannelDriver
from protocol.driver.link import memory_link_pair
from protocol.driver.store import new_channel_key
from regtest.node import Node
from regtest.twoparty import REGTEST_GENESIS_HASH
from tests.driver.parties import CONFIG, node_id, open_funded_channel, secret
from tests.driver.test_driver import FUNDING_SAT, parties


async def test_a_second_channel_is_accepted_on_the_same_link(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        a.on_funding_needed = None  # b's accept_channel is all this test needs
        channel = Channel.outbound(config=CONFIG, channel_seed=secret("a second seed"),
                                   temporary_channel_id=secret("a second temporary id"),
                                   chain_hash=REGTEST_GENESIS_HASH,
                                   close_script=p2wpkh(node_id("a close")))
        second = ChannelDriver(channel, channel_key=new_channel_key(),
                               peer_node_id=node_id(a.peer_name), ctx=a.ctx)
        a.session.add_channel(second)
        second.open(funding_sat=FUNDING_SAT // 2, push_msat=0, feerate_per_kw=2_500)
        with trio.fail_after(60):
            await a.wait_for(lambda: a.count(FundingNeeded) == 2)
        assert len(b.session.drivers) == 2 and b.session.connected
        nursery.cancel_scope.cancel()
    a.db.close()
    b.db.close()
