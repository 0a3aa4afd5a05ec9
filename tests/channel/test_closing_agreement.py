"""Both sides compute the same closing transaction whatever their two dust limits
(BOLT #3 "Closing Transaction": each signer "MUST remove any output below its own
dust_limit_satoshis" and "MAY eliminate its own output"; BOLT #2 closing_signed: a
signature valid for neither variant fails the connection).

Every output amount at, one below and one above each dust limit, on either side, with
the two limits different both ways round and equal. The expectation comes from the
three cases of ``channel.closing``'s docstring, written here a second time on purpose:

- at or above both limits: kept by both;
- below its owner's limit: removed by both;
- at or above its owner's limit but below the other's: no transaction both sign; its
  owner refuses to build one (``DustLimitConflict``) and refuses the other side's
  (which must remove it), so nobody signs that output away.

When both sides agree, the transaction with both signatures is judged by the real
embedded node (``testmempoolaccept``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from channel import scripts
from channel.closing import (
    DustLimitConflict,
    closing_tx_signed_by_peer,
    closing_tx_to_sign,
    finalize_closing_tx,
    sign_closing_tx,
)
from channel.commitment import ChannelStatic
from channel.errors import InvalidSignature
from tests.channel.test_consensus import FUNDING_SAT, Channel, accepted, open_channel

FEE_SAT = 1_000  # what the two outputs leave to the fee (above the node's relay floor)


def with_dust_limits(channel: Channel, our_dust_sat: int, peer_dust_sat: int) -> Channel:
    s = channel.static
    channel.static = dataclasses.replace(
        s, local=dataclasses.replace(s.local, dust_limit_sat=our_dust_sat),
        remote=dataclasses.replace(s.remote, dust_limit_sat=peer_dust_sat))
    return channel


def expected_fate(amount_sat: int, owner_dust_sat: int, other_dust_sat: int) -> str:
    if amount_sat >= max(owner_dust_sat, other_dust_sat):
        return "kept"
    if amount_sat < owner_dust_sat:
        return "removed"
    return "conflict"


def boundary_amounts(*limits: int) -> list[int]:
    return sorted({limit + delta for limit in limits for delta in (-1, 0, 1)})


@pytest.mark.parametrize("our_dust_sat,peer_dust_sat", [(546, 1_000), (1_000, 546), (546, 546),
                                                        (354, 354)])
def test_both_sides_agree_at_every_dust_boundary(regtest_node: Any, our_dust_sat: int,
                                                 peer_dust_sat: int) -> None:
    channel = with_dust_limits(open_channel(regtest_node), our_dust_sat, peer_dust_sat)
    ours: ChannelStatic = channel.static
    peers: ChannelStatic = ours.mirrored()
    our_spk = scripts.p2wpkh(channel.local.basepoints().payment_basepoint)
    peer_spk = scripts.p2wpkh(channel.remote.basepoints().payment_basepoint)
    seen = set()
    for small_is_ours in (True, False):
        for small_sat in boundary_amounts(our_dust_sat, peer_dust_sat):
            large_sat = FUNDING_SAT - FEE_SAT - small_sat
            local_sat, remote_sat = ((small_sat, large_sat) if small_is_ours
                                     else (large_sat, small_sat))
            owner_dust, other_dust = ((our_dust_sat, peer_dust_sat) if small_is_ours
                                      else (peer_dust_sat, our_dust_sat))
            fate = expected_fate(small_sat, owner_dust, other_dust)
            seen.add(fate)
            case = f"{'our' if small_is_ours else 'peer'} output {small_sat} sat: {fate}"
            # Each side as it builds what it signs (the peer: mirrored, amounts swapped).
            built = {}
            why = {}
            for side, static, amounts, spks in (
                    ("us", ours, (local_sat, remote_sat), (our_spk, peer_spk)),
                    ("peer", peers, (remote_sat, local_sat), (peer_spk, our_spk))):
                try:
                    built[side] = closing_tx_to_sign(static, *amounts, *spks)
                except DustLimitConflict as exc:
                    built[side], why[side] = None, str(exc)
            owner, other = ("us", "peer") if small_is_ours else ("peer", "us")
            if fate == "conflict":
                assert built[owner] is None, case  # the owner never builds it away
                assert why[owner] == (f"our closing output of {small_sat} sat is below the "
                                      f"peer's dust limit of {other_dust} sat (the peer must "
                                      f"remove it; we do not give it up)"), case
                tx = built[other]
                assert tx is not None, case
                assert small_sat not in [o.amount_sat for o in tx.outputs], case
                # ... and refuses the other side's signature of it, saying why.
                if owner == "us":
                    sig = sign_closing_tx(peers, channel.remote, tx)
                    with pytest.raises(InvalidSignature, match="dust limit"):
                        closing_tx_signed_by_peer(ours, local_sat, remote_sat, our_spk,
                                                  peer_spk, sig)
                else:
                    sig = sign_closing_tx(ours, channel.local, tx)
                    with pytest.raises(InvalidSignature, match="dust limit"):
                        closing_tx_signed_by_peer(peers, remote_sat, local_sat, peer_spk,
                                                  our_spk, sig)
                continue
            our_tx, peer_tx = built["us"], built["peer"]
            assert our_tx is not None and peer_tx is not None, case
            assert our_tx.serialize() == peer_tx.serialize(), case  # the same bytes
            amounts = sorted(o.amount_sat for o in our_tx.outputs)
            assert amounts == sorted([large_sat] + ([small_sat] if fate == "kept" else [])), case
            our_sig = sign_closing_tx(ours, channel.local, our_tx)
            peer_sig = sign_closing_tx(peers, channel.remote, peer_tx)
            # Each accepts the other's signature for exactly that transaction.
            assert closing_tx_signed_by_peer(ours, local_sat, remote_sat, our_spk, peer_spk,
                                             peer_sig).txid() == our_tx.txid(), case
            assert closing_tx_signed_by_peer(peers, remote_sat, local_sat, peer_spk, our_spk,
                                             our_sig).txid() == our_tx.txid(), case
            ok, reason = accepted(regtest_node, finalize_closing_tx(ours, our_tx, our_sig,
                                                                    peer_sig))
            assert ok, f"{case}: {reason}"
    assert seen == ({"kept", "removed"} if our_dust_sat == peer_dust_sat
                    else {"kept", "removed", "conflict"})


def test_agreed_close_with_both_outputs_at_the_higher_limit_confirms(regtest_node: Any) -> None:
    """Exactly at the higher of two different limits both outputs stay; the tx with both
    signatures is mined."""
    channel = with_dust_limits(open_channel(regtest_node), 546, 1_000)
    ours = channel.static
    our_spk = scripts.p2wpkh(channel.local.basepoints().payment_basepoint)
    peer_spk = scripts.p2wpkh(channel.remote.basepoints().payment_basepoint)
    local_sat, remote_sat = 1_000, FUNDING_SAT - FEE_SAT - 1_000
    tx = closing_tx_to_sign(ours, local_sat, remote_sat, our_spk, peer_spk)
    peer_sig = sign_closing_tx(ours.mirrored(), channel.remote,
                               closing_tx_to_sign(ours.mirrored(), remote_sat, local_sat,
                                                  peer_spk, our_spk))
    agreed = closing_tx_signed_by_peer(ours, local_sat, remote_sat, our_spk, peer_spk, peer_sig)
    final = finalize_closing_tx(ours, agreed, sign_closing_tx(ours, channel.local, tx), peer_sig)
    txid = regtest_node.call("sendrawtransaction", final.serialize().hex())
    regtest_node.mine(1)
    assert regtest_node.call("getrawtransaction", txid, True)["confirmations"] == 1
    assert sorted(o.amount_sat for o in final.outputs) == [1_000, remote_sat]
