"""A tester's session at the shell: `chanhub-regtest up` with a channel per client,
then every fault and cheat command on it (docs/testing-scenarios.md), each one
checked on the real processes and the real chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from regtest import cheat
from regtest.cli import main as regtest_cli
from regtest.harness import HarnessError, client_state, run_chanhub, running_client, running_hub
from regtest.network import Network
from regtest.pytest_plugin import wait_until
from tests.e2e.node_calls import node_call, spenders_in_mempool


@pytest.fixture
def network_dir(tmp_path: Path) -> Iterator[Path]:
    datadir = tmp_path / "network"
    yield datadir
    CliRunner().invoke(regtest_cli, ["down", "--datadir", str(datadir)])


def _cli(datadir: Path, *args: str) -> Result:
    result = CliRunner().invoke(regtest_cli, [*args, "--datadir", str(datadir)])
    assert result.exit_code == 0, result.output
    return result


def _call(network: Network, method: str, *params: Any) -> Any:
    node = network.node()
    assert node is not None
    return node_call(node, method, *params)


def _link(datadir: Path) -> dict[str, int]:
    """`link status alice` parsed back into its counts."""
    words = _cli(datadir, "link", "status", "alice").output.replace(",", "").split()
    return {"open": int(words[1]), "accepted": int(words[4]), "refused": int(words[6])}


def test_a_tester_replays_a_breach_a_cut_a_kill_and_a_reorg(network_dir: Path) -> None:
    up = _cli(network_dir, "up", "--clients", "1", "--channel-sat", "300000")
    assert "link     via proxy" in up.output
    network = Network.load(network_dir)
    alice_dir = network.client_dir("alice")
    hub = running_hub(network.hub_dir)
    assert hub is not None

    # -- a backup, then the channel moves on (a self-payment the hub fails back) -------
    zero = _cli(network_dir, "cheat", "backup", "alice", "zero").output
    assert "normal, commitment 0" in zero and "backup 'zero' of alice" in zero
    _cli(network_dir, "client", "stop", "alice")
    invoice = json.loads(run_chanhub(alice_dir, hub, "--json", "invoice", "1000000"))
    with pytest.raises(HarnessError, match="not enough liquidity"):
        run_chanhub(alice_dir, hub, "pay", invoice["invoice"], "--idempotency-key", "k1")
    _cli(network_dir, "client", "start", "alice")
    assert "normal, commitment 2" in _cli(network_dir, "cheat", "backup", "alice", "now").output

    # -- the link: cut, and the client is back by itself ---------------------------------
    before = _link(network_dir)
    assert before["open"] == 1
    assert "cut(s)" in _cli(network_dir, "link", "cut", "alice").output
    wait_until(lambda: (s := _link(network_dir))["accepted"] > before["accepted"]
               and s["open"] == 1, what="alice reconnecting")
    back = _link(network_dir)
    # cut and refuse for half a second (real time, in the proxy): back after that
    _cli(network_dir, "link", "cut", "alice", "--refuse-for", "0.5")
    wait_until(lambda: (s := _link(network_dir))["open"] == 1
               and s["accepted"] > back["accepted"], what="alice back after a refused while")
    assert "refusing new" in _cli(network_dir, "link", "refuse", "alice").output
    assert "accepting new" in _cli(network_dir, "link", "accept", "alice").output

    # -- the process: paused, resumed, killed, started again ---------------------------
    alice = running_client(alice_dir)
    assert alice is not None
    assert "paused" in _cli(network_dir, "client", "pause", "alice").output
    assert client_state(alice.pid) == "T"
    _cli(network_dir, "client", "resume", "alice")
    assert client_state(alice.pid) != "T"
    _cli(network_dir, "client", "kill", "alice")
    assert "alice:  stopped" in _cli(network_dir, "status").output
    started = _cli(network_dir, "client", "start", "alice").output
    assert f"via {alice.hub_target}" in started  # through the same proxy

    # -- alice cheats: the commitment of backup zero, revoked since -------------------
    [old] = cheat.stored_commitments(cheat.backup_path(alice_dir, "zero"),
                                     cheat.client_key_source())
    published = _cli(network_dir, "cheat", "publish", "alice", "zero", "--mine", "1").output
    assert f"alice published commitment 0 of channel {old.channel_id.hex()}: {old.txid}" \
        in published
    assert _call(network, "getrawtransaction", old.txid, True)["confirmations"] == 1

    # the hub's watch sees the revoked commitment and broadcasts its penalty (what the
    # cheat is for: the reaction is the watch's, the scenario the harness's)
    def penalty() -> list[str]:
        node = network.node()
        assert node is not None
        return spenders_in_mempool(node, old.txid)

    [penalty_txid] = wait_until(penalty, what="the hub's penalty of alice's breach")

    # -- a reorg takes the breach out of the chain again ---------------------------------
    assert old.txid is not None
    reorged = _cli(network_dir, "reorg", "1", "--exclude", old.txid).output
    assert f"left out (in the mempool): {old.txid}" in reorged
    assert f"left out (in the mempool): {penalty_txid}" in reorged  # it spends the breach
    assert {old.txid, penalty_txid} <= set(_call(network, "getrawmempool"))
    assert _call(network, "getrawtransaction", old.txid, True).get("confirmations", 0) == 0

    # -- and a deeper one takes the funding transaction out, and the breach with it ------
    funding = _call(network, "getrawtransaction", old.txid, True)["vin"][0]["txid"]
    assert funding in {txid for txid, _ in cheat.funding_candidates(old.channel_id)}
    depth = _call(network, "getrawtransaction", funding, True)["confirmations"]
    reorged = _cli(network_dir, "reorg", str(depth), "--exclude", funding).output
    assert f"left out (in the mempool): {funding}" in reorged
    assert f"left out (in the mempool): {old.txid}" in reorged
    assert {funding, old.txid} <= set(_call(network, "getrawmempool"))

    # -- errors: one line, exit 1 -------------------------------------------------------
    unknown = CliRunner().invoke(regtest_cli, ["client", "kill", "mallory",
                                               "--datadir", str(network_dir)])
    assert unknown.exit_code == 1 and "no client 'mallory'" in unknown.output
    unknown = CliRunner().invoke(regtest_cli, ["env", "mallory", "--datadir", str(network_dir)])
    assert unknown.exit_code == 1 and "no client 'mallory'" in unknown.output
    exports = _cli(network_dir, "env", "alice").output.splitlines()
    assert f"export CHANHUB_DATA_DIR={alice_dir}" in exports, exports
    assert f"export CHANHUB_HUB={alice.hub_target}" in exports, exports  # its proxy
    missing = CliRunner().invoke(regtest_cli, ["cheat", "publish", "hub", "never",
                                               "--datadir", str(network_dir)])
    assert missing.exit_code == 1 and "no backup" in missing.output
