"""The closing transaction trims each output by the signer's own dust limit (BOLT #3
"Closing Transaction": each node offering a signature MUST remove any output below its
own dust_limit_satoshis, and MAY eliminate its own output; BOLT #2 closing_signed: a
signature valid for neither variant is refused).

Before issue 11 the builder applied the larger of the two limits, so a peer that chose
a high dust limit had our output dropped into the fee of a transaction we signed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from channel import scripts
from channel.closing import (
    build_closing_tx,
    closing_tx_signed_by_peer,
    finalize_closing_tx,
    sign_closing_tx,
    verify_closing_signature,
)
from channel.commitment import ChannelStatic
from channel.errors import InvalidSignature, TransactionError
from channel.keys import ChannelSecrets
from channel.signing import sign
from tests.channel.test_consensus import FUNDING_SAT, Channel, assert_accepted, open_channel

PEER_DUST_SAT = 100_000  # a peer's chosen (hostile) dust limit
OUR_DUST_SAT = 546


@pytest.fixture
def channel(regtest_node: Any) -> Channel:
    channel = open_channel(regtest_node)
    channel.static = dataclasses.replace(
        channel.static, remote=dataclasses.replace(channel.static.remote,
                                                   dust_limit_sat=PEER_DUST_SAT)
    )
    assert channel.static.local.dust_limit_sat == OUR_DUST_SAT
    return channel


def scripts_of(channel: Channel) -> tuple[bytes, bytes]:
    return (scripts.p2wpkh(channel.local.basepoints().payment_basepoint),
            scripts.p2wpkh(channel.remote.basepoints().payment_basepoint))


def peer_signs(channel: Channel, local_sat: int, remote_sat: int) -> tuple[bytes, int]:
    """The peer's signature over the closing tx it builds with ITS dust limit, and
    how many outputs that tx has."""
    ours, theirs = scripts_of(channel)
    peer_static: ChannelStatic = channel.static.mirrored()
    tx = build_closing_tx(peer_static, remote_sat, local_sat, theirs, ours)
    return sign_closing_tx(peer_static, channel.remote, tx), len(tx.outputs)


def test_our_output_is_kept_whatever_the_peers_dust_limit(channel: Channel) -> None:
    ours, theirs = scripts_of(channel)
    local_sat, remote_sat = 50_000, FUNDING_SAT - 50_000 - 1_000
    tx = build_closing_tx(channel.static, local_sat, remote_sat, ours, theirs)
    assert sorted(o.amount_sat for o in tx.outputs) == [local_sat, remote_sat]
    # The peer drops our output by its own limit: that signature is refused, so we
    # never sign away our 50,000 sat (the close fails; the commitment still pays us).
    signature, outputs = peer_signs(channel, local_sat, remote_sat)
    assert outputs == 1
    with pytest.raises(InvalidSignature):
        closing_tx_signed_by_peer(channel.static, local_sat, remote_sat, ours, theirs, signature)


def test_the_peer_may_drop_its_own_output(channel: Channel) -> None:
    """The peer's output is dust to the peer (not to us): it removes it, and that
    variant is accepted, signed by us and valid on chain."""
    ours, theirs = scripts_of(channel)
    remote_sat = 60_000
    local_sat = FUNDING_SAT - remote_sat - 1_000
    signature, outputs = peer_signs(channel, local_sat, remote_sat)
    assert outputs == 1
    tx = closing_tx_signed_by_peer(channel.static, local_sat, remote_sat, ours, theirs,
                                   signature)
    assert [(o.amount_sat, o.script_pubkey) for o in tx.outputs] == [(local_sat, ours)]
    final = finalize_closing_tx(channel.static, tx, sign_closing_tx(channel.static,
                                                                    channel.local, tx),
                                signature)
    assert_accepted(channel.node, final)


def test_both_outputs_when_both_agree(channel: Channel) -> None:
    ours, theirs = scripts_of(channel)
    local_sat, remote_sat = 400_000, 599_000
    signature, outputs = peer_signs(channel, local_sat, remote_sat)
    assert outputs == 2
    tx = closing_tx_signed_by_peer(channel.static, local_sat, remote_sat, ours, theirs,
                                   signature)
    assert len(tx.outputs) == 2
    final = finalize_closing_tx(channel.static, tx, sign_closing_tx(channel.static,
                                                                    channel.local, tx),
                                signature)
    assert_accepted(channel.node, final)


def test_dust_boundary_is_below_not_at(channel: Channel) -> None:
    ours, theirs = scripts_of(channel)
    at = build_closing_tx(channel.static, OUR_DUST_SAT, 900_000, ours, theirs)
    assert sorted(o.amount_sat for o in at.outputs) == [OUR_DUST_SAT, 900_000]
    below = build_closing_tx(channel.static, OUR_DUST_SAT - 1, 900_000, ours, theirs)
    assert [o.amount_sat for o in below.outputs] == [900_000]
    # The peer's output by OUR limit too (the peer's own limit is the peer's business).
    assert len(build_closing_tx(channel.static, 900_000, OUR_DUST_SAT, ours, theirs).outputs) == 2
    assert len(build_closing_tx(channel.static, 900_000, OUR_DUST_SAT - 1, ours,
                                theirs).outputs) == 1
    with pytest.raises(TransactionError, match="dust"):
        build_closing_tx(channel.static, OUR_DUST_SAT - 1, OUR_DUST_SAT - 1, ours, theirs)
    without_peer = build_closing_tx(channel.static, OUR_DUST_SAT, 900_000, ours, theirs,
                                    omit_remote_output=True)
    assert [o.amount_sat for o in without_peer.outputs] == [OUR_DUST_SAT]


def test_our_dust_output_and_no_variant_without_the_peers(channel: Channel) -> None:
    """Our output is dust to us: the only variant is the peer's output alone; the
    'without the peer's output' variant does not exist and must not raise."""
    ours, theirs = scripts_of(channel)
    local_sat, remote_sat = 500, FUNDING_SAT - 500 - 1_000
    tx = build_closing_tx(channel.static, local_sat, remote_sat, ours, theirs)
    signature = sign_closing_tx(channel.static.mirrored(), channel.remote, tx)
    assert closing_tx_signed_by_peer(channel.static, local_sat, remote_sat, ours, theirs,
                                     signature).txid() == tx.txid()


