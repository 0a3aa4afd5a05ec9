"""The on-chain wallet against the real embedded node, whose own wallet is used
only as a faucet: coins found by following blocks, a funding of a 2-of-2 built
and signed but not broadcast until asked, a send the node accepts, the change
found again after a restore from exported state and after a rescan, reorgs, the
gap limit, refusals that change nothing."""

from __future__ import annotations

import json

import pytest

from channel import scripts
from channel.chain import BitcoinRpc, BlockRef
from channel.chain.broadcaster import RpcBroadcaster
from channel.chain.fees import RpcFeeEstimator
from channel.chain.follower import ChainFollower, ListenerError, RpcChainSource, checkpoint_at
from channel.chain.keychain import script_from_address
from channel.chain.wallet import (
    Balance,
    InsufficientFunds,
    OnchainWallet,
    WalletError,
)
from channel.funding import funding_output_index
from channel.keys import pubkey_from_secret
from channel.tx import Tx, TxOut

SEED = bytes(range(32))
COIN = 100_000_000


class Harness:
    """A wallet, its broadcaster and its follower, as the hub or SDK wires them."""

    def __init__(self, rpc: BitcoinRpc, source: RpcChainSource, wallet: OnchainWallet) -> None:
        self.rpc = rpc
        self.source = source
        self.wallet = wallet
        assert isinstance(wallet.broadcaster, RpcBroadcaster)
        self.broadcaster = wallet.broadcaster
        self.follower = ChainFollower(
            source,
            wallet.tip,
            listeners=[wallet, self.broadcaster],
            tip_listeners=[self.broadcaster],
        )

    async def mine(self, n: int = 1) -> list[str]:
        hashes = await self.rpc.generatetoaddress(n, await self.rpc.getnewaddress())
        await self.follower.sync_once()
        return hashes


async def _harness(
    rpc: BitcoinRpc, source: RpcChainSource, *, min_depth: int = 1, seed: bytes = SEED
) -> Harness:
    birth = await checkpoint_at(source, await rpc.getblockcount())
    tip = birth.height
    wallet = OnchainWallet(
        seed,
        birth,
        min_depth=min_depth,
        broadcaster=RpcBroadcaster(rpc, tip_height=tip),
        fee_estimator=RpcFeeEstimator(rpc, fallback_sat_per_kw=2_500),
    )
    return Harness(rpc, source, wallet)


def _fee_sat(tx: Tx, input_sat: int) -> int:
    return input_sat - sum(o.amount_sat for o in tx.outputs)


