"""A reorg takes a funding transaction out of the chain before its depth: the channel
is unusable, not lost (issue 10, item 4). Real processes on loopback: the node,
chanhubd waiting for MINIMUM_DEPTH confirmations, and two `chanhub serve` clients,
each with its own wallet (Bob only receives: the hub funds his channel).

Alice opens a channel she funds; the funding confirms at depth 1, both sides see it;
a reorg mines a longer branch (longer than the minimum depth) that leaves it out.
Meanwhile neither side calls the channel open, Alice's payment is refused with the
typed error, the funding transaction waits in the mempool and Alice's wallet counts
her coins spent once (the change, unconfirmed; nothing reserved, nothing back). Then
blocks are mined normally: the funding confirms again, reaches the depth, the channel
opens on both sides and pays. Alice's wallet and both sides' channel balances are
checked to the satoshi (the millisatoshi in the channel).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hub.ctl import Ctl
from proto import admin_pb2, client_pb2
from protocol.routing import forwarding_fee_msat
from regtest import cheat
from regtest.harness import (
    HUB_LOG_FILE,
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    hub_store_url,
    run_chanhub,
    start_hub,
    stop_hub,
)
from regtest.network import client_offline
from regtest.pytest_plugin import ClientFactory, Faults, wait_until
from tests.e2e.node_calls import node_call

MINIMUM_DEPTH = 3
ALICE_WALLET_SAT = 1_000_000
ALICE_CHANNEL_SAT = 400_000
BOB_INBOUND_SAT = 300_000
HUB_WALLET_SAT = BOB_INBOUND_SAT + 100_000  # the funding's fee on top
INVOICE_MSAT = 50_000_000
SAT_PER_BTC = Decimal(100_000_000)
# what a party logs when a block it saw the funding in is disconnected (the watch's
# reversal of its FundingConfirmed report, protocol/driver/enforce.py)
REVERSED_FUNDING = "Reversed(event=FundingConfirmed"
PENDING, OPEN = "CHANNEL_STATE_PENDING_OPEN", "CHANNEL_STATE_OPEN"


@pytest.fixture
def hub_process(tmp_path: Path, node_process: NodeEndpoint, hub_store: str
                ) -> Iterator[HubEndpoint]:
    """The plugin's hub, but a funding is usable at MINIMUM_DEPTH only (the plugin's
    uses 1: no reorg could then take a funding out before its depth)."""
    datadir = tmp_path / "hub-process"
    try:
        yield start_hub(datadir, node_process, store_url=hub_store_url(datadir, hub_store),
                        options={"minimum_depth": str(MINIMUM_DEPTH)})
    finally:
        stop_hub(datadir)


def _admin(hub: HubEndpoint) -> Ctl:
    # the operator's Admin API, called in this process (each `chanhubctl` costs a
    # Python start-up: seconds on a loaded machine, and this test polls)
    return Ctl(hub.target, hub.tls_cert_file, hub.admin_credential_file, as_json=True)


def _hub_channel(admin: Ctl, channel_id: bytes) -> Any:
    listed = admin.call("ListChannels", admin_pb2.ListChannelsRequest()).channels
    [channel] = [c for c in listed if c.channel_id == channel_id]
    return channel


def _hub_state(admin: Ctl, channel_id: bytes) -> str:
    return str(client_pb2.ChannelState.Name(_hub_channel(admin, channel_id).state))


def _hub_height(admin: Ctl) -> int:
    return int(admin.call("GetInfo", admin_pb2.GetInfoRequest()).hub.block_height)


def _client_state(client: ClientEndpoint, channel_id: bytes) -> str:
    # the client's own store, read through an online backup while it serves
    stored = cheat.stored_commitments(cheat.backup_client(client.datadir, "state"),
                                      cheat.client_key_source())
    [state] = [c.state for c in stored if c.channel_id == channel_id]
    return state


def _logged(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def _chanhub(client: ClientEndpoint, hub: HubEndpoint, node: NodeEndpoint, *args: str
             ) -> Any:
    return json.loads(run_chanhub(client.datadir, hub, "--json", *args, node=node))


def _sat(btc: Any) -> int:
    return int(Decimal(str(btc)) * SAT_PER_BTC)


def test_a_funding_reorged_out_before_its_depth_leaves_the_channel_unusable_not_lost(
        regtest_faults: Faults, client_processes: ClientFactory,
        hub_process: HubEndpoint, node_process: NodeEndpoint) -> None:
    faults, hub, node, admin = regtest_faults, hub_process, node_process, _admin(hub_process)
    alice = client_processes("alice")
    bob = client_processes("bob")

    # -- coins: the faucet pays alice's wallet and the hub's (for bob's inbound) ---------
    hub_address = admin.call("NewWalletAddress", admin_pb2.NewWalletAddressRequest()).address
    node_call(node, "sendtoaddress", alice.wallet_address, Decimal(ALICE_WALLET_SAT) / SAT_PER_BTC)
    node_call(node, "sendtoaddress", hub_address, Decimal(HUB_WALLET_SAT) / SAT_PER_BTC)
    faults.mine(1)
    wait_until(lambda: admin.call("GetWalletBalance", admin_pb2.GetWalletBalanceRequest())
               .confirmed_sat == HUB_WALLET_SAT, what="the hub's wallet seeing its coins")

    # -- bob's channel, funded by the hub, open at the depth; bob's invoice --------------
    with client_offline(bob.datadir, hub, node):
        _chanhub(bob, hub, node, "inbound", str(BOB_INBOUND_SAT),
                 "--idempotency-key", os.urandom(8).hex(), "--no-wait")
        bolt11 = str(_chanhub(bob, hub, node, "invoice", str(INVOICE_MSAT))["invoice"])
    wait_until(lambda: node_call(node, "getrawmempool"),
               what="the hub broadcasting bob's funding")
    faults.mine(MINIMUM_DEPTH)

    # -- alice opens; the funding confirms at depth 1, below the minimum depth -----------
    with client_offline(alice.datadir, hub, node):
        before = _chanhub(alice, hub, node, "wallet", "balance")
        channel_id = bytes.fromhex(_chanhub(
            alice, hub, node, "open", str(ALICE_CHANNEL_SAT), "--no-wait")["channel_id"])
    assert before == {"confirmed_sat": ALICE_WALLET_SAT, "unconfirmed_sat": 0,
                      "reserved_sat": 0}
    mempool = set(node_call(node, "getrawmempool"))
    [funding_txid] = [t for t, _ in cheat.funding_candidates(channel_id) if t in mempool]
    funding = node_call(node, "getrawtransaction", funding_txid, True)
    [spent] = [_sat(node_call(node, "getrawtransaction", i["txid"], True)["vout"][i["vout"]]
                    ["value"]) for i in funding["vin"]]  # the faucet's one payment
    assert spent == ALICE_WALLET_SAT
    outputs = sorted(_sat(o["value"]) for o in funding["vout"])
    change_sat = ALICE_WALLET_SAT - ALICE_CHANNEL_SAT - (fee_sat := spent - sum(outputs))
    assert outputs == sorted([ALICE_CHANNEL_SAT, change_sat]) and 0 < fee_sat < 10_000
    [depth_one] = faults.mine(1)
    assert node_call(node, "getrawtransaction", funding_txid, True)["confirmations"] == 1
    tip = node_call(node, "getblockcount")
    wait_until(lambda: _hub_height(admin) == tip, what="the hub at the funding's block")
    assert _hub_state(admin, channel_id) == PENDING
    assert _client_state(alice, channel_id) == "await_channel_ready"

    # -- the reorg: a branch longer than the minimum depth, without the funding ----------
    done = faults.reorg(1, exclude=[funding_txid], extra_blocks=MINIMUM_DEPTH)
    assert done.disconnected == [depth_one] and done.excluded == [funding_txid]
    tip = node_call(node, "getblockcount")
    wait_until(lambda: _hub_height(admin) == tip, what="the hub following the reorg")
    # the hub saw the funding at depth 1 and its block go. (Alice's serve process, just
    # restarted, may not have followed the depth-1 block before the reorg: then she has
    # nothing to reverse, so her side is checked by its state below, not by her log.)
    wait_until(lambda: _logged(hub.datadir / HUB_LOG_FILE, REVERSED_FUNDING),
               what="the hub reversing the funding's confirmation")
    assert funding_txid in node_call(node, "getrawmempool")
    assert node_call(node, "getrawtransaction", funding_txid, True).get(
        "confirmations", 0) == 0
    # alice broadcast it; the hub's watch, which saw it fall out, broadcasts it again
    # (a node that had dropped it from its mempool would take it back)
    wait_until(lambda: _logged(hub.datadir / HUB_LOG_FILE, f"broadcast funding {funding_txid}"),
               what="the hub broadcasting the reorged funding again")

    # -- meanwhile: not usable, not lost -------------------------------------------------
    assert _hub_state(admin, channel_id) == PENDING
    assert _client_state(alice, channel_id) == "await_channel_ready"
    with client_offline(alice.datadir, hub, node):
        meanwhile = _chanhub(alice, hub, node, "wallet", "balance")
        with pytest.raises(HarnessError) as refused:
            run_chanhub(alice.datadir, hub, "pay", bolt11, "--idempotency-key",
                        "during-the-reorg", node=node)
    # the coins are spent once, by the funding waiting in the mempool: only its change is
    # hers, unconfirmed; nothing reserved, nothing counted back as spendable
    assert meanwhile == {"confirmed_sat": 0, "unconfirmed_sat": change_sat, "reserved_sat": 0}
    assert "error: no open channel to the hub" in str(refused.value)  # errors.NoChannel
    assert _hub_state(admin, channel_id) == PENDING

    # -- the branch without it ends: it confirms again, reaches the depth, opens, pays ---
    faults.mine(MINIMUM_DEPTH)
    assert node_call(node, "getrawtransaction", funding_txid, True)["confirmations"] == \
        MINIMUM_DEPTH
    wait_until(lambda: _hub_state(admin, channel_id) == OPEN, what="the hub opening it")
    wait_until(lambda: _client_state(alice, channel_id) == "normal", what="alice opening it")
    with client_offline(alice.datadir, hub, node):
        paid = _chanhub(alice, hub, node, "pay", bolt11, "--idempotency-key", "after")
        wallet = _chanhub(alice, hub, node, "wallet", "balance")
        channel = _chanhub(alice, hub, node, "balance")
    policy = admin.call("GetInfo", admin_pb2.GetInfoRequest()).hub.fee_policy
    hub_fee_msat = forwarding_fee_msat(INVOICE_MSAT, base_msat=policy.base_fee_msat,
                                       fee_ppm=policy.fee_rate_ppm)
    assert (paid["state"], paid["amount_msat"], paid["fee_msat"]) == \
        ("succeeded", INVOICE_MSAT, hub_fee_msat)
    # alice's wallet: what the faucet sent less the channel and the funding's fee
    assert wallet == {"confirmed_sat": ALICE_WALLET_SAT - ALICE_CHANNEL_SAT - fee_sat,
                      "unconfirmed_sat": 0, "reserved_sat": 0}
    alice_msat = ALICE_CHANNEL_SAT * 1000 - INVOICE_MSAT - hub_fee_msat
    assert channel == {"channel_msat": alice_msat, "open_channels": 1}
    on_hub = _hub_channel(admin, channel_id)
    assert (on_hub.capacity_sat, on_hub.local_balance_msat, on_hub.remote_balance_msat) == \
        (ALICE_CHANNEL_SAT, alice_msat, INVOICE_MSAT + hub_fee_msat)
