"""Embedded regtest node throughput: `python -m bench.node_bench`.

Prints transactions validated per second (full mempool acceptance: policy
checks plus btclib's script engine on libsecp256k1 where available) for
P2WPKH spends and 2-of-2 P2WSH multisig spends, and blocks connected per
second (validation, SQLite commit, mempool update), for empty blocks and
for blocks carrying the validated transactions (scripts cached, as Core's
script cache does).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from btclib.hashes import hash160, sha256
from btclib.script.sig_hash import segwit_v0
from btclib.script.witness import Witness
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut
from coincurve import PrivateKey
from ecc.curves import is_libsecp256k1_serving

from regtest.node import Node

N_TX = 300
KEY_A = PrivateKey(sha256(b"bench a"))
KEY_B = PrivateKey(sha256(b"bench b"))


def _pub(k: PrivateKey) -> bytes:
    return bytes(k.public_key.format(compressed=True))


def _sig(tx: Tx, script_code: bytes, amount: int, k: PrivateKey) -> bytes:
    return bytes(k.sign(segwit_v0(script_code, tx, 0, 1, amount), hasher=None)) + b"\x01"


def _spends(node: Node, kind: str, n: int) -> list[Tx]:
    """Fund n outputs of the given kind in one transaction batch, return signed spends."""
    if kind == "p2wpkh":
        witness_script = b""
        spk = b"\x00\x14" + hash160(_pub(KEY_A))
    else:
        witness_script = b"\x52\x21" + _pub(KEY_A) + b"\x21" + _pub(KEY_B) + b"\x52\xae"
        spk = b"\x00\x20" + sha256(witness_script)
    amount = 100_000
    outpoints = [node.send_to_script(spk, amount) for _ in range(n)]
    node.mine(1)
    out_spk = b"\x00\x14" + hash160(_pub(KEY_B))
    txs = []
    for txid, vout in outpoints:
        tx = Tx(2, 0, [TxIn(OutPoint(bytes.fromhex(txid), vout), b"", 0xFFFFFFFD, Witness(),
                            check_validity=False)],
                [TxOut(amount - 1_000, out_spk)], check_validity=False)
        if kind == "p2wpkh":
            code = b"\x76\xa9\x14" + hash160(_pub(KEY_A)) + b"\x88\xac"
            stack = [_sig(tx, code, amount, KEY_A), _pub(KEY_A)]
        else:
            stack = [b"", _sig(tx, witness_script, amount, KEY_A),
                     _sig(tx, witness_script, amount, KEY_B), witness_script]
        tx.vin[0].script_witness = Witness(stack, check_validity=False)
        txs.append(tx)
    return txs


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(Path(tmp))
        start = time.perf_counter()
        node.mine(200)
        empty_rate = 200 / (time.perf_counter() - start)
        print(f"libsecp256k1 serving btclib's ECDSA: {is_libsecp256k1_serving()}")
        print(f"blocks connected (mined, empty):       {empty_rate:8.1f} blocks/s")
        for kind in ("p2wpkh", "p2wsh-2of2"):
            txs = _spends(node, kind, N_TX)
            start = time.perf_counter()
            for tx in txs:
                node.mempool.accept(tx, node.clock())
            rate = len(txs) / (time.perf_counter() - start)
            print(f"mempool acceptance, {kind:11}:       {rate:8.1f} tx/s")
            start = time.perf_counter()
            node.mine(1)
            elapsed = time.perf_counter() - start
            print(f"block of {len(txs)} {kind} spends connected: {elapsed * 1000:8.1f} ms "
                  f"({len(txs) / elapsed:.0f} tx/s)")
        # block validation with scripts run (no cache): the cost a reorg or a fresh block pays
        txs = _spends(node, "p2wpkh", N_TX)
        block = node.assemble(b"\x00\x14" + hash160(_pub(KEY_B)), txs)
        start = time.perf_counter()
        node.chain.validate_block(block, node.chain.tip)
        elapsed = time.perf_counter() - start
        print(f"block of {N_TX} p2wpkh spends validated, scripts uncached: "
              f"{elapsed * 1000:.1f} ms ({N_TX / elapsed:.0f} tx/s)")
        node.close()


if __name__ == "__main__":
    main()
