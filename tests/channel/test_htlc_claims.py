"""HTLC claims and penalties name their outputs by index (issue 11, finding 1 and 3).

A peer that offers two HTLCs with one payment hash (a small and a large one) gives
them one script; two we offer with one hash and one CLTV share one too. Claims that
found their output by script all took the first match (the smallest, by BIP69), so
the large HTLC was never claimed and the peer took it back by timeout. Here every
claim and penalty runs through the regtest node's consensus checks, and every check
the builders make (direction, hash, index, script, amount, one output claimed twice,
nothing revocable) is exercised on both sides.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from channel.commitment import CommitmentHtlc, Side, finalize_holder_htlc_tx
from channel.errors import TransactionError
from channel.keys import ChannelSecrets
from channel.penalty import (
    build_penalty_tx,
    revoked_commitment_outputs,
    revoked_second_stage_outputs,
)
from channel.spend import SpendableOutput, build_spend_tx
from channel.sweep import (
    claim_htlc_after_timeout,
    claim_htlc_with_preimage,
    claim_remote_htlcs,
    sweep_second_stage,
    sweep_to_local,
    sweep_to_remote,
)
from channel.tx import Tx
from tests.channel.test_consensus import (
    DEST,
    FEERATE,
    PREIMAGE_OFFERED_BY_LOCAL,
    PREIMAGE_OFFERED_BY_REMOTE,
    Channel,
    assert_accepted,
    broadcast,
    height,
    mine_to,
    open_channel,
)

HASH_REMOTE = hashlib.sha256(PREIMAGE_OFFERED_BY_REMOTE).digest()
HASH_LOCAL = hashlib.sha256(PREIMAGE_OFFERED_BY_LOCAL).digest()


@pytest.fixture
def node(regtest_node: Any) -> Any:
    return regtest_node


@pytest.fixture
def twin_channel(node: Any) -> Channel:
    """A channel with two HTLCs of one hash each way: the peer's (small, large) share
    the offered script, ours (small, large, one CLTV) the received script."""
    channel = open_channel(node)
    tip = height(node)
    channel.htlcs = [
        CommitmentHtlc(Side.REMOTE, 0, 20_000_000, HASH_REMOTE, tip + 30),
        CommitmentHtlc(Side.REMOTE, 1, 70_000_000, HASH_REMOTE, tip + 31),
        CommitmentHtlc(Side.LOCAL, 0, 30_000_000, HASH_LOCAL, tip + 20),
        CommitmentHtlc(Side.LOCAL, 1, 80_000_000, HASH_LOCAL, tip + 20),
    ]
    return channel


def peer_commitment(channel: Channel, n: int) -> tuple[Tx, bytes, dict[tuple[Side, int], int]]:
    """The peer's commitment n broadcast and confirmed; its per-commitment point; the
    output index of each HTLC by (offered_by, htlc_id)."""
    theirs, tx, _ = channel.signed_remote_commitment(n)
    broadcast(channel.node, tx)
    index_of = {(h.offered_by, h.htlc_id): i for i, h in channel.remote_htlc_outputs(n)}
    return tx, theirs.per_commitment_point, index_of


def htlc(channel: Channel, offered_by: Side, htlc_id: int) -> CommitmentHtlc:
    return next(h for h in channel.htlcs if h.offered_by is offered_by and h.htlc_id == htlc_id)


def spent_index(claim: Tx) -> int:
    (txin,) = claim.inputs
    return txin.outpoint.index


def test_each_preimage_claim_spends_its_own_output(twin_channel: Channel) -> None:
    channel = twin_channel
    tx, point, index_of = peer_commitment(channel, 4)
    small, large = htlc(channel, Side.REMOTE, 0), htlc(channel, Side.REMOTE, 1)
    assert index_of[(Side.REMOTE, 0)] == 0  # the smallest output: what a script search found
    claims = [
        claim_htlc_with_preimage(
            channel.static, channel.local, tx, point, (index_of[(h.offered_by, h.htlc_id)], h),
            PREIMAGE_OFFERED_BY_REMOTE, DEST, FEERATE,
        )
        for h in (small, large)
    ]
    assert [spent_index(c) for c in claims] == [index_of[(Side.REMOTE, 0)],
                                                index_of[(Side.REMOTE, 1)]]
    for claim in claims:  # both confirm: no double spend between them
        assert claim.locktime == 0  # no timeout claim in it: no locktime
        assert_accepted(channel.node, claim)
        broadcast(channel.node, claim)


def test_each_timeout_claim_spends_its_own_output(twin_channel: Channel) -> None:
    channel = twin_channel
    tx, point, index_of = peer_commitment(channel, 4)
    ours = [htlc(channel, Side.LOCAL, 0), htlc(channel, Side.LOCAL, 1)]
    claims = [
        claim_htlc_after_timeout(
            channel.static, channel.local, tx, point, (index_of[(Side.LOCAL, h.htlc_id)], h),
            DEST, FEERATE,
        )
        for h in ours
    ]
    assert [spent_index(c) for c in claims] == [index_of[(Side.LOCAL, 0)],
                                                index_of[(Side.LOCAL, 1)]]
    mine_to(channel.node, ours[0].cltv_expiry)
    for claim in claims:
        assert claim.locktime == ours[0].cltv_expiry
        broadcast(channel.node, claim)


def test_one_transaction_claims_all_four_and_never_one_output_twice(
    twin_channel: Channel,
) -> None:
    channel = twin_channel
    tx, point, index_of = peer_commitment(channel, 4)
    claims = [
        (index_of[(h.offered_by, h.htlc_id)], h,
         PREIMAGE_OFFERED_BY_REMOTE if h.offered_by is Side.REMOTE else None)
        for h in channel.htlcs
    ]
    batch = claim_remote_htlcs(channel.static, channel.local, tx, point, claims, DEST, FEERATE)
    assert sorted(i.outpoint.index for i in batch.inputs) == sorted(index_of.values())
    assert batch.locktime == max(h.cltv_expiry for h in channel.htlcs if h.offered_by is Side.LOCAL)
    assert sum(o.amount_sat for o in batch.outputs) < sum(h.amount_msat // 1000
                                                          for h in channel.htlcs)
    mine_to(channel.node, batch.locktime)
    broadcast(channel.node, batch)

    # The large HTLC named at the small one's index too: refused, not a double claim.
    _, large, preimage = claims[1]
    twice = [claims[0], (claims[0][0], large, preimage)]
    with pytest.raises(TransactionError, match="twice"):
        claim_remote_htlcs(channel.static, channel.local, tx, point, twice, DEST, FEERATE)
    with pytest.raises(TransactionError, match="no HTLC"):
        claim_remote_htlcs(channel.static, channel.local, tx, point, [], DEST, FEERATE)


def test_claims_check_index_script_amount_direction_and_hash(twin_channel: Channel) -> None:
    channel = twin_channel
    tx, point, index_of = peer_commitment(channel, 4)
    small, large = htlc(channel, Side.REMOTE, 0), htlc(channel, Side.REMOTE, 1)
    ours = htlc(channel, Side.LOCAL, 0)

    def by_preimage(index: int, h: CommitmentHtlc, preimage: bytes = PREIMAGE_OFFERED_BY_REMOTE
                    ) -> Tx:
        return claim_htlc_with_preimage(
            channel.static, channel.local, tx, point, (index, h), preimage, DEST, FEERATE
        )

    def by_timeout(index: int, h: CommitmentHtlc) -> Tx:
        return claim_htlc_after_timeout(
            channel.static, channel.local, tx, point, (index, h), DEST, FEERATE
        )

    # Swapped indexes: same script, other amount.
    with pytest.raises(TransactionError, match="pays"):
        by_preimage(index_of[(Side.REMOTE, 1)], small)
    with pytest.raises(TransactionError, match="pays"):
        by_preimage(index_of[(Side.REMOTE, 0)], large)
    # An index whose output has another script (one of ours, to_local, to_remote).
    for other in set(range(len(tx.outputs))) - {index_of[(Side.REMOTE, 0)]}:
        if other != index_of[(Side.REMOTE, 1)]:
            with pytest.raises(TransactionError, match="script"):
                by_preimage(other, small)
    with pytest.raises(TransactionError, match="no output"):
        by_preimage(len(tx.outputs), small)
    with pytest.raises(TransactionError, match="no output"):
        by_preimage(-1, small)
    # Direction: a preimage claim for our own HTLC, a timeout claim for the peer's.
    with pytest.raises(TransactionError, match="peer offered"):
        by_preimage(index_of[(Side.LOCAL, 0)], ours, PREIMAGE_OFFERED_BY_LOCAL)
    with pytest.raises(TransactionError, match="we offered"):
        by_timeout(index_of[(Side.REMOTE, 0)], small)
    # Hash: a wrong preimage is refused before anything is signed.
    with pytest.raises(TransactionError, match="preimage"):
        by_preimage(index_of[(Side.REMOTE, 0)], small, PREIMAGE_OFFERED_BY_LOCAL)
    # An HTLC with another hash at the right index: the script differs.
    forged = CommitmentHtlc(Side.REMOTE, 0, small.amount_msat, HASH_LOCAL, small.cltv_expiry)
    with pytest.raises(TransactionError, match="script"):
        by_preimage(index_of[(Side.REMOTE, 0)], forged, PREIMAGE_OFFERED_BY_LOCAL)
    # The amount rounds down to the satoshi (BOLT #3): 999 msat more is still the same.
    rounded = CommitmentHtlc(Side.REMOTE, 0, small.amount_msat + 999, HASH_REMOTE,
                             small.cltv_expiry)
    assert spent_index(by_preimage(index_of[(Side.REMOTE, 0)], rounded)) == 0


def test_build_spend_tx_refuses_one_outpoint_twice(twin_channel: Channel) -> None:
    channel = twin_channel
    tx, point, index_of = peer_commitment(channel, 4)
    claim = claim_htlc_with_preimage(
        channel.static, channel.local, tx, point,
        (index_of[(Side.REMOTE, 1)], htlc(channel, Side.REMOTE, 1)),
        PREIMAGE_OFFERED_BY_REMOTE, DEST, FEERATE,
    )
    output = SpendableOutput(claim.inputs[0].outpoint, 70_000, b"\x51", b"\x01" * 32, (b"",))
    assert len(build_spend_tx([output], DEST, FEERATE).inputs) == 1
    with pytest.raises(TransactionError, match="twice"):
        build_spend_tx([output, output], DEST, FEERATE)


# -- penalties by index ---------------------------------------------------------------


def test_penalty_takes_twin_htlcs_by_index(twin_channel: Channel) -> None:
    channel = twin_channel
    revoked, tx, _ = channel.signed_remote_commitment(1)
    secret = channel.remote.per_commitment_secret(1)
    broadcast(channel.node, tx)
    htlc_outputs = channel.remote_htlc_outputs(1)
    penalty = build_penalty_tx(channel.static, channel.local, tx, secret, htlc_outputs, DEST,
                               FEERATE)
    assert {i.outpoint.index for i in penalty.inputs} == (
        {revoked.to_local_index} | {i for i, _ in htlc_outputs}
    )
    assert len(penalty.inputs) == 5
    broadcast(channel.node, penalty)


def test_penalty_checks_each_named_output(twin_channel: Channel) -> None:
    channel = twin_channel
    _, tx, _ = channel.signed_remote_commitment(1)
    secret = channel.remote.per_commitment_secret(1)
    htlc_outputs = channel.remote_htlc_outputs(1)
    (i0, h0), (i1, _) = htlc_outputs[:2]

    def outputs(named: list[tuple[int, CommitmentHtlc]]) -> list[SpendableOutput]:
        return revoked_commitment_outputs(channel.static, channel.local, tx, secret, named)

    assert [o.outpoint.index for o in outputs([(i0, h0)]) if o.description != "to_local"] == [i0]
    with pytest.raises(TransactionError, match="twice"):
        outputs([(i0, h0), (i0, h0)])
    with pytest.raises(TransactionError):
        outputs([(i1, h0)])  # another HTLC's output: script or amount differs
    with pytest.raises(TransactionError, match="no output"):
        outputs([(len(tx.outputs), h0)])
    # Without HTLCs the to_local alone is revocable.
    assert [o.description for o in outputs([])] == ["to_local"]


def test_penalty_with_only_htlc_outputs_when_to_local_is_dust(node: Any) -> None:
    """The cheater's to_local is dust (it holds nearly nothing): the HTLC outputs
    are all there is to take, and without them nothing is revocable."""
    channel = open_channel(node)
    tip = height(node)
    channel.htlcs = [
        CommitmentHtlc(Side.LOCAL, 0, 40_000_000, HASH_LOCAL, tip + 20),
        CommitmentHtlc(Side.LOCAL, 1, 40_000_000, HASH_LOCAL, tip + 20),
    ]
    # Everything but the HTLCs on our side: the peer's to_local is zero.
    in_htlcs = sum(h.amount_msat for h in channel.htlcs)
    channel.balances = lambda commitment_number: (  # type: ignore[method-assign]
        1_000_000_000 - in_htlcs, 0
    )
    revoked, tx, _ = channel.signed_remote_commitment(1)
    assert revoked.to_local_index is None
    secret = channel.remote.per_commitment_secret(1)
    broadcast(node, tx)
    with pytest.raises(TransactionError, match="no output of this transaction is revocable"):
        build_penalty_tx(channel.static, channel.local, tx, secret, (), DEST, FEERATE)
    htlc_outputs = channel.remote_htlc_outputs(1)
    penalty = build_penalty_tx(channel.static, channel.local, tx, secret, htlc_outputs, DEST,
                               FEERATE)
    assert sorted(i.outpoint.index for i in penalty.inputs) == sorted(i for i, _ in htlc_outputs)
    broadcast(node, penalty)


def test_penalty_refuses_secrets_that_are_not_this_channels(twin_channel: Channel) -> None:
    """The revocation key self-check: with another channel's revocation basepoint
    secret, the derived key is not the commitment's revocation pubkey."""
    channel = twin_channel
    _, tx, _ = channel.signed_remote_commitment(1)
    secret = channel.remote.per_commitment_secret(1)
    stranger = ChannelSecrets.from_seed(hashlib.sha256(b"another channel").digest())
    with pytest.raises(TransactionError, match="revocation key"):
        revoked_commitment_outputs(channel.static, stranger, tx, secret,
                                   channel.remote_htlc_outputs(1))


