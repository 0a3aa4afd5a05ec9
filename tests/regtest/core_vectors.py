"""Bitcoin Core's consensus test data, read as Core's unit tests read it.

`../shared/vectors/bitcoin-core/` (beside the repository) holds Core's
`tx_valid.json`, `tx_invalid.json` and `script_tests.json`; its README gives
the format.  This module turns them into values the node's own validation
function (`regtest.node.validation.verify_scripts`, the one the mempool and
block connection call) can take:

- `parse_script` is Core's test assembly (`ParseScript` in core_read.cpp):
  decimal numbers pushed as script numbers (-1 and 1..16 as OP_N), `0x..`
  inserted raw, `'...'` pushed, opcodes by name with or without `OP_`;
- `script_test_case` builds the crediting and spending transactions exactly
  as `script_tests.cpp` does (`BuildCreditingTransaction`,
  `BuildSpendingTransaction`), including the `#SCRIPT#`/`#CONTROLBLOCK#`
  tapscript witness and the `#TAPROOTOUTPUT#` output;
- `tx_case` reads a tx_valid/tx_invalid entry: the prevout scripts and
  amounts (0 when absent, as `CheckTxScripts` does) and the transaction.

Flags: Core's `ALL` for tx_valid is every flag it names, which are exactly
btclib's `ScriptFlag` members; `fill_flags` is Core's FillFlags (CLEANSTACK
needs WITNESS, WITNESS needs P2SH), which every combination handed to the
interpreter must satisfy.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import reduce
from operator import or_
from pathlib import Path
from typing import Any

from btclib.script.engine.flags import ScriptFlag
from btclib.script.script import BYTE_FROM_OP_CODE_NAME
from btclib.script.witness import Witness
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut
from coincurve import PublicKey

from regtest.node.validation import Coin, txid_of

VECTORS_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors" / "bitcoin-core"

ALL_FLAGS = reduce(or_, ScriptFlag.__members__.values(), ScriptFlag(0))


def load(name: str) -> list[list[Any]]:
    """The entries of one vector file, comments (one-string entries) left out."""
    with (VECTORS_DIR / name).open() as handle:
        data = json.load(handle)
    return [entry for entry in data if not (len(entry) == 1 and isinstance(entry[0], str))]


def parse_flags(text: str) -> ScriptFlag:
    if text in ("", "NONE"):
        return ScriptFlag(0)
    return reduce(or_, (ScriptFlag[name] for name in text.split(",")), ScriptFlag(0))


def fill_flags(flags: ScriptFlag) -> ScriptFlag:
    """Core's FillFlags: the flags a set implies (CLEANSTACK -> WITNESS -> P2SH)."""
    if ScriptFlag.CLEANSTACK in flags:
        flags |= ScriptFlag.WITNESS
    if ScriptFlag.WITNESS in flags:
        flags |= ScriptFlag.P2SH
    return flags


def trim_flags(flags: ScriptFlag) -> ScriptFlag:
    """Core's TrimFlags: drop what a set can no longer carry (the inverse of fill)."""
    if ScriptFlag.P2SH not in flags:
        flags &= ~ScriptFlag.WITNESS
    if ScriptFlag.WITNESS not in flags:
        flags &= ~ScriptFlag.CLEANSTACK
    return flags


def _push(data: bytes) -> bytes:
    """CScript << vector: the smallest push opcode for the length."""
    size = len(data)
    if size < 0x4C:
        return bytes([size]) + data
    if size <= 0xFF:
        return b"\x4c" + bytes([size]) + data
    if size <= 0xFFFF:
        return b"\x4d" + size.to_bytes(2, "little") + data
    return b"\x4e" + size.to_bytes(4, "little") + data


def _script_num(n: int) -> bytes:
    """CScriptNum::serialize: little-endian magnitude, sign in the top bit."""
    if n == 0:
        return b""
    magnitude = abs(n)
    out = bytearray()
    while magnitude:
        out.append(magnitude & 0xFF)
        magnitude >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if n < 0 else 0)
    elif n < 0:
        out[-1] |= 0x80
    return bytes(out)


_NUMBER = re.compile(r"-?\d+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


def parse_script(text: str) -> bytes:
    """Core's ParseScript (the test assembly of the vector files)."""
    out = bytearray()
    for word in text.split():
        if _NUMBER.fullmatch(word) and word != "-":
            n = int(word)
            if not -0xFFFFFFFF <= n <= 0xFFFFFFFF:
                raise ValueError(f"number out of range: {word}")
            if n == -1 or 1 <= n <= 16:
                out.append(n + 0x50)
            elif n == 0:
                out.append(0)
            else:
                out += _push(_script_num(n))
        elif _HEX.fullmatch(word) and len(word) % 2 == 0:
            out += bytes.fromhex(word[2:])
        elif len(word) >= 2 and word[0] == word[-1] == "'":
            out += _push(word[1:-1].encode())
        else:
            name = word if word.startswith("OP_") else "OP_" + word
            opcode = BYTE_FROM_OP_CODE_NAME.get(name)
            if opcode is None:
                raise ValueError(f"unknown opcode: {word}")
            out += opcode
    return bytes(out)


@dataclass(frozen=True)
class ScriptCase:
    """One script_tests.json entry as a spending transaction and its coin."""

    tx: Tx
    coin: Coin
    flags: ScriptFlag
    expected: str  # Core's ScriptError name without SCRIPT_ERR_, or "OK"
    comment: str


def _tagged_hash(tag: str, data: bytes) -> bytes:
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + data).digest()


