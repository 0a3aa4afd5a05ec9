"""BIP32/BIP84 derivation against BIP84's published vectors, and addresses that
refuse other networks."""

from __future__ import annotations

import hashlib

import pytest

from channel.chain.keychain import (
    AddressError,
    Bip84Account,
    ExtendedKey,
    address_for_script,
    script_from_address,
)

MNEMONIC = " ".join(["abandon"] * 11 + ["about"])
# BIP39: the seed of a mnemonic is PBKDF2-HMAC-SHA512(mnemonic, "mnemonic" + passphrase).
SEED = hashlib.pbkdf2_hmac("sha512", MNEMONIC.encode(), b"mnemonic", 2048)


def test_bip84_published_vectors() -> None:
    account = Bip84Account(SEED, "mainnet")
    assert account.address(0, 0) == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    assert account.address(0, 1) == "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"
    assert account.address(1, 0) == "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"
    assert account.key(0, 0).pubkey.hex() == (
        "0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c"
    )


def test_regtest_uses_coin_type_one_and_bcrt() -> None:
    account = Bip84Account(SEED, "regtest")
    assert account.address(0, 0) == "bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk"
    root = ExtendedKey.from_seed(SEED)
    assert account.key(0, 7) == root.derive("m/84'/1'/0'/0/7") == root.derive("m/84h/1h/0h/0/7")


def test_addresses_of_other_networks_are_refused() -> None:
    regtest = Bip84Account(SEED, "regtest")
    script = script_from_address(regtest.address(0, 0), "regtest")
    assert script == regtest.script_pubkey(0, 0)
    assert address_for_script(script, "regtest") == regtest.address(0, 0)
    for address in (
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",  # mainnet bech32
        "1BoatSLRHtKNngkdXEeobR76b53LETtpyT",  # mainnet base58
        "not an address",
        "",
    ):
        with pytest.raises(AddressError):
            script_from_address(address, "regtest")
    # testnet base58 (m/n/2) is what bitcoind -regtest prints for legacy addresses
    assert script_from_address("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "regtest")[:3] == (
        b"\x76\xa9\x14"
    )


def test_bad_seeds_and_paths_are_refused() -> None:
    with pytest.raises(ValueError):
        ExtendedKey.from_seed(b"short")
    with pytest.raises(ValueError):
        ExtendedKey.from_seed(SEED).derive("84'/0'")
    with pytest.raises(ValueError):
        ExtendedKey.from_seed(bytes(65))
    with pytest.raises(ValueError):
        Bip84Account(SEED, "liquid")
    root = ExtendedKey.from_seed(SEED)
    for index in (-1, 2**32):
        with pytest.raises(ValueError):
            root.child(index)
    for path in ("m/84'/x", "m/4294967296"):
        with pytest.raises(ValueError):
            root.derive(path)
    # a secret of 0 or >= n is no key: btclib-wallet refuses to derive from it
    for secret in (bytes(32), b"\xff" * 32):
        with pytest.raises(ValueError):
            ExtendedKey(secret, root.chain_code).child(0)


def test_bip32_vector_1_chain() -> None:
    # BIP32 test vector 1, m/0H/1/2H: private key and chain code
    root = ExtendedKey.from_seed(bytes.fromhex("000102030405060708090a0b0c0d0e0f"))
    node = root.derive("m/0H/1/2H")
    assert node.secret.hex() == (
        "cbce0d719ecf7431d88e6a89fa1483e02e35092af60c042b1df2ff59fa424dca"
    )
    assert node.chain_code.hex() == (
        "04466b9cc8e161e966409ca52986c584f07e9dc81f735db683c3ff6ec7b1503f"
    )
    assert node.depth == 3 and node.child_number == 2 + 2**31
    assert node == root.child(2**31).child(1).child(2 + 2**31)
