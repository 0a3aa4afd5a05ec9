"""ChainServices, the wiring the hub and the SDK share, as a trio service under an
autojumping MockClock: fund the wallet, open a 2-of-2, see its confirmation as an
event, persist the bundle each block, restart from it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from channel import scripts
from channel.chain import BitcoinRpc, TxConfirmed, WalletError
from channel.chain.services import BIRTH_SAFETY_BLOCKS, ChainServices
from channel.funding import funding_output_index
from channel.keys import pubkey_from_secret
from channel.tx import TxOut

SEED = b"\x05" * 32


async def test_fund_open_confirm_persist_restart(
    rpc: BitcoinRpc, autojump_clock: trio.testing.MockClock
) -> None:
    saved: list[dict[str, Any]] = []

    async def persist(bundle: dict[str, Any]) -> None:
        saved.append(bundle)

    chain = await ChainServices.open(rpc, SEED, persist=persist, poll_interval_s=2.0)
    assert chain.wallet.birth.height == await rpc.getblockcount() - BIRTH_SAFETY_BLOCKS
    async with trio.open_nursery() as nursery:
        tip = await nursery.start(chain.run)
        await rpc.sendtoaddress(chain.wallet.new_address(), 3_000_000)
        await rpc.generatetoaddress(1, await rpc.getnewaddress())
        await chain.follower.wait_for_height(tip.height + 1)
        assert chain.wallet.balance().confirmed_sat == 3_000_000
        assert saved and saved[-1]["tip"] == chain.tip.to_json()

        funding_spk = scripts.p2wsh(
            scripts.funding_script(
                pubkey_from_secret(b"\x01" * 32), pubkey_from_secret(b"\x02" * 32)
            )
        )
        feerate = await chain.fee_estimator.feerate_sat_per_kw(6)
        funding = chain.wallet.fund(funding_spk, 1_000_000, feerate)
        funding_index = funding_output_index(funding, TxOut(1_000_000, funding_spk))
        chain.tracker.watch_tx(funding.txid_hex(), min_depth=3)
        await chain.broadcaster.broadcast(funding, label="funding")
        await rpc.generatetoaddress(3, await rpc.getnewaddress())
        event = await chain.events.receive()
        assert isinstance(event, TxConfirmed) and event.txid == funding.txid_hex()
        assert event.depth == 3 and event.height == tip.height + 2
        await chain.follower.wait_for_height(tip.height + 4)
        nursery.cancel_scope.cancel()

    out = await rpc.gettxout(funding.txid_hex(), funding_index)
    assert out is not None and out.value_sat == 1_000_000
    bundle = saved[-1]
    assert bundle["tip"]["height"] == tip.height + 4

    restarted = await ChainServices.open(rpc, SEED, state=bundle)
    assert restarted.wallet.utxos() == chain.wallet.utxos()
    assert restarted.tracker.depth(funding.txid_hex()) == 3
    assert [p.txid for p in restarted.broadcaster.pending()] == [funding.txid_hex()]
    await rpc.generatetoaddress(3, await rpc.getnewaddress())
    assert (await restarted.sync_once()).height == tip.height + 7
    assert restarted.broadcaster.pending() == []  # 6 deep: no longer rebroadcast

    with pytest.raises(WalletError):
        await ChainServices.open(rpc, SEED, state=dict(bundle, tip=saved[0]["tip"]))
    for broken in (
        dict(bundle, tracker={"tip_height": 5, "txs": [], "outpoints": []}),
        dict(bundle, broadcaster={"tip_height": 5}),
        {k: v for k, v in bundle.items() if k != "wallet"},
        dict(bundle, tip={"height": -1, "hash": "00"}),
    ):
        with pytest.raises(WalletError):
            await ChainServices.open(rpc, SEED, state=broken)
