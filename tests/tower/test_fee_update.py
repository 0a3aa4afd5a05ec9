"""An ``update_fee`` between the revoked commitment and the one that replaced it: the
kit's second-stage penalties are built at the revoked commitment's own feerate (the
``Watch("revoked_commitment")`` record carries it), so they spend the cheater's real
HTLC-timeout and HTLC-success transactions, as the regtest node's
``testmempoolaccept`` says of the whole package."""

from __future__ import annotations

import copy
import dataclasses

from channel.commitment import Side, finalize_holder_htlc_tx
from channel.tx import Tx
from client.tower import appointment_for_watch
from proto import tower_pb2
from protocol import Broadcast, Channel, Watch
from protocol.driver.appointment import open_sealed
from regtest.twoparty import TwoPartyChannel
from tests.tower.test_breach import (  # noqa: F401  (world is a fixture)
    A_TO_B_HTLC_MSAT,
    B_TO_A_HTLC_MSAT,
    FUNDING_SAT,
    PENALTY_FEERATE,
    TO_SELF_DELAY,
    World,
    add_htlc,
    revoked_watches,
    settle_commitments,
    world,
)

OLD_FEERATE = 2_500  # TwoPartyChannel's opening feerate
NEW_FEERATE = 7_500


async def fee_update_after_backup(pair: TwoPartyChannel) -> tuple[Channel, Tx, bytes]:
    """Two HTLCs in flight at OLD_FEERATE, the cheater's backup there; then the funder's
    update_fee to NEW_FEERATE revokes the backed-up commitment."""
    await pair.open(FUNDING_SAT)
    pair.pay(300_000_000, "first payment")
    add_htlc(pair, pair.a, A_TO_B_HTLC_MSAT, "a to b")
    b_preimage = add_htlc(pair, pair.b, B_TO_A_HTLC_MSAT, "b to a")
    settle_commitments(pair)
    backup = copy.deepcopy(pair.a.snapshots[-1])
    cheater = Channel.restore(backup)
    assert cheater.build_local(cheater.d.local_ctn).feerate_per_kw == OLD_FEERATE
    pair.run(pair.a, pair.a.channel.update_fee(NEW_FEERATE))
    settle_commitments(pair)
    assert pair.b.channel.latest_view(Side.REMOTE).feerate_per_kw == NEW_FEERATE
    revoked = next(a for a in Channel.restore(backup).fail("restored a backup")
                   if isinstance(a, Broadcast))
    return cheater, Tx.parse(revoked.raw_tx), b_preimage


def kit_of(pair: TwoPartyChannel, watch: Watch) -> tower_pb2.JusticeKit:
    appointment = appointment_for_watch(pair.b.channel, watch,
                                        destination_script_pubkey=pair.b.wallet_script,
                                        penalty_feerate_per_kw=PENALTY_FEERATE)
    opened = open_sealed(watch.txid, appointment.nonce, appointment.encrypted_blob)
    assert opened is not None
    return tower_pb2.JusticeKit.FromString(opened)


async def test_second_stage_penalties_spend_the_real_htlc_txs_after_an_update_fee(
        world: World) -> None:  # noqa: F811  (the fixture)
    pair = TwoPartyChannel(world.rpc, label="tower update_fee", to_self_delay=TO_SELF_DELAY,
                           feerate_per_kw=OLD_FEERATE)
    cheater, revoked_tx, b_preimage = await fee_update_after_backup(pair)
    watch = next(w for w in revoked_watches(pair.b) if w.txid == revoked_tx.txid())
    assert watch.feerate_per_kw == OLD_FEERATE  # the record says the revoked one's rate
    kit = kit_of(pair, watch)
    penalties = {bytes(s.htlc_txid): Tx.parse(bytes(s.penalty_tx))
                 for s in kit.second_stage_penalties}

    # The cheater's real second-stage transactions, signed from its backup.
    commitment = cheater.build_local(cheater.d.local_ctn)
    assert commitment.txid == revoked_tx.txid()
    package = [revoked_tx]
    expiry = 0
    for position, (index, htlc) in enumerate(commitment.htlc_outputs):
        preimage = b_preimage if htlc.offered_by is Side.REMOTE else None  # success/timeout
        htlc_tx = finalize_holder_htlc_tx(cheater.static, cheater.secrets, commitment, index,
                                          cheater.d.local_htlc_signatures[position], preimage)
        assert htlc_tx.txid() in penalties, f"no penalty for the real {htlc.offered_by} tx"
        package += [htlc_tx, penalties[htlc_tx.txid()]]
        expiry = max(expiry, htlc.cltv_expiry)
    assert len(package) == 5

    # Mine to the HTLC-timeout's locktime; the node takes the whole package.
    height = int(world.node.call("getblockcount"))
    if expiry > height:
        await pair.mine(expiry - height)
    results = world.node.call("testmempoolaccept", [t.serialize().hex() for t in package])
    assert [r["allowed"] for r in results] == [True] * 5, results


async def test_an_old_record_without_a_feerate_loads_and_takes_the_books(
        world: World) -> None:  # noqa: F811  (the fixture)
    """A Watch record stored before the field existed loads (feerate None), and its kit
    takes the feerate from the channel's book, as every kit did before: with no
    update_fee between, the same kit as from the full record."""
    pair = TwoPartyChannel(world.rpc, label="tower old record", to_self_delay=TO_SELF_DELAY,
                           feerate_per_kw=OLD_FEERATE)
    await pair.open(FUNDING_SAT)
    pair.pay(300_000_000, "first payment")
    add_htlc(pair, pair.a, A_TO_B_HTLC_MSAT, "a to b")
    add_htlc(pair, pair.b, B_TO_A_HTLC_MSAT, "b to a")
    settle_commitments(pair)
    pair.pay(10_000_000, "revokes the one with the HTLCs")
    watch = next(w for w in revoked_watches(pair.b) if len(w.htlc_outputs) == 2)
    record = watch.to_record()
    assert record["feerate_per_kw"] == OLD_FEERATE
    assert Watch.from_record(record) == watch
    del record["feerate_per_kw"]
    old = Watch.from_record(record)
    assert old == dataclasses.replace(watch, feerate_per_kw=None)
    kit = kit_of(pair, watch)
    assert len(kit.second_stage_penalties) == 2
    assert kit_of(pair, old) == kit
