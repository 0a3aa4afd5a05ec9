"""Reorgs through invalidateblock, and state surviving restarts (clean and kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from regtest.node import Node
from regtest.node.params import COIN, block_subsidy
from regtest.pytest_plugin import ManualClock
from tests.regtest import txbuild as tb


def test_invalidateblock_returns_transactions_to_the_mempool(regtest_node: Node) -> None:
    node = regtest_node
    txid, _ = node.send_to_script(tb.p2wpkh(tb.key(1)), 100_000)
    block_hash = node.mine(1)[0]
    node.mine(2)
    assert node.call("getrawmempool") == []
    assert node.call("getrawtransaction", txid, True)["confirmations"] == 3
    assert node.call("invalidateblock", block_hash) is None
    assert node.call("getblockcount") == 101
    assert node.call("getrawmempool") == [txid]
    # a competing chain, longer than the old one, confirms it again
    new_hashes = node.mine(4)
    assert node.call("getblockcount") == 105
    assert block_hash not in new_hashes
    assert node.call("getrawtransaction", txid, True)["blockhash"] == new_hashes[0]
    header = node.call("getblockheader", block_hash)
    assert header["confirmations"] == -1
    # reconsidering the shorter branch does not move the tip
    node.call("reconsiderblock", block_hash)
    assert node.call("getbestblockhash") == new_hashes[-1]


def test_reorg_drops_a_tx_whose_coinbase_input_becomes_immature(regtest_node: Node) -> None:
    node = regtest_node
    address = tb_address(1)
    first = node.mine(1, address)[0]
    node.mine(99)
    coinbase_txid = node.call("getblock", first)["tx"][0]
    value = block_subsidy(102)
    tx = tb.spend([(coinbase_txid, 0)], [(tb.p2wpkh(tb.key(2)), value - 1000)])
    tb.sign_p2wpkh(tx, 0, value, tb.key(1))
    node.call("sendrawtransaction", tb.raw(tx))
    tip = node.call("getbestblockhash")
    node.call("invalidateblock", tip)
    assert node.call("getrawmempool") == []


def test_reorg_to_a_longer_chain_via_reconsiderblock(regtest_node: Node) -> None:
    node = regtest_node
    fork_point = node.call("getbestblockhash")
    branch_a = node.mine(3)
    node.call("invalidateblock", branch_a[0])
    assert node.call("getbestblockhash") == fork_point
    branch_b = node.mine(2)
    node.call("reconsiderblock", branch_a[0])
    assert node.call("getbestblockhash") == branch_a[-1]
    assert node.call("getblockheader", branch_b[0])["confirmations"] == -1


def tb_address(n: int) -> str:
    from btclib import b32
    from btclib.hashes import hash160

    return str(b32.address_from_witness(0, hash160(tb.pub(tb.key(n))), "regtest"))


def test_clean_restart_keeps_chain_mempool_and_wallet(tmp_path: Path) -> None:
    clock = ManualClock()
    node = Node(tmp_path, clock=clock)
    node.mine(101)
    txid, _ = node.send_to_script(tb.p2wpkh(tb.key(1)), 100_000)
    tip = node.call("getbestblockhash")
    balance = node.call("getbalance")
    node.close()
    node = Node(tmp_path, clock=clock)
    try:
        assert node.call("getbestblockhash") == tip
        assert node.call("getrawmempool") == [txid]
        assert node.call("getbalance") == balance
        assert (tmp_path / "regtest" / "wallet.seed").stat().st_mode & 0o777 == 0o600
        node.mine(1)
        assert node.call("getrawmempool") == []
    finally:
        node.close()


MINER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from regtest.node import Node

    node = Node(Path(sys.argv[1]), clock=lambda: 1_700_000_000)
    address = node.new_address()
    print("ready", flush=True)
    while True:
        node.mine(1, address)
        print(node.chain.height, flush=True)
    """
)


def test_kill_9_mid_mining_leaves_a_consistent_chain(tmp_path: Path) -> None:
    script = tmp_path / "miner.py"
    script.write_text(MINER)
    datadir = tmp_path / "data"
    repo_root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(datadir)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    # let it report 30 blocks, then kill it hard while it is busy on the next ones
    while int(proc.stdout.readline()) < 30:
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    node = Node(datadir, clock=lambda: 1_700_000_000)
    try:
        height = node.call("getblockcount")
        assert height >= 30
        # every block of the active chain is whole and links to its parent
        previous = None
        for h in range(height + 1):
            block_hash = node.call("getblockhash", h)
            block = node.call("getblock", block_hash)
            assert block.get("previousblockhash") == previous
            assert bytes.fromhex(node.call("getblock", block_hash, 0))[:80].hex() == (
                node.call("getblockheader", block_hash, False)
            )
            previous = block_hash
        # the UTXO set is exactly the coinbases of blocks 1..height: nothing half-applied
        total = sum(block_subsidy(h) for h in range(1, height + 1))
        assert sum(c.value for c in node.chain.utxo.values()) == total
        # one payout per block (the OP_RETURN witness commitment is never a coin)
        assert len(node.chain.utxo) == height
        # and the node goes on mining on top of what it found
        node.mine(1)
        assert node.call("getblockcount") == height + 1
    finally:
        node.close()
    assert total >= 30 * 50 * COIN // 2


def test_restart_after_a_crash_mid_reorg_resumes_the_best_chain(tmp_path: Path) -> None:
    # A reorg is one store transaction per block: a kill -9 between disconnecting
    # and reconnecting leaves a valid, more-work chain on disk that is not active.
    # bitcoind activates the best chain on start-up; so must this node.
    clock = ManualClock()
    node = Node(tmp_path, clock=clock)
    node.mine(103)
    tip = node.call("getbestblockhash")
    node.chain.disconnect_tip()  # the crash: what a reorg had done so far
    node.chain.disconnect_tip()
    node.close()
    node = Node(tmp_path, clock=clock)
    try:
        assert node.call("getblockcount") == 103
        assert node.call("getbestblockhash") == tip
        node.mine(1)
        assert node.call("getblockcount") == 104
    finally:
        node.close()