# -- the checks of the other builders ----------------------------------------------------


def test_second_stage_penalty_names_what_is_wrong(twin_channel: Channel) -> None:
    """'nothing revocable' of the second-stage builder: the HTLC tx of a commitment
    revoked with another secret has no output this secret revokes."""
    channel = twin_channel
    revoked, tx, our_htlc_sigs = channel.signed_remote_commitment(1)
    broadcast(channel.node, tx)
    ((pos, (index, _)), *_) = (
        (i, x) for i, x in enumerate(revoked.htlc_outputs) if x[1].offered_by is Side.REMOTE
    )
    success = finalize_holder_htlc_tx(channel.remote_static, channel.remote, revoked, index,
                                      our_htlc_sigs[pos], PREIMAGE_OFFERED_BY_LOCAL)
    right = revoked_second_stage_outputs(channel.static, channel.local, success,
                                         channel.remote.per_commitment_secret(1))
    assert [o.outpoint.index for o in right] == [0]
    with pytest.raises(TransactionError, match="not a second-stage"):
        revoked_second_stage_outputs(channel.static, channel.local, success,
                                     channel.remote.per_commitment_secret(2))
    with pytest.raises(TransactionError, match="revocation key"):
        revoked_second_stage_outputs(
            channel.static, ChannelSecrets.from_seed(b"\x08" * 32), success,
            channel.remote.per_commitment_secret(1),
        )


