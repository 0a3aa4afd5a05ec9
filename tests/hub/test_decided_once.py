"""An incoming HTLC is routed once. The kill -9 test caught the router routing one a
second time: refused while its payee was offline, the refusal's fail queued (and the
record dropped from memory), then routed again as if new (by ``settle_received`` with
records read before the refusal was stored, once the fail was reverted by a
disconnect) and offered to the payee, back by then: the payee was paid, the payer
failed back, the hub out of pocket. Here the router is handed the HTLC again right
after the refusal's fail was queued: nothing changes (one record, one outcome, one
event), and what the router keeps for that is dropped once the HTLC has left its
channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from channel.commitment import Side
from hub import ledger
from hub.ledger import ForwardRecord
from protocol.driver.db import sqlite_url
from protocol.routing import FailureCode, FailureReport
from regtest.node import Node
from tests.hub.parties import Net

FUNDING_SAT = 1_000_000
PUSH_MSAT = 400_000_000


async def test_a_refused_htlc_routed_again_changes_nothing(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        await net.disconnect(bob)  # the payee offline: the forward is refused
        router = net.hub.router
        incoming = net.hub.sessions[alice.node_id].drivers[0]
        real_settle = router.settle_incoming
        again: list[int] = []

        def settle_then_route_again(record: ForwardRecord) -> None:
            real_settle(record)  # the refusal's fail is queued on Alice's channel
            if again:
                return
            htlc = incoming.channel.d.book.htlcs[(Side.REMOTE, record.incoming_htlc_id)]
            again.append(htlc.htlc_id)
            # The HTLC offered to the router again, as a stale read of the records or a
            # replayed event would (the fail is queued, not committed: it could still
            # be reverted by a disconnect, and the HTLC look unresolved).
            router.route(incoming, htlc.htlc_id, htlc.amount_msat, htlc.payment_hash,
                         htlc.cltv_expiry, bytes(htlc.onion))

        router.settle_incoming = settle_then_route_again  # type: ignore[method-assign]
        payment_hash = alice.pay(bob, 1_000_000, "offline")
        await alice.wait_for(lambda: payment_hash in alice.outcomes)
        report = alice.outcomes[payment_hash]
        assert isinstance(report, FailureReport)
        assert report.failure.code is FailureCode.PAYEE_OFFLINE
        assert again, "the refusal was never settled"
        await net.hub.drain()
        records = await net.hub.db.read(lambda c: ledger.list_forwards(c, limit=100))
        assert [(r.payment_hash, r.state) for r in records] == [(payment_hash, ledger.FAILED)]
        assert router.stats.refused == 1
        events = await net.hub.db.read(
            lambda c: net.hub.events.read_after(c, alice.node_id, 0, 100))
        assert [e.WhichOneof("body") for e in events].count("payment_failed") == 1
        # Once the fail's commitment round is over, nothing of it stays in memory.
        while incoming.channel.d.book.htlcs:
            await trio.sleep(0.01)
        await alice.session.idle()
        assert not router.by_incoming and not router.settling
        nursery.cancel_scope.cancel()
    net.hub.close()
