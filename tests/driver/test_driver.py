"""Two drivers (funder, fundee) over an in-memory link, each on its own store: open a
channel on the embedded regtest node, pay, restart one side from its database alone
mid-way, reconnect, keep paying; nothing is lost."""

from __future__ import annotations

from typing import Any

import trio

from channel.commitment import Side
from proto import peer_pb2
from protocol.actions import ChannelFailed, HtlcReceived
from protocol.driver.link import LinkClosed, MemoryLink, memory_link_pair
from regtest.node import Node
from tests.driver.parties import Party, open_funded_channel, until

FUNDING_SAT = 1_000_000


class CountingLink:
    """A link end that counts the messages it sends, by kind."""

    def __init__(self, inner: MemoryLink) -> None:
        self.inner = inner
        self.sent: dict[str, int] = {}
        self.frames = 0

    async def send(self, frame: peer_pb2.PeerFrame) -> None:
        self.frames += 1
        for message in frame.messages:
            kind = message.WhichOneof("body") or "?"
            self.sent[kind] = self.sent.get(kind, 0) + 1
        await self.inner.send(frame)

    async def receive(self) -> peer_pb2.PeerFrame:
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()


def parties(urls: tuple[str, str], node: Node) -> tuple[Party, Party]:
    invoices: dict[bytes, bytes] = {}

    def height() -> int:
        return int(node.call("getblockcount"))

    return (Party("a", urls[0], "b", invoices, height),
            Party("b", urls[1], "a", invoices, height))


def quiescent(*each: Party) -> bool:
    """Nothing left to sign, revoke, store or send on any side."""
    return all(not p.driver.channel.has_uncommitted_changes()
               and not p.driver.channel.awaiting_revocation()
               and p.driver.queued == 0 and not p.driver.channel.d.book.pending(
                   Side.LOCAL, p.driver.channel.local_eligible())
               for p in each)


def balances(party: Party) -> tuple[int, int]:
    view = party.driver.channel.latest_view(Side.LOCAL)
    return view.local_msat, view.remote_msat


async def test_open_pay_restart_reconnect_keep_paying(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    amounts: dict[bytes, int] = {}

    def pay(n: int, label: str) -> None:
        for i in range(n):
            amount = 10_000_000 + len(amounts)
            amounts[a.pay(amount, f"{label} {i}")] = amount

    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        counting = CountingLink(link_a)
        await a.start(nursery, counting)
        await b.start(nursery, link_b)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        assert {w.kind for w in a.watches} >= {"funding"}
        assert {w.kind for w in a.store.load_watches()} >= {"funding"}

        # 20 payments issued together go under one commitment_signed.
        before = counting.sent.get("commitment_signed", 0)
        pay(20, "batch")
        await a.wait_for(lambda: len(a.fulfilled) == 20)
        await until(lambda: quiescent(a, b))
        # One signature for the 20 adds, one answering the 20 fulfills.
        assert counting.sent.get("commitment_signed", 0) - before == 2, counting.sent
        assert a.store.writer.stats.writes_per_commit > 1

        # b crashes while payments are in flight, and restarts from its store alone.
        pay(15, "in flight")
        await b.wait_for(lambda: b.count(HtlcReceived) >= 24)
        link_a2, link_b2 = memory_link_pair()
        await b.restart(nursery, link_b2)
        await a.reconnect(link_a2)
        await until(lambda: a.link_up() and b.link_up())
        b.settle_restored()
        await until(lambda: all(h in a.fulfilled or h in a.failed for h in amounts))
        # The ones the restart reverted are failed back to the payer, never both.
        assert not (set(a.fulfilled) & a.failed)
        retry = [h for h in amounts if h in a.failed]
        pay(len(retry), "retry")
        pay(10, "after restart")
        await until(lambda: len(a.fulfilled) == len(amounts) - len(retry))
        await until(lambda: quiescent(a, b))

        paid_msat = sum(amounts[h] for h in a.fulfilled)
        a_local, a_remote = balances(a)
        b_local, b_remote = balances(b)
        assert (a_remote, b_local) == (paid_msat, paid_msat)
        assert a_local == b_remote == FUNDING_SAT * 1000 - paid_msat
        assert not a.failed_channels() and not b.failed_channels()
        nursery.cancel_scope.cancel()

    # Both rebuild from their stores alone to the same balances.
    for party in (a, b):
        party.db.close()
    a2, b2 = parties(store_url_pair, regtest_node)
    assert balances(a2) == (a_local, a_remote) and balances(b2) == (b_local, b_remote)
    a2.db.close()
    b2.db.close()


async def test_unknown_channel_and_oversized_frames_change_nothing(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        a.pay(5_000_000, "one")
        await a.wait_for(lambda: len(a.fulfilled) == 1)
        await b.session.idle()
        before = b.driver.channel.snapshot()
        stored_before = b.store.load_channels()

        # Impersonate a: a raw link to b.
        await a.stop()
        raw, link_b2 = memory_link_pair()
        await b.reconnect(link_b2)
        reestablish = await raw.receive()
        assert reestablish.messages[0].HasField("channel_reestablish")

        unknown = bytes(range(32))
        bogus = peer_pb2.PeerMessage(update_fee=peer_pb2.UpdateFee(
            channel_id=unknown, feerate_per_kw=5_000))
        ignored = peer_pb2.PeerMessage(error=peer_pb2.Error(channel_id=unknown, data=b"x"))
        await raw.send(peer_pb2.PeerFrame(messages=[ignored, bogus]))
        answer = await raw.receive()
        assert [m.WhichOneof("body") for m in answer.messages] == ["warning"]
        assert answer.messages[0].warning.channel_id == unknown

        # Too many messages in one frame: refused whole, warning, link closed.
        flood = peer_pb2.PeerFrame(messages=[bogus] * (b.session.limits.max_messages + 1))
        await raw.send(flood)
        answer = await raw.receive()
        assert answer.messages[0].HasField("warning")
        try:
            await raw.receive()
            raise AssertionError("the link should be closed")
        except LinkClosed:
            pass
        await until(lambda: not b.session.connected)
        await b.session.idle()
        assert b.driver.channel.snapshot()["book"] == before["book"]
        assert b.store.load_channels() == stored_before
        assert not [e for e in b.events if isinstance(e, ChannelFailed)]
        nursery.cancel_scope.cancel()
    b.db.close()


async def test_force_close_while_the_peer_is_offline(
        store_url_pair: tuple[str, str], regtest_node: Node, autojump_clock: Any) -> None:
    a, b = parties(store_url_pair, regtest_node)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        await a.stop()
        await until(lambda: not b.session.connected)
        # The operator force-closes b's channel while a is offline: the command runs
        # on the next session.idle(), with no link at all.
        b.driver.fail("operator force close")
        await b.session.idle()
        assert [reason for _, reason in b.broadcaster.sent] == [
            "force close: latest commitment"]
        assert len(b.failed_channels()) == 1
        assert b.store.load_channels()[0].state == "failed"
        nursery.cancel_scope.cancel()
    b.db.close()
