"""The harness cheats and fails on real processes, through the pytest plugin's
`regtest_faults` helper: a node process, the real chanhubd, a `chanhub serve` client
behind its link proxy, with a channel funded from the client's wallet.

One test walks every fault on one channel (opening a channel costs seconds; each
fault costs less): backups and a revoked state, the link cut and refused, the client
frozen, killed and restarted (while down, she pays herself through an inbound channel
so that the hub holds a balance in hers), the hub publishing a revoked commitment of
that balance, punished by her own watch and checked to the satoshi (the breach's
BOLT #3 fee, the penalty's outputs and fee, her wallet), and the old store restored
in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from channel.chain import BitcoinRpc, btc_to_sat
from channel.htlc import commitment_weight, weight_fee_sat
from channel.watch.claims import urgency_multiplier
from protocol.driver.crypto import WrongKey
from regtest import cheat
from regtest.harness import (
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    client_state,
    run_chanhub,
    running_client,
    stop_client,
)
from regtest.proxy import running_proxy
from regtest.pytest_plugin import ClientFactory, Faults, wait_until
from tests.e2e.node_calls import node_call, spenders_in_mempool
from tests.fees import priced_fee_of_json

CHANNEL_SAT = 400_000
INBOUND_SAT = 100_000  # the hub's channel toward Alice, which her self-payment ends in
EARNED_MSAT = 60_000_000  # 60,000 sat: the hub's balance in Alice's channel


def _sat(value_btc: object) -> int:
    return int(btc_to_sat(str(value_btc)))


def _wallet_sat(client: ClientEndpoint, hub: HubEndpoint, node: NodeEndpoint) -> int:
    """The client's confirmed on-chain balance (its serve process stopped meanwhile)."""
    shown = json.loads(run_chanhub(client.datadir, hub, "--json", "wallet", "balance",
                                   node=node))
    return int(shown["confirmed_sat"])


def _chanhub(client: ClientEndpoint, hub: HubEndpoint, *args: str) -> str:
    return run_chanhub(client.datadir, hub, "--json", *args)


def _invoice(client: ClientEndpoint, hub: HubEndpoint, amount_msat: int) -> str:
    return str(json.loads(_chanhub(client, hub, "invoice", str(amount_msat)))["invoice"])


def _csv_delay(to_local_script: bytes) -> int:
    """The relative delay of a BOLT #3 to_local script: OP_IF <revocationpubkey>
    OP_ELSE <to_self_delay> OP_CHECKSEQUENCEVERIFY ..."""
    assert to_local_script[0] == 0x63 and to_local_script[35] == 0x67
    push = to_local_script[36]
    if 0x51 <= push <= 0x60:  # OP_1 .. OP_16
        return push - 0x50
    return int.from_bytes(to_local_script[37:37 + push], "little")