def test_a_signature_by_another_key_matches_no_variant(channel: Channel) -> None:
    ours, theirs = scripts_of(channel)
    tx = build_closing_tx(channel.static, 400_000, 599_000, ours, theirs)
    stranger = ChannelSecrets.from_seed(b"\x07" * 32)
    forged = sign_closing_tx(channel.static.mirrored(), stranger, tx)
    with pytest.raises(InvalidSignature):
        closing_tx_signed_by_peer(channel.static, 400_000, 599_000, ours, theirs, forged)
    with pytest.raises(InvalidSignature):
        closing_tx_signed_by_peer(channel.static, 400_000, 599_000, ours, theirs,
                                  sign(b"\x01" * 32, b"\x00" * 32))


def test_amount_bounds_and_bolt3_fields(channel: Channel) -> None:
    ours, theirs = scripts_of(channel)
    funding = channel.static.funding_sat
    # Zero is a (dust) amount, not an error; below zero is refused, on either side.
    assert [o.amount_sat for o in build_closing_tx(channel.static, 0, funding, ours,
                                                   theirs).outputs] == [funding]
    assert [o.amount_sat for o in build_closing_tx(channel.static, funding, 0, ours,
                                                   theirs).outputs] == [funding]
    for local_sat, remote_sat in ((-1, 500_000), (500_000, -1)):
        with pytest.raises(TransactionError, match="negative"):
            build_closing_tx(channel.static, local_sat, remote_sat, ours, theirs)
    # The outputs may take the whole funding amount (fee 0), never more.
    whole = build_closing_tx(channel.static, 400_000, funding - 400_000, ours, theirs)
    assert sum(o.amount_sat for o in whole.outputs) == funding
    with pytest.raises(TransactionError, match="exceed"):
        build_closing_tx(channel.static, 400_000, funding - 400_000 + 1, ours, theirs)
    # BOLT #3: version 2, locktime 0, one input (the funding outpoint), sequence final.
    assert (whole.version, whole.locktime) == (2, 0)
    (txin,) = whole.inputs
    assert txin.outpoint == channel.static.funding_outpoint
    assert txin.sequence == 0xFFFFFFFF


def test_verify_closing_signature(channel: Channel) -> None:
    ours, theirs = scripts_of(channel)
    tx = build_closing_tx(channel.static, 400_000, 599_000, ours, theirs)
    good = sign_closing_tx(channel.static.mirrored(), channel.remote, tx)
    verify_closing_signature(channel.static, tx, good)
    ours_not_theirs = sign_closing_tx(channel.static, channel.local, tx)
    with pytest.raises(InvalidSignature):
        verify_closing_signature(channel.static, tx, ours_not_theirs)