# the x-only key of the generator: any valid internal key serves, Core uses a random one
_INTERNAL_KEY = bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


def _taproot_leaf(script: bytes) -> tuple[bytes, bytes]:
    """(output key, control block) of a one-leaf tree holding `script` (leaf 0xc0)."""
    leaf = _tagged_hash("TapLeaf", b"\xc0" + _push_len(script) + script)
    tweak = _tagged_hash("TapTweak", _INTERNAL_KEY + leaf)
    output = PublicKey(b"\x02" + _INTERNAL_KEY).add(tweak).format(compressed=True)
    return output[1:], bytes([0xC0 | (output[0] & 1)]) + _INTERNAL_KEY


def _push_len(script: bytes) -> bytes:
    size = len(script)
    if size < 0xFD:
        return bytes([size])
    if size <= 0xFFFF:
        return b"\xfd" + size.to_bytes(2, "little")
    return b"\xfe" + size.to_bytes(4, "little")


def script_test_case(entry: list[Any]) -> ScriptCase:
    """Build Core's crediting/spending pair for one script_tests.json entry."""
    witness: list[bytes] = []
    amount_sat = 0
    taproot_output: bytes | None = None
    if isinstance(entry[0], list):
        *items, amount_btc = entry[0]
        amount_sat = round(amount_btc * 100_000_000)
        for item in items:
            if item.startswith("#SCRIPT#"):
                witness.append(parse_script(item[len("#SCRIPT#") :]))
            elif item == "#CONTROLBLOCK#":
                taproot_output, control = _taproot_leaf(witness[-1])
                witness.append(control)
            else:
                witness.append(bytes.fromhex(item))
        entry = entry[1:]
    script_sig_text, script_pub_key_text, flags_text, expected = entry[:4]
    comment = entry[4] if len(entry) > 4 else ""
    script_sig = parse_script(script_sig_text)
    if script_pub_key_text == "0x51 0x20 #TAPROOTOUTPUT#":
        assert taproot_output is not None, "a taproot output needs a #CONTROLBLOCK#"
        script_pub_key = b"\x51\x20" + taproot_output
    else:
        script_pub_key = parse_script(script_pub_key_text)
    credit = Tx(
        1,
        0,
        [TxIn(OutPoint(check_validity=False), b"\x00\x00", 0xFFFFFFFF, check_validity=False)],
        [TxOut(amount_sat, script_pub_key, check_validity=False)],
        check_validity=False,
    )
    spend = Tx(
        1,
        0,
        [
            TxIn(
                OutPoint(txid_of(credit), 0, check_validity=False),
                script_sig,
                0xFFFFFFFF,
                Witness(witness, check_validity=False),
                check_validity=False,
            )
        ],
        [TxOut(amount_sat, b"", check_validity=False)],
        check_validity=False,
    )
    coin = Coin(amount_sat, script_pub_key, 1, False)
    return ScriptCase(spend, coin, parse_flags(flags_text), expected, comment)


@dataclass(frozen=True)
class TxCase:
    """One tx_valid/tx_invalid entry: the transaction, its coins, its flag field."""

    tx: Tx
    coins: list[Coin]
    flags_text: str
    comment: str


def tx_case(entry: list[Any], comment: str) -> TxCase:
    prevouts: dict[tuple[str, int], Coin] = {}
    for prevout in entry[0]:
        txid, vout, script_text = prevout[0], prevout[1], prevout[2]
        amount_sat = prevout[3] if len(prevout) > 3 else 0
        # Core reads the index as an int: -1 is 0xffffffff (a null prevout's index)
        prevouts[(txid, vout & 0xFFFFFFFF)] = Coin(
            amount_sat, parse_script(script_text), 1, False
        )
    tx = Tx.parse(bytes.fromhex(entry[1]), check_validity=False)
    coins = [prevouts[(i.prev_out.tx_id.hex(), i.prev_out.vout)] for i in tx.vin]
    return TxCase(tx, coins, entry[2], comment)


def tx_cases(name: str) -> list[TxCase]:
    """The entries of tx_valid/tx_invalid, each with the comment lines above it."""
    with (VECTORS_DIR / name).open() as handle:
        data = json.load(handle)
    cases: list[TxCase] = []
    comments: list[str] = []
    for entry in data:
        if len(entry) == 1 and isinstance(entry[0], str):
            comments.append(entry[0])
            continue
        cases.append(tx_case(entry, " ".join(comments)))
        comments = []
    return cases
