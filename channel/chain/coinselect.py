"""Coin selection and signing for the wallet's P2WPKH coins (pure functions).

Theory of operation. `build_signed_tx` takes the spendable coins, the outputs to
pay and a fee rate, and returns a signed version-2 transaction:

- Selection is largest-first, ties broken by outpoint, so it is deterministic
  and uses few inputs (small transactions, small fees). Coins are added until
  they pay the outputs plus the fee of the transaction with a change output.
- The fee is computed from the real weight of the transaction with the largest
  witness a P2WPKH input can have (a 72-byte DER signature plus the sighash
  byte, then the 33-byte key), rounded up: the rate paid is never below the one
  asked for.
- Change below `DUST_LIMIT_SAT` is not made: it goes to the fee instead.
- Inputs and outputs are in BIP69 order (channel.funding.build_funding_tx sorts
  the outputs), so a transaction says nothing about which output is the change.
- Signing is BIP143 through channel/'s own sighash and signing code, all inputs
  SIGHASH_ALL over one precomputation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from channel.chain.fees import FEERATE_FLOOR_SAT_PER_KW
from channel.funding import build_funding_tx
from channel.scripts import p2wpkh_script_code
from channel.sighash import Bip143Precomputed, bip143_sighash
from channel.signing import sign, witness_signature
from channel.spend import MAX_WITNESS_SIGNATURE_SIZE, SEQUENCE_LOCKTIME_ENABLED
from channel.tx import OutPoint, Tx, TxIn, TxOut

#: Outputs below this are neither made as change nor accepted as a payment: it
#: is Bitcoin Core's dust threshold for P2PKH, above those of P2WPKH (294) and
#: P2WSH (330), so any output we make relays.
DUST_LIMIT_SAT = 546


class WalletError(Exception):
    """The wallet cannot do what was asked; nothing was changed."""


class InsufficientFunds(WalletError):
    def __init__(self, needed_sat: int, available_sat: int) -> None:
        super().__init__(f"needs {needed_sat} sat, {available_sat} sat spendable")
        self.needed_sat = needed_sat
        self.available_sat = available_sat


@dataclass(frozen=True, slots=True)
class Coin:
    """A spendable wallet output and the key that unlocks it."""

    outpoint: OutPoint
    amount_sat: int
    secret: bytes
    pubkey: bytes


def fee_for_weight(weight: int, feerate_per_kw: int) -> int:
    return -(-feerate_per_kw * weight // 1000)  # rounded up


def _unsigned(coins: Sequence[Coin], outputs: Sequence[TxOut], locktime: int) -> Tx:
    ordered = sorted(coins, key=lambda c: (c.outpoint.txid[::-1], c.outpoint.index))
    # nSequence 0xfffffffe: nLockTime enforced (anti fee-sniping locktimes work)
    # and no BIP125 signal; the wallet never replaces its own transactions.
    inputs = [TxIn(c.outpoint, SEQUENCE_LOCKTIME_ENABLED) for c in ordered]
    tx = build_funding_tx(inputs, outputs, locktime)
    for txin in tx.inputs:
        txin.witness = [b"\x00" * MAX_WITNESS_SIGNATURE_SIZE, b"\x02" * 33]
    return tx


def build_signed_tx(
    coins: Sequence[Coin],
    outputs: Sequence[TxOut],
    change_script_pubkey: bytes,
    feerate_per_kw: int,
    *,
    locktime: int = 0,
) -> tuple[Tx, list[Coin]]:
    """Select from `coins`, pay `outputs` (+ change), sign; returns (tx, coins used)."""
    if not outputs:
        raise WalletError("nothing to pay")
    if feerate_per_kw < FEERATE_FLOOR_SAT_PER_KW:
        # below 1 sat/vB nothing relays: a funding tx built so would never confirm
        raise WalletError(
            f"fee rate {feerate_per_kw} sat/kw is below the relay floor {FEERATE_FLOOR_SAT_PER_KW}"
        )
    for output in outputs:
        if output.amount_sat < DUST_LIMIT_SAT:
            raise WalletError(f"an output of {output.amount_sat} sat is dust")
    pay_sat = sum(o.amount_sat for o in outputs)
    candidates = sorted(coins, key=lambda c: (-c.amount_sat, c.outpoint.txid, c.outpoint.index))
    chosen: list[Coin] = []
    total_sat = 0
    for coin in candidates:
        chosen.append(coin)
        total_sat += coin.amount_sat
        with_change = _unsigned(chosen, [*outputs, TxOut(0, change_script_pubkey)], locktime)
        fee_with_change = fee_for_weight(with_change.weight(), feerate_per_kw)
        change_sat = total_sat - pay_sat - fee_with_change
        if change_sat >= DUST_LIMIT_SAT:
            final = [*outputs, TxOut(change_sat, change_script_pubkey)]
            return _sign(_unsigned(chosen, final, locktime), chosen), chosen
        without_change = _unsigned(chosen, outputs, locktime)
        if total_sat - pay_sat >= fee_for_weight(without_change.weight(), feerate_per_kw):
            return _sign(without_change, chosen), chosen
    available_sat = sum(c.amount_sat for c in coins)
    needed = _unsigned(candidates or [], outputs, locktime) if candidates else None
    fee_sat = fee_for_weight(needed.weight(), feerate_per_kw) if needed is not None else 0
    raise InsufficientFunds(pay_sat + fee_sat, available_sat)


def _sign(tx: Tx, coins: Sequence[Coin]) -> Tx:
    by_outpoint = {c.outpoint: c for c in coins}
    precomputed = Bip143Precomputed(tx)
    for i, txin in enumerate(tx.inputs):
        coin = by_outpoint[txin.outpoint]
        digest = bip143_sighash(
            tx, i, p2wpkh_script_code(coin.pubkey), coin.amount_sat, precomputed=precomputed
        )
        txin.witness = [witness_signature(sign(coin.secret, digest)), coin.pubkey]
    return tx
