"""Forwards the payee's channel cannot take until the payee acknowledges the HTLCs
before them (``protocol.rules.crossing_problem``: the payee funds the channel, and its
fee headroom covers only the HTLCs it has acknowledged) are held by the router, not
failed: offered in arrival order after the payee's next frame, refused when the payee
goes offline or after ``PARKED_FORWARD_TIMEOUT_S``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from channel.commitment import Side
from hub import ledger, router
from protocol.driver.db import sqlite_url
from protocol.routing import FailureCode, FailureReport
from regtest.node import Node
from tests.hub.parties import Client, Net

FUNDING_SAT = 1_000_000
# Bob funds his channel and gives most of it to the hub: what he keeps pays the
# commitment fee of only a few HTLCs beyond those he has acknowledged.
BOB_PUSH_MSAT = 960_000_000
PAYMENTS = 100
AMOUNT_MSAT = 5_000_000


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time jumps only after 0.25 s of real idleness here (the suite's clock
    jumps after 1 ms): a commit in the store's writer thread leaves every task
    waiting, and a jump then would reach the parked forwards' deadline while the
    payee's acknowledgement is one fsync away."""
    return trio.testing.MockClock(autojump_threshold=0.25)


async def test_a_hundred_in_flight_toward_a_thin_funder_all_succeed(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=BOB_PUSH_MSAT)
        bob_driver = net.hub.sessions[bob.node_id].drivers[0]
        b0 = bob.balance_msat()
        hashes = [alice.pay(bob, AMOUNT_MSAT + i, f"p {i}") for i in range(PAYMENTS)]
        await alice.wait_for(lambda: all(h in alice.outcomes for h in hashes))
        failed = {h: o for h, o in alice.outcomes.items() if isinstance(o, FailureReport)}
        assert not failed, (len(failed), {str(o.failure.code) for o in failed.values()})
        # The path under test was taken: some forwards waited for Bob's acknowledgement.
        assert net.hub.router.stats.parked > 0
        assert not net.hub.router.parked and not net.hub.router.parked_incoming
        while bob_driver.channel.d.book.htlcs or bob.driver.channel.d.book.htlcs:
            await trio.sleep(0.01)  # the last fulfills' commitment round
        assert bob.balance_msat() == b0 + sum(AMOUNT_MSAT + i for i in range(PAYMENTS))
        records = await net.hub.db.read(lambda c: ledger.list_forwards(c, limit=1000))
        assert len(records) == PAYMENTS and {r.state for r in records} == {ledger.SUCCEEDED}
        nursery.cancel_scope.cancel()
    net.hub.close()


async def _park_some(net: Net, alice: Client, bob: Client) -> list[bytes]:
    """Bob's acknowledgements stop coming: past the few his headroom covers, forwards
    park."""
    hashes = [alice.pay(bob, AMOUNT_MSAT, f"held {i}") for i in range(30)]
    while not net.hub.router.parked:
        await trio.sleep(0.01)
    return hashes


def stop_reading(net: Net, client: Client) -> trio.Event:
    """The client's session stops reading its link (nothing it owes the hub arrives any
    more) until the returned event is set."""
    link = net._client_links[client.name]
    release = trio.Event()
    real_receive = link.receive

    async def receive_later() -> Any:
        await release.wait()
        return await real_receive()

    link.receive = receive_later
    return release


def offered_to(net: Net, client: Client) -> set[bytes]:
    """Payment hashes of the HTLCs the hub has offered on the client's channel."""
    driver = net.hub.sessions[client.node_id].drivers[0]
    return {h.payment_hash for (side, _), h in driver.channel.d.book.htlcs.items()
            if side is Side.LOCAL}


@pytest.mark.parametrize("ending", ["payee offline", "timeout"])
async def test_a_parked_forward_fails_back_in_time(
        ending: str, regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=BOB_PUSH_MSAT)
        release = stop_reading(net, bob)
        hashes = await _park_some(net, alice, bob)
        parked = [p.record.payment_hash for p in net.hub.router.parked[bob.node_id]]
        assert parked and set(parked) <= set(hashes)
        first_deadline = net.hub.router.parked[bob.node_id][0].deadline
        started = trio.current_time()
        if ending == "payee offline":
            net._client_scopes[bob.name].cancel()  # the hub's end of Bob's link drops
        await alice.wait_for(lambda: all(h in alice.outcomes for h in parked))
        waited = trio.current_time() - started
        for h in parked:
            report = alice.outcomes[h]
            assert isinstance(report, FailureReport), report
            expected = (FailureCode.PAYEE_OFFLINE if ending == "payee offline"
                        else FailureCode.INSUFFICIENT_CAPACITY)
            assert report.failure.code is expected
        if ending == "timeout":
            assert first_deadline <= trio.current_time()
            assert waited < 2 * router.PARKED_FORWARD_TIMEOUT_S
        else:
            assert waited < router.PARKED_FORWARD_TIMEOUT_S
        assert not net.hub.router.parked and not net.hub.router.parked_incoming
        # Nothing of a refused forward was offered to Bob.
        assert not offered_to(net, bob) & set(parked)
        release.set()
        nursery.cancel_scope.cancel()
    net.hub.close()


async def test_a_parked_forward_from_a_failed_channel_is_not_offered(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    """Alice's channel fails (the hub goes on chain with it) while her forwards wait:
    when Bob's acknowledgements come, they are refused, not offered to him."""
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=BOB_PUSH_MSAT)
        release = stop_reading(net, bob)
        await _park_some(net, alice, bob)
        parked = {p.record.payment_hash for p in net.hub.router.parked[bob.node_id]}
        forwarded = net.hub.router.stats.forwarded
        net.hub.sessions[alice.node_id].drivers[0].fail("the payer's channel fails")
        await net.hub.sessions[alice.node_id].idle()
        release.set()  # Bob answers now: the hub retries what waited for him
        while net.hub.router.parked:
            await trio.sleep(0.01)
        await net.hub.router.idle()
        assert net.hub.router.stats.forwarded == forwarded
        assert not offered_to(net, bob) & parked
        records = await net.hub.db.read(lambda c: ledger.list_forwards(c, limit=1000))
        refused = [r for r in records if r.payment_hash in parked]
        assert len(refused) == len(parked)
        assert {(r.state, r.failure_message) for r in refused} == {
            (ledger.FAILED, FailureCode.TEMPORARY_FAILURE.name)}
        nursery.cancel_scope.cancel()
    net.hub.close()
