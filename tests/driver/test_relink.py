"""A new link started right after the old one ended gets channel_reestablish.

Regression: ``connected`` used to turn false before the old link's channels were
marked disconnected, so a reconnect in that window found them still up, sent no
channel_reestablish, and both sides waited for each other forever."""

from __future__ import annotations

from typing import Any

import trio

from proto import peer_pb2
from protocol.driver.link import MemoryLink, memory_link_pair
from regtest.node import Node
from tests.driver.parties import open_funded_channel
from tests.driver.test_driver import FUNDING_SAT, parties


class SlowClosingLink:
    """A link end whose ``aclose`` waits until the test lets it finish."""

    def __init__(self, inner: MemoryLink) -> None:
        self.inner = inner
        self.closing = trio.Event()
        self.may_close = trio.Event()

    async def send(self, frame: peer_pb2.PeerFrame) -> None:
        await self.inner.send(frame)

    async def receive(self) -> peer_pb2.PeerFrame:
        return await self.inner.receive()

    async def aclose(self) -> None:
        self.closing.set()
        await self.may_close.wait()
        await self.inner.aclose()


async def test_a_reconnect_while_the_old_link_closes_still_reestablishes(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        slow = SlowClosingLink(link_b)
        await a.start(nursery, link_a)
        await b.start(nursery, slow)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        await a.stop()
        await slow.closing.wait()
        try:
            # The old link is still closing: b must not look disconnected yet.
            assert b.session.connected
        finally:
            slow.may_close.set()
        raw, link_b2 = memory_link_pair()
        await b.reconnect(link_b2)
        with trio.fail_after(60):  # virtual seconds: a missing reestablish fails fast
            frame = await raw.receive()
        assert frame.messages[0].HasField("channel_reestablish")
        nursery.cancel_scope.cancel()
    b.db.close()


async def test_a_link_that_ends_during_reestablish_reestablishes_on_the_next(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    """Regression: only channels UP were marked disconnected when a link ended, so one
    still REESTABLISHING (its peer gone before answering: a hub restarting twice) kept
    that state, the next link sent it no channel_reestablish, and the peer refused the
    channel_ready that came instead ("not allowed while the link is reestablishing")."""
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        await a.stop()
        raw, link_b2 = memory_link_pair()
        await b.reconnect(link_b2)
        with trio.fail_after(60):
            assert (await raw.receive()).messages[0].HasField("channel_reestablish")
        await raw.aclose()  # gone before answering: b's channel is still reestablishing
        raw, link_b3 = memory_link_pair()
        await b.reconnect(link_b3)
        with trio.fail_after(60):  # virtual seconds: a missing reestablish fails fast
            frame = await raw.receive()
        assert frame.messages[0].HasField("channel_reestablish")
        nursery.cancel_scope.cancel()
    b.db.close()
