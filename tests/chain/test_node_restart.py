"""The chain side across a restart of the node process itself (the embedded node
run as bitcoind would be, `regtest.harness.start_node`): the follower's polls fail
while it is down, the client re-reads the new cookie, and the wallet and the
broadcaster carry on where they were. Virtual time (MockClock) for the polls;
starting the node process is the only real wait."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from channel.chain import BitcoinRpc
from channel.chain.services import ChainServices
from regtest.harness import NodeEndpoint, free_port, start_node, stop_node


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeEndpoint]:
    endpoint = start_node(tmp_path / "node", port=free_port())
    try:
        yield endpoint
    finally:
        stop_node(endpoint.datadir)


async def test_services_ride_out_a_node_restart(
    node_process: NodeEndpoint, autojump_clock: trio.testing.MockClock
) -> None:
    async with BitcoinRpc(
        node_process.url, cookie_file=node_process.cookie_file, timeout_s=None
    ) as rpc:
        miner = await rpc.getnewaddress()
        await rpc.generatetoaddress(101, miner)
        chain = await ChainServices.open(rpc, b"\x09" * 32, poll_interval_s=3.0)
        async with trio.open_nursery() as nursery:
            tip = await nursery.start(chain.run)
            await rpc.sendtoaddress(chain.wallet.new_address(), 1_000_000)
            await rpc.generatetoaddress(1, miner)
            await chain.follower.wait_for_height(tip.height + 1)
            txid = await chain.wallet.send(await rpc.getnewaddress(), 200_000)

            stop_node(node_process.datadir)
            await trio.sleep(30)  # ten failed polls, in virtual time
            with contextlib.suppress(FileNotFoundError):
                Path(node_process.cookie_file).unlink()
            start_node(node_process.datadir, port=node_process.port)  # a new cookie

            # The node kept its mempool across a clean restart; either way the
            # broadcaster would send the tx again on the next block.
            await rpc.generatetoaddress(1, miner)
            await chain.follower.wait_for_height(tip.height + 2)
            nursery.cancel_scope.cancel()
        assert chain.tracker.tip_height == tip.height + 2
        assert chain.broadcaster.pending()[0].txid == txid
        assert chain.broadcaster.pending()[0].confirmed_height == tip.height + 2
        balance = chain.wallet.balance()
        assert balance.unconfirmed_sat == 0 and 0 < balance.confirmed_sat < 800_000
