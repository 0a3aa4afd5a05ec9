"""A breach with an HTLC in flight, replayed on real processes with the plugin's
helper: the payee is frozen (SIGSTOP) while a payment to it is routed, so the payer's
channel holds the HTLC; a backup taken then holds a commitment with an HTLC output.
The payer's link is cut mid-payment (and refused while the payee resumes and
fulfills); once it is back the payment succeeds, which revokes the backup's
commitment; the payer publishes it. Then the payee restores an old store and tries
`chanhub close --force`: he publishes nothing, the hub closes with its latest."""

from __future__ import annotations

import json

import pytest

from regtest import cheat
from regtest.harness import (
    HarnessError,
    NodeEndpoint,
    client_state,
    run_chanhub,
    running_client,
    stop_client,
)
from regtest.pytest_plugin import ClientFactory, Faults, wait_until
from tests.e2e.node_calls import node_call, spenders_in_mempool


def test_a_payer_publishes_a_commitment_with_an_htlc_in_flight(
        regtest_faults: Faults, client_processes: ClientFactory,
        node_process: NodeEndpoint) -> None:
    faults = regtest_faults
    alice = client_processes("alice", via_proxy=True)
    bob = client_processes("bob")
    alice_channel = faults.open_channel(alice, 400_000)
    bob_channel = faults.inbound(bob, 300_000)  # the hub funds it: bob can receive
    [bob_before] = faults.backup(bob, "before")
    bolt11 = faults.invoice(bob, 50_000_000)  # 50,000 sat

    # bob freezes; alice's payment reaches the hub, which cannot get bob to answer
    bob = running_client(bob.datadir) or bob
    faults.pause(bob)
    assert client_state(bob.pid) == "T"
    payment = faults.start_payment(alice, bolt11, "in-flight")
    try:
        def htlc_in_flight() -> bool:
            [stored] = faults.backup(alice, "in-flight")
            return stored.htlc_outputs == 1

        wait_until(htlc_in_flight, what="alice's commitment holding the HTLC")
        [held] = cheat.stored_commitments(cheat.backup_path(alice.datadir, "in-flight"),
                                          cheat.client_key_source())
        assert held.channel_id == alice_channel and payment.poll() is None
        # and alice's link is cut mid-payment, and refused: bob's preimage reaches the
        # hub while alice is away; once she is back the payment settles, once
        faults.refuse_links(alice)
        faults.cut_link(alice)
        wait_until(lambda: faults.link_status(alice)["open"] == 0, what="alice's link cut")
    finally:
        faults.resume(bob)
    cut = faults.accept_links(alice)
    wait_until(lambda: faults.link_status(alice)["forwarded"] > cut["forwarded"],
               what="alice reconnecting")
    out, err = payment.communicate(timeout=120)
    assert payment.returncode == 0, err
    assert json.loads(out)["state"] == "succeeded"

    # the payment settled: the commitment with the HTLC is revoked; alice (stopped since
    # her payment, her store as the payment left it) publishes it
    [now] = faults.backup(alice, "settled")
    assert now.commitment_number > held.commitment_number and now.htlc_outputs == 0
    [sent] = faults.publish_old_commitment(alice, "in-flight", mine_blocks=1)
    assert sent.txid == held.txid
    tx = node_call(node_process, "getrawtransaction", held.txid, True)
    assert tx["confirmations"] == 1
    # to_local (alice's balance before the payment) and the HTLC output: the hub had
    # nothing in alice's channel yet, so there is no to_remote
    values_sat = sorted(round(float(out["value"]) * 100_000_000) for out in tx["vout"])
    assert len(values_sat) == 2
    assert 50_000 <= values_sat[0] <= 50_100  # the HTLC: 50,000 sat plus the hub's fee
    # the hub's watch takes both outputs, the HTLC's too, in its penalty
    [penalty] = wait_until(lambda: spenders_in_mempool(node_process, held.txid),
                           what="the hub's penalty of alice's breach")
    taken = node_call(node_process, "getrawtransaction", penalty, True)["vin"]
    assert sorted(i["vout"] for i in taken if i["txid"] == held.txid) == [0, 1]

    # bob restores his old store and tries to force close from it: reestablish tells him
    # he is behind, so he publishes nothing (BOLT #2 data loss protection) and the hub
    # closes with its latest commitment. Publishing an old state needs the harness's
    # own path (above), not the client's CLI.
    hub_bob = {c.channel_id: c for c in faults.backup("hub", "latest")}[bob_channel]
    stop_client(bob.datadir)
    cheat.restore_client_store(bob.datadir, "before")
    with pytest.raises(HarnessError, match="no open channel"):
        run_chanhub(bob.datadir, faults.hub, "close", bob_channel.hex(), "--force",
                    node=node_process)
    wait_until(lambda: hub_bob.txid in node_call(node_process, "getrawmempool"),
               what="the hub closing bob's channel with its latest commitment")
    # his store now marks the channel failed; the harness still reads its commitment
    [failed] = cheat.stored_commitments(bob.datadir / cheat.CLIENT_STORE_FILE,
                                        cheat.client_key_source())
    assert failed.state == "failed" and failed.txid == bob_before.txid
