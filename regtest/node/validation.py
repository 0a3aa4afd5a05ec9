"""Transaction validation rules, each a pure function of a tx and the coins it spends.

The split follows Bitcoin Core's validation code so the reject reasons come
out in Core's order and with Core's words:

- `check_transaction`: CheckTransaction (consensus/tx_check.cpp), context free.
- `is_final`: IsFinalTx against a height and a median-time-past cutoff.
- `check_sequence_locks`: BIP68 (CalculateSequenceLocks + EvaluateSequenceLocks).
- `check_tx_inputs`: Consensus::CheckTxInputs (maturity, value ranges, fee >= 0).
- `check_standard`: IsStandardTx plus the input/witness standardness checks.
- `verify_scripts`: every input through btclib's script engine
  (`btclib.script.engine.verify_input`) under the given ScriptFlag set,
  failures named as Core names them (`script_errors`).

Nothing here reads chain state: callers hand in `Coin`s (the spent outputs with
their creation height and coinbase bit), heights and times.  This keeps the
mempool and block connection on exactly the same rule implementations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from btclib import policy
from btclib.hashes import hash256
from btclib.script.engine import sig_op_cost, verify_input
from btclib.script.engine.flags import ScriptFlag
from btclib.script.sig_hash import PrecomputedTxData
from btclib.script.solver import solver
from btclib.tx.tx import Tx
from btclib.tx.tx_out import TxOut

from regtest.node.errors import TxRejected
from regtest.node.params import (
    BLOCK_SCRIPT_FLAGS,
    COINBASE_MATURITY,
    DUST_RELAY_FEE_SAT_PER_KVB,
    LOCKTIME_THRESHOLD,
    MAX_BLOCK_WEIGHT,
    MAX_MONEY,
    MAX_OP_RETURN_RELAY,
    MAX_STANDARD_TX_SIGOPS_COST,
    MAX_STANDARD_TX_WEIGHT,
    SEQUENCE_FINAL,
    WITNESS_SCALE_FACTOR,
    format_money,
)
from regtest.node.script_errors import core_script_error, core_script_error_text

SEQUENCE_LOCKTIME_DISABLE_FLAG = 1 << 31
SEQUENCE_LOCKTIME_TYPE_FLAG = 1 << 22
SEQUENCE_LOCKTIME_MASK = 0x0000FFFF
SEQUENCE_LOCKTIME_GRANULARITY = 9


@dataclass(frozen=True, slots=True)
class Coin:
    """An unspent output with what the rules need beyond its bytes."""

    value: int
    script: bytes
    height: int
    coinbase: bool

    def tx_out(self) -> TxOut:
        return TxOut(self.value, self.script, check_validity=False)


def txid_of(tx: Tx) -> bytes:
    """The txid in display order (what `.hex()` prints and OutPoint.tx_id holds)."""
    return hash256(tx.serialize(include_witness=False, check_validity=False))[::-1]


def wtxid_of(tx: Tx) -> bytes:
    """The wtxid in display order."""
    return hash256(tx.serialize(include_witness=True, check_validity=False))[::-1]


def check_transaction(tx: Tx) -> None:
    """Core's CheckTransaction: structure rules needing no context."""
    if not tx.vin:
        raise TxRejected("bad-txns-vin-empty")
    if not tx.vout:
        raise TxRejected("bad-txns-vout-empty")
    stripped = len(tx.serialize(include_witness=False, check_validity=False))
    if stripped * WITNESS_SCALE_FACTOR > MAX_BLOCK_WEIGHT:
        raise TxRejected("bad-txns-oversize")
    total = 0
    for tx_out in tx.vout:
        if tx_out.value < 0:
            raise TxRejected("bad-txns-vout-negative")
        if tx_out.value > MAX_MONEY:
            raise TxRejected("bad-txns-vout-toolarge")
        total += tx_out.value
        if total > MAX_MONEY:
            raise TxRejected("bad-txns-txouttotal-toolarge")
    seen = set()
    for tx_in in tx.vin:
        key = (tx_in.prev_out.tx_id, tx_in.prev_out.vout)
        if key in seen:
            raise TxRejected("bad-txns-inputs-duplicate")
        seen.add(key)
    if tx.is_coinbase:
        if not 2 <= len(tx.vin[0].script_sig) <= 100:
            raise TxRejected("bad-cb-length")
    else:
        for tx_in in tx.vin:
            if tx_in.prev_out.is_coinbase:
                raise TxRejected("bad-txns-prevout-null")


