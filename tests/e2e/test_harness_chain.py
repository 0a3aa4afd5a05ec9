"""The harness reorgs a real node process: from `chanhub-regtest` and from the
`regtest_faults` helper. A transaction left out of the new branch falls out of the
chain (back to the mempool), and stays out while blocks are mined excluding it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from channel.chain import BitcoinRpc
from regtest import cheat
from regtest.cli import main as regtest_cli
from regtest.harness import HarnessError, NodeEndpoint
from regtest.pytest_plugin import Faults
from tests.e2e.node_calls import node_call


def _confirmations(node: NodeEndpoint, txid: str) -> int:
    return int(node_call(node, "getrawtransaction", txid, True).get("confirmations", 0))


def test_reorg_from_the_cli_drops_a_transaction_and_its_child(node_process: NodeEndpoint
                                                              ) -> None:
    node = node_process
    datadir = str(node.datadir)
    runner = CliRunner()
    # The faucet has one mature coin (101 blocks): the second payment spends the first
    # one's change, so it is the first one's child.
    parent = node_call(node, "sendtoaddress", node_call(node, "getnewaddress"), 1.0)
    child = node_call(node, "sendtoaddress", node_call(node, "getnewaddress"), 1.0)
    assert node_call(node, "getmempoolentry", child)["depends"] == [parent]
    mined = runner.invoke(regtest_cli, ["mine", "2", "--datadir", datadir])
    assert mined.exit_code == 0, mined.output
    height, old_tip = node_call(node, "getblockcount"), node_call(node, "getbestblockhash")
    assert _confirmations(node, parent) == 2

    typo = runner.invoke(regtest_cli, ["reorg", "2", "--exclude", "ab" * 32,
                                       "--datadir", datadir])
    assert typo.exit_code == 1 and "not in the last 2 block(s) or the mempool" in typo.output
    assert node_call(node, "getbestblockhash") == old_tip  # a refused reorg changed nothing

    done = runner.invoke(regtest_cli, ["reorg", "2", "--exclude", parent, "--extra", "1",
                                       "--datadir", datadir])
    assert done.exit_code == 0, done.output
    assert f"reorg: 2 block(s) after height {height - 2} replaced by 3" in done.output
    assert f"left out (in the mempool): {parent}" in done.output
    assert f"left out (in the mempool): {child}" in done.output
    assert node_call(node, "getblockcount") == height + 1
    assert node_call(node, "getbestblockhash") != old_tip
    assert node_call(node, "getblock", old_tip, 1)["confirmations"] == -1  # on the stale branch
    assert set(node_call(node, "getrawmempool")) == {parent, child}  # the child fell out too
    assert _confirmations(node, parent) == 0 and _confirmations(node, child) == 0

    kept_out = runner.invoke(regtest_cli, ["mine", "1", "--exclude", parent,
                                           "--datadir", datadir])
    assert kept_out.exit_code == 0, kept_out.output
    assert set(node_call(node, "getrawmempool")) == {parent, child}
    runner.invoke(regtest_cli, ["mine", "1", "--datadir", datadir])
    assert _confirmations(node, child) == 1  # an ordinary block confirms both again


@pytest.fixture
def chain_faults(node_process: NodeEndpoint) -> Faults:
    # The chain helpers need only the node (no hub, no clients).
    return Faults(node_process, None, None)  # type: ignore[arg-type]


def test_reorg_from_the_helper_keeps_other_transactions(chain_faults: Faults,
                                                        node_process: NodeEndpoint) -> None:
    node = node_process
    kept = node_call(node, "sendtoaddress", node_call(node, "getnewaddress"), 0.5)
    dropped = node_call(node, "sendtoaddress", node_call(node, "getnewaddress"), 0.25)
    [block] = chain_faults.mine(1)
    assert _confirmations(node, dropped) == 1
    with pytest.raises(HarnessError, match="at least one block"):
        chain_faults.reorg(0)

    done = chain_faults.reorg(1, exclude=[dropped], extra_blocks=2)
    assert done.disconnected == [block] and done.excluded == [dropped]
    assert done.new_tip == node_call(node, "getbestblockhash")
    assert _confirmations(node, kept) == 3  # moved to the new branch's first block
    assert _confirmations(node, dropped) == 0 and dropped in node_call(node, "getrawmempool")


def test_mine_excluding_puts_parents_first(node_process: NodeEndpoint) -> None:
    import trio

    async def run(rpc: BitcoinRpc) -> tuple[list[str], list[str]]:
        txids = []
        for _ in range(4):  # a chain of change outputs: each spends the one before
            txids.append(await rpc.call("sendtoaddress", await rpc.getnewaddress(), 1.0))
        ordered, left_out = await cheat._mempool_without(rpc, set())
        assert left_out == []
        positions = {t: i for i, t in enumerate(ordered)}
        for txid in ordered:
            for parent in (await rpc.getmempoolentry(txid))["depends"]:
                assert positions[parent] < positions[txid]
        hashes, _ = await cheat.mine_excluding(rpc, 1, [])
        block = await rpc.getblock(hashes[0], 1)
        assert set(txids) <= set(block["tx"])
        return txids, block["tx"]

    async def main() -> None:
        async with node_process.rpc() as rpc:
            await run(rpc)

    trio.run(main)


def test_reorg_needs_a_network_or_node_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(regtest_cli, ["reorg", "1", "--datadir", str(tmp_path)])
    assert result.exit_code == 1 and "no node is running" in result.output
