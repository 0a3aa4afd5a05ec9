"""The on-chain wallet: BIP84 keys, coins found by following blocks, funding and
sending.

Theory of operation
-------------------
The wallet is a `BlockListener`: it learns its coins from the blocks the
follower feeds it, so it needs no wallet in the node (it works against a
bitcoind run with -disablewallet) and sees exactly the chain the channels see.

- Keys (keychain.py): receive chain `m/84'/1'/0'/0/i`, change chain `/1/i`.
  Scripts are derived up to `next_index + gap_limit` on each chain; a payment to
  index i moves that chain's `next_index` past i and derives further, so a
  restore or rescan finds coins the way other BIP44 wallets do. Before a block is
  applied, its outputs are scanned for scripts that extend the look-ahead
  (repeatedly), so a block paying several fresh addresses is found whole.
- Coins: every output of a block paying one of our scripts becomes a `Utxo` with
  its height; an input spending one removes it (kept aside as spent for
  `REORG_WINDOW_BLOCKS`, so a disconnect can restore it). A disconnect undoes
  its block: coins created there vanish, coins spent there come back.
- Locks: `fund()` and `send()` sign a transaction and lock its inputs with its
  txid. A funding transaction is not broadcast by the wallet (the channel must
  first hold the peer's signature on our first commitment), so its inputs stay
  `reserved` until `release(tx)` or until a block spends them. A transaction
  the wallet broadcast (`send`, or a funding the owner reports with
  `note_broadcast`) is pending: its inputs are no longer counted and its change
  is unconfirmed balance until mined.
- Spendable: confirmed at least `min_depth` deep (coinbase outputs 100 deep),
  and not locked.
- State: `to_json()` holds everything but the seed (coins, spent coins in the
  reorg window, locks, pending transactions, next indexes, the recent block
  hashes and the tip); `from_json(seed, data)` restores it and refuses a seed
  that is not the one the state was made with. `rescan(source)` forgets the
  coins and follows the chain again from the birth checkpoint.

The wallet's tip must be where its follower starts: feed it with
`ChainFollower(source, wallet.tip, ...)` (or a follower whose persisted tip is
saved in the same store transaction as the wallet). A replayed block it has
already seen is skipped; a gap is a `WalletError` (never silently wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from channel.chain.broadcaster import BroadcastRefused
from channel.chain.coinselect import (
    DUST_LIMIT_SAT,
    Coin,
    InsufficientFunds,
    WalletError,
    build_signed_tx,
)
from channel.chain.follower import ChainFollower
from channel.chain.interfaces import BlockRef, Broadcaster, ChainSource, FeeEstimator
from channel.chain.keychain import (
    CHANGE_CHAIN,
    RECEIVE_CHAIN,
    AddressError,
    Bip84Account,
    script_from_address,
)
from channel.chain.rpc import BitcoinRpc, RpcError
from channel.tx import OutPoint, Tx, TxOut

__all__ = ["Balance", "InsufficientFunds", "OnchainWallet", "Utxo", "WalletError"]

#: How long spent coins and block hashes are kept to undo a reorg: two days of
#: blocks, far deeper than any reorg the channels survive anyway.
REORG_WINDOW_BLOCKS = 288
COINBASE_MATURITY = 100
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Utxo:
    outpoint: OutPoint
    amount_sat: int
    chain: int
    key_index: int
    height: int
    coinbase: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.outpoint.txid_hex(),
            "vout": self.outpoint.index,
            "amount_sat": self.amount_sat,
            "chain": self.chain,
            "key_index": self.key_index,
            "height": self.height,
            "coinbase": self.coinbase,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Utxo:
        return cls(
            OutPoint.from_display(d["txid"], int(d["vout"])),
            _nonneg(d["amount_sat"]),
            _chain(d["chain"]),
            _nonneg(d["key_index"]),
            _nonneg(d["height"]),
            bool(d["coinbase"]),
        )


@dataclass(frozen=True, slots=True)
class Balance:
    confirmed_sat: int  # spendable now
    unconfirmed_sat: int  # ours but not yet min_depth deep, or change of a pending tx
    reserved_sat: int  # locked by a funding transaction not yet broadcast


@dataclass(slots=True)
class _OwnTx:
    tx: Tx
    broadcast: bool
    height: int | None = None


class OnchainWallet:
    """A BIP84 P2WPKH wallet fed by blocks (a `BlockListener`)."""

    def __init__(
        self,
        seed: bytes,
        birth: BlockRef,
        *,
        network: str = "regtest",
        min_depth: int = 1,
        gap_limit: int = 20,
        broadcaster: Broadcaster | None = None,
        fee_estimator: FeeEstimator | None = None,
    ) -> None:
        if min_depth < 1 or gap_limit < 1:
            raise ValueError("min_depth and gap_limit are at least 1")
        self.account = Bip84Account(seed, network)
        self.network = network
        self.birth = birth
        self.min_depth = min_depth
        self.gap_limit = gap_limit
        self.broadcaster = broadcaster
        self.fee_estimator = fee_estimator
        self._next_index = [0, 0]
        self._scripts: dict[bytes, tuple[int, int]] = {}
        self._derived = [0, 0]
        self._reset_chain_state()
        self._derive_lookahead()

    def _reset_chain_state(self) -> None:
        self._tip_height = self.birth.height
        self._hashes: dict[int, str] = {self.birth.height: self.birth.hash}
        self._utxos: dict[OutPoint, Utxo] = {}
        self._spent: dict[OutPoint, tuple[Utxo, int]] = {}
        self._locks: dict[OutPoint, str] = {}
        self._own: dict[str, _OwnTx] = {}
        self._mempool_incoming_sat: dict[str, int] = {}

    # -- addresses ---------------------------------------------------------------

    def _derive_lookahead(self) -> None:
        for chain in (RECEIVE_CHAIN, CHANGE_CHAIN):
            while self._derived[chain] < self._next_index[chain] + self.gap_limit:
                index = self._derived[chain]
                self._scripts[self.account.script_pubkey(chain, index)] = (chain, index)
                self._derived[chain] += 1

    def _take_index(self, chain: int) -> int:
        index = self._next_index[chain]
        self._next_index[chain] += 1
        self._derive_lookahead()
        return index

    def new_address(self) -> str:
        """A fresh receive address (the next unused index of the receive chain)."""
        return self.account.address(RECEIVE_CHAIN, self._take_index(RECEIVE_CHAIN))

    def new_script_pubkey(self) -> bytes:
        """A fresh receive script (for a shutdown script or a sweep destination)."""
        return self.account.script_pubkey(RECEIVE_CHAIN, self._take_index(RECEIVE_CHAIN))

    def is_mine(self, script_pubkey: bytes) -> bool:
        return script_pubkey in self._scripts

    def mark_used(self, script_pubkey: bytes) -> bool:
        """A script of ours handed out (a channel's close script, say) whose index
        advance may not have been persisted: move past it, so the look-ahead covers
        the ones handed out after it. False if it is not within the look-ahead."""
        found = self._scripts.get(script_pubkey)
        if found is None:
            return False
        chain, index = found
        if index >= self._next_index[chain]:
            self._next_index[chain] = index + 1
            self._derive_lookahead()
        return True

    @property
    def tip(self) -> BlockRef:
        return BlockRef(self._tip_height, self._hashes[self._tip_height])

    # -- balance and coins ---------------------------------------------------------

    def utxos(self) -> list[Utxo]:
        return sorted(
            self._utxos.values(), key=lambda u: (u.height, u.outpoint.txid, u.outpoint.index)
        )

    def _spendable(self, utxo: Utxo) -> bool:
        depth = self._tip_height - utxo.height + 1
        needed = max(self.min_depth, COINBASE_MATURITY if utxo.coinbase else 0)
        return depth >= needed and utxo.outpoint not in self._locks

    def balance(self) -> Balance:
        confirmed = unconfirmed = reserved = 0
        for utxo in self._utxos.values():
            lock = self._locks.get(utxo.outpoint)
            if lock is not None:
                if not self._own[lock].broadcast:
                    reserved += utxo.amount_sat
            elif self._spendable(utxo):
                confirmed += utxo.amount_sat
            else:
                unconfirmed += utxo.amount_sat
        for own in self._own.values():
            if own.broadcast and own.height is None:
                unconfirmed += sum(
                    o.amount_sat for o in own.tx.outputs if o.script_pubkey in self._scripts
                )
        unconfirmed += sum(self._mempool_incoming_sat.values())
        return Balance(confirmed, unconfirmed, reserved)

    async def scan_mempool(self, rpc: BitcoinRpc, *, max_fetch: int = 1_000) -> int:
        """Count payments to us that sit in the node's mempool as unconfirmed
        balance (never spendable before they are mined). Fetches only txids not
        seen by an earlier scan, at most `max_fetch` per call; meant for regtest
        and small mempools (the hub and the SDK call it for `GetBalance`).
        Returns the satoshis found; the figures are not persisted."""
        in_mempool = set(await rpc.getrawmempool())
        self._mempool_incoming_sat = {
            txid: sat for txid, sat in self._mempool_incoming_sat.items() if txid in in_mempool
        }
        for txid in sorted(in_mempool - self._mempool_incoming_sat.keys())[:max_fetch]:
            if txid in self._own:  # already counted as our own pending change
                self._mempool_incoming_sat[txid] = 0
                continue
            try:
                tx = Tx.parse(await rpc.getrawtransaction(txid))
            except RpcError:
                continue  # mined or evicted since getrawmempool
            if tx.txid_hex() != txid:
                raise WalletError(f"the node answered another transaction for {txid}")
            self._mempool_incoming_sat[txid] = sum(
                o.amount_sat for o in tx.outputs if o.script_pubkey in self._scripts
            )
        return sum(self._mempool_incoming_sat.values())

    # -- building transactions ---------------------------------------------------------

    def _coins(self) -> list[Coin]:
        coins = []
        for utxo in self._utxos.values():
            if self._spendable(utxo):
                key = self.account.key(utxo.chain, utxo.key_index)
                coins.append(Coin(utxo.outpoint, utxo.amount_sat, key.secret, key.pubkey))
        return coins

    def _build(self, outputs: Sequence[TxOut], feerate_per_kw: int, *, broadcast: bool) -> Tx:
        change_index = self._next_index[CHANGE_CHAIN]
        change_script = self.account.script_pubkey(CHANGE_CHAIN, change_index)
        tx, used = build_signed_tx(
            self._coins(), outputs, change_script, feerate_per_kw, locktime=self._tip_height
        )
        # Only now that signing succeeded does anything change.
        if any(o.script_pubkey == change_script for o in tx.outputs):
            self._take_index(CHANGE_CHAIN)
        txid = tx.txid_hex()
        for coin in used:
            self._locks[coin.outpoint] = txid
        self._own[txid] = _OwnTx(tx, broadcast)
        return tx

    def fund(self, script_pubkey: bytes, amount_sat: int, feerate_per_kw: int) -> Tx:
        """A signed funding transaction paying `amount_sat` to `script_pubkey`,
        NOT broadcast; its inputs are reserved until `release(tx)` or a block
        spends them. `channel.funding.funding_output_index` finds the output."""
        _check_amount(amount_sat)
        return self._build([TxOut(amount_sat, script_pubkey)], feerate_per_kw, broadcast=False)

    def release(self, tx: Tx) -> None:
        """Free the inputs `fund()` reserved for `tx` (the channel open failed)."""
        txid = tx.txid_hex()
        own = self._own.get(txid)
        if own is None:
            raise WalletError(f"{txid} is not a transaction of this wallet")
        if own.height is not None:
            raise WalletError(f"{txid} is confirmed: its inputs are spent")
        for outpoint in [op for op, lock in self._locks.items() if lock == txid]:
            del self._locks[outpoint]
        del self._own[txid]

    def unbroadcast_tx(self, txid: str) -> Tx | None:
        """The signed `fund()` transaction `txid` if it is still neither broadcast nor
        mined (its inputs reserved), else None. The owner persists `to_json()` after
        `fund()`, so the signed funding tx survives a restart in the wallet state."""
        own = self._own.get(txid)
        if own is None or own.broadcast or own.height is not None:
            return None
        return own.tx

    def unbroadcast_txids(self) -> list[str]:
        """Every `fund()` transaction still neither broadcast nor mined."""
        return sorted(
            txid for txid, own in self._own.items() if not own.broadcast and own.height is None
        )

    def note_broadcast(self, tx: Tx) -> None:
        """The owner broadcast a `fund()` transaction: its change is now pending."""
        own = self._own.get(tx.txid_hex())
        if own is None:
            raise WalletError(f"{tx.txid_hex()} is not a transaction of this wallet")
        own.broadcast = True

    def build_send(self, address: str, amount_sat: int, feerate_per_kw: int) -> Tx:
        """A signed payment to `address` (inputs locked, pending, not yet sent)."""
        _check_amount(amount_sat)
        try:
            script = script_from_address(address, self.network)
        except AddressError as exc:
            raise WalletError(str(exc)) from exc
        return self._build([TxOut(amount_sat, script)], feerate_per_kw, broadcast=True)

    async def send(
        self,
        address: str,
        amount_sat: int,
        *,
        conf_target_blocks: int = 6,
        feerate_per_kw: int | None = None,
    ) -> str:
        """Pay `amount_sat` to `address` and broadcast it; returns the txid. A
        refusal by the node undoes the locks (nothing changed); a node that
        cannot be reached leaves the tx pending in the broadcaster, which sends
        it on the next block, so its inputs stay locked."""
        if self.broadcaster is None:
            raise WalletError("this wallet has no broadcaster")
        if feerate_per_kw is None:
            if self.fee_estimator is None:
                raise WalletError("this wallet has no fee estimator: give feerate_per_kw")
            feerate_per_kw = await self.fee_estimator.feerate_sat_per_kw(conf_target_blocks)
        tx = self.build_send(address, amount_sat, feerate_per_kw)
        try:
            return await self.broadcaster.broadcast(tx, label=f"wallet send to {address}")
        except BroadcastRefused:
            self.release(tx)
            raise

    # -- BlockListener -------------------------------------------------------------------

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        if height <= self._tip_height and self._hashes.get(height) == block_hash:
            return  # a replay from an older checkpoint: already applied
        if height != self._tip_height + 1:
            raise WalletError(
                f"block {height} does not follow the wallet's tip {self._tip_height}: rescan"
            )
        self._extend_lookahead_for(txs)
        # A coin that comes (back) into the chain while one of our own pending
        # transactions spends it stays locked by that transaction: after a reorg
        # the node may still hold the spend in its mempool, and a new spend of the
        # same coin would conflict with it.
        pending_spends = {
            txin.outpoint: txid
            for txid, own in self._own.items()
            if own.height is None
            for txin in own.tx.inputs
        }
        for position, tx in enumerate(txs):
            txid = tx.txid_hex()
            for txin in tx.inputs:
                utxo = self._utxos.pop(txin.outpoint, None)
                if utxo is not None:
                    self._spent[txin.outpoint] = (utxo, height)
                    self._locks.pop(txin.outpoint, None)
            for index, output in enumerate(tx.outputs):
                owner = self._scripts.get(output.script_pubkey)
                if owner is not None:
                    outpoint = OutPoint(tx.txid(), index)
                    self._utxos[outpoint] = Utxo(
                        outpoint, output.amount_sat, owner[0], owner[1], height, position == 0
                    )
                    if outpoint in pending_spends:
                        self._locks[outpoint] = pending_spends[outpoint]
            self._mempool_incoming_sat.pop(txid, None)
            own = self._own.get(txid)
            if own is not None:
                own.height, own.broadcast = height, True
        self._tip_height = height
        self._hashes[height] = block_hash
        self._prune()

    def _extend_lookahead_for(self, txs: Sequence[Tx]) -> None:
        grew = True
        while grew:
            grew = False
            for tx in txs:
                for output in tx.outputs:
                    owner = self._scripts.get(output.script_pubkey)
                    if owner is not None and owner[1] >= self._next_index[owner[0]]:
                        self._next_index[owner[0]] = owner[1] + 1
                        self._derive_lookahead()
                        grew = True

    def block_disconnected(self, height: int, block_hash: str) -> None:
        if height > self._tip_height:
            return  # never seen by this wallet
        if height != self._tip_height or self._hashes.get(height) != block_hash:
            raise WalletError(f"disconnect of {height} {block_hash} is not the wallet's tip")
        if height - 1 not in self._hashes:
            raise WalletError("reorg deeper than the wallet's window: rescan")
        for outpoint, (utxo, spent_height) in list(self._spent.items()):
            if spent_height == height:
                del self._spent[outpoint]
                self._utxos[outpoint] = utxo
        for outpoint in [op for op, u in self._utxos.items() if u.height == height]:
            del self._utxos[outpoint]
            self._locks.pop(outpoint, None)
        for txid, own in self._own.items():
            if own.height == height:
                own.height = None
                for txin in own.tx.inputs:  # its inputs are ours again, still locked by it
                    if txin.outpoint in self._utxos:
                        self._locks[txin.outpoint] = txid
        del self._hashes[height]
        self._tip_height = height - 1

    def _prune(self) -> None:
        horizon = self._tip_height - REORG_WINDOW_BLOCKS
        for outpoint in [op for op, (_, h) in self._spent.items() if h <= horizon]:
            del self._spent[outpoint]
        for height in [h for h in self._hashes if h < horizon]:
            del self._hashes[height]
        for txid in [
            t for t, o in self._own.items() if o.height is not None and o.height <= horizon
        ]:
            del self._own[txid]

    # -- rescan and persistence -----------------------------------------------------------

    async def rescan(self, source: ChainSource) -> BlockRef:
        """Forget every coin, then follow the chain from the birth checkpoint with
        this wallet alone; returns the new tip. Transactions the wallet signed and
        that are not known mined (a reserved funding, a pending send) are kept:
        their inputs are locked again as they are found, so a rescan never frees
        a coin a funding transaction holds."""
        pending = {txid: own for txid, own in self._own.items() if own.height is None}
        self._reset_chain_state()
        self._own = pending
        follower = ChainFollower(source, self.birth, listeners=[self])
        await follower.sync_once()
        return self.tip

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "account": self.account.address(RECEIVE_CHAIN, 0),
            "network": self.network,
            "birth": self.birth.to_json(),
            "min_depth": self.min_depth,
            "gap_limit": self.gap_limit,
            "next_index": list(self._next_index),
            "tip_height": self._tip_height,
            "block_hashes": {str(h): block_hash for h, block_hash in self._hashes.items()},
            "utxos": [u.to_json() for u in self.utxos()],
            "spent": [{"utxo": u.to_json(), "spent_height": h} for u, h in self._spent.values()],
            "locks": [
                {"txid": op.txid_hex(), "vout": op.index, "by": by}
                for op, by in self._locks.items()
            ],
            "own_txs": [
                {"tx": o.tx.serialize().hex(), "broadcast": o.broadcast, "height": o.height}
                for o in self._own.values()
            ],
        }

    @classmethod
    def from_json(
        cls,
        seed: bytes,
        data: dict[str, Any],
        *,
        broadcaster: Broadcaster | None = None,
        fee_estimator: FeeEstimator | None = None,
    ) -> OnchainWallet:
        """Restore exported state; `WalletError` if it is not this seed's."""
        if data.get("version") != STATE_VERSION:
            raise WalletError(f"unknown wallet state version {data.get('version')!r}")
        try:
            wallet = cls(
                seed,
                BlockRef.from_json(data["birth"]),
                network=str(data["network"]),
                min_depth=int(data["min_depth"]),
                gap_limit=int(data["gap_limit"]),
                broadcaster=broadcaster,
                fee_estimator=fee_estimator,
            )
            if wallet.account.address(RECEIVE_CHAIN, 0) != data["account"]:
                raise WalletError("this wallet state belongs to another seed")
            wallet._next_index = [_nonneg(i) for i in data["next_index"]][:2]
            wallet._derive_lookahead()
            wallet._tip_height = _nonneg(data["tip_height"])
            wallet._hashes = {}
            for h, block_hash in data["block_hashes"].items():
                wallet._hashes[int(h)] = BlockRef.from_json(
                    {"height": int(h), "hash": block_hash}
                ).hash
            if wallet._tip_height not in wallet._hashes:
                raise WalletError("wallet state has no hash for its tip")
            wallet._utxos = {u.outpoint: u for u in map(Utxo.from_json, data["utxos"])}
            for item in data["spent"]:
                utxo = Utxo.from_json(item["utxo"])
                wallet._spent[utxo.outpoint] = (utxo, _nonneg(item["spent_height"]))
            for item in data["own_txs"]:
                tx = Tx.parse(bytes.fromhex(item["tx"]))
                height = None if item["height"] is None else _nonneg(item["height"])
                wallet._own[tx.txid_hex()] = _OwnTx(tx, bool(item["broadcast"]), height)
            for item in data["locks"]:
                if item["by"] not in wallet._own:
                    raise WalletError(f"lock by unknown transaction {item['by']}")
                wallet._locks[OutPoint.from_display(item["txid"], int(item["vout"]))] = item["by"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WalletError(f"malformed wallet state: {exc!r}") from exc
        return wallet


def _check_amount(amount_sat: int) -> None:
    if not isinstance(amount_sat, int) or isinstance(amount_sat, bool):
        raise WalletError("amounts are integer satoshis")
    if amount_sat < DUST_LIMIT_SAT:
        raise WalletError(f"{amount_sat} sat is below the dust limit {DUST_LIMIT_SAT}")


def _nonneg(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return value


def _chain(value: Any) -> int:
    if value not in (RECEIVE_CHAIN, CHANGE_CHAIN):
        raise ValueError(f"not a BIP44 chain: {value!r}")
    return int(value)