def test_holder_htlc_tx_needs_a_preimage_exactly_for_success(twin_channel: Channel) -> None:
    """The preimage presence check: HTLC-success needs one, HTLC-timeout must not
    have one; a non-HTLC output index and the peer's commitment are refused."""
    channel = twin_channel
    c, _, remote_htlc_sigs = channel.signed_local_commitment(3)
    by_side = {h.offered_by: (pos, index) for pos, (index, h) in enumerate(c.htlc_outputs)}
    pos, index = by_side[Side.LOCAL]  # we offered it: HTLC-timeout
    with pytest.raises(TransactionError, match="must not have one"):
        finalize_holder_htlc_tx(channel.static, channel.local, c, index, remote_htlc_sigs[pos],
                                PREIMAGE_OFFERED_BY_LOCAL)
    timeout = finalize_holder_htlc_tx(channel.static, channel.local, c, index,
                                      remote_htlc_sigs[pos])
    assert timeout.locktime > 0
    pos, index = by_side[Side.REMOTE]  # the peer offered it: HTLC-success
    with pytest.raises(TransactionError, match="needs the preimage"):
        finalize_holder_htlc_tx(channel.static, channel.local, c, index, remote_htlc_sigs[pos])
    with pytest.raises(TransactionError, match="does not match"):
        finalize_holder_htlc_tx(channel.static, channel.local, c, index, remote_htlc_sigs[pos],
                                PREIMAGE_OFFERED_BY_LOCAL)
    success = finalize_holder_htlc_tx(channel.static, channel.local, c, index,
                                      remote_htlc_sigs[pos], PREIMAGE_OFFERED_BY_REMOTE)
    assert success.locktime == 0
    assert c.to_local_index is not None
    with pytest.raises(TransactionError, match="not an HTLC output"):
        finalize_holder_htlc_tx(channel.static, channel.local, c, c.to_local_index,
                                remote_htlc_sigs[0])
    theirs, _, _ = channel.signed_remote_commitment(3)
    with pytest.raises(ValueError, match="LOCAL"):
        finalize_holder_htlc_tx(channel.static, channel.local,
                                dataclasses.replace(theirs, owner=Side.REMOTE), index,
                                remote_htlc_sigs[0])


def test_sweeps_say_which_output_is_missing(twin_channel: Channel) -> None:
    channel = twin_channel
    tx, _, _ = peer_commitment(channel, 4)
    _, own, _ = channel.signed_local_commitment(4)
    # Our to_remote is on the peer's commitment, not on ours; our to_local the reverse.
    with pytest.raises(TransactionError, match="no to_remote output"):
        sweep_to_remote(channel.static, channel.local, own, DEST, FEERATE)
    with pytest.raises(TransactionError, match="no to_local output"):
        sweep_to_local(channel.static, channel.local, tx, 4, DEST, FEERATE)
    with pytest.raises(TransactionError, match="no second-stage output"):
        sweep_second_stage(channel.static, channel.local, tx, 4, DEST, FEERATE)
    assert sweep_to_remote(channel.static, channel.local, tx, DEST, FEERATE).inputs
