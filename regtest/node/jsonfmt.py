"""JSON shapes of scripts, transactions and headers exactly as bitcoind prints them.

Key order and optional keys follow shared/reference/bitcoind-rpc.md §2.3-2.6
(Core's TxToUniv / blockheaderToJSON / ScriptToUniv).  Amounts become
8-place Decimals here and nowhere earlier.  `asm` comes from btclib's port of
Core's ScriptToAsmStr; descriptors get Core's BIP380 checksum.
"""

from __future__ import annotations

from typing import Any

from btclib.script.script import script_to_asm
from btclib.script.script_pub_key import address as spk_address
from btclib.script.solver import solver
from btclib.tx.tx import Tx

from regtest.node.blocks import Header
from regtest.node.params import btc
from regtest.node.validation import Coin, txid_of, wtxid_of

_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    "ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(c: int, val: int) -> int:
    c0 = c >> 35
    c = ((c & 0x7FFFFFFFF) << 5) ^ val
    for bit, gen in enumerate(
        (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)
    ):
        if c0 & (1 << bit):
            c ^= gen
    return c


def descriptor_checksum(desc: str) -> str:
    """BIP380's descriptor checksum (Core's DescriptorChecksum)."""
    c = 1
    cls = 0
    clscount = 0
    for ch in desc:
        pos = _INPUT_CHARSET.find(ch)
        if pos < 0:
            return ""
        c = _polymod(c, pos & 31)
        cls = cls * 3 + (pos >> 5)
        clscount += 1
        if clscount == 3:
            c = _polymod(c, cls)
            cls = 0
            clscount = 0
    if clscount > 0:
        c = _polymod(c, cls)
    for _ in range(8):
        c = _polymod(c, 0)
    c ^= 1
    return "".join(_CHECKSUM_CHARSET[(c >> (5 * (7 - j))) & 31] for j in range(8))


def with_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def script_address(script: bytes) -> str | None:
    kind, _ = solver(script)
    if kind not in (
        "pubkeyhash",
        "scripthash",
        "witness_v0_keyhash",
        "witness_v0_scripthash",
        "witness_v1_taproot",
        "witness_unknown",
        "anchor",
    ):
        return None
    try:
        return str(spk_address(script, "regtest"))
    except Exception:
        return None


def script_pub_key_json(script: bytes) -> dict[str, Any]:
    """Core's ScriptToUniv(include_address=true): asm, desc, hex, address?, type."""
    kind, solutions = solver(script)
    address = script_address(script)
    if kind == "pubkey":
        desc = f"pk({solutions[0].hex()})"
    elif kind == "witness_v1_taproot":
        desc = f"rawtr({solutions[0].hex()})"
    elif kind == "multisig":
        m = solutions[0][0]
        desc = f"multi({m},{','.join(k.hex() for k in solutions[1:-1])})"
    elif address is not None:
        desc = f"addr({address})"
    else:
        desc = f"raw({script.hex()})"
    out: dict[str, Any] = {
        "asm": script_to_asm(script),
        "desc": with_checksum(desc),
        "hex": script.hex(),
    }
    if address is not None:
        out["address"] = address
    out["type"] = kind
    return out


def tx_json(
    tx: Tx, *, fee_sat: int | None = None, prevouts: list[Coin] | None = None
) -> dict[str, Any]:
    """Core's TxToUniv without hex/block fields (decoderawtransaction's shape)."""
    vin: list[dict[str, Any]] = []
    for i, tx_in in enumerate(tx.vin):
        item: dict[str, Any]
        if tx.is_coinbase:
            item = {"coinbase": tx_in.script_sig.hex()}
        else:
            item = {
                "txid": tx_in.prev_out.tx_id.hex(),
                "vout": tx_in.prev_out.vout,
                "scriptSig": {
                    "asm": script_to_asm(tx_in.script_sig, attempt_sighash_decode=True),
                    "hex": tx_in.script_sig.hex(),
                },
            }
        if tx_in.script_witness.stack:
            item["txinwitness"] = [bytes(w).hex() for w in tx_in.script_witness.stack]
        if prevouts is not None and not tx.is_coinbase:
            coin = prevouts[i]
            item["prevout"] = {
                "generated": coin.coinbase,
                "height": coin.height,
                "value": btc(coin.value),
                "scriptPubKey": script_pub_key_json(coin.script),
            }
        item["sequence"] = tx_in.sequence
        vin.append(item)
    out: dict[str, Any] = {
        "txid": txid_of(tx).hex(),
        "hash": wtxid_of(tx).hex(),
        "version": tx.version & 0xFFFFFFFF,
        "size": tx.size,
        "vsize": tx.vsize,
        "weight": tx.weight,
        "locktime": tx.lock_time,
        "vin": vin,
        "vout": [
            {
                "value": btc(tx_out.value),
                "n": n,
                "scriptPubKey": script_pub_key_json(tx_out.script_pub_key.script),
            }
            for n, tx_out in enumerate(tx.vout)
        ],
    }
    if fee_sat is not None and not tx.is_coinbase:
        out["fee"] = btc(fee_sat)
    return out


def difficulty(bits: bytes) -> float:
    """Core's GetDifficulty (4.656542373906925e-10 on regtest)."""
    shift = bits[0]
    diff = 0x0000FFFF / int.from_bytes(bits[1:], "big")
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def header_json(
    header: Header,
    *,
    block_hash: bytes,
    height: int,
    confirmations: int,
    mtp: int,
    chainwork: int,
    n_tx: int,
    next_hash: bytes | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hash": block_hash.hex(),
        "confirmations": confirmations,
        "height": height,
        "version": header.version,
        "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
        "merkleroot": header.merkle_root.hex(),
        "time": header.time,
        "mediantime": mtp,
        "nonce": header.nonce,
        "bits": header.bits.hex(),
        "difficulty": difficulty(header.bits),
        "chainwork": f"{chainwork:064x}",
        "nTx": n_tx,
    }
    if height > 0:
        out["previousblockhash"] = header.prev.hex()
    if next_hash is not None:
        out["nextblockhash"] = next_hash.hex()
    return out
