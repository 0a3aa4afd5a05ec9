"""BIP32/BIP84 keys and addresses for the on-chain wallet.

Theory of operation. The wallet's keys are BIP84's: account
`m/84'/coin'/0'`, then `/0/i` for receive addresses and `/1/i` for change, each
a P2WPKH output. `coin` is 0 on mainnet and 1 on every test network (BIP44).
The account key is derived once from the seed; each address key is then two
non-hardened steps, cached.

Derivation is BIP32's CKDpriv: I = HMAC-SHA512(chain code, data), child key =
I_L + parent key (mod n). The addition runs in libsecp256k1's constant-time
scalar code (`channel.signing.scalar_add`); public keys come from
`channel.keys.pubkey_from_secret`. (btclib's BIP32 module, which this would
otherwise use, is no longer part of the installed btclib: it moved to the
separate btclib-wallet package, which the project does not depend on. The
tests check this derivation against BIP84's published vectors.)

Addresses are encoded and decoded with btclib (bech32/bech32m and base58);
`script_from_address` refuses an address of another network, so a regtest
wallet cannot be told to pay a mainnet address.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from btclib.b32 import address_from_witness
from btclib.script import ScriptPubKey

from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh
from channel.signing import scalar_add

HARDENED = 0x80000000
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

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
    """A BIP32 private node: secret and chain code."""

    secret: bytes
    chain_code: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> ExtendedKey:
        if not 16 <= len(seed) <= 64:
            raise ValueError("a BIP32 seed is 16 to 64 bytes")
        digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
        secret = digest[:32]
        if not 0 < int.from_bytes(secret, "big") < _N:
            raise ValueError("this seed gives no valid master key (BIP32: use another)")
        return cls(secret, digest[32:])

    def child(self, index: int) -> ExtendedKey:
        if not 0 <= index < 2**32:
            raise ValueError("a BIP32 index is 32 bits")
        if index >= HARDENED:
            data = b"\x00" + self.secret + index.to_bytes(4, "big")
        else:
            data = pubkey_from_secret(self.secret) + index.to_bytes(4, "big")
        digest = hmac.new(self.chain_code, data, hashlib.sha512).digest()
        # scalar_add refuses I_L >= n and a zero sum: BIP32 says "proceed with
        # the next index" then, which has probability below 2**-127.
        return ExtendedKey(scalar_add(self.secret, digest[:32]), digest[32:])

    def derive(self, path: str) -> ExtendedKey:
        """`path` like "m/84'/1'/0'/0/5" (h or ' marks a hardened step)."""
        parts = path.split("/")
        if parts[0] != "m":
            raise ValueError("a BIP32 path starts with m")
        key = self
        for part in parts[1:]:
            hardened = part.endswith(("'", "h"))
            number = int(part[:-1] if hardened else part)
            if not 0 <= number < HARDENED:
                raise ValueError(f"bad path step {part!r}")
            key = key.child(number + HARDENED if hardened else number)
        return key

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
