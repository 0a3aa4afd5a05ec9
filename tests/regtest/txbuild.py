"""Test-side transaction building: btclib types, coincurve (RFC6979) signatures."""

from __future__ import annotations

from btclib.hashes import hash160, sha256
from btclib.script.sig_hash import segwit_v0
from btclib.script.witness import Witness
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut
from coincurve import PrivateKey

SIGHASH_ALL = 1


def key(n: int) -> PrivateKey:
    """A fixed test key."""
    return PrivateKey(sha256(b"chanhub regtest test key %d" % n))


def pub(k: PrivateKey) -> bytes:
    return bytes(k.public_key.format(compressed=True))


def p2wpkh(k: PrivateKey) -> bytes:
    return b"\x00\x14" + hash160(pub(k))


def p2wsh(witness_script: bytes) -> bytes:
    return b"\x00\x20" + sha256(witness_script)


def push(data: bytes) -> bytes:
    assert len(data) < 0x4C
    return bytes([len(data)]) + data


def script_num(n: int) -> bytes:
    """A minimal CScriptNum push (positive n)."""
    if n == 0:
        return b"\x00"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    return push(n.to_bytes((n.bit_length() + 8) // 8, "little"))


def multisig_2of2(k1: PrivateKey, k2: PrivateKey) -> bytes:
    return b"\x52" + push(pub(k1)) + push(pub(k2)) + b"\x52\xae"


def csv_script(blocks_or_seq: int, k: PrivateKey) -> bytes:
    return script_num(blocks_or_seq) + b"\xb2\x75" + push(pub(k)) + b"\xac"


def cltv_script(lock_time: int, k: PrivateKey) -> bytes:
    return script_num(lock_time) + b"\xb1\x75" + push(pub(k)) + b"\xac"


def spend(
    outpoints: list[tuple[str, int]],
    outputs: list[tuple[bytes, int]],
    *,
    version: int = 2,
    lock_time: int = 0,
    sequence: int = 0xFFFFFFFD,
) -> Tx:
    vin = [
        TxIn(OutPoint(bytes.fromhex(txid), n, check_validity=False), b"", sequence, Witness(),
             check_validity=False)
        for txid, n in outpoints
    ]
    vout = [TxOut(value, script, check_validity=False) for script, value in outputs]
    return Tx(version, lock_time, vin, vout, check_validity=False)


def sign(tx: Tx, i: int, script_code: bytes, amount: int, k: PrivateKey) -> bytes:
    digest = segwit_v0(script_code, tx, i, SIGHASH_ALL, amount)
    return bytes(k.sign(digest, hasher=None)) + bytes([SIGHASH_ALL])


def sign_p2wpkh(tx: Tx, i: int, amount: int, k: PrivateKey) -> None:
    script_code = b"\x76\xa9\x14" + hash160(pub(k)) + b"\x88\xac"
    tx.vin[i].script_witness = Witness([sign(tx, i, script_code, amount, k), pub(k)],
                                       check_validity=False)


def set_witness(tx: Tx, i: int, stack: list[bytes]) -> None:
    tx.vin[i].script_witness = Witness(stack, check_validity=False)


def raw(tx: Tx) -> str:
    return tx.serialize(include_witness=True, check_validity=False).hex()


def txid(tx: Tx) -> str:
    return tx.id.hex()
