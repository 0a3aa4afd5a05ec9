"""The watch's depth events (issue 10): ``ClaimBuried`` when a claim of ours is
``ANTI_REORG_DELAY`` deep (a reorg before that takes it back), ``ChannelResolved`` once
the close holds nothing more for us (every claim confirmed that deep, no HTLC output
open). Pure watch on the embedded node, as tests/channel/test_watch.py; also the
revoked record's feerate through the watch's JSON and the enforcer's record."""

from __future__ import annotations

from typing import Any

from channel.commitment import Side
from channel.shachain import RevocationStore
from channel.watch import (
    ANTI_REORG_DELAY,
    ChannelResolved,
    ChannelWatch,
    ClaimBuried,
    ClaimConfirmed,
    Reversed,
    RevokedCommitment,
    codec,
)
from protocol.actions import Watch
from protocol.driver.enforce import revoked_record
from tests.channel.test_consensus import PREIMAGE_OFFERED_BY_REMOTE, height
from tests.channel.test_watch import (
    WatchDriver,
    block_hash,
    events,
    htlc_of,
    node,  # noqa: F401  (the fixture)
    open_channel,
    publish,
)


def test_a_remote_close_is_resolved_once_its_last_claim_is_buried(node: Any) -> None:  # noqa: F811
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_local(4)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    d.mine()  # to_remote claimed; the peer's HTLC: no preimage, no claim (open)
    ours = htlc_of(channel, Side.LOCAL)
    d.mine(ours.cltv_expiry - height(node))  # our timeout final: broadcast
    d.mine()
    timeout_height = height(node)
    assert [e.label for e in events(d.outputs, ClaimConfirmed)
            if e.height == timeout_height] == ["htlc_timeout 0"]
    d.mine(ANTI_REORG_DELAY - 2)  # N - 1 deep
    assert [e.label for e in events(d.outputs, ClaimBuried)] == ["to_remote"]
    d.mine()
    [_, buried] = events(d.outputs, ClaimBuried)
    assert (buried.label, buried.height, buried.buried_height) == (
        "htlc_timeout 0", timeout_height, timeout_height + ANTI_REORG_DELAY - 1)
    # the HTLC the peer offered is still open: we may learn its preimage
    d.mine(3)
    assert events(d.outputs, ChannelResolved) == []
    assert d.watch.resolved_on_chain() is None

    d.watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    d.mine()  # claimed with it
    d.mine()
    last = height(node)
    d.mine(ANTI_REORG_DELAY - 2)
    assert events(d.outputs, ChannelResolved) == []
    d.mine()
    [resolved] = events(d.outputs, ChannelResolved)
    assert resolved == ChannelResolved(tx.txid(), last + ANTI_REORG_DELAY - 1)
    assert d.watch.resolved_on_chain() == resolved
    closed = d.watch.closed_on_chain()
    assert closed is not None and closed.kind == "remote"
    # carried across a restart of the watch
    again = ChannelWatch.from_json(d.watch.to_json(), channel.local, RevocationStore())
    assert again.resolved_on_chain() == resolved


def test_a_reorg_takes_a_buried_claim_back_before_the_depth_only(node: Any) -> None:  # noqa: F811
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_local(4)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    d.mine()
    d.mine()  # the to_remote claim confirms
    claim_height = height(node)
    d.mine(ANTI_REORG_DELAY - 2)
    assert events(d.outputs, ClaimBuried) == []
    node.call("invalidateblock", block_hash(node, claim_height))
    node.mempool.clear()
    d.mine(ANTI_REORG_DELAY)  # a longer branch without the claim: not buried
    assert events(d.outputs, ClaimBuried) == []
    assert any(isinstance(o, Reversed) and isinstance(o.event, ClaimConfirmed)
               for o in d.outputs)


def test_the_revoked_records_feerate_reaches_the_watch_and_its_json() -> None:
    record = Watch("revoked_commitment", b"\x01" * 32, commitment_number=7,
                   to_local_output_index=1, to_local_amount_sat=5_000, feerate_per_kw=1_234)
    revoked = revoked_record(Watch.from_record(record.to_record()))
    assert revoked.feerate_per_kw == 1_234
    assert codec.revoked_from_json(codec.revoked_to_json(revoked)) == revoked
    old = codec.revoked_to_json(revoked)
    del old["feerate_per_kw"]  # a watch stored before the field
    assert codec.revoked_from_json(old) == RevokedCommitment(7, b"\x01" * 32, (), 1, 5_000)
