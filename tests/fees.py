"""The fee a claim, sweep or penalty pays, as channel/spend.py prices it: its feerate on
its weight with every signature at the largest size (73 bytes, BOLT #3's figure),
rounded up. A real low-S signature with its sighash byte is 72 bytes half the time,
71 nearly the other half and 70 or less about once in 120, so the priced weight is
computed from the signatures the transaction holds, not bounded."""

from __future__ import annotations

from typing import Any

from channel.spend import MAX_WITNESS_SIGNATURE_SIZE
from channel.tx import Tx


def _is_signature(item: bytes) -> bool:
    """A DER signature with a sighash byte: 0x30, the length of what follows but for
    the sighash byte."""
    return 9 <= len(item) <= MAX_WITNESS_SIGNATURE_SIZE and item[0] == 0x30 \
        and item[1] == len(item) - 3


def signature_slack_wu(witnesses: list[list[bytes]]) -> int:
    """How many weight units the priced signatures add to the real ones."""
    return sum(MAX_WITNESS_SIGNATURE_SIZE - len(item)
               for witness in witnesses for item in witness if _is_signature(item))


def priced_fee_sat(weight: int, witnesses: list[list[bytes]], feerate_per_kw: int) -> int:
    return -(-feerate_per_kw * (weight + signature_slack_wu(witnesses)) // 1000)


def priced_fee_of(tx: Tx, feerate_per_kw: int) -> int:
    return priced_fee_sat(tx.weight(), [i.witness for i in tx.inputs], feerate_per_kw)


def priced_fee_of_json(tx: dict[str, Any], feerate_per_kw: int) -> int:
    """The same for a transaction as getrawtransaction's verbose answer shows it."""
    witnesses = [[bytes.fromhex(item) for item in vin.get("txinwitness", [])]
                 for vin in tx["vin"]]
    return priced_fee_sat(int(tx["weight"]), witnesses, feerate_per_kw)