def _priced_at(tx: dict[str, Any], fee_sat: int, feerate_per_kw: int) -> bool:
    """Whether `fee_sat` is `feerate_per_kw` on the transaction's weight with its
    signatures at their longest, 73 bytes, rounded up (tests/fees.py)."""
    return fee_sat == priced_fee_of_json(tx, feerate_per_kw)


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
    channel_id = faults.open_channel(alice, CHANNEL_SAT)

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
    # While she is down (one-shot commands need her store; each stop and start of her
    # serve process costs seconds), the hub earns a balance in her channel: its
    # commitment zero holds nothing of the hub's (Alice funded the channel, no push), so
    # a breach of it would leave nothing to punish. Alice pays herself through an
    # inbound channel the hub funds: her channel pays the hub.
    faults.inbound(alice, INBOUND_SAT)
    earned = json.loads(_chanhub(alice, hub_process, "pay", _invoice(alice, hub_process,
                                                                     EARNED_MSAT),
                                 "--idempotency-key", "the-hub-earns"))
    assert earned["state"] == "succeeded"
    hub_msat = EARNED_MSAT + int(earned["fee_msat"])
    [hub_paid] = [c for c in faults.backup("hub", "paid") if c.channel_id == channel_id]
    assert hub_paid.htlc_outputs == 0
    # revoked by two more commitments: a payment more than the inbound channel can
    # carry, added and failed back
    with pytest.raises(HarnessError, match="not enough liquidity"):
        _chanhub(alice, hub_process, "pay",
                 _invoice(alice, hub_process, (INBOUND_SAT + 1_000) * 1000),
                 "--idempotency-key", "too-much")
    [channel] = [c for c in json.loads(_chanhub(alice, hub_process, "channels"))
                 if c["channel_id"] == channel_id.hex()]
    assert channel["remote_msat"] == hub_msat  # the failed payment moved nothing
    feerate = int(channel["feerate_per_kw"])  # the opening one: nobody sent update_fee

    again = faults.restart(alice)
    assert again.pid != alice.pid and again.hub_target == alice.hub_target  # still proxied

    # -- the hub cheats: its revoked commitment on chain --------------------------------
    height = node_call(node_process, "getblockcount")
    [sent] = faults.publish_old_commitment("hub", "paid", channel_id=channel_id,
                                           mine_blocks=1)
    assert (sent.channel_id, sent.txid) == (channel_id, hub_paid.txid)
    assert sent.commitment_number == hub_paid.commitment_number > hub_now.commitment_number
    confirmed = node_call(node_process, "getrawtransaction", sent.txid, True)
    assert confirmed["confirmations"] == 1
    assert node_call(node_process, "getblockcount") == height + 1
    # it spends the channel's funding output (BOLT #2: the channel id is the funding
    # txid with the output index xored into its last two bytes)
    [spent] = confirmed["vin"]
    assert (spent["txid"], spent["vout"]) in cheat.funding_candidates(channel_id)
    breach_txid = str(confirmed["txid"])

    # the breach: the hub's to_local (what it earned) and Alice's to_remote (the rest,
    # less the commitment's fee: she funded the channel, BOLT #3), each rounded down to
    # the satoshi
    values = [_sat(o["value"]) for o in confirmed["vout"]]
    hub_local_sat = hub_msat // 1000
    alice_remote_sat = ((CHANNEL_SAT * 1000 - hub_msat) // 1000
                        - weight_fee_sat(commitment_weight(0), feerate))
    assert sorted(values) == sorted([hub_local_sat, alice_remote_sat])
    funding = node_call(node_process, "getrawtransaction", spent["txid"], True)
    assert _sat(funding["vout"][spent["vout"]]["value"]) == CHANNEL_SAT
    # Alice's wallet before: the funding's change, her only coin (the faucet sent her
    # one coin, the channel plus 100,000 sat, which the funding spent)
    [coin] = funding["vin"]
    faucet_tx = node_call(node_process, "getrawtransaction", coin["txid"], True)
    assert _sat(faucet_tx["vout"][coin["vout"]]["value"]) == CHANNEL_SAT + 100_000
    [wallet_before_sat] = [_sat(o["value"]) for i, o in enumerate(funding["vout"])
                           if i != spent["vout"]]
    commitment_fee_sat = CHANNEL_SAT - sum(values)
    # BOLT #3's fee at the commitment's feerate, plus the msat the two outputs lost to
    # rounding down (together a whole satoshi or none)
    rounding_sat = (hub_msat % 1000 + (CHANNEL_SAT * 1000 - hub_msat) % 1000) // 1000
    assert commitment_fee_sat == weight_fee_sat(commitment_weight(0), feerate) + rounding_sat
    to_local_index = values.index(hub_local_sat)
    to_remote_index = 1 - to_local_index

    # alice's own watch (chanhub serve follows the chain) punishes the hub, and sweeps
    # her to_remote (a key of this commitment, not of her wallet) into her wallet
    def penalty_and_sweep() -> list[str]:
        found = spenders_in_mempool(node_process, breach_txid)
        return found if len(found) >= 2 else []

    spenders = wait_until(penalty_and_sweep,
                          what="alice's penalty of the hub's breach and her sweep")
    faults.mine(1)
    by_input: dict[tuple[tuple[str, int], ...], dict[str, Any]] = {}
    for txid in spenders:
        spender = node_call(node_process, "getrawtransaction", txid, True)
        assert spender["confirmations"] == 1
        by_input[tuple(sorted((i["txid"], i["vout"]) for i in spender["vin"]))] = spender
    # the penalty takes every output that was the hub's (its to_local: no HTLC was in
    # flight) and nothing else; the sweep takes her to_remote
    penalty = by_input.pop(((breach_txid, to_local_index),))
    sweep = by_input.pop(((breach_txid, to_remote_index),))
    assert not by_input  # nothing else spends the breach
    [penalty_out], [sweep_out] = penalty["vout"], sweep["vout"]
    penalty_fee_sat = hub_local_sat - _sat(penalty_out["value"])
    sweep_fee_sat = alice_remote_sat - _sat(sweep_out["value"])
    # priced on the weight with the longest signatures, rounded up (channel/spend.py):
    # the penalty at the estimate (the fallback, the channel's opening feerate too)
    # times the urgency of its deadline, the hub's to_self_delay after the breach
    # (channel/watch/claims.py); the sweep, which has no deadline, at the estimate
    to_self_delay = _csv_delay(bytes.fromhex(penalty["vin"][0]["txinwitness"][-1]))
    assert _priced_at(penalty, penalty_fee_sat, feerate * urgency_multiplier(to_self_delay))
    assert _priced_at(sweep, sweep_fee_sat, feerate)
    # the channel ends all Alice's, less the commitment's fee and the penalty's
    alice_sat = alice_remote_sat + _sat(penalty_out["value"])
    assert alice_sat + commitment_fee_sat + penalty_fee_sat == CHANNEL_SAT
    # her wallet grows by the penalty's output and her to_remote less the sweep's fee
    stop_client(alice.datadir)  # her store, for the command (and the next section)
    assert _wallet_sat(alice, hub_process, node_process) == (
        wallet_before_sat + _sat(penalty_out["value"]) + alice_remote_sat - sweep_fee_sat)

    # -- the client's old store put back in place --------------------------------------
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
