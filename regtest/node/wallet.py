"""A small faucet wallet: deterministic P2WPKH keys, balance, coin selection, signing.

Keys come from a 32-byte seed kept in `<datadir>/regtest/wallet.seed` (mode
0600, written via tmp+rename): key i is HMAC-SHA256(seed, "chanhub-regtest
key" || i) reduced into the curve order.  The number of keys handed out is a
counter in the store, so addresses survive restarts and are never reused.

The wallet owns no coin database: it reads the node's UTXO set and mempool
and picks the outputs paying its scripts, which keeps it trivially
consistent with reorgs.  Balances follow bitcoind's wallet: a coinbase
counts after 101 confirmations, unconfirmed outputs count only when the
wallet made the transaction (its own change).

Spends are version 2, signal BIP125 (sequence 0xfffffffd), lock time = tip
height (anti-fee-sniping) and pay a fixed WALLET_FEE_RATE_SAT_PER_KVB.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from btclib import b32
from btclib.hashes import hash160
from btclib.script.sig_hash import PrecomputedTxData, segwit_v0
from btclib.script.witness import Witness
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut
from coincurve import PrivateKey

from regtest.node.chainstate import ChainState
from regtest.node.mempool import Mempool
from regtest.node.params import WALLET_COINBASE_MATURITY, WALLET_FEE_RATE_SAT_PER_KVB
from regtest.node.storage import Outpoint
from regtest.node.validation import Coin

_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGHASH_ALL = 1
P2WPKH_DUST_SAT = 294


class WalletError(Exception):
    """Building a spend failed (maps to RPC -6 with this text)."""


@dataclass(frozen=True, slots=True)
class WalletCoin:
    outpoint: Outpoint
    coin: Coin
    confirmations: int
    key_index: int


def p2wpkh_script(pubkey: bytes) -> bytes:
    return b"\x00\x14" + hash160(pubkey)


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` with mode 0600 via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Wallet:
    def __init__(self, netdir: Path, chain: ChainState, mempool: Mempool) -> None:
        self.chain = chain
        self.mempool = mempool
        seed_path = netdir / "wallet.seed"
        if not seed_path.exists():
            write_private_file(seed_path, secrets.token_hex(32).encode())
        self._seed = bytes.fromhex(seed_path.read_text().strip())
        self._keys: list[PrivateKey] = []
        self._scripts: dict[bytes, int] = {}
        for _ in range(chain.store.get_meta("wallet_keys")):
            self._derive()

    def _derive(self) -> int:
        index = len(self._keys)
        digest = hmac.new(
            self._seed, b"chanhub-regtest key" + index.to_bytes(4, "big"), hashlib.sha256
        ).digest()
        secret = int.from_bytes(digest, "big") % (_CURVE_ORDER - 1) + 1
        key = PrivateKey(secret.to_bytes(32, "big"))
        self._keys.append(key)
        self._scripts[p2wpkh_script(key.public_key.format(compressed=True))] = index
        return index

    def new_address(self) -> str:
        with self.chain.store.transaction():
            index = self._derive()
            self.chain.store.set_meta("wallet_keys", len(self._keys))
        return self.address_of(index)

    def address_of(self, index: int) -> str:
        pubkey = self._keys[index].public_key.format(compressed=True)
        return str(b32.address_from_witness(0, hash160(pubkey), "regtest"))

    def pubkey_of(self, index: int) -> bytes:
        return bytes(self._keys[index].public_key.format(compressed=True))

    def owns(self, script: bytes) -> bool:
        return script in self._scripts

    def key_index(self, script: bytes) -> int | None:
        return self._scripts.get(script)

    # --- coins -------------------------------------------------------------------
    def coins(self, *, include_immature: bool = False) -> list[WalletCoin]:
        """Wallet outputs not spent by the mempool: confirmed, then trusted unconfirmed."""
        tip = self.chain.height
        found: list[WalletCoin] = []
        for outpoint, coin in self.chain.utxo.items():
            index = self._scripts.get(coin.script)
            if index is None or outpoint in self.mempool.spenders:
                continue
            depth = tip - coin.height + 1
            if coin.coinbase and depth < WALLET_COINBASE_MATURITY and not include_immature:
                continue
            found.append(WalletCoin(outpoint, coin, depth, index))
        for entry in self.mempool.ordered():
            if not all(self._spends_own(tx_in) for tx_in in entry.tx.vin):
                continue  # only our own unconfirmed transactions are trusted
            for n, tx_out in enumerate(entry.tx.vout):
                script = tx_out.script_pub_key.script
                index = self._scripts.get(script)
                if index is None or (entry.txid, n) in self.mempool.spenders:
                    continue
                coin = Coin(tx_out.value, script, tip + 1, False)
                found.append(WalletCoin((entry.txid, n), coin, 0, index))
        found.sort(key=lambda c: (-c.confirmations, c.outpoint))
        return found

    def _spends_own(self, tx_in: TxIn) -> bool:
        key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
        coin = self.chain.utxo.get(key) or self.mempool.coin(key)
        if coin is None:
            # spent from the chain by this very tx: look at the spent output's tx
            entry = self.mempool.entries.get(key[0])
            return entry is not None and self.owns(entry.tx.vout[key[1]].script_pub_key.script)
        return self.owns(coin.script)

    def balance(self) -> int:
        return sum(c.coin.value for c in self.coins())

    # --- spending --------------------------------------------------------------------
    def create_spend(self, script_pub_key: bytes, amount_sat: int) -> tuple[Tx, int]:
        """Build and sign a tx paying `amount_sat` to the script; returns (tx, vout)."""
        if amount_sat <= 0:
            raise WalletError("Transaction amount too small")
        available = self.coins()
        selected: list[WalletCoin] = []
        total = 0
        fee = 0
        for candidate in available:
            selected.append(candidate)
            total += candidate.coin.value
            # P2WPKH inputs ~68 vB, two outputs ~31/43 vB, overhead ~11 vB
            vsize = 11 + 68 * len(selected) + 31 + 9 + len(script_pub_key)
            fee = (vsize * WALLET_FEE_RATE_SAT_PER_KVB + 999) // 1000
            if total >= amount_sat + fee:
                break
        else:
            raise WalletError("Insufficient funds")
        outputs = [TxOut(amount_sat, script_pub_key, check_validity=False)]
        change = total - amount_sat - fee
        if change > P2WPKH_DUST_SAT:
            change_index = self._derive_change()
            outputs.append(
                TxOut(change, p2wpkh_script(self.pubkey_of(change_index)), check_validity=False)
            )
        vin = [
            TxIn(
                OutPoint(c.outpoint[0], c.outpoint[1], check_validity=False),
                b"",
                0xFFFFFFFD,
                Witness(),
                check_validity=False,
            )
            for c in selected
        ]
        tx = Tx(2, self.chain.height, vin, outputs, check_validity=False)
        self.sign(tx, [c.coin for c in selected], [c.key_index for c in selected])
        return tx, 0

    def _derive_change(self) -> int:
        with self.chain.store.transaction():
            index = self._derive()
            self.chain.store.set_meta("wallet_keys", len(self._keys))
        return index

    def sign(self, tx: Tx, coins: list[Coin], key_indexes: list[int]) -> None:
        """BIP143-sign every (P2WPKH) input with SIGHASH_ALL, low-S DER from libsecp256k1."""
        prevouts = [coin.tx_out() for coin in coins]
        precomputed = PrecomputedTxData(tx, prevouts)
        for i, (coin, index) in enumerate(zip(coins, key_indexes, strict=True)):
            key = self._keys[index]
            pubkey = key.public_key.format(compressed=True)
            script_code = b"\x76\xa9\x14" + hash160(pubkey) + b"\x88\xac"
            digest = segwit_v0(script_code, tx, i, SIGHASH_ALL, coin.value, precomputed)
            signature = key.sign(digest, hasher=None) + bytes([SIGHASH_ALL])
            tx.vin[i].script_witness = Witness([signature, pubkey], check_validity=False)
