"""The peer session and the driver facing a hostile or broken counterpart: every
refusal is the one protocol/errors.py prescribes, and a write that fails leaves the
channel exactly as stored."""

from __future__ import annotations

from typing import Any

import trio

from proto import peer_pb2
from protocol import Channel
from protocol.actions import Send
from protocol.driver.link import LinkClosed, MemoryLink, memory_link_pair
from protocol.table import ChannelState
from regtest.node import Node
from tests.driver.parties import Party, open_funded_channel, until
from tests.driver.test_driver import FUNDING_SAT, balances, parties, quiescent


async def impersonate_a(a: Party, b: Party, nursery: trio.Nursery) -> MemoryLink:
    """Stop ``a``; return a raw link to ``b`` on which a's real channel_reestablish (from
    a's store) was sent, so b's side of the link is up again."""
    await a.stop()
    (stored,) = a.store.load_channels()
    a_channel = Channel.restore(stored.snapshot)
    raw, link_b = memory_link_pair()
    await b.reconnect(link_b)
    theirs = await raw.receive()
    assert theirs.messages[0].HasField("channel_reestablish")
    ours = [x.message for x in a_channel.reconnected() if isinstance(x, Send)]
    await raw.send(peer_pb2.PeerFrame(messages=ours))
    await until(b.link_up)
    return raw


async def receive_until_closed(raw: MemoryLink) -> list[str]:
    kinds: list[str] = []
    try:
        while True:
            frame = await raw.receive()
            kinds.extend(m.WhichOneof("body") or "?" for m in frame.messages)
    except LinkClosed:
        return kinds


async def opened(a: Party, b: Party, node: Node, nursery: trio.Nursery) -> None:
    link_a, link_b = memory_link_pair()
    await a.start(nursery, link_a)
    await b.start(nursery, link_b)
    await open_funded_channel(a, b, node, FUNDING_SAT)
    a.pay(20_000_000, "first")
    await a.wait_for(lambda: len(a.fulfilled) == 1)
    await until(lambda: quiescent(a, b))


async def test_close_disposition_fails_the_channel(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        await opened(a, b, regtest_node, nursery)
        raw = await impersonate_a(a, b, nursery)
        # A commitment_signed covering nothing (BOLT #2: MUST fail the channel).
        bogus = peer_pb2.PeerMessage(commitment_signed=peer_pb2.CommitmentSigned(
            channel_id=b.driver.channel_id, signature=b"\x01" * 64))
        await raw.send(peer_pb2.PeerFrame(messages=[bogus]))
        await b.wait_for(lambda: bool(b.failed_channels()))
        frame = await raw.receive()
        assert [m.WhichOneof("body") for m in frame.messages] == ["error"]
        assert frame.messages[0].error.channel_id == b.driver.channel_id
        assert [reason for _, reason in b.broadcaster.sent] == [
            "force close: latest commitment"]
        (stored,) = b.store.load_channels()
        assert stored.state == ChannelState.FAILED.value
        nursery.cancel_scope.cancel()
    b.db.close()


async def test_warn_disposition_closes_the_link_and_keeps_the_channel(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        await opened(a, b, regtest_node, nursery)
        await a.stop()
        stored_before = b.store.load_channels()
        raw, link_b = memory_link_pair()
        await b.reconnect(link_b)
        assert (await raw.receive()).messages[0].HasField("channel_reestablish")
        # An update before channel_reestablish: a WARN (BOLT #2 reestablish rules).
        early = peer_pb2.PeerMessage(update_fee=peer_pb2.UpdateFee(
            channel_id=b.driver.channel_id, feerate_per_kw=3_000))
        after = peer_pb2.PeerMessage(update_fee=peer_pb2.UpdateFee(
            channel_id=b.driver.channel_id, feerate_per_kw=4_000))
        await raw.send(peer_pb2.PeerFrame(messages=[early, after]))
        assert await receive_until_closed(raw) == ["warning"]
        await until(lambda: not b.session.connected)
        assert not b.failed_channels()
        assert b.store.load_channels() == stored_before
        nursery.cancel_scope.cancel()
    b.db.close()


async def test_open_channel_refused_or_reusing_an_id(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        await opened(a, b, regtest_node, nursery)
        raw = await impersonate_a(a, b, nursery)
        probe = Channel.outbound(config=b.driver.channel.d.config, channel_seed=b"\x05" * 32,
                                 temporary_channel_id=b.driver.channel_id,
                                 chain_hash=b.driver.channel.d.chain_hash,
                                 close_script=b"\x00\x14" + b"\x01" * 20)
        (open_msg,) = [x.message for x in probe.open(funding_sat=500_000, push_msat=0,
                                                     feerate_per_kw=2_500)
                       if isinstance(x, Send)]
        await raw.send(peer_pb2.PeerFrame(messages=[open_msg]))  # id in use
        frame = await raw.receive()
        assert [m.WhichOneof("body") for m in frame.messages] == ["warning"]
        b.session.accept_channel = lambda session, msg: None  # policy: refuse all
        open_msg.open_channel.temporary_channel_id = b"\x09" * 32
        await raw.send(peer_pb2.PeerFrame(messages=[open_msg]))
        frame = await raw.receive()
        assert [(m.WhichOneof("body"), m.error.channel_id) for m in frame.messages] == [
            ("error", b"\x09" * 32)]
        assert len(b.session.drivers) == 1 and len(b.store.load_channels()) == 1
        assert not b.failed_channels()
        nursery.cancel_scope.cancel()
    b.db.close()


async def test_a_failed_commit_rebuilds_the_channel_from_the_store(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        await opened(a, b, regtest_node, nursery)
        stored_update_id = b.store.load_channels()[0].update_id

        def disk_full(batch_size: int) -> None:
            b.store.writer.before_commit = None  # once
            raise OSError("disk full (injected)")

        b.store.writer.before_commit = disk_full
        paid = a.pay(20_000_000, "through a failed commit")
        # b's first Persist of the round fails: b closes the link, rebuilds the
        # channel from its store (nothing of the failed batch is there) ...
        await until(lambda: b.store.writer.stats.failed_commits == 1)
        await until(lambda: not b.session.connected and not a.session.connected)
        assert b.store.load_channels()[0].update_id == stored_update_id
        assert b.driver.channel.snapshot()["book"] == b.store.load_channels()[0].snapshot[
            "book"]
        # ... and on the next link channel_reestablish finishes the payment.
        link_a, link_b = memory_link_pair()
        await b.reconnect(link_b)
        await a.reconnect(link_a)
        await until(lambda: a.link_up() and b.link_up())
        await until(lambda: paid in a.fulfilled or paid in a.failed)
        if paid in a.failed:  # reverted by the disconnect: pay again
            paid = a.pay(20_000_000, "again")
            await until(lambda: paid in a.fulfilled)
        await until(lambda: quiescent(a, b))
        assert balances(a)[1] == balances(b)[0] == 40_000_000
        assert not a.failed_channels() and not b.failed_channels()
        nursery.cancel_scope.cancel()
    a.db.close()
    b.db.close()

