"""The faucet wallet's keys: BIP32 from the seed, Core's four address types.

A descriptor wallet in Bitcoin Core (the default since v23) holds one
descriptor per address type and chain, each a BIP32 path under the wallet's
master key; this module derives the same shapes on regtest's coin type 1:

| type          | script        | path (external/change)     | descriptor     |
|---------------|---------------|----------------------------|----------------|
| `legacy`      | P2PKH         | m/44h/1h/0h/{0,1}/i        | `pkh(...)`     |
| `p2sh-segwit` | P2SH-P2WPKH   | m/49h/1h/0h/{0,1}/i        | `sh(wpkh(...))`|
| `bech32`      | P2WPKH        | m/84h/1h/0h/{0,1}/i        | `wpkh(...)`    |
| `bech32m`     | P2TR key path | m/86h/1h/0h/{0,1}/i (BIP86)| `tr(...)`      |

Each key's descriptor carries its key origin, `[fingerprint/path]`, the
fingerprint being the first 4 bytes of HASH160 of the master public key,
as Core prints in `listunspent`'s `desc`; `parent_descs` is the ranged
descriptor over the account's tpub.  The BIP32 derivation, fingerprints and
tpub serialization are btclib-wallet's (`btclib_wallet.bip32`), an external
library like btclib, so this package still imports nothing else of the
project's.  `WalletKey.sign` signs one input of its type (SIGHASH_ALL, or
SIGHASH_DEFAULT for taproot, deterministic nonces), which is all the faucet
needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from btclib.hashes import hash160
from btclib.network import NETWORKS
from btclib.script.script_pub_key import ScriptPubKey
from btclib.script.sig_hash import PrecomputedTxData, legacy, segwit_v0, taproot
from btclib.script.witness import Witness
from btclib.tx.tx import Tx
from btclib.tx.tx_out import TxOut
from btclib_wallet.bip32 import BIP32KeyData, derive_, rootxprv_from_seed_, xpub_from_xprv_
from btclib_wallet.bip32 import fingerprint as bip32_fingerprint
from coincurve import PrivateKey, PublicKey

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HARDENED = 1 << 31
SIGHASH_ALL = 1
SIGHASH_DEFAULT = 0
# testnet/regtest extended keys: tprv, whose public half serializes as tpub
TPRV_VERSION = NETWORKS["regtest"].bip32_prv

ADDRESS_TYPES = ("legacy", "p2sh-segwit", "bech32", "bech32m")
PURPOSE = {"legacy": 44, "p2sh-segwit": 49, "bech32": 84, "bech32m": 86}
# an input's vsize when spent, for the fee estimate (signature at its largest)
INPUT_VSIZE = {"legacy": 148, "p2sh-segwit": 91, "bech32": 68, "bech32m": 58}


def _push(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _tagged_hash(tag: str, data: bytes) -> bytes:
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + data).digest()


@dataclass(frozen=True, slots=True)
class ExtendedKey:
    """A BIP32 private node: key, chain code, and where it sits.

    A thin value type over btclib-wallet's `BIP32KeyData`, which does the
    arithmetic (HMAC-SHA512 and libsecp256k1's constant-time scalar sum),
    the range checks and the tpub serialization.
    """

    secret: int
    chain_code: bytes
    depth: int = 0
    parent_fingerprint: bytes = b"\x00\x00\x00\x00"
    child_number: int = 0

    @staticmethod
    def from_seed(seed: bytes) -> ExtendedKey:
        return ExtendedKey._from_key_data(rootxprv_from_seed_(seed, TPRV_VERSION))

    @staticmethod
    def _from_key_data(data: BIP32KeyData) -> ExtendedKey:
        secret = int.from_bytes(data.key[1:], "big")
        return ExtendedKey(secret, data.chain_code, data.depth, data.parent_fingerprint, data.index)

    def _key_data(self) -> BIP32KeyData:
        # btclib validates it where it is used (derive_, xpub_from_xprv_)
        return BIP32KeyData(
            TPRV_VERSION,
            self.depth,
            self.parent_fingerprint,
            self.child_number,
            self.chain_code,
            b"\x00" + self.secret.to_bytes(32, "big"),
            check_validity=False,
        )

    @property
    def pubkey(self) -> bytes:
        return bytes(PrivateKey(self.secret.to_bytes(32, "big")).public_key.format(True))

    @property
    def fingerprint(self) -> bytes:
        return bip32_fingerprint(self._key_data())

    def child(self, index: int) -> ExtendedKey:
        """CKDpriv; an out-of-range child (probability 2**-127) raises."""
        return ExtendedKey._from_key_data(derive_(self._key_data(), index))

    def tpub(self) -> str:
        """The node's public half, serialized for testnet/regtest (tpub...)."""
        return xpub_from_xprv_(self._key_data()).b58encode(check_validity=False)


def _path_text(path: tuple[int, ...]) -> str:
    return "/".join(f"{n - HARDENED}h" if n >= HARDENED else str(n) for n in path)


@dataclass(frozen=True)
class WalletKey:
    """One wallet key of one address type, with everything its outputs need."""

    address_type: str
    key: PrivateKey
    # "[fingerprint/path]" of the key, empty for the pre-BIP32 keys of old datadirs
    origin: str
    parent_desc: str = ""

    @property
    def pubkey(self) -> bytes:
        return bytes(self.key.public_key.format(compressed=True))

    @property
    def script(self) -> bytes:
        h160 = hash160(self.pubkey)
        if self.address_type == "legacy":
            return b"\x76\xa9\x14" + h160 + b"\x88\xac"
        if self.address_type == "p2sh-segwit":
            return b"\xa9\x14" + hash160(b"\x00\x14" + h160) + b"\x87"
        if self.address_type == "bech32":
            return b"\x00\x14" + h160
        return b"\x51\x20" + self._taproot_output()[0]

    @property
    def address(self) -> str:
        return str(ScriptPubKey(self.script, "regtest").address)

    @property
    def redeem_script(self) -> bytes | None:
        if self.address_type == "p2sh-segwit":
            return b"\x00\x14" + hash160(self.pubkey)
        return None

    @property
    def descriptor(self) -> str:
        """The key's descriptor without checksum, e.g. `wpkh([fp/84h/1h/0h/0/0]02...)`."""
        public = self.pubkey[1:] if self.address_type == "bech32m" else self.pubkey
        key = self.origin + public.hex()
        return {
            "legacy": f"pkh({key})",
            "p2sh-segwit": f"sh(wpkh({key}))",
            "bech32": f"wpkh({key})",
            "bech32m": f"tr({key})",
        }[self.address_type]

    def _taproot_output(self) -> tuple[bytes, int]:
        """BIP86: (x-only output key, tweaked secret) for a key-path-only output."""
        secret = int.from_bytes(self.key.secret, "big")
        if self.pubkey[0] == 3:  # BIP340 keys have even y: negate the secret
            secret = CURVE_ORDER - secret
        internal = self.pubkey[1:]
        tweak = _tagged_hash("TapTweak", internal)
        output = PublicKey(b"\x02" + internal).add(tweak).format(compressed=True)
        return output[1:], (secret + int.from_bytes(tweak, "big")) % CURVE_ORDER

    def sign(self, tx: Tx, i: int, prevouts: list[TxOut], precomputed: PrecomputedTxData) -> None:
        """Sign input i, which spends this key's output."""
        tx_in = tx.vin[i]
        p2pkh_code = b"\x76\xa9\x14" + hash160(self.pubkey) + b"\x88\xac"
        if self.address_type == "bech32m":
            digest = taproot(tx, i, prevouts, SIGHASH_DEFAULT, 0, b"", b"", precomputed)
            tweaked = PrivateKey(self._taproot_output()[1].to_bytes(32, "big"))
            signature = tweaked.sign_schnorr(digest, b"\x00" * 32)
            tx_in.script_witness = Witness([signature], check_validity=False)
            return
        if self.address_type == "legacy":
            digest = legacy(self.script, tx, i, SIGHASH_ALL)
        else:
            digest = segwit_v0(p2pkh_code, tx, i, SIGHASH_ALL, prevouts[i].value, precomputed)
        signature = self.key.sign(digest, hasher=None) + bytes([SIGHASH_ALL])
        if self.address_type == "legacy":
            tx_in.script_sig = _push(signature) + _push(self.pubkey)
            return
        if self.redeem_script is not None:
            tx_in.script_sig = _push(self.redeem_script)
        tx_in.script_witness = Witness([signature, self.pubkey], check_validity=False)


class KeyChain:
    """The wallet's descriptors: BIP32 accounts per address type, keys on demand."""

    def __init__(self, seed: bytes) -> None:
        self.master = ExtendedKey.from_seed(seed)
        self.fingerprint = self.master.fingerprint.hex()
        self._chains: dict[tuple[str, int], ExtendedKey] = {}
        self._accounts: dict[str, ExtendedKey] = {}

    def _account(self, address_type: str) -> ExtendedKey:
        if address_type not in self._accounts:
            node = self.master
            for n in (PURPOSE[address_type] + HARDENED, 1 + HARDENED, HARDENED):
                node = node.child(n)
            self._accounts[address_type] = node
        return self._accounts[address_type]

    def key(self, address_type: str, change: int, index: int) -> WalletKey:
        chain = self._chains.get((address_type, change))
        if chain is None:
            chain = self._account(address_type).child(change)
            self._chains[(address_type, change)] = chain
        node = chain.child(index)
        path = (PURPOSE[address_type] + HARDENED, 1 + HARDENED, HARDENED, change, index)
        account = self._account(address_type)
        account_origin = f"[{self.fingerprint}/{_path_text(path[:3])}]"
        ranged = f"{account_origin}{account.tpub()}/{change}/*"
        parent = {
            "legacy": f"pkh({ranged})",
            "p2sh-segwit": f"sh(wpkh({ranged}))",
            "bech32": f"wpkh({ranged})",
            "bech32m": f"tr({ranged})",
        }[address_type]
        return WalletKey(
            address_type,
            PrivateKey(node.secret.to_bytes(32, "big")),
            f"[{self.fingerprint}/{_path_text(path)}]",
            parent,
        )