def is_final(tx: Tx, height: int, cutoff_time: int) -> bool:
    """Core's IsFinalTx: `height` is the spending block's, `cutoff_time` the MTP before it."""
    if tx.lock_time == 0:
        return True
    cutoff = height if tx.lock_time < LOCKTIME_THRESHOLD else cutoff_time
    if tx.lock_time < cutoff:
        return True
    return all(tx_in.sequence == SEQUENCE_FINAL for tx_in in tx.vin)


def check_sequence_locks(
    tx: Tx,
    coins: Sequence[Coin],
    height: int,
    tip_mtp: int,
    mtp_at: Callable[[int], int],
) -> bool:
    """BIP68: True when every relative lock of `tx` is met in a block at `height`.

    `tip_mtp` is the median time past of the block before `height`;
    `mtp_at(h)` the median time past of the block at height h (for a coin
    confirmed at height c the lock counts from the MTP of block c-1).
    Mempool coins are passed with height = tip + 1, as Core does.
    """
    if tx.version < 2:
        return True
    min_height = -1
    min_time = -1
    for tx_in, coin in zip(tx.vin, coins, strict=True):
        sequence = tx_in.sequence
        if sequence & SEQUENCE_LOCKTIME_DISABLE_FLAG:
            continue
        if sequence & SEQUENCE_LOCKTIME_TYPE_FLAG:
            coin_time = mtp_at(max(coin.height - 1, 0))
            lock = (sequence & SEQUENCE_LOCKTIME_MASK) << SEQUENCE_LOCKTIME_GRANULARITY
            min_time = max(min_time, coin_time + lock - 1)
        else:
            min_height = max(min_height, coin.height + (sequence & SEQUENCE_LOCKTIME_MASK) - 1)
    return not (min_height >= height or min_time >= tip_mtp)


def check_tx_inputs(tx: Tx, coins: Sequence[Coin], spend_height: int) -> int:
    """Consensus::CheckTxInputs; returns the fee in satoshi."""
    value_in = 0
    for coin in coins:
        if coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
            raise TxRejected(
                "bad-txns-premature-spend-of-coinbase",
                f"tried to spend coinbase at depth {spend_height - coin.height}",
            )
        value_in += coin.value
        if not 0 <= coin.value <= MAX_MONEY or value_in > MAX_MONEY:
            raise TxRejected("bad-txns-inputvalues-outofrange")
    value_out = sum(tx_out.value for tx_out in tx.vout)
    if value_in < value_out:
        raise TxRejected(
            "bad-txns-in-belowout",
            f"value in ({format_money(value_in)}) < value out ({format_money(value_out)})",
        )
    fee = value_in - value_out
    if not 0 <= fee <= MAX_MONEY:
        raise TxRejected("bad-txns-fee-outofrange")
    return fee


