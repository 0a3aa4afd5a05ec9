"""The harness cheats and fails on real processes, through the pytest plugin's
`regtest_faults` helper: a node process, the real chanhubd, a `chanhub serve` client
behind its link proxy, with a channel funded from the client's wallet.

One test walks every fault on one channel (opening a channel costs seconds; each
fault costs less): backups and a revoked state, the link cut and refused, the client
frozen, killed and restarted, the hub publishing its revoked commitment, and the old
store restored in place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from channel.chain import BitcoinRpc
from protocol.driver.crypto import WrongKey
from regtest import cheat
from regtest.harness import (
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    client_state,
    running_client,
    stop_client,
)
from regtest.proxy import running_proxy
from regtest.pytest_plugin import ClientFactory, Faults, wait_until
from tests.e2e.node_calls import node_call, spenders_in_mempool


def _reconnected(faults: Faults, alice: ClientEndpoint, forwarded_before: int) -> bool:
    status = faults.link_status(alice)
    return bool(status["forwarded"] > forwarded_before and status["open"] >= 1)


def test_every_fault_on_one_channel(regtest_faults: Faults,
                                    client_processes: ClientFactory,
                                    hub_process: HubEndpoint,
                                    node_process: NodeEndpoint) -> None:
    faults = regtest_faults
    alice = client_processes("alice", via_proxy=True)
    proxy = running_proxy(alice.datadir)
    assert proxy is not None and alice.hub_target == proxy.target != hub_process.target
    channel_id = faults.open_channel(alice, 400_000)

    # -- a backup, then a revoked state ---------------------------------------------
    [hub_zero] = faults.backup("hub", "zero")
    [alice_zero] = faults.backup(alice, "zero")
    assert (hub_zero.channel_id, hub_zero.state, hub_zero.commitment_number) == \
        (channel_id, "normal", 0)
    assert alice_zero.commitment_number == 0 and alice_zero.txid != hub_zero.txid
    refused = faults.revoke_by_failed_payment(alice)
    assert "not enough liquidity" in refused
    online = running_client(alice.datadir)  # revoke_by_failed_payment started it again
    assert online is not None
    alice = online
    [hub_now] = faults.backup("hub", "now")
    assert hub_now.commitment_number == 2 and hub_now.txid != hub_zero.txid

    # -- the link: cut (the client dials again by itself), refused, accepted ------------
    before = faults.link_status(alice)
    assert before["open"] == 1 and not before["refusing"]
    faults.cut_link(alice)
    wait_until(lambda: _reconnected(faults, alice, before["forwarded"]),
               what="alice reconnecting after the cut")
    faults.refuse_links(alice)
    faults.cut_link(alice)
    wait_until(lambda: (s := faults.link_status(alice))["refused"] >= 1 and s["open"] == 0,
               what="a refused reconnect")
    status = faults.link_status(alice)
    faults.accept_links(alice)
    wait_until(lambda: _reconnected(faults, alice, status["forwarded"]),
               what="alice reconnecting once accepted")

    # -- the process: frozen, continued, killed, restarted on its store ----------------
    faults.pause(alice)
    assert client_state(alice.pid) == "T"
    faults.resume(alice)
    assert client_state(alice.pid) in {"R", "S"}
    faults.kill(alice)
    assert running_client(alice.datadir) is None and client_state(alice.pid) == "gone"
    again = faults.restart(alice)
    assert again.pid != alice.pid and again.hub_target == alice.hub_target  # still proxied

    # -- the hub cheats: its revoked commitment on chain --------------------------------
    height = node_call(node_process, "getblockcount")
    [sent] = faults.publish_old_commitment("hub", "zero", mine_blocks=1)
    assert (sent.channel_id, sent.commitment_number, sent.txid) == \
        (channel_id, 0, hub_zero.txid)
    confirmed = node_call(node_process, "getrawtransaction", sent.txid, True)
    assert confirmed["confirmations"] == 1
    assert node_call(node_process, "getblockcount") == height + 1
    # it spends the channel's funding output (BOLT #2: the channel id is the funding
    # txid with the output index xored into its last two bytes)
    spent = confirmed["vin"][0]
    assert (spent["txid"], spent["vout"]) in cheat.funding_candidates(channel_id)
    # alice's own watch (chanhub serve follows the chain) punishes the hub
    [penalty] = wait_until(lambda: spenders_in_mempool(node_process, sent.txid),
                           what="alice's penalty of the hub's breach")
    assert penalty != sent.txid

    # -- the client's old store put back in place --------------------------------------
    stop_client(alice.datadir)
    cheat.restore_client_store(alice.datadir, "zero")
    [restored] = cheat.stored_commitments(alice.datadir / cheat.CLIENT_STORE_FILE,
                                          cheat.client_key_source())
    assert (restored.commitment_number, restored.txid) == (0, alice_zero.txid)


@pytest.mark.parametrize("hub_store", ["postgres"])
def test_a_postgres_hub_store_is_backed_up_as_its_channel_tables(
        hub_process: HubEndpoint, hub_store: str) -> None:
    backup = cheat.backup_hub(hub_process, "empty")
    # the copy carries the key check: opening it with the hub's key file works (a wrong
    # key would raise), and a hub with no channel has nothing to publish
    assert cheat.stored_commitments(backup, cheat.hub_key_source(hub_process.datadir)) == []
    with pytest.raises(HarnessError, match="no signed commitment"):
        trio.run(_publish_empty, hub_process, backup)
    with pytest.raises(WrongKey):
        cheat.stored_commitments(backup, cheat.client_key_source())


async def _publish_empty(hub: HubEndpoint, backup: Path) -> None:
    # no RPC call is made before the refusal, so no node is needed
    rpc = BitcoinRpc("http://127.0.0.1:1/", username="u", password="p")
    await cheat.publish_old_commitment(rpc, backup, cheat.hub_key_source(hub.datadir))
