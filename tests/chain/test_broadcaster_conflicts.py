"""The broadcaster and a conflicting spend: a pending tx whose input another confirmed
tx spends is not sent again while that block stands, is forgotten once the conflict
is deep, and is pending again if a reorg takes the conflict away; a refusal because
the conflict sits in the mempool is logged at INFO (the normal life of a channel's
commitments), not as an error. Real node, real wallet signatures."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from channel.chain import BitcoinRpc
from channel.chain.broadcaster import RpcBroadcaster
from channel.chain.follower import RpcChainSource
from channel.tx import Tx
from tests.chain.test_wallet import COIN, _harness

CONFIRM_DEPTH = 3


async def _two_spends_of_one_coin(rpc: BitcoinRpc, source: RpcChainSource
                                  ) -> tuple[Any, Tx, Tx]:
    h = await _harness(rpc, source)
    h.broadcaster.confirm_depth = CONFIRM_DEPTH
    await rpc.sendtoaddress(h.wallet.new_address(), COIN)
    await h.mine(1)
    ours = h.wallet.fund(b"\x00\x20" + b"\x01" * 32, 100_000, 253)
    h.wallet.release(ours)  # the same coin again, paying elsewhere: a conflict
    theirs = h.wallet.fund(b"\x00\x20" + b"\x02" * 32, 200_000, 2_500)
    assert {i.outpoint for i in ours.inputs} == {i.outpoint for i in theirs.inputs}
    return h, ours, theirs


async def test_a_confirmed_conflict_stops_rebroadcasts_then_forgets_the_tx(
        rpc: BitcoinRpc, source: RpcChainSource, caplog: pytest.LogCaptureFixture) -> None:
    h, ours, theirs = await _two_spends_of_one_coin(rpc, source)
    await rpc.sendrawtransaction(theirs.serialize())  # the other side's, first
    caplog.set_level(logging.INFO, logger="channel.chain.broadcaster")
    await h.broadcaster.for_driver().broadcast(ours.serialize(), ours.txid(), "force close")
    (entry,) = h.broadcaster.pending()
    assert entry.txid == ours.txid_hex() and entry.last_error is not None
    refusal = [r for r in caplog.records if "force close" in r.getMessage()]
    assert refusal and all(r.levelno == logging.INFO for r in refusal)  # not an ERROR

    blocks = await h.mine(1)  # theirs confirms
    assert entry.conflict_height == h.broadcaster.tip_height
    sent = h.broadcaster.rebroadcasts
    await h.mine(1)
    assert h.broadcaster.rebroadcasts == sent  # not sent again while the conflict stands
    restored = RpcBroadcaster.from_json(rpc, json.loads(json.dumps(h.broadcaster.to_json())))
    assert restored.pending()[0].conflict_height == entry.conflict_height

    # A reorg takes the conflict away: ours is pending again, and sent (the node holds
    # theirs again in its mempool, so the answer is a refusal logged at INFO).
    await rpc.invalidateblock(blocks[0])
    await rpc.call("generateblock", await rpc.getnewaddress(), [])
    await rpc.call("generateblock", await rpc.getnewaddress(), [])
    caplog.clear()
    await h.follower.sync_once()
    assert entry.conflict_height is None
    resent = [r for r in caplog.records if f"rebroadcast of {ours.txid_hex()}" in r.getMessage()]
    assert resent and all(r.levelno == logging.INFO for r in resent)
    assert "rejecting replacement" in resent[0].getMessage()

    await h.mine(1)  # theirs confirms again
    assert entry.conflict_height == h.broadcaster.tip_height
    await h.mine(CONFIRM_DEPTH - 2)
    assert [p.txid for p in h.broadcaster.pending()] == [ours.txid_hex()]  # 2 deep: kept
    await h.mine(1)
    assert h.broadcaster.pending() == []  # 3 deep: forgotten
    assert "conflicting spend is 3 deep" in caplog.text


async def test_our_own_tx_confirming_is_no_conflict(
        rpc: BitcoinRpc, source: RpcChainSource) -> None:
    h, ours, _theirs = await _two_spends_of_one_coin(rpc, source)
    await h.broadcaster.broadcast(ours, label="funding")
    await h.mine(1)
    (entry,) = h.broadcaster.pending()
    assert entry.confirmed_height == h.broadcaster.tip_height
    assert entry.conflict_height is None