def is_dust(tx_out: TxOut) -> bool:
    """Core's IsDust at the default dust relay fee (3 sat/vB)."""
    script = tx_out.script_pub_key.script
    if (script[:1] == b"\x6a") or len(script) > 10_000:
        return False  # unspendable outputs are never dust
    size = 8 + len(_compact_size(len(script))) + len(script)
    witness_program = (
        len(script) >= 4 and script[0] in (0, *range(0x51, 0x61)) and (script[1] + 2 == len(script))
    )
    size += (
        (32 + 4 + 1 + (107 // WITNESS_SCALE_FACTOR) + 4)
        if witness_program
        else (32 + 4 + 1 + 107 + 4)
    )
    threshold = size * DUST_RELAY_FEE_SAT_PER_KVB // 1000
    return tx_out.value < threshold


def _compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def check_standard(tx: Tx) -> None:
    """Core's IsStandardTx (v28 defaults): version, size, scriptSig, outputs, dust."""
    if not 1 <= tx.version <= 3:
        raise TxRejected("version")
    if tx.weight > MAX_STANDARD_TX_WEIGHT:
        raise TxRejected("tx-size")
    for tx_in in tx.vin:
        if len(tx_in.script_sig) > 1650:
            raise TxRejected("scriptsig-size")
    try:
        # dust and OP_RETURN size are judged below with v28's rules
        policy.assert_standard_tx(tx, max_datacarrier_bytes=100_000)
    except TxRejected:
        raise
    except Exception as exc:  # btclib raises BTClibValueError(reason)
        reason = str(exc)
        if reason != "dust":
            raise TxRejected("scriptpubkey" if reason == "datacarrier" else reason) from exc
    op_returns = 0
    for tx_out in tx.vout:
        script = tx_out.script_pub_key.script
        if solver(script)[0] == "nulldata":
            op_returns += 1
            if len(script) > MAX_OP_RETURN_RELAY:
                raise TxRejected("scriptpubkey")
    if op_returns > 1:
        raise TxRejected("multi-op-return")
    if any(is_dust(tx_out) for tx_out in tx.vout):
        raise TxRejected("dust")


def check_standard_inputs(tx: Tx, coins: Sequence[Coin]) -> None:
    """AreInputsStandard and IsWitnessStandard, as Core's PreChecks calls them."""
    prevouts = [coin.tx_out() for coin in coins]
    if not policy.are_inputs_standard(prevouts, tx):
        raise TxRejected("bad-txns-nonstandard-inputs")
    if tx.is_segwit and not policy.is_witness_standard(prevouts, tx):
        raise TxRejected("bad-witness-nonstandard")


def sigops_cost(tx: Tx, coins: Sequence[Coin]) -> int:
    return int(sig_op_cost([coin.tx_out() for coin in coins], tx, BLOCK_SCRIPT_FLAGS))


def check_standard_sigops(tx: Tx, cost: int) -> None:
    if cost > MAX_STANDARD_TX_SIGOPS_COST:
        raise TxRejected("bad-txns-too-many-sigops", str(cost))


def verify_scripts(
    tx: Tx,
    coins: Sequence[Coin],
    flags: ScriptFlag,
    recheck_flags: ScriptFlag | None = None,
    *,
    inputs: Sequence[int] | None = None,
) -> None:
    """Run every input through btclib's engine under `flags`.

    This is the one script check: the mempool calls it with the standard
    flags (and the consensus flags as `recheck_flags`), block connection
    with the consensus flags alone.  On failure under policy flags, Core
    rechecks with the consensus flags: passing there makes it
    "non-mandatory-script-verify-flag", failing there
    "mandatory-script-verify-flag-failed"; the text quoted is the error of
    the first (policy) run, as in v27/v28, in Core's words
    (`script_errors.core_script_error`).  The first failing input decides,
    as Core's CheckInputScripts stops at it.  `inputs` limits the check to
    some input indexes (all by default), for a transaction only partly
    signed.
    """
    prevouts = [coin.tx_out() for coin in coins]
    try:
        precomputed = PrecomputedTxData(tx, prevouts)
    except Exception as exc:  # btclib refusing malformed data outright
        raise _script_rejected("mandatory-script-verify-flag-failed", "UNKNOWN_ERROR") from exc
    for i in range(len(tx.vin)) if inputs is None else inputs:
        error = _input_error(prevouts, tx, i, flags, precomputed)
        if error is None:
            continue
        name, cause = error
        prefix = "mandatory-script-verify-flag-failed"
        if recheck_flags is not None and (
            _input_error(prevouts, tx, i, recheck_flags, precomputed) is None
        ):
            prefix = "non-mandatory-script-verify-flag"
        raise _script_rejected(prefix, name, input_index=i) from cause


def _input_error(
    prevouts: list[TxOut], tx: Tx, i: int, flags: ScriptFlag, precomputed: PrecomputedTxData
) -> tuple[str, BaseException] | None:
    """None when input i verifies, else Core's error name and btclib's exception.

    Any exception counts as a failure: Core's EvalScript catches everything
    its interpreter throws as "unknown error", and a script (or witness) a
    stranger wrote must never crash the node.
    """
    try:
        verify_input(prevouts, tx, i, flags, precomputed)
    except Exception as exc:
        return core_script_error(exc), exc
    return None


def _script_rejected(prefix: str, name: str, *, input_index: int = 0) -> TxRejected:
    return TxRejected(
        f"{prefix} ({core_script_error_text(name)})",
        script_error=name,
        input_index=input_index,
    )
