"""payer -> hub -> payee through a real HubNode (its store, router, ledger, events)
and two client parties over memory links, channels funded on the embedded regtest
node and checked by the hub at depth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from hub import ledger
from protocol.driver.db import sqlite_url
from protocol.routing import FailureCode, FailureOrigin, FailureReport
from regtest.node import Node
from tests.hub.parties import Client, Net

FUNDING_SAT = 1_000_000
# Bob gives the hub this much at opening (as if he had bought inbound liquidity), so
# the hub can pay him; Alice's channel is all hers.
PUSH_MSAT = 400_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "hub.sqlite")
    url: str = request.getfixturevalue("postgres_url")
    return url


def fee(amount_msat: int) -> int:
    return 1_000 + amount_msat * 1_000 // 1_000_000


async def test_alice_pays_bob_and_bob_pays_back_hub_keeps_its_fees(
        hub_url: str, regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, hub_url)
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        a0, b0 = alice.balance_msat(), bob.balance_msat()
        h1 = alice.pay(bob, 200_000_000, "1")
        await alice.wait_for(lambda: h1 in alice.outcomes)
        assert alice.outcomes[h1] == bob.issued[h1][0]
        h2 = bob.pay(alice, 50_000_000, "2")
        await bob.wait_for(lambda: h2 in bob.outcomes)
        assert isinstance(bob.outcomes[h2], bytes)
        await net.hub.drain()
        await alice.session.idle()
        await bob.session.idle()
        assert alice.balance_msat() == a0 - 200_000_000 - fee(200_000_000) + 50_000_000
        assert bob.balance_msat() == b0 + 200_000_000 - 50_000_000 - fee(50_000_000)
        info = await net.hub.admin.get_info()
        assert info.fees_earned_msat == fee(200_000_000) + fee(50_000_000)
        nursery.cancel_scope.cancel()
    net.hub.close()


async def test_many_in_flight_are_batched_under_few_signatures(
        hub_url: str, regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, hub_url)
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        bob_driver = net.hub.sessions[bob.node_id].drivers[0]
        before = bob_driver.channel.d.remote_ctn
        hashes = [alice.pay(bob, 5_000_000 + i, f"many {i}") for i in range(60)]
        await alice.wait_for(lambda: all(h in alice.outcomes for h in hashes))
        assert all(isinstance(alice.outcomes[h], bytes) for h in hashes)
        await net.hub.drain()
        # 60 adds toward Bob, then 60 fulfills from him: far fewer commitments than updates
        signed = bob_driver.channel.d.remote_ctn - before
        assert signed < 20, signed
        records = await net.hub.db.read(lambda c: ledger.list_forwards(c, limit=1000))
        assert len(records) == 60 and {r.state for r in records} == {ledger.SUCCEEDED}
        assert len({r.payment_id for r in records}) == 60
        nursery.cancel_scope.cancel()
    net.hub.close()


async def test_failures_come_back_typed_and_move_nothing(
        hub_url: str, regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, hub_url)
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        a0 = alice.balance_msat()

        async def outcome(h: bytes) -> FailureReport:
            await alice.wait_for(lambda: h in alice.outcomes)
            report = alice.outcomes[h]
            assert isinstance(report, FailureReport)
            return report

        # Not enough liquidity toward Bob (the hub holds PUSH_MSAT there).
        report = await outcome(alice.pay(bob, PUSH_MSAT, "no liquidity"))
        assert report.origin is FailureOrigin.HUB
        assert report.failure.code is FailureCode.INSUFFICIENT_CAPACITY
        a1 = a0
        # Fee too low.
        report = await outcome(alice.pay(bob, 1_000_000, "cheap", fee_msat=10))
        assert report.failure.code is FailureCode.FEE_INSUFFICIENT
        # CLTV too close: the outgoing expiry is not a delta below the incoming one.
        report = await outcome(alice.pay(bob, 1_000_000, "cltv", cltv_shortfall=5))
        assert report.failure.code is FailureCode.INCORRECT_CLTV_EXPIRY
        # The payee refuses (its invoice was for another amount); relayed unchanged.
        refused = alice.pay(bob, 1_000_000, "refused")
        bob.issued[refused] = (bob.issued[refused][0], bob.issued[refused][1], 999)
        report = await outcome(refused)
        assert report.origin is FailureOrigin.PAYEE
        assert report.failure.code is FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
        # Unknown payee.
        stranger = Client("stranger", sqlite_url(tmp_path / "s.sqlite"), net.hub.hub_node_id,
                          net.height)
        report = await outcome(alice.pay(stranger, 1_000_000, "unknown"))
        assert report.failure.code is FailureCode.UNKNOWN_PAYEE
        stranger.db.close()
        # Payee offline.
        await net.disconnect(bob)
        report = await outcome(alice.pay(bob, 1_000_000, "offline"))
        assert report.failure.code is FailureCode.PAYEE_OFFLINE
        await net.hub.drain()
        await alice.session.idle()
        assert alice.balance_msat() == a1
        failed = await net.hub.db.read(lambda c: ledger.list_forwards(
            c, states=(ledger.FAILED,), limit=100))
        assert len(failed) == 6
        nursery.cancel_scope.cancel()
    net.hub.close()
