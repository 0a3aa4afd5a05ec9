"""A small faucet wallet: BIP32 keys of Core's four address types, balance, spends.

Keys come from a 32-byte seed kept in `<datadir>/regtest/wallet.seed` (mode
0600, written via tmp+rename), derived as Core's descriptor wallets do
(`keys.KeyChain`: m/44h, 49h, 84h, 86h /1h/0h/{0,1}/i for `legacy`,
`p2sh-segwit`, `bech32`, `bech32m`).  How many keys of each type and chain
were handed out is a counter in the store, so addresses survive restarts
and are never reused.  A datadir from before BIP32 (a `wallet_keys`
counter) keeps its old keys, HMAC-SHA256(seed, "chanhub-regtest key" || i),
as P2WPKH outputs the wallet still sees and spends.

The wallet owns no coin database: it reads the node's UTXO set and mempool
and picks the outputs paying its scripts, which keeps it trivially
consistent with reorgs and replacements.  Balances follow bitcoind's
wallet: a coinbase counts after 101 confirmations, unconfirmed outputs
count only when the wallet made the transaction (its own change).

Spends are version 2, signal BIP125 (sequence 0xfffffffd), lock time = tip
height (anti-fee-sniping), pay a fixed WALLET_FEE_RATE_SAT_PER_KVB, and send
change to a new bech32 key.  A payment below the output's dust threshold is
refused before anything is built, with Core's "Transaction amount too small".
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from btclib.script.sig_hash import PrecomputedTxData
from btclib.script.witness import Witness
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut
from coincurve import PrivateKey

from regtest.node.chainstate import ChainState
from regtest.node.keys import ADDRESS_TYPES, CURVE_ORDER, INPUT_VSIZE, KeyChain, WalletKey
from regtest.node.mempool import Mempool
from regtest.node.params import WALLET_COINBASE_MATURITY, WALLET_FEE_RATE_SAT_PER_KVB
from regtest.node.storage import Outpoint
from regtest.node.validation import Coin, is_dust

CHANGE_TYPE = "bech32"


class WalletError(Exception):
    """Building a spend failed (maps to RPC -6 with this text)."""


@dataclass(frozen=True, slots=True)
class WalletCoin:
    outpoint: Outpoint
    coin: Coin
    confirmations: int
    key: WalletKey


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
        self.keychain = KeyChain(self._seed)
        self._keys: dict[bytes, WalletKey] = {}
        for index in range(chain.store.get_meta("wallet_keys")):
            self._remember(self._pre_bip32_key(index))
        for address_type in ADDRESS_TYPES:
            for change in (0, 1):
                for index in range(chain.store.get_meta(self._counter(address_type, change))):
                    self._remember(self.keychain.key(address_type, change, index))

    @staticmethod
    def _counter(address_type: str, change: int) -> str:
        return f"wallet_next_{address_type}_{change}"

    def _pre_bip32_key(self, index: int) -> WalletKey:
        digest = hmac.new(
            self._seed, b"chanhub-regtest key" + index.to_bytes(4, "big"), hashlib.sha256
        ).digest()
        secret = int.from_bytes(digest, "big") % (CURVE_ORDER - 1) + 1
        return WalletKey("bech32", PrivateKey(secret.to_bytes(32, "big")), "")

    def _remember(self, key: WalletKey) -> None:
        self._keys[key.script] = key

    def _next_key(self, address_type: str, change: int) -> WalletKey:
        counter = self._counter(address_type, change)
        with self.chain.store.transaction():
            index = self.chain.store.get_meta(counter)
            key = self.keychain.key(address_type, change, index)
            self.chain.store.set_meta(counter, index + 1)
        self._remember(key)
        return key

    def new_address(self, address_type: str = "bech32") -> str:
        """A fresh receiving address of one of Core's types (ValueError otherwise)."""
        if address_type not in ADDRESS_TYPES:
            raise ValueError(address_type)
        return self._next_key(address_type, 0).address

    def owns(self, script: bytes) -> bool:
        return script in self._keys

    def key_of(self, script: bytes) -> WalletKey | None:
        return self._keys.get(script)

    # --- coins -------------------------------------------------------------------
    def coins(self, *, include_immature: bool = False) -> list[WalletCoin]:
        """Wallet outputs not spent by the mempool: confirmed, then trusted unconfirmed."""
        tip = self.chain.height
        found: list[WalletCoin] = []
        for outpoint, coin in self.chain.utxo.items():
            key = self._keys.get(coin.script)
            if key is None or outpoint in self.mempool.spenders:
                continue
            depth = tip - coin.height + 1
            if coin.coinbase and depth < WALLET_COINBASE_MATURITY and not include_immature:
                continue
            found.append(WalletCoin(outpoint, coin, depth, key))
        for entry in self.mempool.ordered():
            if not all(self._spends_own(tx_in) for tx_in in entry.tx.vin):
                continue  # only our own unconfirmed transactions are trusted
            for n, tx_out in enumerate(entry.tx.vout):
                script = tx_out.script_pub_key.script
                key = self._keys.get(script)
                if key is None or (entry.txid, n) in self.mempool.spenders:
                    continue
                coin = Coin(tx_out.value, script, tip + 1, False)
                found.append(WalletCoin((entry.txid, n), coin, 0, key))
        found.sort(key=lambda c: (-c.confirmations, c.outpoint))
        return found

    def _spends_own(self, tx_in: TxIn) -> bool:
        key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
        coin = self.chain.utxo.get(key) or self.mempool.coin(key)
        if coin is None:
            return False
        return self.owns(coin.script)

    def balance(self) -> int:
        return sum(c.coin.value for c in self.coins())

    # --- spending --------------------------------------------------------------------
    def create_spend(self, script_pub_key: bytes, amount_sat: int) -> tuple[Tx, int]:
        """Build and sign a tx paying `amount_sat` to the script; returns (tx, vout).

        Raises WalletError with Core's texts: a dust amount is "Transaction
        amount too small" before any coin is looked at, as Core's
        CreateTransaction checks each recipient first.
        """
        payment = TxOut(amount_sat, script_pub_key, check_validity=False)
        if amount_sat <= 0 or is_dust(payment):
            raise WalletError("Transaction amount too small")
        selected: list[WalletCoin] = []
        total = 0
        fee = 0
        for candidate in self.coins():
            selected.append(candidate)
            total += candidate.coin.value
            # inputs at their largest, the payment and a P2WPKH change (31 vB), overhead 11 vB
            inputs_vsize = sum(INPUT_VSIZE[c.key.address_type] for c in selected)
            vsize = 11 + inputs_vsize + 31 + 9 + len(script_pub_key)
            fee = (vsize * WALLET_FEE_RATE_SAT_PER_KVB + 999) // 1000
            if total >= amount_sat + fee:
                break
        else:
            raise WalletError("Insufficient funds")
        outputs = [payment]
        change_sat = total - amount_sat - fee
        # every bech32 change script has this shape, so this is its dust threshold
        shape = TxOut(change_sat, b"\x00\x14" + bytes(20), check_validity=False)
        if change_sat > 0 and not is_dust(shape):
            change_key = self._next_key(CHANGE_TYPE, 1)
            outputs.append(TxOut(change_sat, change_key.script, check_validity=False))
        # dust change goes to the fee, as Core's wallet does
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
        self.sign(tx, [c.coin for c in selected], [c.key for c in selected])
        return tx, 0

    def sign(self, tx: Tx, coins: list[Coin], keys: list[WalletKey]) -> None:
        """Sign every input with its key (each of the wallet's four output types)."""
        prevouts = [coin.tx_out() for coin in coins]
        precomputed = PrecomputedTxData(tx, prevouts)
        for i, key in enumerate(keys):
            key.sign(tx, i, prevouts, precomputed)
