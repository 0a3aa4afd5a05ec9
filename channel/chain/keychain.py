"""BIP32/BIP84 keys and addresses for the on-chain wallet.

Theory of operation. The wallet's keys are BIP84's: account
`m/84'/coin'/0'`, then `/0/i` for receive addresses and `/1/i` for change, each
a P2WPKH output. `coin` is 0 on mainnet and 1 on every test network (BIP44).
The account key is derived once from the seed; each address key is then two
non-hardened steps, cached.

The BIP32 arithmetic (master key from seed, CKDpriv, path parsing, the range
checks BIP32 asks for) is btclib-wallet's `btclib_wallet.bip32`, which adds the
parent key in libsecp256k1's constant-time scalar code; `ExtendedKey` is a thin
value type over its `BIP32KeyData`, kept so callers see secret and chain code
as plain bytes. Public keys come from `channel.keys.pubkey_from_secret`. The
tests check the result against BIP84's published vectors.

Addresses are encoded and decoded with btclib (bech32/bech32m and base58);
`script_from_address` refuses an address of another network, so a regtest
wallet cannot be told to pay a mainnet address.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from btclib.b32 import address_from_witness
from btclib.network import NETWORKS as BTCLIB_NETWORKS
from btclib.script import ScriptPubKey
from btclib_wallet.bip32 import BIP32KeyData, derive_, rootxprv_from_seed_

from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh

HARDENED = 0x80000000
# the version bytes only label the key for serialization, which this module
# never does; derivation is the same under any of them
_XPRV_VERSION = BTCLIB_NETWORKS["mainnet"].bip32_prv

#: bech32 human-readable part and BIP44 coin type of each network we can run on.
NETWORKS: dict[str, tuple[str, int]] = {
    "mainnet": ("bc", 0),
    "testnet": ("tb", 1),
    "signet": ("tb", 1),
    "regtest": ("bcrt", 1),
}

RECEIVE_CHAIN = 0
CHANGE_CHAIN = 1


class AddressError(ValueError):
    """An address that cannot be decoded, or one of another network."""


@dataclass(frozen=True, slots=True)
class ExtendedKey:
    """A BIP32 private node: secret and chain code, and where it sits.

    `depth`, `parent_fingerprint` and `child_number` are what btclib's
    `BIP32KeyData` checks a key's place in the tree by (a depth-0 key must
    have no parent); they default to a master key's.
    """

    secret: bytes
    chain_code: bytes
    depth: int = 0
    parent_fingerprint: bytes = b"\x00\x00\x00\x00"
    child_number: int = 0

    @classmethod
    def from_seed(cls, seed: bytes) -> ExtendedKey:
        # btclib-wallet refuses a seed outside 16..64 bytes and (BIP32) a
        # master secret of 0 or >= n, both as BTClibValueError (a ValueError)
        if not 16 <= len(seed) <= 64:
            raise ValueError("a BIP32 seed is 16 to 64 bytes")
        return cls._from_key_data(rootxprv_from_seed_(seed, _XPRV_VERSION))

    @classmethod
    def _from_key_data(cls, data: BIP32KeyData) -> ExtendedKey:
        return cls(data.key[1:], data.chain_code, data.depth, data.parent_fingerprint, data.index)

    def _key_data(self) -> BIP32KeyData:
        # validated by btclib when derive_ receives it: secret in 1..n-1,
        # depth consistent with parent fingerprint and index
        return BIP32KeyData(
            _XPRV_VERSION,
            self.depth,
            self.parent_fingerprint,
            self.child_number,
            self.chain_code,
            b"\x00" + self.secret,
            check_validity=False,
        )

    def child(self, index: int) -> ExtendedKey:
        if not 0 <= index < 2**32:
            raise ValueError("a BIP32 index is 32 bits")
        # btclib raises (rather than skipping to the next index) for the
        # invalid children BIP32 describes, which have probability below 2**-127
        return self._from_key_data(derive_(self._key_data(), index))

    def derive(self, path: str) -> ExtendedKey:
        """`path` like "m/84'/1'/0'/0/5" (h or ' marks a hardened step)."""
        # btclib also takes a path without "m", relative to this key; this
        # method is for absolute paths from the master, so it insists on it
        if path.split("/")[0].strip() != "m":
            raise ValueError("a BIP32 path starts with m")
        return self._from_key_data(derive_(self._key_data(), path))

    @property
    def pubkey(self) -> bytes:
        return pubkey_from_secret(self.secret)


class Bip84Account:
    """Account 0 of BIP84 for one seed on one network."""

    def __init__(self, seed: bytes, network: str = "regtest") -> None:
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}")
        self.network = network
        self.hrp, coin = NETWORKS[network]
        account = ExtendedKey.from_seed(seed).derive(f"m/84'/{coin}'/0'")
        self._chains = (account.child(RECEIVE_CHAIN), account.child(CHANGE_CHAIN))

    def key(self, chain: int, index: int) -> ExtendedKey:
        return _child(self._chains[chain], index)

    def script_pubkey(self, chain: int, index: int) -> bytes:
        return p2wpkh(self.key(chain, index).pubkey)

    def address(self, chain: int, index: int) -> str:
        return address_for_script(self.script_pubkey(chain, index), self.network)


@lru_cache(maxsize=8192)
def _child(parent: ExtendedKey, index: int) -> ExtendedKey:
    return parent.child(index)


def address_for_script(script_pubkey: bytes, network: str) -> str:
    """The bech32 address of a segwit v0 script (P2WPKH or P2WSH)."""
    if len(script_pubkey) not in (22, 34) or script_pubkey[0] != 0:
        raise AddressError("only segwit v0 scripts have an address here")
    return address_from_witness(0, script_pubkey[2:], network)


def script_from_address(address: str, network: str) -> bytes:
    """The scriptPubKey an address pays, refusing other networks' addresses."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}")
    try:
        spk = ScriptPubKey.from_address(address)
    except Exception as exc:  # btclib raises several types for a bad string
        raise AddressError(f"not an address: {address!r}") from exc
    hrp = NETWORKS[network][0]
    lowered = address.strip().lower()
    if spk.type in ("p2wpkh", "p2wsh", "p2tr"):
        if lowered.rsplit("1", 1)[0] != hrp:
            raise AddressError(f"{address} is not a {network} address")
    elif spk.type in ("p2pkh", "p2sh"):
        base58_network = "mainnet" if network == "mainnet" else "testnet"
        if (spk.network == "mainnet") != (base58_network == "mainnet"):
            raise AddressError(f"{address} is not a {network} address")
    else:
        raise AddressError(f"unsupported address type {spk.type}")
    return bytes(spk.script)
