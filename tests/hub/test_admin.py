"""The Admin service and the Hub service's read side over a real hub: info, clients,
channels, payments (paging, direction, another client's channel refused), a fee
policy that persists across a restart and is applied to the next forward, and a
cooperative and a forced close."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from hub.edge import InvalidArgument, NotFound, PermissionDeniedError
from proto import admin_pb2, client_pb2
from protocol.driver.db import sqlite_url
from protocol.routing import FailureCode, FailureReport
from protocol.table import ChannelState
from regtest.node import Node
from tests.hub.parties import Net
from tests.hub.test_routing import FUNDING_SAT, PUSH_MSAT, fee


async def test_admin_and_client_views(regtest_node: Node, tmp_path: Path,
                                      autojump_clock: Any) -> None:
    net = Net(regtest_node, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await net.start_alice_and_bob(
            nursery, tmp_path, funding_sat=FUNDING_SAT, bob_push_msat=PUSH_MSAT)
        hashes = [alice.pay(bob, 3_000_000, f"p{i}") for i in range(3)]
        await alice.wait_for(lambda: all(h in alice.outcomes for h in hashes))
        await net.hub.drain()

        info = await net.hub.admin.get_info()
        assert info.client_count == 2 and info.connected_client_count == 2
        assert info.open_channel_count == 2
        assert info.fees_earned_msat == 3 * fee(3_000_000)
        assert info.hub.hub_node_id == net.hub.hub_node_id

        clients = await net.hub.admin.list_clients(admin_pb2.ListClientsRequest())
        assert {c.node_id for c in clients.clients} == {alice.node_id, bob.node_id}

        mine = await net.hub.list_channels(alice.node_id, client_pb2.ListChannelsRequest())
        [channel] = mine.channels
        assert channel.client_node_id == alice.node_id and channel.client_funded
        assert channel.state == client_pb2.CHANNEL_STATE_OPEN
        assert channel.local_balance_msat == alice.balance_msat()

        sent = await net.hub.list_payments(alice.node_id, client_pb2.ListPaymentsRequest(
            direction=client_pb2.PAYMENT_DIRECTION_SENT, limit=2))
        assert len(sent.payments) == 2 and sent.next_cursor
        rest = await net.hub.list_payments(alice.node_id, client_pb2.ListPaymentsRequest(
            direction=client_pb2.PAYMENT_DIRECTION_SENT, limit=2, cursor=sent.next_cursor))
        assert len(rest.payments) == 1 and not rest.next_cursor
        assert {p.payment_hash for p in [*sent.payments, *rest.payments]} == set(hashes)
        assert all(p.fee_msat == fee(3_000_000) and p.counterparty_node_id == bob.node_id
                   for p in sent.payments)
        received = await net.hub.list_payments(bob.node_id, client_pb2.ListPaymentsRequest(
            direction=client_pb2.PAYMENT_DIRECTION_RECEIVED))
        assert len(received.payments) == 3
        assert all(p.counterparty_node_id == b"" and p.fee_msat == 0
                   for p in received.payments)  # the payer is not revealed
        forwards = await net.hub.admin.list_payments(admin_pb2.ListPaymentsRequest())
        assert len(forwards.forwards) == 3

        # A fee policy: refused when out of range, stored, applied, kept over a restart.
        with pytest.raises(InvalidArgument):
            await net.hub.admin.set_fee_policy(admin_pb2.SetFeePolicyRequest(
                fee_policy=client_pb2.FeePolicy(base_fee_msat=2**40)))
        await net.hub.admin.set_fee_policy(admin_pb2.SetFeePolicyRequest(
            fee_policy=client_pb2.FeePolicy(base_fee_msat=5_000, fee_rate_ppm=2_000)))
        report_hash = alice.pay(bob, 2_000_000, "old fee")  # the payer still uses 1000+1000
        await alice.wait_for(lambda: report_hash in alice.outcomes)
        report = alice.outcomes[report_hash]
        assert isinstance(report, FailureReport)
        assert report.failure.code is FailureCode.FEE_INSUFFICIENT
        assert report.failure.fee_base_msat == 5_000 and report.failure.fee_ppm == 2_000
        await net.restart_hub(nursery)
        await net.link_up(alice)
        await net.link_up(bob)
        assert (await net.hub.get_info(alice.node_id)).fee_policy == client_pb2.FeePolicy(
            base_fee_msat=5_000, fee_rate_ppm=2_000)
        alice.fee_base_msat, alice.fee_ppm = 5_000, 2_000
        ok = alice.pay(bob, 2_000_000, "new fee")
        await alice.wait_for(lambda: ok in alice.outcomes)
        assert isinstance(alice.outcomes[ok], bytes)

        # Another client's channel: refused; an unknown one: not found.
        with pytest.raises(PermissionDeniedError):
            net.hub._client_driver(bob.node_id, channel.channel_id)
        with pytest.raises(NotFound):
            await net.hub.admin.close_channel(client_pb2.CloseChannelRequest(
                channel_id=bytes(32)))

        # Cooperative close of Alice's channel, forced close of Bob's.
        await net.hub.drain()
        await alice.session.idle()
        response = await net.hub.admin.close_channel(client_pb2.CloseChannelRequest(
            channel_id=channel.channel_id))
        assert response.state == client_pb2.CHANNEL_STATE_CLOSING
        hub_alice = net.hub.sessions[alice.node_id].drivers[0]
        while hub_alice.channel.state is not ChannelState.CLOSED:
            await trio.sleep(0.01)
        await net.hub.sessions[alice.node_id].idle()  # the close's events are stored
        bob_channel = net.hub.sessions[bob.node_id].drivers[0]
        forced = await net.hub.admin.close_channel(client_pb2.CloseChannelRequest(
            channel_id=bob_channel.channel_id, force=True))
        assert forced.state == client_pb2.CHANNEL_STATE_FORCE_CLOSING
        await net.hub.sessions[bob.node_id].idle()
        assert bob_channel.channel.state is ChannelState.FAILED
        kinds = [e.WhichOneof("body") for e in await net.hub.events.stored_after(
            alice.node_id, 0)]
        assert kinds[0] == "channel_opened" and "channel_closed" in kinds
        nursery.cancel_scope.cancel()
    net.hub.close()