async def test_receives_and_respects_the_spendable_depth(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    h = await _harness(rpc, source, min_depth=3)
    address = h.wallet.new_address()
    assert address.startswith("bcrt1q")
    await rpc.sendtoaddress(address, 2 * COIN)
    assert h.wallet.balance() == Balance(0, 0, 0)  # the mempool is not followed
    await h.mine(1)
    assert h.wallet.balance() == Balance(0, 2 * COIN, 0)
    with pytest.raises(InsufficientFunds):
        h.wallet.fund(b"\x00\x20" + bytes(32), 10_000, 253)
    await h.mine(2)
    assert h.wallet.balance() == Balance(2 * COIN, 0, 0)
    assert h.wallet.new_address() != address


async def test_funds_a_2_of_2_without_broadcasting_then_the_node_accepts_it(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    h = await _harness(rpc, source)
    await rpc.sendtoaddress(h.wallet.new_address(), COIN)
    await rpc.sendtoaddress(h.wallet.new_address(), COIN // 2)
    await h.mine(1)

    funding_script = scripts.funding_script(
        pubkey_from_secret(b"\x01" * 32), pubkey_from_secret(b"\x02" * 32)
    )
    funding_spk = scripts.p2wsh(funding_script)
    tx = h.wallet.fund(funding_spk, 1_200_000, 1_000)
    txid = tx.txid_hex()
    assert txid not in await rpc.getrawmempool()  # never broadcast by fund()
    # Largest first: the 1 BTC coin alone pays 1.2M sat, so only it is reserved.
    assert h.wallet.balance() == Balance(COIN // 2, 0, COIN)
    funding_vout = funding_output_index(tx, TxOut(1_200_000, funding_spk))
    (accept,) = await rpc.testmempoolaccept([tx.serialize()])
    assert accept.allowed, accept.reject_reason
    assert accept.fee_sat is not None and accept.fee_sat * 1000 >= 1_000 * tx.weight()

    # A second funding cannot take the reserved coin.
    second = h.wallet.fund(funding_spk, 1_000_000, 1_000)
    assert not {i.outpoint for i in second.inputs} & {i.outpoint for i in tx.inputs}
    h.wallet.release(second)

    # The peer signed our commitment: now it is broadcast, and confirms.
    await h.broadcaster.broadcast(tx, label="funding")
    h.wallet.note_broadcast(tx)
    await h.mine(1)
    out = await rpc.gettxout(txid, funding_vout)
    assert out is not None and out.value_sat == 1_200_000 and out.confirmations == 1
    balance = h.wallet.balance()
    assert balance.reserved_sat == 0
    assert balance.confirmed_sat == COIN + COIN // 2 - 1_200_000 - _fee_sat(tx, COIN)


async def test_release_frees_the_reserved_inputs(rpc: BitcoinRpc, source: RpcChainSource) -> None:
    h = await _harness(rpc, source)
    await rpc.sendtoaddress(h.wallet.new_address(), COIN)
    await h.mine(1)
    before = h.wallet.to_json()
    tx = h.wallet.fund(b"\x00\x20" + bytes(32), 500_000, 253)
    assert h.wallet.balance() == Balance(0, 0, COIN)
    # A rescan keeps the reservation: the coin is locked again when found.
    await h.wallet.rescan(source)
    assert h.wallet.balance() == Balance(0, 0, COIN)
    h.wallet.release(tx)
    assert h.wallet.balance() == Balance(COIN, 0, 0)
    with pytest.raises(WalletError):
        h.wallet.release(tx)
    after = h.wallet.to_json()
    # Only the change index moved (a fresh change address was taken).
    assert {k: v for k, v in after.items() if k != "next_index"} == {
        k: v for k, v in before.items() if k != "next_index"
    }


async def test_send_is_accepted_and_change_survives_restore_and_rescan(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    h = await _harness(rpc, source)
    await rpc.sendtoaddress(h.wallet.new_address(), COIN)
    await h.mine(1)
    destination = await rpc.getnewaddress()
    txid = await h.wallet.send(destination, 30_000_000)
    assert txid in await rpc.getrawmempool()
    sent = Tx.parse(await rpc.getrawtransaction(txid))
    fee_sat = _fee_sat(sent, COIN)
    assert fee_sat * 1000 >= 2_500 * sent.weight()  # the estimator's fallback rate
    change_sat = COIN - 30_000_000 - fee_sat
    assert h.wallet.balance() == Balance(0, change_sat, 0)

    exported = json.loads(json.dumps(h.wallet.to_json()))  # what the owner stores
    await h.mine(1)
    assert h.wallet.balance() == Balance(change_sat, 0, 0)
    dest_vout = next(
        i
        for i, o in enumerate(sent.outputs)
        if o.script_pubkey == script_from_address(destination, "regtest")
    )
    paid = await rpc.gettxout(txid, dest_vout)
    assert paid is not None and paid.value_sat == 30_000_000

    # Restored from the state exported before the block: follows on and finds the change.
    restored = OnchainWallet.from_json(
        SEED, exported, broadcaster=RpcBroadcaster(rpc, tip_height=exported["tip_height"])
    )
    assert restored.balance() == Balance(0, change_sat, 0)
    await ChainFollower(source, restored.tip, listeners=[restored]).sync_once()
    assert restored.balance() == Balance(change_sat, 0, 0)
    assert restored.to_json() == h.wallet.to_json()

    # A rescan from the birth height alone finds the same coins.
    fresh = OnchainWallet(SEED, h.wallet.birth)
    await fresh.rescan(source)
    assert fresh.utxos() == h.wallet.utxos()
    assert fresh.balance() == Balance(change_sat, 0, 0)
    assert fresh.tip == h.follower.tip


async def test_a_reorg_takes_coins_away_and_gives_spent_ones_back(
    rpc: BitcoinRpc, source: RpcChainSource, regtest_node: object
) -> None:
    h = await _harness(rpc, source)
    await rpc.sendtoaddress(h.wallet.new_address(), COIN)
    (funded,) = await h.mine(1)
    txid = await h.wallet.send(await rpc.getnewaddress(), 10_000_000)
    (spent_in,) = await h.mine(1)
    change = h.wallet.balance().confirmed_sat
    assert 0 < change < COIN - 10_000_000

    # The block with our send is reorged away: the coin it spent is ours again,
    # locked by the pending send; the change is pending (unconfirmed) again.
    await rpc.invalidateblock(spent_in)
    await rpc.call("generateblock", await rpc.getnewaddress(), [])
    await rpc.call("generateblock", await rpc.getnewaddress(), [])
    await h.follower.sync_once()
    assert h.wallet.balance() == Balance(0, change, 0)
    assert [u.amount_sat for u in h.wallet.utxos()] == [COIN]
    # The broadcaster sent it again (the node also kept it): it confirms.
    assert txid in await rpc.getrawmempool()
    await h.mine(1)
    assert h.wallet.balance() == Balance(change, 0, 0)

    # Deeper: the block that paid us goes too.
    await rpc.invalidateblock(funded)
    for _ in range(5):
        await rpc.call("generateblock", await rpc.getnewaddress(), [])
    await h.follower.sync_once()
    assert h.wallet.utxos() == []


async def test_gap_limit_bounds_what_a_rescan_finds(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    h = await _harness(rpc, source)
    account = h.wallet.account
    # Index 19 is inside the first window of 20; paying it opens 20..39, so 35 is
    # found in the same block; 60 is beyond any window and is not.
    for index, amount in ((19, 100_000), (35, 200_000), (60, 400_000)):
        await rpc.sendtoaddress(account.address(0, index), amount)
    await h.mine(1)
    assert h.wallet.balance().confirmed_sat == 300_000
    fresh = OnchainWallet(SEED, h.wallet.birth)
    await fresh.rescan(source)
    assert fresh.balance().confirmed_sat == 300_000
    assert fresh.new_address() == account.address(0, 36)


async def test_refusals_change_nothing(rpc: BitcoinRpc, source: RpcChainSource) -> None:
    h = await _harness(rpc, source)
    await rpc.sendtoaddress(h.wallet.new_address(), COIN)
    await h.mine(1)
    before = h.wallet.to_json()
    with pytest.raises(InsufficientFunds) as short:
        await h.wallet.send(await rpc.getnewaddress(), 2 * COIN)
    assert short.value.available_sat == COIN
    with pytest.raises(WalletError):
        await h.wallet.send("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", 10_000)  # mainnet
    with pytest.raises(WalletError):
        h.wallet.fund(b"\x00\x20" + bytes(32), 100, 253)  # dust
    with pytest.raises(WalletError):
        h.wallet.fund(b"\x00\x20" + bytes(32), 100_000, 252)  # would not relay
    with pytest.raises(WalletError):
        h.wallet.fund(b"\x00\x20" + bytes(32), 1.5, 253)  # type: ignore[arg-type]
    assert h.wallet.to_json() == before

    with pytest.raises(WalletError):
        OnchainWallet.from_json(b"\x07" * 32, before)  # another seed
    broken = dict(before, utxos=[{"txid": "zz"}])
    with pytest.raises(WalletError):
        OnchainWallet.from_json(SEED, broken)


async def test_mempool_payments_show_as_unconfirmed_until_mined(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    h = await _harness(rpc, source)
    script = h.wallet.new_script_pubkey()
    assert h.wallet.is_mine(script)
    await rpc.sendtoaddress(h.wallet.new_address(), 300_000)
    await rpc.sendtoaddress(await rpc.getnewaddress(), 400_000)  # not ours
    assert await h.wallet.scan_mempool(rpc) == 300_000
    assert h.wallet.balance() == Balance(0, 300_000, 0)
    with pytest.raises(InsufficientFunds):
        h.wallet.fund(b"\x00\x20" + bytes(32), 100_000, 253)  # not spendable yet
    await h.mine(1)
    assert h.wallet.balance() == Balance(300_000, 0, 0)  # counted once, now confirmed
    assert await h.wallet.scan_mempool(rpc) == 0


def test_configuration_is_checked() -> None:
    birth = BlockRef(0, "00" * 32)
    for bad in ({"min_depth": 0}, {"gap_limit": 0}):
        with pytest.raises(ValueError):
            OnchainWallet(SEED, birth, **bad)  # type: ignore[arg-type]


async def test_a_reorg_below_the_wallets_birth_asks_for_a_rescan(
    rpc: BitcoinRpc, source: RpcChainSource
) -> None:
    h = await _harness(rpc, source)  # born at the tip itself
    await rpc.invalidateblock(h.wallet.birth.hash)
    await rpc.generatetoaddress(2, await rpc.getnewaddress())
    with pytest.raises(ListenerError) as exc:  # the follower's wrapper of a listener's error
        await h.follower.sync_once()
    assert isinstance(exc.value.__cause__, WalletError) and "rescan" in str(exc.value.__cause__)
