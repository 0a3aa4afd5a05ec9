"""The hub cheats while a client is offline, and the client's watchtower punishes it.

Real processes on loopback, started as a tester would (`chanhub-regtest up --clients 2
--tower`): the node, chanhubd, a `chanhub-tower` process, and Alice and Bob as
`chanhub` processes registered with the tower through `chanhub init --tower`. Alice
opens a channel and pays Bob once (so the hub has a balance in her channel); Bob
freezes while she pays him again, and the hub's store is backed up while its
commitment of her channel holds that HTLC. Bob resumes, the payment settles, which
revokes that commitment: Alice's `chanhub pay` sends the appointment to the tower and
exits. With no Alice process left, the hub publishes the revoked commitment; the
tower's penalty takes the hub's to_local and the HTLC output into Alice's wallet.
Every output is checked to the satoshi: the channel ends all Alice's, less the
commitment's fee and the penalty's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from channel.chain import btc_to_sat
from channel.htlc import commitment_weight, weight_fee_sat
from client.tower import PENALTY_FEERATE_MULTIPLIER
from regtest import cheat
from regtest.cli import main as regtest_cli
from regtest.harness import run_chanhub, running_client
from regtest.network import (
    DEFAULT_CLIENT_FUNDS_SAT,
    Network,
    client_offline,
    open_client_channel,
)
from regtest.pytest_plugin import ClientFactory, Faults, wait_until
from tests.e2e.node_calls import node_call, spenders_in_mempool
from tests.fees import priced_fee_of_json

CHANNEL_SAT = 400_000
FIRST_MSAT = 100_000_000  # 100,000 sat: the hub's balance in Alice's channel
IN_FLIGHT_MSAT = 50_000_000  # the HTLC of the revoked state


@pytest.fixture
def network_dir(tmp_path: Path) -> Iterator[Path]:
    datadir = tmp_path / "network"
    yield datadir
    CliRunner().invoke(regtest_cli, ["down", "--datadir", str(datadir)])


def sat(value_btc: object) -> int:
    return int(btc_to_sat(str(value_btc)))


def test_the_tower_punishes_the_hub_while_the_client_is_offline(network_dir: Path) -> None:
    up = CliRunner().invoke(regtest_cli, ["up", "--clients", "2", "--tower",
                                          "--datadir", str(network_dir)])
    assert up.exit_code == 0, up.output
    assert "tower:  running at" in up.output
    assert up.output.count("--bitcoind-rpc") == 2  # each client's command line has it
    network = Network.load(network_dir)
    node, hub, tower = network.node(), network.hub(), network.tower_endpoint()
    assert node is not None and hub is not None and tower is not None
    faults = Faults(node, hub, ClientFactory(network_dir / "clients", hub, node))
    alice, bob = network.client("alice"), network.client("bob")
    assert alice is not None and bob is not None

    # from the faucet's coin `up` sent her wallet, and nothing else
    alice_channel = open_client_channel(alice.datadir, hub, node, CHANNEL_SAT, fund_sat=0)
    faults.inbound(bob, 300_000)  # the hub funds it: Bob can receive
    with client_offline(bob.datadir, hub, node):  # one stop for both invoices
        first_bolt11, second_bolt11 = (
            json.loads(run_chanhub(bob.datadir, hub, "--json", "invoice", str(msat),
                                   node=node))["invoice"]
            for msat in (FIRST_MSAT, IN_FLIGHT_MSAT))
    first = faults.start_payment(alice, first_bolt11, "first")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    first_fee_msat = int(json.loads(out)["fee_msat"])

    # Bob freezes: Alice's second payment stays in flight in her channel
    bob = running_client(bob.datadir) or bob
    faults.pause(bob)
    second = faults.start_payment(alice, second_bolt11, "in-flight")
    try:
        def hub_holds_the_htlc() -> bool:
            stored = {c.channel_id: c for c in faults.backup("hub", "in-flight")}
            return stored[alice_channel].htlc_outputs == 1

        wait_until(hub_holds_the_htlc, what="the hub's commitment holding the HTLC")
    finally:
        faults.resume(bob)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    paid = json.loads(out)
    assert paid["state"] == "succeeded"
    second_fee_msat = int(paid["fee_msat"])

    # Alice is offline (no process of hers runs); her appointments are at the tower
    assert running_client(alice.datadir) is None
    [listed] = json.loads(run_chanhub(alice.datadir, hub, "--json", "tower", "list"))
    assert listed["tower"] == tower.target and listed["pending"] == 0
    # one a revoked commitment of the hub with something revocable: the HTLC of the
    # first payment; the first payment settled; the second payment in flight
    assert listed["appointments"] == 3
    [channel] = json.loads(run_chanhub(alice.datadir, hub, "--json", "channels"))
    feerate = int(channel["feerate_per_kw"])  # the opening one: nobody sent update_fee

    # the hub publishes its revoked commitment, which held the HTLC
    [revoked] = [c for c in cheat.stored_commitments(
        cheat.backup_path(hub.datadir, "in-flight"), cheat.hub_key_source(hub.datadir))
        if c.channel_id == alice_channel]
    faults.publish_old_commitment("hub", "in-flight", channel_id=alice_channel,
                                  mine_blocks=1)
    breach = node_call(node, "getrawtransaction", revoked.txid, True)
    assert breach["confirmations"] == 1
    [penalty_txid] = wait_until(lambda: spenders_in_mempool(node, revoked.txid),
                                timeout_s=30, what="the tower's penalty")
    faults.mine(1)
    penalty = node_call(node, "getrawtransaction", penalty_txid, True)
    assert penalty["confirmations"] == 1

    # the breach: the hub's to_local (the first payment and its fee), the HTLC (the
    # second payment and its fee) and Alice's to_remote (the rest, less the fee)
    values = [sat(o["value"]) for o in breach["vout"]]
    hub_local_sat = (FIRST_MSAT + first_fee_msat) // 1000
    htlc_sat = (IN_FLIGHT_MSAT + second_fee_msat) // 1000
    assert hub_local_sat in values and htlc_sat in values and len(values) == 3
    [to_remote_index] = [i for i, v in enumerate(values) if v not in (hub_local_sat, htlc_sat)]
    # Alice funded the channel: her output pays the commitment's fee (BOLT #3); each
    # output is rounded down to the satoshi, the msat remainders going to the fee
    alice_msat = (CHANNEL_SAT * 1000 - FIRST_MSAT - first_fee_msat - IN_FLIGHT_MSAT
                  - second_fee_msat)
    assert values[to_remote_index] == (alice_msat // 1000
                                       - weight_fee_sat(commitment_weight(1), feerate))
    commitment_fee_sat = CHANNEL_SAT - sum(values)

    # the penalty takes both revocable outputs, and nothing else, into Alice's wallet
    taken = sorted((i["txid"], i["vout"]) for i in penalty["vin"])
    assert taken == sorted((revoked.txid, i) for i in range(3) if i != to_remote_index)
    [paid_out] = penalty["vout"]
    penalty_fee_sat = hub_local_sat + htlc_sat - sat(paid_out["value"])
    # signed ahead at twice the 2-block estimate (the node has none: the fallback, the
    # channel's opening feerate too): it cannot be bumped later. Priced on the weight
    # with the longest signatures (73 bytes: tests/fees.py)
    assert penalty_fee_sat == priced_fee_of_json(penalty, PENALTY_FEERATE_MULTIPLIER * feerate)
    alice_sat = values[to_remote_index] + sat(paid_out["value"])
    assert alice_sat + commitment_fee_sat + penalty_fee_sat == CHANNEL_SAT

    # Alice back: her wallet holds the faucet's coin less the channel's funding (and its
    # fee), plus the penalty's output
    funding_txid = faults.rpc_call(lambda rpc: cheat.funding_txid(rpc, alice_channel))
    funding = node_call(node, "getrawtransaction", funding_txid, True)
    [coin] = funding["vin"]
    faucet_tx = node_call(node, "getrawtransaction", coin["txid"], True)
    assert sat(faucet_tx["vout"][coin["vout"]]["value"]) == DEFAULT_CLIENT_FUNDS_SAT
    [change_sat] = [sat(o["value"]) for o in funding["vout"] if sat(o["value"]) != CHANNEL_SAT]
    funding_fee_sat = DEFAULT_CLIENT_FUNDS_SAT - CHANNEL_SAT - change_sat
    assert 0 < funding_fee_sat < 10_000
    wallet = json.loads(run_chanhub(alice.datadir, hub, "--json", "wallet", "balance",
                                    node=node))
    assert wallet["confirmed_sat"] == (DEFAULT_CLIENT_FUNDS_SAT - CHANNEL_SAT
                                       - funding_fee_sat + sat(paid_out["value"]))
